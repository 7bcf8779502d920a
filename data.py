"""
Every dataset nanoViT trains on, one entry each, and what turns its pictures into a batch.
A dataset's loader writes a split once into a picture store (store.py: uint8 images (N, C, H, W) on
disk, int64 labels, class names) and returns it; train.py puts a split on the device whole when it
fits, else gathers each batch from the store. To add a dataset, write its loader, add an entry to
DATASETS and a config file (README, "Add a dataset").
"""
import hashlib
import math
import multiprocessing
import os
import signal
import stat
import struct
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from errors import die
from store import Progress, cache_dir, load_or_build

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')

# -----------------------------------------------------------------------------
# reading one picture: the same code for folder datasets and for sample.py --image


MAX_PIXELS = 50_000_000  # a picture decoded whole (no JPEG draft) larger than this costs gigabytes: refused


def read_image(path, size=0, max_side=2048):
    """A picture file as uint8 (H, W, C), C = 1 for grey and 3 for colour, in any format PIL reads:
    EXIF rotation applied, the first frame of an animation, transparency laid over white, 16-bit
    grey scaled to 8 bits, palettes and CMYK made RGB. size > 0: the shorter side resized to size,
    then the centre size x size cut out. max_side > 0: a larger picture is shrunk while it is decoded,
    so a 10000 x 10000 photo costs about what a 2000 x 2000 one does. A bad file raises ValueError."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            # pictures between PIL's two pixel limits only warn; we shrink them as we decode
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            picture = Image.open(path)
        with picture:
            if size or max_side:
                picture.draft('RGB', (size or max_side, size or max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            if picture.width * picture.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{picture.width}x{picture.height} pixels, more than {MAX_PIXELS:,}")
            if picture.getexif().get(0x0112, 1) != 1:  # the EXIF orientation tag says the camera was turned
                picture = ImageOps.exif_transpose(picture)
            picture = to_grey_or_rgb(picture)
            if max_side and max(picture.size) > max_side:
                picture.thumbnail((max_side, max_side), Image.LANCZOS)
            if size:
                scale = size / min(picture.size)
                w, h = (max(size, round(side * scale)) for side in picture.size)
                left, top = (w - size) // 2, (h - size) // 2
                picture = picture.resize((w, h), Image.LANCZOS, reducing_gap=3.0).crop((left, top, left + size, top + size))
            pixels = np.asarray(picture)
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a picture PIL can read ({type(e).__name__})") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def to_grey_or_rgb(picture):
    """A decoded PIL image in mode 'L' (grey) or 'RGB', from any mode."""
    from PIL import Image
    mode = picture.mode
    if mode == 'P' and 'transparency' in picture.info or mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa'):
        # transparent pixels become white paper, so black ink on a clear background stays black on white
        paper = Image.new('RGBA', picture.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(paper, picture.convert('RGBA'))
        return flat.convert('L' if mode in ('LA', 'La') else 'RGB')
    if mode.startswith('I'):  # 16- or 32-bit grey: PIL's convert('L') would clip everything above 255
        pixels = np.asarray(picture).astype(np.int64 if mode == 'I' else np.int32)
        return Image.fromarray(((np.clip(pixels, 0, 65535) + 128) // 257).astype(np.uint8))
    if mode in ('L', 'RGB'):
        return picture
    return picture.convert('L' if mode in ('1', 'F') else 'RGB')


# -----------------------------------------------------------------------------
# the datasets


@dataclass(frozen=True)
class Dataset:
    load: Callable  # (data_dir, train, img_size) -> store.Store: images uint8 (N, C, H, W), labels, class names
    shape: tuple = None  # (C, H, W) of its images, when known without reading the files
    digits: bool = False  # handwritten digits: never mirrored; sample.py --image makes a picture look like one


def load_torchvision(name, data_dir, train, img_size):
    """MNIST, FashionMNIST or CIFAR10 through torchvision: downloaded into data_dir once, then written into a
    picture store like a folder's."""
    import torchvision
    cls = getattr(torchvision.datasets, name)
    split = 'train' if train else 'test'
    try:
        ds = cls(data_dir, train=train, download=True)  # downloads nothing when the files are there
    except Exception as e:
        die(f"could not load the {name} {split} split from {data_dir}: {why_torchvision_failed(cls, data_dir, train, e)}")
    if img_size not in (0, ds.data.shape[2]):
        die(f"img_size={img_size}: {name} images are {ds.data.shape[2]}x{ds.data.shape[2]}; "
            f"img_size resizes folder datasets only (0 keeps the native size)", 2)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    label_file = (os.path.join(ds.raw_folder, f"{'train' if train else 't10k'}-labels-idx1-ubyte")
                  if hasattr(ds, 'raw_folder') else os.path.join(data_dir, ds.base_folder))
    check_labels(labels, len(ds.classes), label_file)
    folder = ds.raw_folder if hasattr(ds, 'raw_folder') else os.path.join(data_dir, ds.base_folder)
    key = store_key(folder, img_size, list(ds.classes))

    def build(tmp):
        images = torch.as_tensor(ds.data)  # already in memory: torchvision reads the files whole
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # MNIST / CIFAR
        images.contiguous().numpy().tofile(os.path.join(tmp, 'images.u8'))
        return tuple(images.shape), labels, ''
    return load_or_build(store_path(data_dir, f"{name}-{split}", img_size), key, list(ds.classes), build)


