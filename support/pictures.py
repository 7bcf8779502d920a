"""
Picture files as people have them: reading one (any format PIL reads, EXIF-rotated, transparent, 16-bit,
huge), finding the pictures in a folder, and decoding many of them into a store's images, one process per core.
The same reading serves folder datasets and sample.py --image.
"""
import ctypes
import multiprocessing
import os
import signal
import stat
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from support.errors import die
from support.store import Progress

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
MAX_PIXELS = 50_000_000  # a picture decoded whole (no JPEG draft) larger than this costs gigabytes: refused
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert('L')
GREY_MODES = ('1', 'L', 'LA', 'La', 'F')  # and 'I...': what read_image returns with one channel


def read_image(path, size=0, max_side=2048):
    """A picture file as uint8 (H, W, C), C = 1 for grey and 3 for colour, in any format PIL reads:
    EXIF rotation applied, the first frame of an animation, transparency laid over white, 16-bit
    grey scaled to 8 bits, palettes and CMYK made RGB. size > 0: the shorter side resized to size,
    then the centre size x size cut out. max_side > 0: a larger picture is shrunk while it is decoded,
    so a 10000 x 10000 photo costs about what a 2000 x 2000 one does. A bad file raises ValueError."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            # pictures between PIL's two pixel limits only warn; we shrink them as we decode
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            picture = Image.open(path)
        with picture:
            if size or max_side:
                picture.draft('RGB', (size or max_side, size or max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            if picture.width * picture.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{picture.width}x{picture.height} pixels, more than {MAX_PIXELS:,}")
            if picture.getexif().get(0x0112, 1) != 1:  # the EXIF orientation tag says the camera was turned
                picture = ImageOps.exif_transpose(picture)
            picture = to_grey_or_rgb(picture)
            if max_side and max(picture.size) > max_side:
                picture.thumbnail((max_side, max_side), Image.LANCZOS)
            if size:
                scale = size / min(picture.size)
                w, h = (max(size, round(side * scale)) for side in picture.size)
                left, top = (w - size) // 2, (h - size) // 2
                picture = picture.resize((w, h), Image.LANCZOS, reducing_gap=3.0).crop((left, top, left + size, top + size))
            pixels = np.array(picture)  # a copy of its own: writable, as torch.from_numpy wants it
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a picture PIL can read ({type(e).__name__})") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def to_grey_or_rgb(picture):
    """A decoded PIL image in mode 'L' (grey) or 'RGB', from any mode."""
    from PIL import Image
    mode = picture.mode
    if mode == 'P' and 'transparency' in picture.info or mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa'):
        # transparent pixels become white paper, so black ink on a clear background stays black on white
        paper = Image.new('RGBA', picture.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(paper, picture.convert('RGBA'))
        return flat.convert('L' if mode in ('LA', 'La') else 'RGB')
    if mode.startswith('I'):  # 16- or 32-bit grey: PIL's convert('L') would clip everything above 255
        pixels = np.asarray(picture).astype(np.int64 if mode == 'I' else np.int32)
        return Image.fromarray(((np.clip(pixels, 0, 65535) + 128) // 257).astype(np.uint8))
    if mode in ('L', 'RGB'):
        return picture
    return picture.convert('L' if mode in ('1', 'F') else 'RGB')


def decoded_shape(path, size):
    """((H, W) the picture decodes to, its channels), from its header alone; (None, why) for a file that is no picture."""
    from PIL import Image
    try:
        with Image.open(path) as picture:
            w, h = picture.size
            if picture.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # turned a quarter: read_image transposes it
                w, h = h, w
            grey = picture.mode in GREY_MODES or picture.mode.startswith('I')
            return ((size, size) if size else (h, w)), 1 if grey else 3
    except Exception as e:
        return None, f"not a picture PIL can read ({type(e).__name__})"


def survey(paths, size):
    """((C, H, W) the pictures at paths decode to, {index: why} of those whose header is no picture's), from the
    headers alone; one line when none decodes or their sizes differ."""
    sides, channels, failed = np.zeros((len(paths), 2), dtype=np.int32), np.zeros(len(paths), dtype=np.int8), {}
    for i, path in enumerate(paths):
        hw, c = decoded_shape(path, size)
        if hw is None:
            failed[i] = c
        else:
            sides[i], channels[i] = hw, c
    good = np.ones(len(paths), dtype=bool)
    good[list(failed)] = False
    if not good.any():
        die(f"none of the {len(paths)} pictures decodes, for instance {paths[0]} ({failed[0]})")
    sizes = np.unique(sides[good], axis=0)
    if len(sizes) > 1:
        listed = ', '.join(f"{w}x{h}" for h, w in sizes[:4])
        die(f"the pictures have different sizes ({listed}{', ...' if len(sizes) > 4 else ''}); "
            f"set --img_size=N to resize the shorter side to N and cut out the centre N x N")
    (h, w), c = sizes[0].tolist(), int(channels[good].max())  # 1 only when every picture is grey
    return (c, h, w), failed


def pictures_below(folder):
    """([(path, stat)] of the pictures under folder, sorted, [paths left out]): a picture is a regular file
    named like one (IMAGE_EXTENSIONS); notes, Thumbs.db, sidecar .json and .xmp files, FIFOs, dangling or
    looping links and symlinked folders are left out. Hidden files (.DS_Store and the like) are not counted."""
    pictures, others = [], []
    for parent, dirs, names in os.walk(folder):
        others += [os.path.join(parent, d) for d in dirs if os.path.islink(os.path.join(parent, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and not os.path.islink(os.path.join(parent, d)))
        for name in sorted(n for n in names if not n.startswith('.')):
            path = os.path.join(parent, name)
            try:
                info = os.stat(path)
                regular = stat.S_ISREG(info.st_mode)
            except OSError:  # a dangling link, or one that points at itself
                regular = False
            if regular and name.lower().endswith(IMAGE_EXTENSIONS):
                pictures.append((path, info))
            else:
                others.append(path)
    return pictures, others


CHUNK = 256  # pictures a decoding process takes at a time


def decode_pictures(images, paths, size, what):
    """Decode the pictures at paths into the rows of images, a writable map (N, C, H, W), chunk by chunk, by one
    process per core that each write their pictures in place: the memory used stays that of a few chunks,
    and of the list of files, whatever N is. Returns {index: why} of the pictures that did not decode."""
    global decode_job
    decode_job = (images, paths, size)  # what the decoding processes work on: forked, they inherit it
    chunks = [(start, min(start + CHUNK, len(paths))) for start in range(0, len(paths), CHUNK)]
    progress = Progress(f"decoding {what}/", len(paths))
    failed, done = {}, 0
    if sys.platform == 'linux' and len(paths) > 1000:
        # decoding is CPU-bound Python (threads would queue on the GIL): one process per core. Forked children
        # only run PIL and numpy. Elsewhere (spawn) a child would run train.py again, so one core.
        pool = ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context('fork'),
                                   initializer=start_decoder, initargs=(os.getpid(),))
        try:
            for result in pool.map(decode_chunk, *zip(*chunks)):
                failed.update(result)
                done = min(done + CHUNK, len(paths))
                progress.update(done)
        except BrokenProcessPool:
            die(f"a process decoding the {len(paths)} pictures died (killed, or out of memory?); nothing was stored")
        except BaseException:  # Ctrl-C, SIGTERM: the chunks still queued are not decoded, the ones being decoded not waited for
            decoders = list((pool._processes or {}).values())  # (ProcessPoolExecutor has no public way to kill them)
            pool.shutdown(wait=False, cancel_futures=True)
            for process in decoders:
                process.kill()
            raise
        pool.shutdown()
    else:
        for start, end in chunks:
            failed.update(decode_chunk(start, end))
            progress.update(end)
    decode_job = None
    return failed


decode_job = None  # (images, paths, size) of the decode under way


def start_decoder(parent):
    """A decoding process dies with the main one, however that ends (kill -9, the out-of-memory killer): orphaned,
    it would sleep forever, holding the locks it inherited (the out_dir's, the store's)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux): SIGKILL when the parent dies
    if os.getppid() != parent:  # it died before that took hold
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the main process's to answer
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def decode_chunk(start, end):
    """Decode pictures start..end of the job straight into their rows; {index: why} for those that did not."""
    images, paths, size = decode_job
    failed = {}
    for i in range(start, end):
        try:
            pixels = read_image(paths[i], size, max_side=0 if size == 0 else 2048)
            if pixels.shape[:2] != images.shape[2:]:
                raise ValueError(f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, its header says "
                                 f"{images.shape[3]}x{images.shape[2]}")
            images[i] = np.broadcast_to(pixels, images.shape[2:] + (images.shape[1],)).transpose(2, 0, 1)
        except ValueError as e:
            failed[i] = str(e)
    return failed
