"""
The hardware a run uses, each choice made with its reason said out loud; and what the processes of a run share: the
random state (dropout draws) a checkpoint carries, and means over all of them.
"""
import importlib.util
import sys
from contextlib import nullcontext

import torch

from support.errors import die, first_line

def pick_device(requested, local_rank=None):
    """(device, reason); the GPU it names (under torchrun: GPU local_rank, its index on the node) becomes current."""
    if requested == 'auto':
        if torch.cuda.is_available():
            device, reason = 'cuda', f"found {torch.cuda.get_device_name()}"
        elif torch.backends.mps.is_available() and local_rank is None:  # MPS is one device: no DDP
            device, reason = 'mps', "found Apple MPS"
        else:
            device, reason = 'cpu', "no CUDA or MPS device found"
    else:
        device, reason = requested, "as requested"
        kind, _, index = requested.partition(':')
        count = {'cpu': 1, 'cuda': torch.cuda.device_count(), 'mps': int(torch.backends.mps.is_available())}
        if kind not in count:
            die(f"device={requested!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", 2)
        if not count[kind] or index and (not index.isdigit() or int(index) >= count[kind]):
            die(f"device={requested!r}, but this PyTorch sees {count[kind]} {kind} device(s) on this machine", 2)
    if device.startswith('cuda') and (device == 'cuda' or local_rank is not None):
        device = f'cuda:{local_rank or 0}'  # under torchrun, process N of a node takes its GPU N
    if device.startswith('cuda'):
        torch.cuda.set_device(device)  # so that every "current GPU" query means this one
    return device, reason

def native_dtypes(device_type, capability=None, native_cpu_bf16=None):
    """[(dtype, reason)] this device runs well, the one dtype='auto' picks first (bench.py times them all)."""
    if device_type == 'cuda':
        major, minor = capability or torch.cuda.get_device_capability()
        # decide by compute capability, not torch.cuda.is_bf16_supported(): that also counts
        # emulated bf16, which is slow on a T4 and breaks torch.compile there
        if major >= 8:
            return [('bfloat16', f"sm{major}{minor} has bf16 tensor cores"), ('float16', "fp16 tensor cores"),
                    ('float32', "TF32 tensor cores")]
        if major >= 7:
            return [('float16', f"sm{major}{minor} has fp16 tensor cores but no native bf16 (GradScaler on)"),
                    ('float32', "no tensor cores for float32")]
        return [('float32', f"sm{major}{minor} has no tensor cores")]
    if device_type == 'cpu':
        if native_cpu_bf16 is None:  # elsewhere than AVX-512 BF16 (Zen 4, Cooper Lake+) or AMX, bf16 is emulated, slow
            native_cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        if native_cpu_bf16:
            return [('bfloat16', "this CPU has native bf16 (AVX-512 BF16 or AMX)"), ('float32', "exact")]
        return [('float32', "this CPU has no native bf16")]
    return [('float32', f"{device_type}: float32 is the safe choice"), ('float16', "half-precision ALUs")]

def pick_dtype(requested, device_type, capability=None, native_cpu_bf16=None):
    """(dtype name, reason): the requested one, or for 'auto' the first of native_dtypes."""
    if requested not in ('auto', 'float32', 'bfloat16', 'float16'):
        die(f"dtype={requested!r}: use 'auto', 'float32', 'bfloat16' or 'float16'", 2)
    if requested == 'float16' and device_type == 'cpu':  # the T4's precision path, runnable where the tests run
        return requested, "as requested; slow on a CPU, which has no fp16 arithmetic: for testing a GPU's path"
    if requested != 'auto':
        return requested, "as requested"
    return native_dtypes(device_type, capability, native_cpu_bf16)[0]

def autocast(device_type, dtype):
    # float32 never enters torch.autocast: older torch (2.3) refuses 'mps' there, even disabled
    return nullcontext() if dtype == 'float32' else torch.autocast(device_type, getattr(torch, dtype))

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
        if importlib.util.find_spec('triton') is None:
            return "Triton is not installed"
    return None

# on a 2-core CPU (AVX-512 BF16 EPYC, 2026-12-06) compiling took 21-30 s (4-5 s from inductor's cache) and the compiled
# step was 1-6% faster (bench.py: the speedrun's and cifar10_cpu.py's models): it pays from about this many iterations
CPU_COMPILE_FROM = 10_000

def try_compile(model, compile, ctx, x, y, iterations):
    """(torch.compile(model), 'on') when compile asks for it and it pays (on a CPU: a run of CPU_COMPILE_FROM
    iterations or more), else (model, 'off (why)'). It compiles now, on one forward and backward of (x, y), their
    gradients and dropout draws thrown away: a compiler that fails says so before training starts, not midway."""
    if not compile:
        return model, 'off'
    blocker = compile_blocker(x.device.type) or (
        f"on a CPU compiling pays from about {CPU_COMPILE_FROM} iterations (bench.py); this run has {iterations}"
        if x.device.type == 'cpu' and iterations < CPU_COMPILE_FROM else None)
    if blocker:
        return model, f"off ({blocker})"
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == 'cuda' else []):
            fast = torch.compile(model)
            with ctx:
                _, loss = fast(x, y)
            loss.backward()
        return fast, "on"
    except Exception as e:
        return model, f"off (torch.compile failed: {first_line(e)})"
    finally:
        model.zero_grad(set_to_none=True)

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

def peak_flops(device, dtype):
    """The GPU's peak FLOP/s for dtype, or None when we do not know it (then MFU is not shown)."""
    name = torch.cuda.get_device_name(device) if device.startswith('cuda') else device
    return next((peaks.get(dtype) for fragment, peaks in PEAK_FLOPS if fragment in name), None)

def fits_on_device(nbytes, device, data_placement):
    """Whether a training split of nbytes goes to the device whole ('device'), or each batch is gathered from its
    memory map ('stream'). 'auto': whole on a GPU when it takes at most a quarter of its memory; on a CPU, streamed,
    no slower: the operating system keeps what fits of the file in memory, shared by every process that maps it."""
    if data_placement != 'auto':
        return data_placement == 'device'
    memory = (torch.cuda.get_device_properties(device).total_memory if device.startswith('cuda') else
              torch.mps.recommended_max_memory() if device.startswith('mps') else 0)
    return nbytes <= memory / 4

def synchronize(device_type):
    getattr(torch, device_type).synchronize()  # torch.cpu's does nothing

def global_mean(values, ddp):
    """The mean of a list of device scalars (reading it waits for the device) over all processes, each a part."""
    mean = torch.stack(values).mean()
    if ddp:
        torch.distributed.all_reduce(mean)
        mean /= torch.distributed.get_world_size()
    return mean.item()

def rng_states(world_size):
    """Every process's random state (dropout draws: the CPU's, and the current GPU's), gathered on each."""
    state = {'cpu': torch.get_rng_state()} | ({'cuda': torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})
    states = [state] * world_size
    if world_size > 1:
        torch.distributed.all_gather_object(states, state)
    return states

def set_rng_state(state):
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
