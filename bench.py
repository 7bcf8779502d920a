"""
Time the training step of a config, as train.py runs it, for every dtype this device has,
eager and compiled, next to torchvision's VisionTransformer with the same dims. Configs and
overrides work as in train.py:
$ python bench.py config/mnist.py
$ python bench.py config/mnist.py --batch_size=512 --device=cuda
Prints a table and writes it as JSON to bench_out.
"""
import json
import os
import platform
import statistics
import time

import torch
from torch.nn import functional as F

from common import (augment, autocast, compile_blocker, cpu_has_native_bf16, device_name, peak_flops, pick_device,
                    pick_dtype, synchronize)
from model import ViT, ViTConfig

# -----------------------------------------------------------------------------
# the train.py keys that shape the training step (config files set them), then the bench's own
batch_size = 32
n_layer = 4
n_head = 4
n_embd = 768
patch_size = 4
mlp_ratio = 4.0
dropout = 0.0
bias = True
pool = 'cls'
pos_embd = 'learned'
pos_std = 0.02
qk_norm = False
learning_rate = 1e-3
weight_decay = 0.05
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0
label_smoothing = 0.0
aug_translate = 0.0
aug_rotate = 0.0
aug_scale = 0.0
device = 'auto'
dtype = 'all'  # 'all': every dtype the device runs well; or one of 'float32', 'bfloat16', 'float16'
compile = True  # also time the compiled step
torchvision_vit = True  # also time torchvision's VisionTransformer with the same dims
bench_warmup = 5  # untimed steps first (compilation, allocator warm-up)
bench_iters = 20  # timed steps; the median is reported
bench_out = 'bench.json'
seed = 1337
_skip_unknown_file_keys = True  # config files for train.py also set out_dir, max_iters, ...
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

torch.manual_seed(seed)
torch.set_float32_matmul_precision('high')
device, _ = pick_device(device)
device_type = device.split(':')[0]
if dtype == 'all':
    dtypes = ['float32']  # plus the low-precision dtypes this device runs natively
    if device_type == 'cpu' and cpu_has_native_bf16():
        dtypes.append('bfloat16')
    if device_type == 'cuda' and torch.cuda.get_device_capability()[0] >= 8:
        dtypes.append('bfloat16')
    if device_type == 'cuda' and torch.cuda.get_device_capability()[0] >= 7 or device_type == 'mps':
        dtypes.append('float16')
else:
    dtypes = [pick_dtype(dtype, device_type)[0]]
if not compile:
    blocker = "compile=False"
elif device_type == 'cpu':
    blocker = None  # train.py skips compiling on a CPU; these timings are what that rests on
else:
    blocker = compile_blocker(device_type)
modes = ['eager'] + (['compiled'] if not blocker else [])
config = ViTConfig(patch_size=patch_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, mlp_ratio=mlp_ratio,
                   dropout=dropout, bias=bias, pool=pool, pos_embd=pos_embd, pos_std=pos_std,
                   qk_norm=qk_norm)
# random digits stand in for MNIST: the step's cost does not depend on the pixels
images = torch.randint(0, 256, (batch_size, 1, config.img_size, config.img_size), dtype=torch.uint8, device=device)
labels = torch.randint(0, config.n_classes, (batch_size,), device=device)
aug_generator = torch.Generator(device=device).manual_seed(seed)


def train_step_fn(model, optimizer, scaler, ctx, params, rgb=False):
    """One training step as train.py takes it: normalize (and augment) on the device, forward under
    autocast, scaled backward, clip, AdamW step."""
    def step():
        x = images.float() / 255
        if aug_translate or aug_rotate or aug_scale:
            x = augment(x, aug_translate, aug_rotate, aug_scale, aug_generator)
        x = (x - 0.1307) / 0.3081  # MNIST's mean and std; the values do not change the cost
        with ctx:
            if rgb:  # torchvision's ViT takes 3-channel images
                loss = F.cross_entropy(model(x.expand(-1, 3, -1, -1)).float(), labels, label_smoothing=label_smoothing)
            else:
                _, loss = model(x, labels, label_smoothing)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return step


