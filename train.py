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
import shlex
import signal
import sys
import time
from dataclasses import asdict
from functools import lru_cache
_started = time.time()  # the summary's wall time counts from here, torch's import included (_: not a config key)

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import safety
from data import (Prefetcher, augment, augment_args, fit_size, get_dataset, load_split, match_channels, normalize, place,
                  predict)
from device import (autocast, device_name, peak_flops, pick_device, pick_dtype, rng_state, sdpa_backend, set_rng_state,
                    synchronize, try_compile)
from errors import die, quiet_when_a_peer_stops
from model import ViT, ViTConfig
from pretrained import fit_to, load_source
from settings import check_against_pictures, check_config, model_config, model_of_run, train_defaults

# -----------------------------------------------------------------------------
# default config values: config/*.py files and --key=value flags override them
# I/O
out_dir = 'out-mnist'  # the run's folder: ckpt.pt, metrics.jsonl, curves.png
eval_interval = 250  # evaluate on the whole test split, then checkpoint, every this many iterations
log_interval = 10
always_save_checkpoint = True  # checkpoint at every evaluation; if False only at the end (and on Ctrl-C)
init_from = 'scratch'  # 'scratch', 'resume' (out_dir/ckpt.pt), a torchvision ViT ('vit_b_16', 'vit_b_16:IMAGENET1K_SWAG_E2E_V1') or a run's out_dir
plot = True  # redraw out_dir/curves.png at every evaluation
# data
dataset = 'mnist'  # 'mnist', 'fashion_mnist', 'cifar10' or 'folder' (data.py)
data_dir = 'data'  # where torchvision datasets are (or get downloaded); for 'folder', the folder of pictures
img_size = 0  # folder datasets: 0 keeps the pictures' size, N resizes the shorter side to N and cuts the centre N x N
batch_size = 32  # images per process per micro-step
gradient_accumulation_steps = 1
eval_batch_size = 500
tta_shift = 0  # test-time augmentation: evaluate on the mean logits of each test image and its 8 shifts by N pixels
aug_translate = 0.0  # random shift of up to this many pixels (0 = no augmentation)
aug_rotate = 0.0  # random rotation of up to this many degrees
aug_scale = 0.0  # random zoom by up to this fraction
aug_crop = 0  # random crop of the image padded by this many pixels (a shift by whole pixels)
aug_flip = False  # mirror half of the images left to right (never digits)
aug_rrc_scale = 0.0  # random-resized crops of at least this share of the area, to img_size (with store_size; 0 = off)
store_size = 0  # folder datasets: keep the pictures at this side in the store, larger than img_size (0 = img_size)
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
# learning rate schedule: linear warmup, then cosine decay to min_lr at max_iters (every lr in proportion)
warmup_iters = 100
min_lr = 1e-5
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto', 'float32', 'bfloat16' or 'float16' (autocast; float16 adds a GradScaler)
compile = True  # torch.compile the model where it can work
seed = 1337
data_placement = 'auto'  # 'device': the whole dataset on the device; 'stream': each batch read from the store; 'auto'
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in _config_keys}  # plain types only, saved in the checkpoint
# -----------------------------------------------------------------------------

check_config(config)
# the model's own values fail here, not after minutes of downloading or decoding, on the pictures' side where it is
# known before they load (a folder of pictures of their own size: once they are decoded). A run that starts from
# a checkpoint or a pretrained model takes its architecture from there.
if init_from == 'scratch':
    model_config(config, img_size=(get_dataset(dataset).shape or [img_size or patch_size])[-1], in_chans=1, n_classes=1)
if aug_flip and get_dataset(dataset).digits:
    die(f"aug_flip=True on {dataset}: a mirrored digit is not the same digit (use aug_translate, aug_rotate)", 2)
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
torch.manual_seed(seed + rank)
torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them

# the run's folder: one run at a time, and never a finished or interrupted run overwritten unasked
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
metrics_path = os.path.join(out_dir, 'metrics.jsonl')
if master:
    out_dir_lock = safety.claim_out_dir(out_dir, init_from, ckpt_path)

