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

from common import (autocast, check_config, device_name, die, forward_backward, load_checkpoint, load_model_state,
                    load_optimizer_states, lock_out_dir, model_config, optimizer_step, peak_flops, pick_device,
                    pick_dtype, read_metrics, rng_state, save_checkpoint_file, sdpa_backend, set_rng_state,
                    synchronize, try_compile, write_metrics)
from data import augment, augmentation, channel_stats, get_dataset, load_split, normalize, predict
from model import ViT

# -----------------------------------------------------------------------------
# default config values: config/*.py files and --key=value flags override them
# I/O
out_dir = 'out-mnist'  # the run's folder: ckpt.pt, metrics.jsonl, curves.png
eval_interval = 250  # evaluate on the whole test split, then checkpoint, every this many iterations
log_interval = 10
always_save_checkpoint = True  # checkpoint at every evaluation; if False only at the end (and on Ctrl-C)
init_from = 'scratch'  # 'scratch' (an out_dir without a checkpoint) or 'resume' (from out_dir/ckpt.pt)
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
# model
n_layer = 4
n_head = 4
n_embd = 768
patch_size = 4
mlp_ratio = 4.0
dropout = 0.0
bias = True
pool = 'cls'  # 'cls' token or 'mean' of the patch tokens
pos_embd = 'learned'  # 'learned' or 'sincos'
pos_std = 0.02  # init std of a learned position embedding
qk_norm = False  # LayerNorm on queries and keys
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
label_smoothing = 0.0
# learning rate schedule: linear warmup, then cosine decay to min_lr at max_iters (every lr in proportion)
warmup_iters = 100
min_lr = 1e-5
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto', 'float32', 'bfloat16' or 'float16' (autocast; float16 adds a GradScaler)
compile = True  # torch.compile the model where it can work
seed = 1337
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in _config_keys}  # plain types only, saved in the checkpoint
# -----------------------------------------------------------------------------

check_config(config)
# the model's own values fail here, not after minutes of downloading or decoding; the data's shape joins them once loaded
model_config(config, img_size=max(patch_size, 1), in_chans=1, n_classes=1)
data_entry = get_dataset(dataset)
if aug_flip and data_entry.digits:
    die(f"aug_flip=True on {dataset}: a mirrored digit is not the same digit (use aug_translate, aug_rotate)", 2)

# processes: torchrun sets RANK for each one it starts; a plain `python train.py` is one process
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
else:
    rank, local_rank, world_size = 0, 0, 1
master = rank == 0  # logs, plots and checkpoints come from this process alone
device, device_reason = pick_device(device)
device_type = device.split(':')[0]
if device_type == 'cuda':
    torch.cuda.set_device(device)  # so that every "current GPU" query means this one
dtype, dtype_reason = pick_dtype(dtype, device_type)
torch.manual_seed(seed + rank)
torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them

# the run's folder: one run at a time, and never a finished or interrupted run overwritten unasked
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
metrics_path = os.path.join(out_dir, 'metrics.jsonl')
if master:
    try:
        os.makedirs(out_dir, exist_ok=True)
        out_dir_lock = lock_out_dir(out_dir)  # held until the process ends
    except OSError as e:
        die(f"out_dir={out_dir!r} is not writable: {e.strerror}")
    if init_from == 'scratch' and os.path.exists(ckpt_path):
        die(f"{ckpt_path} already holds a run; carry it on with --init_from=resume, or to start over delete "
            f"{out_dir} (or choose another --out_dir)", 2)

# data: the whole dataset lives on the device as uint8; batches are cut, augmented and normalized there
if ddp and not master:
    dist.barrier()  # let rank 0 download (or decode and cache) first
train_x, train_y, classes = load_split(dataset, data_dir, True, img_size, device)
test_x, test_y, _ = load_split(dataset, data_dir, False, img_size, device)
if ddp and master:
    dist.barrier()
data_mean, data_std = channel_stats(train_x)
mean_on_device, std_on_device = torch.tensor(data_mean, device=device), torch.tensor(data_std, device=device)
global_batch = batch_size * gradient_accumulation_steps * world_size
steps_per_epoch = len(train_x) // global_batch
if steps_per_epoch == 0:
    die(f"batch_size={batch_size} x gradient_accumulation_steps x processes = {global_batch} "
        f"is larger than the {len(train_x)} training images", 2)
aug = augmentation(config)
augmenting = any(aug.values())
aug_generator = torch.Generator(device=device)


@lru_cache(maxsize=1)
def epoch_order(epoch):
    # one shuffle per epoch, the same on every process (each takes its own slice of a batch),
    # and a function of (seed, epoch) alone, so a resumed run draws the batches it would have
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(len(train_x), generator=generator).to(device)


