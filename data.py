"""
Every dataset nanoViT trains on, one entry each, and how its pictures become batches.
A split is found first, from its files' names and headers alone (find_split), so that whatever can be
checked without a pixel is; its pictures are then decoded once into a picture store on disk
(support/store.py: uint8 (N, C, H, W) read through a memory map) that every later run maps. Batches are
gathered from the store, or from a copy of it on the GPU, then augmented and normalized on the device.
To add a dataset: a finder, an entry in DATASETS and a config file (README, "Add a dataset").
"""
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable

import torch
from torch.nn import functional as F

from support.errors import die
from support.pictures import GREY_WEIGHTS, IMAGE_EXTENSIONS, decode_pictures, pictures_below, survey
from support.store import Store, files_key, load_or_build, open_store, store_path
from support.torchvision_errors import check_labels, why_torchvision_failed

# -----------------------------------------------------------------------------
# the datasets


@dataclass
class Split:
    """One split of a dataset as its files describe it, before a pixel is decoded. load() returns its picture
    store, decoding the files into it first unless a store made from these very files is there already."""
    classes: list
    shape: tuple  # (C, H, W) of its pictures in the store
    path: str  # where its store lives
    key: str  # what its store must have been made from
    n: int  # the pictures found (a few broken ones may be left out of the store)
    fill: Callable  # writes them into a new store's images (support/store.py, load_or_build)
    stored: Store = None  # the store, when one made from these very files was found

    def load(self):
        return load_or_build(self.path, self.key, self.classes, (self.n, *self.shape), self.fill, self.stored)


TORCHVISION_FOLDERS = {'MNIST': 'MNIST/raw', 'FashionMNIST': 'FashionMNIST/raw', 'CIFAR10': 'cifar-10-batches-py'}


def find_torchvision(name, data_dir, split, size):
    """MNIST, FashionMNIST or CIFAR10 through torchvision, downloaded into data_dir once. Their pictures are
    kept at their own size (size is for folders): a model of another side gets each batch resized."""
    folder = os.path.join(data_dir, TORCHVISION_FOLDERS[name])
    path = store_path(data_dir, f"{name}-{split}", 0)
    # a store made from these very files: torchvision is neither imported nor asked to read them (seconds saved)
    files = [(os.path.join(folder, f), os.stat(os.path.join(folder, f))) for f in sorted(os.listdir(folder))] \
        if os.path.isdir(folder) else []
    stored = open_store(path, files_key(folder, files, 0), None) if files else None
    if stored:
        return Split(stored.classes, tuple(stored.images.shape[1:]), path, files_key(folder, files, 0),
                     len(stored.labels), None, stored)
    import torchvision
    cls = getattr(torchvision.datasets, name)
    try:
        ds = cls(data_dir, train=split == 'train', download=True)  # downloads nothing when the files are there
    except Exception as e:
        die(f"could not load the {name} {split} split from {data_dir}: {why_torchvision_failed(cls, data_dir, split == 'train', e)}")
    images = torch.as_tensor(ds.data)  # already in memory: torchvision reads the files whole
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # MNIST / CIFAR
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    label_file = os.path.join(folder, f"{'train' if split == 'train' else 't10k'}-labels-idx1-ubyte") \
        if name != 'CIFAR10' else folder
    check_labels(labels, len(ds.classes), label_file)
    files = [(os.path.join(folder, f), os.stat(os.path.join(folder, f))) for f in sorted(os.listdir(folder))]

    def fill(store_images):
        store_images[:] = images.numpy()
        return len(images), labels, ''
    return Split(list(ds.classes), tuple(images.shape[1:]), path, files_key(folder, files, 0), len(images), fill)


# folder datasets: data_dir/train/<class>/* and data_dir/test/<class>/* (or val/)
FOLDER_LAYOUT = "data_dir/train/<class>/<image> and data_dir/test/<class>/<image> (val/ is taken for test/)"
# a few broken pictures are skipped; more than this share of them, and the folder is probably not what was meant
MAX_BROKEN_SHARE = 0.1


def split_dir(data_dir, split):
    names = ('train',) if split == 'train' else ('test', 'val')
    for name in names:
        if os.path.isdir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    die(f"no {' or '.join(n + '/' for n in names)} in data_dir={data_dir!r}; a folder dataset is laid out as {FOLDER_LAYOUT}")


def class_names(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith('.'))


