"""
Where a fine-tuning run starts: torchvision's ImageNet ViTs (fetched through torchvision's weights API
into torch's cache, nothing fetched when the file is there) or another nanoViT run. Either becomes
model.py's ViT: torchvision's VisionTransformer maps onto it by names alone, its cls token's position
folded into the cls token. What fine-tuning may change of the source: the classes (a new zero head),
the picture size (the position embedding resampled on its grid), dropout.
"""
import os
from dataclasses import asdict, dataclass

import torch

from model import ViTConfig, resample_pos_embd
from support.checkpoint import Start, architecture_of, load_checkpoint, model_config, saved_model_args
from support.errors import die

# torchvision's ViT builders: what their weights do not say (the heads)
TORCHVISION_VITS = {'vit_b_16': 12, 'vit_b_32': 12, 'vit_l_16': 16, 'vit_l_32': 16, 'vit_h_14': 16}


@dataclass
class Source:
    """A model to start from: its ViTConfig's fields, its weights under model.py's names, the pixel
    normalization it was trained with, and the names of its classes."""
    model_args: dict
    state_dict: dict
    mean: list
    std: list
    classes: list = None
    config: dict = None  # a nanoViT run's config


def is_torchvision_name(init_from):
    return init_from.split(':')[0] in TORCHVISION_VITS


def torchvision_weights(init_from):
    """The torchvision weights entry that init_from names ('vit_b_16' or 'vit_b_16:IMAGENET1K_SWAG_E2E_V1')."""
    from torchvision.models import get_model_weights
    name, _, weights_name = init_from.partition(':')
    enum = get_model_weights(name)
    if not weights_name:
        return enum.DEFAULT
    if weights_name not in enum.__members__:
        die(f"init_from={init_from!r}: {name} has no weights {weights_name!r}; it has {', '.join(enum.__members__)}", 2)
    return enum[weights_name]


def torchvision_architecture(init_from):
    """The ViTConfig fields of a torchvision ViT, from its name and weights' meta-data alone (nothing fetched)."""
    weights = torchvision_weights(init_from)
    name = init_from.split(':')[0]
    patch = int(name.rsplit('_', 1)[1])
    width, depth = {'b': (768, 12), 'l': (1024, 24), 'h': (1280, 32)}[name.split('_')[1]]
    return dict(asdict(ViTConfig()), img_size=weights.transforms().crop_size[0], patch_size=patch, in_chans=3,
                n_classes=len(weights.meta['categories']), n_layer=depth, n_head=TORCHVISION_VITS[name], n_embd=width,
                mlp_ratio=4.0, bias=True, pool='cls', pos_embd='learned', qk_norm=False, norm_eps=1e-6)


