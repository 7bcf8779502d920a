"""
Prepare a dataset once: its pictures decoded into one uint8 array per split on disk, beside their labels, which
train.py, sample.py and bench.py then map (nanoGPT's prepare.py and train.bin, for pictures). train.py prepares
a dataset the first time a run names it; this script does it on its own:
$ python prepare.py --dataset=cifar10
$ python prepare.py --dataset=folder --data_dir=~/pets --store_size=224
$ python prepare.py --dataset=torchvision:Flowers102 --store_size=128
A prepared dataset is a folder in ~/.cache/nanovit ($XDG_CACHE_HOME/nanovit), named for the data and its side:
train.u8 and test.u8 (the pictures, N x C x H x W bytes), train.i64 and test.i64 (their labels) and meta.json.
It is written in a folder of its own renamed into place when whole, and checked (a CRC-32) at every start.
"""
import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import zlib
from collections import namedtuple
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from support.errors import die, first_line, note
from support.locks import hold
from support.pictures import IMAGE_EXTENSIONS, pictures_below, read_image, survey, to_pixels

VERSION = 3  # 3: both splits in one folder, meta.json inside the CRC
SPLITS = ('train', 'test')

def prepared_path(data_dir, name, size):
    """Where a dataset is prepared: named for it and the side its pictures are kept at, with a hash of its full path,
    beside other programs' caches (never in data_dir, which may be read-only)."""
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    where = hashlib.sha256(f"{os.path.abspath(data_dir)}/{name}".encode(errors='surrogateescape')).hexdigest()[:8]
    return os.path.join(cache, 'nanovit', f"{name}-{size}-{where}")

def files_key(root, files, *facts):
    """What a prepared dataset must have been made from: facts (the side, the classes) and each file's path under
    root, size, modification time, change time and inode (a copy tool or touch -r can keep the first three, not all)."""
    key = hashlib.sha256(repr(facts).encode(errors='surrogateescape'))
    for path, s in files:
        key.update(repr((os.path.relpath(path, root), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino))
                   .encode(errors='surrogateescape'))
    return key.hexdigest()

# -----------------------------------------------------------------------------
# a prepared dataset

# A prepared dataset, mapped: each split as (pictures uint8 (N, C, H, W), read from the file as they are indexed,
# labels int64 (N,)), the class names, the training pictures' mean and std per channel in [0, 1] units, and what
# preparing it found worth saying of the files (e.g. the pictures it skipped, '' for nothing).
Prepared = namedtuple('Prepared', 'path classes mean std train test note')

def checksum(path, meta):
    """CRC-32 of a prepared dataset's files and of its meta (all but the checksum), read in 4 MiB pieces: it catches a
    damaged file (a zeroed region, a disk error, a digit edited) at about 1.5 GB/s, not tampering."""
    piece, crc = bytearray(4 << 20), 0
    for name in (f"{split}.{kind}" for split in SPLITS for kind in ('u8', 'i64')):
        with open(os.path.join(path, name), 'rb', buffering=0) as f:
            while size := f.readinto(piece):
                crc = zlib.crc32(memoryview(piece)[:size], crc)
    meta = json.dumps({k: v for k, v in meta.items() if k != 'checksum'}, sort_keys=True).encode()
    return f"{zlib.crc32(meta, crc):08x}"

def open_prepared(path, key):
    """The dataset prepared at path when it is whole, of this version, made from the files key describes and holding
    the very bytes it was written with (checked at every start); else None."""
    try:
        with open(os.path.join(path, 'meta.json')) as f:
            meta = json.load(f)
        if meta['version'] != VERSION or meta['key'] != key or checksum(path, meta) != meta['checksum']:
            return None
        splits = {}
        for split in SPLITS:
            shape = (meta['sizes'][split], *meta['shape'])
            # copy-on-write: torch wants a writable array, and nothing ever writes to it
            images = np.memmap(os.path.join(path, f"{split}.u8"), dtype=np.uint8, mode='c', shape=shape)
            labels = np.fromfile(os.path.join(path, f"{split}.i64"), dtype='<i8')
            splits[split] = torch.from_numpy(images), torch.from_numpy(labels)
        return Prepared(path, meta['classes'], meta['mean'], meta['std'], splits['train'], splits['test'], meta['note'])
    except (OSError, ValueError, KeyError, TypeError):
        return None

