"""
What a run saves (out_dir/ckpt.pt: tensors and plain types only, so torch.load(path, weights_only=True) reads it),
and where a run starts: from scratch, its own checkpoint (resume) or a pretrained source (support/pretrained.py).
Each way yields a Start, which settles the model once the dataset is found: nothing after it asks again.
"""
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields

import torch

from model import ViTConfig
from support.device import set_rng_state
from support.errors import die, first_line, note

# what a fine-tuned or resumed model keeps of its source: everything but the data's (in_chans, img_size,
# n_classes), the init (pos_std) and dropout
ARCHITECTURE = ('patch_size', 'n_layer', 'n_head', 'n_embd', 'mlp_ratio', 'bias', 'pool', 'pos_embd', 'qk_norm',
                'norm_eps', 'layer_scale', 'n_registers')
# a resume on other data, with other optimizer moments or with another held-out split is another run
RUN_KEYS = ('dataset', 'optimizer', 'linear_probe', 'val_size')
ADDED_LATER = ('layer_scale', 'n_registers')  # ViTConfig fields older checkpoints lack: their defaults are those models

@dataclass
class Start:
    model_args: dict  # ViTConfig's arguments: in_chans, img_size and n_classes None where the data decides them
    store_size: int  # the side the dataset is prepared at (0: the pictures' own)
    mean: list = None  # the pixel normalization; None: the training split's statistics
    std: list = None
    classes: list = None  # the classes of the weights' head: other classes get a new zero head, or stop a resume
    weights: dict = None  # the model's state, under model.py's names
    iter_num: int = 0
    train_loss: float = math.inf  # the training loss when the checkpoint in out_dir was saved (the divergence guard's)
    states: dict = field(default_factory=dict)  # a resumed run's optimizer, scaler and RNG states
    config: dict = None  # a checkpoint's run config
    n_train: int = None  # a checkpoint's count of training pictures
    path: str = None  # the checkpoint's file, or the source's name
    resumed: bool = False
    crop: float = 0.875  # the share of the side a test picture is cut to, when kept larger than the model's side
    shape: tuple = None  # the pictures' (C, H, W) as the dataset keeps them (oblong ones are stretched square)

    @property
    def test_crop(self):
        # a dataset kept larger than the model's side, for random-resized crops, is tested on its centre (ImageNet's)
        return self.crop if self.store_size > (self.model_args['img_size'] or self.store_size) else 1.0

    def settle(self, shape=None, classes=None):
        """The model's ViTConfig for pictures of shape (C, H, W) in classes (None: the saved model's own); a resume on
        other classes, or a model these pictures cannot make, stops here with one line."""
        if self.resumed and classes is not None and classes != self.classes:
            die(f"{self.path} holds a run with classes {self.classes!r} but the data has {classes!r}; resume with the "
                f"run's own data", 2)
        args = dict(self.model_args)
        if shape:
            self.shape = tuple(shape)  # saved with the model: sample.py cuts a picture of its own to their aspect
            args.update(in_chans=args['in_chans'] or shape[0], img_size=args['img_size'] or shape[-1])
        if classes:
            args['n_classes'] = args['n_classes'] or len(classes)
        try:
            return ViTConfig(**args)
        except (TypeError, ValueError) as e:
            die(f"bad model config: {e}", 2)

    def load_states(self, optimizers, scaler, rank, world_size, n_train):
        """A resumed run's optimizer moments, loss scale and (for the same number of processes) RNG state; then the
        start lets go of what it held."""
        if self.resumed and self.n_train != n_train:
            if self.config.get('val_size', 0):  # held_out's fixed shuffle of another count holds out other pictures
                die(f"{self.path} trained on {self.n_train} pictures holding out val_size={self.config['val_size']}; "
                    f"the training split now leaves {n_train}, and the pictures held out would be others, some it "
                    f"trained on: restore the dataset's files, or start a new run", 2)
            note(f"resuming with training pictures {self.n_train} -> {n_train} (the batches are drawn anew)")
        if self.resumed:
            load_optimizer_states(optimizers, self.states['optimizer'], self.path)
            scaler.load_state_dict(self.states['scaler'])
            if len(self.states['rng']) == world_size:
                set_rng_state(self.states['rng'][rank])
        self.weights = self.states = None

    def load_weights(self, model, classes):
        """model with the start's weights loaded (none from scratch), naming every key that does not fit; a head
        trained for other classes is left out: model's own zero head starts every class at equal odds."""
        if self.weights is None:
            return model
        # before 2026-12-06 the cls token was the pooling's: pool.token
        state = {('cls_token' if k == 'pool.token' else k): v for k, v in self.weights.items()}
        if self.classes != classes:
            state['head.weight'], state['head.bias'] = model.head.weight.detach(), model.head.bias.detach()
        own = model.state_dict()
        problems = [f"missing {k}" for k in own.keys() - state.keys()]
        problems += [f"unexpected {k}" for k in state.keys() - own.keys()]
        problems += [f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} here"
                     for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
        if problems:
            die(f"{self.path} does not fit this model: {'; '.join(sorted(problems)[:6])}"
                + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))
        model.load_state_dict(state)
        return model

