"""
The picture store: a split's decoded pictures as one uint8 array (N, C, H, W) in a file on disk, read
through a memory map (nanoGPT's train.bin, for pictures), beside its labels, class names, pixel statistics
and the key of the files it was made from. Made once, by one process of a node (a lock; the others wait,
then map it), in a folder of its own that is renamed into place when whole: a kill or a full disk mid-way
leaves nothing that looks like a store.
"""
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from errors import die

STORE_VERSION = 1


def cache_dir():
    # beside other programs' caches, never in data_dir, which may be read-only
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'nanovit')


@dataclass
class Store:
    path: str
    images: torch.Tensor  # uint8 (N, C, H, W), a view of the file: reading a batch reads those pictures alone
    labels: torch.Tensor  # int64 (N,)
    classes: list
    mean: list  # per channel, in [0, 1] units
    std: list
    note: str = ''  # what building it found worth saying of the files, e.g. the pictures it skipped


def open_store(path, key, classes):
    """The store at path when it is whole, of this version, made from the files key describes and holding what a
    split can be (uint8 pictures of 1 or 3 channels, one label in range each, every class present); else None."""
    try:
        with open(os.path.join(path, 'meta.json')) as f:
            meta = json.load(f)
        n, c, h, w = meta['shape']
        if meta['version'] != STORE_VERSION or meta['key'] != key or meta['classes'] != classes or c not in (1, 3):
            return None
        if os.path.getsize(os.path.join(path, 'images.u8')) != n * c * h * w:
            return None
        labels = torch.from_numpy(np.fromfile(os.path.join(path, 'labels.i64'), dtype=np.int64))
        if labels.shape != (n,) or n == 0 or not torch.equal(labels.unique(), torch.arange(len(classes))):
            return None
        # copy-on-write: torch wants a writable array, and nothing ever writes to it
        images = np.memmap(os.path.join(path, 'images.u8'), dtype=np.uint8, mode='c', shape=(n, c, h, w))
        return Store(path, torch.from_numpy(images), labels, classes, meta['mean'], meta['std'], meta['note'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_or_build(path, key, classes, build):
    """The store at path, or, when there is none that is whole and made from these files, the one build(tmp) writes
    into the folder tmp: build returns (shape, labels, note); the store's statistics are counted here."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.lock', 'a+') as lock:
        wait_for_lock(lock)  # one process of a node builds; the others wait here, then map its store
        store = open_store(path, key, classes)
        if store:
            if store.note:  # what the build said of the files (pictures skipped), said again at every start
                print(f"note: {store.note}")
            return store
        if os.path.exists(path):
            print(f"note: the store {path} is damaged, of another version or made from other files; building it again")
        tmp = f"{path}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            shape, labels, note = build(tmp)
            labels.numpy().tofile(os.path.join(tmp, 'labels.i64'))
            images = np.memmap(os.path.join(tmp, 'images.u8'), dtype=np.uint8, mode='r', shape=shape)
            mean, std = channel_stats(images)
            del images  # closed before the rename (Windows cannot rename a folder with a file mapped in it)
            with open(os.path.join(tmp, 'meta.json'), 'w') as f:
                json.dump(dict(version=STORE_VERSION, key=key, shape=list(shape), classes=classes, mean=mean, std=std,
                               note=note), f)
            for name in os.listdir(tmp):  # on disk before the rename says it is whole
                with open(os.path.join(tmp, name), 'rb+') as f:
                    os.fsync(f.fileno())
            if os.path.exists(path):
                shutil.rmtree(path)
            os.rename(tmp, path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"could not write the picture store {path}: {e.strerror or e}; nothing half-made is left, "
                f"the next start builds it again (free some space, or point XDG_CACHE_HOME elsewhere)")
        except KeyboardInterrupt:
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"stopped while building the picture store {path}; nothing half-made is left, the next start "
                f"builds it again", 130)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    store = open_store(path, key, classes)
    assert store, f"the store {path} just written does not read back"
    return store


def wait_for_lock(f):
    """Wait until this process holds f's lock; the operating system drops it when the process ends, however."""
    if os.name == 'nt':
        import msvcrt
        while True:
            try:
                return msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
            except OSError:  # LK_LOCK gives up after 10 s: wait on
                continue
    import fcntl
    fcntl.flock(f, fcntl.LOCK_EX)


def channel_stats(images, chunk=4096):
    """Per-channel mean and std of uint8 images (N, C, H, W) (an array or a memory map), in [0, 1] units, as two
    lists, counted chunk by chunk from histograms of the 256 values: no float copy of the pictures is made. A
    constant channel carries nothing to learn: its std is 1 (centred, it is 0 whatever it is divided by)."""
    counts = np.zeros((images.shape[1], 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk])
        for c in range(images.shape[1]):
            counts[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        m = (counts[c] * values).sum() / counts[c].sum()
        s = np.sqrt((counts[c] * (values - m) ** 2).sum() / counts[c].sum())
        if s == 0:
            print(f"note: channel {c} of the training pictures is constant ({round(255 * m)}); it is centred, not scaled")
            s = 1.0
        mean.append(float(m))
        std.append(float(s))
    return mean, std


class Progress:
    """One updating line for a long job: done / total, items a second, time left."""

    def __init__(self, what, total):
        self.what, self.total, self.t0, self.shown = what, total, time.time(), 0.0
        self.live = sys.stdout.isatty()

    def update(self, done):
        now = time.time()
        if now - self.shown < (0.5 if self.live else 10) and done < self.total:  # a log file: a line in 10 s
            return
        self.shown = now
        rate = done / max(now - self.t0, 1e-9)
        line = f"{self.what}: {done}/{self.total}, {rate:.0f} a second, {(self.total - done) / max(rate, 1e-9):.0f}s left"
        print(f"\r{line}   " if self.live else line, end='' if self.live and done < self.total else '\n', flush=True)
