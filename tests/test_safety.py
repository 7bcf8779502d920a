"""Never lose a run: one run per out_dir and never one overwritten, a stop within one iteration of a signal,
divergence that never replaces a good checkpoint, a full disk, a torn metrics file, and the same under torchrun; the
held-out split kept apart, schedules that say what they do, and a run's folder that says where it came from."""
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (REPO, RUN_WITH_HOOK, TINY, assert_one_line_error, losses, read_jsonl, run_script, small_disk,
                      start_script, wait_for_line)
from support import safety

# dropout and augmentation on, so that an exact resume needs every RNG restored
RUN = TINY + ['--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--log_interval=1', '--max_iters=60',
              '--dropout=0.1', '--aug_translate=2.0', '--aug_rotate=10.0', '--aug_crop=1']

# every checkpoint takes 3 s more to write: time for a second signal to arrive while the first one's save runs
SLOW_SAVE = RUN_WITH_HOOK.format(hook="""
real_save = torch.save
def slow_save(obj, f):
    print('saving', flush=True)
    time.sleep(3)
    real_save(obj, f)
torch.save = slow_save
""")


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def resume(run_here, trained_run, copy_of_run):
    """Carry on a copy of the shared run (200 iterations) in this process."""
    def run(*args, max_iters=220):
        return run_here('train.py', *trained_run.args, f'--max_iters={max_iters}', '--eval_interval=10', '--out_dir=out',
                        '--init_from=resume', *args, cwd=copy_of_run.parent)
    return run


@pytest.mark.slow  # a whole run under a fault, 5-10 s: in the slow pass (.ci/run runs both)
def test_a_stop_comes_within_one_iteration_whatever_log_interval(synthetic_data, tmp_path):
    # no log line for 100000 iterations, and checkpoints that take 3 s to write: SIGTERM still stops the run
    # at once, says so, and a second signal during the save is noted, not obeyed
    args = [*RUN, f'--data_dir={synthetic_data}', '--max_iters=100000', '--log_interval=100000',
            '--eval_interval=100000', '--out_dir=out']
    process = start_script('train.py', *args, cwd=tmp_path, python_args=('-c', SLOW_SAVE))
    wait_for_line(process, 'model:')
    time.sleep(1)  # some iterations
    process.send_signal(signal.SIGTERM)
    wait_for_line(process, 'saving')
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert 'Traceback' not in stderr, stderr
    assert 'SIGINT: already stopping, the checkpoint is being written' in stdout
    stopped_at = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num']
    assert f'stopped by SIGTERM after iter {stopped_at};' in stdout and 0 < stopped_at < 100000
    assert not os.path.exists(tmp_path / 'out' / 'ckpt.pt.tmp')


