"""prepare.py: datasets found from their files (MNIST's, torchvision's, folders as users have them, flat validation
folders with a label file), decoded once into a prepared dataset, and that dataset checked for everything it claims:
prepared again when damaged or made from other files, never half-made (a full disk, Ctrl-C, a kill), made once by two
processes, its statistics counted as it is written."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import prepare
from conftest import (COLOURS, REPO, RUN_WITH_HOOK, TINY, assert_one_line_error, children, grey_folder,
                      load_split, make_mnist_dir, make_picture_folder, remount_read_only, run_script, small_disk,
                      start_script, wait_for_line, write_idx)
from support.pictures import read_image

OFFLINE = {'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9'}  # every download fails at once
FOLDER = TINY + ['--dataset=folder', '--max_iters=4', '--eval_interval=4', '--log_interval=2']


def prepared_dirs(cache):
    return [n for n in os.listdir(cache) if not n.endswith('.lock')] if os.path.isdir(cache) else []


# -----------------------------------------------------------------------------
# folder datasets


def test_a_folder_is_prepared_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'))
    train = load_split('folder', root, 'train')
    images, labels = train.images, train.labels
    assert train.classes == sorted(COLOURS) and images.shape == (120, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(3) for _ in range(40)]
    # the pictures' colours came through: class 'red' has the most red
    assert images[labels == 2, 0].float().mean() > images[labels == 0, 0].float().mean()
    # a view of the file, not a copy in memory; statistics counted as it was written, the training pictures'
    assert os.path.getsize(os.path.join(train.path, 'train.u8')) == images.numel()
    data = prepare.load(prepare.find('folder', root, 0))
    assert np.allclose(data.mean, (images.double() / 255).mean(dim=(0, 2, 3)).tolist())
    assert np.allclose(data.std, (images.double() / 255).std(dim=(0, 2, 3), unbiased=False).tolist())
    assert 'decoded 120 pictures' in capsys.readouterr().out
    assert not any('nanovit' in name for name in os.listdir(root))  # never written into data_dir
    again = load_split('folder', root, 'train')
    assert 'decoded' not in capsys.readouterr().out and torch.equal(again.images, images)
    # a changed file makes a new one; a damaged one is prepared again, never trained on
    Image.new('RGB', (16, 16), 'white').save(os.path.join(root, 'train', 'red', '000.png'))
    assert load_split('folder', root, 'train').images[80].float().mean() == 255  # red is the third class
    assert 'decoded 120 pictures' in capsys.readouterr().out
    os.truncate(os.path.join(train.path, 'train.u8'), 1000)
    assert torch.equal(load_split('folder', root, 'train').labels, labels)
    out = capsys.readouterr().out
    assert 'is damaged, of another version or made from other files' in out and 'decoded 120 pictures' in out


def test_grey_folders_stay_grey_and_sizes_are_unified(tmp_path, run_here):
    root = tmp_path / 'pictures'
    for split in ('train', 'val'):
        for c, size in (('a', (20, 12)), ('b', (12, 30))):
            os.makedirs(root / split / c)
            for i in range(3):
                Image.new('L', size, 40 * i).save(root / split / c / f'{i}.png')
    result = run_here('train.py', f'--data_dir={root}', '--dataset=folder', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, 'the pictures have different sizes (20x12, 12x30); set --img_size=N')
    test = load_split('folder', str(root), 'test', 8)  # val/ is taken for test/
    assert test.images.shape == (6, 1, 8, 8) and test.classes == ['a', 'b']


def test_a_folder_as_users_have_it(tmp_path, capsys):
    # a small folder (24 pictures a class) with what real folders hold besides pictures, and two broken pictures
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(24, 4))
    red = tmp_path / 'pictures' / 'train' / 'red'
    for name in ('notes.txt', 'Thumbs.db', 'desktop.ini', '000.json', '001.xmp'):
        (red / name).write_text('not a picture')
    os.mkfifo(red / 'pipe.png')  # would block a reader forever
    os.symlink('/nope', red / 'dangling.png')
    os.symlink(red / 'loop.png', red / 'loop.png')
    (red / '002.png').write_text('broken')
    (red / '003.png').write_bytes((red / '004.png').read_bytes()[:40])  # cut short
    train = load_split('folder', root, 'train')
    assert len(train.images) == 70 and (train.labels == 2).sum() == 22  # red is the third class
    # no gap where the broken pictures were: every kept picture is its file's
    kept = train.images[train.labels == 2]
    assert torch.equal(kept[0], torch.from_numpy(read_image(red / '000.png')).permute(2, 0, 1))
    assert torch.equal(kept[2], torch.from_numpy(read_image(red / '004.png')).permute(2, 0, 1))
    out = capsys.readouterr().out
    assert "note: left out 8 files in" in out and "that are not pictures by their name or not regular files" in out
    assert "note: skipped 2 of the 72 train pictures of pictures that do not decode" in out
    assert "train/red/002.png (not a picture PIL can read" in out and "train/red/003.png" in out
    load_split('folder', root, 'train')  # prepared: what preparing it skipped is said again
    assert "note: skipped 2 of the 72 train pictures" in capsys.readouterr().out
    # a large share of broken pictures means a wrong folder: one line
    for i in range(5, 12):
        (red / f'{i:03d}.png').write_text('broken')
    with pytest.raises(SystemExit):
        load_split('folder', root, 'train')
    err = capsys.readouterr().err
    assert "9 of the 72 train pictures of pictures do not decode, too many to be a few damaged files" in err


def test_a_class_without_one_readable_picture_is_named(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    for i in range(40):
        (tmp_path / 'pictures' / 'train' / 'red' / f'{i:03d}.png').write_text('broken')
    result = run_here('train.py', f'--data_dir={root}', '--dataset=folder', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, "the train split has no readable picture of class 'red' (train/red/000.png: not a "
                                  "picture")


@pytest.mark.parametrize('damage,message', [
    ('no_test', "no test/ or val/ in data_dir="),
    ('no_train', "no train/ in data_dir="),
    ('extra_class', "differ between the splits: 'cyan' only in test/"),
    ('empty_class', "holds no pictures (.png"),
    ('unreadable_class', "has no readable picture of class 'cyan'"),
])
def test_folder_layout_errors(tmp_path, damage, message, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(4, 2))
    if damage == 'no_test':
        os.rename(os.path.join(root, 'test'), os.path.join(root, 'elsewhere'))
    elif damage == 'no_train':
        os.rename(os.path.join(root, 'train'), os.path.join(root, 'training'))
    elif damage == 'extra_class':
        os.makedirs(os.path.join(root, 'test', 'cyan'))
    elif damage == 'empty_class':
        for split in ('train', 'test'):
            os.makedirs(os.path.join(root, split, 'cyan'))
    elif damage == 'unreadable_class':
        for split in ('train', 'test'):
            os.makedirs(os.path.join(root, split, 'cyan'))
            (tmp_path / 'pictures' / split / 'cyan' / 'x.png').write_text('no')
    result = run_here('train.py', f'--data_dir={root}', '--dataset=folder', '--device=cpu', '--batch_size=4', cwd=tmp_path)
    assert_one_line_error(result, message)
    if damage == 'no_test':
        assert 'data_dir/train/<class>/<image> and data_dir/test/<class>/<image>' in result.stderr


def test_a_colour_picture_among_grey_test_pictures_is_made_grey(tmp_path, run_here):
    root = grey_folder(tmp_path / 'grey')
    Image.new('RGB', (28, 28), (200, 10, 10)).save(tmp_path / 'grey' / 'test' / 'a' / 'colour.png')
    test = load_split('folder', root, 'test')
    assert test.images.shape == (25, 1, 28, 28) and test.images[test.labels == 0].float().mean() > 0
    result = run_here('train.py', *FOLDER, '--batch_size=8', f'--data_dir={root}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'data: folder, 24 train / 0 val / 25 test images of 1x28x28' in result.stdout


def test_test_pictures_of_another_size_stop_the_run_at_start(tmp_path, run_here):
    root = grey_folder(tmp_path / 'sizes', sizes=(('train', 28), ('test', 32)))
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=out', cwd=tmp_path)
    assert_one_line_error(result, 'the test pictures are 32x32, the training pictures 28x28; set --img_size=N', code=2)
    assert not (tmp_path / 'out' / 'metrics.jsonl').exists() and 'decoded' not in result.stdout  # before any decoding


def test_img_size_too_small_for_the_patches_stops_before_decoding(tmp_path, run_here):
    pictures = make_picture_folder(str(tmp_path / 'pictures'), per_class=(30, 10), size=(28, 28))
    result = run_here('train.py', *FOLDER, f'--data_dir={pictures}', '--img_size=6', cwd=tmp_path)
    assert_one_line_error(result, 'bad model config: img_size=6 is not divisible by patch_size=7', code=2)
    assert 'decoded' not in result.stdout


def test_imagenet_s_layout_is_a_folder_dataset(tmp_path, run_here):
    # WordNet ids for class folders, .JPEG files of other sizes than the model's, val/ for the test split
    rng = np.random.default_rng(0)
    for split, n in (('train', 12), ('val', 3)):
        for k, wnid in enumerate(('n01440764', 'n01443537', 'n15075141')):
            os.makedirs(tmp_path / 'imagenet' / split / wnid)
            for i in range(n):
                pixels = rng.integers(0, 256, (30 + 7 * i, 41, 3)).astype(np.uint8)
                pixels[:, :, k] = 255
                Image.fromarray(pixels).save(tmp_path / 'imagenet' / split / wnid / f'{wnid}_{i}.JPEG')
    result = run_here('train.py', '--dataset=folder', f'--data_dir={tmp_path / "imagenet"}', '--store_size=20',
                      '--img_size=16', '--aug_rrc_scale=0.08', '--aug_flip=True', '--n_layer=1', '--n_head=2',
                      '--n_embd=32', '--patch_size=8', '--pool=mean', '--pos_embd=sincos', '--batch_size=12',
                      '--max_iters=3', '--eval_interval=3', '--device=cpu', '--plot=False', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'data: folder, 36 train / 0 val / 9 test images of 3x20x20, 3 classes' in result.stdout
    assert torch.load(tmp_path / 'out-mnist' / 'ckpt.pt', weights_only=True)['classes'] == [
        'n01440764', 'n01443537', 'n15075141']


def flat_validation(root, label_file, lines, folder=''):
    """Move a folder dataset's test pictures into one flat folder (root/val/folder), labelled by a file of lines."""
    os.rename(os.path.join(root, 'test'), os.path.join(root, 'sorted'))
    flat = os.path.join(root, 'val', folder)
    os.makedirs(flat)
    for c in sorted(COLOURS):
        for name in sorted(os.listdir(os.path.join(root, 'sorted', c))):
            shutil.move(os.path.join(root, 'sorted', c, name), os.path.join(flat, f"{c}_{name}"))
    shutil.rmtree(os.path.join(root, 'sorted'))
    with open(os.path.join(root, 'val', label_file), 'w') as f:
        f.writelines(line + '\n' for line in lines(sorted(os.listdir(flat))))


