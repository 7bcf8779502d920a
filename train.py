"""
Train a Vision Transformer on one device (CUDA, MPS or CPU, picked for you); any config key can be overridden:
$ python train.py config/mnist.py --max_iters=2000
Carry on after a crash, a disconnect or Ctrl-C:
$ python train.py config/mnist.py --init_from=resume
Several GPUs (or CPU processes) with DDP, on one node:
$ torchrun --standalone --nproc_per_node=4 train.py config/mnist.py
"""
import functools
import math
import os
import signal
import sys
import time
_started = time.time()  # the wall time counts from here, torch's import included (_: not a config key)

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import prepare
from data import augment, model_input, predict
from model import ViT
from support import checkpoint, errors, pretrained, rules, safety
from support.device import (autocast, fits_on_device, global_mean, peak_flops, pick_device, pick_dtype, rng_states,
                           synchronize, try_compile)
from support.runlog import RunLog, duration
from support.optimizer import configure_optimizers

# -----------------------------------------------------------------------------
# default config values: config/*.py files and --key=value flags override them (bench.py runs this block too)
# I/O
out_dir = 'out-mnist'  # the run's folder: ckpt.pt, metrics.jsonl, curves.png, run.json, log.txt
eval_interval = 250  # evaluate on the whole validation and test splits, then checkpoint, every this many iterations
log_interval = 10  # print the training loss every this many iterations
always_save_checkpoint = True  # checkpoint at every evaluation; if False only at the end (and on Ctrl-C)
init_from = 'scratch'  # 'scratch', 'resume' (out_dir/ckpt.pt), pretrained ('vit_b_16', 'timm:NAME'), a run's out_dir
plot = True  # redraw out_dir/curves.png at every evaluation
wandb_log = False  # also log to Weights & Biases (pip install wandb)
wandb_project = 'nanovit'  # the Weights & Biases project
wandb_run_name = 'run'  # and run
# data
dataset = 'mnist'  # 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'folder' or 'torchvision:NAME' (prepare.py)
data_dir = 'data'  # where torchvision datasets are (or get downloaded); for 'folder', the folder of pictures
img_size = 0  # the side the model takes; 0: the pictures' own. A folder's are resized (shorter side) and cut to it
store_size = 0  # keep the prepared pictures at this side, larger than img_size (0 = img_size, or their own)
val_size = 0  # hold out this many training pictures (a fixed choice) as the validation split, to choose settings on
batch_size = 32  # images per process per micro-step
gradient_accumulation_steps = 1  # micro-steps per update: the batch of an update is their sum
eval_batch_size = 128  # pictures per forward pass in an evaluation (on a CPU larger ones are slower per picture)
tta_shift = 0  # test-time augmentation: evaluate on the mean logits of each picture and its shifts by N pixels
tta_views = 9  # how many: 9 (the 3 x 3 neighbourhood of shifts) or 5 (the picture and its shifts up, down, left, right)
aug_translate = 0.0  # random shift of up to this many pixels (0 = no augmentation)
aug_rotate = 0.0  # random rotation of up to this many degrees
aug_scale = 0.0  # random zoom by up to this fraction
aug_crop = 0  # random shift by up to this many whole pixels (a random crop of the picture padded by that many)
aug_flip = False  # mirror half of the images left to right (never digits)
aug_rrc_scale = 0.0  # random-resized crops of at least this share of the area, to img_size (with store_size; 0 = off)
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads a block
n_embd = 768  # the width of every token
patch_size = 4  # the side of the square patches a picture is cut into
mlp_ratio = 4.0  # the MLP's hidden width, as a multiple of n_embd
dropout = 0.0  # on the embeddings, attention and the MLP
bias = True  # biases in the linear layers and LayerNorms
pool = 'cls'  # what the head reads: the 'cls' token or the 'mean' patch token
pos_embd = 'learned'  # 'learned' or 'sincos'
pos_std = 0.02  # init std of a learned position embedding
qk_norm = False  # LayerNorm on queries and keys
norm_eps = 1e-5  # LayerNorm's epsilon
# optimizer
optimizer = 'adamw'  # 'adamw', or 'muon': Muon for the blocks' weight matrices, AdamW for the rest
learning_rate = 1e-3  # AdamW's peak learning rate
muon_lr = 0.02  # Muon's peak learning rate
muon_momentum = 0.95  # Muon's momentum (after its warm-up)
max_iters = 1000  # the number of updates
weight_decay = 0.05  # decoupled, on the weight matrices alone
beta1 = 0.9  # AdamW's first moment's decay
beta2 = 0.99  # and its second's
grad_clip = 1.0  # clip gradients at this norm, or 0.0 for no clipping
layer_decay = 1.0  # fine-tuning: block i of n learns at lr * layer_decay ** (n + 1 - i), the head at lr (1.0: off)
linear_probe = False  # fine-tuning: train the head alone, every other weight frozen
label_smoothing = 0.0  # the share of the target spread over every class
# learning rate schedule: linear warmup, then a decay to min_lr at max_iters (every lr in proportion)
warmup_iters = 100  # iterations of the linear warmup
lr_schedule = 'cosine'  # the decay's shape: 'cosine' or 'linear'
min_lr = 1e-5  # AdamW's lr at the end (Muon's in proportion)
muon_momentum_warmup = 0  # Muon's momentum rises from muon_momentum_min to muon_momentum over this many iterations
muon_momentum_min = 0.85  # where Muon's momentum warm-up starts
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto', 'float32', 'bfloat16' or 'float16' (autocast; float16 adds a GradScaler)
compile = True  # torch.compile the model where it can work and pays
seed = 1337  # the batches, the augmentation, the init and dropout draw from it
data_placement = 'auto'  # 'device': the whole dataset on the device; 'stream': each batch read from disk; 'auto'
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}  # plain types only, saved in the checkpoint
# -----------------------------------------------------------------------------
rules.check_config(config, prepare.get_dataset(dataset))  # every value a rule can judge alone (support/rules.py)
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
        sys.excepthook = errors.quiet_when_a_peer_stops
