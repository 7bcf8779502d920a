"""support/pictures.py: the pictures users have (every format and mode, EXIF, transparency, 16 bits, huge and
hostile files, names that are not UTF-8)."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, make_picture_folder, png_claiming, run_script
from support.pictures import pictures_below, read_image

FOLDER = TINY + ['--dataset=folder', '--max_iters=4', '--eval_interval=4', '--log_interval=2']


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


def test_premultiplied_grey_and_alpha_is_laid_on_white(tmp_path):
    # a TIFF whose alpha is "associated" (its grey already multiplied by it) opens in PIL's mode 'La', which PIL
    # converts to RGBA only through 'LA'; PIL writes no such TIFF, so one is made from an 'LA' one by its tag
    grey = np.zeros((4, 4, 2), dtype=np.uint8)
    grey[..., 0], grey[..., 1] = 50, 128  # 50 = 100 x 128 / 255: grey 100, half transparent
    Image.fromarray(grey, 'LA').save(tmp_path / 'la.tif')
    unassociated = bytes.fromhex('5201 0300 01000000 0200')  # ExtraSamples (338), one SHORT: 2
    tiff = (tmp_path / 'la.tif').read_bytes()
    assert tiff.count(unassociated) == 1
    (tmp_path / 'la.tif').write_bytes(tiff.replace(unassociated, unassociated[:-2] + b'\x01\x00'))  # 1: associated
    assert Image.open(tmp_path / 'la.tif').mode == 'La'
    assert abs(int(read_image(tmp_path / 'la.tif')[0, 0, 0]) - 177) <= 1  # 100 x 0.5 + 255 x 0.5


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


def test_a_picture_too_large_to_decode_whole_is_refused_before_decoding(tmp_path):
    # a 16-bit 12000 x 12000 PNG is a few hundred KB on disk and gigabytes once decoded: PNG has no draft mode
    with pytest.raises(ValueError, match=r'too large to decode safely \(12000x12000 pixels, more than 50,000,000\)'):
        read_image(png_claiming(tmp_path / 'deep.png', 12000, 12000))


def test_a_picture_deleted_while_its_folder_is_listed_is_left_out(tmp_path, monkeypatch):
    for name in ('a.png', 'b.png'):
        Image.new('L', (4, 4)).save(tmp_path / name)
    real_walk = os.walk

    def walk_then_delete(folder):  # b.png goes after its folder is listed, before it is looked at
        for parent, dirs, names in real_walk(folder):
            os.remove(os.path.join(parent, 'b.png'))
            yield parent, dirs, names
    monkeypatch.setattr('support.pictures.os.walk', walk_then_delete)
    pictures, others = pictures_below(str(tmp_path))
    assert [os.path.basename(p) for p, _ in pictures] == ['a.png'] and others == [str(tmp_path / 'b.png')]


@pytest.mark.slow
def test_symlinked_folders_and_names_that_are_not_utf8(tmp_path):
    # under a UTF-8 locale with strict printing (as a terminal has it): train.py and sample.py print such names
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(20, 5))
    os.symlink(os.path.join(root, 'train', 'blue'), os.path.join(root, 'train', 'red', 'linked'))
    odd = os.fsencode(os.path.join(root, 'train', 'red')) + b'/caf\xe9.png'
    shutil.copy(os.path.join(root, 'train', 'red', '000.png'), odd)
    for split in ('train', 'test'):  # a class folder whose name is not UTF-8
        os.rename(os.path.join(root, split, 'green'), os.fsencode(os.path.join(root, split)) + b'/gr\xfcn')
    env = {'PYTHONIOENCODING': 'utf-8', 'LC_ALL': 'C.UTF-8'}
    result = run_script('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=4', '--out_dir=out', cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert 'left out 1 files' in result.stdout and 'red/linked' in result.stdout  # the symlinked folder, named
    assert 'data: folder, 61 train / 0 val / 15 test images' in result.stdout
    report = run_script('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=0', cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert 'gr\\udcfcn' in report.stdout