def test_tiny_imagenet_s_and_imagenet_s_flat_validation_folders_are_read_by_their_label_file(tmp_path):
    root = make_picture_folder(str(tmp_path / 'tiny'), per_class=(10, 3))
    sorted_test = load_split('folder', root, 'test')
    # Tiny-ImageNet: val/images/*.JPEG, and val/val_annotations.txt: name, class, then a box, tab-separated
    flat_validation(root, 'val_annotations.txt', lambda names: [f"{n}\t{n.split('_')[0]}\t0\t0\t8\t8" for n in names],
                    'images')
    os.makedirs(os.path.join(root, 'test', 'images'))  # and test/images/, which Tiny-ImageNet ships unlabelled
    Image.new('RGB', (16, 16)).save(os.path.join(root, 'test', 'images', 'test_0.JPEG'))
    tiny = load_split('folder', root, 'test')
    assert tiny.classes == sorted(COLOURS) and torch.equal(torch.sort(tiny.labels).values, sorted_test.labels)
    # ImageNet (Kaggle's files): val/*.JPEG and LOC_val_solution.csv: ImageId,PredictionString "wnid x y x y ..."
    root = make_picture_folder(str(tmp_path / 'imagenet'), per_class=(10, 3))
    flat_validation(root, 'LOC_val_solution.csv',
                    lambda names: ['ImageId,PredictionString'] + [f"{n[:-4]},{n.split('_')[0]} 1 2 3 4" for n in names])
    imagenet = load_split('folder', root, 'test')
    assert torch.equal(torch.sort(imagenet.labels).values, sorted_test.labels)
    # a picture the file does not name is one line
    Image.new('RGB', (16, 16)).save(os.path.join(root, 'val', 'stray.png'))
    with pytest.raises(SystemExit):
        load_split('folder', root, 'test')