dtype, dtype_reason = pick_dtype(dtype, device_type)
ctx = autocast(device_type, dtype)
torch.manual_seed(seed + rank)
torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them

# the run's folder: one run at a time, and never a finished or interrupted run overwritten unasked
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
out_dir_lock = safety.claim_out_dir(out_dir, init_from, ckpt_path) if master else None  # held while the run lives

# where the run starts: from scratch, its checkpoint or a pretrained source (support/checkpoint.py, pretrained.py)
if ddp and not master:
    dist.barrier()  # process 0 fetches the weights and prepares the dataset first; the others then read them
if init_from == 'scratch':
    start = checkpoint.from_scratch(config)
elif init_from == 'resume':
    start = checkpoint.from_checkpoint(ckpt_path, config, flags, world_size)  # flags: the keys set on the command line
else:
    start = pretrained.from_source(init_from, config, flags)
# the data: found from its files' names and headers, checked, then prepared once (prepare.py: uint8 arrays on disk)
found = prepare.find(dataset, data_dir, start.store_size)
model_config = start.settle(found.shape, found.classes)  # the model's arguments, settled once
rules.check_against_data(config, found, world_size)
# metrics.jsonl, what the run prints (log.txt), where it came from (run.json: command, code, hardware)
run_log = RunLog(out_dir, config, start.iter_num, device, dtype) if master else None
data = prepare.load(found)
if ddp and master:
    dist.barrier()
train_idx, val_idx = prepare.held_out(len(data.train[1]), val_size)
on_device = fits_on_device(data.train[0].nbytes, device, data_placement)  # else each batch is read from the map
(train_x, train_y), (test_x, test_y) = (tuple(t.to(device) for t in split) if on_device else split
                                        for split in (data.train, data.test))
