"""data.py: the datasets (MNIST's files, folders of pictures as users have them), augmentation geometry,
test-time views, the model's input, the batches and the held-out split."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (COLOURS, FAST, REPO, TINY, assert_one_line_error, final_eval, grey_folder, load_split,
                      make_mnist_dir, make_picture_folder, write_idx)
from data import Batches, ModelInput, affine, augment, hold_out, normalize, predict, shift, tta_views
from support.pictures import read_image

OFFLINE = {'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9'}  # every download fails at once
FOLDER = TINY + ['--dataset=folder', '--max_iters=4', '--eval_interval=4', '--log_interval=2']


@pytest.fixture
def pictures(tmp_path):
    """3 classes of 28x28 colour pictures, 30 train and 10 test each."""
    return make_picture_folder(str(tmp_path / 'pictures'), per_class=(30, 10), size=(28, 28))


# -----------------------------------------------------------------------------
# the model's input: geometry, views, normalization


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
    as_is = ModelInput(1, 28, torch.zeros(1), torch.ones(1))
    centre, border = dot(10, 10), dot(0, 10)
    assert predict(brightness, centre, as_is).item() == pytest.approx(1.0)
    assert predict(brightness, centre, as_is, tta_shift=1).item() == pytest.approx(1.0)  # every view keeps the dot
    # moved up by one pixel, the top row leaves the picture: 3 of the 9 views lose the dot
    assert predict(brightness, border, as_is, tta_shift=1).item() == pytest.approx(6 / 9)


def test_the_model_s_input_from_any_picture():
    pictures = torch.randint(0, 256, (4, 3, 36, 36), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    x = ModelInput(3, 32, mean, std, crop=0.875)(pictures)  # a store kept larger: its centre, at the model's side
    expected = ((pictures[:, :, 2:34, 2:34].float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    assert x.shape == (4, 3, 32, 32) and torch.allclose(x, expected, atol=1e-6)
    grey = ModelInput(1, 16, torch.zeros(1), torch.ones(1))(pictures)  # colour into a grey model, shrunk
    assert grey.shape == (4, 1, 16, 16) and 0 <= grey.min() and grey.max() <= 1
    assert ModelInput(3, 28, torch.zeros(3), torch.ones(3))(pictures[:, :1, :28, :28]).shape == (4, 3, 28, 28)

def test_normalize_gives_zero_mean_and_unit_variance():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8)
    images[:, 1] //= 4  # a darker channel
    pixels = images.double() / 255
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3), unbiased=False).tolist()
    x = normalize(images, mean, std)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.equal(normalize(images.float() / 255, mean, std), x)  # floats in [0, 1] mean the same


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


# -----------------------------------------------------------------------------
# batches


def batches_of(n, batch_size, accumulation=1, rank=0, world_size=1, seed=1, aug_args=None):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    aug = dict(dict(translate=0.0, rotate=0.0, scale=0.0, crop=0, flip=False, rrc_scale=0.0), **(aug_args or {}))
    return Batches(images, torch.arange(n), torch.arange(n), batch_size, accumulation, rank, world_size, seed, aug,
                   ModelInput(1, 4, torch.zeros(1), torch.ones(1) / 255), 'cpu')


def test_batches_are_a_function_of_the_seed_and_the_step():
    one = batches_of(40, 8)
    epoch = torch.cat([one.get(it, 0)[1] for it in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))  # an epoch sees every picture once
    assert not torch.equal(epoch, torch.cat([one.get(it, 0)[1] for it in range(5, 10)]))  # reshuffled each epoch
    assert torch.equal(batches_of(40, 8).get(7, 0)[1], one.get(7, 0)[1])  # asked out of turn: the same batch
    assert not torch.equal(batches_of(40, 8, seed=2).get(0, 0)[1], one.get(0, 0)[1])
    x, y = one.get(3, 0)
    assert torch.allclose(x[:, 0, 0, 0], y.float(), atol=1e-4)  # each picture comes with its own label
    # two processes with half the batch each, or two micro-steps: the same global batch, split
    halves = [batches_of(40, 4, rank=r, world_size=2).get(3, 0)[1] for r in (0, 1)]
    steps = [batches_of(40, 4, accumulation=2).get(3, m)[1] for m in (0, 1)]
    assert torch.equal(torch.cat(halves), one.get(3, 0)[1]) and torch.equal(torch.cat(steps), one.get(3, 0)[1])
    augmented = batches_of(40, 8, aug_args=dict(crop=1))
    assert torch.equal(augmented.get(2, 0)[0], batches_of(40, 8, aug_args=dict(crop=1)).get(2, 0)[0])
    assert not torch.equal(augmented.get(2, 0)[0], one.get(2, 0)[0])


def test_a_held_out_split_is_fixed_and_apart():
    train, val = hold_out(1000, 100)
    assert len(val) == 100 and len(train) == 900 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(hold_out(1000, 100)[1], val)  # the same pictures for every run and seed
    assert val.float().std() > 200  # spread over the split (a folder's last pictures are all one class)
    assert len(hold_out(1000, 0)[1]) == 0
    with pytest.raises(SystemExit):
        hold_out(100, 100)


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


# -----------------------------------------------------------------------------
# folder datasets


def test_grey_folders_stay_grey_and_sizes_are_unified(tmp_path, run_here):
    root = tmp_path / 'pictures'
    for split in ('train', 'val'):
        for c, size in (('a', (20, 12)), ('b', (12, 30))):
            os.makedirs(root / split / c)
            for i in range(3):
                Image.new('L', size, 40 * i).save(root / split / c / f'{i}.png')
    result = run_here('train.py', f'--data_dir={root}', '--dataset=folder', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, 'the pictures have different sizes (20x12, 12x30); set --img_size=N')
    store = load_split('folder', str(root), 'test', 8)  # val/ is taken for test/
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
    store = load_split('folder', root, 'train')
    assert len(store.images) == 70 and (store.labels == 2).sum() == 22  # red is the third class
    # the gaps the broken pictures left are closed: every kept picture is its file's
    kept = store.images[store.labels == 2]
    assert torch.equal(kept[0], torch.from_numpy(read_image(red / '000.png')).permute(2, 0, 1))
    assert torch.equal(kept[2], torch.from_numpy(read_image(red / '004.png')).permute(2, 0, 1))
    out = capsys.readouterr().out
    assert "note: left out 8 files in" in out and "that are not pictures by their name or not regular files" in out
    assert "note: skipped 2 of the 72 pictures in" in out
    assert "train/red/002.png (not a picture PIL can read" in out and "train/red/003.png" in out
    load_split('folder', root, 'train')  # from the store: what the build skipped is said again
    assert "note: skipped 2 of the 72 pictures in" in capsys.readouterr().out
    # a large share of broken pictures means a wrong folder: one line
    for i in range(5, 12):
        (red / f'{i:03d}.png').write_text('broken')
    with pytest.raises(SystemExit):
        load_split('folder', root, 'train')
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


def test_a_colour_picture_among_grey_test_pictures_is_made_grey(tmp_path, run_here):
    root = grey_folder(tmp_path / 'grey')
    Image.new('RGB', (28, 28), (200, 10, 10)).save(tmp_path / 'grey' / 'test' / 'a' / 'colour.png')
    assert load_split('folder', root, 'train').images.shape[1] == 1 and load_split('folder', root, 'test').images.shape[1] == 3
    result = run_here('train.py', *FOLDER, '--batch_size=8', f'--data_dir={root}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # the model takes grey: each test batch is made grey
    assert 'data: folder, 24 train / 0 val / 25 test images of 1x28x28' in result.stdout


def test_test_pictures_of_another_size_stop_the_run_at_start(tmp_path, run_here):
    root = grey_folder(tmp_path / 'sizes', sizes=(('train', 28), ('test', 32)))
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=out', cwd=tmp_path)
    assert_one_line_error(result, 'the test pictures are 32x32, the training pictures 28x28; set --img_size=N', code=2)
    assert not (tmp_path / 'out' / 'metrics.jsonl').exists() and 'decoded' not in result.stdout  # before any decoding


def test_img_size_too_small_for_the_patches_stops_before_decoding(pictures, tmp_path, run_here):
    result = run_here('train.py', *FOLDER, f'--data_dir={pictures}', '--img_size=6', cwd=tmp_path)
    assert_one_line_error(result, 'bad model config: img_size=6 is not divisible by patch_size=7', code=2)
    assert 'decoded' not in result.stdout


def test_a_store_larger_than_the_model_trains_on_crops_and_tests_on_the_centre(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(40, 8), size=(24, 24))
    result = run_here('train.py', '--n_layer=1', '--n_head=2', '--n_embd=32', '--patch_size=4', '--device=cpu',
                      '--compile=False', '--plot=False', '--dataset=folder', f'--data_dir={root}', '--store_size=24',
                      '--img_size=16', '--aug_rrc_scale=0.35', '--batch_size=16', '--max_iters=4', '--eval_interval=4',
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'images of 3x24x24' in result.stdout
    checkpoint = torch.load(tmp_path / 'out-mnist' / 'ckpt.pt', weights_only=True)
    assert checkpoint['store_size'] == 24 and checkpoint['model_args']['img_size'] == 16
    report = run_here('sample.py', '--device=cpu', '--n_attention=2', cwd=tmp_path)
    assert f"test accuracy: {100 * final_eval(tmp_path / 'out-mnist')['test_acc']:.2f}%" in report.stdout  # as train.py did


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


def test_a_validation_folder_left_flat_says_to_sort_it_before_any_decoding(tmp_path, run_here):
    # ImageNet's val/ comes as 50,000 loose JPEGs with a label file: found before the training split is decoded
    root = make_picture_folder(str(tmp_path / 'imagenet'), per_class=(30, 0), split_names=('train', 'val'))
    for i in range(3):
        Image.new('RGB', (16, 16)).save(tmp_path / 'imagenet' / 'val' / f'ILSVRC2012_val_{i:08d}.JPEG')
    for c in COLOURS:
        os.rmdir(tmp_path / 'imagenet' / 'val' / c)
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=4', cwd=tmp_path)
    assert_one_line_error(result, f"{root}/val holds 3 pictures but no class folders: sort them into {root}/val/<class>/")
    assert 'decod' not in result.stdout


def test_a_stored_torchvision_dataset_opens_without_torchvision(synthetic_data, tmp_path):
    # the speedrun's start: importing torchvision and reading its files would cost seconds, for nothing
    script = (f"import sys; sys.path.insert(0, {REPO!r}); from data import find_split; "
              f"split = find_split('mnist', {synthetic_data!r}, 'train', 0); store = split.load(); "
              f"print(len(store.labels), store.classes[3], 'torchvision' in sys.modules)")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
    first, second = (subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env)
                     for _ in range(2))
    assert first.stdout.split() == ['2000', '3', '-', 'three', 'True'], first.stderr  # built through torchvision
    assert second.stdout.split() == ['2000', '3', '-', 'three', 'False'], second.stderr  # opened from the store
