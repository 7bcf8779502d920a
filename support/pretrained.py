"""
Where a fine-tuning run starts: a timm ViT (init_from='timm:NAME'), a torchvision ImageNet ViT, or another nanoViT
run, each as model.py's ViT by names alone (the positions of the tokens before the patches folded into those tokens).
timm and torchvision are imported only when a run names them.
"""
import os
from dataclasses import asdict, replace

import torch

from model import ViTConfig, resample_pos_embd
from support.checkpoint import Start, architecture_of, load_checkpoint
from support.errors import die, first_line, import_or_die

# torchvision's ViT builders: what their weights do not say (the heads)
TORCHVISION_VITS = {'vit_b_16': 12, 'vit_b_32': 12, 'vit_l_16': 16, 'vit_l_32': 16, 'vit_h_14': 16}

# -----------------------------------------------------------------------------
# timm

def timm_source(init_from, weights):
    """A timm ViT as a Start: its architecture from a random-weight copy (one line, before anything is fetched or
    decoded, for a name timm does not know or a model model.py cannot express), then its pretrained weights."""
    timm = import_or_die('timm', f"init_from={init_from!r}")
    name = init_from.removeprefix('timm:')
    try:
        model = timm.create_model(name, pretrained=False)  # its shape, nothing fetched
    except RuntimeError as e:
        close = timm.list_models(name.split('.')[0].split('_')[0] + '*', pretrained=True)[:4]
        die(f"init_from={init_from!r}: timm {timm.__version__} has no model {name!r} ({first_line(e)})"
            + (f"; for instance {', '.join(close)}" if close else ""), 2)
    if why := timm_refusal(model):
        die(f"init_from={init_from!r} is not a ViT model.py expresses: it has {why}", 2)
    cfg, block, width = model.pretrained_cfg, model.blocks[0], model.embed_dim
    args = dict(asdict(ViTConfig()), img_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0],
                in_chans=model.patch_embed.proj.in_channels, n_classes=1, n_layer=len(model.blocks), n_embd=width,
                n_head=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / width, norm_eps=block.norm1.eps,
                pool='cls' if model.global_pool == 'token' else 'mean', n_registers=model.num_reg_tokens,
                qk_norm=isinstance(block.attn.q_norm, torch.nn.LayerNorm),
                # LayerScale's start, timm's init_values as float32 holds it: 1e-6, not 1.0000002e-06
                layer_scale=float(f"{block.ls1.gamma.detach()[0]:.6g}") if hasattr(block.ls1, 'gamma') else 0.0)
    if weights:
        try:
            model = timm.create_model(name, pretrained=True)  # timm's loader: the Hugging Face cache, or a fetch
        except Exception as e:
            die(f"init_from={init_from!r}: timm could not load its weights ({first_line(e)}); offline, put them in "
                f"the Hugging Face cache ($HF_HOME/hub) and set HF_HUB_OFFLINE=1")
    return Start(args, 0, list(cfg['mean']), list(cfg['std']), weights=from_timm(model.state_dict(), model) if weights
                 else None, crop=cfg.get('crop_pct', 0.875))

def timm_refusal(model):
    """What a timm model has that model.py's ViT has not, or '': the first of these checks that fails."""
    nn = torch.nn
    blocks = list(getattr(model, 'blocks', []))
    checks = [
        (lambda: type(model).__name__ == 'VisionTransformer' and blocks,
         f"the structure of a {type(model).__name__} (a distillation token, relative positions or another mixer)"),
        (lambda: type(model.patch_embed).__name__ == 'PatchEmbed', "a convolutional stem"),
        (lambda: model.pos_embed is not None, "no position embedding"),
        (lambda: model.global_pool in ('token', 'avg') and (model.cls_token is not None or model.global_pool == 'avg'),
         f"pooling '{getattr(model, 'global_pool', '')}' (model.py reads the cls token or the mean patch token)"),
        (lambda: isinstance(model.fc_norm, nn.Identity), "a norm after the pooling (fc_norm), not before it"),
        (lambda: all(isinstance(m, nn.Identity) for m in (model.norm_pre, model.patch_embed.norm)),
         "a norm before the blocks"),
        (lambda: all(type(b).__name__ == 'Block' and type(b.mlp).__name__ == 'Mlp' and type(b.mlp.act) is nn.GELU
                     and isinstance(b.mlp.norm, nn.Identity)
                     and isinstance(getattr(b.attn, 'norm', None), (nn.Identity, type(None))) for b in blocks),
         "blocks other than pre-norm attention and a Linear-GELU-Linear MLP (SwiGLU, parallel or scaled blocks)"),
        (lambda: all(isinstance(m, nn.LayerNorm) and m.eps == blocks[0].norm1.eps for m in model.modules()
                     if 'Norm' in type(m).__name__), "other norms than LayerNorm"),
        (lambda: all(m.bias is not None for m in model.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))),
         "layers without a bias"),
    ]
    return next((why for holds, why in checks if not holds()), '')

