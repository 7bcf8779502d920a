"""
The levers behind the records: each a few flags on top of a recipe, trained once for every seed on the
training split less a held-out validation split (val_size), and judged by its final model's accuracy on that
split alone: this script never reads the test split's figures. Every run is a plain `python train.py` into
out_dir/<lever>-<seed>, `jobs` at a time on `threads` threads each (two runs of one thread keep both cores of a
2-core CPU busier than one of two), carried on where it stopped and skipped once finished.
$ python records/levers.py --suite=cifar10 --data_dir=/path/to/cifar10 --levers=baseline,qk_norm
$ python records/levers.py --suite=mnist --data_dir=/path/to/mnist --steps=468
$ python records/levers.py --suite=mnist_prototype --data_dir=/path/to/mnist
Prints a table (validation accuracy: the mean and each seed's) and writes it to out_dir/levers-<suite>-<steps>.json.
Levers are named without commas: --levers takes a list joined by them.
"""
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules, as for a script at its root
from support.errors import die  # noqa: E402

# -----------------------------------------------------------------------------
suite = 'cifar10'  # a key of SUITES
data_dir = ''  # the suite's data: a CIFAR-10 folder dataset, or a folder holding MNIST/raw
out_dir = 'out-levers'
levers = ''  # the levers of the suite to run, joined by commas ('' = all of them)
seeds = '1,2'
steps = 0  # iterations of each run (0: the suite's own)
jobs = 2  # runs at once
threads = 1  # torch threads of each run
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(REPO, 'configurator.py')).read())
# -----------------------------------------------------------------------------
# (recipe and its flags, iterations, its batch, held-out pictures, {lever: flags on top}). Each suite runs the recipe
# its table started from, pinned in records/recipes/, so that its baseline row comes back from today's code
SUITES = {
    'cifar10': (['records/recipes/cifar10_cpu_2026-12-02.py', '--dataset=folder', '--tta_shift=0'], 800, 128, 5000, {
        'baseline': [],
        'qk_norm': ['--qk_norm=True'],
        'mean pooling': ['--pool=mean'],
        'sin-cos positions': ['--pos_embd=sincos'],
        'linear decay to 0': ['--lr_schedule=linear', '--min_lr=0'],
        'Muon momentum warm-up 0.85 -> 0.95 over 300': ['--muon_momentum_warmup=300'],
        'label smoothing 0.2': ['--label_smoothing=0.2'],
        'crops of 2 px (not 4)': ['--aug_crop=2'],
        'the four that gained together (mean pooling + sin-cos + linear decay + momentum warm-up)': [
            '--pool=mean', '--pos_embd=sincos', '--lr_schedule=linear', '--min_lr=0', '--muon_momentum_warmup=300'],
        'batch 256 (lr x1.4)': ['--batch_size=256', '--muon_lr=0.028', '--learning_rate=2.8e-3'],
        'batch 64 (lr / 1.4)': ['--batch_size=64', '--muon_lr=0.014', '--learning_rate=1.4e-3'],
    }),
    'mnist': (['records/recipes/mnist_speedrun_2026-12-02.py'], 468, 128, 5000, {
        'baseline': [],
        'linear decay to 0': ['--lr_schedule=linear', '--min_lr=0'],
        'Muon momentum warm-up 0.85 -> 0.95 over 150': ['--muon_momentum_warmup=150'],
        'label smoothing 0.1': ['--label_smoothing=0.1'],
        'mean pooling': ['--pool=mean'],
        'Muon lr 0.08 (not 0.05)': ['--muon_lr=0.08'],
        'batch 256 (lr x1.4)': ['--batch_size=256', '--muon_lr=0.07', '--learning_rate=5.6e-3'],
        'warmup 50 (not 100)': ['--warmup_iters=50'],
        'no qk_norm (a step 11% cheaper)': ['--qk_norm=False'],
        'AdamW lr 8e-3 (not 4e-3)': ['--learning_rate=8e-3'],
        'shifts of 1 px (not 2)': ['--aug_translate=1.0'],
        'no augmentation': ['--aug_translate=0.0'],
        'Muon lr 0.03 (not 0.05)': ['--muon_lr=0.03'],
        'sin-cos positions': ['--pos_embd=sincos'],
    }),
    'mnist_60s': (['records/recipes/mnist_speedrun_2026-12-02.py'], 1404, 128, 5000, {  # toward 60 s (2026-12-06)
        'baseline': [],
        'no test-time shifts (the evaluation 9x cheaper)': ['--tta_shift=0'],
        '2.5 epochs (1170 steps)': ['--max_iters=1170'],
        '2.5 epochs without test-time shifts': ['--max_iters=1170', '--tta_shift=0'],
        '2 epochs (936 steps)': ['--max_iters=936'],
        '2 epochs without test-time shifts': ['--max_iters=936', '--tta_shift=0'],
        '2 epochs with a linear decay to 0': ['--max_iters=936', '--lr_schedule=linear', '--min_lr=0'],
        '2 epochs with Muon momentum warm-up over 150': ['--max_iters=936', '--muon_momentum_warmup=150'],
        '2 epochs with both': ['--max_iters=936', '--lr_schedule=linear', '--min_lr=0', '--muon_momentum_warmup=150'],
        '2.5 epochs with both': ['--max_iters=1170', '--lr_schedule=linear', '--min_lr=0', '--muon_momentum_warmup=150'],
        '2.5 epochs with both and 5 test-time views': ['--max_iters=1170', '--lr_schedule=linear', '--min_lr=0',
                                                       '--muon_momentum_warmup=150', '--tta_views=5'],
        '2.25 epochs with both and 5 test-time views': ['--max_iters=1053', '--lr_schedule=linear', '--min_lr=0',
                                                        '--muon_momentum_warmup=150', '--tta_views=5'],
    }),
    # the float32 path (the AVX2 kind's) of today's recipe, toward 80% in 30 minutes there (2026-12-06)
    'cifar10_fp32': (['records/recipes/cifar10_cpu_2026-12-06.py', '--dataset=folder', '--tta_shift=0',
                      '--dtype=float32', '--muon_momentum_warmup=150'], 800, 128, 5000, {
        'baseline': [],
        'crops of 2 px (not 4)': ['--aug_crop=2'],
        'batch 256 (lr x1.4)': ['--batch_size=256', '--muon_lr=0.028', '--learning_rate=2.8e-3'],
        # cheaper steps, more of them in the same time (the step ratios by bench.py, float32, 2026-12-06)
        'crops of 2 px and an MLP 2x wide (not 4x) for 1000 steps': ['--aug_crop=2', '--mlp_ratio=2.0',
                                                                     '--max_iters=1000'],
        'crops of 2 px and 3 layers (not 4) for 940 steps': ['--aug_crop=2', '--n_layer=3', '--max_iters=940'],
        'crops of 2 px and 3 layers with an MLP 2x wide for 1300 steps': ['--aug_crop=2', '--n_layer=3',
                                                                          '--mlp_ratio=2.0', '--max_iters=1300'],
        'crops of 2 px and 2 layers with an MLP 2x wide for 1600 steps': ['--aug_crop=2', '--n_layer=2',
                                                                          '--mlp_ratio=2.0', '--max_iters=1600'],
        # on top of 3 layers with an MLP 2x wide (their steps by bench.py's float32 ratios to its step, 2026-12-06)
        '3 layers with an MLP 2x wide and Muon lr 0.03 (not 0.02)': [
            '--aug_crop=2', '--n_layer=3', '--mlp_ratio=2.0', '--max_iters=1300', '--muon_lr=0.03'],
        '3 layers with an MLP 2x wide 96 wide (not 128) for 1950 steps': [
            '--aug_crop=2', '--n_layer=3', '--mlp_ratio=2.0', '--max_iters=1950', '--n_embd=96'],
        '3 layers with an MLP 1x wide for 1570 steps': [
            '--aug_crop=2', '--n_layer=3', '--mlp_ratio=1.0', '--max_iters=1570'],
        '3 layers with an MLP 2x wide 64 wide for 2900 steps': [
            '--aug_crop=2', '--n_layer=3', '--mlp_ratio=2.0', '--max_iters=2900', '--n_embd=64'],
        '4 layers with an MLP 2x wide 96 wide for 1600 steps': [
            '--aug_crop=2', '--n_layer=4', '--mlp_ratio=2.0', '--max_iters=1600', '--n_embd=96'],
        '3 layers with an MLP 2x wide 48 wide for 4080 steps': [
            '--aug_crop=2', '--n_layer=3', '--mlp_ratio=2.0', '--max_iters=4080', '--n_embd=48'],
        '3 layers with an MLP 2x wide 64 wide for 2900 steps and Muon lr 0.015': [
            '--aug_crop=2', '--n_layer=3', '--mlp_ratio=2.0', '--max_iters=2900', '--n_embd=64', '--muon_lr=0.015'],
    }),
    # cheaper steps for the speedrun (2026-12-07, AVX-512 BF16 EPYC): the steps timed in turn, records/README.md
    'mnist_speedrun_step': (['records/recipes/mnist_speedrun_2026-12-06.py'], 1170, 128, 5000, {
        'baseline': [],
        'mean pooling': ['--pool=mean'],
        'an MLP 2x wide (not 4x)': ['--mlp_ratio=2.0'],
        'mean pooling and an MLP 2x wide': ['--pool=mean', '--mlp_ratio=2.0'],
        'mean pooling and an MLP 2x wide for 3 epochs (1404 steps)': ['--pool=mean', '--mlp_ratio=2.0',
                                                                      '--max_iters=1404'],
        'mean pooling for 2.25 epochs (1053 steps)': ['--pool=mean', '--max_iters=1053'],
        'mean pooling for 2 epochs (936 steps)': ['--pool=mean', '--max_iters=936'],
        'mean pooling and an MLP 2x wide for 2.25 epochs (1053 steps)': ['--pool=mean', '--mlp_ratio=2.0',
                                                                         '--max_iters=1053'],
        'mean pooling and 3 layers (not 4)': ['--pool=mean', '--n_layer=3'],
        'mean pooling and 3 layers for 3 epochs (1404 steps)': ['--pool=mean', '--n_layer=3', '--max_iters=1404'],
        'mean pooling and 3 layers, 9 test-time views (not 5)': ['--pool=mean', '--n_layer=3', '--tta_views=9'],
    }),
    # levers that cost the speedrun no time, or little, on its recipe of 2026-12-07 (4 seeds: its gains are small)
    'mnist_speedrun_free': (['records/recipes/mnist_speedrun_2026-12-07.py'], 1170, 128, 5000, {
        'baseline': [],
        'label smoothing 0.1': ['--label_smoothing=0.1'],
        'batch 96 (lrs x0.87, warm-ups in pictures kept)': ['--batch_size=96', '--muon_lr=0.0433',
                                                           '--learning_rate=3.46e-3', '--warmup_iters=133',
                                                           '--muon_momentum_warmup=200'],
        'rotations of up to 5 degrees': ['--aug_rotate=5'],
        'rotations of up to 10 degrees': ['--aug_rotate=10'],
        '2.75 epochs (1287 steps)': ['--max_iters=1287'],
    }),
    'mnist_prototype': (['records/recipes/mnist_2026-12-02.py'], 1000, 32, 5000, {
        'baseline': [],
        'linear decay to 0': ['--lr_schedule=linear', '--min_lr=0'],
    }),
}
if suite not in SUITES:
    die(f"suite={suite!r}: choose from {', '.join(SUITES)}", 2)