def why_torchvision_failed(cls, data_dir, train, error):
    """The file at fault, and what is wrong with it, for a torchvision dataset that would not load."""
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:200]
    if not hasattr(cls, 'resources'):  # CIFAR10: pickled batches in one folder
        folder = os.path.join(data_dir, cls.base_folder)
        if not os.path.isdir(folder):
            return (f"{folder} does not exist and downloading it failed ({reason}); offline, point --data_dir at "
                    f"the folder that holds {cls.base_folder}/, or use --dataset=folder with a folder of images")
        return f"{folder}: {reason} (delete the folder to download it again)"
    raw = os.path.join(data_dir, cls.__name__, 'raw')
    prefix = 'train' if train else 't10k'
    for name, rank in ((f'{prefix}-images-idx3-ubyte', 3), (f'{prefix}-labels-idx1-ubyte', 1)):
        path = os.path.join(raw, name)
        if not os.path.isfile(path):
            return (f"{path} is missing and downloading it failed ({reason}); offline, point --data_dir at a "
                    f"folder that holds {cls.__name__}/raw/{name}")
        problem = idx_problem(path, rank)
        if problem:
            return f"{path} {problem} (delete it to download it again)"
    return f"{reason} (delete the files in {raw} to download them again)"


def idx_problem(path, rank):
    """What is wrong with an IDX file of unsigned bytes (MNIST's format), or None."""
    with open(path, 'rb') as f:
        header = f.read(4 + 4 * rank)
    if len(header) < 4 + 4 * rank:
        return f"is {os.path.getsize(path)} bytes, too short for an IDX header"
    if header[:4] != bytes([0, 0, 0x08, rank]):
        return f"starts with {header[:4].hex()}, not {bytes([0, 0, 8, rank]).hex()}, the IDX magic number of {rank}-D unsigned bytes"
    dims = struct.unpack(f'>{rank}I', header[4:])
    expected = len(header) + math.prod(dims)
    if os.path.getsize(path) != expected:
        return f"is {os.path.getsize(path)} bytes, but its header {dims} says {expected}"
    return None


def check_labels(labels, n_classes, source):
    """Stop with the first label outside 0..n_classes-1: a bad label would crash evaluation or grow the head."""
    bad = torch.nonzero((labels < 0) | (labels >= n_classes)).flatten()
    if len(bad):
        i = bad[0].item()
        die(f"{source}: label {labels[i].item()} at index {i} is outside 0..{n_classes - 1} "
            f"({len(bad)} such label{'s' if len(bad) > 1 else ''})")


