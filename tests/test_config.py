"""The configuration: configurator.py (config files, --key=value flags, typed, with one line for every
mistake) and the rules a value must meet before anything runs (support/rules.py, model.py's ViTConfig)."""
import os
import sys

import pytest

from conftest import REPO, TINY, assert_one_line_error, make_picture_folder


@pytest.mark.parametrize('args,message', [
    (['--max_iters=abc'], "config error: --max_iters=abc: max_iters must be int (default 1000), got 'abc'"),
    (['--nonexistent=1'], "config error: --nonexistent=1: unknown config key 'nonexistent'"),
    (['--lerning_rate=1e-3'], "did you mean learning_rate?"),
    (['--compile=1'], "config error: --compile=1: compile must be bool"),
    (['--_started=0.0'], "unknown config key '_started'"),
    (['config/missing.py'], "config error: config file not found: config/missing.py"),
    (['--batch_size'], "config error: --batch_size: overrides are written --key=value"),
    (['--max_iters={[]:1}'], "config error: --max_iters={[]:1}: max_iters must be int (default 1000), got '{[]:1}'"),
])
def test_configurator_errors_exit_2(args, message, tmp_path, run_here):
    result = run_here('train.py', *args, cwd=tmp_path)
    assert_one_line_error(result, message, code=2)


def test_a_float_key_takes_an_int_or_numpy_float_as_a_float_and_refuses_a_bool(tmp_path, monkeypatch):
    # a config file that computes with numpy hands over a numpy float64
    (tmp_path / 'numbers.py').write_text("import numpy as np\nlearning_rate = np.float64(2e-3) * 2\nmin_lr = 0\n")
    monkeypatch.setattr(sys, 'argv', ['train.py', str(tmp_path / 'numbers.py')])
    namespace = {'learning_rate': 1e-3, 'min_lr': 1e-5, 'config_keys': ['learning_rate', 'min_lr']}
    with open(os.path.join(REPO, 'configurator.py')) as f:
        configurator = f.read()
    exec(configurator, namespace)
    assert type(namespace['learning_rate']) is float and namespace['learning_rate'] == 4e-3
    assert type(namespace['min_lr']) is float and namespace['min_lr'] == 0.0
    monkeypatch.setattr(sys, 'argv', ['train.py', '--min_lr=True'])
    with pytest.raises(SystemExit) as stopped:
        exec(configurator, dict(namespace, min_lr=1e-5))
    assert stopped.value.code == 2


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


@pytest.mark.parametrize('flag,message', [
    ('--n_embd=-4', "n_embd=-4 must be at least 1"), ('--n_embd=0', "n_embd=0 must be at least 1"),
    ('--patch_size=0', "patch_size=0 must be at least 1"), ('--n_head=0', "n_head=0 must be at least 1"),
    ('--n_layer=0', "n_layer=0 must be at least 1"), ('--mlp_ratio=-1.0', "mlp_ratio=-1.0 must be positive"),
    ('--n_head=5', "n_embd=32 is not divisible by n_head=5"),
    ('--learning_rate=-1.0', "learning_rate=-1.0 must be positive"), ('--beta2=1.5', "beta2=1.5 must be in [0, 1)"),
    ('--label_smoothing=2.0', "label_smoothing=2.0 must be in [0, 1)"),
    ('--grad_clip=-1.0', "grad_clip=-1.0 must be 0 or more"), ('--tta_shift=-1', "tta_shift=-1 must be 0 or more"),
    ('--tta_views=8', "tta_views=8 must be 9 or 5"),
    ('--warmup_iters=-1', "warmup_iters=-1 must be 0 or more"), (f'--seed={2 ** 63}', f"seed={2 ** 63} must be in [0, 2**63)"),
    ('--optimizer=sgd', "optimizer='sgd' must be 'adamw' or 'muon'"), ('--max_iters=0', "max_iters=0 must be at least 1"),
    ('--val_size=-1', "val_size=-1 must be 0 or more"),
    ('--store_size=36', "store_size=36 must be 0, or img_size or more"),
    ('--learning_rate=1e999', 'learning_rate=inf must be a finite number'), ('--weight_decay=1e999', 'weight_decay=inf must be'),
    ('--aug_rotate=1e999', 'aug_rotate=inf must be'), ('--mlp_ratio=1e999', 'mlp_ratio=inf must be a finite number'),
    ('--aug_flip=True', "aug_flip=True on mnist: a mirrored digit is another digit"),
    ('--dataset=imagenet', "unknown dataset='imagenet'; choose from mnist, fashion_mnist, cifar10, cifar100, folder, or "
                           "torchvision:NAME"),
    ('--dtype=fp8', "dtype='fp8': use 'auto', 'float32', 'bfloat16' or 'float16'"),
])
def test_impossible_values_stop_at_start_with_one_line(flag, message, tmp_path, run_here):
    # no data anywhere: the value is the error, before any download is tried or out_dir made
    result = run_here('train.py', *TINY, f'--data_dir={tmp_path / "nowhere"}', flag, cwd=tmp_path)
    assert_one_line_error(result, message, code=2)
    assert not (tmp_path / 'out-mnist').exists()


