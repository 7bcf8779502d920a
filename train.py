"""
Train a Vision Transformer. On one device (CUDA, MPS or CPU, picked for you):
$ python train.py config/mnist.py
Override any config key from the command line:
$ python train.py config/mnist.py --max_iters=2000 --batch_size=64 --dropout=0.1
Carry on after a crash, a disconnect or Ctrl-C:
$ python train.py config/mnist.py --init_from=resume
Several GPUs (or CPU processes) with DDP, on one node:
$ torchrun --standalone --nproc_per_node=4 train.py config/mnist.py
"""
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from functools import lru_cache

t_process = time.time()  # the summary reports wall time from here, start-up included

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from common import (augment, autocast, compile_blocker, device_name, die, load_checkpoint,  # noqa: E402
                    load_model_state, load_split, peak_flops, pick_device, pick_dtype, sdpa_backend,
                    synchronize)
from model import ViT, ViTConfig  # noqa: E402

# -----------------------------------------------------------------------------
# default config values: config/*.py files and --key=value flags override them
# I/O
out_dir = 'out-mnist'
eval_interval = 250  # evaluate on the whole test split, then checkpoint, every this many iterations
log_interval = 10
always_save_checkpoint = True  # checkpoint at every evaluation; if False only at the end (and on Ctrl-C)
init_from = 'scratch'  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
plot = True  # redraw images/<out_dir name>.png at every evaluation
# data
dataset = 'mnist'  # 'mnist' or 'fashion_mnist'
data_dir = 'data'  # holds MNIST/raw/*-ubyte in torchvision's layout; downloaded there when missing
batch_size = 32  # images per process per micro-step
gradient_accumulation_steps = 1
eval_batch_size = 500
aug_translate = 0.0  # random shift of up to this many pixels (0 = no augmentation)
aug_rotate = 0.0  # random rotation of up to this many degrees
aug_scale = 0.0  # random zoom by up to this fraction
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
# AdamW optimizer
learning_rate = 1e-3
max_iters = 1000
weight_decay = 0.05
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip gradients at this norm, or 0.0 for no clipping
label_smoothing = 0.0
# learning rate schedule: linear warmup, then cosine decay to min_lr at max_iters
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

for key in ('max_iters', 'batch_size', 'eval_batch_size', 'log_interval', 'eval_interval',
            'gradient_accumulation_steps'):
    if config[key] < 1:
        die(f"{key}={config[key]} must be at least 1", 2)
if init_from not in ('scratch', 'resume'):
    die(f"init_from={init_from!r}: use 'scratch' or 'resume'", 2)

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
dtype, dtype_reason = pick_dtype(dtype, device_type)
torch.manual_seed(seed + rank)
torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them

ckpt_path = os.path.join(out_dir, 'ckpt.pt')
metrics_path = os.path.join(out_dir, 'metrics.jsonl')
if master:
    try:
        # find out now, not at the first checkpoint, whether out_dir takes files
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f'.write-test-{os.getpid()}')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        die(f"out_dir={out_dir!r} is not writable: {e.strerror}")

# data: the whole dataset lives on the device as uint8; batches are cut and normalized there
if ddp and not master:
    dist.barrier()  # let rank 0 download first
train_x, train_y = load_split(dataset, data_dir, True, device)
test_x, test_y = load_split(dataset, data_dir, False, device)
if ddp and master:
    dist.barrier()
pixels = train_x.float().div_(255)
data_mean, data_std = pixels.mean().item(), pixels.std().item()
del pixels
global_batch = batch_size * gradient_accumulation_steps * world_size
steps_per_epoch = len(train_x) // global_batch
if steps_per_epoch == 0:
    die(f"batch_size={batch_size} x gradient_accumulation_steps x processes = {global_batch} "
        f"is larger than the {len(train_x)} training images", 2)
augmenting = aug_translate > 0 or aug_rotate > 0 or aug_scale > 0
aug_generator = torch.Generator(device=device)


@lru_cache(maxsize=1)
def epoch_order(epoch):
    # one shuffle per epoch, the same on every process (each takes its own slice of a batch),
    # and a function of (seed, epoch) alone, so a resumed run draws the batches it would have
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(len(train_x), generator=generator).to(device)


def normalize(images):
    return (images.float() / 255 - data_mean) / data_std


