import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from device import native_dtypes, pick_dtype
from model import ViT, ViTConfig
from muon import Muon, orthogonalize

MNIST_MODEL = dict(n_layer=4, n_head=4, n_embd=768, patch_size=4)  # config/mnist.py's model


def hand_count_params(n_layer, n_embd, patch_size, mlp_ratio=4, n_classes=10, cls=True):
    C, hidden, patches = n_embd, int(mlp_ratio * n_embd), (28 // patch_size) ** 2
    embed = patch_size ** 2 * C + C + patches * C + (C if cls else 0)
    block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * hidden + hidden) + (hidden * C + C)
    return embed + n_layer * block + 2 * C + C * n_classes + n_classes


def randomized(model):
    # the head starts at zero, which would hide any difference in the layers below it
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


def test_mnist_model_shape_and_parameter_count():
    model = ViT(ViTConfig(**MNIST_MODEL))
    logits, loss = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and loss is None
    assert model.get_num_params() == hand_count_params(4, 768, 4)
    assert ViT(ViTConfig(n_layer=2, n_embd=64, n_head=2, pool='mean')).get_num_params() == \
        hand_count_params(2, 64, 4, cls=False)
    # qk_norm adds a LayerNorm (gain and bias) over each head's 32 dims, for queries and keys
    assert ViT(ViTConfig(n_layer=2, n_embd=64, n_head=2, qk_norm=True)).get_num_params() == \
        hand_count_params(2, 64, 4) + 2 * 2 * 2 * 32


def test_loss_at_init_is_uniform_guess():
    # zero-initialised head: every class starts at the same odds, loss = ln(10)
    model = ViT(ViTConfig(n_layer=2, n_embd=64, n_head=2))
    _, loss = model(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=1e-5)


@pytest.mark.parametrize('pool,pos_embd,qk_norm', [('cls', 'learned', False), ('mean', 'sincos', True), ('map', 'learned', True)])
def test_the_attention_weights_are_those_the_fused_kernel_applies(pool, pos_embd, qk_norm):
    # the weights attention maps and rollout read, applied by hand, give what the fused SDPA kernel gives
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=2, n_head=4, n_embd=64, pool=pool, pos_embd=pos_embd, pos_std=1.0,
                                     qk_norm=qk_norm)))
    x = model.embed(torch.randn(4, 1, 28, 28))
    attn = model.blocks[0].attn
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)  # sharp attention, outputs of size 1: a difference would show
    _, _, v = attn.split_heads(x)
    plain = attn.proj((attn.weights(x) @ v).transpose(1, 2).flatten(2))
    fast = attn(x)
    assert torch.allclose(fast, plain, atol=1e-5), (fast - plain).abs().max()
    assert fast.abs().max() > 0.5  # the comparison is not between two zeros


def test_bad_shapes_are_rejected_with_their_values():
    with pytest.raises(ValueError, match='img_size=28 is not divisible by patch_size=5'):
        ViTConfig(patch_size=5)
    with pytest.raises(ValueError, match='n_embd=100 is not divisible by n_head=3'):
        ViTConfig(n_embd=100, n_head=3)
    model = ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match=r'expected images of shape \(B, 1, 28, 28\), got \(2, 3, 28, 28\)'):
        model(torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize('field,value,message', [
    ('n_embd', 0, 'n_embd=0 must be at least 1'), ('n_embd', -4, 'n_embd=-4 must be at least 1'),
    ('patch_size', 0, 'patch_size=0 must be at least 1'), ('n_head', 0, 'n_head=0 must be at least 1'),
    ('n_layer', 0, 'n_layer=0 must be at least 1'), ('mlp_ratio', -1.0, 'mlp_ratio=-1.0 must be positive'),
    ('dropout', 1.0, r'dropout=1.0 must be in \[0, 1\)'),
])
def test_impossible_values_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**{field: value})


def test_colour_pictures_of_another_size():
    model = ViT(ViTConfig(img_size=32, in_chans=3, n_classes=7, n_layer=1, n_embd=32, n_head=2))
    logits, _ = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and model.config.n_tokens == 65