@pytest.mark.parametrize('flag,message', [
    ('nan.py', 'pos_std=nan must be a finite number'),
    ('--tta_shift=14', 'tta_shift=14 shifts the 28x28 pictures by half their shorter side or more; keep it below 14'),
    ('--aug_translate=20.0', 'aug_translate=20.0 shifts the 28x28 pictures'),
    ('--val_size=2000', 'val_size=2000 holds out every training picture: the training split of MNIST has 2000'),
    ('--val_size=1990', 'batch_size=32 x gradient_accumulation_steps=1 x 1 process(es) = 32 pictures an iteration, more '
                        'than the 10 training pictures that val_size=1990 leaves'),
    ('--learning_rate=5e-6', 'min_lr=1e-05 must be at most learning_rate=5e-06 (lower min_lr with learning_rate'),
    ('--store_size=32', "store_size=32 must be 0 for mnist, whose pictures are kept at their own size (another img_size"),
])
def test_values_that_cannot_mean_anything_for_the_data_stop_at_start(flag, message, synthetic_data, tmp_path, run_here):
    if flag == 'nan.py':  # a NaN comes from a config file
        (tmp_path / flag).write_text("pos_std = float('nan')\n")
        flag = str(tmp_path / flag)
    if flag == '--store_size=32':
        flag = '--store_size=32 --img_size=28'.split()
    cache = tmp_path / 'cache'  # nothing prepared there: a check that needs no pixel comes before any decoding
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', *([flag] if isinstance(flag, str) else flag),
                      '--out_dir=out', cwd=tmp_path, env={'XDG_CACHE_HOME': str(cache)})
    assert_one_line_error(result, message, code=2)
    assert 'decoded' not in result.stdout and not any(cache.rglob('*.u8'))
    assert not (tmp_path / 'out' / 'metrics.jsonl').exists()


def test_shifts_are_judged_by_the_shorter_side_of_oblong_pictures(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(20, 4), size=(24, 16))  # 24 wide, 16 high
    result = run_here('train.py', *TINY, '--dataset=folder', f'--data_dir={root}', '--patch_size=4', '--aug_crop=9',
                      '--out_dir=out', cwd=tmp_path, env={'XDG_CACHE_HOME': str(tmp_path / 'cache')})
    assert_one_line_error(result, 'aug_crop=9 shifts the 24x16 pictures by half their shorter side or more; keep it '
                                  'below 8', code=2)


def test_a_config_file_that_is_not_utf8(tmp_path, run_here):
    (tmp_path / 'c.py').write_bytes(b'# r\xe9glages\nmax_iters = 3\n')
    for script in ('train.py', 'bench.py', 'sample.py'):
        result = run_here(script, str(tmp_path / 'c.py'), cwd=tmp_path)
        assert_one_line_error(result, f"{tmp_path / 'c.py'} is not UTF-8 text (byte 0xe9 at offset 3)", code=2)


@pytest.mark.parametrize('config', sorted(f for f in os.listdir(os.path.join(REPO, 'config')) if f.endswith('.py')))
def test_every_config_file_is_a_valid_config(config, run_here, tmp_path, monkeypatch):
    # every key known and of its type, every value within train.py's rules (the run stops where it would claim out_dir)
    monkeypatch.setattr('support.safety.claim_out_dir', lambda *a, **k: sys.exit(0))
    result = run_here('train.py', os.path.join(REPO, 'config', config), '--device=cpu', cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == '', result.stderr
