"""
Look inside a trained model: test accuracy per class, predictions, the most confident mistakes,
a confusion matrix and attention maps, all written to images/. Or classify your own pictures.
$ python sample.py --out_dir=out-mnist
$ python sample.py --out_dir=out-mnist --image=my_digit.png        # also: a.png,b.jpg or a folder
"""
import os

import numpy as np
import torch
from torch.nn import functional as F

from common import autocast, die, load_checkpoint, load_model_state, load_split, pick_device, pick_dtype
from model import ViT, ViTConfig

# -----------------------------------------------------------------------------
out_dir = 'out-mnist'  # the training run to load: out_dir/ckpt.pt
device = 'auto'
dtype = 'auto'  # as in train.py: bf16 on GPUs and CPUs that have it natively
data_dir = ''  # '' = the data_dir the run trained with
image = ''  # your own picture(s) to classify: a path, several joined by commas, or a folder
image_dir = 'images'  # where the figures go
n_attention = 6  # test images shown with their attention maps
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def to_mnist(picture):
    """A PIL image of one digit, any size, colour or grey, either polarity, made into what
    MNIST's digits are: white on black, cropped to the stroke, fitted into 20x20 and placed in
    28x28 with its centre of mass at the centre. Returns uint8 (28, 28)."""
    from PIL import Image
    gray = np.asarray(picture.convert('L'), dtype=np.float32)
    if np.median(border_pixels(gray)) > 127:  # dark ink on light paper: invert to white on black
        gray = 255 - gray
    gray = np.clip(gray - np.median(border_pixels(gray)), 0, None)  # the background to zero
    if gray.max() <= 0:
        raise ValueError("the picture is blank")
    gray = gray * (255 / gray.max())
    rows, cols = np.nonzero(gray > 0.2 * 255)  # the stroke, without faint noise
    gray = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = gray.shape
    scale = 20 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray(gray.astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32)
    # shift so that the centre of mass lands on the centre pixel of the 28x28 canvas
    mass = digit.sum()
    cy = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / mass
    cx = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / mass
    top = int(np.clip(round(13.5 - cy), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(13.5 - cx), 0, 28 - digit.shape[1]))
    canvas = np.zeros((28, 28), dtype=np.float32)
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return np.clip(canvas, 0, 255).astype(np.uint8)


def border_pixels(gray):
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def image_paths(spec):
    paths = []
    for part in filter(None, spec.split(',')):
        if os.path.isdir(part):
            found = sorted(os.path.join(part, f) for f in os.listdir(part) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                die(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {part}")
            paths += found
        elif os.path.isfile(part):
            paths.append(part)
        else:
            die(f"image not found: {part}")
    return paths


def save_figure(fig, name):
    path = os.path.join(image_dir, name)
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)
    print(f"wrote {path}")


def show_digits(images, titles, colors, name, heading, cols=8):
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.4), squeeze=False)
    fig.suptitle(heading, fontsize=10)
    for ax in axes.flat:
        ax.axis('off')
    for ax, img, title, color in zip(axes.flat, images, titles, colors):
        ax.imshow(img, cmap='gray')
        ax.set_title(title, fontsize=8, color=color)
    save_figure(fig, name)


# -----------------------------------------------------------------------------
device, _ = pick_device(device)
ctx = autocast(device.split(':')[0], pick_dtype(dtype, device.split(':')[0])[0])
checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), device)
model = ViT(ViTConfig(**checkpoint['model_args']))
load_model_state(model, checkpoint['model'], os.path.join(out_dir, 'ckpt.pt'))
model.to(device).eval()
mean, std = checkpoint['data_mean'], checkpoint['data_std']
run_name = os.path.basename(os.path.normpath(out_dir))
import matplotlib  # noqa: E402
matplotlib.use('Agg')  # headless
import matplotlib.pyplot as plt  # noqa: E402
os.makedirs(image_dir, exist_ok=True)


def normalize(images_uint8):
    return (images_uint8.float() / 255 - mean) / std  # the training set's statistics, from the checkpoint


@torch.no_grad()
def classify(images_uint8):
    """Class probabilities for uint8 images (B, 1, 28, 28), in batches."""
    probs = []
    for batch in images_uint8.split(500):
        with ctx:
            logits, _ = model(normalize(batch))
        probs.append(F.softmax(logits.float(), dim=1))
    return torch.cat(probs)


