"""support/optimizer.py: which parameter goes into which group, layer decay, and our Muon against torch's."""
import pytest
import torch

from model import ViT, ViTConfig
from support.optimizer import Muon, configure_optimizers, orthogonalize


def test_optimizer_groups():
    model = ViT(ViTConfig(n_layer=2, n_embd=32, n_head=2))
    names = {id(p): n for n, p in model.named_parameters()}
    adamw, = configure_optimizers(model, 'adamw', 1e-3, 0.02, 0.1, (0.9, 0.99), 0.95, 'cpu', 'float32').values()
    decay, no_decay = adamw.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert {'pos_embd', 'cls_token', 'blocks.0.ln_1.weight', 'blocks.0.attn.qkv.bias'} <= \
        {names[id(p)] for p in no_decay['params']}
    block_matrices = {f'blocks.{i}.{m}.weight' for i in range(2) for m in ('attn.qkv', 'attn.proj', 'mlp.fc', 'mlp.proj')}
    assert {names[id(p)] for p in decay['params']} == {'patch_embd.weight', 'head.weight'} | block_matrices
    # Muon takes the blocks' matrices (qkv in three blocks), AdamW everything else
    optimizers = configure_optimizers(model, 'muon', 1e-3, 0.02, 0.1, (0.9, 0.99), 0.95, 'cpu', 'float32')
    adamw, muon = optimizers['adamw'], optimizers['muon']
    assert {names[id(p)] for p in adamw.param_groups[0]['params']} == {'patch_embd.weight', 'head.weight'}
    qkv, rest = muon.param_groups
    assert qkv['blocks'] == 3
    assert {names[id(p)] for p in qkv['params']} == {'blocks.0.attn.qkv.weight', 'blocks.1.attn.qkv.weight'}
    assert {names[id(p)] for p in qkv['params'] + rest['params']} == block_matrices
    owned = [p for opt in (adamw, muon) for g in opt.param_groups for p in g['params']]
    assert len(owned) == len(list(model.parameters())) == len({id(p) for p in owned})
    assert all(g['lr'] == 0.02 for g in muon.param_groups) and all(g['lr'] == 1e-3 for g in adamw.param_groups)


@pytest.mark.parametrize('shape', [(3, 32, 32), (1, 96, 24), (1, 24, 96)])
def test_orthogonalize_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    # singular values spread over a factor of 30, as a momentum of gradients has
    u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    g = u @ torch.diag_embed(torch.logspace(-0.5, 1, min(shape[1:])).expand(shape[0], -1)) @ v
    singular = torch.linalg.svdvals(orthogonalize(g))
    assert singular.min() > 0.6 and singular.max() < 1.3, singular


def test_our_muon_steps_as_torch_muon_does():
    # torch.optim.Muon runs Newton-Schulz in bf16; ours in the dtype it is given: with bf16, the same steps
    torch.manual_seed(0)
    w = torch.randn(96, 288)
    ours, theirs = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    optimizers = [Muon([ours], lr=0.02, momentum=0.95, weight_decay=0.05, ns_dtype=torch.bfloat16),
                  torch.optim.Muon([theirs], lr=0.02, momentum=0.95, weight_decay=0.05, adjust_lr_fn='original')]
    for _ in range(3):
        g = torch.randn(96, 288)
        ours.grad, theirs.grad = g.clone(), g.clone()
        for opt in optimizers:
            opt.step()
    assert (ours - w).abs().max() > 0.01  # they moved
    assert torch.allclose(ours, theirs, atol=2e-3), (ours - theirs).abs().max()


def test_layer_decay_scales_each_layer_s_learning_rate():
    model = ViT(ViTConfig(n_layer=2, n_embd=32, n_head=2))
    adamw, = configure_optimizers(model, 'adamw', 1e-3, 0.02, 0.1, (0.9, 0.99), 0.95, 'cpu', 'float32',
                                  layer_decay=0.5).values()
    names = {id(p): n for n, p in model.named_parameters()}
    lr = {names[id(p)]: g['lr'] for g in adamw.param_groups for p in g['params']}
    assert lr['head.weight'] == lr['ln_f.weight'] == 1e-3 and lr['blocks.1.mlp.fc.weight'] == 5e-4
    assert lr['blocks.0.attn.qkv.weight'] == 2.5e-4 and lr['patch_embd.weight'] == lr['cls_token'] == 1.25e-4
