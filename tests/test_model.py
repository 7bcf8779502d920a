"""model.py: shapes, parameter counts, init, the attention the fused kernel applies, the poolings, FLOPs."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model import ViT, ViTConfig

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


@pytest.mark.parametrize('pool,pos_embd,qk_norm', [('cls', 'learned', False), ('mean', 'sincos', True)])
def test_the_attention_weights_are_those_the_fused_kernel_applies(pool, pos_embd, qk_norm):
    # the weights attention maps and rollout read, applied by hand, give what the fused SDPA kernel gives
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=2, n_head=4, n_embd=64, pool=pool, pos_embd=pos_embd, pos_std=1.0,
                                     qk_norm=qk_norm)))
    x = model.embed(torch.randn(4, 1, 28, 28))
    attn = model.blocks[0].attn
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)  # sharp attention, outputs of size 1: a difference would show
    _, _, v = attn.heads(x)
    plain = attn.proj((attn.attention_probs(x) @ v).transpose(1, 2).flatten(2))
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
    assert logits.shape == (2, 7) and model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 65, 32)


@pytest.mark.parametrize('registers', [0, 4])
def test_pooling_reads_the_cls_token_or_the_mean_of_the_patches(registers):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    for pool, prefix in (('cls', 1 + registers), ('mean', registers)):
        model = randomized(ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2, pool=pool, pos_std=1.0, n_registers=registers)))
        tokens = model.embed(x)
        assert tokens.shape == (2, prefix + 49, 32)
        if registers:  # the registers come after the cls token, the same for every picture
            assert torch.equal(tokens[:, prefix - registers:prefix], model.registers.expand(2, -1, -1))
        expected = tokens[:, 0] if pool == 'cls' else tokens[:, prefix:].mean(dim=1)
        assert torch.equal(model.pool(tokens), expected)
    # mean pooling has no token of its own to learn
    assert ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2, pool='mean')).cls_token is None


def test_layer_scale_scales_each_residual_branch():
    torch.manual_seed(0)
    config = ViTConfig(n_layer=1, n_embd=32, n_head=2, pos_std=1.0)
    plain, scaled = ViT(config), ViT(ViTConfig(**{**config.__dict__, 'layer_scale': 1e-5}))
    scaled.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(scaled.blocks[0].ls_1.gamma, torch.full((32,), 1e-5))
    block, x = scaled.blocks[0], torch.randn(2, 17, 32)
    assert torch.allclose(block(x), x, atol=1e-3)  # branches that start small: the block starts near the identity
    with torch.no_grad():
        block.ls_1.gamma.fill_(1.0), block.ls_2.gamma.fill_(1.0)
    assert torch.allclose(block(x), plain.blocks[0](x), atol=1e-6)  # at 1, the plain block


def test_flops_match_torch_s_count():
    # torch's FlopCounterMode counts the matmuls and convolutions the forward pass really runs (on SDPA's
    # math kernel: it does not count the CPU's fused attention kernel)
    for config in (ViTConfig(n_layer=2, n_head=2, n_embd=64, patch_size=7),
                   ViTConfig(img_size=32, in_chans=3, n_layer=1, n_head=4, n_embd=48, mlp_ratio=2, pool='mean')):
        model = ViT(config)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, config.in_chans, config.img_size, config.img_size))
        assert model.flops_per_image() == counter.get_total_flops()


def test_pos_std_is_the_std_drawn():
    torch.manual_seed(0)
    drawn = ViT(ViTConfig(n_layer=1, n_embd=64, n_head=2, pos_std=3.0)).pos_embd.std().item()
    # a normal cut at 2 std has 0.88 of its std: 2.64, where a cut at +-2 whatever the std gave 1.10
    assert 2.5 < drawn < 2.8
    with pytest.raises(ValueError, match='pos_std=-1.0 must be 0 or more'):
        ViTConfig(pos_std=-1.0)


def test_layer_ids_count_from_the_input():
    model = ViT(ViTConfig(n_layer=2, n_embd=32, n_head=2))
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids['patch_embd.weight'] == ids['pos_embd'] == ids['cls_token'] == 0
    assert ids['blocks.0.attn.qkv.weight'] == 1 and ids['blocks.1.mlp.fc.bias'] == 2
    assert ids['ln_f.weight'] == ids['head.weight'] == 3