def test_a_validation_folder_left_flat_without_a_label_file_says_to_sort_it_before_any_decoding(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'imagenet'), per_class=(30, 0), split_names=('train', 'val'))
    for i in range(3):
        Image.new('RGB', (16, 16)).save(tmp_path / 'imagenet' / 'val' / f'ILSVRC2012_val_{i:08d}.JPEG')
    for c in COLOURS:
        os.rmdir(tmp_path / 'imagenet' / 'val' / c)
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=4', cwd=tmp_path)
    assert_one_line_error(result, f"{root}/val holds 3 pictures but no class folders: sort them into {root}/val/<class>/")
    assert 'decod' not in result.stdout


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

# -----------------------------------------------------------------------------
# torchvision's datasets


@pytest.mark.parametrize('split,prefix', [('train', 'train'), ('test', 't10k')])
def test_labels_outside_the_classes_are_named(tmp_path, split, prefix, run_here):
    data = make_mnist_dir(str(tmp_path / 'data'), n_train=200, n_test=100)
    path = os.path.join(data, 'MNIST', 'raw', f'{prefix}-labels-idx1-ubyte')
    labels = np.frombuffer(open(path, 'rb').read()[8:], dtype=np.uint8).copy()
    labels[7] = 12
    write_idx(path, labels)
    result = run_here('train.py', f'--data_dir={data}', '--device=cpu', '--max_iters=1', cwd=tmp_path)
    assert_one_line_error(result, f"MNIST {split} picture 7 has label 12, outside the 10 classes 0..9")