# pixels as the weights expect them: the training split's statistics from scratch, the checkpoint's or the source's
data_mean, data_std = (start.mean, start.std) if start.mean else (data.mean, data.std)
mean, std = (torch.tensor(s, device=device).view(-1, 1, 1) for s in (data_mean, data_std))
aug = {k.removeprefix('aug_'): v for k, v in config.items() if k.startswith('aug_')}
global_batch = batch_size * gradient_accumulation_steps * world_size
steps_per_epoch = len(train_idx) // global_batch

@functools.lru_cache(maxsize=1)
def epoch_order(epoch):
    # one shuffle of the training pictures an epoch, the same on every process: a function of (seed, epoch) alone.
    # Each stream of draws (batch order, augmentation) is seeded by seed * its prime + the draw's index: no seed twice
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2 ** 64)
    return train_idx[torch.randperm(len(train_idx), generator=generator)]

def get_batch(it, micro_step):
    """Batch (it, micro_step), on the device as the model takes it: a function of (seed, it, micro_step) alone, so a
    resumed run draws exactly what it would have, with nothing saved; N processes the slices of one N times larger."""
    epoch, step = divmod(it, steps_per_epoch)
    first = step * global_batch + (micro_step * world_size + rank) * batch_size  # this process's slice of the batch
    idx = epoch_order(epoch)[first:first + batch_size]
    x, y = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)  # uint8 pictures
    draw = (it * gradient_accumulation_steps + micro_step) * world_size + rank
    generator = torch.Generator(device=device).manual_seed((seed * 1_000_033 + draw) % 2 ** 64)
    x = augment(x.float() / 255, generator, size=model_config.img_size, **aug)  # data.py: shifts, crops, mirrors
    return model_input(x, model_config, mean, std, start.test_crop if not aug_rrc_scale else 1.0), y

# the model (raw_model: the plain module, what gets saved, whatever wraps it for speed or DDP), and its optimizers
raw_model = start.load_weights(ViT(model_config), data.classes).to(device)  # the start's weights: none from scratch
if linear_probe:  # the pretrained features stay as they are; only the new head learns
    raw_model.requires_grad_(False).head.requires_grad_(True)
optimizers = configure_optimizers(raw_model, optimizer, learning_rate, muon_lr, weight_decay, (beta1, beta2),
                                  muon_momentum, device_type, dtype, layer_decay)  # {'adamw': ..., 'muon': ...}
peak_lrs = [[group['lr'] for group in opt.param_groups] for opt in optimizers.values()]  # layer_decay scales them
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))  # fp16 gradients underflow without it
start.load_states(optimizers.values(), scaler, rank, world_size, len(train_idx))  # a resumed run's moments, RNG
iter_num, checkpoint_loss = start.iter_num, start.train_loss  # a diverged run must not replace that checkpoint
x, y = get_batch(iter_num, 0)
model, compile_note = try_compile(raw_model, compile, ctx, x, y, max_iters - iter_num)
eval_model = model  # evaluation skips the DDP wrapper: it needs no gradient sync
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)
flops_per_iter = 3 * raw_model.flops_per_image() * global_batch  # forward and backward, every process
peak = (peak_flops(device, dtype) or 0) * world_size  # 0: not known for this device
if master:
    safety.check_free_space(out_dir, 12 * raw_model.get_num_params())  # weights and two moments, 4 bytes a number
    print(f"device {device} ({device_reason}) | dtype {dtype} ({dtype_reason}) | compile {compile_note}")
    print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {raw_model.flops_per_image() / 1e9:.3f} GFLOPs "
          f"per image forward | data: {dataset}, {len(train_idx)} train / {len(val_idx)} val / {len(test_y)} test "
          f"images of {'x'.join(map(str, found.shape))}, {len(data.classes)} classes "
          f"({'on the device' if on_device else 'read from ' + data.path}) | {world_size} process(es), "
          f"{global_batch} images per iteration | optimizer {optimizer}")