def get_batch(it, micro_step):
    epoch, step = divmod(it, steps_per_epoch)
    start = step * global_batch + (micro_step * world_size + rank) * batch_size
    idx = epoch_order(epoch)[start:start + batch_size]
    x = train_x[idx].float() / 255
    if augmenting:
        # seeded by the step, like the batch order: nothing to save for an exact resume
        aug_generator.manual_seed(hash((seed, rank, it, micro_step)))
        x = augment(x, aug_translate, aug_rotate, aug_scale, aug_generator)
    return (x - data_mean) / data_std, train_y[idx]


# model
model_args = dict(img_size=train_x.shape[-1], patch_size=patch_size, in_chans=train_x.shape[1],
                  n_classes=int(train_y.max()) + 1, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                  mlp_ratio=mlp_ratio, dropout=dropout, bias=bias, pool=pool, pos_embd=pos_embd, pos_std=pos_std,
                  qk_norm=qk_norm)
iter_num = 0
best_val_acc = 0.0
checkpoint = None
if init_from == 'resume':
    checkpoint = load_checkpoint(ckpt_path, device)
    saved_args = checkpoint['model_args']
    changed = [k for k in model_args if k != 'dropout' and saved_args.get(k) != model_args[k]]
    if changed:
        die(f"{ckpt_path} holds a model with {', '.join(f'{k}={saved_args.get(k)!r}' for k in changed)} but this "
            f"run asks for {', '.join(f'{k}={model_args[k]!r}' for k in changed)}; resume with the run's own config")
    iter_num, best_val_acc = checkpoint['iter_num'], checkpoint['best_val_acc']
    if iter_num >= max_iters:
        die(f"{ckpt_path} is at iter {iter_num}, already at max_iters={max_iters}; raise max_iters to train on")
try:
    model = ViT(ViTConfig(**model_args))
except ValueError as e:
    die(f"bad model config: {e}", 2)
if checkpoint:
    load_model_state(model, checkpoint['model'], ckpt_path)
model.to(device)
raw_model = model  # the plain module: what gets saved, whatever wraps it for speed or DDP

optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
# fp16 gradients underflow without loss scaling; for other dtypes the scaler does nothing
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
if checkpoint:
    optimizer.load_state_dict(checkpoint['optimizer'])
    scaler.load_state_dict(checkpoint['scaler'])
    rng = checkpoint['rng']
    if len(rng) == world_size:
        torch.set_rng_state(rng[rank]['cpu'])
        if device_type == 'cuda':
            torch.cuda.set_rng_state(rng[rank]['cuda'])
    elif master:
        print(f"note: {ckpt_path} was saved by {len(rng)} processes, this run has {world_size}: dropout draws new numbers")
    del checkpoint  # free the memory

compile_note = "off"
if compile:
    blocker = compile_blocker(device_type)
    if blocker:
        compile_note = f"off ({blocker})"
    else:
        compile_note = "on"
        model = torch.compile(model)
eval_model = model  # evaluation skips the DDP wrapper: it needs no gradient sync
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)
ctx = autocast(device_type, dtype)

flops_per_iter = 3 * raw_model.flops_per_image() * batch_size * gradient_accumulation_steps
peak = peak_flops(device_name(device), dtype)
if master:
    print(f"device {device} ({device_reason}) | dtype {dtype} ({dtype_reason}) | compile {compile_note} | "
          f"attention: sdpa {sdpa_backend(device, dtype, n_embd // n_head)} kernel (fastest for {dtype}, "
          f"head_dim {n_embd // n_head} here)")
    print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {raw_model.flops_per_image() / 1e9:.3f} "
          f"GFLOPs per image forward | data: {len(train_x)} train / {len(test_x)} test images | "
          f"{world_size} process(es), {global_batch} images per iteration")


