import json

from conftest import run_script


def test_bench_runs_a_tiny_config_on_cpu(tmp_path):
    (tmp_path / 'tiny.py').write_text("n_layer = 1\nn_head = 2\nn_embd = 32\npatch_size = 7\nmax_iters = 5\n"
                                      "out_dir = 'not-used-by-bench'\n")
    result = run_script('bench.py', str(tmp_path / 'tiny.py'), '--device=cpu', '--compile=False', '--batch_size=8',
                        '--bench_warmup=1', '--bench_iters=3', '--bench_out=b.json', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['batch_size'] == 8 and report['config']['n_embd'] == 32
    rows = report['rows']
    assert {(r['impl'], r['mode']) for r in rows} == {('nanoViT', 'eager'), ('torchvision', 'eager')}
    assert all(r['ms_per_iter'] > 0 and r['images_per_s'] > 0 for r in rows)
    assert set(report['time_ratio_vs_torchvision']) == {r['dtype'] for r in rows}
    assert 'takes' in result.stdout and "torchvision's ViT" in result.stdout


def test_bench_rejects_a_typo(tmp_path):
    result = run_script('bench.py', '--batch_sise=8', cwd=tmp_path)
    assert result.returncode == 2 and "unknown config key 'batch_sise'; did you mean batch_size?" in result.stderr
