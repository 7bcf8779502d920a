"""
Time the training step of a config, the step train.py's loop runs (a batch augmented and normalized on the device,
forward, backward, clip, optimizer step), for every dtype this device runs well, eager and compiled, next to
torchvision's VisionTransformer with the same dims. Its keys and defaults are train.py's; random pictures of the
dataset's shape stand in for the data:
$ python bench.py config/mnist.py
$ python bench.py config/cifar10.py --batch_size=512 --device=cuda --optimizer=muon
$ python bench.py --init_from=vit_b_16 --batch_size=64 --device=cuda   # a pretrained ViT's shape, no weights needed
Prints a table and writes it as JSON to bench_out.
"""
import json
import os
import resource
import statistics
import time
import timeit

import torch
from torch.nn import functional as F

import prepare
from data import augment, model_input
from model import ViT
from support.checkpoint import from_scratch
from support.device import autocast, compile_blocker, native_dtypes, peak_flops, pick_device, pick_dtype, synchronize
from support.errors import die
from support.optimizer import configure_optimizers
from support.pretrained import from_source
from support.runlog import hardware

# -----------------------------------------------------------------------------
# train.py's keys with its defaults: its block of plain assignments, run here (a script is never imported); then ours
_train = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')).read()
exec(_train[_train.index('# default config values'):_train.index('\nconfig_keys =')])
dtype = 'auto'  # 'auto' here: every dtype this device runs well
torchvision_vit = True  # also time torchvision's VisionTransformer with the same dims
bench_warmup = 5  # untimed steps first (compilation, allocator warm-up)
bench_iters = 20  # timed steps of each candidate, taken in turn; the median is reported
bench_out = 'bench.json'
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------
if bench_iters < 1 or bench_warmup < 0:
    die(f"bench_iters={bench_iters} must be at least 1 and bench_warmup={bench_warmup} 0 or more", 2)
if os.path.isdir(bench_out) or not os.path.isdir(os.path.dirname(os.path.abspath(bench_out))):
    die(f"bench_out={bench_out!r} is a folder or in none; give a file name in an existing folder for the report", 2)

torch.manual_seed(seed)
torch.set_float32_matmul_precision('high')
device, _ = pick_device(device)
device_type = device.split(':')[0]
dtypes = [d for d, _ in native_dtypes(device_type)] if dtype == 'auto' else [pick_dtype(dtype, device_type)[0]]
# on a CPU train.py compiles only where it pays (a long run); these timings are what that rests on
blocker = 'compile=False' if not compile else compile_blocker(device_type)
modes = ['eager'] + (['compiled'] if not blocker else [])

# the model as train.py would build it; random pictures of the data's shape stand in for the data
start = from_scratch(config) if init_from == 'scratch' else from_source(init_from, config, flags, weights=False)
shape = prepare.get_dataset(dataset).shape if init_from == 'scratch' else (3, *[start.model_args['img_size']] * 2)
if shape is None and not start.store_size:  # a folder dataset: its shape is in its files, which the bench never reads
    die("bench.py does not read a folder dataset's pictures: give their size with --img_size=N (3 channels assumed)", 2)
shape = shape or (3, start.store_size, start.store_size)
vit_config = start.settle(shape, [str(c) for c in range(10)])  # ten classes: the head's size barely moves the cost
images = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8, device=device)
labels = torch.randint(0, vit_config.n_classes, (batch_size,), device=device)
aug = {k.removeprefix('aug_'): v for k, v in config.items() if k.startswith('aug_')}

def get_batch(step):
    # as train.py's get_batch, from pictures already on the device: augmented, then as the model takes them
    x = augment(images.float() / 255, torch.Generator(device=device).manual_seed(step), size=vit_config.img_size, **aug)
    return model_input(x, vit_config, [0.5] * shape[0], [0.25] * shape[0], 1.0 if aug_rrc_scale else start.test_crop)

class Candidate:
    """One way to run the step (ours eager or compiled, torchvision's; a dtype), with its timings so far."""

    def __init__(self, impl, mode, dtype):
        self.impl, self.mode, self.dtype = impl, mode, dtype
        if impl == 'nanoViT':  # as train.py builds it
            self.model = ViT(vit_config).to(device)
            optimizers = configure_optimizers(self.model, optimizer, learning_rate, muon_lr, weight_decay,
                                              (beta1, beta2), muon_momentum, device_type, dtype, layer_decay)
            self.optimizers = list(optimizers.values())
            fast = torch.compile(self.model) if mode == 'compiled' else self.model
            self.loss_of = lambda x: fast(x, labels, label_smoothing)[1]  # a batch's loss
        else:  # torchvision's VisionTransformer of the same dims, trained as a user would: AdamW on every parameter
            from torchvision.models import VisionTransformer
            c = vit_config
            self.model = VisionTransformer(image_size=c.img_size, patch_size=c.patch_size, num_layers=c.n_layer,
                                           num_heads=c.n_head, hidden_dim=c.n_embd, mlp_dim=int(c.mlp_ratio * c.n_embd),
                                           dropout=c.dropout, num_classes=c.n_classes).to(device)
            self.optimizers = [torch.optim.AdamW(self.model.parameters(), lr=learning_rate, betas=(beta1, beta2),
                                                 weight_decay=weight_decay)]
            self.loss_of = lambda x: F.cross_entropy(self.model(x.expand(-1, 3, -1, -1)).float(), labels,
                                                     label_smoothing=label_smoothing)
        self.scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
        self.ctx = autocast(device_type, dtype)
        self.steps, self.optimizer_parts, self.memory = [], [], 0.0 if device_type == 'cuda' else None  # MiB

    def step(self, step, timed):
        if device_type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with self.ctx:
            loss = self.loss_of(get_batch(step))
        self.scaler.scale(loss).backward()
        synchronize(device_type)  # only so the optimizer's share can be told apart
        t1 = time.perf_counter()
        if grad_clip > 0:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)
            opt.zero_grad(set_to_none=True)
        self.scaler.update()
        synchronize(device_type)
        if timed:
            self.steps.append(time.perf_counter() - t0)
            self.optimizer_parts.append(time.perf_counter() - t1)
            if device_type == 'cuda':
                self.memory = max(self.memory, torch.cuda.max_memory_allocated() / 2 ** 20)

