"""
What a lever costs a step: train.py's step (forward, backward, clip, both optimizers' steps) on random pictures,
for the recipe and for each variant of its model, batch or picture side, timed in turn, one step each, round
after round, so that a machine whose speed drifts slows them all alike. Prints each one's median ms per step and
its ratio to the recipe's.
$ python records/step_costs.py --suite=cifar10
$ python records/step_costs.py --suite=mnist --rounds=60
"""
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules, as for a script at its root
import torch  # noqa: E402

from model import ViT, ViTConfig  # noqa: E402
from support.device import autocast  # noqa: E402
from support.errors import die  # noqa: E402
from support.optimizer import configure_optimizers  # noqa: E402

# -----------------------------------------------------------------------------
suite = 'cifar10'  # 'cifar10' (config/cifar10_cpu.py's model) or 'mnist' (config/mnist_speedrun.py's)
rounds = 30  # timed steps of each variant
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(REPO, 'configurator.py')).read())
# -----------------------------------------------------------------------------
# (the recipe's model, its batch, its optimizer's learning rates, {variant: (model changes, batch, picture side, dtype)})
SUITES = {
    'cifar10': (dict(img_size=32, in_chans=3, n_layer=4, n_head=2, n_embd=128, patch_size=4), 128, (2e-3, 0.02), {
        'the recipe': ({}, 128, 32, 'float32'),
        'qk_norm': (dict(qk_norm=True), 128, 32, 'float32'),
        'mean pooling': (dict(pool='mean'), 128, 32, 'float32'),
        'batch 256 (per picture)': ({}, 256, 32, 'float32'),
        'batch 64 (per picture)': ({}, 64, 32, 'float32'),
        'bfloat16 autocast': ({}, 128, 32, 'bfloat16'),
    }),
    'mnist': (dict(img_size=28, in_chans=1, n_layer=4, n_head=2, n_embd=64, patch_size=7, pos_std=1.0, qk_norm=True),
              128, (4e-3, 0.05), {
        'the recipe': ({}, 128, 28, 'float32'),
        'no qk_norm': (dict(qk_norm=False), 128, 28, 'float32'),
        'mean pooling': (dict(pool='mean'), 128, 28, 'float32'),
        'batch 256 (per picture)': ({}, 256, 28, 'float32'),
        '3 layers': (dict(n_layer=3), 128, 28, 'float32'),
        '48 wide': (dict(n_embd=48), 128, 28, 'float32'),
        'bfloat16 autocast': ({}, 128, 28, 'bfloat16'),
    }),
}
if suite not in SUITES:
    die(f"suite={suite!r}: choose from {', '.join(SUITES)}", 2)
base, recipe_batch, (learning_rate, muon_lr), variants = SUITES[suite]
torch.manual_seed(0)


def build(changes, batch, side, dtype):
    model = ViT(ViTConfig(**{**base, **changes}))
    optimizers = configure_optimizers(model, 'muon', learning_rate, muon_lr, 0.0, (0.9, 0.99), 0.95, 'cpu', dtype)
    x = torch.randn(batch, base['in_chans'], side, side)
    return model, optimizers, autocast('cpu', dtype), x, torch.randint(0, 10, (batch,))


def step(model, optimizers, ctx, x, y):
    with ctx:
        _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)


built = {name: build(*v) for name, v in variants.items()}
times = {name: [] for name in built}
for r in range(3 + rounds):
    for name, parts in built.items():
        t0 = time.perf_counter()
        step(*parts)
        if r >= 3:  # the first steps warm the allocator up
            times[name].append(time.perf_counter() - t0)
print(f"{suite}: {torch.get_num_threads()} threads, {rounds} rounds")
reference = statistics.median(times['the recipe']) / recipe_batch
for name, t in times.items():
    batch = variants[name][1]
    ms = 1000 * statistics.median(t)
    print(f"| {name} | {ms:.1f} ms a step of {batch} | {statistics.median(t) / batch / reference:.2f}x a picture |")