def test_pooling_reads_the_prefix_or_the_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    for pool, prefix in (('cls', 1), ('mean', 0)):
        model = randomized(ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2, pool=pool, pos_std=1.0)))
        assert model.config.n_tokens == prefix + 49
        tokens = model.embed(x)
        assert tokens.shape == (2, prefix + 49, 32)
        expected = tokens[:, 0] if pool == 'cls' else tokens.mean(dim=1)
        assert torch.equal(model.pool(tokens), expected)
    # mean pooling has no token of its own to learn
    assert sum(p.numel() for p in ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2, pool='mean')).pool.parameters()) == 0


def test_map_pooling_is_one_learned_query_attending_over_the_tokens():
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2, pool='map', pos_std=1.0)))
    assert model.config.n_tokens == 49  # no token before the patches
    pool = model.pool
    tokens = torch.randn(3, 49, 32)
    # by hand: softmax(q k^T / sqrt(d)) v per head, projected, then the residual MLP
    q = pool.q(pool.probe).view(1, 2, 16).transpose(0, 1)  # (heads, 1, 16)
    k, v = pool.kv(tokens).split(32, dim=2)
    k, v = (t.view(3, 49, 2, 16).transpose(1, 2) for t in (k, v))  # (3, heads, 49, 16)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 4, dim=-1)  # (3, heads, 1, 49)
    y = pool.proj((weights @ v).transpose(1, 2).flatten(2))
    expected = (y + pool.mlp(pool.ln(y)))[:, 0]
    assert torch.allclose(pool(tokens), expected, atol=1e-5)
    assert torch.allclose(pool.token_weights(tokens), weights.mean(dim=1)[:, 0], atol=1e-6)
    # which tokens it reads depends on them: shuffling the tokens changes nothing, as attention is a weighted sum
    perm = torch.randperm(49)
    assert torch.allclose(pool(tokens[:, perm]), pool(tokens), atol=1e-5)
    # it learns: the probe and its layers get gradients, AdamW owns them, the probe without weight decay
    _, loss = model(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    loss.backward()
    assert pool.probe.grad.abs().sum() > 0 and pool.q.weight.grad.abs().sum() > 0
    adamw, = model.configure_optimizers('adamw', 1e-3, 0.02, 0.1, (0.9, 0.99), 0.95, 'cpu', 'float32')
    assert any(p is pool.probe for p in adamw.param_groups[1]['params'])
    assert any(p is pool.q.weight for p in adamw.param_groups[0]['params'])


def test_optimizer_groups():
    model = ViT(ViTConfig(n_layer=2, n_embd=32, n_head=2))
    names = {id(p): n for n, p in model.named_parameters()}
    adamw, = model.configure_optimizers('adamw', 1e-3, 0.02, 0.1, (0.9, 0.99), 0.95, 'cpu', 'float32')
    decay, no_decay = adamw.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert {'pos_embd', 'pool.token', 'blocks.0.ln_1.weight', 'blocks.0.attn.qkv.bias'} <= \
        {names[id(p)] for p in no_decay['params']}
    block_matrices = {f'blocks.{i}.{m}.weight' for i in range(2) for m in ('attn.qkv', 'attn.proj', 'mlp.fc', 'mlp.proj')}
    assert {names[id(p)] for p in decay['params']} == {'patch_embd.weight', 'head.weight'} | block_matrices
    # Muon takes the blocks' matrices (qkv in three blocks), AdamW everything else
    adamw, muon = model.configure_optimizers('muon', 1e-3, 0.02, 0.1, (0.9, 0.99), 0.95, 'cpu', 'float32')
    assert {names[id(p)] for p in adamw.param_groups[0]['params']} == {'patch_embd.weight', 'head.weight'}
    qkv, rest = muon.param_groups
    assert qkv['blocks'] == 3
    assert {names[id(p)] for p in qkv['params']} == {'blocks.0.attn.qkv.weight', 'blocks.1.attn.qkv.weight'}
    assert {names[id(p)] for p in qkv['params'] + rest['params']} == block_matrices
    owned = [p for opt in (adamw, muon) for g in opt.param_groups for p in g['params']]
    assert len(owned) == len(list(model.parameters())) == len({id(p) for p in owned})
    assert all(g['max_lr'] == 0.02 for g in muon.param_groups) and all(g['max_lr'] == 1e-3 for g in adamw.param_groups)


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


def test_flops_match_torch_s_count():
    # torch's FlopCounterMode counts the matmuls and convolutions the forward pass really runs (on SDPA's
    # math kernel: it does not count the CPU's fused attention kernel)
    for config in (ViTConfig(n_layer=2, n_head=2, n_embd=64, patch_size=7),
                   ViTConfig(img_size=32, in_chans=3, n_layer=1, n_head=4, n_embd=48, mlp_ratio=2, pool='mean'),
                   ViTConfig(n_layer=1, n_head=2, n_embd=32, patch_size=7, pool='map')):
        model = ViT(config)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, config.in_chans, config.img_size, config.img_size))
        assert model.flops_per_image() == counter.get_total_flops()


