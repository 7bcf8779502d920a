"""
The machinery train.py, bench.py and sample.py share, apart from the model and the data: the
device, dtype and compile mode (each chosen with its reason said out loud), peak FLOP/s for MFU,
the training step itself, and the run's files (checkpoints, metrics, the out_dir lock).
"""
import json
import os
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import torch
from torch.nn import functional as F

from model import ViTConfig


def die(message, code=1):
    """Stop with one line on stderr: bad input deserves a sentence, not a traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)

# -----------------------------------------------------------------------------
# device, dtype, compile


def pick_device(requested):
    if requested != 'auto':
        kind = requested.split(':')[0]
        if kind == 'cuda' and not torch.cuda.is_available():
            die(f"device={requested!r} but torch.cuda.is_available() is False (CPU-only PyTorch or no GPU)", 2)
        index = requested.partition(':')[2] or '0'
        if kind == 'cuda' and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            die(f"device={requested!r}, but the CUDA devices here are cuda:0 to cuda:{torch.cuda.device_count() - 1}", 2)
        if kind == 'mps' and not torch.backends.mps.is_available():
            die(f"device={requested!r} but MPS is not available on this machine", 2)
        if kind not in ('cuda', 'mps', 'cpu'):
            die(f"device={requested!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", 2)
        return requested, "as requested"
    if torch.cuda.is_available():
        return 'cuda', f"found {torch.cuda.get_device_name()}"
    if torch.backends.mps.is_available():
        return 'mps', "found Apple MPS"
    return 'cpu', "no CUDA or MPS device found"


def cpu_has_native_bf16():
    # AVX-512 BF16 (Zen 4, Cooper Lake+) or AMX (Sapphire Rapids+) run bf16 matmuls natively;
    # elsewhere bf16 is emulated and slower than fp32
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def pick_dtype(requested, device_type, capability=None, native_cpu_bf16=None):
    """(dtype name, reason). capability and native_cpu_bf16 are looked up when not given."""
    if requested not in ('auto', 'float32', 'bfloat16', 'float16'):
        die(f"dtype={requested!r}: use 'auto', 'float32', 'bfloat16' or 'float16'", 2)
    if requested == 'float16' and device_type == 'cpu':
        die("dtype='float16' is for GPUs; on CPU use 'bfloat16' or 'float32'", 2)
    if requested != 'auto':
        return requested, "as requested"
    if device_type == 'cuda':
        major, minor = capability or torch.cuda.get_device_capability()
        # decide by compute capability, not torch.cuda.is_bf16_supported(): that also counts
        # emulated bf16, which is slow on a T4 and breaks torch.compile there
        if major >= 8:
            return 'bfloat16', f"sm{major}{minor} has bf16 tensor cores"
        if major >= 7:
            return 'float16', f"sm{major}{minor} has fp16 tensor cores but no native bf16 (GradScaler on)"
        return 'float32', f"sm{major}{minor} has no tensor cores"
    if device_type == 'cpu':
        native = cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16
        if native:
            return 'bfloat16', "this CPU has native bf16 (AVX-512 BF16 or AMX)"
        return 'float32', "this CPU has no native bf16"
    return 'float32', f"{device_type}: float32 is the safe choice"


def autocast(device_type, dtype):
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def compile_blocker(device_type):
    """Why torch.compile cannot run here, or None when it should."""
    if sys.platform == 'win32':
        return "torch.compile's inductor does not support Windows well"
    if device_type == 'mps':
        return "torch.compile does not support MPS yet"
    if device_type == 'cuda':
        major, minor = torch.cuda.get_device_capability()
        if major < 7:
            return f"Triton needs compute capability >= 7.0, this GPU is sm{major}{minor}"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
    if device_type == 'cpu':
        # measured with bench.py on two 2-core CPUs (Zen 4, and an AVX2 EPYC): the compiled step was no
        # faster than eager (the matmuls are most of it), and compiling costs start-up
        return "on CPU the compiled step measured no faster than eager (bench.py) and compiling takes a while"
    return None


def sdpa_backend(device, dtype, head_dim):
    """The fastest kernel F.scaled_dot_product_attention has here for this dtype and head size,
    found by asking the dispatcher for each in turn on a tiny input."""
    import warnings
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.zeros(1, 1, 8, head_dim, device=device, dtype=getattr(torch, dtype))
    for backend, name in [(SDPBackend.FLASH_ATTENTION, 'flash'), (SDPBackend.EFFICIENT_ATTENTION, 'memory-efficient'),
                          (SDPBackend.CUDNN_ATTENTION, 'cudnn')]:
        try:
            with warnings.catch_warnings(), sdpa_kernel(backend):
                warnings.simplefilter('ignore')
                F.scaled_dot_product_attention(q, q, q)
            return name
        except RuntimeError:
            continue
    return 'math'

# dense tensor-core peak FLOP/s by GPU name, first match wins (so specific names come first).
# float32 runs as TF32 where the GPU has it (train.py allows TF32 matmuls).
PEAK_FLOPS = [
    ('L40S', {'bfloat16': 362e12, 'float16': 362e12, 'float32': 183e12}),
    ('L40', {'bfloat16': 181e12, 'float16': 181e12, 'float32': 90.5e12}),
    ('H100 PCIe', {'bfloat16': 756e12, 'float16': 756e12, 'float32': 378e12}),
    ('H100', {'bfloat16': 989e12, 'float16': 989e12, 'float32': 495e12}),
    ('H200', {'bfloat16': 989e12, 'float16': 989e12, 'float32': 495e12}),
    ('A100', {'bfloat16': 312e12, 'float16': 312e12, 'float32': 156e12}),
    ('A10G', {'bfloat16': 70e12, 'float16': 70e12, 'float32': 35e12}),
    ('L4', {'bfloat16': 121e12, 'float16': 121e12, 'float32': 60e12}),
    ('V100', {'float16': 125e12, 'float32': 15.7e12}),
    ('T4', {'float16': 65e12, 'float32': 8.1e12}),
    ('RTX 4090', {'bfloat16': 165e12, 'float16': 165e12, 'float32': 82.6e12}),
    ('RTX 4080', {'bfloat16': 97.5e12, 'float16': 97.5e12, 'float32': 48.7e12}),
    ('RTX 3090', {'bfloat16': 71e12, 'float16': 71e12, 'float32': 35.6e12}),
    ('RTX 3080', {'bfloat16': 59.5e12, 'float16': 59.5e12, 'float32': 29.8e12}),
]


def peak_flops(device_name, dtype):
    """The GPU's peak FLOP/s for dtype, or None when we do not know it (then MFU is n/a)."""
    for fragment, peaks in PEAK_FLOPS:
        if fragment in device_name:
            return peaks.get(dtype)
    return None


