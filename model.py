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
    pool: str = 'cls'        # 'cls': classify the cls token; 'mean': classify the mean patch token
    pos_embd: str = 'learned'  # 'learned' or 'sincos' (fixed 2-D sin-cos)
    pos_std: float = 0.02    # init std of a learned position embedding
    qk_norm: bool = False    # LayerNorm on queries and keys (ViT-22B): bounded attention logits

    def __post_init__(self):
        for name in ('img_size', 'patch_size', 'in_chans', 'n_classes', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.mlp_ratio <= 0 or int(self.mlp_ratio * self.n_embd) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} must be positive (the MLP needs at least one unit)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.img_size % self.patch_size != 0:
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pool not in ('cls', 'mean'):
            raise ValueError(f"pool={self.pool!r} must be 'cls' or 'mean'")
        if self.pos_embd not in ('learned', 'sincos'):
            raise ValueError(f"pos_embd={self.pos_embd!r} must be 'learned' or 'sincos'")
        if self.pos_embd == 'sincos' and self.n_embd % 4 != 0:
            raise ValueError(f"pos_embd='sincos' needs n_embd divisible by 4, got n_embd={self.n_embd}")

    @property
    def n_patches(self):
        return (self.img_size // self.patch_size) ** 2

    @property
    def n_prefix_tokens(self):
        """Learned tokens put before the patches (the cls token), which pool() may read."""
        return 1 if self.pool == 'cls' else 0

    @property
    def n_tokens(self):
        return self.n_prefix_tokens + self.n_patches


def sincos_pos_embd(grid_size, dim):
    """Fixed 2-D sin-cos position embedding (MAE / big_vision), shape (grid_size**2, dim).
    A quarter of the channels each for sin(y), cos(y), sin(x), cos(x) at geometric frequencies."""
    y, x = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing='ij')
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)


class Attention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        head_dim = config.n_embd // config.n_head
        self.q_norm = nn.LayerNorm(head_dim, bias=config.bias) if config.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, bias=config.bias) if config.qk_norm else nn.Identity()
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        # SDPA picks a fused kernel (flash / memory-efficient) when the hardware has one;
        # the plain path below is for older PyTorch and for reading the attention weights
        self.flash = hasattr(F, 'scaled_dot_product_attention')

    def split_heads(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]
        return self.q_norm(q), self.k_norm(k), v

    def weights(self, x):
        """The attention probabilities softmax(QK^T / sqrt(d)), shape (B, n_head, T, T)."""
        q, k, _ = self.split_heads(x)
        return self.scores_to_weights(q, k)

    def scores_to_weights(self, q, k):
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        return F.softmax(att.float(), dim=-1).to(q.dtype)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.split_heads(x)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:
            y = self.attn_dropout(self.scores_to_weights(q, k)) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class ViT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        # one conv with kernel = stride = patch cuts the image into patches and embeds each
        self.patch_embd = nn.Conv2d(config.in_chans, config.n_embd, config.patch_size,
                                    stride=config.patch_size, bias=config.bias)
        # the tokens before the patches: pool() decides what the head reads
        self.cls_token = nn.Parameter(torch.zeros(1, config.n_prefix_tokens, config.n_embd))
        grid = config.img_size // config.patch_size
        if config.pos_embd == 'learned':
            self.pos_embd = nn.Parameter(torch.zeros(1, config.n_patches, config.n_embd))
        else:
            self.register_buffer('pos_embd', sincos_pos_embd(grid, config.n_embd)[None], persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.n_classes)
        self.init_weights()

    def init_weights(self):
        c = self.config
        self.apply(self._init_module)
        for name, p in self.named_parameters():
            # GPT-2 / nanoGPT: the layers that write into the residual stream start smaller,
            # so the stream's variance does not grow with depth
            if name.endswith('proj.weight'):
                nn.init.trunc_normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))
        # the patch embedding is a linear map of each flattened patch: a fan-in init keeps
        # the tokens at unit scale whatever the patch size
        nn.init.trunc_normal_(self.patch_embd.weight, std=1 / math.sqrt(c.in_chans * c.patch_size ** 2))
        if c.pos_embd == 'learned':
            nn.init.trunc_normal_(self.pos_embd, std=c.pos_std)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # a zero head starts every class at equal odds, loss = ln(n_classes) (big_vision)
        nn.init.zeros_(self.head.weight)

    def _init_module(self, module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self):
        return sum(p.numel() for p in self.parameters())

    def embed(self, imgs):
        c = self.config
        expected = (c.in_chans, c.img_size, c.img_size)
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(imgs.shape)}")
        x = self.patch_embd(imgs).flatten(2).transpose(1, 2)  # (B, n_patches, n_embd)
        x = x + self.pos_embd
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)
        return self.drop(x)

    def pool(self, x):
        """(B, T, ...) per token -> (B, ...) for the whole image: the cls token, or the mean of all tokens.
        The head reads the pooled features; attention rollout pools the tokens' attention the same way."""
        return x[:, 0] if self.config.pool == 'cls' else x.mean(dim=1)

    def forward(self, imgs, targets=None, label_smoothing=0.0):
        x = self.embed(imgs)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.pool(self.ln_f(x)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, imgs):
        """Attention probabilities of every layer, (n_layer, B, n_head, T, T), from the plain path, as the
        model sees at test time (dropout off, whatever mode it is in). Separate from forward() so that
        training keeps the fused SDPA kernel."""
        was_training = self.training
        self.eval()
        x = self.embed(imgs)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.ln_1(x)))
            x = block(x)
        self.train(was_training)
        return torch.stack(maps)

    @torch.no_grad()
    def attention_rollout(self, imgs):
        """Attention rollout (Abnar & Zuidema, 2020): each layer's attention averaged over heads, mixed
        half and half with the residual path (identity), multiplied through the layers. Returns how much
        each patch feeds the pooled representation, (B, grid, grid), summing to 1 over the patches."""
        maps = self.attention_maps(imgs).float().mean(dim=2)  # (n_layer, B, T, T)
        eye = torch.eye(maps.size(-1), device=maps.device)
        rollout = eye
        with torch.autocast(maps.device.type, enabled=False):  # products of probabilities, in float32
            for att in maps:
                rollout = ((att + eye) / 2) @ rollout
        # row t of rollout is what token t gathered from each token: pool the rows as forward() pools
        # the features, then keep the patches' shares
        weights = self.pool(rollout)[:, self.config.n_prefix_tokens:]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        grid = self.config.img_size // self.config.patch_size
        return weights.view(-1, grid, grid)

    def configure_optimizers(self, optimizer, learning_rate, muon_lr, weight_decay, betas, muon_momentum, device_type,
                             dtype):
        """A list of optimizers that together own every parameter; each group keeps its peak lr in 'max_lr'
        for the schedule to scale. 'adamw': AdamW for all. 'muon': Muon for the blocks' weight matrices
        (q, k and v orthogonalized each on its own), AdamW for the rest: patch embedding, positions, cls
        token, norms, biases and the head, as Muon is meant to be used."""
        # decay the weight matrices of the linear and conv layers only: never position
        # embeddings or the cls token (3-D, but not weights), LayerNorm gains or biases
        matrices, others, qkv, muon = [], [], [], []
        for name, p in self.named_parameters():
            if optimizer == 'muon' and name.startswith('blocks.') and p.dim() == 2:
                (qkv if name.endswith('qkv.weight') else muon).append(p)
            elif p.dim() >= 2 and name not in ('pos_embd', 'cls_token'):
                matrices.append(p)
            else:
                others.append(p)
        groups = [{'params': matrices, 'weight_decay': weight_decay, 'max_lr': learning_rate},
                  {'params': others, 'weight_decay': 0.0, 'max_lr': learning_rate}]
        # the fused kernel does the whole update in one pass over the parameters (CUDA and CPU)
        optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ('cuda', 'cpu'))]
        if optimizer == 'muon':
            groups = [{'params': qkv, 'blocks': 3, 'max_lr': muon_lr}, {'params': muon, 'max_lr': muon_lr}]
            # bf16 only where the run's dtype says the hardware has it: emulated, it is ~9x slower than fp32
            ns_dtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32
            optimizers.append(Muon(groups, lr=muon_lr, momentum=muon_momentum, weight_decay=weight_decay, ns_dtype=ns_dtype))
        return optimizers

    def flops_per_image(self):
        """Matmul FLOPs of one forward pass on one image (2 FLOPs per multiply-add),
        attention scores and weighted sum included; a training step costs 3x this."""
        c = self.config
        T, C = c.n_tokens, c.n_embd
        hidden = int(c.mlp_ratio * C)
        patch = 2 * c.n_patches * (c.in_chans * c.patch_size ** 2) * C
        per_token = 2 * (3 * C * C + C * C + 2 * C * hidden)  # qkv, proj, fc, fc proj
        attention = 2 * 2 * T * C  # QK^T and att @ V, per token, summed over heads
        blocks = c.n_layer * T * (per_token + attention)
        head = 2 * C * c.n_classes
        return patch + blocks + head


