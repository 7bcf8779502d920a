"""sample.py on the shared checkpoints (digits, and a folder of colour pictures): the report, the figures,
attention rollout, and the pictures users have."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, assert_one_line_error, grey_folder, make_picture_folder, png_claiming, run_script
from model import ViT, ViTConfig

FIGURES = ('predictions', 'mistakes', 'confusion', 'attention')


@pytest.fixture(scope='module')
def run_dir(trained_run, tmp_path_factory):
    """A folder holding a copy of the shared digits run as out/: sample.py writes its figures there."""
    cwd = tmp_path_factory.mktemp('sample')
    shutil.copytree(trained_run.out, cwd / 'out')
    return cwd


@pytest.fixture(scope='module')
def colour_dir(colour_run, tmp_path_factory):
    cwd = tmp_path_factory.mktemp('sample-colour')
    shutil.copytree(colour_run.out, cwd / 'out')
    return cwd


def assert_figures(out):
    for name in FIGURES:
        with Image.open(out / f'{name}.png') as figure:
            figure.verify()  # a whole, valid PNG
        with Image.open(out / f'{name}.png') as figure:
            width, height = figure.size
            assert 300 <= width <= 2000 and 150 <= height <= 2000, (name, figure.size)
            assert np.asarray(figure.convert('L')).std() > 10  # something is drawn


def test_figures_and_report_go_into_the_run_s_folder(run_dir, run_here):
    before = set(os.listdir(run_dir))
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', cwd=run_dir)
    assert result.returncode == 0, result.stderr
    assert 'test accuracy:' in result.stdout and '| checkpoint at iter 200' in result.stdout
    table = [line.split() for line in result.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in table] == list(range(10)) and table[7][3:] == ['7', '-', 'seven']
    assert_figures(run_dir / 'out')
    assert set(os.listdir(run_dir)) == before  # nothing outside out_dir


def test_colour_model_report_and_pictures(colour_dir, tmp_path, run_here):
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', cwd=colour_dir)
    assert result.returncode == 0, result.stderr
    assert [line.split()[-1] for line in result.stdout.splitlines() if line[:5].strip().isdigit()] == \
        ['blue', 'green', 'red']
    assert_figures(colour_dir / 'out')
    with Image.open(colour_dir / 'out' / 'predictions.png') as figure:  # colour pictures are shown in colour
        pixels = np.asarray(figure.convert('RGB')).astype(int)
        assert (np.abs(pixels[:, :, 0] - pixels[:, :, 2]) > 100).sum() > 100
    big_red = np.full((90, 60, 3), 128, dtype=np.uint8)
    big_red[10:80, 5:55] = (220, 40, 40)
    Image.fromarray(big_red).save(tmp_path / 'red thing.jpg')
    Image.fromarray(big_red[:, :, 0]).save(tmp_path / 'grey.png')
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', f'--image={tmp_path / "red thing.jpg"}', cwd=colour_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2].startswith(f"{tmp_path / 'red thing.jpg'}: red (")
    with Image.open(colour_dir / 'out' / 'input-red thing_jpg-seen.png') as seen:
        assert seen.size == (16, 16) and seen.mode == 'RGB'  # resized and cut to the model's size
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', f'--image={tmp_path / "grey.png"}', cwd=colour_dir)
    assert result.returncode == 0, result.stderr
    assert '(made colour: the model takes 3-channel pictures)' in result.stdout


def bar_picture(path, dark_on_light=True, rgb=False, size=(90, 140)):
    """A thick vertical stroke, a '1', drawn off centre on a canvas of another size than 28x28."""
    w, h = size
    canvas = np.zeros((h, w), dtype=np.uint8)
    canvas[20:110, 10:24] = 255  # near the top-left corner, far from the centre
    if dark_on_light:
        canvas = 255 - canvas
    picture = Image.fromarray(canvas)
    (picture.convert('RGB') if rgb else picture).save(path)
    return path


def centre_of_mass(image):
    mass = image.sum()
    ys, xs = np.indices(image.shape)
    return (ys * image).sum() / mass, (xs * image).sum() / mass


def seen(run_dir, name):
    return np.asarray(Image.open(run_dir / 'out' / f'input-{name}-seen.png'), dtype=np.float32)


@pytest.mark.parametrize('dark_on_light,rgb', [(True, False), (False, False), (True, True)])
def test_own_picture_is_made_into_an_mnist_digit(run_dir, dark_on_light, rgb, run_here):
    picture = bar_picture(run_dir / 'one.png', dark_on_light, rgb)
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', f'--image={picture}', cwd=run_dir)
    assert result.returncode == 0, result.stderr
    guesses = [line for line in result.stdout.splitlines() if line.startswith(f'{picture}: ')][0]
    assert guesses.count('%') == 3  # the top three classes with their probabilities
    digit = seen(run_dir, 'one_png')
    assert digit.shape == (28, 28)
    assert digit[0].max() == 0 and digit[:, 0].max() == 0  # black background, whatever the input's polarity
    assert digit.max() == 255
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1  # centred by mass
    rows = np.nonzero(digit.max(axis=1) > 128)[0]
    assert 18 <= rows.max() - rows.min() + 1 <= 20  # the long side fits 20 pixels
    assert (run_dir / 'out' / 'input-one_png.png').stat().st_size > 1000


def test_pictures_users_have(run_dir, tmp_path, run_here):
    folder = tmp_path / 'mine'
    folder.mkdir()
    stroke = np.zeros((140, 90), dtype=np.float64)
    stroke[20:110, 10:24] = 1
    Image.fromarray((stroke * 40000).astype(np.uint16)).save(folder / 'deep.png')  # 16-bit, grey values
    ink = np.zeros((140, 90, 4), dtype=np.uint8)
    ink[:, :, 3] = (stroke * 255).astype(np.uint8)  # black ink, on nothing
    Image.fromarray(ink, 'RGBA').save(folder / 'ink.png')
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise to display"
    Image.fromarray((255 - stroke.T * 255).astype(np.uint8)).save(folder / 'turned.jpg', exif=exif)
    bar_picture(folder / 'd.png')
    bar_picture(folder / 'd.jpg', dark_on_light=False)
    png_claiming(folder / 'bomb.png', 20000, 20000)
    (folder / 'broken.png').write_text('not a picture')
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', f'--image={folder}', cwd=run_dir)
    # every readable picture is classified, then the bad ones are named in one line
    classified = [line.split(':')[0] for line in result.stdout.splitlines() if line.count('%') == 3]
    assert classified == [str(folder / n) for n in ('d.jpg', 'd.png', 'deep.png', 'ink.png', 'turned.jpg')]
    assert_one_line_error(result, 'could not read 2 of the 7 pictures: ')
    assert 'bomb.png (too large to decode safely' in result.stderr and 'broken.png (not a picture' in result.stderr
    for name in ('deep_png', 'ink_png', 'turned_jpg', 'd_png', 'd_jpg'):
        digit = seen(run_dir, name)
        rows, cols = np.nonzero(digit > 128)
        assert np.ptp(rows) > 3 * np.ptp(cols), name  # an upright stroke, not blank, not lying down


def test_several_pictures_and_a_comma_in_a_name(run_dir, tmp_path, run_here):
    bar_picture(tmp_path / 'a.png')
    bar_picture(tmp_path / 'b,c.png')
    for spec, expected in ((f'{tmp_path / "a.png"},{tmp_path / "a.png"}', ['a.png', 'a.png']),
                           (str(tmp_path / 'b,c.png'), ['b,c.png'])):
        result = run_here('sample.py', '--out_dir=out', '--device=cpu', f'--image={spec}', cwd=run_dir)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.count('%') == 3]
        assert [os.path.basename(line.split(': ')[0]) for line in lines] == expected
    assert (run_dir / 'out' / 'input-a_png_.png').exists()  # the second a.png did not overwrite the first


@pytest.mark.parametrize('setup,args,message', [
    (None, ['--out_dir=nowhere'], 'no checkpoint at nowhere/ckpt.pt'),
    ('text', ['--image=fake.png'], 'could not read 1 of the 1 pictures: fake.png (not a picture PIL can read'),
    ('empty', ['--image=empty'], 'no images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff) in folder empty'),
    (None, ['--image=missing.png'], 'image not found: missing.png'),
    ('blank', ['--image=blank.png'], 'blank.png (the picture is blank)'),
    ('dangling', ['--image=pics'], 'pics/gone.png (no such file (a link that leads nowhere?))'),
    ('no_stats', [], 'out2/ckpt.pt lacks data_mean: saved by another version of nanoViT, or edited'),
])
def test_bad_input(run_dir, setup, args, message, run_here):
    if setup == 'text':
        (run_dir / 'fake.png').write_text('hello')
    elif setup == 'empty':
        (run_dir / 'empty').mkdir(exist_ok=True)
    elif setup == 'blank':
        Image.fromarray(np.full((40, 40), 255, dtype=np.uint8)).save(run_dir / 'blank.png')
    elif setup == 'dangling':  # a folder of pictures with a link among them whose target was deleted
        (run_dir / 'pics').mkdir(exist_ok=True)
        Image.new('L', (28, 28)).save(run_dir / 'pics' / 'a.png')
        if not os.path.lexists(run_dir / 'pics' / 'gone.png'):
            os.symlink(run_dir / 'nothing.png', run_dir / 'pics' / 'gone.png')
    elif setup == 'no_stats':
        os.makedirs(run_dir / 'out2', exist_ok=True)
        checkpoint = torch.load(run_dir / 'out' / 'ckpt.pt', weights_only=True)
        del checkpoint['data_mean']
        torch.save(checkpoint, run_dir / 'out2' / 'ckpt.pt')
        args = ['--out_dir=out2']
    out = [] if any(a.startswith('--out_dir') for a in args) else ['--out_dir=out']
    result = run_here('sample.py', '--device=cpu', *out, *args, cwd=run_dir)
    assert_one_line_error(result, message)


@pytest.mark.parametrize('edit,args,message', [
    ('no data_dir', [], "does not say where its data is: give --data_dir"),
    ('figure is a folder', [], "could not write out/predictions.png: Is a directory (give another folder: --figures_dir)"),
    (None, ['--image=,'], "image=',' names no picture"),
])
def test_sample_py_on_edited_files(edit, args, message, copy_of_run, run_here):
    if edit == 'no data_dir':
        checkpoint = torch.load(copy_of_run / 'ckpt.pt', weights_only=True)
        checkpoint['config'].pop('data_dir')
        torch.save(checkpoint, copy_of_run / 'ckpt.pt')
    elif edit == 'figure is a folder':
        os.makedirs(copy_of_run / 'predictions.png')
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', *args, cwd=copy_of_run.parent)
    assert_one_line_error(result, message)


def test_a_run_folder_that_cannot_be_written_takes_its_figures_elsewhere(copy_of_run, run_here):
    os.chmod(copy_of_run, 0o555)
    try:
        if not os.access(copy_of_run, os.W_OK):  # (root writes into any folder: there, only the second half)
            result = run_here('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=0', cwd=copy_of_run.parent)
            assert_one_line_error(result, "could not write out/predictions.png: Permission denied (give another "
                                          "folder: --figures_dir)")
    finally:
        os.chmod(copy_of_run, 0o755)
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=0', '--figures_dir=figures',
                      cwd=copy_of_run.parent)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(copy_of_run.parent / 'figures')) == ['confusion.png', 'mistakes.png', 'predictions.png']


def test_sample_py_refuses_a_folder_of_other_classes_before_decoding_it(colour_dir, tmp_path, run_here):
    other = tmp_path / 'other'
    for split in ('train', 'test'):
        for c in ('cat', 'dog'):
            os.makedirs(other / split / c)
            Image.new('RGB', (16, 16), 'white').save(other / split / c / '0.png')
    (colour_dir / 'out' / 'predictions.png').unlink(missing_ok=True)
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', f'--data_dir={other}', cwd=colour_dir)
    assert_one_line_error(result, "the classes in")
    assert "(cat, dog) are not the 3 the model was trained on (blue, green, red)" in result.stderr
    assert not (colour_dir / 'out' / 'predictions.png').exists() and 'decoded' not in result.stdout


# -----------------------------------------------------------------------------
# attention rollout, sample.py's own function on models of every pooling


@pytest.fixture(scope='module')
def rollout(run_dir):
    """sample.py's attention_rollout, from a run of the script itself."""
    import runpy
    import sys
    argv = sys.argv
    sys.argv = ['sample.py', f'--out_dir={run_dir / "out"}', '--device=cpu', '--n_attention=1']
    try:
        return runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'sample.py'),
                              run_name='__main__')['attention_rollout']
    finally:
        sys.argv = argv


