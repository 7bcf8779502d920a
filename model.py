"""
A Vision Transformer in one file.
References:
1) the ViT paper, "An Image is Worth 16x16 Words" (Dosovitskiy et al.)
2) timm's vision_transformer.py, for the correctness details (pre-norm, init, no decay on pos/cls)
3) "Better plain ViT baselines" (big_vision): mean pooling, 2-D sin-cos positions, zero head
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

@dataclass
class ViTConfig:
    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    n_classes: int = 10
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 768
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    pool: str = 'cls'        # what the head reads: a learned 'cls' token before the patches, or the 'mean' patch token
    pos_embd: str = 'learned'  # 'learned' or 'sincos' (fixed 2-D sin-cos)
    pos_std: float = 0.02    # init std of a learned position embedding
    qk_norm: bool = False    # LayerNorm on queries and keys (ViT-22B): bounded attention logits
    norm_eps: float = 1e-5   # LayerNorm's epsilon (torch's default; torchvision's and timm's ViTs use 1e-6)
    layer_scale: float = 0.0  # a learned per-channel scale on each residual branch, starting here (DeiT III); 0: none
    n_registers: int = 0     # learned tokens beside the patches that the head does not read (DINOv2's registers)

    def __post_init__(self):
        for name in ('img_size', 'patch_size', 'in_chans', 'n_classes', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        rules = [('mlp_ratio', 0 < self.mlp_ratio < 1e6 and int(self.mlp_ratio * self.n_embd) >= 1,
                  "must be positive (the MLP needs at least one unit)"),
                 ('dropout', 0 <= self.dropout < 1, "must be in [0, 1)"),
                 ('pos_std', 0 <= self.pos_std < 1e6, "must be 0 or more"),
                 ('norm_eps', 0 < self.norm_eps < 1, "must be in (0, 1)"),
                 ('img_size', self.img_size % self.patch_size == 0,
                  f"is not divisible by patch_size={self.patch_size}"),
                 ('n_embd', self.n_embd % self.n_head == 0, f"is not divisible by n_head={self.n_head}"),
                 ('pool', self.pool in ('cls', 'mean'), "must be 'cls' or 'mean'"),
                 ('n_registers', self.n_registers >= 0, "must be 0 or more"),
                 ('pos_embd', self.pos_embd in ('learned', 'sincos'), "must be 'learned' or 'sincos'"),
                 ('n_embd', self.pos_embd != 'sincos' or self.n_embd % 4 == 0,
                  "must be divisible by 4 for pos_embd='sincos'")]
        for name, holds, rule in rules:
            if not holds:
                raise ValueError(f"{name}={getattr(self, name)!r} {rule}")

    @property
    def grid(self):
        return self.img_size // self.patch_size

    @property
    def n_prefix(self):
        return (self.pool == 'cls') + self.n_registers

def resample_pos_embd(pos, grid):
    """A learned position embedding (1, old_grid**2, C) resampled to (1, grid**2, C) on its 2-D grid, bicubic
    (as timm's resample_abs_pos_embed), for pictures of another size."""
    old = int(round(pos.shape[1] ** 0.5))
    if old == grid:
        return pos
    image = pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode='bicubic', align_corners=False, antialias=grid < old)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)

def sincos_pos_embd(grid_size, dim):
    """Fixed 2-D sin-cos position embedding (MAE / big_vision), shape (grid_size**2, dim).
    A quarter of the channels each for sin(y), cos(y), sin(x), cos(x) at geometric frequencies."""
    y, x = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing='ij')
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    y, x = (t.flatten()[:, None] * omega[None, :] for t in (y, x))
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)

