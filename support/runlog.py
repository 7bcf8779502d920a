"""
What a run writes beside its checkpoint, so that a stranger can read, rerun and compare it:
    metrics.jsonl  one JSON record a line: each iteration once, across any number of resumes
    run.json       each start of the run: the command, the resolved config, the commit (and whether the tree had
                   changes), the versions of Python, torch and torchvision, the hardware
    log.txt        everything the run printed, every start appended
and, when the run asks for it (wandb_log), the same records in Weights & Biases.
"""
import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

from support.errors import die, import_or_die, note

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

class RunLog:

    def __init__(self, out_dir, config, iter_num, device, dtype):
        """The records of a run that starts at iter_num (a resume: what was logged after its checkpoint goes)."""
        self.metrics = os.path.join(out_dir, 'metrics.jsonl')
        kept = [r for r in read_metrics(self.metrics) if r['iter'] <= iter_num] \
            if iter_num and os.path.exists(self.metrics) else []
        write(self.metrics, ''.join(json.dumps(r) + '\n' for r in kept), 'w')
        path = os.path.join(out_dir, 'run.json')
        starts = read_json(path).get('starts', []) if iter_num else []
        self.wandb = import_or_die('wandb', "wandb_log=True") if config['wandb_log'] else None  # optional, as nanoGPT's
        # a resume carries on its wandb run: the id its first start chose
        wandb_id = next((s['wandb_id'] for s in starts if s.get('wandb_id')), os.urandom(4).hex()) \
            if self.wandb else None
        starts.append(dict(iter=iter_num, started=time.strftime('%Y-%m-%d %H:%M:%S %z'), cwd=os.getcwd(),
                           command=shlex.join(['python', os.path.relpath(sys.argv[0]), *sys.argv[1:]]), config=config,
                           commit=commit(), versions=versions(), hardware=hardware(device), dtype=dtype,
                           wandb_id=wandb_id))
        write(path, json.dumps(dict(starts=starts), indent=1), 'w')
        # line-buffered: a run killed at any moment has logged every line it printed
        self.log = open(os.path.join(out_dir, 'log.txt'), 'a' if iter_num else 'w', encoding='utf-8', errors='replace',
                        buffering=1)
        self.streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, self.log), Tee(sys.stderr, self.log)
        if self.wandb:
            self.wandb.init(project=config['wandb_project'], name=config['wandb_run_name'], config=config, id=wandb_id,
                            resume='allow')

    def write(self, record):
        write(self.metrics, json.dumps(record) + '\n', 'a')
        if self.wandb:
            self.wandb.log(record, step=record['iter'])

    def close(self):
        if self.wandb:
            self.wandb.finish()  # its last records, before the process leaves
        sys.stdout, sys.stderr = self.streams
        self.log.close()

class Tee:
    """A stream that writes to a terminal (or notebook) stream and to the run's log.txt."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.log.write(text)
        return self.stream.write(text)

    def flush(self):
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)

def write(path, text, mode):
    """Write text into path (mode 'w' or 'a'); a full disk is one line, not a traceback."""
    try:
        with open(path, mode, encoding='utf-8') as f:
            f.write(text)
    except OSError as e:
        die(f"could not write {path}: {e.strerror or e}; the last checkpoint is kept, resume when there is room")

def read_json(path):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

def read_metrics(path):
    """The records of a metrics.jsonl. A run killed while writing (a full disk, a power cut) can leave its last line
    half written: that line is dropped, with a note."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        die(f"could not read {path}: {e.strerror}")
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            whole = isinstance(record, dict) and isinstance(record.get('iter'), int)
        except json.JSONDecodeError:
            whole = False
        if whole:
            records.append(record)
        elif n < len(lines):
            die(f"{path}, line {n}: not a metrics record; the file was edited or is not a metrics.jsonl")
        else:
            note(f"{path} ends in a half-written line (the run was killed while writing it); dropped")
    return records

def commit():
    """The repository's commit, and whether its tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10)
        changes = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return dict(id=head.stdout.strip(), changed=bool(changes.stdout.strip())) if head.returncode == 0 else None

def versions():
    found = {'python': platform.python_version(), 'torch': torch.__version__}
    for package in ('torchvision', 'numpy', 'timm'):  # read from their metadata: importing torchvision costs a second
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found

def hardware(device):
    """The machine a run's speed depends on: the CPU (model, cores, the flags that decide native bf16, the kernels ATen
    picked for it, which ATEN_CPU_CAPABILITY can change, and oneDNN's and MKL's limits when set) and the GPU."""
    cpu = dict(model=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=torch.get_num_threads(),
               kernels=torch.backends.cpu.get_cpu_capability())  # AVX2, AVX512: a seed trains otherwise on each
    if limits := {k: os.environ[k] for k in ('ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS') if k in os.environ}:
        cpu['isa_limits'] = limits  # oneDNN's and MKL's kernels, chosen apart from ATen's
    with contextlib.suppress(OSError, StopIteration), open('/proc/cpuinfo') as f:  # Linux's, which names the model
        lines = f.read().splitlines()
        cpu['model'] = next(line.split(':', 1)[1].strip() for line in lines if line.startswith('model name'))
        flags = next(line.split(':', 1)[1].split() for line in lines if line.startswith('flags'))
        cpu['flags'] = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]
    if not device.startswith('cuda'):
        return dict(cpu=cpu)
    gpu = torch.cuda.get_device_properties(device)
    return dict(cpu=cpu, gpu=dict(name=gpu.name, capability=f"{gpu.major}.{gpu.minor}", count=torch.cuda.device_count(),
                                  memory_gib=round(gpu.total_memory / 2 ** 30, 1)))

def machine(run_json):
    """A run's machine in a few words, from its run.json (its last start): 'AMD EPYC (avx512_bf16), bfloat16'."""
    starts = read_json(run_json).get('starts')
    if not starts:
        return ''
    hardware, dtype = starts[-1].get('hardware', {}), starts[-1].get('dtype', '?')
    bf16 = [f for f in hardware.get('cpu', {}).get('flags', []) if 'bf16' in f]
    if 'gpu' in hardware:
        return f"{hardware['gpu']['name']}, {dtype}"
    return f"{hardware.get('cpu', {}).get('model', '?')}" + (f" ({', '.join(bf16)})" if bf16 else '') + f", {dtype}"

def duration(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