def randomized(model):
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


@pytest.mark.parametrize('pool', ['cls', 'mean'])
def test_attention_rollout(pool, rollout):
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=3, n_head=2, n_embd=32, patch_size=7, pool=pool, pos_std=1.0)))
    x = torch.randn(5, 1, 28, 28)
    # one layer's rollout: its attention averaged over heads, mixed with the identity, read as the pooling reads
    one = ViT(ViTConfig(n_layer=1, n_head=2, n_embd=32, patch_size=7, pool=pool, pos_std=1.0)).eval()
    with torch.no_grad():
        tokens = one.embed(x)
        layer = one.blocks[0].attn.attention_probs(one.blocks[0].ln_1(tokens)).mean(dim=1)
    n = tokens.shape[1]
    mixed = (layer + torch.eye(n)) / 2
    expected = mixed[:, 0, 1:] if pool == 'cls' else mixed.mean(dim=1)
    assert torch.allclose(rollout(one, x).flatten(1), expected / expected.sum(-1, keepdim=True), atol=1e-6)
    maps = rollout(model, x)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # as sample.py runs it on a bf16 CPU
        assert torch.allclose(rollout(model, x), maps, atol=0.02)
    assert maps.shape == (5, 4, 4) and maps.dtype == torch.float32
    assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(5), atol=1e-5)
    assert (maps >= 0).all() and not torch.allclose(maps, torch.full_like(maps, 1 / 16))


