"""
train.py's settings: their defaults, read from train.py's own assignments (so bench.py and the tests
need no second copy), the rules a value must meet, and the model a config describes.
"""
import ast
import math
import os
from dataclasses import asdict, fields

from errors import die
from model import ViTConfig

TRAIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')


def train_defaults():
    """{key: default} of train.py: its module-level `key = literal` assignments before it runs the
    configurator, read from its syntax tree (train.py is a script: importing it would train)."""
    with open(TRAIN_PY, encoding='utf-8') as f:
        tree = ast.parse(f.read(), TRAIN_PY)
    defaults = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and getattr(node.value.func, 'id', '') == 'exec':
            return defaults  # the configurator: what follows is the script
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if not name.startswith('_'):
                try:
                    defaults[name] = ast.literal_eval(node.value)
                except ValueError:
                    pass  # computed at start-up (the clock), not a setting
    raise RuntimeError("train.py no longer runs configurator.py at module level")


def check_config(c):
    """One line and exit 2 for a value of train.py's config that cannot work (the model's are ViTConfig's)."""
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
            ('aug_rrc_scale', 0 <= c['aug_rrc_scale'] < 1, 'in [0, 1)'),
            ('optimizer', c['optimizer'] in ('adamw', 'muon'), "'adamw' or 'muon'")]:
        if not valid:
            die(f"{key}={c[key]!r} must be {rule}", 2)


def check_against_pictures(c, side):
    """Shifts as large as the picture leave nothing of it: the augmentation trains on black and the
    test-time views are meaningless. Bound them by the picture's side, at start."""
    limit = side // 2
    for key in ('aug_crop', 'aug_translate', 'tta_shift'):
        if c[key] >= limit:
            die(f"{key}={c[key]!r} shifts the {side}x{side} pictures by half their side or more; keep it below {limit}", 2)


ARCHITECTURE = ('patch_size', 'n_layer', 'n_head', 'n_embd', 'mlp_ratio', 'bias', 'pool', 'pos_embd', 'qk_norm', 'norm_eps')


def model_args_from(config, flags, source_args, **data_shape):
    """(ViTConfig fields, [(key, source's, config's)] overridden, [(key, source's, asked)] that clash) of the model
    a run trains. From scratch: the config's, with the data's shape. From a source (the run's checkpoint, a
    pretrained model): the source's architecture, with the data's shape and this run's dropout; a config file
    that says otherwise is overridden (a recipe written for another model), a --flag that does is a clash."""
    if source_args is None:
        return asdict(model_config(config, **data_shape)), [], []
    source = {**asdict(ViTConfig()), **source_args}  # a key the source lacks predates it: it had the default
    differ = [(k, source[k], config[k]) for k in ARCHITECTURE if source[k] != config[k]]
    args = {**source, 'dropout': config['dropout'], **data_shape}
    try:
        ViTConfig(**args)
    except ValueError as e:
        die(f"bad model config: {e}", 2)
    return args, [d for d in differ if d[0] not in flags], [d for d in differ if d[0] in flags]


def model_of_run(config, flags, data_shape, classes, checkpoint, ckpt_path, source, init_from, verbose):
    """The ViTConfig fields of the model a run trains, for its data (the training split's (N, C, H, W) and
    classes): from scratch, the config's; resumed, the checkpoint's; fine-tuned, the source's at the data's
    classes and img_size. What contradicts the checkpoint or the source is one line; a config file's
    architecture that yields to theirs is a note."""
    import safety
    if checkpoint:
        safety.saved_model_config(checkpoint, ckpt_path)  # model_args this version cannot build: one line
    img_size, in_chans = (config['img_size'] if config['store_size'] else data_shape[-1]), data_shape[1]
    source_args = checkpoint['model_args'] if checkpoint else source.model_args if source else None
    if source_args:  # the source decides the picture size (unless img_size asks for another) and channels
        img_size = source_args['img_size'] if checkpoint or not config['img_size'] else config['img_size']
        in_chans = source_args['in_chans']
    args, overridden, clashes = model_args_from(config, flags, source_args, img_size=img_size, in_chans=in_chans,
                                                n_classes=len(classes))
    if checkpoint:
        clashes += safety.resume_conflicts(checkpoint, config, classes)
    if clashes:
        then = ', '.join(f'{k}={v!r}' for k, v, _ in clashes)
        now = ', '.join(f'{k}={v!r}' for k, _, v in clashes)
        die(f"{ckpt_path} holds a run with {then} but this run asks for {now}; resume with the run's own config" if checkpoint
            else f"init_from={init_from!r} has {then} but this run asks for {now}: a fine-tuning run keeps the "
                 f"source's architecture", 2)
    if overridden and verbose:
        print(f"note: the architecture is {'the checkpoint' if checkpoint else init_from}'s, not the config's: "
              + ', '.join(f"{k} {now!r} -> {then!r}" for k, then, now in overridden))
    return args


def model_config(config, **data_shape):
    """The ViTConfig a run's config describes, the data's shape (img_size, in_chans, n_classes) taken
    from the data; or one line saying what is impossible about it."""
    try:
        return ViTConfig(**{f.name: config[f.name] for f in fields(ViTConfig) if f.name not in data_shape}, **data_shape)
    except ValueError as e:
        die(f"bad model config: {e}", 2)