@pytest.mark.parametrize('damage,message', [
    ('truncate', "ValueError: "),
    ('missing', "(it holds t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, train-images-idx3-ubyte): "),
])
def test_broken_mnist_files_are_one_line_naming_the_folder(tmp_path, damage, message, run_here):
    data = make_mnist_dir(str(tmp_path / 'data'), n_train=200, n_test=100)
    raw = os.path.join(data, 'MNIST', 'raw')
    if damage == 'missing':
        os.remove(os.path.join(raw, 'train-labels-idx1-ubyte'))
    else:
        path = os.path.join(raw, 'train-images-idx3-ubyte')
        open(path, 'wb').write(open(path, 'rb').read()[:5000])
    result = run_here('train.py', f'--data_dir={data}', '--device=cpu', cwd=tmp_path, env=OFFLINE)
    assert_one_line_error(result, f"could not load the train split of MNIST from {raw}", code=1)
    assert message in result.stderr and 'or delete them to download them again' in result.stderr


def test_cifar10_offline_without_its_files(tmp_path, run_here):
    result = run_here('train.py', '--dataset=cifar10', f'--data_dir={tmp_path}', '--device=cpu', cwd=tmp_path,
                      env=OFFLINE)
    assert_one_line_error(result, f"could not load the train split of CIFAR10 from {tmp_path}/cifar-10-batches-py (it "
                                  f"does not exist)", code=1)
    assert 'offline, point --data_dir at a copy of its files' in result.stderr


def test_a_prepared_torchvision_dataset_opens_without_torchvision(synthetic_data, tmp_path):
    # the speedrun's start: importing torchvision and reading its files would cost seconds, for nothing
    script = (f"import sys; sys.path.insert(0, {REPO!r}); import prepare; "
              f"data = prepare.load(prepare.find('mnist', {synthetic_data!r}, 0)); "
              f"print(len(data.train[1]), data.classes[3], 'torchvision' in sys.modules)")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
    first, second = (subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env)
                     for _ in range(2))
    assert first.stdout.split()[-5:] == ['2000', '3', '-', 'three', 'True'], first.stderr  # prepared through torchvision
    assert second.stdout.split() == ['2000', '3', '-', 'three', 'False'], second.stderr  # opened as prepared


def test_prepare_py_runs_on_its_own(synthetic_data, tmp_path, run_here):
    env = {'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    result = run_here('prepare.py', f'--data_dir={synthetic_data}', cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert 'MNIST train: decoded 2000 pictures' in result.stdout
    assert ': 2000 training and 500 test pictures of 1x28x28, 10 classes' in result.stdout
    assert_one_line_error(run_here('prepare.py', '--datset=mnist', cwd=tmp_path, env=env),
                          "unknown config key 'datset'; did you mean dataset?", code=2)
    train = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=2', '--eval_interval=2',
                     cwd=tmp_path, env=env)
    assert train.returncode == 0 and 'decoded' not in train.stdout, train.stderr  # train.py maps what it prepared