if image:
    from PIL import Image, UnidentifiedImageError
    for path in image_paths(image):
        try:
            with Image.open(path) as picture:
                digit = to_mnist(picture)
                original = np.asarray(picture.convert('RGB'))
        except (UnidentifiedImageError, OSError):
            die(f"{path} is not an image this program can read")
        except ValueError as e:
            die(f"{path}: {e}")
        probs = classify(torch.from_numpy(digit)[None, None].to(device))[0]
        top = probs.topk(3)
        guesses = ', '.join(f"{c} ({100 * p:.1f}%)" for p, c in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {guesses}")
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(digit).save(os.path.join(image_dir, f"{run_name}-input-{stem}-28x28.png"))
        fig, (ax_in, ax_seen, ax_p) = plt.subplots(1, 3, figsize=(10, 3.2))
        ax_in.imshow(original)
        ax_in.set_title('your picture')
        ax_seen.imshow(digit, cmap='gray')
        ax_seen.set_title('the model sees (28x28)')
        for ax in (ax_in, ax_seen):
            ax.axis('off')
        ax_p.bar(range(len(probs)), probs.tolist(), color=['C3' if c == top.indices[0] else 'C0' for c in range(len(probs))])
        ax_p.set(xticks=range(len(probs)), ylim=(0, 1), title=f"prediction: {top.indices[0].item()}")
        save_figure(fig, f"{run_name}-input-{stem}.png")
    raise SystemExit(0)

# the test split: accuracy, per class and overall
config = checkpoint['config']
test_x, test_y = load_split(config['dataset'], data_dir or config['data_dir'], False, device)
probs = classify(test_x)
confidence, predicted = probs.max(dim=1)
correct = predicted == test_y
n_classes = model.config.n_classes
print(f"test accuracy: {100 * correct.float().mean().item():.2f}% ({correct.sum().item()}/{len(test_y)}) "
      f"| checkpoint at iter {checkpoint['iter_num']}")
print("class  images  accuracy")
for c in range(n_classes):
    mask = test_y == c
    print(f"{c:5d}  {mask.sum().item():6d}  {100 * correct[mask].float().mean().item():7.2f}%")
images = test_x[:, 0].cpu().numpy()
pred, true = predicted.tolist(), test_y.tolist()

show_digits(images[:32], [f"{p} / {t}" + ('' if p == t else ' x') for p, t in zip(pred[:32], true[:32])],
            ['black' if p == t else 'red' for p, t in zip(pred[:32], true[:32])], f"{run_name}-predictions.png",
            "the first test digits: predicted / true (mistakes in red, marked x)")

mistakes = torch.nonzero(~correct).flatten()
mistakes = mistakes[confidence[mistakes].argsort(descending=True)][:24].tolist()
show_digits(images[mistakes], [f"{pred[i]} ({100 * confidence[i].item():.0f}%) / {true[i]}" for i in mistakes],
            ['red'] * len(mistakes), f"{run_name}-mistakes.png",
            "the most confident mistakes: predicted (confidence) / true")

confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
confusion.index_put_((test_y.cpu(), predicted.cpu()), torch.ones(len(test_y), dtype=torch.long), accumulate=True)
fig, ax = plt.subplots(figsize=(6, 5.5))
ax.imshow(confusion.float().log1p(), cmap='Blues')
for t in range(n_classes):
    for p in range(n_classes):
        ax.text(p, t, confusion[t, p].item(), ha='center', va='center', fontsize=7,
                color='white' if t == p else 'black')
ax.set(xlabel='predicted', ylabel='true', xticks=range(n_classes), yticks=range(n_classes),
       title=f"confusion matrix ({len(test_y)} test images)")
save_figure(fig, f"{run_name}-confusion.png")

# attention rollout: where, through all the layers, the classification draws its information from
picks = test_x[:n_attention]
with ctx:
    maps = model.attention_rollout(normalize(picks)).cpu().numpy()
fig, axes = plt.subplots(2, n_attention, figsize=(1.8 * n_attention, 3.8), squeeze=False)
for i in range(n_attention):
    axes[0, i].imshow(images[i], cmap='gray')
    axes[0, i].set_title(f"pred {pred[i]}", fontsize=9)
    axes[1, i].imshow(images[i], cmap='gray')
    axes[1, i].imshow(maps[i], cmap='inferno', alpha=0.6, extent=(-0.5, 27.5, 27.5, -0.5), interpolation='bilinear')
for ax in axes.flat:
    ax.axis('off')
fig.suptitle('attention rollout over the patch grid (averaged over heads, all layers)', fontsize=9)
save_figure(fig, f"{run_name}-attention.png")
