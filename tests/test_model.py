import pytest
import torch

from common import pick_dtype
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
def test_sdpa_matches_plain_attention(pool, pos_embd, qk_norm):
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=2, n_head=4, n_embd=64, pool=pool, pos_embd=pos_embd, pos_std=1.0,
                                     qk_norm=qk_norm)))
    x = torch.randn(4, 1, 28, 28)
    fast, _ = model(x)
    for block in model.blocks:
        block.attn.flash = False
    plain, _ = model(x)
    assert torch.allclose(fast, plain, atol=1e-5), (fast - plain).abs().max()
    assert fast.abs().max() > 0.1  # the comparison is not between two zeros


def test_bad_shapes_are_rejected_with_their_values():
    with pytest.raises(ValueError, match='img_size=28 is not divisible by patch_size=5'):
        ViTConfig(patch_size=5)
    with pytest.raises(ValueError, match='n_embd=100 is not divisible by n_head=3'):
        ViTConfig(n_embd=100, n_head=3)
    model = ViT(ViTConfig(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match=r'expected images of shape \(B, 1, 28, 28\), got \(2, 3, 28, 28\)'):
        model(torch.randn(2, 3, 28, 28))


def test_weight_decay_only_on_weight_matrices():
    model = ViT(ViTConfig(n_layer=2, n_embd=32, n_head=2))
    decay, no_decay = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu').param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay['params']}
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert {'pos_embd', 'cls_token', 'blocks.0.ln_1.weight', 'blocks.0.attn.qkv.bias'} <= \
        {names[id(p)] for p in no_decay['params']}
    assert decayed == {'patch_embd.weight', 'head.weight'} | {f'blocks.{i}.{m}.weight' for i in range(2)
                                                              for m in ('attn.qkv', 'attn.proj', 'mlp.fc', 'mlp.proj')}


def test_flops_match_a_hand_count():
    # 28x28, patch 14: 4 patches + cls = 5 tokens, width 8, mlp 16, one layer, 10 classes
    model = ViT(ViTConfig(patch_size=14, n_layer=1, n_head=2, n_embd=8, mlp_ratio=2))
    patch = 2 * 4 * 196 * 8
    matmuls = 5 * 2 * (8 * 24 + 8 * 8 + 8 * 16 + 16 * 8)
    attention = 2 * (5 * 5 * 8) * 2  # QK^T and att @ V, all heads
    head = 2 * 8 * 10
    assert model.flops_per_image() == patch + matmuls + attention + head


@pytest.mark.parametrize('pool', ['cls', 'mean'])
def test_attention_maps_and_rollout(pool):
    torch.manual_seed(0)
    model = randomized(ViT(ViTConfig(n_layer=3, n_head=2, n_embd=32, patch_size=7, pool=pool, pos_std=1.0)))
    x = torch.randn(5, 1, 28, 28)
    maps = model.attention_maps(x)
    tokens = 16 + (pool == 'cls')
    assert maps.shape == (3, 5, 2, tokens, tokens)
    assert torch.allclose(maps.sum(-1), torch.ones(3, 5, 2, tokens), atol=1e-5)
    rollout = model.attention_rollout(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # as sample.py runs it on a bf16 CPU
        assert torch.allclose(model.attention_rollout(x), rollout, atol=0.02)
    assert rollout.shape == (5, 4, 4) and rollout.dtype == torch.float32
    assert torch.allclose(rollout.sum(dim=(1, 2)), torch.ones(5), atol=1e-5)
    assert (rollout >= 0).all() and not torch.allclose(rollout, torch.full_like(rollout, 1 / 16))


def test_dtype_rule_by_capability():
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