def from_timm(state, model):
    """timm's VisionTransformer state_dict under model.py's names. Where its position embedding covers the tokens
    before the patches (cls, registers), their positions are constants, folded into the tokens."""
    covered = 0 if model.no_embed_class else model.num_prefix_tokens  # the tokens before the patches with a position
    pos = state['pos_embed']
    lead = pos[:, :covered] if covered else torch.zeros_like(pos[:, :model.num_prefix_tokens])
    ours = {'patch_embd.weight': state['patch_embed.proj.weight'], 'patch_embd.bias': state['patch_embed.proj.bias'],
            'pos_embd': pos[:, covered:], 'ln_f.weight': state['norm.weight'], 'ln_f.bias': state['norm.bias']}
    ours |= {k: v for k, v in state.items() if k.startswith('head.')}  # the head, where it has one
    if model.cls_token is not None:
        ours['cls_token'] = state['cls_token'] + lead[:, :1]
    if model.num_reg_tokens:
        ours['registers'] = state['reg_token'] + lead[:, -model.num_reg_tokens:]
    names = {'norm1.': 'ln_1.', 'norm2.': 'ln_2.', 'mlp.fc1.': 'mlp.fc.', 'mlp.fc2.': 'mlp.proj.', 'ls1.': 'ls_1.',
             'ls2.': 'ls_2.', 'attn.': 'attn.'}
    for key, value in state.items():
        if key.startswith('blocks.'):
            _, i, rest = key.split('.', 2)
            theirs = next(t for t in names if rest.startswith(t))
            ours[f'blocks.{i}.{names[theirs]}{rest[len(theirs):]}'] = value
    return ours

# -----------------------------------------------------------------------------
# torchvision

def torchvision_source(init_from, weights):
    """A torchvision ViT ('vit_b_16' or 'vit_b_16:IMAGENET1K_SWAG_E2E_V1') as a Start: its architecture from its name
    and weights' meta-data alone, then its ImageNet weights, from torch's cache or fetched into it."""
    from torchvision.models import get_model_weights
    name, _, weights_name = init_from.partition(':')
    enum = get_model_weights(name)
    if weights_name and weights_name not in enum.__members__:
        die(f"init_from={init_from!r}: {name} has no weights {weights_name!r}; it has {', '.join(enum.__members__)}", 2)
    entry = enum[weights_name] if weights_name else enum.DEFAULT
    width, depth = {'b': (768, 12), 'l': (1024, 24), 'h': (1280, 32)}[name.split('_')[1]]
    transforms = entry.transforms()
    args = dict(asdict(ViTConfig()), img_size=transforms.crop_size[0], patch_size=int(name.rsplit('_', 1)[1]),
                in_chans=3, n_classes=len(entry.meta['categories']), n_layer=depth, n_head=TORCHVISION_VITS[name],
                n_embd=width, mlp_ratio=4.0, bias=True, pool='cls', pos_embd='learned', qk_norm=False, norm_eps=1e-6)
    crop = transforms.crop_size[0] / transforms.resize_size[0]
    if not weights:
        return Start(args, 0, list(transforms.mean), list(transforms.std), crop=crop)
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(entry.url))
    try:
        state = entry.get_state_dict(progress=True, weights_only=True)
    except Exception as e:
        if os.path.exists(path):
            die(f"{path} is not a readable file (a download cut short? delete it to fetch it again): {first_line(e)}")
        die(f"init_from={init_from!r}: no weights at {path}, and fetching {entry.url} failed "
            f"({type(e).__name__}); offline, put that file there (torchvision looks in $TORCH_HOME/hub/checkpoints)")
    return Start(args, 0, list(transforms.mean), list(transforms.std), list(entry.meta['categories']),
                 from_torchvision(state, path), crop=crop)

