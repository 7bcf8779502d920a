"""Never lose a run: resume, crash-safe checkpoints, signals, the NaN guard, DDP, bad checkpoints."""
import hashlib
import os
import signal
import sys
import subprocess

import pytest
import torch

from conftest import REPO, TINY, run_script, start_script, wait_for_line
from test_train import read_jsonl

# dropout and augmentation on, so that an exact resume needs every RNG restored
RUN = TINY + ['--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--log_interval=1', '--max_iters=150',
              '--dropout=0.1', '--aug_translate=2.0', '--aug_rotate=10.0']


def losses(out_dir):
    return {r['iter']: r['loss'] for r in read_jsonl(os.path.join(out_dir, 'metrics.jsonl')) if 'loss' in r}


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def reference(synthetic_data, tmp_path_factory):
    """The uninterrupted run that interrupted-and-resumed runs must reproduce."""
    cwd = tmp_path_factory.mktemp('reference')
    result = run_script('train.py', *RUN, f'--data_dir={synthetic_data}', '--eval_interval=50', '--out_dir=out', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return losses(cwd / 'out')


def test_ctrl_c_checkpoints_and_resume_reproduces_the_run(reference, synthetic_data, tmp_path):
    args = [*RUN, f'--data_dir={synthetic_data}', '--eval_interval=50', '--out_dir=out']
    process = start_script('train.py', *args, cwd=tmp_path)
    wait_for_line(process, 'iter 20/150')
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert 'stopped by SIGINT after iter' in stdout and '--init_from=resume' in stdout
    stopped_at = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num']
    assert 20 <= stopped_at < 150
    result = run_script('train.py', *args, '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resumed = losses(tmp_path / 'out')
    assert sorted(resumed) == list(range(1, 151))
    assert all(resumed[i] == pytest.approx(reference[i], abs=1e-6) for i in range(stopped_at + 1, 151))


def test_sigterm_checkpoints_and_exits_143(synthetic_data, tmp_path):
    process = start_script('train.py', *RUN, f'--data_dir={synthetic_data}', '--eval_interval=1000', '--out_dir=out',
                           cwd=tmp_path)
    wait_for_line(process, 'iter 5/150')
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert 'stopped by SIGTERM' in stdout
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] >= 5


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(reference, synthetic_data, tmp_path):
    # a checkpoint at every iteration: the kill is likely to land inside a save
    args = [*RUN, f'--data_dir={synthetic_data}', '--eval_interval=1', '--plot=False', '--out_dir=out']
    for kill_after in ('iter 30/150', 'iter 70/150'):
        process = start_script('train.py', *args, *(['--init_from=resume'] if kill_after != 'iter 30/150' else []),
                               cwd=tmp_path)
        wait_for_line(process, kill_after)
        process.kill()
        process.wait()
        checkpoint = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
        # the kill came during or after the save that followed the printed iteration
        assert checkpoint['iter_num'] >= int(kill_after.split()[1].split('/')[0]) - 1
    result = run_script('train.py', *args, '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resumed = losses(tmp_path / 'out')
    assert sorted(resumed) == list(range(1, 151))
    assert all(resumed[i] == pytest.approx(reference[i], abs=1e-6) for i in range(1, 151))


@pytest.fixture
def good_run(synthetic_data, tmp_path):
    """A finished short run: its checkpoint is what the bad inputs below must leave alone."""
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=10', '--eval_interval=10',
                        '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path, tmp_path / 'out' / 'ckpt.pt'


def assert_one_line_error(result, message):
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_divergence_stops_and_keeps_the_last_good_checkpoint(good_run, synthetic_data):
    cwd, ckpt = good_run
    before = digest(ckpt)
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=100', '--eval_interval=5',
                        '--log_interval=1', '--learning_rate=1e30', '--grad_clip=0.0', '--out_dir=out',
                        '--init_from=resume', cwd=cwd)
    assert_one_line_error(result, 'training diverged. Lower learning_rate (now 1e+30)')
    assert 'is left as it was' in result.stderr
    assert digest(ckpt) == before


@pytest.mark.parametrize('damage,message', [
    ('truncate', 'is not a readable checkpoint (truncated or corrupt?)'),
    ('garbage', 'is not a readable checkpoint (truncated or corrupt?)'),
    ('missing', 'no checkpoint at out/ckpt.pt'),
])
def test_unreadable_checkpoints(damage, message, good_run, synthetic_data):
    cwd, ckpt = good_run
    if damage == 'missing':
        ckpt.unlink()
    else:
        blob = ckpt.read_bytes()
        ckpt.write_bytes(blob[:len(blob) // 2] if damage == 'truncate' else b'\x00junk' * 100)
    before = ckpt.read_bytes() if ckpt.exists() else None
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=20', '--out_dir=out',
                        '--init_from=resume', cwd=cwd)
    assert_one_line_error(result, message)
    assert (ckpt.read_bytes() if ckpt.exists() else None) == before


def test_checkpoint_of_another_shape(good_run, synthetic_data):
    cwd, ckpt = good_run
    before = digest(ckpt)
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=20', '--out_dir=out',
                        '--init_from=resume', '--n_embd=48', '--n_layer=3', cwd=cwd)
    assert_one_line_error(result, 'holds a model with n_layer=2, n_embd=32 but this run asks for n_layer=3, n_embd=48')
    # weights that do not fit the model their config describes: every bad key is named
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint['model']['head.weight'] = torch.zeros(10, 33)
    del checkpoint['model']['ln_f.bias']
    torch.save(checkpoint, ckpt)
    before = digest(ckpt)
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=20', '--out_dir=out',
                        '--init_from=resume', cwd=cwd)
    assert_one_line_error(result, 'does not fit this model: head.weight is (10, 33) in the checkpoint, (10, 32) here; '
                                  'missing ln_f.bias')
    assert digest(ckpt) == before


def test_compiled_checkpoint_keys_are_stripped(good_run, synthetic_data):
    cwd, ckpt = good_run
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint['model'] = {f'_orig_mod.{k}': v for k, v in checkpoint['model'].items()}
    torch.save(checkpoint, ckpt)
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=12', '--eval_interval=12',
                        '--out_dir=out', '--init_from=resume', cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert 'done:' in result.stdout


def test_ddp_two_cpu_processes_match_one(synthetic_data, tmp_path):
    common = [*TINY, '--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=5', '--log_interval=1',
              '--max_iters=30', '--eval_interval=15', f'--data_dir={synthetic_data}']
    single = run_script('train.py', *common, '--batch_size=32', '--out_dir=single', cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          os.path.join(REPO, 'train.py'), *common, '--batch_size=16', '--out_dir=ddp'],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count('done:') == 1  # rank 0 alone reports
    assert '2 process(es), 32 images per iteration' in ddp.stdout
    one, two = losses(tmp_path / 'single'), losses(tmp_path / 'ddp')
    assert sorted(two) == list(range(1, 31))
    assert all(two[i] == pytest.approx(one[i], abs=1e-4) for i in one), (one, two)
    evals = [[r for r in read_jsonl(tmp_path / d / 'metrics.jsonl') if 'val_acc' in r] for d in ('single', 'ddp')]
    assert [r['iter'] for r in evals[1]] == [15, 30]
    assert abs(evals[0][-1]['val_acc'] - evals[1][-1]['val_acc']) <= 0.004
