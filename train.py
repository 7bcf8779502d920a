"""
Train a Vision Transformer. On one device (CUDA, MPS or CPU, picked for you):
$ python train.py config/mnist.py
Override any config key from the command line:
$ python train.py config/cifar10.py --max_iters=2000 --batch_size=64 --dropout=0.1
Carry on after a crash, a disconnect or Ctrl-C:
$ python train.py config/mnist.py --init_from=resume
Several GPUs (or CPU processes) with DDP, on one node:
$ torchrun --standalone --nproc_per_node=4 train.py config/mnist.py
"""
import math
import os
import signal
import sys
import time
from dataclasses import asdict
_started = time.time()  # the wall time counts from here, torch's import included (_: not a config key)

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from data import Batches, ModelInput, augment_args, find_splits, fits_on_device, get_dataset, hold_out, predict
from model import ViT, ViTConfig
from support import checkpoint, pretrained, rules, safety
from support.device import (attention_kernel, autocast, device_name, peak_flops, pick_device, pick_dtype, rng_states,
                            synchronize, try_compile)
from support.errors import quiet_when_a_peer_stops
from support.optimizer import configure_optimizers

# -----------------------------------------------------------------------------
# default config values: config/*.py files and --key=value flags override them
# I/O
out_dir = 'out-mnist'  # the run's folder: ckpt.pt, metrics.jsonl, curves.png
eval_interval = 250  # evaluate on the whole validation and test splits, then checkpoint, every this many iterations
log_interval = 10
always_save_checkpoint = True  # checkpoint at every evaluation; if False only at the end (and on Ctrl-C)
init_from = 'scratch'  # 'scratch', 'resume' (out_dir/ckpt.pt), a torchvision ViT ('vit_b_16', 'vit_b_16:IMAGENET1K_SWAG_E2E_V1') or a run's out_dir
plot = True  # redraw out_dir/curves.png at every evaluation
# data
dataset = 'mnist'  # 'mnist', 'fashion_mnist', 'cifar10' or 'folder' (data.py)
data_dir = 'data'  # where torchvision datasets are (or get downloaded); for 'folder', the folder of pictures
img_size = 0  # the side the model takes; 0: the pictures' own. A folder's pictures are resized (shorter side) and cut to it
store_size = 0  # folder datasets: keep the pictures at this side in the store, larger than img_size (0 = img_size)
val_size = 0  # hold out this many training pictures (a fixed choice) as the validation split, to choose settings on
batch_size = 32  # images per process per micro-step
gradient_accumulation_steps = 1
eval_batch_size = 500
tta_shift = 0  # test-time augmentation: evaluate on the mean logits of each picture and its 8 shifts by N pixels
aug_translate = 0.0  # random shift of up to this many pixels (0 = no augmentation)
aug_rotate = 0.0  # random rotation of up to this many degrees
aug_scale = 0.0  # random zoom by up to this fraction
aug_crop = 0  # random crop of the image padded by this many pixels (a shift by whole pixels)
aug_flip = False  # mirror half of the images left to right (never digits)
aug_rrc_scale = 0.0  # random-resized crops of at least this share of the area, to img_size (with store_size; 0 = off)
# model
n_layer = 4
n_head = 4
n_embd = 768
patch_size = 4
mlp_ratio = 4.0
dropout = 0.0
bias = True
pool = 'cls'  # what the head reads: the 'cls' token, the 'mean' patch token, or 'map' (attention pooling)
pos_embd = 'learned'  # 'learned' or 'sincos'
pos_std = 0.02  # init std of a learned position embedding
qk_norm = False  # LayerNorm on queries and keys
norm_eps = 1e-5  # LayerNorm's epsilon
# optimizer
optimizer = 'adamw'  # 'adamw', or 'muon': Muon for the blocks' weight matrices, AdamW for the rest
learning_rate = 1e-3  # AdamW's peak learning rate
muon_lr = 0.02  # Muon's peak learning rate
muon_momentum = 0.95
max_iters = 1000
weight_decay = 0.05
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip gradients at this norm, or 0.0 for no clipping
layer_decay = 1.0  # fine-tuning: block i of n learns at lr * layer_decay ** (n + 1 - i), the head at lr (1.0: off)
linear_probe = False  # fine-tuning: train the head alone, every other weight frozen
label_smoothing = 0.0
# learning rate schedule: linear warmup, then a decay to min_lr at max_iters (every lr in proportion)
warmup_iters = 100
lr_schedule = 'cosine'  # the decay's shape: 'cosine' or 'linear'
min_lr = 1e-5
muon_momentum_warmup = 0  # Muon's momentum rises from 0.85 to muon_momentum over this many iterations
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto', 'float32', 'bfloat16' or 'float16' (autocast; float16 adds a GradScaler)
compile = True  # torch.compile the model where it can work
seed = 1337
data_placement = 'auto'  # 'device': the whole dataset on the device; 'stream': each batch read from the store; 'auto'
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}  # plain types only, saved in the checkpoint
flags = {a[2:].split('=')[0] for a in sys.argv[1:] if a.startswith('--')}  # the keys the command line sets by name
# -----------------------------------------------------------------------------
rules.check_config(config, get_dataset(dataset).shape, get_dataset(dataset).digits)
out_dir = os.path.expanduser(out_dir)