def device_name(device):
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(device)
    return device


def synchronize(device_type):
    if device_type == 'cuda':
        torch.cuda.synchronize()
    elif device_type == 'mps':
        torch.mps.synchronize()

# -----------------------------------------------------------------------------
# the training step: train.py runs it, bench.py times it


def forward_backward(model, x, y, ctx, scaler, label_smoothing, accumulation=1):
    """Forward under autocast, backward of the (scaled) loss; returns the loss as a tensor, unread,
    so that the host does not wait for the device."""
    with ctx:
        _, loss = model(x, y, label_smoothing)
    loss = loss / accumulation
    scaler.scale(loss).backward()
    return loss.detach()


def optimizer_step(optimizers, scaler, grad_clip):
    """Clip the gradients' global norm, step every optimizer, clear the gradients."""
    if grad_clip > 0:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16 loss-scaled ones
        params = [p for optimizer in optimizers for group in optimizer.param_groups for p in group['params']]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)


def try_compile(model, ctx, x, y, label_smoothing):
    """(torch.compile(model), 'on'), or (model, 'off (why)') where compiling cannot or did not work. It
    compiles now, on one forward and backward of the batch (x, y) whose gradients and dropout draws are
    then thrown away, so that a compiler that fails here says so before training starts, not in the middle."""
    blocker = compile_blocker(x.device.type)
    if blocker:
        return model, f"off ({blocker})"
    rng = rng_state()
    try:
        fast = torch.compile(model)
        forward_backward(fast, x, y, ctx, torch.amp.GradScaler(enabled=False), label_smoothing)
        return fast, "on"
    except Exception as e:
        return model, f"off (torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
    finally:
        model.zero_grad(set_to_none=True)
        set_rng_state(rng)