# -----------------------------------------------------------------------------
# the datasets, found from their files' names and headers before a pixel is decoded

@dataclass
class Pictures(torch.utils.data.Dataset):
    """A split's pictures, for DataLoader's worker processes to decode: read(i) -> (uint8 (H, W, C), label); name(i)
    says which picture i is."""
    read: Callable
    n: int
    name: Callable
    shape: tuple
    labels: list = None  # when known before decoding (a folder's)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        """(uint8 (C, H, W) of shape, label, '') or (zeros, -1, why the picture did not decode)."""
        try:
            pixels, label = self.read(i)
            if pixels.shape[:2] != self.shape[1:]:
                raise ValueError(f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, the dataset's pictures are "
                                 f"{self.shape[2]}x{self.shape[1]} (set --img_size, or --store_size)")
            return torch.tensor(pixels.transpose(2, 0, 1)), label, ''  # read gives it shape's channels
        except (ValueError, OSError, TypeError) as e:  # a file PIL cannot read, a label that is no number
            return torch.zeros(self.shape, dtype=torch.uint8), -1, str(e)

# A dataset as its files describe it, before a pixel is decoded (all that the checks which need no pixel need): name,
# path (where it is prepared), key (what it is made from), classes, shape (C, H, W), sizes (split -> its count: a few
# broken pictures may yet be left out), then pictures (split -> Pictures to prepare) or prepared (from these files).
Found = namedtuple('Found', 'name path key classes shape sizes pictures prepared', defaults=(None, None))

def found_prepared(name, prepared, key):
    return Found(name, prepared.path, key, prepared.classes, tuple(prepared.train[0].shape[1:]),
                 {split: len(getattr(prepared, split)[1]) for split in SPLITS}, prepared=prepared)

def find_torchvision(name, folder, data_dir, size):
    """A torchvision dataset, downloaded into data_dir once (process 0 of a torchrun run first). folder: where its files
    land, when known, so that a dataset prepared from these very files opens without importing torchvision."""
    data_dir = os.path.abspath(data_dir)
    path = prepared_path(data_dir, name, size)
    files = sorted_files(os.path.join(data_dir, folder)) if folder else []
    if files and (prepared := open_prepared(path, key := files_key(data_dir, files, size))):
        return found_prepared(name, prepared, key)
    import torchvision
    kind = getattr(torchvision.datasets, name, None)
    if not isinstance(kind, type) or not issubclass(kind, torchvision.datasets.VisionDataset):
        die(f"dataset='torchvision:{name}': torchvision {torchvision.__version__} has no dataset class {name}", 2)
    splits = {split: open_torchvision(kind, data_dir, split, folder) for split in SPLITS}
    classes = torchvision_classes(splits['train'], name)
    key = files_key(data_dir, sorted_files(os.path.join(data_dir, folder)), size) if folder else \
        files_key(data_dir, [], name, size, [len(ds) for ds in splits.values()])
    if prepared := open_prepared(path, key):
        return found_prepared(name, prepared, key)
    shape = read_image_of(splits['train'], size, 0, 0)[0].transpose(2, 0, 1).shape  # the first picture's say for all
    pictures = {split: Pictures(partial(read_image_of, ds, size, shape[0]), len(ds),
                                f"{name} {split} picture {{}}".format, shape) for split, ds in splits.items()}
    return Found(name, path, key, classes, shape, {s: len(ds) for s, ds in splits.items()}, pictures)

def sorted_files(folder):
    """(path, os.stat) of each name in folder, sorted: what a torchvision dataset's key is made of. A name with no
    file behind it (a dangling link) is left out: no dataset can read it."""
    files = []
    for entry in os.scandir(folder) if os.path.isdir(folder) else []:
        with contextlib.suppress(OSError):
            files.append((entry.path, os.stat(entry.path)))
    return sorted(files)