# processes: torchrun sets RANK for each one it starts; a plain `python train.py` is one process
ddp = 'RANK' in os.environ
rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')) if ddp else (0, 0, 1)
master = rank == 0  # logs, plots and checkpoints come from this process alone
device, device_reason = pick_device(device, local_rank if ddp else None)
device_type = device.split(':')[0]
if ddp:
    dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
    if not master:
        sys.excepthook = quiet_when_a_peer_stops
dtype, dtype_reason = pick_dtype(dtype, device_type)
ctx = autocast(device_type, dtype)
torch.manual_seed(seed + rank)
torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them

# the run's folder: one run at a time, and never a finished or interrupted run overwritten unasked
ckpt_path, metrics_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'metrics.jsonl')
if master:
    out_dir_lock = safety.claim_out_dir(out_dir, init_from, ckpt_path)

# where the run starts, and all that decides: the model's arguments, the side the store keeps and the side the
# model takes, the pixel normalization, the weights and the saved states (support/checkpoint.py)
if ddp and not master:
    dist.barrier()  # rank 0 fetches the weights and builds the picture stores first; the others then read them
if init_from == 'scratch':
    start = checkpoint.from_scratch(config)
elif init_from == 'resume':
    start = checkpoint.from_checkpoint(ckpt_path, config, flags, world_size)
else:
    start = pretrained.from_source(init_from, config, flags)

# the data: each split found from its files' names and headers, every check that needs no pixel made, then its
# pictures decoded once into a store on disk (data.py), on the device whole when it fits, else each batch read
train_split, test_split = find_splits(dataset, data_dir, start.store_size)
model_args = start.model_for(train_split.shape[0], train_split.shape[-1], train_split.classes)
rules.check_against_pictures(config, train_split.shape[-1])
train, test = train_split.load(), test_split.load()
if ddp and master:
    dist.barrier()
train_idx, val_idx = hold_out(len(train.labels), val_size)
start.note_training_pictures(len(train_idx))
on_device = fits_on_device(train.images.nbytes, device, data_placement)
(train_x, train_y), (test_x, test_y) = (split.on(device) if on_device else split.streamed() for split in (train, test))
splits = ({'val': (train_x[val_idx.to(train_x.device)], train_y[val_idx.to(train_y.device)])} if val_size else {}) | \
    {'test': (test_x, test_y)}  # evaluated whole: the validation split (held out, to choose settings on), the test split
# pixels as the weights expect them: the training split's statistics from scratch, the checkpoint's or the source's
data_mean, data_std = (start.mean, start.std) if start.mean else (train.mean, train.std)
model_input = ModelInput(model_args['in_chans'], model_args['img_size'], data_mean, data_std, start.test_crop, device)
batches = Batches(train_x, train_y, train_idx, batch_size, gradient_accumulation_steps, rank, world_size, seed,
                  augment_args(config), model_input, device)

# the model, and its optimizers
model = ViT(ViTConfig(**model_args))
start.load_weights(model, train.classes, ckpt_path if init_from == 'resume' else init_from)
model.to(device)
raw_model = model  # the plain module: what gets saved, whatever wraps it for speed or DDP
if linear_probe:  # the pretrained features stay as they are; only the new head learns
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith('head.')
optimizers = configure_optimizers(model, optimizer, learning_rate, muon_lr, weight_decay, (beta1, beta2), muon_momentum,
                                  device_type, dtype, layer_decay)