def rng_state():
    """This process's random state (dropout draws): the CPU's, and the current GPU's where there is one."""
    return {'cpu': torch.get_rng_state()} | ({'cuda': torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})


def set_rng_state(state):
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def model_config(config, **data_shape):
    """The ViTConfig a run's config describes, the data's shape (img_size, in_chans, n_classes) taken
    from the data; or one line saying what is impossible about it."""
    try:
        return ViTConfig(**{f.name: config[f.name] for f in fields(ViTConfig) if f.name not in data_shape}, **data_shape)
    except ValueError as e:
        die(f"bad model config: {e}", 2)


def check_config(c):
    """One line and exit 2 for a value of train.py's config that cannot work (the model's are ViTConfig's)."""
    for key, valid, rule in [
            ('max_iters', c['max_iters'] >= 1, 'at least 1'), ('batch_size', c['batch_size'] >= 1, 'at least 1'),
            ('eval_batch_size', c['eval_batch_size'] >= 1, 'at least 1'),
            ('log_interval', c['log_interval'] >= 1, 'at least 1'), ('eval_interval', c['eval_interval'] >= 1, 'at least 1'),
            ('gradient_accumulation_steps', c['gradient_accumulation_steps'] >= 1, 'at least 1'),
            ('learning_rate', c['learning_rate'] > 0, 'positive'), ('muon_lr', c['muon_lr'] > 0, 'positive'),
            ('min_lr', 0 <= c['min_lr'] <= c['learning_rate'], 'between 0 and learning_rate'),
            ('warmup_iters', c['warmup_iters'] >= 0, '0 or more'), ('weight_decay', c['weight_decay'] >= 0, '0 or more'),
            ('beta1', 0 <= c['beta1'] < 1, 'in [0, 1)'), ('beta2', 0 <= c['beta2'] < 1, 'in [0, 1)'),
            ('muon_momentum', 0 <= c['muon_momentum'] < 1, 'in [0, 1)'),
            ('grad_clip', c['grad_clip'] >= 0, '0 (off) or more'),
            ('label_smoothing', 0 <= c['label_smoothing'] < 1, 'in [0, 1)'),
            ('seed', 0 <= c['seed'] < 2 ** 63, 'in [0, 2**63)'), ('img_size', c['img_size'] >= 0, '0 (keep the size) or more'),
            ('aug_crop', c['aug_crop'] >= 0, '0 (off) or more'), ('aug_translate', c['aug_translate'] >= 0, '0 (off) or more'),
            ('aug_rotate', c['aug_rotate'] >= 0, '0 (off) or more'), ('aug_scale', 0 <= c['aug_scale'] < 1, 'in [0, 1)'),
            ('tta_shift', c['tta_shift'] >= 0, '0 (off) or more'),
            ('init_from', c['init_from'] in ('scratch', 'resume'), "'scratch' or 'resume'"),
            ('optimizer', c['optimizer'] in ('adamw', 'muon'), "'adamw' or 'muon'")]:
        if not valid:
            die(f"{key}={c[key]!r} must be {rule}", 2)