def check_classes(data_dir, root, classes):
    """Stop when the class folders of root are not the training split's."""
    theirs = class_names(root)
    if theirs == classes:
        return
    loose = [n for n in os.listdir(root) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not theirs and loose:
        die(f"{root} holds {len(loose)} pictures but no class folders: sort them into {root}/<class>/ as in train/ "
            f"(ImageNet's validation pictures: by their label file, e.g. with valprep.sh)")
    differ = [f"{c!r} only in train/" for c in classes if c not in theirs]
    differ += [f"{c!r} only in {os.path.basename(root)}/" for c in theirs if c not in classes]
    die(f"the class folders of {data_dir} differ between the splits: {', '.join(differ)}")


def find_folder(data_dir, split, size):
    """A split of an ImageFolder-style tree: its class folders, its pictures and their shape from the headers."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(data_dir):
        die(f"data_dir={data_dir!r} is not a folder; a folder dataset is laid out as {FOLDER_LAYOUT}")
    train_root, root = split_dir(data_dir, 'train'), split_dir(data_dir, split)
    classes = class_names(train_root)
    if not classes:
        die(f"{train_root} has no class folders; a folder dataset is laid out as {FOLDER_LAYOUT}")
    if split != 'train':
        check_classes(data_dir, root, classes)
    files, labels, left_out = [], [], []
    for label, c in enumerate(classes):
        pictures, others = pictures_below(os.path.join(root, c))
        if not pictures:
            die(f"class folder {os.path.join(root, c)} holds no pictures ({', '.join(IMAGE_EXTENSIONS)})")
        files += pictures
        labels += [label] * len(pictures)
        left_out += others
    if left_out:
        shown = ', '.join(os.path.relpath(p, data_dir) for p in left_out[:3]) + (', ...' if len(left_out) > 3 else '')
        print(f"note: left out {len(left_out)} files in {root} that are not pictures by their name or not regular "
              f"files ({shown})")
    path, key = store_path(data_dir, os.path.basename(root), size), files_key(root, files, size, classes)
    paths = [p for p, _ in files]
    stored = open_store(path, key, classes)
    shape = tuple(stored.images.shape[1:]) if stored else survey(paths, size)[0]  # the headers, when not stored
    fill = partial(decode_folder, paths=paths, labels=torch.tensor(labels), classes=classes, size=size, root=root,
                   data_dir=data_dir)
    return Split(classes, shape, path, key, len(paths), fill, stored)


def decode_folder(images, paths, labels, classes, size, root, data_dir):
    """A folder split's fill for its store: decode every picture, skip and name the broken ones (unless they are
    too many to be a few damaged files), close the gaps they leave."""
    t0 = time.time()
    failed = decode_pictures(images, paths, size, os.path.basename(root))
    broken = [(paths[i], why, labels[i].item()) for i, why in sorted(failed.items())]
    keep = torch.tensor([i for i in range(len(paths)) if i not in failed], dtype=torch.long)
    readable = torch.bincount(labels[keep], minlength=len(classes))
    for label, c in enumerate(classes):
        if readable[label] == 0:
            die(f"class folder {os.path.join(root, c)} holds no readable picture, for instance "
                f"{next(os.path.relpath(p, data_dir) + f' ({why})' for p, why, l in broken if l == label)}")
    note = ''
    if broken:
        listed = '; '.join(f"{os.path.relpath(p, data_dir)} ({why})" for p, why, _ in broken[:5])
        more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
        if len(broken) > 2 and len(broken) > MAX_BROKEN_SHARE * len(paths):
            die(f"{len(broken)} of the {len(paths)} pictures in {root} do not decode, too many to be a few damaged "
                f"files (is it the folder you meant?): {listed}{more}")
        note = f"skipped {len(broken)} of the {len(paths)} pictures in {root} that do not decode: {listed}{more}"
        print(f"note: {note}")
    for new, old in enumerate(keep.tolist()):  # close the gaps the broken pictures left, front to back
        if new != old:
            images[new] = images[old]
    print(f"{os.path.basename(root)}/: decoded {len(keep)} pictures in {time.time() - t0:.1f}s")
    return len(keep), labels[keep], note


@dataclass(frozen=True)
class Dataset:
    find: Callable  # (data_dir, split, size) -> Split
    shape: tuple = None  # (C, H, W) of its images, when known without reading the files
    digits: bool = False  # handwritten digits: never mirrored; sample.py --image makes a picture look like one


DATASETS = {
    'mnist': Dataset(partial(find_torchvision, 'MNIST'), shape=(1, 28, 28), digits=True),
    'fashion_mnist': Dataset(partial(find_torchvision, 'FashionMNIST'), shape=(1, 28, 28)),
    'cifar10': Dataset(partial(find_torchvision, 'CIFAR10'), shape=(3, 32, 32)),
    'folder': Dataset(find_folder),  # its shape is what the files say, or (C, size, size)
}


def get_dataset(name):
    if name not in DATASETS:
        die(f"unknown dataset={name!r}; choose from {', '.join(DATASETS)}", 2)
    return DATASETS[name]


def find_split(name, data_dir, split, size):
    """One split of dataset name ('train' or 'test'), its pictures kept at side size (0: their own), not yet decoded."""
    return get_dataset(name).find(os.path.expanduser(data_dir), split, size)


def find_splits(name, data_dir, size):
    """The training and test splits, which must hold pictures of one size."""
    train, test = (find_split(name, data_dir, split, size) for split in ('train', 'test'))
    if train.shape[1:] != test.shape[1:]:
        die(f"the test pictures are {test.shape[2]}x{test.shape[1]}, the training pictures "
            f"{train.shape[2]}x{train.shape[1]}; set --img_size=N to bring both to N x N", 2)
    return train, test


def hold_out(n, val_size):
    """(training indices, validation indices) of a split of n pictures: val_size of them held out to choose settings
    on, the same ones for every run and seed (a fixed shuffle), so that the test split is left for the final figure."""
    if not 0 <= val_size < n:
        die(f"val_size={val_size} must be 0 or more and leave training pictures (the training split has {n})", 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[val_size:].sort().values, order[:val_size].sort().values


DEVICE_SHARE = 0.25  # a split goes to the GPU whole when it takes at most this share of the GPU's memory


def fits_on_device(nbytes, device, data_placement):
    """Whether a split of nbytes goes to the device whole ('device') or stays in its store, each batch gathered
    from it ('stream'). 'auto': whole on a GPU when it takes at most DEVICE_SHARE of its memory; on a CPU,
    streamed, which is no slower: the operating system keeps what fits of the file in memory, shared by every
    process that maps it, and nothing is copied into the process."""
    if data_placement != 'auto':
        return data_placement == 'device'
    kind = device.split(':')[0]
    memory = (torch.cuda.get_device_properties(device).total_memory if kind == 'cuda' else
              torch.mps.recommended_max_memory() if kind == 'mps' else 0)
    return nbytes <= DEVICE_SHARE * memory

# -----------------------------------------------------------------------------
# from uint8 pictures to what the model takes


def to_unit(x):
    """uint8 pictures as floats in [0, 1]; floats pass through."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def match_channels(x, channels):
    """Pictures (B, C, H, W) with channels channels: grey repeated as colour, colour made grey (ITU-R 601)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return (to_unit(x) * torch.tensor(GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def normalize(x, mean, std):
    """Pictures (B, C, H, W), uint8 or floats in [0, 1], to zero mean and unit variance per channel."""
    x = to_unit(x)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def resize(x, size):
    """Pictures (B, C, H, W) at size x size: bilinear, antialiased when shrinking (CIFAR-10 into a ViT at 224)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False, antialias=x.shape[-1] > size)