@pytest.mark.slow  # a whole run under a fault, 5-10 s: in the slow pass (.ci/run runs both)
def test_a_second_run_in_the_same_out_dir_is_refused_while_the_first_lives(synthetic_data, tmp_path, run_here):
    args = [*RUN, f'--data_dir={synthetic_data}', '--max_iters=100000', '--eval_interval=100000', '--out_dir=out']
    first = start_script('train.py', *args, cwd=tmp_path)
    wait_for_line(first, 'iter 3/')
    second = run_script('train.py', *args, cwd=tmp_path)  # a process of its own: its exit handlers run as it ends
    assert_one_line_error(second, f"out_dir='out' is in use by another run (pid {first.pid} on ", code=2)
    # the refused run clears nothing of the live one's, which has no checkpoint yet
    assert all((tmp_path / 'out' / name).exists() for name in ('lock', 'log.txt', 'run.json'))
    first.kill()  # no chance to clean up: the lock must not outlive it
    first.wait()
    third = run_here('train.py', *args[:-3], '--max_iters=5', '--eval_interval=5', '--out_dir=out', cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert [r['iter'] for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl') if 'loss' in r] == [1, 2, 3, 4, 5]


def test_rerunning_without_resume_never_overwrites(copy_of_run, synthetic_data, run_here):
    cwd, ckpt = copy_of_run.parent, copy_of_run / 'ckpt.pt'
    before, metrics = digest(ckpt), (cwd / 'out' / 'metrics.jsonl').read_text()
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=40', '--out_dir=out', cwd=cwd)
    assert_one_line_error(result, "out/ckpt.pt already holds a run; carry it on with --init_from=resume, or to start "
                                  "over delete out", code=2)
    assert digest(ckpt) == before and (cwd / 'out' / 'metrics.jsonl').read_text() == metrics


def test_an_overflowing_loss_stops_and_keeps_the_last_good_checkpoint(copy_of_run, resume):
    ckpt = copy_of_run / 'ckpt.pt'
    before = digest(ckpt)
    result = resume('--learning_rate=1e30', '--grad_clip=0.0', '--log_interval=1')
    assert_one_line_error(result, 'training diverged. Lower learning_rate (now 1e+30)')
    assert 'out/ckpt.pt is left as it was' in result.stderr
    assert digest(ckpt) == before


def test_a_finite_divergence_never_replaces_the_last_good_checkpoint(copy_of_run, resume):
    # learning_rate=100 wrecks the model with a finite loss: the training loss from 0.3 to hundreds
    ckpt = copy_of_run / 'ckpt.pt'
    before = digest(ckpt)
    result = resume('--learning_rate=100', '--grad_clip=0.0')
    assert_one_line_error(result, "the training loss is ", code=1)
    assert "at iter 210, the checkpoint's 0." in result.stderr and 'training diverged. Lower learning_rate (now 100)' \
        in result.stderr and 'out/ckpt.pt is left as it was' in result.stderr
    assert digest(ckpt) == before
    result = resume()  # with the run's own learning rate, it carries on from the good checkpoint
    assert result.returncode == 0, result.stderr
    assert torch.load(ckpt, weights_only=True)['iter_num'] == 220


def test_a_torn_last_metrics_line_is_dropped(copy_of_run, resume):
    with open(copy_of_run / 'metrics.jsonl', 'a') as f:
        f.write('{"iter": 25, "loss": 2.2')  # a run killed while writing, or a full disk
    result = resume()
    assert result.returncode == 0, result.stderr
    assert 'ends in a half-written line' in result.stdout
    records = read_jsonl(copy_of_run / 'metrics.jsonl')
    assert [r['iter'] for r in records if 'test_acc' in r] == [100, 200, 210, 220]


def test_a_metrics_file_with_a_line_that_is_not_a_record(copy_of_run, resume, run_here):
    with open(copy_of_run / 'metrics.jsonl') as f:
        lines = f.readlines()
    lines.insert(1, '[1, 2, 3]\n')
    (copy_of_run / 'metrics.jsonl').write_text(''.join(lines))
    assert_one_line_error(resume(), "out/metrics.jsonl, line 2: not a metrics record")
    assert_one_line_error(run_here('plot.py', 'out', cwd=copy_of_run.parent), "line 2: not a metrics record")


@pytest.mark.slow  # a whole run under a fault, 5-10 s: in the slow pass (.ci/run runs both)
def test_a_full_disk_keeps_the_old_checkpoint_and_no_temporary_file(copy_of_run, synthetic_data, resume):
    cwd, ckpt = copy_of_run.parent, copy_of_run / 'ckpt.pt'
    before = digest(ckpt)
    os.symlink('/dev/full', cwd / 'out' / 'ckpt.pt.tmp')  # every write there fails: "No space left on device"
    result = resume()
    assert_one_line_error(result, 'could not write the checkpoint out/ckpt.pt.tmp: No space left on device; '
                                  'out/ckpt.pt is left as it was', code=1)
    assert digest(ckpt) == before and not os.path.lexists(cwd / 'out' / 'ckpt.pt.tmp')
    # and a metrics file that cannot be written is one line too
    os.symlink('/dev/full', cwd / 'new-metrics')
    os.makedirs(cwd / 'new')
    os.rename(cwd / 'new-metrics', cwd / 'new' / 'metrics.jsonl')
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=20', '--out_dir=new', cwd=cwd)
    assert_one_line_error(result, 'could not write new/metrics.jsonl: No space left on device', code=1)


def test_a_full_disk_at_the_curves_is_a_note_and_the_run_goes_on(synthetic_data, tmp_path, run_here):
    os.makedirs(tmp_path / 'out')
    os.symlink('/dev/full', tmp_path / 'out' / 'curves.png')
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=4', '--eval_interval=2',
                      '--plot=True', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'note: could not draw out/curves.png (No space left on device); training goes on' in result.stdout
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 4


def test_out_dir_with_a_tilde_is_in_the_home_folder(synthetic_data, tmp_path, run_here, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=2', '--eval_interval=2',
                      '--out_dir=~/run', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'home' / 'run' / 'ckpt.pt').exists() and not (tmp_path / '~').exists()


def test_unwritable_out_dir(synthetic_data, tmp_path, run_here):
    (tmp_path / 'a_file').write_text('')
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--out_dir=a_file/run', cwd=tmp_path)
    assert_one_line_error(result, "out_dir='a_file/run' is not writable", code=1)


def torchrun(*args, cwd, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               os.path.join(REPO, 'train.py'), *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(synthetic_data, tmp_path):
    common = [*TINY, '--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=5', '--log_interval=1',
              '--max_iters=30', '--eval_interval=15', f'--data_dir={synthetic_data}']
    single = run_script('train.py', *common, '--batch_size=32', '--out_dir=single', cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    stdout, stderr = torchrun(*common, '--batch_size=16', '--out_dir=ddp', cwd=tmp_path).communicate(timeout=300)
    assert stdout.count('done:') == 1, stderr[-3000:]  # rank 0 alone reports
    assert '2 process(es), 32 images per iteration' in stdout
    one, two = losses(tmp_path / 'single'), losses(tmp_path / 'ddp')
    assert sorted(two) == list(range(1, 31))
    assert all(two[i] == pytest.approx(one[i], abs=1e-4) for i in one), (one, two)
    evals = [[r for r in read_jsonl(tmp_path / d / 'metrics.jsonl') if 'test_acc' in r] for d in ('single', 'ddp')]
    assert [r['iter'] for r in evals[1]] == [15, 30]
    assert abs(evals[0][-1]['test_acc'] - evals[1][-1]['test_acc']) <= 0.004


@pytest.mark.slow
def test_ddp_ctrl_c_stops_every_process_at_once_and_tells_the_torchrun_command(synthetic_data, tmp_path):
    # no log line for 100000 iterations: the stop must not wait for one (torchrun kills its workers 30 s on)
    args = [*TINY, '--log_interval=100000', '--max_iters=100000', '--eval_interval=100000', '--batch_size=16',
            f'--data_dir={synthetic_data}', '--out_dir=out']
    process = torchrun(*args, cwd=tmp_path, start_new_session=True)
    wait_for_line(process, 'model:')
    time.sleep(2)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: torchrun and its workers get SIGINT
    stdout, stderr = process.communicate(timeout=120)
    assert 'stopped by SIGINT after iter' in stdout, stderr[-3000:]
    assert (f'Resume with: torchrun --standalone --nproc_per_node=2 {REPO}/train.py ' in stdout
            and stdout.rstrip().endswith('--init_from=resume'))
    stopped_at = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num']
    result = run_script('train.py', *args, f'--max_iters={stopped_at + 2}', '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'processes 2 -> 1 (dropout draws new numbers), images per iteration 32 -> 16' in result.stdout


@pytest.mark.slow
def test_under_torchrun_one_process_s_error_is_the_only_line(tmp_path):
    # process 0 stops at its data (no such folder) while process 1 waits for it: process 1 exits quietly
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             os.path.join(REPO, 'train.py'), *TINY, '--dataset=folder', '--data_dir=nowhere'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.count('error: ') == 1 and "data_dir='" in result.stderr, result.stderr
    assert 'train.py", line' not in result.stderr, result.stderr  # no worker's traceback
    assert 'broadcast_buffers' not in result.stderr


# -----------------------------------------------------------------------------
# the held-out split kept apart, schedules that say what they do, the run's folder (hostile round 5)


def test_a_resume_with_another_held_out_split_is_refused(copy_of_run, resume):
    # a larger validation split would hold pictures the checkpoint trained on
    assert_one_line_error(resume('--val_size=500'), "out/ckpt.pt holds a run with val_size=0 but this run asks for "
                                                    "val_size=500; resume with the run's own config", code=2)


def test_fine_tuning_on_the_source_s_own_data_holds_out_no_picture_it_trained_on(trained_run, synthetic_data, tmp_path,
                                                                                   run_here):
    args = [*trained_run.args, f'--init_from={trained_run.out}', '--max_iters=4', '--eval_interval=4']
    result = run_here('train.py', *args, '--val_size=300', '--out_dir=ft', cwd=tmp_path)
    assert_one_line_error(result, f"trained on mnist in {synthetic_data} holding out val_size=0; with val_size=300, "
                                  f"pictures it trained on would be in this run's validation split", code=2)
    os.symlink(synthetic_data, tmp_path / 'link')  # the same folder by another path
    result = run_here('train.py', *args, '--val_size=300', f'--data_dir={tmp_path / "link"}', '--out_dir=ft', cwd=tmp_path)
    assert_one_line_error(result, "holding out val_size=0; with val_size=300, pictures it trained on", code=2)
    assert run_here('train.py', *args, '--out_dir=ft', cwd=tmp_path).returncode == 0


def test_nothing_the_run_decides_reads_the_test_split(synthetic_data, tmp_path, run_here, monkeypatch):
    # the divergence guard compares training losses; the checkpoint keeps one; the test split is for the final figure
    seen = []
    real = safety.stop_if_diverged
    monkeypatch.setattr(safety, 'stop_if_diverged', lambda loss, *a: seen.append(loss) or real(loss, *a))
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=20', '--eval_interval=10',
                      '--val_size=200', '--out_dir=out', cwd=tmp_path, keep_globals=True)
    assert result.returncode == 0, result.stderr
    # the held-out pictures are read from the training split's map by index, never copied out of it
    images, _, indices = result.globals['splits']['val']
    assert images is result.globals['data'].train[0] and len(indices) == 200
    records = read_jsonl(tmp_path / 'out' / 'metrics.jsonl')
    tested = {r['test_loss'] for r in records if 'test_loss' in r} | {r['val_loss'] for r in records if 'val_loss' in r}
    assert seen and not tested & set(seen)
    saved = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
    assert saved['train_loss'] == records[-1]['train_loss'] and 'val_loss' not in saved


@pytest.mark.parametrize('flags,message', [
    (['--warmup_iters=30', '--max_iters=20'], "note: warmup_iters=30 is not below max_iters=20: the learning rate never "
                                              "reaches its peak and never decays"),
    (['--muon_momentum_warmup=10'], "note: muon_momentum_warmup=10 does nothing with optimizer='adamw'"),
])
def test_a_schedule_that_does_otherwise_than_it_reads_says_so(flags, message, synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=20', *flags, '--eval_interval=20',
                      cwd=tmp_path)
    assert result.returncode == 0 and message in result.stdout, result.stdout


def test_a_momentum_warm_up_that_would_fall_is_refused(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--optimizer=muon', '--muon_momentum=0.8',
                      '--muon_momentum_warmup=10', cwd=tmp_path)
    assert_one_line_error(result, "muon_momentum=0.8 must be at least muon_momentum_min=0.85, where "
                                  "muon_momentum_warmup starts it", code=2)


@pytest.mark.slow
def test_the_printed_resume_command_works_from_where_the_run_was_started(synthetic_data, tmp_path):
    os.makedirs(tmp_path / 'elsewhere')
    script = os.path.relpath(os.path.join(REPO, 'train.py'), tmp_path / 'elsewhere')  # ../../work/main/train.py
    args = [*TINY, f'--data_dir={synthetic_data}', '--max_iters=100000', '--log_interval=5', '--out_dir=out']
    process = subprocess.Popen([sys.executable, script, *args], cwd=tmp_path / 'elsewhere', stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    wait_for_line(process, 'iter 5/')
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    command = stdout.split('Resume with: ')[1].strip()
    assert command.startswith(f"python {script} ") and command.endswith('--init_from=resume')
    resumed = subprocess.run(shlex.split(command.replace('python', sys.executable, 1).replace('100000', '12')),
                             cwd=tmp_path / 'elsewhere', capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and 'done:' in resumed.stdout, resumed.stderr


@pytest.mark.slow
def test_a_disk_too_small_for_a_checkpoint_stops_the_run_at_start(synthetic_data, tmp_path):
    with small_disk(tmp_path / "tiny", 1) as disk:  # 1 MB; a checkpoint of this 128-wide model takes about 5 MB
        result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--n_embd=128', '--max_iters=20',
                            f'--out_dir={disk}/run', cwd=tmp_path)
        assert_one_line_error(result, f"out_dir='{disk}/run' has 1 MiB free on its disk, and a checkpoint of this run "
                                      f"takes about 5 MiB: free some space, or choose another --out_dir")
        assert not os.path.exists(disk / 'run')  # a failed start leaves nothing behind


@pytest.mark.slow
def test_a_failed_start_leaves_no_out_dir_and_a_resume_creates_none(tmp_path):
    result = run_script('train.py', *TINY, f'--data_dir={tmp_path / "nowhere"}', '--out_dir=out', cwd=tmp_path,
                        env={'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9'})
    assert result.returncode == 1 and 'could not load the train split of MNIST' in result.stderr
    assert not (tmp_path / 'out').exists()
    result = run_script('train.py', *TINY, '--out_dir=missing', '--init_from=resume', cwd=tmp_path)
    assert_one_line_error(result, "no checkpoint at missing/ckpt.pt to resume (train one first")
    assert not (tmp_path / 'missing').exists()
    (tmp_path / 'kept').mkdir()  # a run's logs without its checkpoint (records/runs/ keeps such folders)
    for name in ('log.txt', 'metrics.jsonl', 'run.json'):
        (tmp_path / 'kept' / name).write_text('{}\n')
    result = run_script('train.py', *TINY, '--out_dir=kept', '--init_from=resume', cwd=tmp_path)
    assert_one_line_error(result, "no checkpoint at kept/ckpt.pt to resume")
    assert sorted(os.listdir(tmp_path / 'kept')) == ['log.txt', 'metrics.jsonl', 'run.json']


def test_a_save_that_runs_out_of_space_says_so_in_one_line(copy_of_run, resume, monkeypatch):
    # torch.save on a full disk raises "[enforce fail at inline_container.cc:672] . unexpected pos ..."
    ckpt = copy_of_run / 'ckpt.pt'
    before = digest(ckpt)

    def full_disk(obj, f):
        f.write(b'x' * 1000)
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 1000 vs 962')
    monkeypatch.setattr(torch, 'save', full_disk)
    monkeypatch.setattr('shutil.disk_usage', lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    monkeypatch.setattr(safety, 'check_free_space', lambda *args: None)  # past the check at start: it fills later
    assert_one_line_error(resume(), 'could not write the checkpoint out/ckpt.pt.tmp: No space left on device (0 MiB '
                                    'written, then the disk was full); out/ckpt.pt is left as it was')
    assert digest(ckpt) == before and not (copy_of_run / 'ckpt.pt.tmp').exists()