# where the model starts: nowhere (scratch), the run's own checkpoint (resume), or a pretrained source
checkpoint, source = None, None
if init_from == 'resume':
    # on the CPU: RNG states must be CPU tensors, and the weights go to the device as they load
    checkpoint = safety.load_checkpoint(ckpt_path, 'cpu', keys=('model', 'model_args', 'optimizer', 'scaler', 'iter_num',
                                                                'best_val_acc', 'val_loss', 'config', 'classes', 'rng',
                                                                'data_mean', 'data_std'))
if ddp and not master:
    dist.barrier()  # let rank 0 fetch the weights, download the data (or decode and cache it) first
if init_from not in ('scratch', 'resume'):
    source = load_source(init_from)
# folder pictures are decoded at the model's size: a fine-tuning run's, if img_size does not say
picture_size = checkpoint.get('picture_size', img_size) if checkpoint else store_size or img_size
if source and not picture_size and not get_dataset(dataset).shape:
    picture_size = source.model_args['img_size']

# data: a store of uint8 pictures on disk (data.py), made once; on the device whole when it fits, else each
# batch gathered from the store; batches are augmented and normalized on the device
train = load_split(dataset, data_dir, True, picture_size)
test = load_split(dataset, data_dir, False, picture_size, like=train.images)
if ddp and master:
    dist.barrier()
classes = train.classes

# the model: the config's from scratch; the checkpoint's or the source's architecture otherwise
model_args = model_of_run(config, _flags, train.images.shape, classes, checkpoint, ckpt_path, source, init_from,
                          verbose=master)
check_against_pictures(config, train.images.shape[-1])
train_x, train_y, placement = place(train, device, data_placement)
test_x, test_y, _ = place(test, device, data_placement)
# pixels normalized as the weights expect them: the training split's statistics from scratch, the source's otherwise
data_mean, data_std = (checkpoint['data_mean'], checkpoint['data_std']) if checkpoint else \
    (source.mean, source.std) if source else (train.mean, train.std)
mean_on_device, std_on_device = torch.tensor(data_mean, device=device), torch.tensor(data_std, device=device)
# the pictures as the model takes them: its channels (grey into an RGB model), its size; both per batch
model_channels, model_size = model_args['in_chans'], model_args['img_size']
test_crop = 0.875 if store_size else 1.0  # a store kept larger for random-resized crops is tested on its centre
prefetch = Prefetcher(train_x, train_y, device) if placement == 'stream' and device_type == 'cuda' else None
global_batch = batch_size * gradient_accumulation_steps * world_size
steps_per_epoch = len(train_x) // global_batch
if steps_per_epoch == 0:
    die(f"batch_size={batch_size} x gradient_accumulation_steps x processes = {global_batch} "
        f"is larger than the {len(train_x)} training images", 2)
aug_args = augment_args(config)
augmenting = any(aug_args.values())
aug_generator = torch.Generator(device=device)


def draw_seed(prime, index):
    # a generator seed for each (run seed, index): seed * prime + index never repeats for an index below the
    # prime, and each stream of draws (batch order, augmentation) has a prime of its own
    return (seed * prime + index) % 2 ** 64


@lru_cache(maxsize=1)
def epoch_order(epoch):
    # one shuffle per epoch, the same on every process (each takes its own slice of a batch),
    # and a function of (seed, epoch) alone, so a resumed run draws the batches it would have
    generator = torch.Generator().manual_seed(draw_seed(1_000_003, epoch))
    return torch.randperm(len(train_x), generator=generator).to(train_x.device)


def batch_indices(it, micro_step):
    epoch, step = divmod(it, steps_per_epoch)
    start = step * global_batch + (micro_step * world_size + rank) * batch_size
    return epoch_order(epoch)[start:start + batch_size]