def get_batch(it, micro_step):
    epoch, step = divmod(it, steps_per_epoch)
    start = step * global_batch + (micro_step * world_size + rank) * batch_size
    idx = epoch_order(epoch)[start:start + batch_size]
    x = train_x[idx].float() / 255
    if augmenting:
        # seeded by the draw's place in the run, like the batch order: nothing to save for an exact resume
        draw = (it * gradient_accumulation_steps + micro_step) * world_size + rank
        aug_generator.manual_seed((seed * 1_000_033 + draw) % 2 ** 64)
        x = augment(x, aug_generator, **aug)
    return normalize(x, mean_on_device, std_on_device), train_y[idx]


# model
vit_config = model_config(config, img_size=train_x.shape[-1], in_chans=train_x.shape[1], n_classes=len(classes))
model_args = asdict(vit_config)
iter_num = 0
best_val_acc = 0.0
saved_val_loss = math.inf  # the val loss of the checkpoint in out_dir, which a diverged run must not replace
checkpoint = None
if init_from == 'resume':
    # on the CPU: RNG states must be CPU tensors, and the weights go to the device as they load
    checkpoint = load_checkpoint(ckpt_path, 'cpu', keys=('model', 'model_args', 'optimizer', 'scaler', 'iter_num',
                                                          'best_val_acc', 'val_loss', 'config', 'classes', 'rng'))
    saved, saved_args = checkpoint['config'], checkpoint['model_args']
    # dropout and pos_std (an init) may change: the trained weights mean the same with other values
    changed = [k for k in model_args if k not in ('dropout', 'pos_std') and saved_args.get(k) != model_args[k]]
    changed += [k for k in ('dataset', 'optimizer') if saved.get(k) != config[k]]
    if changed or checkpoint['classes'] != classes:
        then = [f'{k}={saved_args.get(k, saved.get(k))!r}' for k in changed] or [f"classes {checkpoint['classes']}"]
        now = [f'{k}={model_args.get(k, config.get(k))!r}' for k in changed] or [f"classes {classes}"]
        die(f"{ckpt_path} holds a run with {', '.join(then)} but this run asks for {', '.join(now)}; "
            f"resume with the run's own config", 2)
    iter_num, best_val_acc, saved_val_loss = checkpoint['iter_num'], checkpoint['best_val_acc'], checkpoint['val_loss']
    if iter_num >= max_iters:
        die(f"{ckpt_path} is at iter {iter_num}, already at max_iters={max_iters}; raise max_iters to train on", 2)
    notes = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in config.items() if k != 'init_from' and saved.get(k) != v]
    if len(checkpoint['rng']) != world_size:
        notes.append(f"processes {len(checkpoint['rng'])} -> {world_size} (dropout draws new numbers)")
    saved_batch = saved['batch_size'] * saved['gradient_accumulation_steps'] * len(checkpoint['rng'])
    if saved_batch != global_batch:
        notes.append(f"images per iteration {saved_batch} -> {global_batch}")
    if notes and master:
        print(f"note: resuming with changes: {', '.join(notes)}")
model = ViT(vit_config)
if checkpoint:
    load_model_state(model, checkpoint['model'], ckpt_path)
model.to(device)
raw_model = model  # the plain module: what gets saved, whatever wraps it for speed or DDP

optimizers = model.configure_optimizers(optimizer, learning_rate, muon_lr, weight_decay, (beta1, beta2), muon_momentum,
                                        device_type, dtype)
# fp16 gradients underflow without loss scaling; for other dtypes the scaler does nothing
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
if checkpoint:
    load_optimizer_states(optimizers, checkpoint['optimizer'], ckpt_path)
    scaler.load_state_dict(checkpoint['scaler'])
    if len(checkpoint['rng']) == world_size:
        set_rng_state(checkpoint['rng'][rank])
    del checkpoint  # free the memory

ctx = autocast(device_type, dtype)
compile_note = "off"
if compile:
    model, compile_note = try_compile(model, ctx, *get_batch(iter_num, 0), label_smoothing)
eval_model = model  # evaluation skips the DDP wrapper: it needs no gradient sync
if ddp:
    # no buffer changes in training (the sin-cos positions are constant): nothing to broadcast every step
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None, broadcast_buffers=False)

