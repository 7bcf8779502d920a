"""Shared helpers: synthetic data (MNIST's IDX files, folders of pictures), the runs the tests share (each trained
once a session, then copied by the tests that change them), and running the scripts as a user would."""
import contextlib
import gc
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections import namedtuple

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


COLOURS = {'red': (220, 40, 40), 'green': (40, 200, 60), 'blue': (40, 60, 220)}


def make_picture_folder(root, per_class=(40, 12), size=(16, 16), seed=0, split_names=('train', 'test')):
    """An ImageFolder tree of colour pictures, one class per colour: a coloured square on a noisy grey
    background, at a random place. Returns root."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in zip(split_names, per_class):
        for name, colour in COLOURS.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                pixels = rng.integers(90, 160, (h, w, 3)).astype(np.uint8)
                y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
                pixels[y:y + h // 2, x:x + w // 2] = colour
                Image.fromarray(pixels).save(os.path.join(root, split, name, f'{i:03d}.png'))
    return root


def grey_folder(root, sizes=(('train', 28), ('test', 28)), n=12):
    """A folder dataset of two classes of grey pictures (plain shades), n a class in each split, at the sides given."""
    from PIL import Image
    for split, side in sizes:
        for c in ('a', 'b'):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                Image.new('L', (side, side), 40 * i % 255 if c == 'a' else 255 - 20 * i).save(
                    os.path.join(root, split, c, f'{i}.png'))
    return str(root)


def png_claiming(path, width, height):
    """A valid tiny PNG whose header claims width x height (a decompression bomb's header)."""
    from PIL import Image
    Image.new('L', (4, 4)).save(path)
    blob = bytearray(open(path, 'rb').read())
    blob[16:24] = struct.pack('>II', width, height)  # IHDR data starts after the 8-byte signature, length, type
    blob[29:33] = struct.pack('>I', zlib.crc32(bytes(blob[12:29])))
    open(path, 'wb').write(bytes(blob))
    return path


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    return make_mnist_dir(str(tmp_path_factory.mktemp('data')))


# a model small enough to train in seconds on a CPU
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--patch_size=7', '--batch_size=32', '--eval_batch_size=250',
        '--device=cpu', '--compile=False', '--dtype=float32', '--plot=False']
FAST = TINY + ['--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--log_interval=10']


Run = namedtuple('Run', 'out stdout args')  # a finished run: its out_dir, what it printed, its train.py arguments