def test_a_held_out_split_is_fixed_and_apart():
    train, val = prepare.held_out(1000, 100)
    assert len(val) == 100 and len(train) == 900 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(prepare.held_out(1000, 100)[1], val)  # the same pictures for every run and seed
    assert val.float().std() > 200  # spread over the split (a folder's last pictures are all one class)
    assert len(prepare.held_out(1000, 0)[1]) == 0
    assert torch.equal(prepare.held_out(1000, 50)[1], val[torch.isin(val, prepare.held_out(1000, 50)[1])])  # a prefix

# -----------------------------------------------------------------------------
# a prepared dataset checked for everything it claims


@pytest.mark.parametrize('damage', ['a label', 'fewer labels', 'the mean', 'a class name', 'another version',
                                    'other files', 'a picture'])
def test_a_prepared_dataset_is_checked_for_every_byte_it_holds(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'pics', n=3)
    first = load_split('folder', root, 'train')
    images, labels = first.images.clone(), first.labels.clone()
    meta_path, labels_path = os.path.join(first.path, 'meta.json'), os.path.join(first.path, 'train.i64')
    meta = json.load(open(meta_path))
    if damage == 'a label':
        bad = labels.clone()
        bad[0] = 1 - bad[0]
        bad.numpy().tofile(labels_path)
    elif damage == 'fewer labels':
        labels[:-1].numpy().tofile(labels_path)
    elif damage == 'the mean':  # one digit of the statistics the model's input is normalized with
        meta['mean'][0] = round(meta['mean'][0], 3) + 0.001
    elif damage == 'a class name':
        meta['classes'][0] = 'z'
    elif damage == 'another version':
        meta['version'] = -1
    elif damage == 'other files':
        meta['key'] = 'made from other files'
    else:
        with open(os.path.join(first.path, 'train.u8'), 'r+b') as f:
            f.write(bytes([255 - images.flatten()[0].item()]))
    json.dump(meta, open(meta_path, 'w'))
    capsys.readouterr()
    again = prepare.load(prepare.find('folder', root, 0))
    assert 'is damaged, of another version or made from other files' in capsys.readouterr().out
    assert torch.equal(again.train[0], images) and torch.equal(again.train[1], labels)


def test_a_prepared_dataset_deleted_under_a_running_run_changes_nothing_for_it(tmp_path, run_here, monkeypatch):
    root = grey_folder(tmp_path / 'gone', n=12)
    real_fits = prepare.held_out

    def delete_then_hold_out(*args):
        # as a user cleaning ~/.cache mid-run would: the open maps keep the pictures readable
        shutil.rmtree(os.path.join(os.environ['XDG_CACHE_HOME'], 'nanovit'))
        return real_fits(*args)
    monkeypatch.setattr(prepare, 'held_out', delete_then_hold_out)
    result = run_here('train.py', *FOLDER, '--batch_size=8', f'--data_dir={root}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_two_processes_preparing_one_dataset_decode_it_once(tmp_path, monkeypatch):
    # as torchrun's processes on a node, or two runs started at once: one prepares, the other waits, then maps it
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    script = (f"import sys; sys.path.insert(0, {REPO!r}); import prepare; "
              f"print(prepare.load(prepare.find('folder', {root!r}, 0)).train[0].float().mean().item())")
    both = [subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in both]
    assert all(p.returncode == 0 for p in both)
    assert sum('decoded 120 pictures' in out for out in outputs) == 1
    assert len({out.splitlines()[-1] for out in outputs}) == 1  # the same pictures


def test_a_long_decode_shows_its_progress(capsys, monkeypatch):
    clock = iter([0.0, 20.0, 20.1, 40.0])
    monkeypatch.setattr('prepare.time.time', lambda: next(clock))
    progress = prepare.Progress('preparing train', 1000)
    progress.update(500)  # 20 s in: 25 a second, 20 s left
    progress.update(510)  # too soon for a log file's next line
    progress.update(1000)
    assert capsys.readouterr().out.splitlines() == ['preparing train: 500/1000, 25 a second, 20s left',
                                                    'preparing train: 1000/1000, 25 a second, 0s left']


def test_a_constant_channel_is_centred_not_divided_by_zero(capsys):
    counts = np.zeros((3, 256), dtype=np.int64)
    counts[0, [0, 255]] = 5
    counts[1, 77] = 10
    counts[2, 100:110] = 1
    mean, std = prepare.mean_std(counts)
    assert mean[0] == pytest.approx(0.5) and std[0] == pytest.approx(0.5)
    assert std[1] == 1.0 and mean[1] == pytest.approx(77 / 255) and all(np.isfinite(std))
    assert 'note: channel 1 of the training pictures is constant (77)' in capsys.readouterr().out


def test_ctrl_c_while_preparing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'stop', n=3)

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C lands in the main process, mid-decode
    monkeypatch.setattr(prepare, 'read_file', interrupted)
    with pytest.raises(SystemExit) as stop:
        load_split('folder', root, 'train')
    assert stop.value.code == 130 and 'stopped while preparing the dataset' in capsys.readouterr().err
    assert prepared_dirs(tmp_path / 'cache' / 'nanovit') == []