def from_torchvision(state, path):
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
    for key, value in state.items():
        if key.startswith('encoder.layers.encoder_layer_'):
            i, rest = key.removeprefix('encoder.layers.encoder_layer_').split('.', 1)
            theirs = next((t for t in names if rest.startswith(t)), None)
            if theirs is None:
                die(f"{path}: {key} has no place in model.py's ViT")
            ours[f'blocks.{i}.{names[theirs]}{rest[len(theirs):]}'] = value
    return ours

# -----------------------------------------------------------------------------
# another nanoViT run, and the start of a fine-tuning run

def read_run(init_from, config):
    """Another nanoViT run (its out_dir or its ckpt.pt) as a Start."""
    path = os.path.expanduser(init_from)
    path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
    if not os.path.isfile(path):
        die(f"init_from={init_from!r} is neither 'scratch', 'resume', a torchvision ViT "
            f"({', '.join(TORCHVISION_VITS)}, optionally :WEIGHTS), timm:NAME, nor a nanoViT run's out_dir or "
            f"ckpt.pt", 2)
    checkpoint = load_checkpoint(path)
    # fine-tuned on the data its source trained on, a run holds out no more pictures than the source did: the same
    # fixed shuffle puts the source's held-out pictures first, and any beyond them the source has trained on
    source = checkpoint['config']
    same = source['dataset'] == config['dataset'] and os.path.realpath(os.path.expanduser(source['data_dir'])) == \
        os.path.realpath(os.path.expanduser(config['data_dir']))  # the same folder by any path, links followed
    if same and config['val_size'] > source.get('val_size', 0):
        die(f"init_from={init_from!r} trained on {config['dataset']} in {source['data_dir']} holding out "
            f"val_size={source.get('val_size', 0)}; with val_size={config['val_size']}, pictures it trained on would "
            f"be in this run's validation split: use val_size={source.get('val_size', 0)} or less", 2)
    return Start(checkpoint['model_args'], 0, checkpoint['data_mean'], checkpoint['data_std'], checkpoint['classes'],
                 checkpoint['model'], crop=checkpoint.get('test_crop', 0.875))

def from_source(init_from, config, flags, weights=True):
    """The start of a fine-tuning run: the source's architecture (what the command line asks against it stops the
    run) at the side config's img_size asks for (0: the source's), its pixel normalization and test crop, and,
    unless weights is False (bench.py times the shape alone), its weights, the position embedding resampled to it."""
    fetch = timm_source if init_from.startswith('timm:') else \
        torchvision_source if init_from.split(':')[0] in TORCHVISION_VITS else None
    source = fetch(init_from, weights=False) if fetch else read_run(init_from, config)
    args = architecture_of(source.model_args, config, flags, init_from, f"init_from={init_from!r} has {{}} but this "
                           f"run asks for {{}}: a fine-tuning run keeps the source's architecture")
    args = dict(args, img_size=config['img_size'] or args['img_size'], n_classes=None)  # the classes are the data's
    Start(args, 0).settle(classes=['a'])  # a model model.py cannot make stops here, before any fetch
    if fetch and weights:  # all is known to work: now the weights
        source = fetch(init_from, weights=True)
    state = source.weights  # a dict of its own, loaded or renamed for this run
    if state is not None and args['pos_embd'] == 'learned':
        state['pos_embd'] = resample_pos_embd(state['pos_embd'], args['img_size'] // args['patch_size'])
    return replace(source, model_args=args, store_size=config['store_size'] or args['img_size'], path=init_from)