@pytest.fixture(scope='session')
def trained_run(synthetic_data, tmp_path_factory):
    """The run the tests share: 200 iterations on the synthetic digits (about 95% test accuracy), curves drawn.
    A test that changes anything works on a copy (copy_of_run)."""
    cwd = tmp_path_factory.mktemp('trained')
    args = [*FAST, f'--data_dir={synthetic_data}', '--max_iters=200', '--eval_interval=100']
    result = run_script('train.py', *args, '--out_dir=out', '--plot=True', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return Run(cwd / 'out', result.stdout, args)


@pytest.fixture
def copy_of_run(trained_run, tmp_path):
    """A copy of the shared run in tmp_path/out, to edit, resume, or break."""
    shutil.copytree(trained_run.out, tmp_path / 'out')
    return tmp_path / 'out'


@pytest.fixture(scope='session')
def colour_run(tmp_path_factory):
    """A short run on a folder of colour pictures of 3 classes (16 x 16), about 100% test accuracy."""
    cwd = tmp_path_factory.mktemp('colour')
    root = make_picture_folder(str(cwd / 'pictures'), per_class=(100, 20))
    args = [*FAST, '--dataset=folder', f'--data_dir={root}', '--patch_size=4', '--max_iters=60', '--eval_interval=60',
            '--aug_crop=2', '--aug_flip=True']
    result = run_script('train.py', *args, '--out_dir=out', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return Run(cwd / 'out', result.stdout, args)


@pytest.fixture(scope='session', autouse=True)
def private_cache(tmp_path_factory):
    """The tests decode folder datasets into a cache of their own, never the user's ~/.cache."""
    before = os.environ.get('XDG_CACHE_HOME')
    os.environ['XDG_CACHE_HOME'] = str(tmp_path_factory.mktemp('cache'))
    yield os.environ['XDG_CACHE_HOME']
    if before is None:
        del os.environ['XDG_CACHE_HOME']
    else:
        os.environ['XDG_CACHE_HOME'] = before


def run_script(script, *args, cwd, timeout=300, env=None):
    """Run one of the repo's scripts in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_here(monkeypatch, capsys):
    """Run one of the repo's scripts in this process, as `python script args` in cwd would, and return what
    run_script returns (with keep_globals, the script's globals as .globals, however it ended). For runs that stop early
    or train for seconds: a fresh interpreter (torch's import) costs more than they do. What the script changes
    of this process (cwd, argv, signal handlers) is put back."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def run(script, *args, cwd, env=None, keep_globals=False):
        path = os.path.join(REPO, script)
        streams = sys.stdout, sys.stderr  # train.py copies what it prints into its log.txt: put back after it
        with monkeypatch.context() as m:
            m.chdir(cwd)
            m.setattr(sys, 'argv', [path, *args])
            # train.py leaves with os._exit (no interpreter teardown), which would end the tests' process too
            m.setattr('support.safety.leave', lambda code, ddp, run_log=None: (run_log and run_log.close(), sys.exit(code)))
            for key, value in (env or {}).items():
                m.setenv(key, value)
            finished = {'__name__': '__main__', '__file__': path}
            try:
                with open(path) as f:
                    exec(compile(f.read(), path, 'exec'), finished)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            finally:
                for s, handler in handlers.items():
                    signal.signal(s, handler)
                sys.stdout, sys.stderr = streams
        finished = finished if keep_globals else None
        gc.collect()  # the script's globals hold its out_dir lock: free them now, as a process's end would
        out, err = capsys.readouterr()
        result = subprocess.CompletedProcess([script, *args], code, out, err)
        result.globals = finished
        return result
    return run


def start_script(script, *args, cwd, python_args=(), env=None):
    """Start one of the repo's scripts and return the Popen, its stdout a text pipe, for tests that
    act on a run while it is going (signals, kills)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.Popen([sys.executable, *python_args, os.path.join(REPO, script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# train.py run as `python -c HOOK train.py args`, changed by a hook before it runs
RUN_WITH_HOOK = """
import io, os, runpy, sys, time, torch
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python train.py` would
{hook}
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@contextlib.contextmanager
def small_disk(path, megabytes, read_only=False):
    """A real file system of its own at path: a tmpfs of that size (read_only: remounted read-only once the
    body's first part is done, see mount_read_only). Skips where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={megabytes}m', 'tmpfs', str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], capture_output=True)


def remount_read_only(path):
    result = subprocess.run(['mount', '-o', 'remount,ro', str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def children(pid):
    """The pids of a process's children (Linux)."""
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def wait_for_line(process, prefix):
    """Read the process's stdout until a line starts with prefix; returns the lines read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the run ended without printing {prefix!r}:\n{''.join(lines)}{process.stderr.read()}")


Split = namedtuple('Split', 'images labels classes path')


def load_split(name, data_dir, split, size=0):
    """A split of a dataset as train.py finds and prepares it: its pictures, labels, classes and where it is prepared."""
    import prepare
    data = prepare.load(prepare.find(name, data_dir, size))
    return Split(*getattr(data, split), data.classes, data.path)


def final_eval(out_dir):
    """The last evaluation record of a run's metrics.jsonl."""
    return [r for r in read_jsonl(os.path.join(out_dir, 'metrics.jsonl')) if 'test_acc' in r][-1]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def losses(out_dir):
    """{iter: training loss} from a run's metrics.jsonl."""
    return {r['iter']: r['loss'] for r in read_jsonl(os.path.join(out_dir, 'metrics.jsonl')) if 'loss' in r}


def assert_one_line_error(result, message, code=None):
    """The script stopped with exactly one line on stderr holding message, and no traceback."""
    assert result.returncode != 0 if code is None else result.returncode == code, (result.returncode, result.stderr)
    assert message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