def test_a_sixteen_bit_grey_picture_into_a_grey_model_prints_no_warning(tmp_path, run_here):
    root = grey_folder(tmp_path / 'grey', n=40)
    assert run_here('train.py', *TINY, '--dataset=folder', f'--data_dir={root}', '--max_iters=2', '--eval_interval=2',
                    '--out_dir=out', cwd=tmp_path).returncode == 0
    ramp = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'deep.png')
    # a fresh process: torch says its warning once a process, and this one may have said it already
    result = run_script('sample.py', '--out_dir=out', '--device=cpu', f'--image={tmp_path / "deep.png"}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == '', result.stderr


def test_a_run_on_oblong_pictures_is_reported_on_its_own_folder(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(20, 4), size=(24, 16))
    assert run_here('train.py', *TINY, '--dataset=folder', f'--data_dir={root}', '--patch_size=4', '--max_iters=2',
                    '--eval_interval=2', '--out_dir=out', cwd=tmp_path).returncode == 0
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=2', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'test accuracy' in result.stdout and (tmp_path / 'out' / 'attention.png').exists()
    # a picture of its own is cut to the run's sides (24 x 16), which the model stretches square as it did in training
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(tmp_path / 'square.png')
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', f"--image={tmp_path / 'square.png'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / 'out' / 'input-square_png-seen.png') as seen:
        assert seen.size == (24, 16)