def fetch_torchvision(init_from):
    """A torchvision ViT's ImageNet weights, from torch's cache or fetched into it, as a Source."""
    weights = torchvision_weights(init_from)
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))
    try:
        state = weights.get_state_dict(progress=True, weights_only=True)
    except Exception as e:
        if os.path.exists(path):
            die(f"{path} is not a readable checkpoint (a download cut short? delete it to fetch it again): "
                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        die(f"init_from={init_from!r}: no weights at {path}, and fetching {weights.url} failed "
            f"({type(e).__name__}); offline, put that file there (torchvision looks in $TORCH_HOME/hub/checkpoints)")
    args = torchvision_architecture(init_from)
    transforms = weights.transforms()
    return Source(args, from_torchvision(state, args, path), list(transforms.mean), list(transforms.std),
                  list(weights.meta['categories']))


def from_torchvision(state, args, path):
    """torchvision's VisionTransformer state_dict under model.py's names. Its cls token gets a position of its
    own in the position embedding: a constant, which folds into the token."""
    if not isinstance(state, dict) or 'conv_proj.weight' not in state or 'encoder.pos_embedding' not in state:
        die(f"{path} is not a torchvision VisionTransformer's weights (no conv_proj.weight, encoder.pos_embedding)")
    pos = state['encoder.pos_embedding']
    ours = {'patch_embd.weight': state['conv_proj.weight'], 'patch_embd.bias': state['conv_proj.bias'],
            'pos_embd': pos[:, 1:], 'cls_token': state['class_token'] + pos[:, :1],
            'ln_f.weight': state['encoder.ln.weight'], 'ln_f.bias': state['encoder.ln.bias'],
            'head.weight': state['heads.head.weight'], 'head.bias': state['heads.head.bias']}
    names = {'ln_1': 'ln_1', 'self_attention.in_proj_': 'attn.qkv.', 'self_attention.out_proj.': 'attn.proj.',
             'ln_2': 'ln_2', 'mlp.0.': 'mlp.fc.', 'mlp.3.': 'mlp.proj.'}
    for i in range(args['n_layer']):
        prefix = f'encoder.layers.encoder_layer_{i}.'
        for key, value in state.items():
            if key.startswith(prefix):
                rest = key[len(prefix):]
                theirs = next((t for t in names if rest.startswith(t)), None)
                if theirs is None:
                    die(f"{path}: {key} has no place in model.py's ViT")
                ours[f'blocks.{i}.{names[theirs]}{rest[len(theirs):]}'] = value
    return ours


def read_run(init_from):
    """Another nanoViT run (its out_dir or its ckpt.pt) as a Source."""
    path = os.path.expanduser(init_from)
    path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
    if not os.path.isfile(path):
        die(f"init_from={init_from!r} is neither 'scratch', 'resume', a torchvision ViT "
            f"({', '.join(TORCHVISION_VITS)}, optionally :WEIGHTS) nor a nanoViT run's out_dir or ckpt.pt", 2)
    checkpoint = load_checkpoint(path, keys=('model', 'model_args', 'data_mean', 'data_std', 'classes', 'config'))
    return Source(saved_model_args(checkpoint, path), checkpoint['model'], checkpoint['data_mean'], checkpoint['data_std'],
                  checkpoint['classes'], checkpoint['config'])


def check_held_out(init_from, source, config):
    """A run fine-tuned on the data its source trained on holds out no more pictures than the source did: the same
    fixed shuffle puts the source's held-out pictures first, and any beyond them the source has trained on."""
    same = source['dataset'] == config['dataset'] and os.path.abspath(os.path.expanduser(source['data_dir'])) == \
        os.path.abspath(os.path.expanduser(config['data_dir']))
    if same and config['val_size'] > source.get('val_size', 0):
        die(f"init_from={init_from!r} trained on {config['dataset']} in {source['data_dir']} holding out "
            f"val_size={source.get('val_size', 0)}; with val_size={config['val_size']}, pictures it trained on would be "
            f"in this run's validation split: use val_size={source.get('val_size', 0)} or less", 2)


def from_source(init_from, config, flags, weights=True):
    """The start of a fine-tuning run: the source's architecture (what the command line asks against it stops the
    run) at the side config's img_size asks for (0: the source's), its pixel normalization, and, unless weights
    is False (bench.py times the shape alone), its weights with the position embedding resampled to that side.
    A torchvision ViT's architecture comes from its name: whatever is wrong with it stops before any fetch."""
    run = None if is_torchvision_name(init_from) else read_run(init_from)
    saved = run.model_args if run else torchvision_architecture(init_from)
    args = architecture_of(saved, config, flags, init_from, f"init_from={init_from!r} has {{}} but this run asks "
                           f"for {{}}: a fine-tuning run keeps the source's architecture")
    args = dict(args, img_size=config['img_size'] or args['img_size'], n_classes=None)  # the classes are the data's
    model_config(dict(args, n_classes=1))
    if run:
        check_held_out(init_from, run.config, config)
    source = run or (fetch_torchvision(init_from) if weights else Source(saved, None, None, None))
    state = source.state_dict
    if state is not None and args['pos_embd'] == 'learned':
        state = dict(state, pos_embd=resample_pos_embd(state['pos_embd'], args['img_size'] // args['patch_size']))
    return Start(args, config['store_size'] or args['img_size'], source.mean, source.std, source.classes, state,
                 path=init_from)
