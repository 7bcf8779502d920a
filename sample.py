"""
Look inside a trained model: test accuracy per class, predictions, the most confident mistakes,
a confusion matrix and attention maps, written into the run's out_dir. Or classify your own pictures.
$ python sample.py --out_dir=out-mnist
$ python sample.py --out_dir=out-cifar10 --image=my_cat.jpg        # also: a.png,b.jpg or a folder
"""
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

import prepare
from data import model_input, predict
from model import ViT
from support.checkpoint import from_checkpoint
from support.device import autocast, pick_device, pick_dtype
from support.errors import die
from support.pictures import IMAGE_EXTENSIONS, read_image
from support.runlog import machine

# -----------------------------------------------------------------------------
out_dir = 'out-mnist'  # the training run to load, out_dir/ckpt.pt
figures_dir = ''  # where the figures go ('' = out_dir; another folder for a run you cannot write into)
device = 'auto'
dtype = ''  # '' = the run's own dtype (its evaluation's numbers, where this device runs it); or as in train.py
data_dir = ''  # '' = the data_dir the run trained with
image = ''  # your own picture(s) to classify: a path, several joined by commas, or a folder
n_attention = 6  # test images shown with their attention maps (0: no attention figure)
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
out_dir = os.path.expanduser(out_dir)
figures_dir = os.path.expanduser(figures_dir or out_dir)

