"""
What the model is fed: pictures as they come from a prepared dataset (uint8, prepare.py) made into the model's
input, the random changes that augment a training batch, and the views a test picture is evaluated on. All of it
runs on the device, on whole batches; train.py draws the batches (get_batch) and calls these.
"""
import math

import torch
from torch.nn import functional as F

GREY = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601 luma, as PIL's convert('L')

def model_input(x, config, mean, std, crop=1.0):
    """Pictures (B, C, H, W), uint8 or floats in [0, 1], as the model of ViTConfig config takes them: its channels
    (grey made colour, colour made grey), the centre crop share of the side (ImageNet's test crop, of pictures kept
    larger than the model's side), its side, normalized per channel with the mean and std its weights expect."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x
    if x.shape[1] != config.in_chans:
        x = x.expand(-1, 3, -1, -1) if config.in_chans == 3 else (x * GREY.to(x)).sum(dim=1, keepdim=True)
    if crop < 1:
        keep = round(x.shape[-1] * crop)
        top = (x.shape[-1] - keep) // 2
        x = x[..., top:top + keep, top:top + keep]
    if x.shape[-2:] != (config.img_size, config.img_size):  # bilinear, antialiased when shrinking
        x = F.interpolate(x, size=(config.img_size, config.img_size), mode='bilinear', align_corners=False,
                          antialias=x.shape[-1] > config.img_size)
    mean, std = (torch.as_tensor(s, dtype=x.dtype, device=x.device).view(-1, 1, 1) for s in (mean, std))
    return (x - mean).div_(std)  # in place: a batch of large pictures costs one copy of it less

# -----------------------------------------------------------------------------
# augmentation: random label-keeping changes, drawn per picture from a generator

def affine(x, angle, zoom, shift_x, shift_y):
    """Rotate each picture of x (B, C, H, W) by angle (radians), zoom it, and shift it by (shift_x, shift_y) pixels
    (right, down); each argument holds one value per picture. What leaves the frame is lost, what enters is black."""
    _, _, H, W = x.shape
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    # affine_grid maps each output pixel to where it samples the input, in [-1, 1] units (a pixel is 2 / size)
    theta = torch.stack([cos, -sin, -shift_x * 2 / W, sin, cos, -shift_y * 2 / H], 1).view(-1, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)

def random_resized_crop(x, generator, min_scale, size):
    """Inception's and ImageNet's crop of each picture of x (B, C, H, W): a share of its area drawn from [min_scale, 1],
    an aspect ratio from [3/4, 4/3] (log-uniform), a place, then resized to size x size."""
    u = torch.rand(4, x.shape[0], device=x.device, generator=generator)
    area = min_scale + (1 - min_scale) * u[0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # half-sides, in [-1, 1] units
    cx, cy = (1 - w) * (2 * u[2] - 1), (1 - h) * (2 * u[3] - 1)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [*x.shape[:2], size, size], align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)

def augment(x, generator, translate=0.0, rotate=0.0, scale=0.0, crop=0, flip=False, rrc_scale=0.0, size=None):
    """Float pictures x (B, C, H, W) changed at random: a random-resized crop to size x size (at least rrc_scale of the
    area), an affine map (a rotation by up to rotate degrees and a zoom by up to scale, about the centre, then a shift
    by up to translate pixels, plus a shift by a whole number of pixels up to crop: a random crop of the picture padded
    by crop), a mirror image half of the time."""
    B = x.shape[0]
    if rrc_scale:
        x = random_resized_crop(x, generator, rrc_scale, size or x.shape[-1])
    if translate or rotate or scale or crop:
        u = torch.rand(4, B, device=x.device, generator=generator) * 2 - 1  # uniform in [-1, 1)
        whole = torch.randint(-crop, crop + 1, (2, B), device=x.device, generator=generator) if crop else 0
        shift = u[2:] * translate + whole
        x = affine(x, u[0] * math.radians(rotate), 1 + u[1] * scale, shift[0], shift[1])
    if flip:
        mirrored = torch.rand(B, 1, 1, 1, device=x.device, generator=generator) < 0.5
        x = torch.where(mirrored, x.flip(3), x)
    return x

# -----------------------------------------------------------------------------
# evaluation

def shifted_views(images, pixels, count=9):
    """What test-time augmentation looks at: images (B, C, H, W) and, for pixels > 0, copies moved by pixels, filled
    with black (windows of the padded pictures): count=9, in every direction (the 3 x 3 neighbourhood of shifts);
    count=5, up, down, left and right (the 3 x 3's middle row and column)."""
    if not pixels:
        return [images]
    H, W = images.shape[-2:]
    padded = F.pad(images, (pixels, pixels, pixels, pixels))
    moves = [(top, left) for top in (2 * pixels, pixels, 0) for left in (2 * pixels, pixels, 0)
             if count == 9 or pixels in (top, left)]
    return [padded[..., top:top + H, left:left + W] for top, left in moves]

def predict(model, images, mean, std, crop=1.0, tta_shift=0, tta_views=9):
    """The logits an evaluation reports for uint8 images: the model's, or with tta_shift > 0 their mean over the
    shifted_views (shifted before the model's crop and resize, as the training augmentation shifts)."""
    views = shifted_views(images, tta_shift, tta_views)
    return sum(model(model_input(view, model.config, mean, std, crop))[0].float() for view in views) / len(views)
