"""
The rules a value of train.py's config must meet, all of them here: one line naming the key, the value and the rule,
and exit code 2, before anything is decoded or trained. The model's own values are ViTConfig's to check (model.py),
when a run's start settles the model (support/checkpoint.py).
"""
import math

from support.checkpoint import from_scratch
from support.errors import die, import_or_die, note

def check_config(c, dataset):
    """One line and exit 2 for a value that cannot work; a note for one that works otherwise than it reads. dataset:
    prepare.py's entry (its shape, when known without its files; whether it is digits, which a mirror changes)."""
    if c['wandb_log']:  # missing, it is said before anything is fetched or prepared
        import_or_die('wandb', "wandb_log=True")
    rules = [(k, math.isfinite(v), 'a finite number') for k, v in c.items() if isinstance(v, float)]
    rules += [(k, c[k] >= 1, 'at least 1') for k in ('max_iters', 'batch_size', 'eval_batch_size', 'log_interval',
                                                    'eval_interval', 'gradient_accumulation_steps')]
    rules += [(k, c[k] >= 0, '0 or more') for k in ('min_lr', 'warmup_iters', 'weight_decay', 'grad_clip', 'img_size',
                                                    'val_size', 'aug_crop', 'aug_translate', 'aug_rotate', 'tta_shift',
                                                    'muon_momentum_warmup')]
    rules += [(k, 0 <= c[k] < 1, 'in [0, 1)') for k in ('beta1', 'beta2', 'muon_momentum', 'muon_momentum_min',
                                                        'label_smoothing', 'aug_scale', 'aug_rrc_scale')]
    rules += [(k, c[k] in options, ' or '.join(map(repr, options))) for k, options in (
        ('optimizer', ('adamw', 'muon')), ('lr_schedule', ('cosine', 'linear')),
        ('data_placement', ('auto', 'device', 'stream')), ('tta_views', (9, 5)))]
    rules += [
        ('learning_rate', c['learning_rate'] > 0, 'positive'), ('muon_lr', c['muon_lr'] > 0, 'positive'),
        ('min_lr', c['min_lr'] <= c['learning_rate'], f"at most learning_rate={c['learning_rate']!r} (lower min_lr "
                                                      f"with learning_rate: the decay ends at it)"),
        ('muon_momentum', not c['muon_momentum_warmup'] or c['muon_momentum'] >= c['muon_momentum_min'],
         f"at least muon_momentum_min={c['muon_momentum_min']!r}, where muon_momentum_warmup starts it"),
        ('seed', 0 <= c['seed'] < 2 ** 63, 'in [0, 2**63)'), ('layer_decay', 0 < c['layer_decay'] <= 1, 'in (0, 1]'),
        ('store_size', c['store_size'] == 0 or c['store_size'] >= c['img_size'] > 0, "0, or img_size or more"),
        ('store_size', c['store_size'] == 0 or not dataset.shape,
         f"0 for {c['dataset']}, whose pictures are kept at their own size (another img_size resizes each batch)")]
    for key, valid, rule in rules:
        if not valid:
            die(f"{key}={c[key]!r} must be {rule}", 2)
    if c['init_from'] == 'scratch':  # the model is the config's: its values fail now, before any download or decode
        from_scratch(c).settle(dataset.shape or (1, c['patch_size']), ['a'])  # stand-ins until the data is found
    if c['aug_flip'] and dataset.digits:
        die(f"aug_flip=True on {c['dataset']}: a mirrored digit is another digit (use aug_translate, aug_rotate)", 2)
    if c['warmup_iters'] >= c['max_iters']:
        note(f"warmup_iters={c['warmup_iters']} is not below max_iters={c['max_iters']}: the learning rate never "
             f"reaches its peak and never decays")
    if c['muon_momentum_warmup'] and c['optimizer'] != 'muon':
        note(f"muon_momentum_warmup={c['muon_momentum_warmup']} does nothing with optimizer={c['optimizer']!r}")

def check_against_data(c, found, world_size):
    """One line and exit 2 for a value that cannot work with the dataset found (prepare.find), before it is prepared."""
    n, side = found.sizes['train'], min(found.shape[-2:])
    if c['val_size'] >= n:
        die(f"val_size={c['val_size']} holds out every training picture: the training split of {found.name} has {n}", 2)
    batch = c['batch_size'] * c['gradient_accumulation_steps'] * world_size
    if batch > n - c['val_size']:
        die(f"batch_size={c['batch_size']} x gradient_accumulation_steps={c['gradient_accumulation_steps']} x "
            f"{world_size} process(es) = {batch} pictures an iteration, more than the {n - c['val_size']} training "
            f"pictures" + (f" that val_size={c['val_size']} leaves" if c['val_size'] else ""), 2)
    # shifts as large as the picture leave nothing of it: the augmentation trains on black, the test views are void
    for key in ('aug_crop', 'aug_translate', 'tta_shift'):
        if c[key] >= side // 2:
            die(f"{key}={c[key]!r} shifts the {found.shape[-1]}x{found.shape[-2]} pictures by half their shorter "
                f"side or more; keep it below {side // 2}", 2)
