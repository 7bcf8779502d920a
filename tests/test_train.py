"""train.py end to end on synthetic data (MNIST-format digits, a folder of colour pictures), and its
answers to bad input."""
import math
import os

import pytest
import torch
from torch.nn import functional as F

from conftest import REPO, TINY, assert_one_line_error, make_picture_folder, read_jsonl, run_script
from settings import check_config, model_config, train_defaults
from data import load_split, normalize, predict
from model import ViT, ViTConfig

FAST = TINY + ['--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--log_interval=10']


@pytest.fixture(scope='module')
def trained(synthetic_data, tmp_path_factory):
    """One short training run in a fresh folder, shared by the tests that inspect its outputs."""
    cwd = tmp_path_factory.mktemp('run')
    result = run_script('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=200', '--eval_interval=100',
                        '--out_dir=out', '--plot=True', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, result.stdout


def test_reaches_high_accuracy_and_logs(trained):
    cwd, stdout = trained
    assert 'iter 10/200: loss' in stdout and 'step 200: train loss' in stdout
    records = read_jsonl(cwd / 'out' / 'metrics.jsonl')
    evals = [r for r in records if 'val_acc' in r]
    assert [r['iter'] for r in evals] == [100, 200]
    assert [r['iter'] for r in records if 'loss' in r] == list(range(10, 201, 10))
    assert evals[-1]['val_acc'] >= 0.9, evals
    assert f"done: val acc {100 * evals[-1]['val_acc']:.2f}%" in stdout


def test_a_run_writes_only_into_its_out_dir(trained):
    cwd, _ = trained
    assert sorted(os.listdir(cwd)) == ['out']
    assert sorted(os.listdir(cwd / 'out')) == ['ckpt.pt', 'curves.png', 'lock', 'metrics.jsonl']
    with open(cwd / 'out' / 'curves.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_checkpoint_reproduces_the_logged_accuracy_on_a_fresh_model(trained, synthetic_data):
    cwd, _ = trained
    checkpoint = torch.load(cwd / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert checkpoint['iter_num'] == 200 and checkpoint['config']['max_iters'] == 200
    assert not any(k.startswith('_orig_mod.') for k in checkpoint['model'])
    assert checkpoint['classes'][3] == '3 - three' and len(checkpoint['data_mean']) == 1
    model = ViT(ViTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    test = load_split('mnist', synthetic_data, False, 0)
    images, labels = test.images, test.labels
    with torch.no_grad():
        logits, _ = model(normalize(images, checkpoint['data_mean'], checkpoint['data_std']))
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    final = [r for r in read_jsonl(cwd / 'out' / 'metrics.jsonl') if 'val_acc' in r][-1]
    assert accuracy == pytest.approx(final['val_acc'], abs=1e-6) and accuracy >= 0.9



def test_test_time_augmentation_is_what_the_run_and_sample_py_report(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=60', '--eval_interval=60',
                        '--tta_shift=1', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final = [r for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl') if 'val_acc' in r][-1]
    checkpoint = torch.load(tmp_path / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    model = ViT(ViTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    test = load_split('mnist', synthetic_data, False, 0)
    images, labels = test.images, test.labels
    mean, std = checkpoint['data_mean'], checkpoint['data_std']
    with torch.no_grad():
        averaged = F.cross_entropy(predict(model, images, mean, std, tta_shift=1), labels).item()
        plain = F.cross_entropy(predict(model, images, mean, std), labels).item()
    assert final['val_loss'] == pytest.approx(averaged, rel=1e-4) and abs(averaged - plain) > 1e-3
    report = run_here('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=0', cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"test accuracy: {100 * final['val_acc']:.2f}%" in report.stdout
    assert "test-time augmentation: the mean of 9 views shifted by up to 1 px" in report.stdout

def test_same_seed_same_losses(synthetic_data, tmp_path, run_here):
    losses = []
    for run in ('a', 'b'):
        result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=30', '--eval_interval=30',
                            '--log_interval=1', '--dropout=0.1', '--aug_translate=2.0', '--aug_crop=2',
                            f'--out_dir={run}', cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        losses.append([r['loss'] for r in read_jsonl(tmp_path / run / 'metrics.jsonl') if 'loss' in r])
    assert len(losses[0]) == 30 and losses[0] == losses[1]


def test_learning_rate_warms_up_then_follows_a_cosine(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=50', '--eval_interval=50',
                        '--log_interval=1', '--warmup_iters=10', '--learning_rate=0.01', '--min_lr=0.001',
                        '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lr = [r['lr'] for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl') if 'lr' in r]
    assert len(lr) == 50
    warmup, decay = lr[:10], lr[10:]
    assert all(b - a == pytest.approx(0.01 / 11) for a, b in zip(warmup, warmup[1:]))  # linear
    assert decay[0] == pytest.approx(0.01) and decay[-1] == pytest.approx(0.001, rel=0.02)
    assert all(a > b for a, b in zip(decay, decay[1:]))
    # half way through the decay it is half way between the two: a cosine, not a line or a step
    assert decay[20] == pytest.approx(0.0055, rel=1e-3)
    assert decay[10] == pytest.approx(0.001 + 0.009 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-3)


def test_colour_folder_dataset_trains(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(100, 20))
    result = run_here('train.py', *FAST, '--dataset=folder', f'--data_dir={root}', '--patch_size=4',
                        '--max_iters=60', '--eval_interval=60', '--aug_crop=2', '--aug_flip=True', '--out_dir=out',
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'data: folder, 300 train / 60 test images of 3x16x16, 3 classes' in result.stdout
    assert [r for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl') if 'val_acc' in r][-1]['val_acc'] >= 0.9
    checkpoint = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
    assert checkpoint['classes'] == ['blue', 'green', 'red'] and len(checkpoint['data_std']) == 3


def test_streamed_from_the_store_or_whole_in_memory_the_same_losses(synthetic_data, tmp_path, run_here):
    runs = {}
    for placement in ('device', 'stream'):
        result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=20', '--eval_interval=20',
                          '--log_interval=1', '--aug_translate=2.0', '--dropout=0.1', f'--data_placement={placement}',
                          f'--out_dir={placement}', cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert ('on the device' if placement == 'device' else 'streamed from ') in result.stdout
        runs[placement] = [r for r in read_jsonl(tmp_path / placement / 'metrics.jsonl')]
    without_time = {p: [{k: v for k, v in r.items() if k != 'ms'} for r in records] for p, records in runs.items()}
    assert without_time['device'] == without_time['stream'] and len(without_time['device']) == 21


def test_overrides_take_effect_with_their_types(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=2', '--eval_interval=2',
                        '--learning_rate=1', '--label_smoothing=0', '--out_dir=2024', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = torch.load(tmp_path / '2024' / 'ckpt.pt', weights_only=True)['config']  # a string key keeps its text
    assert config['learning_rate'] == 1.0 and isinstance(config['learning_rate'], float)
    assert config['n_embd'] == 32 and config['compile'] is False
    assert not any(k.startswith('_') for k in config)  # the start-up clock is not a key


def test_config_file_then_overrides(synthetic_data, tmp_path, run_here):
    (tmp_path / 'my.py').write_text("import math\n_width = 48\nmax_iters = 3\nn_embd = _width\n"
                                    "learning_rate = 3e-3 * math.sqrt(2)\n")
    result = run_here('train.py', str(tmp_path / 'my.py'), *FAST, f'--data_dir={synthetic_data}',
                        '--eval_interval=3', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['config']
    assert config['max_iters'] == 3 and config['n_embd'] == 32  # the flag came after the file


@pytest.mark.parametrize('args,message', [
    (['--max_iters=abc'], "config error: --max_iters=abc: max_iters must be int (default 1000), got 'abc'"),
    (['--nonexistent=1'], "config error: --nonexistent=1: unknown config key 'nonexistent'"),
    (['--lerning_rate=1e-3'], "did you mean learning_rate?"),
    (['--compile=1'], "config error: --compile=1: compile must be bool"),
    (['--_started=0.0'], "unknown config key '_started'"),
    (['config/missing.py'], "config error: config file not found: config/missing.py"),
    (['--batch_size'], "config error: --batch_size: overrides are written --key=value"),
])
def test_configurator_errors_exit_2(args, message, tmp_path, run_here):
    result = run_here('train.py', *args, cwd=tmp_path)
    assert_one_line_error(result, message, code=2)


@pytest.mark.parametrize('content,message', [
    ("max_iter = 3\n", "bad.py: unknown config key 'max_iter'; did you mean max_iters?"),
    ("betas = (0.9, 0.95)\n", "bad.py: unknown config key 'betas'; did you mean beta2?"),
    ("device = None\n", "bad.py: device must be str (default 'auto'), got None"),
    ("max_iters = 3\nn_embd = = 4\n", "bad.py, line 2: SyntaxError: invalid syntax"),
    ("max_iters = 3\n\nn_embd = undefined_name * 2\n", "bad.py, line 3: NameError: name 'undefined_name' is not defined"),
])
def test_config_file_errors_exit_2(content, message, tmp_path, run_here):
    (tmp_path / 'bad.py').write_text(content)
    result = run_here('train.py', str(tmp_path / 'bad.py'), cwd=tmp_path)
    assert_one_line_error(result, message, code=2)


@pytest.mark.parametrize('changes,message', [
    (dict(n_embd=-4), "n_embd=-4 must be at least 1"), (dict(n_embd=0), "n_embd=0 must be at least 1"),
    (dict(patch_size=0), "patch_size=0 must be at least 1"), (dict(n_head=0), "n_head=0 must be at least 1"),
    (dict(n_layer=0), "n_layer=0 must be at least 1"), (dict(mlp_ratio=-1.0), "mlp_ratio=-1.0 must be positive"),
    (dict(n_head=5), "n_embd=32 is not divisible by n_head=5"),
    (dict(learning_rate=-1.0), "learning_rate=-1.0 must be positive"), (dict(beta2=1.5), "beta2=1.5 must be in [0, 1)"),
    (dict(label_smoothing=2.0), "label_smoothing=2.0 must be in [0, 1)"),
    (dict(grad_clip=-1.0), "grad_clip=-1.0 must be 0 (off) or more"), (dict(tta_shift=-1), "tta_shift=-1 must be 0 (off) or more"),
    (dict(warmup_iters=-1), "warmup_iters=-1 must be 0 or more"), (dict(seed=2 ** 63), f"seed={2 ** 63} must be in [0, 2**63)"),
    (dict(optimizer='sgd'), "optimizer='sgd' must be 'adamw' or 'muon'"), (dict(max_iters=0), "max_iters=0 must be at least 1"),
])
def test_impossible_values_are_one_line(changes, message, capsys):
    # the checks train.py (and bench.py) run on every config, called here directly: fast, and the
    # subprocess tests below show the same line reaching a user
    config = {**train_defaults(), 'n_embd': 32, **changes}
    with pytest.raises(SystemExit) as stop:
        check_config(config)
        model_config(config, img_size=28, in_chans=1, n_classes=10)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith('error: ') and message in err and err.count('\n') == 1, err


def test_train_defaults_are_train_py_s_own():
    defaults = train_defaults()
    assert defaults['out_dir'] == 'out-mnist' and defaults['compile'] is True and defaults['learning_rate'] == 1e-3
    # every key the configurator accepts, and nothing else: the start-up clock is not a setting
    source = open(os.path.join(REPO, 'train.py')).read()
    assigned = [line.split(' = ')[0] for line in source.split("exec(open(")[0].splitlines()
                if ' = ' in line and not line.startswith((' ', '#', '_'))]
    assert sorted(defaults) == sorted(assigned) and len(defaults) > 40


@pytest.mark.parametrize('args,message', [
    (['--n_embd=0'], "bad model config: n_embd=0 must be at least 1"),
    (['--beta2=1.5'], "beta2=1.5 must be in [0, 1)"),
    (['--aug_flip=True'], "aug_flip=True on mnist: a mirrored digit is not the same digit"),
    (['--dataset=imagenet'], "unknown dataset='imagenet'; choose from mnist, fashion_mnist, cifar10, folder"),
    (['--dtype=fp8'], "dtype='fp8': use 'auto', 'float32', 'bfloat16' or 'float16'"),
    (['--img_size=32'], "img_size=32: MNIST images are 28x28; img_size resizes folder datasets only"),
])
def test_bad_values_exit_2_with_one_line(args, message, synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', *args, cwd=tmp_path)
    assert_one_line_error(result, message, code=2)


def test_model_values_fail_before_the_data_loads(tmp_path, run_here):
    # no data anywhere: a bad model value must be the error, before any download is tried or out_dir made
    result = run_here('train.py', *TINY, f'--data_dir={tmp_path / "nowhere"}', '--n_embd=0', cwd=tmp_path)
    assert_one_line_error(result, "bad model config: n_embd=0 must be at least 1", code=2)
    assert not (tmp_path / 'out-mnist').exists()


def test_unwritable_out_dir(synthetic_data, tmp_path, run_here):
    (tmp_path / 'a_file').write_text('')
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--out_dir=a_file/run', cwd=tmp_path)
    assert_one_line_error(result, "out_dir='a_file/run' is not writable", code=1)