def from_scratch(config):
    args = dict({f.name: config[f.name] for f in fields(ViTConfig) if f.name in config},
                in_chans=None, img_size=config['img_size'] or None, n_classes=None)
    return Start(args, store_size=config['store_size'] or config['img_size'])

def architecture_of(saved, config, flags, owner, clash):
    """The model arguments of a run that keeps a saved model's architecture (a checkpoint's, a source's). What the
    command line asks for against it (--n_layer=3 for a 2-layer checkpoint) stops the run with clash.format(then,
    now); what a config file says against it (a recipe written for another model) yields to it, with a note."""
    differ = [(k, saved[k], config[k]) for k in ARCHITECTURE if k in config and saved[k] != config[k]]
    if clashes := [d for d in differ if d[0] in flags]:
        then, now = (', '.join(f'{k}={d[i]!r}' for k, *d in clashes) for i in (0, 1))
        die(clash.format(then, now), 2)
    if differ:
        note(f"the architecture is {owner}'s, not the config's: "
             + ', '.join(f"{k} {now!r} -> {then!r}" for k, then, now in differ))
    return dict(saved, dropout=config['dropout'])

def from_checkpoint(path, config=None, flags=(), world_size=1):
    """The start of a resumed run (config: this run's; flags: the keys its command line sets), or, without a config,
    the checkpoint's run as it was (sample.py)."""
    checkpoint = load_checkpoint(path, keys=('optimizer', 'scaler', 'iter_num', 'rng', 'store_size', 'n_train'))
    args = checkpoint['model_args']
    if config:
        if checkpoint['iter_num'] >= config['max_iters']:
            die(f"{path} is at iter {checkpoint['iter_num']}, already at max_iters={config['max_iters']}; raise "
                f"max_iters to train on", 2)
        saved = dict(config, **checkpoint['config'])  # a key this version added: as this run has it
        for key in RUN_KEYS:
            if saved[key] != config[key]:
                die(f"{path} holds a run with {key}={saved[key]!r} but this run asks for {key}={config[key]!r}; "
                    + ("to train it another way, start a new run from it with "
                       f"--init_from={os.path.dirname(path) or '.'} and another --out_dir" if key == 'linear_probe'
                       else "resume with the run's own config"), 2)
        args = architecture_of(args, config, flags, 'the checkpoint', f"{path} holds a run with {{}} but this run "
                               f"asks for {{}}; resume with the run's own config")
        processes = len(checkpoint['rng'])
        changes = [f"{k} {saved[k]!r} -> {v!r}" for k, v in config.items() if k != 'init_from' and saved[k] != v]
        if processes != world_size:
            changes.append(f"processes {processes} -> {world_size} (dropout draws new numbers)")
        images, now = (c['batch_size'] * c['gradient_accumulation_steps'] * n
                       for c, n in ((saved, processes), (config, world_size)))
        if images != now:
            changes.append(f"images per iteration {images} -> {now}")
        if changes:
            note(f"resuming with changes: {', '.join(changes)}")
    # 'val_loss': what checkpoints written before 2026-12-06 called the loss the guard compares (a test loss then)
    train_loss = checkpoint.get('train_loss', checkpoint.get('val_loss', math.inf))
    return Start(args, checkpoint['store_size'], checkpoint['data_mean'], checkpoint['data_std'], checkpoint['classes'],
                 checkpoint['model'], checkpoint['iter_num'], train_loss,
                 {k: checkpoint[k] for k in ('optimizer', 'scaler', 'rng')}, checkpoint['config'],
                 checkpoint['n_train'], path, resumed=True, crop=checkpoint.get('test_crop', 0.875),
                 shape=checkpoint.get('picture_shape'))  # a checkpoint from before 2026-12-07 lacks it

