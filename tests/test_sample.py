"""sample.py on a tiny checkpoint trained here: figures, the test-split report, your own pictures."""
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_script

FIGURES = ('predictions', 'mistakes', 'confusion', 'attention')


@pytest.fixture(scope='module')
def run_dir(synthetic_data, tmp_path_factory):
    cwd = tmp_path_factory.mktemp('sample')
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--pos_std=1.0', '--learning_rate=3e-3',
                        '--warmup_iters=10', '--max_iters=100', '--eval_interval=100', '--out_dir=out', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd


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


def test_figures_and_report(run_dir):
    result = run_script('sample.py', '--out_dir=out', '--device=cpu', cwd=run_dir)
    assert result.returncode == 0, result.stderr
    assert 'test accuracy:' in result.stdout and '| checkpoint at iter 100' in result.stdout
    table = [line for line in result.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(line.split()[0]) for line in table] == list(range(10))
    for name in FIGURES:
        with Image.open(run_dir / 'images' / f'out-{name}.png') as figure:
            figure.verify()  # a whole, valid PNG
        with Image.open(run_dir / 'images' / f'out-{name}.png') as figure:
            width, height = figure.size
            assert 300 <= width <= 2000 and 150 <= height <= 2000, (name, figure.size)
            assert np.asarray(figure.convert('L')).std() > 10  # something is drawn


def centre_of_mass(image):
    mass = image.sum()
    ys, xs = np.indices(image.shape)
    return (ys * image).sum() / mass, (xs * image).sum() / mass


@pytest.mark.parametrize('dark_on_light,rgb', [(True, False), (False, False), (True, True)])
def test_own_picture_is_made_into_an_mnist_digit(run_dir, dark_on_light, rgb):
    picture = bar_picture(run_dir / 'one.png', dark_on_light, rgb)
    result = run_script('sample.py', '--out_dir=out', '--device=cpu', f'--image={picture}', cwd=run_dir)
    assert result.returncode == 0, result.stderr
    guesses = [line for line in result.stdout.splitlines() if line.startswith(f'{picture}: ')][0]
    assert guesses.count('%') == 3  # the top three classes with their probabilities
    seen = np.asarray(Image.open(run_dir / 'images' / 'out-input-one-28x28.png'), dtype=np.float32)
    assert seen.shape == (28, 28)
    assert seen[0].max() == 0 and seen[:, 0].max() == 0  # black background, whatever the input's polarity
    assert seen.max() == 255
    cy, cx = centre_of_mass(seen)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1  # centred by mass
    rows = np.nonzero(seen.max(axis=1) > 128)[0]
    assert 18 <= rows.max() - rows.min() + 1 <= 20  # the long side fits 20 pixels
    assert (run_dir / 'images' / 'out-input-one.png').stat().st_size > 1000


def test_several_pictures_and_a_folder(run_dir, tmp_path):
    folder = tmp_path / 'digits'
    folder.mkdir()
    bar_picture(folder / 'a.png')
    bar_picture(folder / 'b.jpg', dark_on_light=False)
    (folder / 'notes.txt').write_text('not a picture, and not picked up')
    single = bar_picture(tmp_path / 'c.png')
    result = run_script('sample.py', '--out_dir=out', '--device=cpu', f'--image={folder},{single}', cwd=run_dir)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if '%' in line]
    assert [line.split(':')[0] for line in lines] == [str(folder / 'a.png'), str(folder / 'b.jpg'), str(single)]


@pytest.mark.parametrize('setup,args,message', [
    (None, ['--out_dir=nowhere'], 'no checkpoint at nowhere/ckpt.pt'),
    ('text', ['--image=fake.png'], 'fake.png is not an image this program can read'),
    ('empty', ['--image=empty'], 'no images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff) in folder empty'),
    (None, ['--image=missing.png'], 'image not found: missing.png'),
    ('blank', ['--image=blank.png'], 'blank.png: the picture is blank'),
])
def test_bad_input(run_dir, setup, args, message):
    if setup == 'text':
        (run_dir / 'fake.png').write_text('hello')
    elif setup == 'empty':
        (run_dir / 'empty').mkdir(exist_ok=True)
    elif setup == 'blank':
        Image.fromarray(np.full((40, 40), 255, dtype=np.uint8)).save(run_dir / 'blank.png')
    result = run_script('sample.py', '--device=cpu', *(['--out_dir=out'] if '--out_dir' not in args[0] else []),
                        *args, cwd=run_dir)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1
