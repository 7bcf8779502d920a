"""train.py end to end on synthetic data (MNIST-format digits, a folder of colour pictures): what it learns,
logs and saves, the schedule, the held-out split, test-time shifts, and the same losses whichever way the data
comes."""
import math
import os
import re
import signal

import pytest
import torch
from torch.nn import functional as F

import prepare
from conftest import FAST, TINY, final_eval, load_split, read_jsonl
from data import model_input, predict
from model import ViT, ViTConfig
from support import checkpoint


def model_of(out):
    checkpoint = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    model = ViT(ViTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    return model.eval(), checkpoint


def test_reaches_high_accuracy_and_logs(trained_run):
    out, stdout = trained_run.out, trained_run.stdout
    assert 'iter 10/200: loss' in stdout and 'step 200: train loss' in stdout and ', test acc ' in stdout
    assert re.search(r'iter 10/200: .*, time [\d.]+ms, eta \d+m\d\ds \(warm-up\)\n', stdout)  # at once
    records = read_jsonl(out / 'metrics.jsonl')
    evals = [r for r in records if 'test_acc' in r]
    assert [r['iter'] for r in evals] == [100, 200] and not any('val_acc' in r for r in records)  # none held out
    assert [r['iter'] for r in records if 'loss' in r] == list(range(10, 201, 10))
    assert evals[-1]['test_acc'] >= 0.9, evals
    assert all(r['eval_seconds'] > 0 for r in evals) and f"(evaluated in {evals[-1]['eval_seconds']:.1f}s)" in stdout
    assert f"done: test acc {100 * evals[-1]['test_acc']:.2f}%" in stdout
    model, _ = model_of(out)
    assert f"{3 * model.flops_per_image() * 32 * 200 / 1e12:.3g} TFLOP of training" in stdout


def test_a_run_writes_only_into_its_out_dir(trained_run):
    assert sorted(os.listdir(trained_run.out.parent)) == ['out']
    assert sorted(os.listdir(trained_run.out)) == ['ckpt.pt', 'curves.png', 'lock', 'log.txt', 'metrics.jsonl', 'run.json']
    with open(trained_run.out / 'curves.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_checkpoint_reproduces_the_logged_accuracy_on_a_fresh_model(trained_run, synthetic_data):
    model, checkpoint = model_of(trained_run.out)
    assert checkpoint['iter_num'] == 200 and checkpoint['config']['max_iters'] == 200
    assert not any(k.startswith('_orig_mod.') for k in checkpoint['model'])
    assert checkpoint['classes'][3] == '3 - three' and len(checkpoint['data_mean']) == 1
    test = load_split('mnist', synthetic_data, 'test')
    with torch.no_grad():
        logits, _ = model(model_input(test.images, model.config, checkpoint['data_mean'], checkpoint['data_std']))
    accuracy = (logits.argmax(dim=1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(final_eval(trained_run.out)['test_acc'], abs=1e-6) and accuracy >= 0.9


def test_a_held_out_split_is_trained_without_and_evaluated_beside_the_test_split(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=60', '--eval_interval=60',
                      '--val_size=300', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'data: mnist, 1700 train / 300 val / 500 test images' in result.stdout
    final = final_eval(tmp_path / 'out')
    assert {'val_loss', 'val_acc', 'test_loss', 'test_acc'} <= final.keys() and final['val_acc'] > 0.5
    assert f"val acc {100 * final['val_acc']:.2f}%, test loss" in result.stdout
    # the validation split is held out: its pictures, scored alone, give the logged figure
    model, checkpoint = model_of(tmp_path / 'out')
    train = load_split('mnist', synthetic_data, 'train')
    _, val = prepare.held_out(len(train.labels), 300)
    mean, std = checkpoint['data_mean'], checkpoint['data_std']
    with torch.no_grad():
        accuracy = (predict(model, train.images[val], mean, std).argmax(1) == train.labels[val]).float().mean()
    assert accuracy.item() == pytest.approx(final['val_acc'], abs=1e-6) and checkpoint['n_train'] == 1700


def test_test_time_augmentation_is_what_the_run_and_sample_py_report(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=60', '--eval_interval=60',
                      '--tta_shift=1', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final = final_eval(tmp_path / 'out')
    model, checkpoint = model_of(tmp_path / 'out')
    test = load_split('mnist', synthetic_data, 'test')
    mean, std = checkpoint['data_mean'], checkpoint['data_std']
    with torch.no_grad():
        averaged = F.cross_entropy(predict(model, test.images, mean, std, tta_shift=1), test.labels).item()
        plain = F.cross_entropy(predict(model, test.images, mean, std), test.labels).item()
    assert final['test_loss'] == pytest.approx(averaged, rel=1e-4) and abs(averaged - plain) > 1e-3
    report = run_here('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=0', cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"test accuracy: {100 * final['test_acc']:.2f}%" in report.stdout
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


def test_colour_folder_dataset_trains(colour_run):
    assert 'data: folder, 300 train / 0 val / 60 test images of 3x16x16, 3 classes' in colour_run.stdout
    assert final_eval(colour_run.out)['test_acc'] >= 0.9
    checkpoint = torch.load(colour_run.out / 'ckpt.pt', weights_only=True)
    assert checkpoint['classes'] == ['blue', 'green', 'red'] and len(checkpoint['data_std']) == 3


def test_a_model_of_another_side_gets_each_batch_resized(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--img_size=35', '--max_iters=20',
                      '--eval_interval=20', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'test images of 1x28x28' in result.stdout  # the store keeps MNIST's own size
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['model_args']['img_size'] == 35


def test_streamed_from_the_store_or_whole_in_memory_the_same_losses(synthetic_data, tmp_path, run_here):
    runs = {}
    for placement in ('device', 'stream'):
        result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=20', '--eval_interval=20',
                          '--log_interval=1', '--aug_translate=2.0', '--dropout=0.1', f'--data_placement={placement}',
                          f'--out_dir={placement}', cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert ('on the device' if placement == 'device' else 'read from ') in result.stdout
        runs[placement] = [r for r in read_jsonl(tmp_path / placement / 'metrics.jsonl')]
    timings = ('ms', 'eval_seconds')
    without_time = {p: [{k: v for k, v in r.items() if k not in timings} for r in records] for p, records in runs.items()}
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
    assert config['learning_rate'] == pytest.approx(3e-3)


def test_a_linear_decay_of_the_learning_rate(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=50', '--eval_interval=50',
                      '--log_interval=1', '--warmup_iters=10', '--learning_rate=0.01', '--min_lr=0.0',
                      '--lr_schedule=linear', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lr = [r['lr'] for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl') if 'lr' in r]
    assert all(lr[10 + i] == pytest.approx(0.01 * (1 - i / 40), abs=1e-9) for i in range(40))  # a line to min_lr


def test_muon_s_momentum_warms_up(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--optimizer=muon', '--muon_momentum=0.95',
                      '--muon_momentum_warmup=40', '--max_iters=10', '--eval_interval=10', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    muon = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['optimizer'][1]
    # the last step was iteration 9: a quarter of the way from 0.85 to 0.95 (9 / 40)
    assert all(g['momentum'] == pytest.approx(0.85 + 9 / 40 * 0.1) for g in muon['param_groups'])


def test_batches_are_a_function_of_the_seed_and_the_step(synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=1', '--eval_interval=1',
                      '--batch_size=8', '--out_dir=out', cwd=tmp_path, keep_globals=True)
    g = result.globals  # train.py's own get_batch, called as its loop calls it
    get_batch, order = g['get_batch'], g['epoch_order']
    assert sorted(order(0).tolist()) == list(range(2000)) and not torch.equal(order(0), order(1))  # reshuffled
    x, y = get_batch(3, 0)
    picked = order(0)[24:32]  # the fourth batch of the epoch's order
    assert torch.equal(y, g['train_y'][picked])  # each picture comes with its own label
    assert torch.allclose(x, model_input(g['train_x'][picked], g['model_config'], g['mean'], g['std']))
    assert torch.equal(get_batch(3, 0)[0], x) and torch.equal(get_batch(3 + g['steps_per_epoch'], 0)[1], g['train_y'][order(1)[24:32]])
    # two processes with half the batch each, or two micro-steps: the slices of the same global batch
    g.update(batch_size=4, world_size=2)
    halves = [g.update(rank=r) or get_batch(3, 0) for r in (0, 1)]
    g.update(rank=0, world_size=1, gradient_accumulation_steps=2)
    steps = [get_batch(3, m) for m in (0, 1)]
    for parts in (halves, steps):
        assert torch.equal(torch.cat([p[1] for p in parts]), y) and torch.equal(torch.cat([p[0] for p in parts]), x)
    # augmentation: the same draw for the same (it, micro-step), another for another
    g.update(aug={**g['aug'], 'crop': 2})
    assert torch.equal(get_batch(3, 0)[0], get_batch(3, 0)[0]) and not torch.equal(get_batch(3, 0)[0], get_batch(3, 1)[0])


def test_gradient_accumulation_trains_as_a_batch_that_many_times_larger(synthetic_data, tmp_path, run_here):
    runs = {}
    for name, flags in (('64', ['--batch_size=64']), ('32x2', ['--batch_size=32', '--gradient_accumulation_steps=2'])):
        result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', *flags, '--max_iters=12', '--eval_interval=12',
                          '--log_interval=1', f'--out_dir={name}', cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs[name] = torch.load(tmp_path / name / 'ckpt.pt', weights_only=True)['model'], \
            [r['loss'] for r in read_jsonl(tmp_path / name / 'metrics.jsonl') if 'loss' in r]
    (weights, logged), (accumulated, accumulated_logged) = runs['64'], runs['32x2']
    assert all(torch.allclose(weights[k], accumulated[k], atol=1e-4) for k in weights)  # the same updates
    assert accumulated_logged == pytest.approx(logged, rel=1e-5)  # the loss logged: the whole batch's, not a half's


def test_checkpoints_at_every_evaluation_or_only_at_the_end(synthetic_data, tmp_path, run_here, monkeypatch):
    saved = []
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, 'save', lambda state, path: saved.append(state['iter_num']) or real(state, path))
    for always, out in ((True, 'every'), (False, 'end')):
        result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=30', '--eval_interval=10',
                          f'--always_save_checkpoint={always}', f'--out_dir={out}', cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert saved == [10, 20, 30, 30]


def test_label_smoothing_bounds_the_training_loss_from_below(synthetic_data, tmp_path, run_here):
    # with half the target spread over 10 classes, no prediction scores below the smoothed target's entropy
    smoothed = [0.55] + [0.05] * 9
    floor = -sum(p * math.log(p) for p in smoothed)  # 1.677
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--max_iters=150', '--eval_interval=150',
                      '--label_smoothing=0.5', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    logged = [r['loss'] for r in read_jsonl(tmp_path / 'out' / 'metrics.jsonl') if 'loss' in r]
    # it learns all the same, with a loss above the floor (without smoothing the same run ends at about 0.5)
    assert min(logged) > floor and final_eval(tmp_path / 'out')['test_acc'] > 0.8


def test_float16_with_its_grad_scaler_on_the_cpu_trains_checkpoints_and_resumes_exactly(synthetic_data, tmp_path,
                                                                                        run_here, monkeypatch):
    # the T4's precision path (float16 autocast, a GradScaler), where every test runs
    args = [*FAST, f'--data_dir={synthetic_data}', '--dtype=float16', '--max_iters=16', '--eval_interval=8',
            '--log_interval=1', '--dropout=0.1', '--aug_crop=1']
    result = run_here('train.py', *args, '--out_dir=whole', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'dtype float16 (as requested; slow on a CPU' in result.stdout
    checkpoint_ = torch.load(tmp_path / 'whole' / 'ckpt.pt', weights_only=True)
    assert checkpoint_['scaler']['scale'] > 0 and checkpoint_['config']['dtype'] == 'float16'
    asked = []  # a Ctrl-C after the 6th iteration
    monkeypatch.setattr('support.safety.StopSignals.requested',
                        lambda self: asked.append(1) or (signal.SIGINT if len(asked) == 6 else 0))
    assert run_here('train.py', *args, '--out_dir=cut', cwd=tmp_path).returncode == 0
    monkeypatch.undo()
    assert torch.load(tmp_path / 'cut' / 'ckpt.pt', weights_only=True)['iter_num'] == 6
    assert run_here('train.py', *args, '--out_dir=cut', '--init_from=resume', cwd=tmp_path).returncode == 0
    whole, cut = ({r['iter']: r['loss'] for r in read_jsonl(tmp_path / run / 'metrics.jsonl') if 'loss' in r}
                  for run in ('whole', 'cut'))
    assert cut == whole


@pytest.mark.slow
def test_the_compiled_step_on_the_cpu_trains_as_the_eager_one(synthetic_data, tmp_path, run_here, monkeypatch):
    # a run long enough for compiling to pay on a CPU, stopped after its first log line
    asked = []
    monkeypatch.setattr('support.safety.StopSignals.requested',
                        lambda self: asked.append(1) or (signal.SIGINT if len(asked) == 10 else 0))
    runs = {}
    for compile in (True, False):
        out = f'compile-{compile}'
        result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', f'--compile={compile}', '--max_iters=20000',
                          '--log_interval=5', f'--out_dir={out}', cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"compile {'on' if compile else 'off'}" in result.stdout
        runs[compile] = [r['loss'] for r in read_jsonl(tmp_path / out / 'metrics.jsonl') if 'loss' in r]
        asked.clear()
    assert runs[True] == pytest.approx(runs[False], rel=1e-4) and len(runs[True]) == 2
    result = run_here('train.py', *FAST, f'--data_dir={synthetic_data}', '--compile=True', '--max_iters=20',
                      '--eval_interval=20', '--out_dir=short', cwd=tmp_path)
    assert "compile off (on a CPU compiling pays from about 10000 iterations (bench.py); this run has 20)" in result.stdout
