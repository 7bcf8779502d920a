"""data.py: what the model is fed: augmentation geometry, test-time views, the model's input from any picture."""
import pytest
import torch

from data import affine, augment, model_input, predict, shifted_views
from model import ViTConfig


def side(channels, size):
    return ViTConfig(in_chans=channels, img_size=size, patch_size=size)


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


def shifted(x, dy, dx):
    """x (C, H, W) moved down dy and right dx whole pixels, black where it leaves: a crop of the padded picture."""
    out = torch.zeros_like(x)
    H, W = x.shape[-2:]
    out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = x[:, max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


def test_augment_crop_and_flip_keep_every_picture_a_shifted_or_mirrored_copy():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    generator = torch.Generator().manual_seed(5)
    out = augment(x, generator, crop=2, flip=True)
    mirrored, moved = 0, set()
    for original, seen in zip(x, out):
        matches = [(dy, dx, m) for m in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.allclose(seen, shifted(original.flip(2) if m else original, dy, dx), atol=1e-5)]
        assert len(matches) == 1, matches
        mirrored += matches[0][2]
        moved.add(matches[0][:2])
    assert 16 < mirrored < 48 and len(moved) > 15  # about half mirrored, and most of the 25 shifts drawn
    again = augment(x, torch.Generator().manual_seed(5), crop=2, flip=True)
    assert torch.equal(out, again)  # the draws are the generator's: a resumed run redraws them



def test_shifted_views_are_the_picture_and_its_eight_or_four_shifts():
    views = shifted_views(dot(10, 10), 2)
    assert [where(v) for v in views] == [[(10 + dy, 10 + dx)] for dy in (-2, 0, 2) for dx in (-2, 0, 2)]
    plus = shifted_views(dot(10, 10), 2, count=5)  # the middle row and column of the 3 x 3: no diagonal move
    assert [where(v) for v in plus] == [[(8, 10)], [(10, 8)], [(10, 10)], [(10, 12)], [(12, 10)]]
    one = shifted_views(dot(10, 10), 0)
    assert len(one) == 1 and torch.equal(one[0], dot(10, 10))
    pictures = (torch.rand(3, 3, 8, 8) * 255).to(torch.uint8)  # uint8, as the test split is kept
    assert all(v.dtype == torch.uint8 and v.shape == pictures.shape for v in shifted_views(pictures, 1))


def test_predict_averages_the_logits_of_the_views():
    # a stand-in model: one logit, the picture's total ink
    model = type('Ink', (), {'config': side(1, 28), '__call__': lambda self, x: (x.sum(dim=(1, 2, 3))[:, None], None)})()
    centre, border = dot(10, 10), dot(0, 10)
    assert predict(model, centre, [0.0], [1.0]).item() == pytest.approx(1.0)
    assert predict(model, centre, [0.0], [1.0], tta_shift=1).item() == pytest.approx(1.0)  # every view keeps the dot
    # moved up by one pixel, the top row leaves the picture: 3 of the 9 views lose the dot
    assert predict(model, border, [0.0], [1.0], tta_shift=1).item() == pytest.approx(6 / 9)
    # of the 5 views, the one moved up alone loses it
    assert predict(model, border, [0.0], [1.0], tta_shift=1, tta_views=5).item() == pytest.approx(4 / 5)


def test_the_model_s_input_from_any_picture():
    pictures = torch.randint(0, 256, (4, 3, 36, 36), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    x = model_input(pictures, side(3, 32), mean, std, crop=0.875)  # kept larger: its centre, at the model's side
    expected = ((pictures[:, :, 2:34, 2:34].float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    assert x.shape == (4, 3, 32, 32) and torch.allclose(x, expected, atol=1e-6)
    made_grey = model_input(pictures, side(1, 16), [0.0], [1.0])  # colour into a grey model, shrunk
    assert made_grey.shape == (4, 1, 16, 16) and 0 <= made_grey.min() and made_grey.max() <= 1
    assert model_input(pictures[:, :1, :28, :28], side(3, 28), [0.0] * 3, [1.0] * 3).shape == (4, 3, 28, 28)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(model_input(red, side(1, 1), [0.0], [1.0]), torch.tensor(0.299))  # ITU-R 601 luma

def test_normalize_gives_zero_mean_and_unit_variance():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8)
    images[:, 1] //= 4  # a darker channel
    pixels = images.double() / 255
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3), unbiased=False).tolist()
    x = model_input(images, side(3, 9), mean, std)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.equal(model_input(images.float() / 255, side(3, 9), mean, std), x)  # floats in [0, 1] mean the same


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