# folder datasets: data_dir/train/<class>/* and data_dir/test/<class>/* (or val/), decoded once, then cached
FOLDER_LAYOUT = "data_dir/train/<class>/<image> and data_dir/test/<class>/<image> (val/ is taken for test/)"
# a few broken pictures are skipped; more than this share of them, and the folder is probably not what was meant
MAX_BROKEN_SHARE = 0.1


def split_dir(data_dir, train):
    names = ('train',) if train else ('test', 'val')
    for name in names:
        if os.path.isdir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    die(f"no {' or '.join(n + '/' for n in names)} in data_dir={data_dir!r}; a folder dataset is laid out as {FOLDER_LAYOUT}")


def class_names(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith('.'))


def load_folder(data_dir, train, img_size):
    """A split of an ImageFolder-style tree, every picture decoded once and the result cached."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(data_dir):
        die(f"data_dir={data_dir!r} is not a folder; a folder dataset is laid out as {FOLDER_LAYOUT}")
    train_root, root = split_dir(data_dir, True), split_dir(data_dir, train)
    classes = class_names(train_root)
    if not classes:
        die(f"{train_root} has no class folders; a folder dataset is laid out as {FOLDER_LAYOUT}")
    if not train and class_names(root) != classes:
        theirs = class_names(root)
        differ = [f"{c!r} only in train/" for c in classes if c not in theirs]
        differ += [f"{c!r} only in {os.path.basename(root)}/" for c in theirs if c not in classes]
        die(f"the class folders of {data_dir} differ between the splits: {', '.join(differ)}")
    files, left_out = [], []
    # the key: what a copy tool cannot keep equal by accident, the inode and the change time (touch -r sets the
    # modification time back, not the change time), with each file's name, size and modification time
    key = hashlib.sha256(repr((img_size, classes)).encode(errors='surrogateescape'))
    for label, c in enumerate(classes):
        pictures, others = pictures_below(os.path.join(root, c))
        if not pictures:
            die(f"class folder {os.path.join(root, c)} holds no pictures ({', '.join(IMAGE_EXTENSIONS)})")
        for path, s in pictures:
            key.update(repr((os.path.relpath(path, root), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino))
                       .encode(errors='surrogateescape'))
        files += [(path, label) for path, _ in pictures]
        left_out += others
    if left_out:
        shown = ', '.join(os.path.relpath(p, data_dir) for p in left_out[:3]) + (', ...' if len(left_out) > 3 else '')
        print(f"note: left out {len(left_out)} files in {root} that are not pictures by their name or not regular "
              f"files ({shown})")
    key = key.hexdigest()

    def build(tmp):
        t0 = time.time()
        shape, labels, broken = decode_into(os.path.join(tmp, 'images.u8'), files, img_size, os.path.basename(root))
        for label, c in enumerate(classes):
            if not (labels == label).any():
                die(f"class folder {os.path.join(root, c)} holds no readable picture, for instance "
                    f"{next(os.path.relpath(p, data_dir) + f' ({why})' for p, why, l in broken if l == label)}")
        note = ''
        if broken:
            listed = '; '.join(f"{os.path.relpath(p, data_dir)} ({why})" for p, why, _ in broken[:5])
            more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
            if len(broken) > 2 and len(broken) > MAX_BROKEN_SHARE * len(files):
                die(f"{len(broken)} of the {len(files)} pictures in {root} do not decode, too many to be a few damaged "
                    f"files (is it the folder you meant?): {listed}{more}")
            note = f"skipped {len(broken)} of the {len(files)} pictures in {root} that do not decode: {listed}{more}"
            print(f"note: {note}")
        print(f"{os.path.basename(root)}/: decoded {len(labels)} pictures in {time.time() - t0:.1f}s, stored in {path}")
        return shape, labels, note
    path = store_path(data_dir, os.path.basename(root), img_size)
    return load_or_build(path, key, classes, build)


def pictures_below(folder):
    """([(path, stat)] of the pictures under folder, sorted, [paths left out]): a picture is a regular file
    named like one (IMAGE_EXTENSIONS); notes, Thumbs.db, sidecar .json and .xmp files, FIFOs, dangling or
    looping links and symlinked folders are left out. Hidden files (.DS_Store and the like) are not counted."""
    pictures, others = [], []
    for parent, dirs, names in os.walk(folder):
        others += [os.path.join(parent, d) for d in dirs if os.path.islink(os.path.join(parent, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and not os.path.islink(os.path.join(parent, d)))
        for name in sorted(n for n in names if not n.startswith('.')):
            path = os.path.join(parent, name)
            try:
                info = os.stat(path)
                regular = stat.S_ISREG(info.st_mode)
            except OSError:  # a dangling link, or one that points at itself
                regular = False
            if regular and name.lower().endswith(IMAGE_EXTENSIONS):
                pictures.append((path, info))
            else:
                others.append(path)
    return pictures, others


def store_path(data_dir, split, img_size):
    """Where a split's store lives: named for the data, the split and the size, and a hash of the data's full path."""
    where = hashlib.sha256(os.path.abspath(data_dir).encode(errors='surrogateescape')).hexdigest()[:8]
    return os.path.join(cache_dir(), f"{os.path.basename(os.path.abspath(data_dir))}-{split}-{img_size}-{where}")


def store_key(folder, img_size, classes):
    """What a torchvision dataset's store must have been made from: the size, the classes, and each of its
    files' name, size, times and inode."""
    files = [(f, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
             for f, s in ((f, os.stat(os.path.join(folder, f))) for f in sorted(os.listdir(folder)))]
    return hashlib.sha256(repr((img_size, classes, files)).encode(errors='surrogateescape')).hexdigest()


GREY_MODES = ('1', 'L', 'LA', 'La', 'F')  # and 'I...': what read_image returns with one channel


def header(path, size):
    """((H, W) the picture decodes to, channels) from its header alone, or (None, why) for a file that is no picture."""
    from PIL import Image
    try:
        with Image.open(path) as picture:
            w, h = picture.size
            if picture.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # turned a quarter: read_image transposes it
                w, h = h, w
            grey = picture.mode in GREY_MODES or picture.mode.startswith('I')
            return ((size, size) if size else (h, w)), 1 if grey else 3
    except Exception as e:
        return None, f"not a picture PIL can read ({type(e).__name__})"


def decode_into(images_path, files, img_size, what):
    """Decode the pictures [(path, label)] into a new uint8 file of shape (N, C, H, W), chunk by chunk, by one
    process per core that each write their pictures in place: the memory used stays that of a few chunks,
    and of the list of files, whatever N is. Returns (shape, labels of the pictures kept, [(path, why, label)]
    that did not decode)."""
    paths = [p for p, _ in files]
    sides, channels, failed = np.zeros((len(paths), 2), dtype=np.int32), np.zeros(len(paths), dtype=np.int8), {}
    for i, path in enumerate(paths):  # the headers first: the file's shape, before any pixel is decoded
        hw, c = header(path, img_size)
        if hw is None:
            failed[i] = c
        else:
            sides[i], channels[i] = hw, c
    good = np.ones(len(paths), dtype=bool)
    good[list(failed)] = False
    if not good.any():
        die(f"none of the {len(files)} pictures decodes, for instance {paths[0]} ({failed[0]})")
    sizes = np.unique(sides[good], axis=0)
    if len(sizes) > 1:
        listed = ', '.join(f"{w}x{h}" for h, w in sizes[:4])
        die(f"the pictures have different sizes ({listed}{', ...' if len(sizes) > 4 else ''}); "
            f"set --img_size=N to resize the shorter side to N and cut out the centre N x N")
    (h, w), c = sizes[0].tolist(), int(channels[good].max())  # 1 only when every picture is grey
    shape = (len(files), c, h, w)
    np.memmap(images_path, dtype=np.uint8, mode='w+', shape=shape).flush()
    chunks = [(start, min(start + 256, len(files))) for start in range(0, len(files), 256)]
    progress = Progress(f"decoding {what}/", len(files))
    done = 0
    if sys.platform == 'linux' and len(files) > 1000:
        # decoding is CPU-bound Python (threads would queue on the GIL): one process per core. Forked
        # children only run PIL and numpy, and inherit the list of files rather than receive it chunk by
        # chunk. Elsewhere (spawn) a child would run train.py again, so one core.
        try:
            with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context('fork'),
                                     initializer=start_decoder, initargs=(paths, images_path, shape, img_size)) as pool:
                for result in pool.map(decode_chunk, *zip(*chunks)):
                    failed.update(result)
                    done = min(done + 256, len(files))
                    progress.update(done)
        except BrokenProcessPool:
            die(f"a process decoding the {len(files)} pictures died (killed, or out of memory?); nothing was stored")
    else:
        start_decoder(paths, images_path, shape, img_size, in_process=True)
        for start, end in chunks:
            failed.update(decode_chunk(start, end))
            done = end
            progress.update(done)
        decoder.clear()  # the file's map closed before it is cut short below
    keep = [i for i in range(len(files)) if i not in failed]
    if len(keep) < len(files):  # close the gaps the broken pictures left, front to back, then cut the file short
        images = np.memmap(images_path, dtype=np.uint8, mode='r+', shape=shape)
        for new, old in enumerate(keep):
            if new != old:
                images[new] = images[old]
        images.flush()
        del images
        os.truncate(images_path, len(keep) * c * h * w)
    labels = torch.tensor([files[i][1] for i in keep], dtype=torch.long)
    broken = [(files[i][0], why, files[i][1]) for i, why in sorted(failed.items())]
    return (len(keep), c, h, w), labels, broken