def open_torchvision(kind, data_dir, split, folder):
    """A split of a torchvision dataset class: train=True/False, or split='trainval' or 'train' / 'test' or 'val'."""
    import inspect
    parameters = inspect.signature(kind.__init__).parameters
    names = ('trainval', 'train') if split == 'train' else ('test', 'val')
    ways = [dict(train=split == 'train')] if 'train' in parameters else \
        [dict(split=s) for s in names] if 'split' in parameters else []
    if not ways:
        die(f"dataset='torchvision:{kind.__name__}' has no train and test splits (no train= or split= argument); "
            f"sort its pictures into a folder dataset instead", 2)
    for way in ways:
        try:
            return kind(data_dir, download=True, **way) if 'download' in parameters else kind(data_dir, **way)
        except Exception as e:
            reason = first_line(e)
            if not isinstance(e, ValueError):  # a ValueError: a split this class does not have; try the next name
                break
    where = os.path.join(data_dir, folder) if folder else data_dir
    holds = f"it holds {', '.join(sorted(os.listdir(where))) or 'nothing'}" if os.path.isdir(where) else \
        "it does not exist"
    die(f"could not load the {split} split of {kind.__name__} from {where} ({holds}): {reason}; offline, point "
        f"--data_dir at a copy of its files, or delete them to download them again")

def torchvision_classes(ds, name):
    """The class names of a torchvision dataset, or numbers as names where it keeps only its labels."""
    if isinstance(getattr(ds, 'classes', None), (list, tuple)) and ds.classes:
        return [str(c) for c in ds.classes]
    labels = next((getattr(ds, a) for a in ('targets', 'labels', '_labels') if getattr(ds, a, None) is not None), None)
    if labels is None:
        die(f"dataset='torchvision:{name}' names no classes and keeps no labels list: not a classification dataset "
            f"nanoViT can read", 2)
    return [str(c) for c in range(int(max(labels)) + 1)]

def read_image_of(ds, size, channels, i):
    picture, label = ds[i]
    return to_pixels(picture, size, channels), int(label)

FOLDER_LAYOUT = "data_dir/train/<class>/<image> and data_dir/test/<class>/<image> (val/ is taken for test/)"
# the files that label a flat validation folder: Tiny-ImageNet's (val/val_annotations.txt), ImageNet's (Kaggle's
# LOC_val_solution.csv, in val/ or data_dir): a picture's name, then its class, on each line
LABEL_FILES = ('val_annotations.txt', 'LOC_val_solution.csv')