def to_mnist(grey):
    """A picture of one digit as a grey float array, any size, either polarity, made into what MNIST's
    digits are: white on black, cropped to the stroke, fitted into 20x20 and placed in 28x28 with its
    centre of mass at the centre. Returns uint8 (28, 28)."""
    paper = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))  # the border's usual grey
    if paper > 127:  # dark ink on light paper: invert to white on black
        grey, paper = 255 - grey, 255 - paper
    grey = np.clip(grey - paper, 0, None)  # the background to zero
    if grey.max() <= 0:
        raise ValueError("the picture is blank")
    grey = grey * (255 / grey.max())
    rows, cols = np.nonzero(grey > 0.2 * 255)  # the stroke, without faint noise
    grey = grey[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    size = [max(1, round(side * 20 / max(grey.shape))) for side in grey.shape[::-1]]  # (w, h), the longer side 20
    digit = np.asarray(Image.fromarray(grey.astype(np.uint8)).resize(size, Image.LANCZOS))
    centre = (np.indices(digit.shape) * digit).sum(axis=(1, 2)) / digit.sum()  # (row, column)
    top, left = (int(np.clip(round(13.5 - c), 0, 28 - side)) for c, side in zip(centre, digit.shape))
    return np.pad(digit, ((top, 28 - top - digit.shape[0]), (left, 28 - left - digit.shape[1])))  # on black

def image_paths(spec):
    """The pictures a --image value names: a file (its name may hold commas), a folder, or a,b,c."""
    parts = [spec] if os.path.exists(spec) else [p for p in spec.split(',') if p]
    paths = []
    for part in parts:
        if os.path.isdir(part):
            found = sorted(os.path.join(part, f) for f in os.listdir(part) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                die(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {part}")
            paths += found
        elif os.path.isfile(part):
            paths.append(part)
        else:
            die(f"image not found: {part}")
    if not paths:
        die(f"image={spec!r} names no picture: give a path, several joined by commas, or a folder", 2)
    return paths

def as_the_model_sees(path):
    """(uint8 (H, W, C) as the model takes it, what to show of the original, a note or ''): digits get MNIST's
    preprocessing, other pictures a resize of the shorter side and a centre crop, as folder datasets do (to the
    sides of the run's pictures where it kept them whole and oblong: the model stretches them square)."""
    c = model.config
    original = read_image(path)
    if digits:  # PIL makes it grey (ITU-R 601, as data.GREY)
        return to_mnist(read_image(path, channels=1)[:, :, 0].astype(np.float32))[:, :, None], original, ''
    note = f" (made {'colour' if c.in_chans == 3 else 'grey'}: the model takes {c.in_chans}-channel pictures)" \
        if original.shape[2] != c.in_chans else ''
    oblong = not start.store_size and start.shape and start.shape[1] != start.shape[2]
    return read_image(path, size=tuple(start.shape[1:]) if oblong else start.store_size or c.img_size,
                      channels=c.in_chans), original, note

def save_figure(fig, name):
    path = os.path.join(figures_dir, name)
    try:
        os.makedirs(figures_dir, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches='tight')
    except OSError as e:
        die(f"could not write {path}: {e.strerror}{' (give another folder: --figures_dir)' * (figures_dir == out_dir)}")
    plt.close(fig)
    print(f"wrote {path}")

def show(ax, pixels, title='', **style):
    ax.imshow(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, cmap='gray' if pixels.shape[2] == 1 else None)
    ax.set_title(title, **style)
    ax.axis('off')

def show_grid(pictures, titles, colors, name, heading, cols=8):
    rows = max(1, (len(pictures) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + 0.4), squeeze=False)
    fig.suptitle(heading, fontsize=10)
    for ax in axes.flat:
        ax.axis('off')
    for ax, pixels, title, color in zip(axes.flat, pictures, titles, colors):
        show(ax, pixels, title, fontsize=7, color=color)
    save_figure(fig, name)

@torch.no_grad()
def classify(images_uint8):
    """Class probabilities of uint8 images (B, C, H, W), on the CPU, as the run's evaluation computed them."""
    probs = []
    for batch in images_uint8.split(run['eval_batch_size']):
        with ctx:
            logits = predict(model, batch.to(device), start.mean, start.std, start.test_crop, tta_shift, tta_views)
        probs.append(F.softmax(logits, dim=1).cpu())
    return torch.cat(probs)

def classify_pictures(paths):
    """Print the top-3 classes of each picture and draw what the model saw; a bad file is listed, not fatal."""
    bad, used = [], set()
    for path in paths:
        try:
            seen, original, note = as_the_model_sees(path)
        except ValueError as e:
            bad.append(f"{path} ({e})")
            continue
        probs = classify(torch.from_numpy(seen).permute(2, 0, 1)[None])[0]
        top = probs.topk(min(3, len(classes)))
        print(f"{path}: " + ', '.join(f"{classes[c]} ({100 * p:.1f}%)"
                                      for p, c in zip(top.values.tolist(), top.indices.tolist())) + note)
        name = os.path.basename(path).replace('.', '_')  # d.png and d.jpg must not write one file
        while name in used:
            name += '_'
        used.add(name)
        fig, (ax_in, ax_seen, ax_p) = plt.subplots(1, 3, figsize=(11, 3.2))
        show(ax_in, original, 'your picture')
        show(ax_seen, seen, f"the model sees ({seen.shape[1]}x{seen.shape[0]})")
        best = top.indices[0].item()
        ax_p.bar(range(len(probs)), probs.tolist(), color=['C3' if c == best else 'C0' for c in range(len(probs))])
        ax_p.set(ylim=(0, 1), title=f"prediction: {classes[best]}")
        ax_p.set_xticks(range(len(probs)), classes, fontsize=7,
                        rotation=90 if len(classes) > 10 or max(map(len, classes)) > 3 else 0)
        save_figure(fig, f"input-{name}.png")  # which makes figures_dir
        seen_path = os.path.join(figures_dir, f"input-{name}-seen.png")  # exactly what the model was given
        try:
            Image.fromarray(seen[:, :, 0] if seen.shape[2] == 1 else seen).save(seen_path)
        except OSError as e:
            die(f"could not write {seen_path}: {e.strerror}")
    if bad:
        die(f"could not read {len(bad)} of the {len(paths)} pictures: {'; '.join(bad)}")

def report_test_split():
    """Accuracy overall and per class on the whole test split, then the figures."""
    folder = data_dir or run.get('data_dir')
    if folder is None:
        die(f"{ckpt_path} does not say where its data is: give --data_dir")
    found = prepare.find(run['dataset'], folder, start.store_size)
    if found.classes != start.classes:  # before a picture is decoded
        die(f"the classes in {folder} ({', '.join(found.classes[:5])}{', ...' * (len(found.classes) > 5)}) are not "
            f"the {len(classes)} the model was trained on ({', '.join(classes[:5])}{', ...' * (len(classes) > 5)})")
    test_x, test_y = prepare.load(found).test  # the pictures stay on disk, mapped
    confidence, predicted = classify(test_x).max(dim=1)
    correct = predicted == test_y
    print(f"test accuracy: {100 * correct.float().mean().item():.2f}% ({correct.sum().item()}/{len(test_y)}) "
          f"| checkpoint at iter {start.iter_num}" + (f", trained on {trained_on}" if trained_on else "")
          + (f" | test-time augmentation: the mean of {tta_views} views shifted by up to {tta_shift} px" if tta_shift
             else ""))
    print("class  images  accuracy  name")
    for c, name in enumerate(classes):
        mask = test_y == c
        print(f"{c:5d}  {mask.sum().item():6d}  {100 * correct[mask].float().mean().item():7.2f}%  {name}")
    pictures = test_x.permute(0, 2, 3, 1).numpy()
    pred, true = predicted.tolist(), test_y.tolist()
    show_grid(pictures[:32], [f"{classes[p]} / {classes[t]}" for p, t in zip(pred[:32], true)],
              ['black' if p == t else 'red' for p, t in zip(pred[:32], true)], "predictions.png",
              "the first test images: predicted / true (mistakes in red)")
    mistakes = torch.nonzero(~correct).flatten()
    mistakes = mistakes[confidence[mistakes].argsort(descending=True)][:24].tolist()
    show_grid(pictures[mistakes], [f"{classes[pred[i]]} ({100 * confidence[i].item():.0f}%) / {classes[true[i]]}"
                                   for i in mistakes], ['red'] * len(mistakes), "mistakes.png",
              "the most confident mistakes: predicted (confidence) / true")
    draw_confusion(test_y, predicted)
    if n_attention:
        draw_attention(test_x[:n_attention], pictures[:n_attention], pred)

def draw_confusion(true, predicted):
    n = len(classes)
    confusion = torch.bincount(true * n + predicted, minlength=n * n).view(n, n).numpy()  # [true, predicted]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.imshow(np.log1p(confusion), cmap='Blues')
    if n <= 20:  # counts in the cells while they are readable
        for (t, p), count in np.ndenumerate(confusion):
            ax.text(p, t, count, ha='center', va='center', fontsize=7, color='white' if t == p else 'black')
    ax.set(xlabel='predicted', ylabel='true', title=f"confusion matrix ({len(true)} test images)")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    save_figure(fig, "confusion.png")

@torch.no_grad()
def attention_rollout(model, x):
    """Attention rollout (Abnar & Zuidema, 2020): each layer's attention averaged over heads, mixed half and half
    with the residual path (identity), multiplied through the layers. How much each patch feeds what the
    pooling hands the head, (B, grid, grid), summing to 1 over the patches."""
    x = model.embed(x)
    rollout = torch.eye(x.size(1), device=x.device)
    with torch.autocast(x.device.type, enabled=False):  # products of probabilities, in float32
        for block in model.blocks:
            attention = block.attn.attention_probs(block.ln_1(x)).float().mean(dim=1)  # (B, T, T)
            rollout = ((attention + torch.eye(x.size(1), device=x.device)) / 2) @ rollout
            x = block(x)
        # row t of rollout is what token t gathered from each token: weigh the rows as the pooling weighs the
        # tokens (the cls token alone, or the patches alike), then keep the patches' shares
        read = rollout[:, :1] if model.config.pool == 'cls' else rollout[:, model.config.n_prefix:]
        weights = read.sum(dim=1)[:, model.config.n_prefix:]
    return (weights / weights.sum(dim=-1, keepdim=True)).view(-1, model.config.grid, model.config.grid)

def draw_attention(images_uint8, pictures, pred):
    """Where, through all the layers, the classification draws its information from."""
    with ctx:
        maps = attention_rollout(model, model_input(images_uint8.to(device), model.config, start.mean, start.std,
                                                    start.test_crop)).cpu().numpy()
    h, w = pictures.shape[1:3]  # pictures kept at their own size may be oblong: the model saw them stretched square
    fig, axes = plt.subplots(2, len(pictures), figsize=(1.8 * len(pictures), 3.8), squeeze=False)
    for i, pixels in enumerate(pictures):
        show(axes[0, i], pixels, f"pred {classes[pred[i]]}", fontsize=8)
        show(axes[1, i], pixels)
        axes[1, i].imshow(maps[i], cmap='inferno', alpha=0.6, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                          interpolation='bilinear')
    fig.suptitle('attention rollout over the patch grid (averaged over heads, all layers)', fontsize=9)
    save_figure(fig, "attention.png")

# -----------------------------------------------------------------------------
matplotlib.use('Agg')  # headless: no display needed (Colab, servers, CI)
if n_attention < 0:
    die(f"n_attention={n_attention} must be 0 or more", 2)
device, _ = pick_device(device)
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
start = from_checkpoint(ckpt_path)  # the run as it was saved: its model, its sides, its normalization
run = start.config
device_type = device.split(':')[0]
dtype = dtype or ('auto' if run['dtype'] == 'float16' and device_type == 'cpu' else run['dtype'])  # fp16 is for GPUs
ctx = autocast(device_type, pick_dtype(dtype, device_type)[0])
# the training split's statistics and class names travel in the checkpoint: no training data
model = start.load_weights(ViT(start.settle()), start.classes).to(device).eval()
# shown in figures and lines: a class folder's name that is not UTF-8 appears escaped (\udce9)
classes = [c.encode('utf-8', 'backslashreplace').decode() for c in start.classes]
digits = prepare.get_dataset(run['dataset']).digits
tta_shift, tta_views = run['tta_shift'], run.get('tta_views', 9)  # evaluated as the run was (9: before tta_views)
trained_on = machine(os.path.join(out_dir, 'run.json'))  # the hardware its run.json names
if image:
    classify_pictures(image_paths(image))
else:
    report_test_split()