def centre_crop(x, share):
    """The centre of pictures (B, C, H, W), share of the side: ImageNet's test crop (0.875) of a store kept larger."""
    keep = round(x.shape[-1] * share)
    top = (x.shape[-1] - keep) // 2
    return x[..., top:top + keep, top:top + keep]


@dataclass
class ModelInput:
    """How pictures become the model's input: its channels, a centre crop (crop < 1: of a store kept larger than
    the model's side), its side, the normalization its weights were trained with (per channel, on device)."""
    channels: int
    size: int
    mean: list
    std: list
    crop: float = 1.0
    device: str = 'cpu'

    def __post_init__(self):
        self.mean, self.std = (torch.as_tensor(s, dtype=torch.float32, device=self.device) for s in (self.mean, self.std))

    def __call__(self, x, centre=True):
        x = match_channels(to_unit(x), self.channels)
        if centre and self.crop < 1:
            x = centre_crop(x, self.crop)
        return normalize(resize(x, self.size), self.mean, self.std)


def tta_views(images, pixels):
    """What test-time augmentation looks at: images (B, C, H, W) and, for pixels > 0, 8 copies moved by
    pixels in every direction (the 3 x 3 neighbourhood of shifts), filled with black: windows of the padded
    pictures (one move for all, where augmentation's shift moves each picture its own way)."""
    if not pixels:
        return [images]
    H, W = images.shape[-2:]
    padded = F.pad(images, (pixels, pixels, pixels, pixels))
    return [padded[..., top:top + H, left:left + W] for top in (2 * pixels, pixels, 0) for left in (2 * pixels, pixels, 0)]