def lr_multiplier(it):
    # linear warmup, then a decay to min_lr at max_iters; every group's peak lr (AdamW's, Muon's) scales by it
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if lr_schedule == 'cosine' else 1 - progress
    return min_lr / learning_rate + decay * (1 - min_lr / learning_rate)

@torch.no_grad()
def evaluate(images, labels, indices):
    """Loss and accuracy on a whole split, the pictures images[indices]; each process takes a slice, the sums add up."""
    eval_model.eval()
    sums = torch.zeros(2, device=device)  # loss, correct
    for idx in indices[rank::world_size].split(eval_batch_size):  # this process's share
        x, y = images[idx].to(device), labels[idx].to(device)
        with ctx:
            logits = predict(eval_model, x, mean, std, start.test_crop, tta_shift, tta_views)
        sums += torch.stack([F.cross_entropy(logits, y, reduction='sum'), (logits.argmax(dim=1) == y).sum()])
    if ddp:
        dist.all_reduce(sums)
    eval_model.train()
    return (sums / len(indices)).tolist()

def save_checkpoint():
    rngs = rng_states(world_size)  # every process's dropout draws
    if master:
        checkpoint.save(checkpoint.checkpoint_of(raw_model, optimizers.values(), scaler, iter_num, checkpoint_loss,
                        config, data.classes, data_mean, data_std, len(train_idx), start, rngs), ckpt_path)

splits = {'val': (train_x, train_y, val_idx)} if val_size else {}  # evaluated whole: the held-out split, to choose on
splits['test'] = (test_x, test_y, torch.arange(len(test_y)))  # and the test split, for the final figure alone
eval_seconds = None  # what an evaluation takes: measured at the first; until then, a forward is a third of a step
stop = safety.StopSignals(verbose=master, group=dist.new_group(backend='gloo') if ddp else None)