def train_defaults():
    """train.py's block of config defaults, as source to exec: bench.py runs it, so that a config file
    and its flags mean the same to both, and a new knob needs no second default."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')) as f:
        source = f.read()
    start = source.index('# default config values')
    return source[start:source.index('exec(open(', start)]

# -----------------------------------------------------------------------------
# the run's files: checkpoints, metrics.jsonl, the out_dir lock


def load_checkpoint(path, device, keys=('model', 'model_args')):
    """The checkpoint dict at path, holding at least keys, or one line saying why there is none to use."""
    if not os.path.isfile(path):
        die(f"no checkpoint at {path} (train one first, or point out_dir at the run's folder)")
    try:
        # weights_only: a checkpoint is tensors and plain types, nothing that runs code on load
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        die(f"{path} is not a readable checkpoint (truncated or corrupt?): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"[:300])
    if not isinstance(checkpoint, dict) or not {'model', 'model_args'} <= checkpoint.keys():
        die(f"{path} is not a nanoViT checkpoint (no 'model' and 'model_args' in it)")
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        die(f"{path} lacks {', '.join(missing)}: saved by another version of nanoViT, or edited")
    return checkpoint


def load_model_state(model, state_dict, path):
    """Load weights saved by train.py, naming every key that does not fit."""
    # a compiled model's state_dict has its keys under _orig_mod.
    state_dict = {k.removeprefix('_orig_mod.'): v for k, v in state_dict.items()}
    own = model.state_dict()
    problems = [f"missing {k}" for k in own.keys() - state_dict.keys()]
    problems += [f"unexpected {k}" for k in state_dict.keys() - own.keys()]
    problems += [f"{k} is {tuple(state_dict[k].shape)} in the checkpoint, {tuple(own[k].shape)} here"
                 for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape]
    if problems:
        die(f"{path} does not fit this model: {'; '.join(sorted(problems)[:6])}"
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))
    model.load_state_dict(state_dict)


def load_optimizer_states(optimizers, states, path):
    """Load the optimizers' saved moments, after checking that every saved tensor has its parameter's shape
    (a fused kernel given a wrong shape crashes the process instead of raising). The hyperparameters (lr,
    betas, weight decay) stay this run's: a resume may change them."""
    if not isinstance(states, list) or len(states) != len(optimizers):
        die(f"{path} holds the state of {len(states) if isinstance(states, list) else 'an unknown number of'} "
            f"optimizer(s), this run has {len(optimizers)}")
    for optimizer, state in zip(optimizers, states):
        try:
            saved = [i for group in state['param_groups'] for i in group['params']]
            params = [p for group in optimizer.param_groups for p in group['params']]
            fits = len(saved) == len(params) and all(
                not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape
                for i, p in zip(saved, params) for v in state['state'].get(i, {}).values())
        except (KeyError, TypeError, AttributeError):
            fits = False
        if not fits:
            die(f"{path}: the saved {type(optimizer).__name__} state does not fit this model's parameters")
        settings = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)


def save_checkpoint_file(checkpoint, path):
    """Write path so that a kill at any instant leaves the old file or the new one, never half of one;
    if the disk refuses (full, gone), say so in one line, leaving the old file and no temporary one."""
    tmp_path = path + '.tmp'
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)  # atomic on POSIX and Windows
    except OSError as e:
        if os.path.lexists(tmp_path):
            os.remove(tmp_path)
        kept = f"{path} is left as it was" if os.path.exists(path) else "no checkpoint was kept"
        die(f"could not write the checkpoint {tmp_path}: {e.strerror or e}; {kept}")


def read_metrics(path):
    """The records of a metrics.jsonl. A run killed while writing (a full disk, a power cut) can leave
    its last line half written: that line is dropped, with a note."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                die(f"{path}, line {n}: not a JSON record; the file was edited or is not a metrics.jsonl")
            print(f"note: {path} ends in a half-written line (the run was killed while writing it); dropped")
    return records


def write_metrics(path, records, mode):
    """Append records to metrics.jsonl (mode 'a'), or write it anew ('w'); a full disk is one line, not a traceback."""
    try:
        with open(path, mode) as f:
            f.writelines(json.dumps(r) + '\n' for r in records)
    except OSError as e:
        die(f"could not write {path}: {e.strerror or e}; the last checkpoint is kept, resume when there is room")


def lock_out_dir(out_dir):
    """Hold out_dir/lock for as long as this process lives, or stop if another run holds it. The operating
    system drops the lock when the process ends, however it ends, so a killed run never leaves it stuck."""
    f = open(os.path.join(out_dir, 'lock'), 'a+')
    try:
        if os.name == 'nt':
            import msvcrt
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        die(f"out_dir={out_dir!r} is in use by another run ({f.read().strip() or 'unknown process'}): "
            f"wait for it to finish, stop it, or choose another --out_dir", 2)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f  # the lock lasts while this file stays open