flops_per_iter = 3 * raw_model.flops_per_image() * batch_size * gradient_accumulation_steps
peak = peak_flops(device_name(device), dtype)
if master:
    print(f"device {device} ({device_reason}) | dtype {dtype} ({dtype_reason}) | compile {compile_note} | "
          f"attention: sdpa {sdpa_backend(device, dtype, n_embd // n_head)} kernel (fastest for {dtype}, "
          f"head_dim {n_embd // n_head} here)")
    print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {raw_model.flops_per_image() / 1e9:.3f} "
          f"GFLOPs per image forward | data: {dataset}, {len(train_x)} train / {len(test_x)} test images of "
          f"{'x'.join(map(str, train_x.shape[1:]))}, {len(classes)} classes | {world_size} process(es), "
          f"{global_batch} images per iteration | optimizer {optimizer}")


def mfu(seconds_per_iter):
    return f", mfu {100 * flops_per_iter / seconds_per_iter / peak:.1f}%" if peak else ""


def get_lr(it):
    # linear warmup, then cosine decay from learning_rate to min_lr at max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def train_step(it):
    """One optimizer step; returns the mean loss as a tensor (reading it would wait for the device)."""
    lr_scale = get_lr(it) / learning_rate
    for opt in optimizers:
        for group in opt.param_groups:
            group['lr'] = group['max_lr'] * lr_scale  # Muon's lr follows the same schedule
    loss = 0.0
    for micro_step in range(gradient_accumulation_steps):
        if ddp:
            # all-reduce the gradients once, on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        x, y = get_batch(it, micro_step)
        loss += forward_backward(model, x, y, ctx, scaler, label_smoothing, gradient_accumulation_steps)
    optimizer_step(optimizers, scaler, grad_clip)
    return loss


@torch.no_grad()
def evaluate():
    """Loss and accuracy on the whole test split; each process takes a slice, the sums add up."""
    eval_model.eval()
    lo, hi = len(test_x) * rank // world_size, len(test_x) * (rank + 1) // world_size
    sums = torch.zeros(2, device=device)  # loss, correct
    for start in range(lo, hi, eval_batch_size):
        end = min(start + eval_batch_size, hi)
        y = test_y[start:end]
        with ctx:
            logits = predict(eval_model, test_x[start:end], mean_on_device, std_on_device, tta_shift)
        sums[0] += F.cross_entropy(logits, y, reduction='sum')
        sums[1] += (logits.argmax(dim=1) == y).sum()
    if ddp:
        dist.all_reduce(sums)
    eval_model.train()
    loss, correct = sums.tolist()
    return loss / len(test_x), correct / len(test_x)


def save_checkpoint():
    rng = rng_state()
    rngs = [rng]
    if ddp:
        rngs = [None] * world_size
        dist.all_gather_object(rngs, rng)
    if master:
        save_checkpoint_file({
            'model': raw_model.state_dict(),
            'optimizer': [opt.state_dict() for opt in optimizers],
            'scaler': scaler.state_dict(),
            'model_args': asdict(raw_model.config),
            'iter_num': iter_num,
            'best_val_acc': best_val_acc,
            'val_loss': saved_val_loss,
            'config': config,
            'classes': classes,
            'data_mean': data_mean,
            'data_std': data_std,
            'rng': rngs,
        }, ckpt_path)


def stop_if_diverged(loss, what, limit=math.inf):
    # a diverged run stops here, before it can overwrite the last good checkpoint: a loss that overflowed,
    # or a val loss past limit, more than twice the checkpoint's plus 0.5 (a resume at learning_rate=100
    # took one from 0.5 to 880, finite): no honest stretch of training makes such a jump
    if not math.isfinite(loss) or loss > limit:
        die(f"{what} is {loss:.4g} at iter {iter_num}" + (f", the checkpoint's {saved_val_loss:.4g}" if limit < math.inf
            else "") + f": training diverged. Lower learning_rate (now {learning_rate:g})"
            f"{' or use dtype=float32' if dtype != 'float32' else ''}. {ckpt_path} is left as it was.")


def global_mean(loss_sum, count):
    """Mean of a loss summed over count steps, over all processes: each saw its part of every batch."""
    if ddp:
        loss_sum = loss_sum.clone()
        dist.all_reduce(loss_sum)
        loss_sum /= world_size
    return (loss_sum / count).item()


def log_metrics(**record):
    if master:
        write_metrics(metrics_path, [record], 'a')