# training loop. t0 restarts at every log line and after every evaluation; the first log interval (warm-up:
# allocators, a first compile) counts in no average
losses = []  # training losses since the last evaluation, unread tensors: reading one waits for the device
interval_ms = []  # ms/iter of each log interval after the first
logged_iter, t0 = iter_num, time.time()  # the iteration of the last log line, and when it was written
while iter_num < max_iters:
    for opt, peaks in zip(optimizers.values(), peak_lrs):  # this iteration's learning rates
        for group, peak_lr in zip(opt.param_groups, peaks):
            group['lr'] = peak_lr * lr_multiplier(iter_num)
    if 'muon' in optimizers and muon_momentum_warmup:  # Muon's momentum rises from muon_momentum_min as it warms up
        for group in optimizers['muon'].param_groups:
            rise = min(1, iter_num / muon_momentum_warmup)
            group['momentum'] = muon_momentum_min + rise * (muon_momentum - muon_momentum_min)
    # forward, backward (gradients summed over the micro-steps), clip, step
    step_loss = 0.0
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # all-reduce the gradients once, on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            _, loss = model(x, y, label_smoothing)
        loss = loss / gradient_accumulation_steps
        step_loss += loss.detach()  # the mean over the micro-steps: the loss of the whole batch
        following = (iter_num + 1, 0) if micro_step + 1 == gradient_accumulation_steps else (iter_num, micro_step + 1)
        x, y = get_batch(*following)  # the next batch, drawn while the device works on this one
        scaler.scale(loss).backward()
    if grad_clip > 0:
        for opt in optimizers.values():
            scaler.unscale_(opt)  # clip the true gradients, not the fp16 loss-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers.values():  # each owns its own parameters
        scaler.step(opt)  # skips the step if fp16 gradients overflowed
        opt.zero_grad(set_to_none=True)
    scaler.update()
    losses.append(step_loss)
    iter_num += 1
    last = iter_num == max_iters

    if iter_num % log_interval == 0 or last:
        mean_loss = global_mean(losses[logged_iter - iter_num:], ddp)
        synchronize(device_type)
        ms = 1000 * (time.time() - t0) / (iter_num - logged_iter)
        warm = logged_iter > start.iter_num
        interval_ms += [ms] if warm else []
        views = tta_views if tta_shift else 1
        evaluating = eval_seconds or (len(val_idx) + len(test_y)) * views * ms / 3000 / global_batch
        evals_left = max_iters // eval_interval - (iter_num - 1) // eval_interval + (max_iters % eval_interval > 0)
        eta = (max_iters - iter_num) * ms / 1000 + evals_left * evaluating  # the steps and evaluations left
        safety.stop_if_diverged(mean_loss, iter_num, ckpt_path, checkpoint_loss, learning_rate, dtype, scaler)
        lrs = {name: max(group['lr'] for group in opt.param_groups) for name, opt in optimizers.items()}  # as stepped
        if master:
            print(f"iter {iter_num}/{max_iters}: loss {mean_loss:.4f}, lr "
                  + ', '.join(f"{v:.1e} ({k})" for k, v in lrs.items()) + f", time {ms:.2f}ms, eta {duration(eta)}"
                  + " (warm-up)" * (not warm)  # the first eta, from the warm-up's pace: near the start, a rough one
                  + (f", mfu {100 * flops_per_iter / (ms / 1000) / peak:.1f}%" if peak else ""))
            run_log.write(dict(iter=iter_num, loss=mean_loss, ms=ms, lr=lrs['adamw'], muon_lr=lrs.get('muon')))
        logged_iter, t0 = iter_num, time.time()

    if iter_num % eval_interval == 0 or last:
        t_eval = time.time()
        scores = {name: evaluate(*split) for name, split in splits.items()}  # {split: (loss, accuracy)}
        eval_seconds = time.time() - t_eval
        train_loss = global_mean(losses, ddp)
        losses = []
        safety.stop_if_diverged(train_loss, iter_num, ckpt_path, checkpoint_loss, learning_rate, dtype, scaler)
        if master:
            scored = ', '.join(f"{s} loss {loss:.4f}, {s} acc {100 * acc:.2f}%" for s, (loss, acc) in scores.items())
            print(f"step {iter_num}: train loss {train_loss:.4f}, {scored} (evaluated in {eval_seconds:.1f}s)")
            run_log.write(dict(iter=iter_num, train_loss=train_loss, eval_seconds=eval_seconds, **{
                f"{name}_{what}": value for name, s in scores.items() for what, value in zip(('loss', 'acc'), s)}))
        if always_save_checkpoint or last:
            checkpoint_loss = train_loss
            save_checkpoint()
        if plot and master:
            from plot import redraw  # matplotlib loads only when it is needed
            redraw(out_dir)
        t0 = time.time()  # the clock leaves the evaluation out

    if (signum := stop.requested()) and not last:  # Ctrl-C or SIGTERM
        if losses[logged_iter - iter_num:]:  # a model that diverged since the last log line is never saved
            loss = global_mean(losses[logged_iter - iter_num:], ddp)
            safety.stop_if_diverged(loss, iter_num, ckpt_path, checkpoint_loss, learning_rate, dtype, scaler)
        save_checkpoint()
        if master:
            print(f"stopped by {signal.Signals(signum).name} after iter {iter_num}; checkpoint in {ckpt_path}. "
                  f"Resume with: {safety.resume_command(ddp, world_size)}")
        safety.leave(0 if signum == signal.SIGINT else 128 + signum, ddp, run_log)

if master:
    mean_ms = sum(interval_ms) / len(interval_ms) if interval_ms else ms
    print("done: " + ', '.join(f"{name} acc {100 * acc:.2f}%" for name, (_, acc) in scores.items())
          + f" | {iter_num - start.iter_num} iters in {duration(time.time() - _started)} wall, {mean_ms:.2f} ms/iter"
          + (f", mfu {100 * flops_per_iter / (mean_ms / 1000) / peak:.1f}%" if peak else "")
          + f", {flops_per_iter * iter_num / 1e12:.3g} TFLOP of training | checkpoint {ckpt_path}")
safety.leave(0, ddp, run_log)
