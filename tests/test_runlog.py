"""support/runlog.py: what a run writes beside its checkpoint for a stranger to read, rerun and compare: run.json
(the command, config, commit, versions and hardware of each start), log.txt (what it printed), and the same records
in Weights & Biases when asked."""
import json
import os
import sys
import types

import pytest
import torch

from conftest import FAST, TINY, assert_one_line_error, grey_folder, read_jsonl, run_script


def test_a_run_says_where_it_came_from(trained_run):
    starts = json.loads((trained_run.out / 'run.json').read_text())['starts']
    start = starts[0]
    assert start['command'].startswith('python ') and '--max_iters=200' in start['command']
    assert start['config']['max_iters'] == 200 and start['versions']['torch'] == torch.__version__
    assert len(start['commit']['id']) == 40 and isinstance(start['commit']['changed'], bool)
    assert start['hardware']['cpu']['cores'] == os.cpu_count() and start['dtype'] == 'float32'
    assert start['hardware']['cpu']['kernels'] == torch.backends.cpu.get_cpu_capability()  # a seed's numbers hang on it
    log = (trained_run.out / 'log.txt').read_text()
    assert 'step 200: train loss' in log and 'done: test acc' in log  # what the run printed


def test_limits_on_onednn_and_mkl_kernels_are_recorded(monkeypatch):
    from support.runlog import hardware
    monkeypatch.delenv('MKL_ENABLE_INSTRUCTIONS', raising=False)
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    assert 'isa_limits' not in hardware('cpu')['cpu']
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')  # with ATEN_CPU_CAPABILITY=avx2: an AVX2 CPU's numbers
    assert hardware('cpu')['cpu']['isa_limits'] == {'ONEDNN_MAX_CPU_ISA': 'AVX2'}


def test_each_start_of_a_run_is_recorded_and_its_log_carries_on(copy_of_run, trained_run, run_here):
    result = run_here('train.py', *trained_run.args, '--max_iters=210', '--eval_interval=10', '--out_dir=out',
                      '--init_from=resume', cwd=copy_of_run.parent)
    assert result.returncode == 0, result.stderr
    starts = json.loads((copy_of_run / 'run.json').read_text())['starts']
    assert [s['iter'] for s in starts] == [0, 200] and '--init_from=resume' in starts[1]['command']
    log = (copy_of_run / 'log.txt').read_text()
    assert log.index('step 200:') < log.index('step 210:')  # appended, not started anew


def test_plot_names_each_run_s_machine(trained_run, tmp_path, monkeypatch):
    import plot
    from support.runlog import machine
    where = machine(trained_run.out / 'run.json')
    assert where.endswith(', float32')
    figures = []
    monkeypatch.setattr(plot.plt, 'close', figures.append)  # the figures, kept to be read
    plot.plot_runs([trained_run.out], str(tmp_path / 'one.png'))
    plot.plot_runs([trained_run.out, trained_run.out], str(tmp_path / 'two.png'), labels=['a', 'b'])
    one, two = figures
    assert where in one._suptitle.get_text()  # one run: its machine in the title
    assert all(where in text.get_text() for text in two.axes[0].get_legend().get_texts())  # several: in each label


def test_wandb_logs_what_metrics_jsonl_holds_and_the_config(synthetic_data, tmp_path, run_here, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **k: calls.append(('init', k)), finish=lambda: calls.append(('finish',)),
                                 log=lambda record, step: calls.append(('log', record, step)))
    monkeypatch.setitem(sys.modules, 'wandb', fake)  # what train.py hands wandb, whatever wandb's version does with it
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=20', '--eval_interval=10',
                      '--wandb_log=True', '--wandb_run_name=tiny', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (init, config), *logged, finish = calls
    assert init == 'init' and config['project'] == 'nanovit' and config['name'] == 'tiny'
    assert config['config']['max_iters'] == 20 and finish == ('finish',)
    assert [(record, step) for _, record, step in logged] == [(r, r['iter']) for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl')]
    calls.clear()  # a resume carries on the same wandb run
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=30', '--eval_interval=10',
                      '--wandb_log=True', '--wandb_run_name=tiny', '--out_dir=out', '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls[0][1]['id'] == config['id'] and calls[0][1]['resume'] == 'allow'


@pytest.mark.slow
def test_wandb_itself_writes_an_offline_run(synthetic_data, tmp_path):
    pytest.importorskip('wandb')
    env = {'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path), 'WANDB_SILENT': 'true'}
    result = run_script('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=20', '--eval_interval=10',
                        '--wandb_log=True', '--out_dir=out', cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    runs = [d for d in os.listdir(tmp_path / 'wandb') if d.startswith('offline-run-')]
    assert len(runs) == 1 and any(f.endswith('.wandb') and os.path.getsize(tmp_path / 'wandb' / runs[0] / f) > 1000
                                  for f in os.listdir(tmp_path / 'wandb' / runs[0]))


def test_without_wandb_wandb_log_says_how_to_get_it(synthetic_data, tmp_path, run_here, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # as if it were not installed
    root = grey_folder(str(tmp_path / 'fresh'))  # a dataset not yet prepared
    result = run_here('train.py', *TINY, '--dataset=folder', f'--data_dir={root}', '--wandb_log=True', cwd=tmp_path)
    assert_one_line_error(result, "wandb_log=True needs wandb, which is not installed", code=2)
    assert 'decoded' not in result.stdout  # said before the dataset is prepared


def test_log_txt_holds_what_the_run_printed_from_the_dataset_s_preparation_on(tmp_path, run_here):
    root = grey_folder(str(tmp_path / 'fresh'))  # prepared by this run
    result = run_here('train.py', *TINY, '--dataset=folder', f'--data_dir={root}', '--batch_size=8', '--max_iters=2',
                      '--eval_interval=2', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / 'out' / 'log.txt').read_text()
    assert 'fresh train: decoded 24 pictures' in log and 'done: test acc' in log