class Attention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        head_dim = config.n_embd // config.n_head
        self.q_norm = nn.LayerNorm(head_dim, eps=config.norm_eps, bias=config.bias) if config.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=config.norm_eps, bias=config.bias) if config.qk_norm else nn.Identity()
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def heads(self, x):
        """Queries, keys and values, (B, n_head, T, head_dim) each."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def attention_probs(self, x):
        """softmax(QK^T / sqrt(d)), (B, n_head, T, T): what the fused kernel of forward() applies but never
        writes out. For looking inside the model (sample.py), not for training."""
        q, k, _ = self.heads(x)
        att = q @ k.mT * (1.0 / math.sqrt(k.size(-1)))
        return F.softmax(att.float(), dim=-1).to(q.dtype)

    def forward(self, x):
        # SDPA picks the fastest kernel the hardware has (flash, memory-efficient, or a fused CPU one)
        y = F.scaled_dot_product_attention(*self.heads(x), dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).flatten(2)))

class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))

class LayerScale(nn.Module):
    """A learned scale per channel (CaiT, DeiT III): a residual branch that starts small lets deep models train."""

    def __init__(self, config):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((config.n_embd,), config.layer_scale))

    def forward(self, x):
        return x * self.gamma

class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.attn = Attention(config)
        self.ls_1 = LayerScale(config) if config.layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.ls_2 = LayerScale(config) if config.layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls_1(self.attn(self.ln_1(x)))
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x

class ViT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        # one conv with kernel = stride = patch cuts the image into patches and embeds each
        self.patch_embd = nn.Conv2d(config.in_chans, config.n_embd, config.patch_size,
                                    stride=config.patch_size, bias=config.bias)
        if config.pos_embd == 'learned':
            self.pos_embd = nn.Parameter(torch.zeros(1, config.grid ** 2, config.n_embd))
        else:
            self.register_buffer('pos_embd', sincos_pos_embd(config.grid, config.n_embd)[None], persistent=False)
        # learned tokens before the patches: the cls token the head reads, the registers it does not
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.n_embd)) if config.pool == 'cls' else None
        self.registers = nn.Parameter(torch.zeros(1, config.n_registers, config.n_embd)) if config.n_registers else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.n_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            # GPT-2 / nanoGPT: the layers that write into the residual stream start smaller,
            # so the stream's variance does not grow with depth
            if name.startswith('blocks.') and name.endswith('proj.weight'):
                nn.init.trunc_normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))
        # the patch embedding is a linear map of each flattened patch: a fan-in init keeps
        # the tokens at unit scale whatever the patch size
        nn.init.trunc_normal_(self.patch_embd.weight, std=1 / math.sqrt(config.in_chans * config.patch_size ** 2))
        if config.pos_embd == 'learned':
            # cut at 2 std: torch's default cut, at +-2 whatever the std, would shrink a std above 1
            nn.init.trunc_normal_(self.pos_embd, std=config.pos_std, a=-2 * config.pos_std, b=2 * config.pos_std)
        for token in (self.cls_token, self.registers):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        # a zero head starts every class at equal odds, loss = ln(n_classes) (big_vision)
        nn.init.zeros_(self.head.weight)

    def get_num_params(self):
        return sum(p.numel() for p in self.parameters())

    def embed(self, imgs):
        expected = (self.config.in_chans, self.config.img_size, self.config.img_size)
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(imgs.shape)}")
        x = self.patch_embd(imgs).flatten(2).transpose(1, 2) + self.pos_embd  # (B, grid ** 2, n_embd)
        prefix = [token.expand(x.size(0), -1, -1) for token in (self.cls_token, self.registers) if token is not None]
        return self.drop(torch.cat([*prefix, x], dim=1))

    def pool(self, x):
        return x[:, 0] if self.config.pool == 'cls' else x[:, self.config.n_prefix:].mean(dim=1)

    def forward(self, imgs, targets=None, label_smoothing=0.0):
        x = self.embed(imgs)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.pool(self.ln_f(x)))
        loss = None if targets is None else F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        return logits, loss

    def layer_id(self, name):
        """How far from the input a parameter sits, for layer-wise lr decay: 0 for the patch embedding, the
        positions and the learned tokens, i + 1 for block i, n_layer + 1 for the final norm and the head."""
        if name.startswith(('patch_embd.', 'pos_embd', 'cls_token', 'registers')):
            return 0
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) + 1
        return self.config.n_layer + 1

    def flops_per_image(self):
        """Matmul FLOPs of one forward pass on one image (2 FLOPs per multiply-add),
        attention scores and weighted sum included; a training step costs 3x this."""
        c = self.config
        T, C, hidden = c.n_prefix + c.grid ** 2, c.n_embd, int(c.mlp_ratio * c.n_embd)
        patch = 2 * c.in_chans * c.img_size ** 2 * C  # each input pixel into each of its token's C channels
        per_token = 2 * (3 * C * C + C * C + 2 * C * hidden + 2 * T * C)  # qkv, proj, fc, fc proj; QK^T, att @ V
        return patch + c.n_layer * T * per_token + 2 * C * c.n_classes  # the patches, blocks and head
