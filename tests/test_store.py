"""support/store.py: a split decoded once into its store, and the store checked for everything it claims:
rebuilt when damaged or made from other files, never half-made (a full disk, Ctrl-C), built once by two
processes, statistics counted from it."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

import data
from conftest import (COLOURS, REPO, RUN_WITH_HOOK, TINY, assert_one_line_error, children, grey_folder, load_split,
                      make_picture_folder, remount_read_only, run_script, small_disk, start_script, wait_for_line)
from support import pictures, store
from support.store import Progress, channel_stats

FOLDER = TINY + ['--dataset=folder', '--max_iters=4', '--eval_interval=4', '--log_interval=2']


def test_folder_dataset_is_decoded_once_into_a_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'))
    store = load_split('folder', root, 'train')
    images, labels = store.images, store.labels
    assert store.classes == sorted(COLOURS) and images.shape == (120, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(3) for _ in range(40)]
    # the pictures' colours came through: class 'red' has the most red
    assert images[labels == 2, 0].float().mean() > images[labels == 0, 0].float().mean()
    # a view of the file, not a copy in memory; statistics counted once, as the pictures'
    assert os.path.getsize(os.path.join(store.path, 'images.u8')) == images.numel()
    assert np.allclose(store.mean, (images.double() / 255).mean(dim=(0, 2, 3)).tolist())
    assert 'decoded 120 pictures' in capsys.readouterr().out
    assert not any('nanovit' in name or 'store' in name for name in os.listdir(root))  # never written into data_dir
    again = load_split('folder', root, 'train')
    assert 'decoded' not in capsys.readouterr().out and torch.equal(again.images, images)
    # a changed file makes a new store; a damaged store is built again, never trained on
    Image.new('RGB', (16, 16), 'white').save(os.path.join(root, 'train', 'red', '000.png'))
    assert load_split('folder', root, 'train').images[80].float().mean() == 255  # red is the third class
    assert 'decoded 120 pictures' in capsys.readouterr().out
    images_file = os.path.join(store.path, 'images.u8')
    os.truncate(images_file, 1000)
    assert torch.equal(load_split('folder', root, 'train').labels, labels)
    out = capsys.readouterr().out
    assert 'is damaged, of another version or made from other files' in out and 'decoded 120 pictures' in out


def test_a_picture_changed_with_its_size_and_time_kept_is_decoded_again(tmp_path):
    root = grey_folder(tmp_path / 'bmp', n=3)
    path = os.path.join(root, 'train', 'a', '0.png')
    bmp = path.replace('.png', '.bmp')
    Image.new('L', (28, 28), 0).save(bmp)  # BMP: the same size on disk whatever the pixels
    before = os.stat(bmp)
    images = load_split('folder', root, 'train').images.clone()
    Image.new('L', (28, 28), 255).save(bmp)
    os.utime(bmp, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r: the old modification time
    assert os.path.getsize(bmp) == before.st_size
    again = load_split('folder', root, 'train').images
    assert not torch.equal(again, images) and again.max() == 255


def test_a_full_disk_while_writing_the_store_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, run_here):
    root = grey_folder(tmp_path / 'full', n=3)
    real = store.channel_stats

    def disk_full(images):  # the pictures are written: the statistics' file is what the disk refuses
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(store, 'channel_stats', disk_full)
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', cwd=tmp_path)
    assert_one_line_error(result, 'could not write the picture store')
    assert 'No space left on device; nothing half-made is left, the next start builds it again' in result.stderr
    cache = os.path.join(os.environ['XDG_CACHE_HOME'], 'nanovit')
    assert not [name for name in os.listdir(cache) if name.startswith('full-') and not name.endswith('.lock')]
    monkeypatch.setattr(store, 'channel_stats', real)
    assert load_split('folder', root, 'train').images.shape == (6, 1, 28, 28)


@pytest.mark.parametrize('damage', ['label -1', 'fewer labels', 'two channels', 'float labels', 'a class missing',
                                    'another version', 'other files'])
def test_a_store_is_checked_for_everything_it_claims(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'pics', n=3)
    first = load_split('folder', root, 'train')
    images, labels = first.images.clone(), first.labels.clone()
    meta_path, labels_path = os.path.join(first.path, 'meta.json'), os.path.join(first.path, 'labels.i64')
    meta = json.load(open(meta_path))
    if damage == 'label -1':
        bad = labels.clone()
        bad[0] = -1
        bad.numpy().tofile(labels_path)
    elif damage == 'fewer labels':
        labels[:-1].numpy().tofile(labels_path)
    elif damage == 'two channels':
        meta['shape'][1] = 2
    elif damage == 'float labels':
        labels.double().numpy().tofile(labels_path)
    elif damage == 'a class missing':
        torch.zeros_like(labels).numpy().tofile(labels_path)
    elif damage == 'another version':
        meta['version'] = -1
    else:
        meta['key'] = 'made from other files'
    json.dump(meta, open(meta_path, 'w'))
    capsys.readouterr()
    again = load_split('folder', root, 'train')
    assert 'is damaged, of another version or made from other files' in capsys.readouterr().out
    assert torch.equal(again.images, images) and torch.equal(again.labels, labels)


def test_a_store_deleted_under_a_running_run_changes_nothing_for_it(tmp_path, run_here, monkeypatch):
    root = grey_folder(tmp_path / 'gone', n=12)
    real_fits = data.fits_on_device

    def delete_then_decide(*args):
        # as a user cleaning ~/.cache mid-run would: the open maps keep the pictures readable
        shutil.rmtree(os.path.join(os.environ['XDG_CACHE_HOME'], 'nanovit'))
        return real_fits(*args)
    monkeypatch.setattr(data, 'fits_on_device', delete_then_decide)
    result = run_here('train.py', *FOLDER, '--batch_size=8', f'--data_dir={root}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_two_processes_building_one_store_decode_it_once(tmp_path, monkeypatch):
    # as torchrun's processes on a node, or two runs started at once: one builds, the other waits, then maps it
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    script = (f"import sys; sys.path.insert(0, {REPO!r}); from data import find_split; "
              f"print(find_split('folder', {root!r}, 'train', 0).load().images.float().mean().item())")
    both = [subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in both]
    assert all(p.returncode == 0 for p in both)
    assert sum('decoded 120 pictures' in out for out in outputs) == 1
    assert len({out.splitlines()[-1] for out in outputs}) == 1  # the same pictures


def test_a_long_decode_shows_its_progress(capsys, monkeypatch):
    clock = iter([0.0, 20.0, 20.1, 40.0])
    monkeypatch.setattr('support.store.time.time', lambda: next(clock))
    progress = Progress('decoding train/', 1000)
    progress.update(500)  # 20 s in: 25 a second, 20 s left
    progress.update(510)  # too soon for a log file's next line
    progress.update(1000)
    assert capsys.readouterr().out.splitlines() == ['decoding train/: 500/1000, 25 a second, 20s left',
                                                    'decoding train/: 1000/1000, 25 a second, 0s left']


def test_channel_stats_are_the_pictures_mean_and_std():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8)
    images[:, 1] //= 4  # a darker channel
    mean, std = channel_stats(images)
    pixels = images.double() / 255
    assert np.allclose(mean, pixels.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(std, pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-9)


def test_a_constant_channel_is_centred_not_divided_by_zero(capsys):
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    images[:, 1] = 77
    mean, std = channel_stats(images)
    assert std[1] == 1.0 and mean[1] == pytest.approx(77 / 255) and all(np.isfinite(std))
    assert 'note: channel 1 of the training pictures is constant (77)' in capsys.readouterr().out


def test_ctrl_c_while_building_the_store_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'stop', n=3)
    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C lands in the main process, mid-decode
    monkeypatch.setattr(pictures, 'decode_chunk', interrupted)
    with pytest.raises(SystemExit) as stop:
        load_split('folder', root, 'train')
    assert stop.value.code == 130 and 'stopped while building the picture store' in capsys.readouterr().err
    assert [n for n in os.listdir(tmp_path / 'cache' / 'nanovit') if not n.endswith('.lock')] == []


# -----------------------------------------------------------------------------
# faults: kills, a full disk, a damaged or read-only store, a store cut short under a run

# every picture takes 20 ms more to decode: time to act on a run while its decoders work
SLOW_DECODE = RUN_WITH_HOOK.format(hook="""
import support.pictures as pictures
real_read = pictures.read_image
def slow_read(*args, **kwargs):
    time.sleep(0.02)
    return real_read(*args, **kwargs)