decoder = {}  # what each decoding process works on: the files, and the images file it writes into


def start_decoder(paths, images_path, shape, size, in_process=False):
    if not in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to answer
    decoder.update(paths=paths, images=np.memmap(images_path, dtype=np.uint8, mode='r+', shape=shape), size=size)


def decode_chunk(start, end):
    """Decode pictures start..end straight into their rows of the images file; {index: why} for those that did not."""
    images, failed = decoder['images'], {}
    for i in range(start, end):
        pixels, why = decode_one(decoder['paths'][i], decoder['size'])
        if pixels is not None and pixels.shape[:2] != images.shape[2:]:
            pixels, why = None, (f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, its header says "
                                 f"{images.shape[3]}x{images.shape[2]}")
        if pixels is None:
            failed[i] = why
        else:
            images[i] = np.broadcast_to(pixels, images.shape[2:] + (images.shape[1],)).transpose(2, 0, 1)
    images.flush()
    return failed


def decode_one(path, size):
    try:
        return read_image(path, size, max_side=0 if size == 0 else 2048), None
    except ValueError as e:
        return None, str(e)


DATASETS = {
    'mnist': Dataset(partial(load_torchvision, 'MNIST'), shape=(1, 28, 28), digits=True),
    'fashion_mnist': Dataset(partial(load_torchvision, 'FashionMNIST'), shape=(1, 28, 28)),
    'cifar10': Dataset(partial(load_torchvision, 'CIFAR10'), shape=(3, 32, 32)),
    'folder': Dataset(load_folder),  # its shape is what the files say, or (C, img_size, img_size)
}


