"""data.py: augmentation geometry, normalization, reading the pictures users have, and folder datasets."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (COLOURS, REPO, assert_one_line_error, make_mnist_dir, make_picture_folder, png_claiming, read_jsonl,
                      write_idx)
from data import affine, augment, load_folder, normalize, predict, read_image, shift, tta_views
from store import channel_stats

OFFLINE = {'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9'}  # every download fails at once


def dot(row, col, size=28):
    x = torch.zeros(1, 1, size, size)
    x[0, 0, row, col] = 1.0
    return x


def where(x):
    return [tuple(i) for i in torch.nonzero(x[0, 0] > 0.5).tolist()]


def test_affine_shift_moves_a_dot_by_whole_pixels():
    one = torch.ones(1)
    moved = affine(dot(10, 10), 0 * one, one, 3 * one, -2 * one)  # 3 right, 2 up
    assert where(moved) == [(8, 13)] and moved.max() == pytest.approx(1.0)


def test_affine_half_turn_and_zoom():
    one = torch.ones(1)
    assert where(affine(dot(3, 5), torch.pi * one, one, 0 * one, 0 * one)) == [(24, 22)]
    # a 2x zoom about the centre spreads a dot at distance d from it to distance 2d
    zoomed = affine(dot(10, 14), 0 * one, 2 * one, 0 * one, 0 * one)
    rows = torch.nonzero(zoomed[0, 0] > 0.1)[:, 0].float()
    assert abs(rows.mean().item() - (13.5 - 2 * 3.5)) <= 0.5


def test_shift_is_a_crop_of_the_padded_picture():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = shift(x, torch.tensor([2, -1]), torch.tensor([-3, 0]), pad=3)
    assert torch.equal(out[0, :, 2:, :5], x[0, :, :6, 3:])  # down 2, left 3
    assert (out[0, :, :2] == 0).all() and (out[0, :, :, 5:] == 0).all()
    assert torch.equal(out[1, :, :7], x[1, :, 1:]) and (out[1, :, 7] == 0).all()  # up 1


def test_augment_crop_and_flip_keep_every_picture_a_shifted_or_mirrored_copy():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    generator = torch.Generator().manual_seed(5)
    out = augment(x, generator, crop=2, flip=True)
    mirrored = 0
    for original, seen in zip(x, out):
        matches = [(dy, dx, m) for m in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(seen, shift((original.flip(2) if m else original)[None], torch.tensor([dy]),
                                              torch.tensor([dx]), pad=2)[0])]
        assert len(matches) == 1, matches
        mirrored += matches[0][2]
    assert 16 < mirrored < 48  # about half
    again = augment(x, torch.Generator().manual_seed(5), crop=2, flip=True)
    assert torch.equal(out, again)  # the draws are the generator's: a resumed run redraws them



def test_tta_views_are_the_picture_and_its_eight_shifts():
    views = tta_views(dot(10, 10), 2)
    assert [where(v) for v in views] == [[(10 + dy, 10 + dx)] for dy in (-2, 0, 2) for dx in (-2, 0, 2)]
    one = tta_views(dot(10, 10), 0)
    assert len(one) == 1 and torch.equal(one[0], dot(10, 10))
    pictures = (torch.rand(3, 3, 8, 8) * 255).to(torch.uint8)  # uint8, as the test split is kept
    assert all(v.dtype == torch.uint8 and v.shape == pictures.shape for v in tta_views(pictures, 1))


def test_predict_averages_the_logits_of_the_views():
    def brightness(x):  # a stand-in model: one logit, the picture's total ink
        return x.sum(dim=(1, 2, 3))[:, None], None
    centre, border = dot(10, 10), dot(0, 10)
    assert predict(brightness, centre, 0.0, 1.0).item() == pytest.approx(1.0)
    assert predict(brightness, centre, 0.0, 1.0, tta_shift=1).item() == pytest.approx(1.0)  # every view keeps the dot
    # moved up by one pixel, the top row leaves the picture: 3 of the 9 views lose the dot
    assert predict(brightness, border, 0.0, 1.0, tta_shift=1).item() == pytest.approx(6 / 9)

def test_channel_stats_and_normalize():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8)
    images[:, 1] //= 4  # a darker channel
    mean, std = channel_stats(images)
    pixels = images.double() / 255
    assert np.allclose(mean, pixels.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(std, pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-9)
    x = normalize(images, mean, std)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.equal(normalize(images.float() / 255, mean, std), x)  # floats in [0, 1] mean the same


# -----------------------------------------------------------------------------
# pictures as users have them


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / 'deep.png')
    pixels = read_image(tmp_path / 'deep.png')
    assert pixels.shape == (64, 64, 1) and pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255 and abs(int(pixels[32, 0, 0]) - 128) <= 1


def test_transparency_is_laid_on_white(tmp_path):
    ink = np.zeros((20, 20, 4), dtype=np.uint8)  # black everywhere, visible only where the ink is
    ink[5:15, 8:12, 3] = 255
    Image.fromarray(ink, 'RGBA').save(tmp_path / 'ink.png')
    pixels = read_image(tmp_path / 'ink.png')
    assert pixels.shape == (20, 20, 3)
    assert (pixels[5:15, 8:12] == 0).all() and (pixels[0] == 255).all()
    Image.fromarray(ink[:, :, 2:], 'LA').save(tmp_path / 'grey-ink.png')
    assert read_image(tmp_path / 'grey-ink.png').shape == (20, 20, 1)


def test_exif_rotation_is_applied(tmp_path):
    picture = np.zeros((10, 30, 3), dtype=np.uint8)
    picture[:, :10] = 255  # the left third white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(picture).save(tmp_path / 'turned.jpg', exif=exif, quality=95)
    pixels = read_image(tmp_path / 'turned.jpg')
    assert pixels.shape == (30, 10, 3)
    assert pixels[:8].mean() > 200 and pixels[12:].mean() < 50  # the white third is now on top


@pytest.mark.parametrize('name,mode,channels', [
    ('a.bmp', 'RGB', 3), ('b.webp', 'RGB', 3), ('c.tiff', 'RGB', 3), ('d.gif', 'P', 3), ('e.jpg', 'CMYK', 3),
    ('f.png', 'P', 3), ('g.png', '1', 1), ('h.jpg', 'L', 1)])
def test_formats_and_modes(tmp_path, name, mode, channels):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 18, 3)).astype(np.uint8))
    picture = rgb.convert(mode) if mode != 'P' else rgb.convert('P', palette=Image.ADAPTIVE)
    picture.save(tmp_path / name)
    assert read_image(tmp_path / name).shape == (12, 18, channels)


def test_size_resizes_the_shorter_side_and_cuts_the_centre(tmp_path):
    picture = np.zeros((40, 80, 3), dtype=np.uint8)
    picture[:, 20:60] = 255  # the centre square white, the sides black
    Image.fromarray(picture).save(tmp_path / 'wide.png')
    pixels = read_image(tmp_path / 'wide.png', size=16)
    assert pixels.shape == (16, 16, 3) and pixels.mean() > 250


def test_huge_and_hostile_pictures(tmp_path):
    Image.new('L', (10000, 10000), 200).save(tmp_path / 'huge.jpg')
    assert read_image(tmp_path / 'huge.jpg').shape == (2048, 2048, 1)  # shrunk while decoding
    with pytest.raises(ValueError, match='too large to decode safely'):
        read_image(png_claiming(tmp_path / 'bomb.png', 20000, 20000))
    (tmp_path / 'notes.png').write_text('not a picture')
    with pytest.raises(ValueError, match='not a picture PIL can read'):
        read_image(tmp_path / 'notes.png')
    Image.new('RGB', (64, 64), 'red').save(tmp_path / 'whole.jpg')
    (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'whole.jpg').read_bytes()[:200])
    with pytest.raises(ValueError, match='not a picture PIL can read'):
        read_image(tmp_path / 'cut.jpg')


# -----------------------------------------------------------------------------
# folder datasets


def test_folder_dataset_is_decoded_once_into_a_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'))
    store = load_folder(root, True, 0)
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
    again = load_folder(root, True, 0)
    assert 'decoded' not in capsys.readouterr().out and torch.equal(again.images, images)
    # a changed file makes a new store; a damaged store is built again, never trained on
    Image.new('RGB', (16, 16), 'white').save(os.path.join(root, 'train', 'red', '000.png'))
    assert load_folder(root, True, 0).images[80].float().mean() == 255  # red is the third class
    assert 'decoded 120 pictures' in capsys.readouterr().out
    images_file = os.path.join(store.path, 'images.u8')
    os.truncate(images_file, 1000)
    assert torch.equal(load_folder(root, True, 0).labels, labels)
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
    store = load_folder(str(root), False, 8)  # val/ is taken for test/
    assert store.images.shape == (6, 1, 8, 8) and store.classes == ['a', 'b']


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
    store = load_folder(root, True, 0)
    assert len(store.images) == 70 and (store.labels == 2).sum() == 22  # red is the third class
    # the gaps the broken pictures left are closed: every kept picture is its file's
    kept = store.images[store.labels == 2]
    assert torch.equal(kept[0], torch.from_numpy(read_image(red / '000.png')).permute(2, 0, 1))
    assert torch.equal(kept[2], torch.from_numpy(read_image(red / '004.png')).permute(2, 0, 1))
    out = capsys.readouterr().out
    assert "note: left out 8 files in" in out and "that are not pictures by their name or not regular files" in out
    assert "note: skipped 2 of the 72 pictures in" in out
    assert "train/red/002.png (not a picture PIL can read" in out and "train/red/003.png" in out
    load_folder(root, True, 0)  # from the store: what the build skipped is said again
    assert "note: skipped 2 of the 72 pictures in" in capsys.readouterr().out
    # a large share of broken pictures means a wrong folder: one line
    for i in range(5, 12):
        (red / f'{i:03d}.png').write_text('broken')
    with pytest.raises(SystemExit):
        load_folder(root, True, 0)
    err = capsys.readouterr().err
    assert "9 of the 72 pictures in" in err and "do not decode, too many to be a few damaged files" in err


def test_a_class_without_one_readable_picture_is_named(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    for i in range(40):
        (tmp_path / 'pictures' / 'train' / 'red' / f'{i:03d}.png').write_text('broken')
    result = run_here('train.py', f'--data_dir={root}', '--dataset=folder', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, 'train/red holds no readable picture, for instance train/red/000.png (not a picture')


@pytest.mark.parametrize('damage,message', [
    ('no_test', "no test/ or val/ in data_dir="),
    ('no_train', "no train/ in data_dir="),
    ('extra_class', "differ between the splits: 'cyan' only in test/"),
    ('empty_class', "holds no pictures (.png"),
    ('unreadable_class', "holds no readable picture"),
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
    result = run_here('train.py', f'--data_dir={root}', '--dataset=folder', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, message)
    if damage == 'no_test':
        assert 'data_dir/train/<class>/<image> and data_dir/test/<class>/<image>' in result.stderr


# -----------------------------------------------------------------------------
# MNIST's files


@pytest.mark.parametrize('split,prefix', [('train', 'train'), ('test', 't10k')])
def test_labels_outside_the_classes_are_named(tmp_path, split, prefix, run_here):
    data = make_mnist_dir(str(tmp_path / 'data'), n_train=200, n_test=100)
    path = os.path.join(data, 'MNIST', 'raw', f'{prefix}-labels-idx1-ubyte')
    labels = np.frombuffer(open(path, 'rb').read()[8:], dtype=np.uint8).copy()
    labels[7] = 12
    write_idx(path, labels)
    result = run_here('train.py', f'--data_dir={data}', '--device=cpu', '--max_iters=1', cwd=tmp_path)
    assert_one_line_error(result, f"{path}: label 12 at index 7 is outside 0..9 (1 such label)")


@pytest.mark.parametrize('damage,message', [
    ('truncate', "train-images-idx3-ubyte is 5000 bytes, but its header (200, 28, 28) says 156816"),
    ('garbage', "train-images-idx3-ubyte starts with 6e6f7420, not 00000803, the IDX magic number of 3-D unsigned bytes"),
    ('missing', "train-labels-idx1-ubyte is missing and downloading it failed"),
])
def test_broken_idx_files_are_named(tmp_path, damage, message, run_here):
    data = make_mnist_dir(str(tmp_path / 'data'), n_train=200, n_test=100)
    raw = os.path.join(data, 'MNIST', 'raw')
    path = os.path.join(raw, 'train-images-idx3-ubyte')
    if damage == 'missing':
        os.remove(os.path.join(raw, 'train-labels-idx1-ubyte'))
    else:
        blob = open(path, 'rb').read()
        open(path, 'wb').write(blob[:5000] if damage == 'truncate' else b'not an idx file at all' * 10)
    result = run_here('train.py', f'--data_dir={data}', '--device=cpu', cwd=tmp_path, env=OFFLINE)
    assert_one_line_error(result, message, code=1)
    assert 'could not load the MNIST train split' in result.stderr


def test_cifar10_offline_without_its_files(tmp_path, run_here):
    result = run_here('train.py', '--dataset=cifar10', f'--data_dir={tmp_path}', '--device=cpu', cwd=tmp_path,
                        env=OFFLINE)
    assert_one_line_error(result, f"{tmp_path}/cifar-10-batches-py does not exist and downloading it failed", code=1)
    assert '--dataset=folder' in result.stderr


def test_two_processes_building_one_store_decode_it_once(tmp_path, monkeypatch):
    # as torchrun's processes on a node, or two runs started at once: one builds, the other waits, then maps it
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 4))
    script = (f"import sys; sys.path.insert(0, {REPO!r}); from data import load_folder; "
              f"print(load_folder({root!r}, True, 0).images.float().mean().item())")
    both = [subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in both]
    assert all(p.returncode == 0 for p in both)
    assert sum('decoded 120 pictures' in out for out in outputs) == 1
    assert len({out.splitlines()[-1] for out in outputs}) == 1  # the same pictures


def test_a_long_decode_shows_its_progress(capsys, monkeypatch):
    from store import Progress
    clock = iter([0.0, 20.0, 20.1, 40.0])
    monkeypatch.setattr('store.time.time', lambda: next(clock))
    progress = Progress('decoding train/', 1000)
    progress.update(500)  # 20 s in: 25 a second, 20 s left
    progress.update(510)  # too soon for a log file's next line
    progress.update(1000)
    assert capsys.readouterr().out.splitlines() == ['decoding train/: 500/1000, 25 a second, 20s left',
                                                    'decoding train/: 1000/1000, 25 a second, 0s left']


def test_random_resized_crop_takes_a_large_enough_piece_at_any_aspect():
    ramp = torch.linspace(0, 1, 40)
    x = torch.stack([ramp.expand(40, 40), ramp[:, None].expand(40, 40)])[None].expand(64, 2, 40, 40)  # x, y
    out = augment(x, torch.Generator().manual_seed(0), rrc_scale=0.35, size=32)
    assert out.shape == (64, 2, 32, 32)
    width = out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))
    height = out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))
    assert (width > 0.45).all() and (height > 0.45).all()  # a side of at least sqrt(0.35 * 3/4) of the picture
    assert (width * height > 0.3).all() and (width * height < 1.0).all()
    assert (width * height).std() > 0.05 and ((width / height).log().abs() > 0.1).any()  # sizes and shapes vary
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0), rrc_scale=0.35, size=32))


def test_a_store_larger_than_the_model_trains_on_crops_and_tests_on_the_centre(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 8), size=(24, 24))
    result = run_here('train.py', '--n_layer=1', '--n_head=2', '--n_embd=32', '--patch_size=4', '--device=cpu',
                      '--compile=False', '--plot=False', '--dataset=folder', f'--data_dir={root}', '--store_size=24',
                      '--img_size=16', '--aug_rrc_scale=0.35', '--batch_size=16', '--max_iters=4', '--eval_interval=4',
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'images of 3x24x24' in result.stdout
    checkpoint = torch.load(tmp_path / 'out-mnist' / 'ckpt.pt', weights_only=True)
    assert checkpoint['picture_size'] == 24 and checkpoint['model_args']['img_size'] == 16
    report = run_here('sample.py', '--device=cpu', '--n_attention=2', cwd=tmp_path)
    final = [r for r in read_jsonl(tmp_path / 'out-mnist' / 'metrics.jsonl') if 'val_acc' in r][-1]
    assert f"test accuracy: {100 * final['val_acc']:.2f}%" in report.stdout  # sample.py tests it as train.py did


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
    assert 'data: folder, 36 train / 9 test images of 3x20x20, 3 classes' in result.stdout
    assert torch.load(tmp_path / 'out-mnist' / 'ckpt.pt', weights_only=True)['classes'] == [
        'n01440764', 'n01443537', 'n15075141']