def find_folder(data_dir, size):
    """An ImageFolder-style tree: its class folders, its pictures and their shape from the headers."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(data_dir):
        die(f"data_dir={data_dir!r} is not a folder; a folder dataset is laid out as {FOLDER_LAYOUT}")
    roots = {split: split_dir(data_dir, split) for split in SPLITS}
    classes = class_names(roots['train'])
    if not classes:
        die(f"{roots['train']} has no class folders; a folder dataset is laid out as {FOLDER_LAYOUT}")
    files, labels, left_out = {}, {}, []
    for split, root in roots.items():
        flat = split == 'test' and class_names(root) in ([], ['images'])  # Tiny-ImageNet's val/images/, ImageNet's val/
        files[split], labels[split] = (labelled_pictures if flat else class_pictures)(data_dir, root, classes, left_out)
    if left_out:
        shown = ', '.join(os.path.relpath(p, data_dir) for p in left_out[:3]) + (', ...' if len(left_out) > 3 else '')
        note(f"left out {len(left_out)} files in {data_dir} that are not pictures by their name or not regular files "
             f"({shown})")
    name = os.path.basename(data_dir)
    path, key = prepared_path(data_dir, name, size), files_key(data_dir, files['train'] + files['test'], size, classes)
    if prepared := open_prepared(path, key):
        return found_prepared(name, prepared, key)
    paths = {split: [p for p, _ in files[split]] for split in SPLITS}
    shape, (_, *test_side) = survey(paths['train'], size), survey(paths['test'], size)  # the headers
    if test_side != list(shape[1:]):
        die(f"the test pictures are {test_side[1]}x{test_side[0]}, the training pictures {shape[2]}x{shape[1]}; set "
            f"--img_size=N to bring both to N x N", 2)
    pictures = {split: Pictures(partial(read_file, paths[split], labels[split], size, shape[0]), len(paths[split]),
                                partial(lambda p, i: os.path.relpath(p[i], data_dir), paths[split]), shape,
                                labels[split]) for split in SPLITS}
    return Found(name, path, key, classes, shape, {split: len(paths[split]) for split in SPLITS}, pictures)

def read_file(paths, labels, size, channels, i):
    # a huge photo shrinks as it decodes (draft, thumbnail); kept at its own size, a picture is decoded whole
    return read_image(paths[i], size, channels, max_side=2048 if size else 0), labels[i]

def split_dir(data_dir, split):
    """train/; for the test split test/ or val/, the first labelled by class folders or a label file of its own, else
    the last: Tiny-ImageNet's and ImageNet's test/ hold no labels, their val/ does."""
    names = ('train',) if split == 'train' else ('test', 'val')
    found = [os.path.join(data_dir, n) for n in names if os.path.isdir(os.path.join(data_dir, n))]
    if not found:
        die(f"no {' or '.join(n + '/' for n in names)} in data_dir={data_dir!r}; a folder dataset is laid out as "
            f"{FOLDER_LAYOUT}")
    labelled = (f for f in found if class_names(f) not in ([], ['images'])
                or any(os.path.isfile(os.path.join(f, name)) for name in LABEL_FILES))
    return next(labelled, found[-1])

def class_names(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith('.'))

def class_pictures(data_dir, root, classes, left_out):
    """([(path, stat)], [label]) of a split's pictures, from its class folders (which must be the training split's)."""
    theirs = class_names(root)
    if theirs != classes:
        differ = [f"{c!r} only in train/" for c in classes if c not in theirs]
        differ += [f"{c!r} only in {os.path.basename(root)}/" for c in theirs if c not in classes]
        die(f"the class folders of {data_dir} differ between the splits: {', '.join(differ)}")
    files, labels = [], []
    for label, c in enumerate(classes):
        pictures, others = pictures_below(os.path.join(root, c))
        if not pictures:
            die(f"class folder {os.path.join(root, c)} holds no pictures ({', '.join(IMAGE_EXTENSIONS)})")
        files += pictures
        labels += [label] * len(pictures)
        left_out += others
    return files, labels

def labelled_pictures(data_dir, root, classes, left_out):
    """The pictures of a flat validation folder, labelled by the label file beside them."""
    folder = os.path.join(root, 'images') if os.path.isdir(os.path.join(root, 'images')) else root
    pictures, others = pictures_below(folder)
    left_out += [p for p in others if os.path.basename(p) not in LABEL_FILES]
    label_file = next((os.path.join(d, f) for d in (root, data_dir) for f in LABEL_FILES
                       if os.path.isfile(os.path.join(d, f))), None)
    if label_file is None:
        die(f"{root} holds {len(pictures)} pictures but no class folders: sort them into {root}/<class>/ as in train/, "
            f"or put their label file beside them ({' or '.join(LABEL_FILES)})")
    named = {}
    with open(label_file, encoding='utf-8', errors='replace') as f:
        for line in f:
            fields = line.strip().split('\t' if '\t' in line else ',')
            if len(fields) > 1 and fields[1].split() and fields[0] != 'ImageId':  # Kaggle's CSV has a header
                named[os.path.splitext(fields[0])[0]] = fields[1].split()[0]
    index = {c: i for i, c in enumerate(classes)}
    labels = [index.get(named.get(os.path.splitext(os.path.basename(p))[0])) for p, _ in pictures]
    unknown = [os.path.basename(p) for (p, _), label in zip(pictures, labels) if label is None]
    if unknown:
        die(f"{label_file} gives no class of train/ to {len(unknown)} of the {len(pictures)} pictures in {folder}, "
            f"for instance {unknown[0]} ({named.get(os.path.splitext(unknown[0])[0], 'not listed')})")
    return pictures, labels

def get_dataset(name):
    if name.startswith('torchvision:'):
        return Dataset(partial(find_torchvision, name.removeprefix('torchvision:'), None))
    if name not in DATASETS:
        die(f"unknown dataset={name!r}; choose from {', '.join(DATASETS)}, or torchvision:NAME (any torchvision "
            f"classification dataset, e.g. torchvision:Flowers102)", 2)
    return DATASETS[name]

# find: (data_dir, size) -> Found; shape: (C, H, W) of its pictures, when known without reading its files; digits:
# handwritten digits, never mirrored (sample.py --image makes a picture look like one)
Dataset = namedtuple('Dataset', 'find shape digits', defaults=(None, False))

DATASETS = {  # a torchvision dataset: its class in torchvision.datasets, and the folder its files land in
    'mnist': Dataset(partial(find_torchvision, 'MNIST', 'MNIST/raw'), (1, 28, 28), digits=True),
    'fashion_mnist': Dataset(partial(find_torchvision, 'FashionMNIST', 'FashionMNIST/raw'), (1, 28, 28)),
    'cifar10': Dataset(partial(find_torchvision, 'CIFAR10', 'cifar-10-batches-py'), (3, 32, 32)),
    'cifar100': Dataset(partial(find_torchvision, 'CIFAR100', 'cifar-100-python'), (3, 32, 32)),
    'folder': Dataset(find_folder),  # its shape is what the files say, or (C, size, size)
}

def find(name, data_dir, size):
    """Dataset name as its files describe it, its pictures to be kept at side size (0: their own; a dataset of one known
    size keeps it: a model of another side gets each batch resized), nothing decoded."""
    dataset = get_dataset(name)
    return dataset.find(os.path.expanduser(data_dir), 0 if dataset.shape else size)

# -----------------------------------------------------------------------------
# preparing it: decode every picture once, write the arrays, rename them into place

def load(found):
    """The prepared dataset found describes: the one there, or one prepared now. A whole one is read without a lock
    (it was renamed into place whole), so a read-only cache serves; one process of a node prepares, under a lock,
    while the others wait, then map what it wrote."""
    if found.prepared:
        if found.prepared.note:  # what preparing it said of the files (pictures skipped), said again at every start
            note(found.prepared.note)
        return found.prepared
    try:
        os.makedirs(os.path.dirname(found.path), exist_ok=True)
        lock = open(found.path + '.lock', 'a+')
    except OSError as e:
        die(f"cannot prepare the dataset in {os.path.dirname(found.path)}: {e.strerror or e} (point XDG_CACHE_HOME at "
            f"a writable folder)")
    with lock:
        if not hold(lock, wait=False):
            lock.seek(0)
            note(f"waiting for {lock.read().strip() or 'another process'}, which is preparing {found.path}")
            hold(lock)
        lock.truncate(0)  # opened to append: what follows is written at its end, now its start
        print(f"pid {os.getpid()} on {socket.gethostname()}", file=lock, flush=True)
        prepared = open_prepared(found.path, found.key)  # prepared while this process waited
        if not prepared:
            if os.path.exists(found.path):
                note(f"{found.path} is damaged, of another version or made from other files; preparing it again")
            write_dataset(found)
            prepared = open_prepared(found.path, found.key)
    assert prepared, f"the dataset just prepared at {found.path} does not read back"
    return prepared

def stop_preparing(signum, frame):
    raise KeyboardInterrupt(signum)  # SIGTERM (Colab's stop button, a preemption): stop as Ctrl-C does

def write_dataset(found):
    """Decode found's pictures into a folder of its own, then rename it into place."""
    tmp = f"{found.path}.{os.getpid()}@{socket.gethostname()}.tmp"
    # what preparations of it by processes of this machine that died (kill -9, a crash) left, each as large as the
    # dataset: any other would hold the lock this process holds
    for left in glob.glob(f"{glob.escape(found.path)}.*@{glob.escape(socket.gethostname())}.tmp"):
        shutil.rmtree(left, ignore_errors=True)
    previous = signal.signal(signal.SIGTERM, stop_preparing)
    try:
        os.makedirs(tmp)
        written = {split: write_split(tmp, split, found) for split in SPLITS}  # split -> (count, histograms, note)
        mean, std = mean_std(written['train'][1])
        meta = dict(version=VERSION, key=found.key, classes=found.classes, shape=list(found.shape), mean=mean, std=std,
                    sizes={split: n for split, (n, _, _) in written.items()},
                    note='; '.join(skipped for _, _, skipped in written.values() if skipped))
        meta['checksum'] = checksum(tmp, meta)
        with open(os.path.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f)
        for name in os.listdir(tmp):  # on disk before the rename says it is whole
            with open(os.path.join(tmp, name), 'rb+') as f:
                os.fsync(f.fileno())
        if os.path.exists(found.path):
            shutil.rmtree(found.path)
        os.rename(tmp, found.path)
    except OSError as e:
        die(f"could not write the prepared dataset {found.path}: {e.strerror or e}; nothing half-made is left, the "
            f"next start prepares it again (free some space on that disk, or point XDG_CACHE_HOME elsewhere)")
    except KeyboardInterrupt as e:
        die(f"stopped while preparing the dataset {found.path}; nothing half-made is left, the next start prepares "
            f"it again", 128 + (e.args[0] if e.args else signal.SIGINT))
    finally:  # whatever stopped it (renamed into place, tmp is gone already)
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)