# fp16 gradients underflow without loss scaling; for other dtypes the scaler does nothing
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
start.load_states(optimizers, scaler, rank, world_size)  # a resumed run's moments, loss scale and RNG
iter_num, checkpoint_loss = start.iter_num, start.checkpoint_loss  # a diverged run must not replace that checkpoint
model, compile_note = try_compile(model, compile, ctx, *batches.get(iter_num, 0))
eval_model = model  # evaluation skips the DDP wrapper: it needs no gradient sync
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

flops_per_iter = 3 * raw_model.flops_per_image() * batches.global_batch  # forward and backward, every process
peak = (peak_flops(device_name(device), dtype) or 0) * world_size  # 0: not known for this device
if master:
    print(f"device {device} ({device_reason}) | dtype {dtype} ({dtype_reason}) | compile {compile_note} | "
          + attention_kernel(device, dtype, model_args['n_embd'] // model_args['n_head']))
    print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {raw_model.flops_per_image() / 1e9:.3f} GFLOPs "
          f"per image forward | data: {dataset}, {len(train_idx)} train / {len(val_idx)} val / {len(test_x)} test images of "
          f"{'x'.join(map(str, train_x.shape[1:]))}, {len(train.classes)} classes "
          f"({'on the device' if on_device else 'streamed from ' + train.path}) | {world_size} process(es), "
          f"{batches.global_batch} images per iteration | optimizer {optimizer}")


def lr_multiplier(it):
    # linear warmup, then a decay to min_lr at max_iters; every group's peak lr (AdamW's, Muon's) scales by it
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    floor = min_lr / learning_rate
    return floor + (0.5 * (1.0 + math.cos(math.pi * progress)) if lr_schedule == 'cosine' else 1 - progress) * (1 - floor)


@torch.no_grad()
def evaluate(images, labels):
    """Loss and accuracy on a whole split; each process takes a slice, the sums add up."""
    eval_model.eval()
    lo, hi = len(images) * rank // world_size, len(images) * (rank + 1) // world_size
    sums = torch.zeros(2, device=device)  # loss, correct
    for start in range(lo, hi, eval_batch_size):
        x, y = images[start:min(start + eval_batch_size, hi)].to(device), labels[start:min(start + eval_batch_size, hi)].to(device)
        with ctx:
            logits = predict(eval_model, x, model_input, tta_shift)
        sums[0] += F.cross_entropy(logits, y, reduction='sum')
        sums[1] += (logits.argmax(dim=1) == y).sum()
    if ddp:
        dist.all_reduce(sums)
    eval_model.train()
    loss, correct = sums.tolist()
    return loss / len(images), correct / len(images)


def save_checkpoint():
    rngs = rng_states(world_size)  # every process's dropout draws
    if master:
        checkpoint.save({'model': raw_model.state_dict(), 'optimizer': [opt.state_dict() for opt in optimizers],
                         'scaler': scaler.state_dict(), 'model_args': asdict(raw_model.config), 'iter_num': iter_num,
                         'val_loss': checkpoint_loss, 'config': config, 'classes': train.classes, 'data_mean': data_mean,
                         'data_std': data_std, 'n_train': len(train_idx), 'store_size': start.store_size, 'rng': rngs},
                        ckpt_path)


def global_mean(losses):
    """The mean of per-iteration losses (device tensors: reading it waits) over all processes, which each saw a part."""
    mean = torch.stack(losses).mean()
    if ddp:
        dist.all_reduce(mean)
        mean /= world_size
    return mean.item()


def stop_if_diverged(loss, what, checkpoint_loss=None):  # before a diverged model can replace a good checkpoint
    safety.stop_if_diverged(loss, what, iter_num, ckpt_path, learning_rate, dtype, scaler, checkpoint_loss)


def duration(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


if master:
    safety.restart_metrics(metrics_path, iter_num)
stop = safety.StopSignals(verbose=master, group=dist.new_group(backend='gloo') if ddp else None)

# training loop. Timing as in nanoGPT but for evaluations: t0 restarts at every log line and after every evaluation;
# the first log interval (warm-up: allocators, a first compile) counts in no average
start_iter = iter_num
losses = []  # training losses since the last evaluation, unread tensors: reading one waits for the device
logged_iter = iter_num  # the iteration of the last log line
interval_ms = []  # ms/iter of each log interval after the first
t0 = time.time()
while iter_num < max_iters:
    for opt in optimizers:  # this iteration's learning rates, and Muon's momentum
        for group in opt.param_groups:
            group['lr'] = group['max_lr'] * lr_multiplier(iter_num)
            if 'momentum' in group and muon_momentum_warmup:  # Muon's
                group['momentum'] = 0.85 + min(1.0, iter_num / muon_momentum_warmup) * (muon_momentum - 0.85)
    # forward, backward (gradients summed over the micro-steps), clip, step
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # all-reduce the gradients once, on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        x, y = batches.get(iter_num, micro_step)
        with ctx:
            _, loss = model(x, y, label_smoothing)
        loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
    if grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)  # clip the true gradients, not the fp16 loss-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:  # each owns its own parameters
        scaler.step(opt)  # skips the step if fp16 gradients overflowed
        opt.zero_grad(set_to_none=True)
    scaler.update()
    losses.append(loss.detach() * gradient_accumulation_steps)
    iter_num += 1
    last = iter_num == max_iters

    if iter_num % log_interval == 0 or last:
        mean_loss = global_mean(losses[logged_iter - iter_num:])
        synchronize(device_type)
        ms = 1000 * (time.time() - t0) / (iter_num - logged_iter)
        warm = logged_iter > start_iter
        if warm:
            interval_ms.append(ms)
        stop_if_diverged(mean_loss, "the training loss")
        lr = learning_rate * lr_multiplier(iter_num - 1)
        if master:
            print(f"iter {iter_num}/{max_iters}: loss {mean_loss:.4f}, lr {lr:.1e}, time {ms:.2f}ms"
                  + (f", eta {duration((max_iters - iter_num) * ms / 1000)}" if warm else " (warm-up)")
                  + (f", mfu {100 * flops_per_iter / (ms / 1000) / peak:.1f}%" if peak else ""))
            safety.write_metrics(metrics_path, [dict(iter=iter_num, loss=mean_loss, lr=lr, ms=ms)], 'a')
        logged_iter, t0 = iter_num, time.time()

    if iter_num % eval_interval == 0 or last:
        scores = {name: evaluate(*split) for name, split in splits.items()}  # {split: (loss, accuracy)}
        train_loss = global_mean(losses)
        losses = []
        stop_if_diverged(scores['test'][0], "the test loss", checkpoint_loss)
        if master:
            print(f"step {iter_num}: train loss {train_loss:.4f}, "
                  + ', '.join(f"{name} loss {loss:.4f}, {name} acc {100 * acc:.2f}%" for name, (loss, acc) in scores.items()))
            safety.write_metrics(metrics_path, [dict(iter=iter_num, train_loss=train_loss, **{
                f"{name}_{what}": value for name, s in scores.items() for what, value in zip(('loss', 'acc'), s)})], 'a')
        if always_save_checkpoint or last:
            checkpoint_loss = scores['test'][0]
            save_checkpoint()
        if plot and master:
            from plot import redraw  # matplotlib loads only when it is needed
            redraw(out_dir)
        t0 = time.time()  # the clock leaves the evaluation out

    signum = stop.requested()
    if signum and not last:
        if losses[logged_iter - iter_num:]:  # a model that diverged since the last log line is never saved
            stop_if_diverged(global_mean(losses[logged_iter - iter_num:]), "the training loss")
        save_checkpoint()
        if master:
            print(f"stopped by {signal.Signals(signum).name} after iter {iter_num}; checkpoint in {ckpt_path}. "
                  f"Resume with: {safety.resume_command(ddp, world_size)}")
        safety.leave(0 if signum == signal.SIGINT else 128 + signum, ddp)

if master:
    mean_ms = sum(interval_ms) / len(interval_ms) if interval_ms else ms
    print(f"done: " + ', '.join(f"{name} acc {100 * acc:.2f}%" for name, (_, acc) in scores.items())
          + f" | {iter_num - start_iter} iters in {duration(time.time() - _started)} wall, {mean_ms:.2f} ms/iter"
          + (f", mfu {100 * flops_per_iter / (mean_ms / 1000) / peak:.1f}%" if peak else "")
          + f", {flops_per_iter * iter_num / 1e12:.3g} TFLOP of training | checkpoint {ckpt_path}")
safety.leave(0, ddp)
