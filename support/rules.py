"""
The rules a value of train.py's config must meet, checked before anything runs: one line naming the key, the
value and the rule, and exit code 2. The model's own values are ViTConfig's to check (model.py).
"""
import math
from dataclasses import fields

from model import ViTConfig
from support.errors import die


def check_config(c, data_shape, digits):
    """One line and exit 2 for a value of train.py's config that cannot work. data_shape: (C, H, W) of the dataset's
    pictures where it is known without reading them; digits: handwritten digits, which a mirror makes other digits."""
    for key, value in c.items():
        if isinstance(value, float) and not math.isfinite(value):
            die(f"{key}={value!r} must be a finite number", 2)
    for key, valid, rule in [
            ('max_iters', c['max_iters'] >= 1, 'at least 1'), ('batch_size', c['batch_size'] >= 1, 'at least 1'),
            ('eval_batch_size', c['eval_batch_size'] >= 1, 'at least 1'),
            ('log_interval', c['log_interval'] >= 1, 'at least 1'), ('eval_interval', c['eval_interval'] >= 1, 'at least 1'),
            ('gradient_accumulation_steps', c['gradient_accumulation_steps'] >= 1, 'at least 1'),
            ('learning_rate', c['learning_rate'] > 0, 'positive'), ('muon_lr', c['muon_lr'] > 0, 'positive'),
            ('min_lr', 0 <= c['min_lr'] <= c['learning_rate'], 'between 0 and learning_rate'),
            ('warmup_iters', c['warmup_iters'] >= 0, '0 or more'), ('weight_decay', c['weight_decay'] >= 0, '0 or more'),
            ('beta1', 0 <= c['beta1'] < 1, 'in [0, 1)'), ('beta2', 0 <= c['beta2'] < 1, 'in [0, 1)'),
            ('muon_momentum', 0 <= c['muon_momentum'] < 1, 'in [0, 1)'),
            ('grad_clip', c['grad_clip'] >= 0, '0 (off) or more'),
            ('label_smoothing', 0 <= c['label_smoothing'] < 1, 'in [0, 1)'),
            ('seed', 0 <= c['seed'] < 2 ** 63, 'in [0, 2**63)'), ('img_size', c['img_size'] >= 0, '0 (keep the size) or more'),
            ('aug_crop', c['aug_crop'] >= 0, '0 (off) or more'), ('aug_translate', c['aug_translate'] >= 0, '0 (off) or more'),
            ('aug_rotate', c['aug_rotate'] >= 0, '0 (off) or more'), ('aug_scale', 0 <= c['aug_scale'] < 1, 'in [0, 1)'),
            ('tta_shift', c['tta_shift'] >= 0, '0 (off) or more'), ('layer_decay', 0 < c['layer_decay'] <= 1, 'in (0, 1]'),
            ('data_placement', c['data_placement'] in ('auto', 'device', 'stream'), "'auto', 'device' or 'stream'"),
            ('store_size', c['store_size'] == 0 or c['store_size'] >= c['img_size'] > 0, "0, or img_size or more (set img_size)"),
            ('store_size', c['store_size'] == 0 or c['dataset'] == 'folder',
             "0 for a torchvision dataset, whose pictures are kept at their own size"),
            ('val_size', c['val_size'] >= 0, "0 (no validation split) or more"),
            ('aug_rrc_scale', 0 <= c['aug_rrc_scale'] < 1, 'in [0, 1)'),
            ('optimizer', c['optimizer'] in ('adamw', 'muon'), "'adamw' or 'muon'"),
            ('lr_schedule', c['lr_schedule'] in ('cosine', 'linear'), "'cosine' or 'linear'"),
            ('muon_momentum_warmup', c['muon_momentum_warmup'] >= 0, '0 (off) or more')]:
        if not valid:
            die(f"{key}={c[key]!r} must be {rule}", 2)
    if c['aug_flip'] and digits:
        die(f"aug_flip=True on {c['dataset']}: a mirrored digit is not the same digit (use aug_translate, aug_rotate)", 2)
    if c['init_from'] == 'scratch':  # the model is the config's: its values fail now, not after minutes of decoding
        side = c['img_size'] or (data_shape or [max(1, c['patch_size'])])[-1]  # the data's are stand-ins until it is read
        check_model({f.name: c[f.name] for f in fields(ViTConfig) if f.name in c} | dict(in_chans=1, img_size=side, n_classes=1))


def check_model(args):
    """args when they make a ViTConfig, or one line saying what is impossible about them."""
    try:
        ViTConfig(**args)
    except (TypeError, ValueError) as e:
        die(f"bad model config: {e}", 2)
    return args


def check_against_pictures(c, side):
    """Shifts as large as the picture leave nothing of it: the augmentation trains on black and the
    test-time views are meaningless. Bound them by the picture's side, at start."""
    limit = side // 2
    for key in ('aug_crop', 'aug_translate', 'tta_shift'):
        if c[key] >= limit:
            die(f"{key}={c[key]!r} shifts the {side}x{side} pictures by half their side or more; keep it below {limit}", 2)