def get_dataset(name):
    if name not in DATASETS:
        die(f"unknown dataset={name!r}; choose from {', '.join(DATASETS)}", 2)
    return DATASETS[name]


def load_split(name, data_dir, train, img_size, like=None):
    """One split's store: its images uint8 (N, C, H, W), a view of the file on disk, labels int64 (N,), class
    names and pixel statistics. like: the training split's images, whose size this split must have."""
    split = get_dataset(name).load(os.path.expanduser(data_dir), train, img_size)
    if like is not None and split.images.shape[2:] != like.shape[2:]:
        die(f"the test pictures are {split.images.shape[-1]}x{split.images.shape[-2]}, the training pictures "
            f"{like.shape[-1]}x{like.shape[-2]}; set --img_size=N to bring both to N x N", 2)
    return split


DEVICE_SHARE = 0.25  # a dataset goes to the GPU whole when it takes at most this share of the GPU's memory


def place(split, device, placement):
    """(images, labels, 'device' or 'stream'): a split on the device whole, or left in its store on disk, each
    batch gathered from it. 'auto': whole on a GPU when it takes at most DEVICE_SHARE of its memory; on a CPU,
    streamed, which is no slower: the operating system keeps what fits of the file in memory, shared by every
    process that maps it, and nothing is copied into the process."""
    kind = device.split(':')[0]
    if placement == 'auto':
        memory = (torch.cuda.get_device_properties(device).total_memory if kind == 'cuda' else
                  torch.mps.recommended_max_memory() if kind == 'mps' else 0)
        placement = 'device' if split.images.nbytes <= DEVICE_SHARE * memory else 'stream'
    if placement == 'stream':
        return split.images, split.labels, placement
    return split.images.to(device, copy=True), split.labels.to(device), placement  # copy: a CPU copy leaves the file


