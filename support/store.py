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
import signal
import socket
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from support.errors import die, note
from support.locks import hold

STORE_VERSION = 2  # 2: meta.json holds the CRC-32 of the pictures and labels


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
    file: object = None  # images.u8, open: its size can be checked as long as the store is used, deleted or not

    def on(self, device):
        """(images, labels) copied whole to device (a copy even on the CPU: it leaves the file)."""
        return self.images.to(device, copy=True), self.labels.to(device)

    def streamed(self):
        """(images, labels), the images read from the file through its memory map as they are indexed."""
        return Streamed(self), self.labels


class Streamed:
    """A store's pictures, indexed as the tensor (N, C, H, W) they are, each read first checking that the file is
    still whole: a file cut short under a memory map kills the process that reads it with SIGBUS, where this stops
    with one line (a cut in the very instant of a read still does). The check is an fstat of the open file, which
    outlives a deleted store."""

    def __init__(self, store):
        self.images, self.path, self.file = store.images, store.path, store.file
        self.shape, self.device, self.nbytes = store.images.shape, store.images.device, store.images.nbytes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        size = os.fstat(self.file.fileno()).st_size
        if size < self.nbytes:
            die(f"the picture store {self.path} was cut short while this run read it ({size} of {self.nbytes} bytes); "
                f"the last checkpoint is kept: carry the run on (--init_from=resume), which builds the store again")
        return self.images[index]


def open_store(path, key, classes):
    """The store at path when it is whole, of this version, made from the files key describes, of these classes
    (None: the store's own), holding what a split can be (uint8 pictures of 1 or 3 channels, one label in range
    each, every class present) and the very bytes it was written with (its CRC-32, read at every start); else None."""
    try:
        with open(os.path.join(path, 'meta.json')) as f:
            meta = json.load(f)
        n, c, h, w = meta['shape']
        classes = meta['classes'] if classes is None else classes
        if meta['version'] != STORE_VERSION or meta['key'] != key or meta['classes'] != classes or c not in (1, 3):
            return None
        if os.path.getsize(os.path.join(path, 'images.u8')) != n * c * h * w or checksum(path) != meta['checksum']:
            return None
        labels = torch.from_numpy(np.fromfile(os.path.join(path, 'labels.i64'), dtype='<i8'))
        if labels.shape != (n,) or n == 0 or not torch.equal(labels.unique(), torch.arange(len(classes))):
            return None
        # copy-on-write: torch wants a writable array, and nothing ever writes to it
        images = np.memmap(os.path.join(path, 'images.u8'), dtype=np.uint8, mode='c', shape=(n, c, h, w))
        return Store(path, torch.from_numpy(images), labels, classes, meta['mean'], meta['std'], meta['note'],
                     open(os.path.join(path, 'images.u8'), 'rb'))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checksum(path):
    """CRC-32 of a store's pictures and labels, read in 4 MiB pieces: what catches a damaged file (a zeroed
    region, a disk error) at about 4 GB/s once the file is in the page cache; it is not proof against tampering."""
    crc, piece = 0, bytearray(4 << 20)
    for name in ('images.u8', 'labels.i64'):
        with open(os.path.join(path, name), 'rb', buffering=0) as f:
            while size := f.readinto(piece):
                crc = zlib.crc32(memoryview(piece)[:size], crc)
    return f"{crc:08x}"


class BuildStopped(Exception):
    """SIGTERM (Colab's stop button, a preemption) while a store is built: stop as Ctrl-C does."""


def stop_building(signum, frame):
    raise BuildStopped(signum)