def get_batch(it, micro_step):
    if prefetch:  # from the store to the GPU: this batch was gathered while the last one trained
        following = (it, micro_step + 1) if micro_step + 1 < gradient_accumulation_steps else (it + 1, 0)
        x, y = prefetch.get(batch_indices(it, micro_step), batch_indices(*following))
    else:
        idx = batch_indices(it, micro_step)
        x, y = train_x[idx].to(device), train_y[idx].to(device)
    x = match_channels(x, model_channels).float() / 255
    if augmenting:
        # seeded by the draw's place in the run, like the batch order: nothing to save for an exact resume
        draw = (it * gradient_accumulation_steps + micro_step) * world_size + rank
        aug_generator.manual_seed(draw_seed(1_000_033, draw))
        x = augment(x, aug_generator, size=model_size, **aug_args)
    x = fit_size(x, model_size, 1.0 if aug_rrc_scale else test_crop)  # (a random-resized crop is the model's size)
    return normalize(x, mean_on_device, std_on_device), y


# model
iter_num = 0
best_val_acc = 0.0
checkpoint_val_loss = math.inf  # the val loss of the checkpoint in out_dir, which a diverged run must not replace
if checkpoint:
    iter_num, best_val_acc, checkpoint_val_loss = checkpoint['iter_num'], checkpoint['best_val_acc'], checkpoint['val_loss']
    if iter_num >= max_iters:
        die(f"{ckpt_path} is at iter {iter_num}, already at max_iters={max_iters}; raise max_iters to train on", 2)
    changes = safety.resume_changes(checkpoint, config, world_size, train_defaults(), len(train_x))
    if changes and master:
        print(f"note: resuming with changes: {', '.join(changes)}")
model = ViT(ViTConfig(**model_args))
if checkpoint:
    safety.load_model_state(model, checkpoint['model'], ckpt_path)
elif source:
    safety.load_model_state(model, fit_to(source, model, classes), init_from)
    del source  # free the memory
model.to(device)
raw_model = model  # the plain module: what gets saved, whatever wraps it for speed or DDP

if linear_probe:  # the pretrained features stay as they are; only the new head learns
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith('head.')
optimizers = model.configure_optimizers(optimizer, learning_rate, muon_lr, weight_decay, (beta1, beta2), muon_momentum,
                                        device_type, dtype, layer_decay)
params = [p for opt in optimizers for group in opt.param_groups for p in group['params']]
# fp16 gradients underflow without loss scaling; for other dtypes the scaler does nothing
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
if checkpoint:
    safety.load_optimizer_states(optimizers, checkpoint['optimizer'], ckpt_path)
    scaler.load_state_dict(checkpoint['scaler'])
    if len(checkpoint['rng']) == world_size:
        set_rng_state(checkpoint['rng'][rank])
    del checkpoint  # free the memory

ctx = autocast(device_type, dtype)
compile_note = "off"
if compile:
    model, compile_note = try_compile(model, ctx, *get_batch(iter_num, 0))
eval_model = model  # evaluation skips the DDP wrapper: it needs no gradient sync
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

flops_per_iter = 3 * raw_model.flops_per_image() * batch_size * gradient_accumulation_steps
peak = peak_flops(device_name(device), dtype)
if master:
    print(f"device {device} ({device_reason}) | dtype {dtype} ({dtype_reason}) | compile {compile_note} | "
          f"attention: sdpa {sdpa_backend(device, dtype, n_embd // n_head)} kernel (fastest for {dtype}, "
          f"head_dim {n_embd // n_head} here)")
    print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {raw_model.flops_per_image() / 1e9:.3f} "
          f"GFLOPs per image forward | data: {dataset}, {len(train_x)} train / {len(test_x)} test images of "
          f"{'x'.join(map(str, train_x.shape[1:]))}, {len(classes)} classes ({'on the device' if placement == 'device' else 'streamed from ' + train.path}) | {world_size} process(es), "
          f"{global_batch} images per iteration | optimizer {optimizer}")


def lr_multiplier(it):
    # linear warmup, then cosine decay to min_lr at max_iters; every group's peak lr (AdamW's, Muon's) scales by it
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    floor = min_lr / learning_rate
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1 - floor)