def orthogonalize(g, steps=5):
    """Newton-Schulz iteration toward the nearest semi-orthogonal matrix, for a batch of matrices
    (B, m, n). Keller Jordan's quintic coefficients, chosen for speed over exactness: the singular
    values land between about 0.7 and 1.2 instead of at 1, which trains as well."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g  # iterate on the wide side: the Gram matrix is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral norm <= Frobenius norm = 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan, 2024): momentum SGD for weight matrices whose every update is orthogonalized,
    so that all directions of a matrix learn at the same rate. As torch.optim.Muon with adjust_lr_fn=
    'original' (Nesterov momentum, decoupled weight decay, lr scaled by sqrt(max(1, rows / cols))), but
    for two things: the Newton-Schulz iteration runs in ns_dtype (torch's always runs it in bfloat16,
    which a CPU without native bf16 emulates: that made the speedrun's whole step 3.4x slower), and a
    group may set 'blocks' to orthogonalize a fused matrix block by block (q, k and v of qkv)."""

    def __init__(self, params, lr, momentum, weight_decay, ns_dtype):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, blocks=1))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            updates = []
            for p in params:
                momentum = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                momentum.lerp_(p.grad, 1 - group['momentum'])
                update = p.grad.lerp(momentum, group['momentum'])  # Nesterov: look one step ahead
                updates.append(update.view(group['blocks'], -1, p.size(1)))
            # one Newton-Schulz iteration for all the matrices of a shape: a few large matmuls rather than
            # many small ones (on a CPU, a third of Muon's time at the speedrun's size went to the calls)
            for shape in {u.shape for u in updates}:
                same = [i for i, u in enumerate(updates) if u.shape == shape]
                done = orthogonalize(torch.cat([updates[i] for i in same]).to(self.ns_dtype)).split(shape[0])
                for i, orthogonal in zip(same, done):
                    p, (rows, cols) = params[i], shape[1:]
                    p.mul_(1 - group['lr'] * group['weight_decay'])
                    p.add_(orthogonal.reshape(p.shape).to(p.dtype), alpha=-group['lr'] * max(1, rows / cols) ** 0.5)