def write_split(folder, split, found):
    """Decode a split's pictures in order into folder/<split>.u8 and .i64, by one process per core (DataLoader's
    workers, which end with this process), a piece at a time: memory stays that of a few pieces, whatever the count.
    Returns (pictures kept, per-channel histograms of their values, a note of the broken pictures skipped or '')."""
    pictures, batch = found.pictures[split], 64
    # elsewhere than Linux a worker is spawned, which would run the script that imported this module anew
    workers = os.cpu_count() if sys.platform == 'linux' and pictures.n > 1000 else 0
    progress = Progress(f"preparing {found.name} {split}", pictures.n)
    batches = iter(torch.utils.data.DataLoader(pictures, batch_size=batch, num_workers=workers,
                                               multiprocessing_context='fork' if workers else None,
                                               generator=torch.Generator()))  # its seed draw leaves the run's RNG be
    counts, labels, broken = np.zeros((found.shape[0], 256), dtype=np.int64), [], []
    try:
        with open(os.path.join(folder, f"{split}.u8"), 'wb') as f:
            for start, (pixels, label, why) in zip(range(0, pictures.n, batch), batches):
                broken += [(start + i, w) for i, w in enumerate(why) if w]
                good = torch.tensor([not w for w in why])
                outside = good & ((label < 0) | (label >= len(found.classes)))
                if outside.any():
                    i = int(torch.nonzero(outside)[0])
                    die(f"{pictures.name(start + i)} has label {int(label[i])}, outside the {len(found.classes)} "
                        f"classes 0..{len(found.classes) - 1}")
                kept = pixels[good].numpy()
                f.write(kept.tobytes())
                counts += [np.bincount(channel.reshape(-1), minlength=256) for channel in kept.swapaxes(0, 1)]
                labels.append(label[good])
                progress.update(min(start + batch, pictures.n))
    except (RuntimeError, ConnectionError) as e:  # torch names a killed worker, unless its pipe breaks first
        if isinstance(e, RuntimeError) and 'DataLoader worker' not in str(e):
            raise
        # end the other workers now, not when the error's traceback is freed; until they are, torch's SIGCHLD handler
        # raises anew for the dead one whenever any child process ends, so it is set aside meanwhile
        handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        batches._shutdown_workers()  # what the loader's __del__ calls
        signal.signal(signal.SIGCHLD, handler)
        die(f"a process decoding the {pictures.n} pictures died (killed, or out of memory?); nothing was prepared")
    labels = torch.cat(labels).numpy().astype('<i8')
    print(f"{found.name} {split}: decoded {len(labels)} pictures in {time.time() - progress.t0:.1f}s")
    labels.tofile(os.path.join(folder, f"{split}.i64"))
    return len(labels), counts, skipped_note(found, split, broken, labels)