pictures.read_image = slow_read
""")


def many_pictures(root, per_class=600):
    """Two classes of tiny pictures, more than 1000 in all: a pool of processes decodes them."""
    for split, n in (('train', per_class), ('test', 10)):
        for c in ('a', 'b'):
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                Image.new('L', (8, 8), i % 256).save(root / split / c / f'{i}.png')
    return root


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split()[2] != 'Z'  # a zombie has ended
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_while_decoding_leaves_no_decoder_and_no_lock(signum, tmp_path):
    root = many_pictures(tmp_path / 'many')
    cache = tmp_path / 'cache'
    args = [*FOLDER, '--patch_size=4', f'--data_dir={root}', '--out_dir=out']
    process = start_script('train.py', *args, cwd=tmp_path, python_args=('-c', SLOW_DECODE),
                           env={'XDG_CACHE_HOME': str(cache)})
    for _ in range(600):  # the decoders are forked
        decoders = children(process.pid)
        if len(decoders) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    for _ in range(100):  # they die with it
        if not any(alive(pid) for pid in decoders):
            break
        time.sleep(0.05)
    assert decoders and not any(alive(pid) for pid in decoders), decoders
    left = [name for name in os.listdir(cache / 'nanovit') if name.endswith('.tmp')]
    if signum == signal.SIGTERM:  # Colab's stop button: the same one line as Ctrl-C, and nothing left
        assert process.returncode == 128 + signal.SIGTERM
        assert_one_line_error(subprocess.CompletedProcess([], process.returncode, '', stderr),
                              'stopped while building the picture store')
        assert left == []
    else:
        assert process.returncode == -signal.SIGKILL and len(left) == 1  # a kill -9 cleans nothing up
    # no lock outlives the run: the same out_dir, and another, carry on at once, and the next build removes
    # what the killed one left
    result = run_script('train.py', *args, cwd=tmp_path, env={'XDG_CACHE_HOME': str(cache)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [name for name in os.listdir(cache / 'nanovit') if name.endswith('.tmp')] == []


def test_a_full_disk_is_one_line_that_names_it_not_a_bus_error(tmp_path):
    # a store written through a map of a sparse file dies of SIGBUS when the disk fills; reserved first, it is ENOSPC
    root = tmp_path / 'pictures'
    for c in ('a', 'b'):
        os.makedirs(root / 'train' / c)
        os.makedirs(root / 'test' / c)
        for i in range(450):  # 900 pictures of 3 x 64 x 64: an 11 MB store
            Image.fromarray(np.full((64, 64, 3), i % 256, dtype=np.uint8)).save(root / 'train' / c / f'{i}.png')
        Image.new('RGB', (64, 64)).save(root / 'test' / c / '0.png')
    with small_disk(tmp_path / 'disk', 5) as disk:
        result = run_script('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=8', '--out_dir=out', cwd=tmp_path,
                            env={'XDG_CACHE_HOME': str(disk)})
        assert_one_line_error(result, 'could not write the picture store')
        assert 'No space left on device' in result.stderr and 'free some space on that disk' in result.stderr
        assert [name for name in os.listdir(disk / 'nanovit') if not name.endswith('.lock')] == []


def test_a_damaged_store_is_built_again_not_trained_on(tmp_path, capsys):
    root = grey_folder(tmp_path / 'pics', n=40)
    first = load_split('folder', root, 'train')
    images = first.images.clone()
    with open(os.path.join(first.path, 'images.u8'), 'r+b') as f:  # the first half zeroed in place: same size
        f.write(bytes(images.numel() // 2))
    capsys.readouterr()
    again = load_split('folder', root, 'train')
    assert 'is damaged, of another version or made from other files; building it again' in capsys.readouterr().out
    assert torch.equal(again.images, images)


def test_a_read_only_cache_serves_its_stores_and_refuses_new_ones_in_one_line(tmp_path, run_here):
    root = grey_folder(tmp_path / 'pics', n=40)
    with small_disk(tmp_path / 'shared-cache', 20) as cache:
        env = {'XDG_CACHE_HOME': str(cache)}
        assert run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=first', cwd=tmp_path, env=env).returncode == 0
        remount_read_only(cache)  # a cluster's shared cache: the stores are there, nothing can be written
        result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=second', cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert 'decoded' not in result.stdout
        other = grey_folder(tmp_path / 'other', n=40)
        result = run_here('train.py', *FOLDER, f'--data_dir={other}', '--out_dir=third', cwd=tmp_path, env=env)
        assert_one_line_error(result, f"cannot build the picture store in {cache / 'nanovit'}: Read-only file system "
                                      f"(point XDG_CACHE_HOME at a writable folder)")
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=fourth', cwd=tmp_path,
                      env={'XDG_CACHE_HOME': '', 'HOME': str(tmp_path / 'no-such-home' / 'x')})
    assert result.returncode == 0, result.stderr  # a HOME that does not exist yet is made


def test_what_dead_builds_left_is_removed_by_the_next_build(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'pics', n=3)
    path = load_split('folder', root, 'train').path
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()  # its pid is free now
    host = socket.gethostname()
    for pid in (dead.pid, 1):  # pid 1 lives: its build may be under way
        os.makedirs(f"{path}.{pid}@{host}.tmp")
    os.makedirs(f"{path}.{dead.pid}@another-host.tmp")  # another machine's, on a shared cache: not ours to judge
    Image.new('L', (28, 28), 3).save(os.path.join(root, 'train', 'a', 'new.png'))  # a change: a new build
    load_split('folder', root, 'train')
    assert sorted(n for n in os.listdir(os.path.dirname(path)) if n.endswith('.tmp')) == sorted(
        [os.path.basename(f"{path}.1@{host}.tmp"), os.path.basename(f"{path}.{dead.pid}@another-host.tmp")])


@pytest.mark.slow
def test_a_store_cut_short_under_a_running_run_is_one_line_and_the_checkpoint_stays(tmp_path):
    root = grey_folder(tmp_path / 'pics', n=40)
    env = {'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    process = start_script('train.py', *TINY, '--dataset=folder', f'--data_dir={root}', '--batch_size=8',
                           '--max_iters=100000', '--eval_interval=5', '--log_interval=5', '--out_dir=out', cwd=tmp_path,
                           env=env)
    wait_for_line(process, 'step 5:')
    store = next(p for p in (tmp_path / 'cache' / 'nanovit').iterdir() if p.name.startswith('pics-train') and p.is_dir())
    os.truncate(store / 'images.u8', 1000)
    _, stderr = process.communicate(timeout=60)
    assert_one_line_error(subprocess.CompletedProcess([], process.returncode, '', stderr),
                          f"the picture store {store} was cut short while this run read it (1000 of 62720 bytes)")
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] >= 5


def test_a_run_waiting_for_another_s_build_says_whose(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    slow = ("import sys, time; sys.path.insert(0, {repo!r}); import support.pictures as p; real = p.read_image; "
            "p.read_image = lambda *a, **k: (time.sleep(0.05), real(*a, **k))[1]; from data import find_split; "
            "find_split('folder', {root!r}, 'train', 0).load()").format(repo=REPO, root=root)
    first = subprocess.Popen([sys.executable, '-c', slow], stdout=subprocess.PIPE, text=True)
    cache = tmp_path / 'cache' / 'nanovit'
    while not (cache.is_dir() and any(n.endswith('.tmp') for n in os.listdir(cache))):  # it builds
        time.sleep(0.05)
    second = subprocess.run([sys.executable, '-c', f"import sys; sys.path.insert(0, {REPO!r}); from data import "
                             f"find_split; find_split('folder', {root!r}, 'train', 0).load()"],
                            capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    assert f"note: waiting for pid {first.pid} on {socket.gethostname()}, which is building the picture store" \
        in second.stdout, second.stdout
    assert 'decoded' not in second.stdout


def test_the_statistics_pass_takes_a_few_mb_whatever_the_pictures(tmp_path):
    # 200 pictures of 3 x 256 x 256 in a memory map (39 MB): counted without a copy of more than a piece at a time
    images = np.memmap(tmp_path / 'images.u8', dtype=np.uint8, mode='w+', shape=(200, 3, 256, 256))
    images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    tracemalloc.start()
    mean, _ = channel_stats(np.memmap(tmp_path / 'images.u8', dtype=np.uint8, mode='r', shape=(200, 3, 256, 256)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2 ** 20, peak / 2 ** 20
    assert mean == pytest.approx([127.5 / 255] * 3, abs=1e-3)