# -----------------------------------------------------------------------------
# the file

def save(checkpoint, path):
    """Write path so that a kill at any instant leaves the old file or the new one, never half of one; if the disk
    refuses (full, gone), say so in one line, leaving the old file and no temporary one."""
    tmp_path = path + '.tmp'
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)  # atomic on POSIX and Windows
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError ("unexpected pos ...")
        written = os.path.getsize(tmp_path) if os.path.exists(tmp_path) else 0
        if os.path.lexists(tmp_path):
            os.remove(tmp_path)
        kept = f"{path} is left as it was" if os.path.exists(path) else "no checkpoint was kept"
        reason = getattr(e, 'strerror', None) or first_line(e)
        if isinstance(e, RuntimeError) and shutil.disk_usage(os.path.dirname(path) or '.').free <= written + 2 ** 20:
            reason = f"No space left on device ({written / 2 ** 20:.0f} MiB written, then the disk was full)"
        die(f"could not write the checkpoint {tmp_path}: {reason}; {kept}")

def checkpoint_of(model, optimizers, scaler, iter_num, train_loss, config, classes, mean, std, n_train, start, rngs):
    return {'model': model.state_dict(), 'optimizer': [opt.state_dict() for opt in optimizers],
            'scaler': scaler.state_dict(), 'model_args': asdict(model.config), 'iter_num': iter_num,
            'train_loss': train_loss, 'config': config, 'classes': classes, 'data_mean': mean, 'data_std': std,
            'n_train': n_train, 'store_size': start.store_size, 'test_crop': start.test_crop, 'rng': rngs,
            'picture_shape': start.shape}

def load_checkpoint(path, keys=()):
    """The checkpoint dict at path, holding the model, data_mean, data_std, classes, config and keys, its model_args
    every ViTConfig field (a field this version added: its default), or one line saying why there is none to use."""
    if not os.path.isfile(path):
        die(f"no checkpoint at {path} (train one first, or point out_dir at the run's folder)")
    try:
        # weights_only: a checkpoint is tensors and plain types, nothing that runs code on load
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        die(f"{path} is not a readable checkpoint (truncated or corrupt?): {first_line(e)}")
    if not (isinstance(checkpoint, dict) and 'model' in checkpoint and isinstance(checkpoint.get('model_args'), dict)):
        die(f"{path} is not a nanoViT checkpoint (it needs 'model' and a dict 'model_args')")
    if missing := [k for k in ('data_mean', 'data_std', 'classes', 'config', *keys) if k not in checkpoint]:
        die(f"{path} lacks {', '.join(missing)}: saved by another version of nanoViT, or edited")
    args, known = checkpoint['model_args'], {f.name: f.default for f in fields(ViTConfig)}
    if unknown := sorted(set(args) - set(known)):
        die(f"{path}: model_args hold {', '.join(unknown)}, which this version of nanoViT does not know")
    if missing := [k for k in known if k not in args and k not in ADDED_LATER]:
        die(f"{path}: model_args lack {', '.join(missing)}: saved by another version of nanoViT, or edited")
    checkpoint['model_args'] = {k: args.get(k, known[k]) for k in known}
    return checkpoint

def load_optimizer_states(optimizers, states, path):
    """Load the optimizers' saved moments, after checking that every saved tensor has its parameter's shape (a fused
    kernel given a wrong shape crashes the process instead of raising). The hyperparameters (lr, betas, weight decay)
    stay this run's: a resume may change them."""
    if not isinstance(states, list) or len(states) != len(optimizers):
        die(f"{path} holds the state of {len(states) if isinstance(states, list) else 'an unknown number of'} "
            f"optimizer(s), this run has {len(optimizers)}")
    for optimizer, state in zip(optimizers, states):
        try:
            saved = [i for group in state['param_groups'] for i in group['params']]
            params = [p for group in optimizer.param_groups for p in group['params']]
            fits = len(saved) == len(params) and all(
                not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape
                for i, p in zip(saved, params) for v in state['state'].get(i, {}).values())
        except (KeyError, TypeError, AttributeError):
            fits = False
        if not fits:
            die(f"{path}: the saved {type(optimizer).__name__} state does not fit this model's parameters")
        for saved_group, group in zip(state['param_groups'], optimizer.param_groups):
            saved_group.update({k: v for k, v in group.items() if k != 'params'})
        optimizer.load_state_dict(state)