def test_a_full_disk_while_preparing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, run_here):
    root = grey_folder(tmp_path / 'full', n=3)

    def disk_full(counts):  # the pictures are written: the statistics' file is what the disk refuses
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(prepare, 'mean_std', disk_full)
    result = run_here('train.py', *FOLDER, '--batch_size=4', f'--data_dir={root}', cwd=tmp_path)
    assert_one_line_error(result, 'could not write the prepared dataset')
    assert 'No space left on device; nothing half-made is left, the next start prepares it again' in result.stderr
    assert not [n for n in prepared_dirs(os.path.join(os.environ['XDG_CACHE_HOME'], 'nanovit')) if n.startswith('full')]


# -----------------------------------------------------------------------------
# faults: kills, a full disk, a damaged or read-only cache

# every picture takes 20 ms more to decode: time to act on a run while its decoders work
SLOW_DECODE = RUN_WITH_HOOK.format(hook="""
import prepare
real_read = prepare.read_image
def slow_read(*args, **kwargs):
    time.sleep(0.02)
    return real_read(*args, **kwargs)
prepare.read_image = slow_read
""")


def many_pictures(root, per_class=600):
    """Two classes of tiny pictures, more than 1000 in all: DataLoader's worker processes decode them."""
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


def killed_on_one(paths, labels, size, channels, i, real=prepare.read_file):
    if paths[i].endswith(os.path.join('b', '7.png')):
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return real(paths, labels, size, channels, i)


