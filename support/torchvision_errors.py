"""
Why a torchvision dataset would not load, said as the file at fault and what is wrong with it: a missing or
truncated IDX file (MNIST's format), a CIFAR-10 folder that is not there offline, labels outside the classes.
"""
import math
import os
import struct

import torch

from support.errors import die


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
