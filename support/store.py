"""
The picture store: a split's decoded pictures as one uint8 array (N, C, H, W) in a file on disk, read
through a memory map (nanoGPT's train.bin, for pictures), beside its labels, class names, pixel statistics
and the key of the files it was made from. This module alone knows its format:
    <store>/images.u8   the pictures, N x C x H x W bytes
    <store>/labels.i64  the labels, N little-endian int64
    <store>/meta.json   version, key, shape, classes, mean, std, note
Made once, by one process of a node (a lock; the others wait, then map it), in a folder of its own that is
renamed into place when whole: a kill or a full disk mid-way leaves nothing that looks like a store.
"""
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from support.errors import die
from support.locks import hold

STORE_VERSION = 1


def cache_dir():
    # beside other programs' caches, never in data_dir, which may be read-only
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'nanovit')


def store_path(data_dir, split, size):
    """Where a split's store lives: named for the data, the split and the side, and a hash of the data's full path."""
    where = hashlib.sha256(os.path.abspath(data_dir).encode(errors='surrogateescape')).hexdigest()[:8]
    return os.path.join(cache_dir(), f"{os.path.basename(os.path.abspath(data_dir))}-{split}-{size}-{where}")


def files_key(root, files, *facts):
    """What a store must have been made from: facts (the side, the classes) and each file's path under root, size,
    modification time, change time and inode. A copy tool can keep the first three equal by accident (touch -r
    sets the modification time back), not the last two."""
    key = hashlib.sha256(repr(facts).encode(errors='surrogateescape'))
    for path, s in files:
        key.update(repr((os.path.relpath(path, root), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino))
                   .encode(errors='surrogateescape'))
    return key.hexdigest()


@dataclass
class Store:
    path: str
    images: torch.Tensor  # uint8 (N, C, H, W), a view of the file: reading a batch reads those pictures alone
    labels: torch.Tensor  # int64 (N,)
    classes: list
    mean: list  # per channel, in [0, 1] units
    std: list
    note: str = ''  # what building it found worth saying of the files, e.g. the pictures it skipped

    def on(self, device):
        """(images, labels) copied whole to device (a copy even on the CPU: it leaves the file)."""
        return self.images.to(device, copy=True), self.labels.to(device)


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


def load_or_build(path, key, classes, shape, fill):
    """The store at path, or, when there is none that is whole and made from these files, a new one: fill(images)
    writes the pictures into images, a writable map of shape (N, C, H, W), and returns (n, labels, note): the first
    n rows are the pictures kept, labels theirs. The statistics are counted here."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.lock', 'a+') as lock:
        hold(lock)  # one process of a node builds; the others wait here, then map its store
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
            build(tmp, key, classes, shape, fill)
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


def build(tmp, key, classes, shape, fill):
    """Write a whole store into the folder tmp."""
    images = np.memmap(os.path.join(tmp, 'images.u8'), dtype=np.uint8, mode='w+', shape=shape)
    n, labels, note = fill(images)
    images.flush()
    del images  # closed before it is cut short, and before the rename (Windows cannot rename a folder with a file mapped in it)
    shape = (n, *shape[1:])
    os.truncate(os.path.join(tmp, 'images.u8'), int(np.prod(shape)))
    labels.numpy().astype('<i8').tofile(os.path.join(tmp, 'labels.i64'))
    mean, std = channel_stats(np.memmap(os.path.join(tmp, 'images.u8'), dtype=np.uint8, mode='r', shape=shape))
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
        json.dump(dict(version=STORE_VERSION, key=key, shape=list(shape), classes=classes, mean=mean, std=std,
                       note=note), f)
    for name in os.listdir(tmp):  # on disk before the rename says it is whole
        with open(os.path.join(tmp, name), 'rb+') as f:
            os.fsync(f.fileno())


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
