"""What a run saves and where it starts again: an interrupted run resumed reproduces the uninterrupted one
(Ctrl-C, a kill inside a save), and a checkpoint that cannot be carried on is one line naming why."""
import hashlib
import os
import shutil
import signal

import pytest
import torch
from PIL import Image

from conftest import REPO, RUN_WITH_HOOK, TINY, assert_one_line_error, grey_folder, losses, run_script, start_script, wait_for_line

FOLDER = TINY + ['--dataset=folder', '--max_iters=4', '--eval_interval=4', '--log_interval=2']
# dropout and augmentation on, so that an exact resume needs every RNG restored
RUN = TINY + ['--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--log_interval=1', '--max_iters=60',
              '--dropout=0.1', '--aug_translate=2.0', '--aug_rotate=10.0', '--aug_crop=1']

# the second checkpoint is written half, then the process waits to be killed: a kill inside a save, every time
PAUSED_SAVE = RUN_WITH_HOOK.format(hook="""
real_save, saves = torch.save, []
def half_save(obj, f):
    saves.append(1)
    if len(saves) == 1:
        return real_save(obj, f)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    f.flush()
    print('paused inside torch.save', flush=True)
    time.sleep(600)
torch.save = half_save
""")


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module', params=['adamw', pytest.param('muon', marks=pytest.mark.slow)])
def reference(request, synthetic_data, tmp_path_factory):
    """The uninterrupted run that interrupted-and-resumed runs must reproduce, with each optimizer."""
    cwd = tmp_path_factory.mktemp('reference')
    args = [*RUN, f'--data_dir={synthetic_data}', f'--optimizer={request.param}']
    result = run_script('train.py', *args, '--eval_interval=50', '--out_dir=out', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return args, losses(cwd / 'out')


def test_ctrl_c_checkpoints_and_resume_reproduces_the_run(reference, tmp_path):
    args, expected = reference
    args = [*args, '--eval_interval=50', '--out_dir=out']
    process = start_script('train.py', *args, cwd=tmp_path)
    wait_for_line(process, 'iter 20/60')
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert 'stopped by SIGINT after iter' in stdout and f'Resume with: python {REPO}/train.py' in stdout
    assert '--init_from=resume' in stdout
    stopped_at = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num']
    assert 20 <= stopped_at < 60
    result = run_script('train.py', *args, '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resumed = losses(tmp_path / 'out')
    assert sorted(resumed) == list(range(1, 61))
    assert all(resumed[i] == pytest.approx(expected[i], abs=1e-6) for i in range(stopped_at + 1, 61))


@pytest.mark.slow
@pytest.mark.parametrize('reference', ['adamw'], indirect=True)
def test_kill_inside_a_save_keeps_the_last_checkpoint(reference, tmp_path):
    args, expected = reference
    args = [*args, '--eval_interval=10', '--out_dir=out']
    process = start_script('train.py', *args, cwd=tmp_path, python_args=('-c', PAUSED_SAVE))
    wait_for_line(process, 'paused inside torch.save')  # in the save at iter 20
    process.kill()
    process.wait()
    assert (tmp_path / 'out' / 'ckpt.pt.tmp').stat().st_size > 0  # the half-written new checkpoint
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 10  # the old one, whole
    result = run_script('train.py', *args, '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resumed = losses(tmp_path / 'out')
    assert sorted(resumed) == list(range(1, 61))
    assert all(resumed[i] == pytest.approx(expected[i], abs=1e-6) for i in range(1, 61))


@pytest.fixture
def resume(run_here, trained_run, copy_of_run):
    """Carry on a copy of the shared run (200 iterations) in this process: most of these stop at start, the rest
    train seconds."""
    def run(*args, max_iters=220):
        return run_here('train.py', *trained_run.args, f'--max_iters={max_iters}', '--eval_interval=10', '--out_dir=out',
                        '--init_from=resume', *args, cwd=copy_of_run.parent)
    return run


@pytest.mark.parametrize('damage,message', [
    ('truncate', 'is not a readable checkpoint (truncated or corrupt?)'),
    ('garbage', 'is not a readable checkpoint (truncated or corrupt?)'),
    ('missing', 'no checkpoint at out/ckpt.pt'),
    ('no_iter_num', 'out/ckpt.pt lacks iter_num: saved by another version of nanoViT, or edited'),
    ('no_optimizer', 'out/ckpt.pt lacks optimizer'),
    ('optimizer_shape', "out/ckpt.pt: the saved AdamW state does not fit this model's parameters"),
])
def test_unusable_checkpoints(damage, message, copy_of_run, resume):
    ckpt = copy_of_run / 'ckpt.pt'
    if damage == 'missing':
        ckpt.unlink()
    elif damage in ('truncate', 'garbage'):
        blob = ckpt.read_bytes()
        ckpt.write_bytes(blob[:len(blob) // 2] if damage == 'truncate' else b'\x00junk' * 100)
    else:
        checkpoint = torch.load(ckpt, weights_only=True)
        if damage == 'optimizer_shape':  # a fused AdamW given this would crash the process (rc 139)
            checkpoint['optimizer'][0]['state'][0]['exp_avg'] = torch.zeros(3, 3)
        else:
            del checkpoint[damage.removeprefix('no_')]
        torch.save(checkpoint, ckpt)
    before = ckpt.read_bytes() if ckpt.exists() else None
    assert_one_line_error(resume(), message)
    assert (ckpt.read_bytes() if ckpt.exists() else None) == before


def test_resume_refuses_another_model_or_dataset_and_notes_other_changes(copy_of_run, synthetic_data, resume):
    cwd, ckpt = copy_of_run.parent, copy_of_run / 'ckpt.pt'
    before = digest(ckpt)
    assert_one_line_error(resume('--n_embd=48', '--n_layer=3', '--pos_std=0.02'),
                          'holds a run with n_layer=2, n_embd=32 but this run asks for n_layer=3, n_embd=48', code=2)
    fashion = cwd / 'fashion'
    shutil.copytree(os.path.join(synthetic_data, 'MNIST'), fashion / 'FashionMNIST')
    assert_one_line_error(resume('--dataset=fashion_mnist', f'--data_dir={fashion}'),
                          "holds a run with dataset='mnist' but this run asks for dataset='fashion_mnist'", code=2)
    assert digest(ckpt) == before
    result = resume('--batch_size=16', '--learning_rate=0.002')
    assert result.returncode == 0, result.stderr
    assert ("note: resuming with changes: eval_interval 100 -> 10, plot True -> False, batch_size 32 -> 16, "
            "learning_rate 0.003 -> 0.002, "
            "max_iters 200 -> 220, images per iteration 32 -> 16") in result.stdout
    assert_one_line_error(resume(max_iters=220), "out/ckpt.pt is at iter 220, already at max_iters=220; raise max_iters", code=2)


def test_weights_that_do_not_fit_are_named(copy_of_run, resume):
    ckpt = copy_of_run / 'ckpt.pt'
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint['model']['head.weight'] = torch.zeros(10, 33)
    del checkpoint['model']['ln_f.bias']
    torch.save(checkpoint, ckpt)
    assert_one_line_error(resume(), 'does not fit this model: head.weight is (10, 33) in the '
                                                       'checkpoint, (10, 32) here; missing ln_f.bias')


def edit_checkpoint(out, edit):
    checkpoint = torch.load(out / 'ckpt.pt', weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, out / 'ckpt.pt')


@pytest.mark.parametrize('edit,message', [
    (lambda c: c['model_args'].update(rope=True), "out/ckpt.pt: model_args hold rope, which this version of nanoViT does not know"),
    (lambda c: c['model_args'].pop('qk_norm'), "out/ckpt.pt: model_args lack qk_norm: saved by another version of nanoViT"),
    (lambda c: c.pop('store_size'), "out/ckpt.pt lacks store_size: saved by another version of nanoViT, or edited"),
])
def test_a_checkpoint_of_another_version_is_one_line(edit, message, copy_of_run, resume, run_here):
    edit_checkpoint(copy_of_run, edit)
    assert_one_line_error(resume(), message)
    assert_one_line_error(run_here('sample.py', '--out_dir=out', '--device=cpu', cwd=copy_of_run.parent), message)


def test_a_resume_with_pictures_added_says_so(tmp_path, run_here):
    root = grey_folder(tmp_path / 'grow')
    args = [*FOLDER, '--batch_size=8', f'--data_dir={root}', '--max_iters=2', '--eval_interval=2']
    assert run_here('train.py', *args, cwd=tmp_path).returncode == 0
    Image.new('L', (28, 28), 9).save(tmp_path / 'grow' / 'train' / 'a' / 'new.png')
    result = run_here('train.py', *args[:-2], '--max_iters=4', '--eval_interval=4', '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'training pictures 24 -> 25 (the batches are drawn anew)' in result.stdout
    # with pictures held out, another count shuffles other ones into the validation split: refused
    held = ['--val_size=4', '--out_dir=held']
    assert run_here('train.py', *args, *held, cwd=tmp_path).returncode == 0
    Image.new('L', (28, 28), 99).save(tmp_path / 'grow' / 'train' / 'b' / 'new.png')
    result = run_here('train.py', *args[:-2], *held, '--max_iters=4', '--eval_interval=4', '--init_from=resume',
                      cwd=tmp_path)
    assert_one_line_error(result, "held/ckpt.pt trained on 21 pictures holding out val_size=4; the training split now "
                                  "leaves 22, and the pictures held out would be others", code=2)


def test_a_linear_probe_resumed_as_a_whole_fine_tune_names_the_way_that_works(trained_run, synthetic_data, tmp_path,
                                                                              run_here):
    args = [*trained_run.args, f'--init_from={trained_run.out}', '--linear_probe=True', '--max_iters=4',
            '--eval_interval=4', '--out_dir=probe']
    assert run_here('train.py', *args, cwd=tmp_path).returncode == 0
    result = run_here('train.py', *args[:-4], '--linear_probe=False', '--max_iters=8', '--eval_interval=4',
                      '--out_dir=probe', '--init_from=resume', cwd=tmp_path)
    assert_one_line_error(result, "probe/ckpt.pt holds a run with linear_probe=True but this run asks for "
                                  "linear_probe=False; to train it another way, start a new run from it with "
                                  "--init_from=probe and another --out_dir", code=2)