@torch.no_grad()
def evaluate():
    """Loss and accuracy on the whole test split; each process takes a slice, the sums add up."""
    eval_model.eval()
    lo, hi = len(test_x) * rank // world_size, len(test_x) * (rank + 1) // world_size
    sums = torch.zeros(2, device=device)  # loss, correct
    for start in range(lo, hi, eval_batch_size):
        end = min(start + eval_batch_size, hi)
        x, y = match_channels(test_x[start:end].to(device), model_channels), test_y[start:end].to(device)
        with ctx:
            logits = predict(eval_model, x, mean_on_device, std_on_device, tta_shift, model_size, test_crop)
        sums[0] += F.cross_entropy(logits, y, reduction='sum')
        sums[1] += (logits.argmax(dim=1) == y).sum()
    if ddp:
        dist.all_reduce(sums)
    eval_model.train()
    loss, correct = sums.tolist()
    return loss / len(test_x), correct / len(test_x)


def save_checkpoint():
    rngs = [rng_state()]
    if ddp:
        rngs = [None] * world_size
        dist.all_gather_object(rngs, rng_state())
    if master:
        safety.save_checkpoint({
            'model': raw_model.state_dict(),
            'optimizer': [opt.state_dict() for opt in optimizers],
            'scaler': scaler.state_dict(),
            'model_args': asdict(raw_model.config),
            'iter_num': iter_num,
            'best_val_acc': best_val_acc,
            'val_loss': checkpoint_val_loss,
            'config': config,
            'classes': classes,
            'data_mean': data_mean,
            'data_std': data_std,
            'n_train': len(train_x),
            'picture_size': picture_size,
            'rng': rngs,
        }, ckpt_path)


def global_mean(losses):
    """The mean of a list of per-iteration losses (device tensors), over all processes: each saw its part of
    every batch. Reading it waits for the device."""
    mean = torch.stack(losses).mean()
    if ddp:
        dist.all_reduce(mean)
        mean /= world_size
    return mean.item()


def stop_if_diverged(loss, what, checkpoint_loss=None):
    advice = f"Lower learning_rate (now {learning_rate:g}){' or use dtype=float32' if dtype != 'float32' else ''}"
    safety.stop_if_diverged(loss, what, iter_num, ckpt_path, advice, checkpoint_loss)
    if scaler.is_enabled() and scaler.get_scale() < 1.0:
        die(f"GradScaler's scale fell to {scaler.get_scale():g} at iter {iter_num}: fp16 gradients overflow at "
            f"every step. Lower learning_rate or use dtype=bfloat16/float32. {ckpt_path} is left as it was.")


def log_metrics(**record):
    if master:
        safety.write_metrics(metrics_path, [record], 'a')


