"""
Picture files as people have them: reading one (any format PIL reads, EXIF-rotated, transparent, 16-bit, huge)
into uint8 pixels, and finding the pictures in a folder. prepare.py reads datasets with it, sample.py --image
your own pictures.
"""
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from support.errors import die

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
MAX_PIXELS = 50_000_000  # a picture decoded whole (no JPEG draft) larger than this costs gigabytes: refused
GREY_MODES = ('1', 'L', 'LA', 'La', 'F')  # and 'I...': what read_image returns with one channel

def read_image(path, size=0, channels=0, max_side=2048):
    """A picture file as uint8 (H, W, C), in any format PIL reads: EXIF rotation applied, the first frame of an
    animation, transparency laid over white, 16-bit grey scaled to 8 bits, palettes and CMYK made RGB. C is 1 for
    grey and 3 for colour, or channels when given. size > 0: the shorter side resized to size and the centre
    size x size cut out; size (h, w): resized to cover h x w and its centre h x w cut out. max_side > 0: a larger
    picture is shrunk while it is decoded, so a 10000 x 10000 photo costs about what a 2000 x 2000 one does. A bad
    file raises ValueError."""
    try:
        with warnings.catch_warnings():
            # pictures between PIL's two pixel limits only warn; we shrink them as we decode
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            picture = Image.open(path)
        with picture:
            if size or max_side:
                side = max(size) if isinstance(size, tuple) else size or max_side  # square: EXIF may turn it
                picture.draft('RGB', (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, no smaller than that
            if picture.width * picture.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{picture.width}x{picture.height} pixels, more than {MAX_PIXELS:,}")
            if orientation(picture) != 1:  # the EXIF orientation tag says the camera was turned
                picture = ImageOps.exif_transpose(picture)
            if max_side and max(picture.size) > max_side:
                picture.thumbnail((max_side, max_side), Image.LANCZOS)
            return to_pixels(picture, size, channels)
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large to decode safely ({e})") from None
    except FileNotFoundError:
        raise ValueError("no such file (a link that leads nowhere?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a picture PIL can read ({type(e).__name__})") from None

def to_pixels(picture, size=0, channels=0):
    """A PIL picture as uint8 (H, W, C) (read_image's rules), at size x size when size > 0, or size (h, w)."""
    mode = picture.mode
    if mode == 'P' and 'transparency' in picture.info or mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa'):
        # transparent pixels become white paper, so black ink on a clear background stays black on white
        # (PIL turns 'La', grey premultiplied by its alpha as some TIFFs store it, into RGBA only through 'LA')
        rgba = (picture.convert('LA') if mode == 'La' else picture).convert('RGBA')
        picture = Image.alpha_composite(Image.new('RGBA', picture.size, 'white'), rgba)
    elif mode.startswith('I'):  # 16- or 32-bit grey: PIL's convert('L') would clip everything above 255
        pixels = np.asarray(picture).astype(np.int64 if mode == 'I' else np.int32)
        picture = Image.fromarray(((np.clip(pixels, 0, 65535) + 128) // 257).astype(np.uint8))
    picture = picture.convert('L' if mode in GREY_MODES or mode.startswith('I') else 'RGB')
    if channels:
        picture = picture.convert('L' if channels == 1 else 'RGB')
    if size:
        height, width = size if isinstance(size, tuple) else (size, size)
        scale = max(width / picture.width, height / picture.height)  # the least that covers height x width
        w, h = max(width, round(picture.width * scale)), max(height, round(picture.height * scale))
        left, top = (w - width) // 2, (h - height) // 2
        picture = picture.resize((w, h), Image.LANCZOS, reducing_gap=3.0).crop((left, top, left + width, top + height))
    pixels = np.array(picture)  # a copy of its own: writable, as torch.from_numpy wants it
    return pixels[:, :, None] if pixels.ndim == 2 else pixels

def orientation(picture):
    """The EXIF orientation tag of an opened picture, 1 when none: read from the header alone (a PNG's getexif() decodes
    the whole picture when the header has no EXIF, seconds and gigabytes over a folder of 20,000)."""
    return picture.getexif().get(0x0112, 1) if picture.format != 'PNG' or 'exif' in picture.info else 1

def survey(paths, size):
    """(C, H, W) the pictures at paths decode to (size > 0: H = W = size), from their headers alone: C is 1 only when
    every one is grey. One line when none of them is a picture, or their sides differ."""
    sides, channels, why = set(), 1, None
    for path in paths:
        try:
            with Image.open(path) as picture:
                w, h = picture.size  # (h, w) unless EXIF says it was turned a quarter: read_image transposes it
                sides.add((size, size) if size else (w, h) if orientation(picture) in (5, 6, 7, 8) else (h, w))
                channels = max(channels, 1 if picture.mode in GREY_MODES or picture.mode.startswith('I') else 3)
        except Exception as e:
            why = why or f"not a picture PIL can read ({type(e).__name__})"
    if not sides:
        die(f"none of the {len(paths)} pictures decodes, for instance {paths[0]} ({why})")
    if len(sides) > 1:
        listed = ', '.join(f"{w}x{h}" for h, w in sorted(sides)[:4]) + (', ...' if len(sides) > 4 else '')
        die(f"the pictures have different sizes ({listed}); "
            f"set --img_size=N to resize the shorter side to N and cut out the centre N x N")
    return (channels, *sides.pop())

def pictures_below(folder):
    """([(path, stat)] of the pictures under folder, sorted, [paths left out]): a picture is a regular file named like
    one (IMAGE_EXTENSIONS); notes, Thumbs.db, sidecar .json and .xmp files, FIFOs, dangling or looping links and
    symlinked folders are left out. Hidden files (.DS_Store and the like) are not counted."""
    pictures, others = [], []
    for parent, dirs, names in os.walk(folder):
        others += [os.path.join(parent, d) for d in dirs if os.path.islink(os.path.join(parent, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))  # os.walk itself enters no symlinked folder
        for name in sorted(n for n in names if not n.startswith('.')):
            path = os.path.join(parent, name)
            try:  # one stat: a FIFO, a dangling or looping link, a file deleted since it was listed are no pictures
                info = os.stat(path)
            except OSError:
                info = None
            if info and stat.S_ISREG(info.st_mode) and name.lower().endswith(IMAGE_EXTENSIONS):
                pictures.append((path, info))
            else:
                others.append(path)
    return pictures, others