def time_step(step):
    for _ in range(bench_warmup):
        step()
    synchronize(device_type)
    if device_type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(bench_iters):
        t0 = time.perf_counter()
        step()
        synchronize(device_type)
        times.append(time.perf_counter() - t0)
    memory = torch.cuda.max_memory_allocated() / 2 ** 20 if device_type == 'cuda' else None
    return statistics.median(times), memory


def ours(dtype, mode):
    model = ViT(config).to(device)
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
    params = list(model.parameters())
    if mode == 'compiled':
        model = torch.compile(model)
    return train_step_fn(model, optimizer, scaler, autocast(device_type, dtype), params)


def theirs(dtype):
    from torchvision.models import VisionTransformer
    model = VisionTransformer(image_size=config.img_size, patch_size=patch_size, num_layers=n_layer,
                              num_heads=n_head, hidden_dim=n_embd, mlp_dim=int(mlp_ratio * n_embd),
                              dropout=dropout, num_classes=config.n_classes).to(device)
    # as a user would: plain AdamW over all parameters, eager
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, beta2), weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
    return train_step_fn(model, optimizer, scaler, autocast(device_type, dtype), list(model.parameters()), rgb=True)


def matmul_flops(dtype, n=2048):
    """Measured FLOP/s of one big matmul in dtype: the CPU's practical ceiling."""
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ a
    synchronize(device_type)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    synchronize(device_type)
    return 10 * 2 * n ** 3 / (time.perf_counter() - t0)


flops_per_step = 3 * ViT(config).flops_per_image() * batch_size
name = device_name(device) if device_type != 'cpu' else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
print(f"bench: {name} | torch {torch.__version__} | batch {batch_size} | n_layer {n_layer}, n_head {n_head}, "
      f"n_embd {n_embd}, patch {patch_size} | {flops_per_step / 1e9:.1f} GFLOP per step"
      + (f" | compile skipped: {blocker}" if blocker else ""))
rows = []
for dtype in dtypes:
    ceiling = peak_flops(name, dtype) if device_type == 'cuda' else None
    ceiling_kind = 'peak'
    if ceiling is None and device_type == 'cpu':
        ceiling, ceiling_kind = matmul_flops(dtype), 'matmul'
    candidates = [('nanoViT', mode, ours, (dtype, mode)) for mode in modes]
    if torchvision_vit:
        candidates.append(('torchvision', 'eager', theirs, (dtype,)))
    for impl, mode, build, args in candidates:
        seconds, memory = time_step(build(*args))
        achieved = flops_per_step / seconds
        rows.append(dict(impl=impl, mode=mode, dtype=dtype, ms_per_iter=1000 * seconds,
                         images_per_s=batch_size / seconds, tflops=achieved / 1e12,
                         utilization=achieved / ceiling if ceiling else None, ceiling=ceiling_kind if ceiling else None,
                         peak_memory_mib=memory))
        r = rows[-1]
        util = f"{100 * r['utilization']:.1f}% of {ceiling_kind}" if ceiling else "n/a"
        mem = f"{memory:.0f} MiB" if memory is not None else "-"
        print(f"{impl:12s} {mode:9s} {dtype:9s} {r['ms_per_iter']:9.2f} ms/iter {r['images_per_s']:9.0f} img/s "
              f"{r['tflops']:7.2f} TFLOP/s  {util:>18s}  {mem}")

ratios = {}
for dtype in dtypes:
    best = min((r for r in rows if r['impl'] == 'nanoViT' and r['dtype'] == dtype), key=lambda r: r['ms_per_iter'])
    reference = [r for r in rows if r['impl'] == 'torchvision' and r['dtype'] == dtype]
    if reference:
        ratios[dtype] = best['ms_per_iter'] / reference[0]['ms_per_iter']
        print(f"{dtype}: nanoViT ({best['mode']}) takes {ratios[dtype]:.2f}x the time of torchvision's ViT (eager)")
with open(bench_out, 'w') as f:
    json.dump(dict(device=name, torch=torch.__version__, batch_size=batch_size, flops_per_step=flops_per_step,
                   config=dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, patch_size=patch_size,
                               mlp_ratio=mlp_ratio), rows=rows, time_ratio_vs_torchvision=ratios), f, indent=2)
print(f"wrote {bench_out}")
