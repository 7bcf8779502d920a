"""Shared helpers: synthetic MNIST-format data, and running the scripts as a user would."""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_idx(path, array):
    """Write a uint8 array in MNIST's IDX layout: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, data."""
    with open(path, 'wb') as f:
        f.write(struct.pack('>BBBB', 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f'>{array.ndim}I', *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def synthetic_digits(n, seed):
    """n 28x28 images in 10 easily told apart classes: class c is a bright bar at row 2 + 2c,
    jittered by a pixel, over faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, c in enumerate(labels):
        row = 2 + 2 * c + rng.integers(0, 2)
        col = rng.integers(2, 6)
        images[i, row:row + 2, col:col + 20] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist_dir(root, n_train=2000, n_test=500):
    raw = os.path.join(root, 'MNIST', 'raw')
    os.makedirs(raw, exist_ok=True)
    for prefix, n, seed in (('train', n_train, 0), ('t10k', n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(os.path.join(raw, f'{prefix}-images-idx3-ubyte'), images)
        write_idx(os.path.join(raw, f'{prefix}-labels-idx1-ubyte'), labels)
    return root


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    return make_mnist_dir(str(tmp_path_factory.mktemp('data')))


# a model small enough to train in seconds on a CPU
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--patch_size=7', '--batch_size=32', '--eval_batch_size=250',
        '--device=cpu', '--compile=False', '--dtype=float32', '--plot=False']


def run_script(script, *args, cwd, timeout=300, env=None):
    """Run one of the repo's scripts in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def start_script(script, *args, cwd):
    """Start one of the repo's scripts and return the Popen, its stdout a text pipe, for tests that
    act on a run while it is going (signals, kills)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process, prefix):
    """Read the process's stdout until a line starts with prefix; returns the lines read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the run ended without printing {prefix!r}:\n{''.join(lines)}{process.stderr.read()}")
