"""bench.py: it times a config's step without its data, next to torchvision's ViT, and refuses bad input."""
import json

import pytest

from conftest import assert_one_line_error


def test_bench_times_a_config_without_its_data(tmp_path, run_here):
    # a CIFAR-10 config: the bench takes 3x32x32 from the dataset's entry and never looks for the files
    (tmp_path / 'tiny.py').write_text("dataset = 'cifar10'\nn_layer = 1\nn_head = 2\nn_embd = 32\npatch_size = 8\n"
                                      "max_iters = 5\nout_dir = 'not-used-by-bench'\naug_crop = 2\naug_flip = True\n")
    result = run_here('bench.py', str(tmp_path / 'tiny.py'), '--device=cpu', '--compile=False', '--batch_size=8',
                        '--optimizer=muon', '--bench_warmup=1', '--bench_iters=3', '--bench_out=b.json', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['batch_size'] == 8 and report['image_shape'] == [3, 32, 32] and report['config']['n_embd'] == 32
    rows = report['rows']
    assert {(r['impl'], r['mode']) for r in rows} == {('nanoViT', 'eager'), ('torchvision', 'eager')}
    assert all(r['ms_per_iter'] > 0 and r['images_per_s'] > 0 and 0 < r['optimizer_share'] < 1 for r in rows)
    assert set(report['time_ratio_vs_torchvision']) == {r['dtype'] for r in rows}
    assert "takes" in result.stdout and "torchvision's ViT" in result.stdout and 'optimizer muon' in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ['b.json', 'tiny.py']


def test_bench_needs_the_size_of_a_folder_dataset(tmp_path, run_here):
    result = run_here('bench.py', '--dataset=folder', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, "bench.py does not read a folder dataset's pictures: give their size with --img_size=N",
                          code=2)


def test_bench_rejects_a_typo(tmp_path, run_here):
    result = run_here('bench.py', '--batch_sise=8', cwd=tmp_path)
    assert_one_line_error(result, "unknown config key 'batch_sise'; did you mean batch_size?", code=2)


@pytest.mark.slow
def test_bench_times_a_pretrained_vit_s_shape_without_its_weights(tmp_path, run_here):
    result = run_here('bench.py', '--init_from=vit_b_32', '--device=cpu', '--batch_size=1', '--bench_warmup=0',
                      '--bench_iters=1', '--dtype=float32', '--bench_out=b.json', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'n_layer 12, n_head 12, n_embd 768, patch 32 (vit_b_32)' in result.stdout
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['image_shape'] == [3, 224, 224] and {r['impl'] for r in report['rows']} == {'nanoViT', 'torchvision'}


@pytest.mark.parametrize('args,message', [
    (['--bench_iters=0'], 'bench_iters=0 must be at least 1'),
    (['--bench_out=.'], "bench_out='.' is a folder or in none"),
    (['--bench_out=missing/dir/b.json'], "bench_out='missing/dir/b.json' is a folder or in none; give a file name in an "
                                         "existing folder"),
])
def test_bench_refuses_before_timing(args, message, tmp_path, run_here):
    result = run_here('bench.py', '--device=cpu', *args, cwd=tmp_path)
    assert_one_line_error(result, message, code=2)