def test_attention_maps_are_those_of_the_eval_model():
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=2, n_head=2, n_embd=32, patch_size=7, dropout=0.5, pos_std=1.0)))
    x = torch.randn(3, 1, 28, 28)
    expected, _ = model.attention_maps(x)
    model.train()  # dropout would change every map
    assert torch.equal(model.attention_maps(x)[0], expected) and model.training


@pytest.mark.parametrize('pool', ['cls', 'mean', 'map'])
def test_attention_maps_and_rollout(pool):
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=3, n_head=2, n_embd=32, patch_size=7, pool=pool, pos_std=1.0)))
    x = torch.randn(5, 1, 28, 28)
    maps, _ = model.attention_maps(x)
    tokens = 16 + (pool == 'cls')
    if pool == 'map':  # a single layer's rollout is the probe's attention mixed with the identity
        one = ViT(ViTConfig(n_layer=1, n_head=2, n_embd=32, patch_size=7, pool=pool, pos_std=1.0)).eval()
        layer, final = one.attention_maps(x)
        expected = (one.pool.token_weights(final)[:, None] @ ((layer[0].mean(dim=1) + torch.eye(16)) / 2))[:, 0]
        assert torch.allclose(one.attention_rollout(x).flatten(1), expected / expected.sum(-1, keepdim=True), atol=1e-6)
    assert maps.shape == (3, 5, 2, tokens, tokens)
    assert torch.allclose(maps.sum(-1), torch.ones(3, 5, 2, tokens), atol=1e-5)
    rollout = model.attention_rollout(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # as sample.py runs it on a bf16 CPU
        assert torch.allclose(model.attention_rollout(x), rollout, atol=0.02)
    assert rollout.shape == (5, 4, 4) and rollout.dtype == torch.float32
    assert torch.allclose(rollout.sum(dim=(1, 2)), torch.ones(5), atol=1e-5)
    assert (rollout >= 0).all() and not torch.allclose(rollout, torch.full_like(rollout, 1 / 16))


def test_dtype_rule_by_capability():
    # the rule itself, and that bench.py times what dtype='auto' would pick first
    assert pick_dtype('auto', 'cuda', capability=(7, 5)) == \
        ('float16', 'sm75 has fp16 tensor cores but no native bf16 (GradScaler on)')  # T4
    assert pick_dtype('auto', 'cuda', capability=(7, 0))[0] == 'float16'  # V100
    assert pick_dtype('auto', 'cuda', capability=(8, 0))[0] == 'bfloat16'  # A100
    assert pick_dtype('auto', 'cuda', capability=(9, 0))[0] == 'bfloat16'  # H100
    assert pick_dtype('auto', 'cuda', capability=(6, 1))[0] == 'float32'  # Pascal
    assert pick_dtype('auto', 'cpu', native_cpu_bf16=False)[0] == 'float32'
    assert pick_dtype('auto', 'cpu', native_cpu_bf16=True)[0] == 'bfloat16'
    assert pick_dtype('float32', 'cuda', capability=(9, 0))[0] == 'float32'
    assert pick_dtype('bfloat16', 'cpu', native_cpu_bf16=False)[0] == 'bfloat16'
    with pytest.raises(SystemExit):
        pick_dtype('float16', 'cpu')
    with pytest.raises(SystemExit):
        pick_dtype('fp8', 'cuda')
    assert [d for d, _ in native_dtypes('cuda', capability=(9, 0))] == ['bfloat16', 'float16', 'float32']
    assert [d for d, _ in native_dtypes('cpu', native_cpu_bf16=False)] == ['float32']