def skipped_note(found, split, broken, kept_labels):
    """A note naming the broken pictures a split skipped ('' for none), or one line when they are more than a few
    damaged files: a whole class of them, or more than a tenth (then it is probably not the data that was meant)."""
    pictures = found.pictures[split]
    present = np.bincount(kept_labels, minlength=len(found.classes))
    for label, c in enumerate(found.classes):
        if present[label] == 0:
            example = next((f" ({pictures.name(i)}: {why})" for i, why in broken if pictures.labels
                            and pictures.labels[i] == label), '')
            die(f"the {split} split has no readable picture of class {c!r}{example}")
    if not broken:
        return ''
    listed = '; '.join(f"{pictures.name(i)} ({why})" for i, why in broken[:5]) + \
        (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
    if len(broken) > 2 and len(broken) > 0.1 * pictures.n:
        die(f"{len(broken)} of the {pictures.n} {split} pictures of {found.name} do not decode, too many to be a few "
            f"damaged files (is it the data you meant?): {listed}")
    skipped = f"skipped {len(broken)} of the {pictures.n} {split} pictures of {found.name} that do not decode: {listed}"
    note(skipped)
    return skipped

def mean_std(counts):
    """Per-channel mean and std, in [0, 1] units, from histograms of the 256 values. A constant channel carries
    nothing to learn: its std is 1 (centred, it is 0 whatever it is divided by)."""
    values = np.arange(256) / 255
    mean = (counts * values).sum(axis=1) / counts.sum(axis=1)
    std = np.sqrt((counts * (values - mean[:, None]) ** 2).sum(axis=1) / counts.sum(axis=1))
    for c in np.nonzero(std == 0)[0]:
        note(f"channel {c} of the training pictures is constant ({round(255 * mean[c])}); it is centred, not scaled")
    return mean.tolist(), np.where(std == 0, 1.0, std).tolist()

class Progress:
    """One updating line for a long job: done / total, items a second, time left."""

    def __init__(self, what, total):
        self.what, self.total, self.t0, self.live = what, total, time.time(), sys.stdout.isatty()
        self.shown = 0.0 if self.live else self.t0  # a log file: a line every 10 s, none for a short job

    def update(self, done):
        now = time.time()
        if now - self.shown < (0.5 if self.live else 10) and not (self.live and done == self.total):
            return
        self.shown = now
        rate = done / max(now - self.t0, 1e-9)
        left = (self.total - done) / max(rate, 1e-9)
        line = f"{self.what}: {done}/{self.total}, {rate:.0f} a second, {left:.0f}s left"
        print(f"\r{line}   " if self.live else line, end='' if self.live and done < self.total else '\n', flush=True)

def held_out(n, val_size):
    """(training indices, validation indices) of a split of n pictures: val_size held out to choose settings on, the
    same ones for every run and seed (a fixed shuffle), so that the test split is left for the final figure."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[val_size:].sort().values, order[:val_size].sort().values

if __name__ == '__main__':
    dataset = 'mnist'  # as train.py's: 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'folder', 'torchvision:NAME'
    data_dir = 'data'
    store_size = 0  # the side pictures are kept at (0: their own, which must then be one size)
    config_keys = ['dataset', 'data_dir', 'store_size']
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    data = load(find(dataset, data_dir, store_size))
    print(f"{data.path}: {len(data.train[1])} training and {len(data.test[1])} test pictures of "
          f"{'x'.join(map(str, data.train[0].shape[1:]))}, {len(data.classes)} classes")