def test_a_decoding_process_that_dies_is_one_line_not_a_hang(tmp_path, monkeypatch, capsys):
    root = tmp_path / 'many'
    for c in ('a', 'b'):
        os.makedirs(root / 'train' / c)
        os.makedirs(root / 'test' / c)
        Image.new('L', (4, 4)).save(root / 'test' / c / '0.png')
        for i in range(520):  # more than 1000 pictures: decoded by worker processes
            Image.new('L', (4, 4), i % 256).save(root / 'train' / c / f'{i}.png')
    monkeypatch.setattr(prepare, 'read_file', killed_on_one)
    signal.alarm(60)  # a hang fails the test instead of the suite
    try:
        with pytest.raises(SystemExit) as stopped:
            load_split('folder', str(root), 'train')
    finally:
        signal.alarm(0)
    assert 'a process decoding the 1040 pictures died (killed, or out of memory?)' in capsys.readouterr().err
    # while the error is still held (as a notebook holds the last one), the other decoders have ended, and another
    # child process ending raises nothing: torch's SIGCHLD handler forgot the dead one
    assert stopped.value.code == 1 and children(os.getpid()) == []
    assert subprocess.run(['true']).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_while_preparing_leaves_no_decoder_and_no_lock(signum, tmp_path):
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
    for _ in range(400):  # they end with it: at once on a signal, within seconds when it was killed (DataLoader's watchdog)
        if not any(alive(pid) for pid in decoders):
            break
        time.sleep(0.05)
    assert decoders and not any(alive(pid) for pid in decoders), decoders
    left = [name for name in os.listdir(cache / 'nanovit') if name.endswith('.tmp')]
    if signum == signal.SIGTERM:  # Colab's stop button: the same one line as Ctrl-C, and nothing left
        assert process.returncode == 128 + signal.SIGTERM
        assert_one_line_error(subprocess.CompletedProcess([], process.returncode, '', stderr),
                              'stopped while preparing the dataset')
        assert left == []
    else:
        assert process.returncode == -signal.SIGKILL and len(left) == 1  # a kill -9 cleans nothing up
    # no lock outlives the run: the same out_dir, and another, carry on at once, and the next preparation removes
    # what the killed one left
    result = run_script('train.py', *args, cwd=tmp_path, env={'XDG_CACHE_HOME': str(cache)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [name for name in os.listdir(cache / 'nanovit') if name.endswith('.tmp')] == []


@pytest.mark.slow  # a whole run under a fault, 5-10 s: in the slow pass (.ci/run runs both)
def test_a_full_disk_is_one_line_that_names_it(tmp_path):
    root = tmp_path / 'pictures'
    for c in ('a', 'b'):
        os.makedirs(root / 'train' / c)
        os.makedirs(root / 'test' / c)
        for i in range(450):  # 900 pictures of 3 x 64 x 64: an 11 MB dataset
            Image.fromarray(np.full((64, 64, 3), i % 256, dtype=np.uint8)).save(root / 'train' / c / f'{i}.png')
        Image.new('RGB', (64, 64)).save(root / 'test' / c / '0.png')
    with small_disk(tmp_path / 'disk', 5) as disk:
        result = run_script('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=8', '--out_dir=out', cwd=tmp_path,
                            env={'XDG_CACHE_HOME': str(disk)})
        assert_one_line_error(result, 'could not write the prepared dataset')
        assert 'No space left on device' in result.stderr and 'free some space on that disk' in result.stderr
        assert prepared_dirs(disk / 'nanovit') == []


def test_a_read_only_cache_serves_its_datasets_and_refuses_new_ones_in_one_line(tmp_path, run_here):
    root = grey_folder(tmp_path / 'pics', n=40)
    with small_disk(tmp_path / 'shared-cache', 20) as cache:
        env = {'XDG_CACHE_HOME': str(cache)}
        assert run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=first', cwd=tmp_path, env=env).returncode == 0
        remount_read_only(cache)  # a cluster's shared cache: the datasets are there, nothing can be written
        result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=second', cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert 'decoded' not in result.stdout
        other = grey_folder(tmp_path / 'other', n=40)
        result = run_here('train.py', *FOLDER, f'--data_dir={other}', '--out_dir=third', cwd=tmp_path, env=env)
        assert_one_line_error(result, f"cannot prepare the dataset in {cache / 'nanovit'}: Read-only file system "
                                      f"(point XDG_CACHE_HOME at a writable folder)")
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=fourth', cwd=tmp_path,
                      env={'XDG_CACHE_HOME': '', 'HOME': str(tmp_path / 'no-such-home' / 'x')})
    assert result.returncode == 0, result.stderr  # a HOME that does not exist yet is made


def test_what_dead_preparations_left_is_removed_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'pics', n=3)
    path = load_split('folder', root, 'train').path
    host = socket.gethostname()
    for pid in (4321, 1):  # dead or alive, a process of this machine preparing it would hold the lock this one holds
        os.makedirs(f"{path}.{pid}@{host}.tmp")
    os.makedirs(f"{path}.4321@another-host.tmp")  # another machine's, on a shared cache: not ours to judge
    Image.new('L', (28, 28), 3).save(os.path.join(root, 'train', 'a', 'new.png'))  # a change: prepared anew
    load_split('folder', root, 'train')
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith('.tmp')] == [
        os.path.basename(f"{path}.4321@another-host.tmp")]