def get_lr(it):
    # linear warmup, then cosine decay from learning_rate to min_lr at max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def train_step(it):
    """One optimizer step; returns the mean loss as a tensor (reading it would wait for the device)."""
    lr = get_lr(it)
    for group in optimizer.param_groups:
        group['lr'] = lr
    total = 0.0
    for micro_step in range(gradient_accumulation_steps):
        if ddp:
            # all-reduce the gradients once, on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        x, y = get_batch(it, micro_step)
        with ctx:
            _, loss = model(x, y, label_smoothing)
        loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
        total += loss.detach()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluate():
    """Loss and accuracy on the whole test split; each process takes a slice, the sums add up."""
    eval_model.eval()
    lo, hi = len(test_x) * rank // world_size, len(test_x) * (rank + 1) // world_size
    sums = torch.zeros(2, device=device)  # loss, correct
    for start in range(lo, hi, eval_batch_size):
        x, y = normalize(test_x[start:min(start + eval_batch_size, hi)]), test_y[start:min(start + eval_batch_size, hi)]
        with ctx:
            logits, _ = eval_model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction='sum')
        sums[1] += (logits.argmax(dim=1) == y).sum()
    if ddp:
        dist.all_reduce(sums)
    eval_model.train()
    loss, correct = sums.tolist()
    return loss / len(test_x), correct / len(test_x)


def save_checkpoint():
    """Write out_dir/ckpt.pt so that a kill at any instant leaves the old or the new file, never half of one."""
    rng = {'cpu': torch.get_rng_state()}
    if device_type == 'cuda':
        rng['cuda'] = torch.cuda.get_rng_state()
    rngs = [rng]
    if ddp:
        rngs = [None] * world_size
        dist.all_gather_object(rngs, rng)
    if not master:
        return
    checkpoint = {
        'model': raw_model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scaler': scaler.state_dict(),
        'model_args': asdict(raw_model.config),
        'iter_num': iter_num,
        'best_val_acc': best_val_acc,
        'config': config,
        'data_mean': data_mean,
        'data_std': data_std,
        'rng': rngs,
    }
    tmp_path = ckpt_path + '.tmp'
    with open(tmp_path, 'wb') as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, ckpt_path)  # atomic on POSIX and Windows


def global_mean(loss_sum, count):
    """Mean of a loss summed over count steps, over all processes: each saw its part of every batch."""
    if ddp:
        loss_sum = loss_sum.clone()
        dist.all_reduce(loss_sum)
        loss_sum /= world_size
    return (loss_sum / count).item()


def log_metrics(**record):
    if master:
        with open(metrics_path, 'a') as f:
            f.write(json.dumps(record) + '\n')


def check_finite(value, what):
    # a diverged run stops here, before it can overwrite the last good checkpoint
    if not math.isfinite(value):
        die(f"{what} is {value} at iter {iter_num}: training diverged. Lower learning_rate (now {learning_rate:g})"
            f"{' or use dtype=float32' if dtype != 'float32' else ''}. {ckpt_path} is left as it was.")


def duration(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def draw_curves():
    from plot import plot_runs  # matplotlib loads only when it is needed
    plot_runs([out_dir], os.path.join('images', os.path.basename(os.path.normpath(out_dir)) + '.png'))


if master:
    if iter_num > 0 and os.path.isfile(metrics_path):
        # drop what the interrupted run logged after its last checkpoint: those steps run again
        with open(metrics_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)['iter'] <= iter_num]
        with open(metrics_path, 'w') as f:
            f.writelines(kept)
    elif iter_num == 0:
        open(metrics_path, 'w').close()

# Ctrl-C and SIGTERM (Colab's stop button, a cluster's preemption) finish the current
# iteration, checkpoint and exit; a second Ctrl-C stops at once
stop_signal = 0


def request_stop(signum, frame):
    global stop_signal
    stop_signal = signum
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)