def duration(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def draw_curves():
    from plot import plot_runs  # matplotlib loads only when it is needed
    plot_runs([out_dir], os.path.join(out_dir, 'curves.png'))


if master:
    # a resumed run logs again the steps after its checkpoint: drop what the interrupted run logged of them
    kept = [r for r in read_metrics(metrics_path) if r['iter'] <= iter_num] if iter_num and os.path.exists(metrics_path) else []
    write_metrics(metrics_path, kept, 'w')

# Ctrl-C and SIGTERM (Colab's stop button, a cluster's preemption) finish the current
# iteration, checkpoint and exit; a second Ctrl-C stops at once
stop_signal, stop_time = 0, 0.0


def request_stop(signum, frame):
    global stop_signal, stop_time
    if not stop_signal:
        stop_signal, stop_time = signum, time.time()
    elif time.time() - stop_time > 1.0:  # a person's second Ctrl-C; not the copy torchrun sends its workers at once
        signal.default_int_handler(signum, frame)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)


def should_stop():
    # asked at log steps, where the loss was just checked: processes agree on it there without a
    # collective every step, and a model that diverged since is never saved
    if not ddp:
        return stop_signal
    flag = torch.tensor([stop_signal], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


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


# training loop. Timing as in nanoGPT: t0 restarts at every log line, and after evaluations, which are
# not training time; the first log interval (warm-up: allocators, a first compile) counts in no average
start_iter = iter_num
loss_sum, loss_steps = 0.0, 0  # since the last log line
train_loss_sum, train_loss_steps = 0.0, 0  # since the last evaluation
timed_seconds, timed_iters = 0.0, 0
t0, t0_iter = time.time(), iter_num
while iter_num < max_iters:
    loss = train_step(iter_num)
    iter_num += 1
    loss_sum, loss_steps = loss_sum + loss, loss_steps + 1
    train_loss_sum, train_loss_steps = train_loss_sum + loss, train_loss_steps + 1
    last = iter_num == max_iters

    if iter_num % log_interval == 0 or last:
        mean_loss = global_mean(loss_sum, loss_steps)  # reading the loss waits for the device
        synchronize(device_type)
        dt = time.time() - t0
        ms = 1000 * dt / (iter_num - t0_iter)
        if t0_iter > start_iter:
            timed_seconds, timed_iters = timed_seconds + dt, timed_iters + iter_num - t0_iter
        stop_if_diverged(mean_loss, "the training loss")
        if scaler.is_enabled() and scaler.get_scale() < 1.0:
            die(f"GradScaler's scale fell to {scaler.get_scale():g} at iter {iter_num}: fp16 gradients overflow at "
                f"every step. Lower learning_rate or use dtype=bfloat16/float32. {ckpt_path} is left as it was.")
        lr = get_lr(iter_num - 1)
        if master:
            eta = f", eta {duration((max_iters - iter_num) * ms / 1000)}" if t0_iter > start_iter else " (warm-up)"
            print(f"iter {iter_num}/{max_iters}: loss {mean_loss:.4f}, lr {lr:.1e}, time {ms:.2f}ms{eta}{mfu(ms / 1000)}")
        log_metrics(iter=iter_num, loss=mean_loss, lr=lr, ms=ms)
        loss_sum, loss_steps = 0.0, 0
        t0, t0_iter = time.time(), iter_num
        signum = should_stop()
        if signum and not last:
            save_checkpoint()
            if master:
                print(f"stopped by {signal.Signals(signum).name} after iter {iter_num}; checkpoint in {ckpt_path}. "
                      f"Resume with: {resume_command()}")
            leave(0 if signum == signal.SIGINT else 128 + signum)

    if iter_num % eval_interval == 0 or last:
        val_loss, val_acc = evaluate()
        mean_train_loss = global_mean(train_loss_sum, train_loss_steps)
        stop_if_diverged(val_loss, "the val loss", limit=2 * saved_val_loss + 0.5)
        best_val_acc = max(best_val_acc, val_acc)
        if master:
            print(f"step {iter_num}: train loss {mean_train_loss:.4f}, val loss {val_loss:.4f}, val acc {100 * val_acc:.2f}%")
        log_metrics(iter=iter_num, train_loss=mean_train_loss, val_loss=val_loss, val_acc=val_acc)
        train_loss_sum, train_loss_steps = 0.0, 0
        if always_save_checkpoint or last:
            saved_val_loss = val_loss
            save_checkpoint()
        if plot and master:
            draw_curves()
        t0, t0_iter = time.time(), iter_num

if master:
    mean_ms = 1000 * timed_seconds / timed_iters if timed_iters else ms
    print(f"done: val acc {100 * val_acc:.2f}% (best during the run {100 * best_val_acc:.2f}%), val loss {val_loss:.4f} "
          f"| {iter_num - start_iter} iters in {duration(time.time() - _started)} wall, {mean_ms:.2f} ms/iter"
          f"{mfu(mean_ms / 1000)} | checkpoint {ckpt_path}")
leave(0)