class Prefetcher:
    """Batches streamed from a store to a GPU: a thread gathers the next batch's pictures from the file into
    pinned memory while the current one trains; the copy to the GPU does not block."""

    def __init__(self, images, labels, device):
        from concurrent.futures import ThreadPoolExecutor
        self.images, self.labels, self.device = images, labels, device
        self.thread = ThreadPoolExecutor(1)
        self.next = None  # (indices, future) of the batch gathered ahead

    def gather(self, idx):
        return self.images[idx].pin_memory(), self.labels[idx].pin_memory()

    def get(self, idx, following):
        if self.next is not None and torch.equal(self.next[0], idx):
            x, y = self.next[1].result()
        else:  # the first batch, or one asked for out of turn
            x, y = self.gather(idx)
        self.next = following, self.thread.submit(self.gather, following)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def match_channels(images, channels):
    """uint8 images (N, C, H, W) with channels channels: grey repeated as colour, colour made grey (ITU-R 601)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(dim=1, keepdim=True).round().to(torch.uint8)


# -----------------------------------------------------------------------------
# from uint8 pictures to what the model eats


def normalize(images, mean, std):
    """uint8 images, or floats already in [0, 1], (B, C, H, W) -> zero mean and unit variance per
    channel; mean and std are lists (or tensors) with one value per channel."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def affine(x, angle, zoom, shift_x, shift_y):
    """Rotate each image of x (B, C, H, W) by angle (radians), zoom it, and shift it by (shift_x, shift_y)
    pixels (right, down); each argument holds one value per image. What leaves the frame is lost,
    what enters is black (zero)."""
    B, _, H, W = x.shape
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    # affine_grid maps each output pixel to where it samples the input, in [-1, 1] units (a pixel is 2 / size)
    theta = torch.stack([torch.stack([cos, -sin, -shift_x * 2 / W], 1),
                         torch.stack([sin, cos, -shift_y * 2 / H], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def shift(x, dy, dx, pad):
    """Move each image of x (B, C, H, W) down by dy and right by dx whole pixels (one value per image, at
    most pad), filling with black: a crop of the image padded with zeros."""
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(H, device=x.device) + pad - dy[:, None])[:, None, :, None]
    cols = (torch.arange(W, device=x.device) + pad - dx[:, None])[:, None, None, :]
    return padded[torch.arange(B, device=x.device)[:, None, None, None], torch.arange(C, device=x.device)[None, :, None, None], rows, cols]


def augment_args(config):
    """augment()'s keyword arguments from a run's config: its aug_* keys."""
    return {k.removeprefix('aug_'): v for k, v in config.items() if k.startswith('aug_')}


def random_resized_crop(x, generator, min_scale, size):
    """Inception's and ImageNet's crop of each picture of x (B, C, H, W): a share of its area drawn from
    [min_scale, 1], an aspect ratio from [3/4, 4/3] (log-uniform), a place, then resized to size x size."""
    B = x.shape[0]
    u = torch.rand(4, B, device=x.device, generator=generator)
    area = min_scale + (1 - min_scale) * u[0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # halves of the side, in [-1, 1] units
    cx, cy = (1 - w) * (2 * u[2] - 1), (1 - h) * (2 * u[3] - 1)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [B, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def augment(x, generator, translate=0.0, rotate=0.0, scale=0.0, crop=0, flip=False, rrc_scale=0.0, size=None):
    """Random label-keeping changes to float images x (B, C, H, W), drawn per image from generator, on
    x's device: a random-resized crop to size x size (at least rrc_scale of the area), an affine map (shift
    up to translate pixels, rotation up to rotate degrees, zoom by up to scale), a shift by up to crop whole
    pixels (a random crop of the image padded by crop), and a mirror image half of the time."""
    B = x.shape[0]
    if rrc_scale:
        x = random_resized_crop(x, generator, rrc_scale, size or x.shape[-1])
    if translate or rotate or scale:
        u = torch.rand(4, B, device=x.device, generator=generator) * 2 - 1  # uniform in [-1, 1)
        x = affine(x, u[0] * math.radians(rotate), 1 + u[1] * scale, u[2] * translate, u[3] * translate)
    if crop:
        dy, dx = torch.randint(-crop, crop + 1, (2, B), device=x.device, generator=generator)
        x = shift(x, dy, dx, crop)
    if flip:
        mirrored = torch.rand(B, 1, 1, 1, device=x.device, generator=generator) < 0.5
        x = torch.where(mirrored, x.flip(3), x)
    return x


def tta_views(images, pixels):
    """What test-time augmentation looks at: images (B, C, H, W) and, for pixels > 0, 8 copies moved by
    pixels in every direction (the 3 x 3 neighbourhood of shifts), filled with black."""
    if not pixels:
        return [images]
    moves = [torch.full((images.shape[0],), m, device=images.device) for m in (-pixels, 0, pixels)]
    return [shift(images, dy, dx, pixels) for dy in moves for dx in moves]


def fit_size(x, size, crop=1.0):
    """Pictures x (B, C, H, W) at the side the model takes (bilinear, antialiased when shrinking): CIFAR-10's
    32 x 32 into a ViT pretrained at 224; crop < 1: the centre crop of that share of the side first (a store
    kept larger than the model's side, for random-resized crops, is tested on its centre, ImageNet's 0.875).
    Floats: a uint8 batch becomes floats in [0, 1]."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    if crop < 1:
        keep = round(x.shape[-1] * crop)
        top = (x.shape[-1] - keep) // 2
        x = x[..., top:top + keep, top:top + keep]
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False, antialias=x.shape[-1] > size)


def predict(model, images, mean, std, tta_shift=0, size=None, crop=1.0):
    """The logits an evaluation reports for images (uint8, or float in [0, 1]): the model's on the
    normalized images (at the model's side, size, cut as fit_size does), or with tta_shift > 0 their
    mean over tta_views."""
    views = tta_views(images, tta_shift)
    size = size or images.shape[-1]
    return sum(model(normalize(fit_size(view, size, crop), mean, std))[0].float() for view in views) / len(views)
