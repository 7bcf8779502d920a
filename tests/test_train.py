"""train.py end to end on synthetic MNIST-format data, and its answers to bad input."""
import json
import os

import pytest
import torch

from conftest import TINY, make_mnist_dir, run_script
from model import ViT, ViTConfig

FAST = TINY + ['--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--log_interval=10']


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


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


def test_writes_a_curve_png(trained):
    cwd, _ = trained
    png = cwd / 'images' / 'out.png'
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    from PIL import Image
    assert Image.open(png).size[0] > 500


def test_checkpoint_loads_on_cpu_into_a_fresh_model(trained, synthetic_data):
    cwd, _ = trained
    checkpoint = torch.load(cwd / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert checkpoint['iter_num'] == 200 and checkpoint['config']['max_iters'] == 200
    assert not any(k.startswith('_orig_mod.') for k in checkpoint['model'])
    model = ViT(ViTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    fresh = ViT(ViTConfig(**checkpoint['model_args'])).eval()
    assert not torch.allclose(model(x)[0], fresh(x)[0])  # the weights are the trained ones
    assert torch.equal(model(x)[0], model(x)[0])


def test_same_seed_same_losses(synthetic_data, tmp_path):
    losses = []
    for run in ('a', 'b'):
        result = run_script('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=30', '--eval_interval=30',
                            '--log_interval=1', '--dropout=0.1', '--aug_translate=2.0', f'--out_dir={run}',
                            cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        losses.append([r['loss'] for r in read_jsonl(tmp_path / run / 'metrics.jsonl') if 'loss' in r])
    assert len(losses[0]) == 30 and losses[0] == losses[1]


def test_overrides_take_effect_with_their_types(synthetic_data, tmp_path):
    result = run_script('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=2', '--eval_interval=2',
                        '--learning_rate=1', '--label_smoothing=0', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['config']
    assert config['learning_rate'] == 1.0 and isinstance(config['learning_rate'], float)
    assert config['n_embd'] == 32 and config['compile'] is False


def test_config_file_then_overrides(synthetic_data, tmp_path):
    (tmp_path / 'my.py').write_text("max_iters = 3\nn_embd = 48\n")
    result = run_script('train.py', str(tmp_path / 'my.py'), *FAST, f'--data_dir={synthetic_data}',
                        '--eval_interval=3', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['config']
    assert config['max_iters'] == 3 and config['n_embd'] == 32  # the flag came after the file


@pytest.mark.parametrize('args,message', [
    (['--max_iters=abc'], "config error: --max_iters=abc: max_iters must be int (default 1000), got 'abc'"),
    (['--nonexistent=1'], "config error: --nonexistent=1: unknown config key 'nonexistent'"),
    (['--lerning_rate=1e-3'], "did you mean learning_rate?"),
    (['--compile=1'], "config error: --compile=1: compile must be bool"),
    (['config/missing.py'], "config error: config file not found: config/missing.py"),
    (['--batch_size'], "config error: --batch_size: overrides are written --key=value"),
])
def test_configurator_errors_exit_2(args, message, tmp_path):
    result = run_script('train.py', *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message or message in result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_typo_in_a_config_file_is_caught(tmp_path):
    (tmp_path / 'bad.py').write_text("max_iter = 3\n")
    result = run_script('train.py', str(tmp_path / 'bad.py'), cwd=tmp_path)
    assert result.returncode == 2 and "unknown config key 'max_iter'; did you mean max_iters?" in result.stderr


@pytest.mark.parametrize('args,message', [
    (['--patch_size=5'], "img_size=28 is not divisible by patch_size=5"),
    (['--n_head=5'], "n_embd=32 is not divisible by n_head=5"),
    (['--dataset=imagenet'], "unknown dataset='imagenet'; choose from mnist, fashion_mnist"),
    (['--dtype=fp8'], "dtype='fp8': use 'auto', 'float32', 'bfloat16' or 'float16'"),
    (['--max_iters=0'], "max_iters=0 must be at least 1"),
])
def test_bad_values_exit_with_one_line(args, message, synthetic_data, tmp_path):
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_corrupt_idx_files_are_named(damage, tmp_path):
    data = make_mnist_dir(str(tmp_path / 'data'), n_train=200, n_test=100)
    path = os.path.join(data, 'MNIST', 'raw', 'train-images-idx3-ubyte')
    with open(path, 'rb') as f:
        blob = f.read()
    with open(path, 'wb') as f:
        f.write(blob[:5000] if damage == 'truncate' else b'not an idx file at all' * 10)
    result = run_script('train.py', *TINY, f'--data_dir={data}', cwd=tmp_path)
    assert result.returncode == 1
    assert f"could not load the mnist train split from {os.path.join(data, 'MNIST', 'raw')}" in result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unwritable_out_dir(synthetic_data, tmp_path):
    (tmp_path / 'a_file').write_text('')
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--out_dir=a_file/run', cwd=tmp_path)
    assert result.returncode == 1
    assert "out_dir='a_file/run' is not writable" in result.stderr and 'Traceback' not in result.stderr