def matmul_flops(dtype, n=2048):
    """Measured FLOP/s of one big matmul in dtype, on the CPU: its practical ceiling."""
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    timeit.timeit(lambda: a @ a, number=3)  # warm-up
    return 10 * 2 * n ** 3 / timeit.timeit(lambda: a @ a, number=10)

flops_per_step = 3 * ViT(vit_config).flops_per_image() * batch_size
machine = hardware(device)
name = machine['gpu']['name'] if 'gpu' in machine else \
    f"{machine['cpu']['model']} CPU, {torch.get_num_threads()} threads"
print(f"bench: {name} | torch {torch.__version__} | {dataset} {'x'.join(map(str, shape))}, batch {batch_size} | "
      f"n_layer {vit_config.n_layer}, n_head {vit_config.n_head}, n_embd {vit_config.n_embd}, "
      f"patch {vit_config.patch_size}{f' ({init_from})' if init_from != 'scratch' else ''} | optimizer {optimizer} | "
      f"{flops_per_step / 1e9:.1f} GFLOP per step" + (f" | compile skipped: {blocker}" if blocker else ""))
# every candidate is built and warmed up, then timed a step at a time in turn, round after round: a machine
# whose speed drifts (a shared or throttled CPU) slows every candidate alike, and the medians compare fairly
ceilings = {}
candidates = []
for dtype in dtypes:
    ceilings[dtype] = (peak_flops(device, dtype), 'peak') if device_type == 'cuda' else \
        (matmul_flops(dtype), 'matmul') if device_type == 'cpu' else (None, None)
    candidates += [Candidate('nanoViT', mode, dtype) for mode in modes]
    if torchvision_vit:
        candidates.append(Candidate('torchvision', 'eager', dtype))
for step in range(bench_warmup + bench_iters):
    for candidate in candidates:
        candidate.step(step, timed=step >= bench_warmup)
rows = []
for c in candidates:
    seconds, ceiling, ceiling_kind = statistics.median(c.steps), *ceilings[c.dtype]
    achieved, share = flops_per_step / seconds, statistics.median(c.optimizer_parts) / seconds
    rows.append(dict(impl=c.impl, mode=c.mode, dtype=c.dtype, ms_per_iter=1000 * seconds, optimizer_share=share,
                     images_per_s=batch_size / seconds, tflops=achieved / 1e12, peak_memory_mib=c.memory,
                     utilization=achieved / ceiling if ceiling else None, ceiling=ceiling_kind if ceiling else None))
    util = f"{100 * achieved / ceiling:.1f}% of {ceiling_kind}" if ceiling else "n/a"
    mem = f"{c.memory:.0f} MiB" if c.memory is not None else "-"
    print(f"{c.impl:12s} {c.mode:9s} {c.dtype:9s} {1000 * seconds:9.2f} ms/iter (optimizer {share:5.1%}) "
          f"{batch_size / seconds:8.0f} img/s {achieved / 1e12:7.2f} TFLOP/s  {util:>18s}  {mem}")

ratios = {}
for reference in [r for r in rows if r['impl'] == 'torchvision']:  # one a dtype
    dtype = reference['dtype']
    best = min((r for r in rows if r['impl'] == 'nanoViT' and r['dtype'] == dtype), key=lambda r: r['ms_per_iter'])
    ratios[dtype] = best['ms_per_iter'] / reference['ms_per_iter']
    print(f"{dtype}: nanoViT ({best['mode']}) takes {ratios[dtype]:.2f}x the time of torchvision's ViT (eager)")
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(f"peak memory of this process (every candidate above together): {peak_rss:.0f} MiB")
try:
    with open(bench_out, 'w') as f:
        json.dump(dict(device=name, hardware=machine, torch=torch.__version__, dataset=dataset, image_shape=shape,
                       batch_size=batch_size, flops_per_step=flops_per_step, config=config, rows=rows,
                       time_ratio_vs_torchvision=ratios, peak_rss_mib=peak_rss), f, indent=2)
except OSError as e:
    die(f"could not write {bench_out}: {e.strerror or e} (the table above has the figures)")
print(f"wrote {bench_out}")