def duration(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def resume_command():
    args = shlex.join(a for a in sys.argv[1:] if not a.startswith('--init_from='))
    if not ddp:
        return f"python train.py {args} --init_from=resume"
    if int(os.environ['LOCAL_WORLD_SIZE']) == world_size:
        return f"torchrun --standalone --nproc_per_node={world_size} train.py {args} --init_from=resume"
    return f"the same torchrun command as this run's ({world_size} processes), with train.py {args} --init_from=resume"


def leave(code):
    if ddp:
        dist.barrier()  # leave together
        dist.destroy_process_group()
        # skip interpreter teardown: with gloo it can abort (std::terminate) in torch's C++
        # threads after all the work is done, and torchrun would report a failed run
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


if master:
    safety.restart_metrics(metrics_path, iter_num)
stop = safety.StopSignals(verbose=master, group=dist.new_group(backend='gloo') if ddp else None)

# training loop. Timing as in nanoGPT, with the clock stopped around evaluations: t0 restarts at every log
# line and after every evaluation; the first log interval (warm-up: allocators, a first compile) counts in
# no average
start_iter = iter_num
losses = []  # training losses since the last evaluation, unread tensors: reading one waits for the device
logged_iter = iter_num  # the iteration of the last log line
interval_ms = []  # ms/iter of each log interval after the first
t0 = time.time()
while iter_num < max_iters:
    # the learning rate for this iteration
    for opt in optimizers:
        for group in opt.param_groups:
            group['lr'] = group['max_lr'] * lr_multiplier(iter_num)
    # forward, backward (gradients summed over the micro-steps), clip, step
    for micro_step in range(gradient_accumulation_steps):
        if ddp:
            # all-reduce the gradients once, on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        x, y = get_batch(iter_num, micro_step)
        with ctx:
            _, loss = model(x, y, label_smoothing)
        loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
    if grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)  # clip the true gradients, not the fp16 loss-scaled ones
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers:
        scaler.step(opt)  # skips the step if fp16 gradients overflowed
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    losses.append(loss.detach() * gradient_accumulation_steps)
    iter_num += 1
    last = iter_num == max_iters

    if iter_num % log_interval == 0 or last:
        mean_loss = global_mean(losses[logged_iter - iter_num:])
        synchronize(device_type)
        dt = time.time() - t0
        ms = 1000 * dt / (iter_num - logged_iter)
        warm = logged_iter > start_iter
        if warm:
            interval_ms.append(ms)
        stop_if_diverged(mean_loss, "the training loss")
        lr = learning_rate * lr_multiplier(iter_num - 1)
        if master:
            eta = f", eta {duration((max_iters - iter_num) * ms / 1000)}" if warm else " (warm-up)"
            print(f"iter {iter_num}/{max_iters}: loss {mean_loss:.4f}, lr {lr:.1e}, time {ms:.2f}ms{eta}"
                  + (f", mfu {100 * flops_per_iter / (ms / 1000) / peak:.1f}%" if peak else ""))
        log_metrics(iter=iter_num, loss=mean_loss, lr=lr, ms=ms)
        logged_iter, t0 = iter_num, time.time()

    if iter_num % eval_interval == 0 or last:
        val_loss, val_acc = evaluate()
        train_loss = global_mean(losses)
        losses = []
        stop_if_diverged(val_loss, "the val loss", checkpoint_val_loss)
        best_val_acc = max(best_val_acc, val_acc)
        if master:
            print(f"step {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val acc {100 * val_acc:.2f}%")
        log_metrics(iter=iter_num, train_loss=train_loss, val_loss=val_loss, val_acc=val_acc)
        if always_save_checkpoint or last:
            checkpoint_val_loss = val_loss
            save_checkpoint()
        if plot and master:
            from plot import plot_runs  # matplotlib loads only when it is needed
            try:
                plot_runs([out_dir], os.path.join(out_dir, 'curves.png'))
            except OSError as e:  # a figure is not worth a run: the checkpoint and metrics are written
                print(f"note: could not draw {os.path.join(out_dir, 'curves.png')} ({e.strerror or e}); training goes on")
        t0 = time.time()  # the clock leaves the evaluation out

    signum = stop.requested()
    if signum and not last:
        if losses[logged_iter - iter_num:]:  # a model that diverged since the last log line is never saved
            stop_if_diverged(global_mean(losses[logged_iter - iter_num:]), "the training loss")
        save_checkpoint()
        if master:
            print(f"stopped by {signal.Signals(signum).name} after iter {iter_num}; checkpoint in {ckpt_path}. "
                  f"Resume with: {resume_command()}")
        leave(0 if signum == signal.SIGINT else 128 + signum)

if master:
    mean_ms = sum(interval_ms) / len(interval_ms) if interval_ms else ms
    print(f"done: val acc {100 * val_acc:.2f}% (best during the run {100 * best_val_acc:.2f}%), val loss {val_loss:.4f} "
          f"| {iter_num - start_iter} iters in {duration(time.time() - _started)} wall, {mean_ms:.2f} ms/iter"
          + (f", mfu {100 * flops_per_iter / (mean_ms / 1000) / peak:.1f}%" if peak else "") + f" | checkpoint {ckpt_path}")
leave(0)
