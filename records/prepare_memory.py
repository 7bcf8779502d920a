"""
What preparing a dataset costs in memory as the dataset grows: a short train.py run (2 steps) that prepares a folder of
pictures first (its evaluation in batches of the same size for every count), for each count of pictures, its peak anonymous memory (RssAnon: what the process itself holds, not the
file pages the kernel caches) and peak resident memory (VmHWM), and the same for its process tree (the decoding
workers included, pages they share counted once), beside an idle process that imports torch.
$ python records/prepare_memory.py                      # 2,000 and 20,000 pictures of 128 x 128
$ python records/prepare_memory.py --counts=1000,100000 --side=64
"""
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

# -----------------------------------------------------------------------------
counts = '2000,20000'  # training pictures of each run, in 10 classes; a tenth as many test pictures
side = 128
eval_batch_size = 100  # the same for every count: an evaluation's batch of large pictures costs its own memory
work_dir = 'prepare-memory'  # the synthetic folders (kept for the next run) and a cache made anew for each run
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
exec(open(os.path.join(REPO, 'configurator.py')).read())
# -----------------------------------------------------------------------------


def make_folder(n):
    """n PNG pictures of side x side (noise, a class's colour in a corner), written once."""
    from PIL import Image
    folder = os.path.join(work_dir, f"pictures-{n}-{side}")
    if os.path.exists(os.path.join(folder, 'complete')):
        return folder
    rng = np.random.default_rng(0)
    for split, count in (('train', n), ('test', n // 10)):
        for i in range(count):
            os.makedirs(os.path.join(folder, split, f'class{i % 10}'), exist_ok=True)
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            pixels[:side // 4, :side // 4] = (25 * (i % 10), 255 - 25 * (i % 10), 128)
            Image.fromarray(pixels).save(os.path.join(folder, split, f'class{i % 10}', f'{i:07d}.png'), compress_level=1)
    open(os.path.join(folder, 'complete'), 'w').close()
    return folder


def kib(pid, field):
    with open(f'/proc/{pid}/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def tree_anon_kib(pid):
    """Anonymous memory of a process and its children, pages shared by forked children counted once (Pss)."""
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            total = next(int(line.split()[1]) for line in f if line.startswith('Pss_Anon:'))
        for task in os.listdir(f'/proc/{pid}/task'):
            with open(f'/proc/{pid}/task/{task}/children') as f:
                total += sum(tree_anon_kib(int(child)) for child in f.read().split())
        return total
    except (OSError, StopIteration):
        return 0


def peaks(command, env):
    """(peak RssAnon, peak VmHWM, peak tree anonymous memory) of a command, in MiB, and its output."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    found = [0, 0, 0]

    def watch():
        while process.poll() is None:
            try:
                found[0] = max(found[0], kib(process.pid, 'RssAnon'))
                found[1] = max(found[1], kib(process.pid, 'VmHWM'))
            except (OSError, StopIteration):
                pass
            found[2] = max(found[2], tree_anon_kib(process.pid))
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    out = process.communicate()[0]
    watcher.join()
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{out[-2000:]}")
    return [v / 1024 for v in found], out


cache = os.path.abspath(os.path.join(work_dir, 'cache'))
env = dict(os.environ, XDG_CACHE_HOME=cache)
(idle, _, _), _ = peaks([sys.executable, '-c', 'import torch, numpy, PIL.Image, time; time.sleep(2)'], env)
print(f"an idle process that imports torch: {idle:.0f} MiB RssAnon")
print("| pictures | prepared | peak RssAnon | peak VmHWM | peak tree anonymous |\n|---|---|---|---|---|")
for n in map(int, counts.split(',')):
    folder = make_folder(n)
    shutil.rmtree(cache, ignore_errors=True)
    run = os.path.abspath(os.path.join(work_dir, 'run'))
    shutil.rmtree(run, ignore_errors=True)
    (anon, hwm, tree), out = peaks([sys.executable, 'train.py', '--dataset=folder', f'--data_dir={os.path.abspath(folder)}',
                                    '--n_layer=1', '--n_head=2', '--n_embd=32', f'--patch_size={side // 8}',
                                    '--max_iters=2', '--eval_interval=2', '--warmup_iters=0', '--batch_size=32',
                                    f'--eval_batch_size={eval_batch_size}', '--device=cpu',
                                    '--compile=False', '--plot=False', f'--out_dir={run}'], env)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs) / 2 ** 20
    print(f"| {n} + {n // 10} of {side}x{side} | {size:.0f} MiB | {anon:.0f} MiB | {hwm:.0f} MiB | {tree:.0f} MiB |",
          flush=True)