def load_or_build(path, key, classes, shape, fill, found=None):
    """The store at path (found: already opened), or, when there is none that is whole and made from these files,
    a new one: fill(images) writes the pictures into images, a writable map of shape (N, C, H, W), and returns
    (n, labels, note): the first n rows are the pictures kept, labels theirs. The statistics are counted here.
    A whole store is read without a lock (it was renamed into place whole), so a read-only cache serves; one
    process of a node builds, under a lock, while the others wait, then map its store."""
    store = found or open_store(path, key, classes)
    if store:
        if store.note:  # what the build said of the files (pictures skipped), said again at every start
            note(store.note)
        return store
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path + '.lock', 'a+')
    except OSError as e:
        die(f"cannot build the picture store in {os.path.dirname(path)}: {e.strerror or e} (point XDG_CACHE_HOME at a "
            f"writable folder)")
    with lock:
        if not hold(lock, wait=False):
            lock.seek(0)
            note(f"waiting for {lock.read().strip() or 'another process'}, which is building the picture store {path}")
            hold(lock)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        store = open_store(path, key, classes)  # built while this process waited
        if store:
            return store
        if os.path.exists(path):
            note(f"the store {path} is damaged, of another version or made from other files; building it again")
        remove_abandoned_builds(path)
        tmp = f"{path}.{os.getpid()}@{socket.gethostname()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        previous = signal.signal(signal.SIGTERM, stop_building)
        try:
            os.makedirs(tmp)
            build(tmp, key, classes, shape, fill)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.rename(tmp, path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"could not write the picture store {path}: {e.strerror or e}; nothing half-made is left, "
                f"the next start builds it again (free some space on that disk, or point XDG_CACHE_HOME elsewhere)")
        except (KeyboardInterrupt, BuildStopped) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"stopped while building the picture store {path}; nothing half-made is left, the next start "
                f"builds it again", 128 + (e.args[0] if isinstance(e, BuildStopped) else signal.SIGINT))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    store = open_store(path, key, classes)
    assert store, f"the store {path} just written does not read back"
    return store


def remove_abandoned_builds(path):
    """Remove what builds of this store by processes of this machine that died (kill -9, a crash) left: each its
    folder <path>.<pid>@<host>.tmp, as large as a whole store."""
    folder, name = os.path.split(path)
    for entry in os.listdir(folder):
        pid, at, host = entry.removeprefix(name + '.').removesuffix('.tmp').partition('@')
        if entry.startswith(name + '.') and entry.endswith('.tmp') and at and host == socket.gethostname() \
                and pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def build(tmp, key, classes, shape, fill):
    """Write a whole store into the folder tmp. The pictures' file takes its full size on disk before a byte is
    written: a memory map of a sparse file on a full disk dies of SIGBUS, where this stops with ENOSPC, in one line."""
    images_path = os.path.join(tmp, 'images.u8')
    with open(images_path, 'wb') as f:
        if hasattr(os, 'posix_fallocate'):
            os.posix_fallocate(f.fileno(), 0, max(1, int(np.prod(shape))))
        else:  # macOS, Windows: a sparse file
            f.truncate(int(np.prod(shape)))
    images = np.memmap(images_path, dtype=np.uint8, mode='r+', shape=shape)
    n, labels, note = fill(images)
    images.flush()
    del images  # closed before it is cut short, and before the rename (Windows cannot rename a folder with a file mapped in it)
    shape = (n, *shape[1:])
    os.truncate(images_path, int(np.prod(shape)))
    labels.numpy().astype('<i8').tofile(os.path.join(tmp, 'labels.i64'))
    mean, std = channel_stats(np.memmap(images_path, dtype=np.uint8, mode='r', shape=shape))
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
        json.dump(dict(version=STORE_VERSION, key=key, shape=list(shape), classes=classes, mean=mean, std=std,
                       note=note, checksum=checksum(tmp)), f)
    for name in os.listdir(tmp):  # on disk before the rename says it is whole
        with open(os.path.join(tmp, name), 'rb+') as f:
            os.fsync(f.fileno())


def channel_stats(images, piece=1 << 20):
    """Per-channel mean and std of uint8 images (N, C, H, W) (an array or a memory map), in [0, 1] units, as two
    lists, from histograms of the 256 values counted piece by piece (at most `piece` pixels of one channel: a few MB
    whatever the pictures' size or count). A constant channel carries nothing to learn: its std is 1 (centred, it is
    0 whatever it is divided by)."""
    n, channels = images.shape[:2]
    pixels = images.shape[2] * images.shape[3]
    counts = np.zeros((channels, 256), dtype=np.int64)
    rows = max(1, piece // pixels)
    for start in range(0, n, rows):
        for c in range(channels):
            block = np.asarray(images[start:start + rows, c]).reshape(-1)  # at most `piece` pixels, or one picture's
            for part in range(0, len(block), piece):
                counts[c] += np.bincount(block[part:part + piece], minlength=256)
    values = np.arange(256) / 255
    mean, std = [], []
    for c in range(channels):
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