if not data_dir:
    die("give the suite's data with --data_dir", 2)
recipe, default_steps, recipe_batch, val_size, all_levers = SUITES[suite]
steps = steps or default_steps
chosen = [name.strip() for name in levers.split(',')] if levers else list(all_levers)
unknown = [name for name in chosen if name not in all_levers]
if unknown:
    die(f"levers: {', '.join(map(repr, unknown))} not in the {suite} suite ({', '.join(all_levers)})", 2)


def run_dir(lever, seed):
    return os.path.join(out_dir, suite, f"{lever.replace(' ', '_').replace('/', '_')}-{steps}-{seed}")


def iterations(lever):
    """A lever's iterations: its own (--max_iters), or the suite's, fewer for a larger batch (the same pictures seen)."""
    flag = lambda key, default: next((int(a.split('=')[1]) for a in all_levers[lever] if a.startswith(f'--{key}=')),
                                     default)
    return flag('max_iters', steps * recipe_batch // flag('batch_size', recipe_batch))


def final_record(lever, seed):
    """The last evaluation of a finished run, or None."""
    path = os.path.join(run_dir(lever, seed), 'metrics.jsonl')
    if not os.path.exists(path):
        return None
    evals = [json.loads(line) for line in open(path) if '"val_acc"' in line]
    return evals[-1] if evals and evals[-1]['iter'] == iterations(lever) else None


def command(lever, seed):
    batch_steps = iterations(lever)
    run = run_dir(lever, seed)
    return [sys.executable, os.path.join(REPO, 'train.py'), *[os.path.join(REPO, a) if a.endswith('.py') else a
                                                              for a in recipe],
            f'--data_dir={data_dir}', f'--val_size={val_size}', *all_levers[lever], f'--max_iters={batch_steps}',
            f'--eval_interval={batch_steps}', f'--log_interval={max(1, batch_steps // 4)}', '--plot=False',
            f'--seed={seed}', f'--out_dir={run}',
            *(['--init_from=resume'] if os.path.exists(os.path.join(run, 'ckpt.pt')) else [])]


todo = [(lever, int(seed)) for lever in chosen for seed in seeds.split(',')
        if final_record(lever, int(seed)) is None]
env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')
running = []
while todo or running:
    while todo and len(running) < jobs:
        lever, seed = todo.pop(0)
        os.makedirs(run_dir(lever, seed), exist_ok=True)
        log = open(os.path.join(run_dir(lever, seed), 'stdout.txt'), 'a')  # train.py keeps its own log.txt
        running.append((lever, seed, subprocess.Popen(command(lever, seed), stdout=log, stderr=subprocess.STDOUT, env=env)))
        print(f"started {lever}, seed {seed}", flush=True)
    time.sleep(2)
    for item in [r for r in running if r[2].poll() is not None]:
        running.remove(item)
        lever, seed, process = item
        if process.returncode:
            die(f"the run {run_dir(lever, seed)} failed (exit {process.returncode}); its stdout.txt says why")
        print(f"done {lever}, seed {seed}: val acc {100 * final_record(lever, seed)['val_acc']:.2f}%", flush=True)

table = {}
for lever in chosen:
    accs = [final_record(lever, int(seed))['val_acc'] for seed in seeds.split(',')]
    table[lever] = dict(flags=all_levers[lever], val_acc=accs, mean=sum(accs) / len(accs))
print(f"{suite}: {steps} iterations (at batch {recipe_batch}), {val_size} training pictures held out, seeds {seeds}")
print("| lever | flags | val acc, mean | seeds | spread |")
print("|---|---|---|---|---|")
for lever, row in table.items():
    print(f"| {lever} | `{' '.join(row['flags']) or '(the recipe)'}` | {100 * row['mean']:.2f}% | "
          f"{' / '.join(f'{100 * a:.2f}' for a in row['val_acc'])} | {100 * (max(row['val_acc']) - min(row['val_acc'])):.2f} |")
with open(os.path.join(out_dir, f'levers-{suite}-{steps}.json'), 'w') as f:
    json.dump(dict(suite=suite, steps=steps, val_size=val_size, seeds=seeds, recipe=recipe, levers=table), f, indent=2)
