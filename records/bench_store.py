"""
The picture store at scale: make a synthetic folder of many pictures, then measure the decode into the
store (pictures a second, peak anonymous memory of the decoding processes, next to an idle process's),
how fast batches come out of the store, and train.py's step with the dataset streamed from the store
next to the same run with it whole in memory (ms/iter and anonymous memory, side by side).
$ python records/bench_store.py                          # 300,000 pictures of 32 x 32
$ python records/bench_store.py --n_pictures=20000 --side=64
Writes its folder and store under bench_dir (several GB at the default size), and the figures to bench_out.
"""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

# -----------------------------------------------------------------------------
bench_dir = 'bench-store'  # the synthetic folder (bench_dir/pictures) and its store (bench_dir/cache)
n_pictures = 300_000  # training pictures, in 10 classes; a tenth as many test pictures
side = 32
train_iters = 200  # for each of the two training runs (cifar10_cpu.py's model); 0: the decode alone
bench_out = 'bench_store.json'
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
exec(open(os.path.join(REPO, 'configurator.py')).read())
# -----------------------------------------------------------------------------
folder = os.path.join(bench_dir, 'pictures')
env = dict(os.environ, XDG_CACHE_HOME=os.path.abspath(os.path.join(bench_dir, 'cache')))


def make_folder():
    """n_pictures PNGs of side x side: noise with a class's colour in one corner (written once, then kept)."""
    from PIL import Image
    done = os.path.join(folder, 'complete')
    if os.path.exists(done):
        return
    rng = np.random.default_rng(0)
    t0 = time.time()
    for split, n in (('train', n_pictures), ('test', n_pictures // 10)):
        for c in range(10):
            os.makedirs(os.path.join(folder, split, f'class{c}'), exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            pixels[:side // 4, :side // 4] = (25 * (i % 10), 255 - 25 * (i % 10), 128)
            Image.fromarray(pixels).save(os.path.join(folder, split, f'class{i % 10}', f'{i:07d}.png'), compress_level=1)
    open(done, 'w').close()
    print(f"wrote {n_pictures + n_pictures // 10} pictures in {time.time() - t0:.0f}s")


def field_kib(path, name):
    with open(path) as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ':'))


def tree_pss_anon_kib(pid):
    """Anonymous memory of a process and its children in KiB, pages shared by forked children counted once."""
    total = 0
    try:
        total += field_kib(f'/proc/{pid}/smaps_rollup', 'Pss_Anon')
        for task in os.listdir(f'/proc/{pid}/task'):
            with open(f'/proc/{pid}/task/{task}/children') as f:
                total += sum(tree_pss_anon_kib(int(child)) for child in f.read().split())
    except (OSError, StopIteration):
        pass
    return total


def run_and_watch(command):
    """(seconds, peak RssAnon of the process in MiB, peak anonymous memory of its process tree in MiB, stdout)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    peaks = [0, 0]

    def watch():
        while process.poll() is None:
            try:
                peaks[0] = max(peaks[0], field_kib(f'/proc/{process.pid}/status', 'RssAnon'))
            except (OSError, StopIteration):
                pass
            peaks[1] = max(peaks[1], tree_pss_anon_kib(process.pid))
            time.sleep(0.05)
    watcher = threading.Thread(target=watch)
    t0 = time.time()
    watcher.start()
    out = process.communicate()[0]
    watcher.join()
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{out[-2000:]}")
    return time.time() - t0, peaks[0] / 1024, peaks[1] / 1024, out


make_folder()
results = {}
# an idle process that imports what train.py imports: the floor every figure below stands on
_, idle, _, _ = run_and_watch([sys.executable, '-c', 'import torch, numpy, PIL.Image, time; time.sleep(2)'])
results['idle_rss_anon_mib'] = idle
# the decode into the store, by train.py's own loader
build = ("import sys; sys.path.insert(0, '.'); from data import find_split; "
         f"s = find_split('folder', {os.path.abspath(folder)!r}, 'train', 0).load(); print('store', s.path, tuple(s.images.shape))")
seconds, peak, tree, out = run_and_watch([sys.executable, '-c', build])
store_path, shape = out.split('store ')[-1].split(' ', 1)
store_bytes = os.path.getsize(os.path.join(store_path, 'images.u8'))
results.update(decode_seconds=seconds, decode_rate=n_pictures / seconds, decode_peak_rss_anon_mib=peak,
               decode_peak_tree_anon_mib=tree, store_mib=store_bytes / 2 ** 20, store=store_path)
print(f"decode: {n_pictures} pictures in {seconds:.1f}s ({n_pictures / seconds:.0f} a second, the whole process with its "
      f"start-up and the files' scan), peak RssAnon {peak:.0f} MiB (an idle process: {idle:.0f} MiB), the decoding "
      f"processes together {tree:.0f} MiB, store {store_bytes / 2 ** 20:.0f} MiB")
if train_iters:
    # batches out of the store: random batches of 128, as train.py gathers them
    sys.path.insert(0, REPO)
    import torch  # noqa: E402
    images = torch.from_numpy(np.memmap(os.path.join(store_path, 'images.u8'), dtype=np.uint8, mode='c',
                                        shape=tuple(json.load(open(os.path.join(store_path, 'meta.json')))['shape'])))
    order = torch.randperm(len(images))
    t0 = time.time()
    for i in range(200):
        images[order[i * 128:(i + 1) * 128]].float()
    gather_ms = 1000 * (time.time() - t0) / 200
    results['gather_ms_per_batch_of_128'] = gather_ms
    print(f"store: a random batch of 128 in {gather_ms:.2f} ms ({128 / gather_ms * 1000:.0f} pictures a second)")
    # train.py's step, the dataset streamed from the store next to whole in memory, one after the other
    for placement in ('stream', 'device'):
        run = os.path.join(bench_dir, f'run-{placement}')
        command = [sys.executable, 'train.py', 'config/cifar10_cpu.py', '--dataset=folder',
                   f'--data_dir={os.path.abspath(folder)}', f'--max_iters={train_iters}', f'--eval_interval={train_iters}',
                   '--log_interval=50', '--tta_shift=0', '--eval_batch_size=1000', f'--data_placement={placement}',
                   f'--out_dir={os.path.abspath(run)}']
        if os.path.exists(os.path.join(run, 'ckpt.pt')):
            os.remove(os.path.join(run, 'ckpt.pt'))
        seconds, peak, _, out = run_and_watch(command)
        ms = float(out.split(' ms/iter')[0].rsplit(' ', 1)[1])
        results[f'train_{placement}'] = dict(ms_per_iter=ms, peak_rss_anon_mib=peak, seconds=seconds)
        print(f"train.py, {placement}: {ms:.1f} ms/iter, peak RssAnon {peak:.0f} MiB, {seconds:.0f}s in all")
    results['stream_over_device_ms'] = results['train_stream']['ms_per_iter'] / results['train_device']['ms_per_iter']
    print(f"streamed / in memory: {results['stream_over_device_ms']:.3f}x the time per step")
with open(bench_out, 'w') as f:
    json.dump(dict(n_pictures=n_pictures, side=side, **results), f, indent=2)
print(f"wrote {bench_out}")
