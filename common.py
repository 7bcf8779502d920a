"""
What train.py, bench.py and sample.py share: picking the device, dtype and compile mode (each
with the reason said out loud), peak FLOP/s for MFU, and the dataset held on the device.
"""
import math
import os
import sys
from contextlib import nullcontext

import torch
from torch.nn import functional as F


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
        # measured with bench.py on a 2-core Zen 4: the compiled step was no faster than eager
        # (the matmuls, at the CPU's ceiling either way, are most of it), and compiling costs start-up
        return "on CPU the compiled step measured no faster than eager (bench.py) and compiling takes a while"
    return None


# dense tensor-core peak FLOP/s by GPU name, first match wins (so specific names come first).
# float32 runs as TF32 where the GPU has it (train.py allows TF32 matmuls).
PEAK_FLOPS = [
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
# data: the whole dataset as uint8 tensors on the device, loaded once


DATASETS = ('mnist', 'fashion_mnist')


def load_split(dataset, data_dir, train, device):
    """One split on device, loaded once: images uint8 (N, 1, H, W) and labels int64 (N,)."""
    import torchvision
    if dataset not in DATASETS:
        die(f"unknown dataset={dataset!r}; choose from {', '.join(DATASETS)}", 2)
    cls = torchvision.datasets.MNIST if dataset == 'mnist' else torchvision.datasets.FashionMNIST
    raw = os.path.join(data_dir, cls.__name__, 'raw')
    split = 'train' if train else 'test'
    try:
        # download=True fetches the files once; it downloads nothing when they are there
        ds = cls(data_dir, train=train, download=True)
        images, labels = ds.data, ds.targets
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not os.path.isdir(raw) or not os.listdir(raw):
            die(f"{dataset} is not in {raw} and downloading it failed ({reason}); offline, point "
                f"--data_dir at a folder that holds {cls.__name__}/raw")
        die(f"could not load the {dataset} {split} split from {raw}: {reason} (delete the files to download them again)")
    if images.dim() != 3 or images.shape[0] != labels.shape[0] or images.dtype != torch.uint8:
        die(f"{dataset} {split} split in {raw}: images {tuple(images.shape)} {images.dtype} do not match "
            f"labels {tuple(labels.shape)}")
    return images.unsqueeze(1).to(device), labels.long().to(device)


def augment(x, translate, rotate, scale, generator):
    """A random affine map per image, for the whole batch at once on its device.
    x: float images in [0, 1], (B, C, H, W). translate in pixels, rotate in degrees,
    scale as a fraction (0.1 = zoom between 0.9x and 1.1x)."""
    B, _, H, W = x.shape
    u = torch.rand(B, 4, device=x.device, generator=generator) * 2 - 1  # uniform in [-1, 1)
    angle = u[:, 0] * math.radians(rotate)
    zoom = 1 + u[:, 1] * scale
    # affine_grid works in [-1, 1] coordinates, so one pixel is 2 / size
    shift_x, shift_y = u[:, 2] * translate * 2 / W, u[:, 3] * translate * 2 / H
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # zero padding is black, the background of MNIST digits
    return F.grid_sample(x, grid, align_corners=False)


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

# -----------------------------------------------------------------------------
# checkpoints


def load_checkpoint(path, device):
    """The checkpoint dict at path, or one line saying why there is none to use."""
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
