"""support/store.py: a split decoded once into its store, and the store checked for everything it claims:
rebuilt when damaged or made from other files, never half-made (a full disk, Ctrl-C), built once by two
processes, statistics counted from it."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
from conftest import COLOURS, REPO, TINY, assert_one_line_error, grey_folder, load_split, make_picture_folder
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