def leave(code):
    if ddp:
        dist.barrier()  # leave together
        dist.destroy_process_group()
        # skip interpreter teardown: with gloo it can abort (std::terminate) in torch's C++
        # threads after all the work is done, and torchrun would report a failed run
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def should_stop():
    if not ddp:
        return stop_signal
    if iter_num % log_interval != 0:
        return 0  # processes agree at log steps only: a collective every step would cost a sync
    flag = torch.tensor([stop_signal], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def end_lap():
    """Close the current timing lap; returns its ms/iter, or None when it timed no iteration."""
    global lap_start, lap_iters, timed_seconds, timed_iters
    synchronize(device_type)
    ms = None
    if lap_iters:
        elapsed = time.time() - lap_start
        timed_seconds, timed_iters = timed_seconds + elapsed, timed_iters + lap_iters
        ms = elapsed * 1000 / lap_iters
    lap_start, lap_iters = time.time(), 0
    return ms


# training loop
start_iter = iter_num
untimed_iters = 2  # the first steps compile and warm up allocators: no place in the timing
interval_loss, interval_iters = 0.0, 0  # since the last log line
train_loss, train_iters = 0.0, 0  # since the last evaluation
lap_start, lap_iters = time.time(), 0
timed_seconds, timed_iters = 0.0, 0
ms_per_iter = None
while iter_num < max_iters:
    if iter_num == start_iter and compile_note == "on":
        rng_state = torch.get_rng_state()
        try:
            loss = train_step(iter_num)
        except Exception as e:
            # compilation happens on the first call; where it breaks, say why and run eager
            compile_note = f"off (torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]})"
            if master:
                print(f"compile {compile_note}")
            optimizer.zero_grad(set_to_none=True)
            torch.set_rng_state(rng_state)
            model = eval_model = raw_model
            if ddp:
                model = DDP(raw_model, device_ids=[local_rank] if device_type == 'cuda' else None)
            loss = train_step(iter_num)
    else:
        loss = train_step(iter_num)
    iter_num += 1
    interval_loss, interval_iters = interval_loss + loss, interval_iters + 1
    train_loss, train_iters = train_loss + loss, train_iters + 1
    if iter_num - start_iter <= untimed_iters:
        synchronize(device_type)
        lap_start = time.time()
    else:
        lap_iters += 1

    last = iter_num == max_iters
    if iter_num % log_interval == 0 or last:
        mean_loss = global_mean(interval_loss, interval_iters)
        ms_per_iter = end_lap() or ms_per_iter
        check_finite(mean_loss, "the training loss")
        if scaler.is_enabled() and scaler.get_scale() < 1.0:
            die(f"GradScaler's scale fell to {scaler.get_scale():g} at iter {iter_num}: fp16 gradients overflow at "
                f"every step. Lower learning_rate or use dtype=bfloat16/float32. {ckpt_path} is left as it was.")
        if master:
            mean_ms = timed_seconds * 1000 / timed_iters if timed_iters else None
            timing = f"time {ms_per_iter:.2f}ms, eta {duration((max_iters - iter_num) * mean_ms / 1000)}" \
                if ms_per_iter and mean_ms else "time (warm-up)"
            mfu = f", mfu {100 * flops_per_iter / (ms_per_iter / 1000) / peak:.1f}%" if peak and ms_per_iter else ""
            print(f"iter {iter_num}/{max_iters}: loss {mean_loss:.4f}, lr {get_lr(iter_num - 1):.1e}, {timing}{mfu}")
        log_metrics(iter=iter_num, loss=mean_loss, lr=get_lr(iter_num - 1), ms=ms_per_iter)
        interval_loss, interval_iters = 0.0, 0

    if iter_num % eval_interval == 0 or last:
        end_lap()  # evaluation is not training time
        val_loss, val_acc = evaluate()
        mean_train_loss = global_mean(train_loss, train_iters)
        check_finite(val_loss, "the val loss")
        best_val_acc = max(best_val_acc, val_acc)
        if master:
            print(f"step {iter_num}: train loss {mean_train_loss:.4f}, val loss {val_loss:.4f}, val acc {100 * val_acc:.2f}%")
        log_metrics(iter=iter_num, train_loss=mean_train_loss, val_loss=val_loss, val_acc=val_acc)
        train_loss, train_iters = 0.0, 0
        if always_save_checkpoint or last:
            save_checkpoint()
        if plot and master:
            draw_curves()
        lap_start = time.time()

    signum = should_stop()
    if signum and not last:
        save_checkpoint()
        if master:
            args = ' '.join(a for a in sys.argv[1:] if not a.startswith('--init_from='))
            print(f"stopped by {signal.Signals(signum).name} after iter {iter_num}; checkpoint in {ckpt_path}. "
                  f"Resume with: python train.py {args} --init_from=resume")
        leave(0 if signum == signal.SIGINT else 128 + signum)

if master:
    mean_ms = timed_seconds * 1000 / timed_iters if timed_iters else float('nan')
    mfu = f", mfu {100 * flops_per_iter / (mean_ms / 1000) / peak:.1f}%" if peak and timed_iters else ""
    print(f"done: val acc {100 * val_acc:.2f}% (best during the run {100 * best_val_acc:.2f}%), val loss {val_loss:.4f} "
          f"| {iter_num - start_iter} iters in {duration(time.time() - t_process)} wall, {mean_ms:.2f} ms/iter{mfu} "
          f"| checkpoint {ckpt_path}")
leave(0)