@pytest.mark.slow
def test_a_dataset_cut_short_under_a_running_run_keeps_the_checkpoint_and_is_prepared_again(tmp_path):
    # prepare.py never cuts a dataset a run maps (it writes aside and renames); cut by hand, the run dies (SIGBUS)
    root = grey_folder(tmp_path / 'pics', n=40)
    env = {'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    args = [*TINY, '--dataset=folder', f'--data_dir={root}', '--batch_size=8', '--eval_interval=5', '--log_interval=5',
            '--out_dir=out']
    process = start_script('train.py', *args, '--max_iters=100000', cwd=tmp_path, env=env)
    wait_for_line(process, 'step 5:')
    prepared = next(p for p in (tmp_path / 'cache' / 'nanovit').iterdir() if p.name.startswith('pics') and p.is_dir())
    os.truncate(prepared / 'train.u8', 1000)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] >= 5
    result = run_script('train.py', *args, '--max_iters=20', '--init_from=resume', cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert 'is damaged' in result.stdout and 'decoded 80 pictures' in result.stdout


@pytest.mark.slow
def test_a_run_waiting_for_another_s_preparation_says_whose(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    slow = ("import sys, time; sys.path.insert(0, {repo!r}); import prepare; real = prepare.read_image; "
            "prepare.read_image = lambda *a, **k: (time.sleep(0.05), real(*a, **k))[1]; "
            "prepare.load(prepare.find('folder', {root!r}, 0))").format(repo=REPO, root=root)
    first = subprocess.Popen([sys.executable, '-c', slow], stdout=subprocess.PIPE, text=True)
    cache = tmp_path / 'cache' / 'nanovit'
    while not (cache.is_dir() and any(n.endswith('.tmp') for n in os.listdir(cache))):  # it prepares
        time.sleep(0.05)
    second = subprocess.run([sys.executable, '-c', f"import sys; sys.path.insert(0, {REPO!r}); import prepare; "
                             f"prepare.load(prepare.find('folder', {root!r}, 0))"],
                            capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    assert f"note: waiting for pid {first.pid} on {socket.gethostname()}, which is preparing" in second.stdout, second.stdout
    assert 'decoded' not in second.stdout


def test_any_torchvision_dataset_by_its_class_name(tmp_path, run_here):
    # Oxford-IIIT Pet in its own format, small and offline: images/<Breed>_<n>.jpg of any size, and
    # annotations/trainval.txt and test.txt ("<image> <class id> <species> <breed id>"); split='trainval' trains
    pets = tmp_path / 'data' / 'oxford-iiit-pet'
    os.makedirs(pets / 'images')
    os.makedirs(pets / 'annotations')
    rng = np.random.default_rng(0)
    for split, n in (('trainval', 12), ('test', 4)):
        lines = []
        for k, breed in enumerate(('Abyssinian', 'great_pyrenees')):
            for i in range(n):
                name = f"{breed}_{split}{i}"
                pixels = rng.integers(0, 256, (20 + 3 * i, 30, 3)).astype(np.uint8)
                pixels[:, :, k] = 255
                Image.fromarray(pixels).save(pets / 'images' / f'{name}.jpg')
                lines.append(f"{name} {k + 1} {k + 1} {i + 1}")
        (pets / 'annotations' / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    result = run_here('train.py', '--dataset=torchvision:OxfordIIITPet', f"--data_dir={tmp_path / 'data'}",
                      '--store_size=16', '--img_size=16', '--n_layer=1', '--n_head=2', '--n_embd=32', '--patch_size=8',
                      '--batch_size=8', '--max_iters=2', '--eval_interval=2', '--device=cpu', '--plot=False',
                      '--compile=False', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'data: torchvision:OxfordIIITPet, 24 train / 0 val / 8 test images of 3x16x16, 2 classes' in result.stdout
    assert torch.load(tmp_path / 'out-mnist' / 'ckpt.pt', weights_only=True)['classes'] == ['Abyssinian', 'Great Pyrenees']
    result = run_here('train.py', '--dataset=torchvision:Nope', '--out_dir=other', cwd=tmp_path)
    assert_one_line_error(result, "dataset='torchvision:Nope': torchvision", code=2)


def test_cifar100_in_its_own_format(tmp_path, run_here, monkeypatch):
    # the python pickles torchvision reads (data, fine labels, the meta file's names); their MD5 sums, which only the
    # real files match, are the one thing let through
    import pickle
    import torchvision
    folder = tmp_path / 'data' / 'cifar-100-python'
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for split, n in (('train', 60), ('test', 20)):
        labels = [i % 3 for i in range(n)]
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        pickle.dump({'data': data, 'fine_labels': labels, 'coarse_labels': labels}, open(folder / split, 'wb'))
    pickle.dump({'fine_label_names': ['apple', 'bee', 'cloud']}, open(folder / 'meta', 'wb'))
    os.symlink(folder / 'moved-away', folder / 'old-link')  # a dangling link beside them is no file to key on
    monkeypatch.setattr(torchvision.datasets.CIFAR100, '_check_integrity', lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args: True)
    result = run_here('train.py', '--dataset=cifar100', f"--data_dir={tmp_path / 'data'}", '--n_layer=1', '--n_head=2',
                      '--n_embd=32', '--patch_size=8', '--batch_size=8', '--max_iters=2', '--eval_interval=2',
                      '--device=cpu', '--plot=False', '--compile=False', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'data: cifar100, 60 train / 0 val / 20 test images of 3x32x32, 3 classes' in result.stdout