def predict(model, images, model_input, tta_shift=0):
    """The logits an evaluation reports for uint8 images: the model's, or with tta_shift > 0 their mean over the
    tta_views (shifted before the model's crop and resize, as the training augmentation shifts)."""
    views = tta_views(images, tta_shift)
    return sum(model(model_input(view))[0].float() for view in views) / len(views)

# -----------------------------------------------------------------------------
# augmentation: random label-keeping changes, on the device, drawn per picture from a generator


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
    """Float pictures x (B, C, H, W) changed at random: a random-resized crop to size x size (at least rrc_scale of
    the area), an affine map (shift up to translate pixels, rotation up to rotate degrees, zoom by up to scale), a
    shift by up to crop whole pixels (a random crop of the picture padded by crop), a mirror image half of the time."""
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


def augment_args(config):
    """augment()'s keyword arguments from a run's config: its aug_* keys."""
    return {k.removeprefix('aug_'): v for k, v in config.items() if k.startswith('aug_')}

# -----------------------------------------------------------------------------
# the training batches


class Batches:
    """The training batches of a run. Each is a function of (seed, iteration, micro-step) alone: one shuffle of
    the training pictures per epoch, the same on every process (each takes its own slice of a batch), and the
    augmentation seeded by the draw's place in the run. A resumed run draws exactly what it would have, with
    nothing saved. Pictures come from the split on the device, or from its store (on a GPU: gathered into
    pinned memory by a thread while the batch before trains)."""

    def __init__(self, images, labels, indices, batch_size, accumulation, rank, world_size, seed, aug_args,
                 model_input, device):
        self.images, self.labels, self.indices = images, labels, indices.to(images.device)
        self.batch_size, self.accumulation, self.rank, self.world_size = batch_size, accumulation, rank, world_size
        self.seed, self.aug_args, self.model_input, self.device = seed, aug_args, model_input, device
        self.global_batch = batch_size * accumulation * world_size
        self.steps_per_epoch = len(indices) // self.global_batch
        if self.steps_per_epoch == 0:
            die(f"batch_size={batch_size} x gradient_accumulation_steps x processes = {self.global_batch} "
                f"is larger than the {len(indices)} training images", 2)
        self.generator = torch.Generator(device=device)
        streamed_to_gpu = images.device.type == 'cpu' and device.startswith('cuda')
        self.prefetch = ThreadPoolExecutor(1) if streamed_to_gpu else None
        self.ahead = None  # (indices, future) of the batch gathered ahead

    def draw_seed(self, prime, index):
        # a generator seed for each (run seed, index): seed * prime + index never repeats for an index below the
        # prime, and each stream of draws (batch order, augmentation) has a prime of its own
        return (self.seed * prime + index) % 2 ** 64

    @lru_cache(maxsize=1)
    def epoch_order(self, epoch):
        generator = torch.Generator().manual_seed(self.draw_seed(1_000_003, epoch))
        return self.indices[torch.randperm(len(self.indices), generator=generator).to(self.indices.device)]

    def picture_indices(self, it, micro_step):
        epoch, step = divmod(it, self.steps_per_epoch)
        start = step * self.global_batch + (micro_step * self.world_size + self.rank) * self.batch_size
        return self.epoch_order(epoch)[start:start + self.batch_size]

    def gather(self, idx):
        return self.images[idx].pin_memory(), self.labels[idx].pin_memory()

    def pictures(self, it, micro_step):
        """Batch (it, micro_step)'s uint8 pictures and labels, on the device."""
        idx = self.picture_indices(it, micro_step)
        if not self.prefetch:
            return self.images[idx].to(self.device), self.labels[idx].to(self.device)
        if self.ahead is not None and torch.equal(self.ahead[0], idx):
            x, y = self.ahead[1].result()
        else:  # the first batch, or one asked for out of turn
            x, y = self.gather(idx)
        following = (it, micro_step + 1) if micro_step + 1 < self.accumulation else (it + 1, 0)
        following = self.picture_indices(*following)
        self.ahead = following, self.prefetch.submit(self.gather, following)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def get(self, it, micro_step):
        """Batch (it, micro_step) as the model takes it: (pictures, labels)."""
        x, y = self.pictures(it, micro_step)
        x = to_unit(x)
        if any(self.aug_args.values()):
            draw = (it * self.accumulation + micro_step) * self.world_size + self.rank
            self.generator.manual_seed(self.draw_seed(1_000_033, draw))
            x = augment(x, self.generator, size=self.model_input.size, **self.aug_args)
        return self.model_input(x, centre=not self.aug_args['rrc_scale']), y  # a random-resized crop is the model's size
