"""
The optimizers a run trains with: AdamW, or Muon (Keller Jordan, 2024) for the blocks' weight matrices
with AdamW for the rest, and which parameter goes into which group.
"""
import torch
from torch import nn

def configure_optimizers(model, optimizer, learning_rate, muon_lr, weight_decay, betas, muon_momentum, device_type,
                         dtype, layer_decay=1.0):
    """{'adamw': AdamW, 'muon': Muon}, owning together every parameter that trains, each group at its peak lr. 'muon':
    Muon for the blocks' weight matrices (q, k and v orthogonalized each on its own), AdamW for the rest, as Muon is
    meant to be used. layer_decay < 1: each layer nearer the input learns slower (BEiT's and MAE's fine-tuning)."""
    # decay the weight matrices of the linear and conv layers only: never position embeddings or the learned tokens
    # (3-D, but not weights, which nanoGPT's "decay every tensor of 2 or more dims" would catch), LayerNorm gains,
    # LayerScale's scales or biases
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    groups = {kind: {} for kind in ('decay', 'no_decay', 'qkv', 'muon')}  # kind -> lr scale -> parameters
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if optimizer == 'muon' and name.startswith('blocks.') and p.dim() == 2:
            kind = 'qkv' if name.endswith('qkv.weight') else 'muon'
        else:
            kind = 'decay' if id(p) in weights else 'no_decay'
        scale = layer_decay ** (model.config.n_layer + 1 - model.layer_id(name))
        groups[kind].setdefault(scale, []).append(p)
    adamw = [{'params': params, 'weight_decay': weight_decay if kind == 'decay' else 0.0, 'lr': learning_rate * scale}
             for kind in ('decay', 'no_decay') for scale, params in sorted(groups[kind].items(), reverse=True)]
    muon = [{'params': params, 'lr': muon_lr * scale} | ({'blocks': 3} if kind == 'qkv' else {})
            for kind in ('qkv', 'muon') for scale, params in sorted(groups[kind].items(), reverse=True)]
    # fused: the whole update in one pass over the parameters (CUDA and CPU have the kernel)
    optimizers = {'adamw': torch.optim.AdamW(adamw, betas=betas, fused=device_type in ('cuda', 'cpu'))}
    if muon:
        # bf16 only where the run's dtype says the hardware has it: emulated, it is ~9x slower than fp32
        optimizers['muon'] = Muon(muon, lr=muon_lr, momentum=muon_momentum, weight_decay=weight_decay,
                                  ns_dtype=torch.bfloat16 if dtype == 'bfloat16' else torch.float32)
    return optimizers

def orthogonalize(g):
    """Newton-Schulz iteration toward the nearest semi-orthogonal matrix, for a batch of matrices
    (B, m, n). Keller Jordan's quintic coefficients, chosen for speed over exactness: the singular
    values land between about 0.7 and 1.2 instead of at 1, which trains as well."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g  # iterate on the wide side: the Gram matrix is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral norm <= Frobenius norm = 1
    for _ in range(5):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x

class Muon(torch.optim.Optimizer):
    """As torch.optim.Muon with adjust_lr_fn='original' (Nesterov momentum, decoupled weight decay, lr
    scaled by sqrt(max(1, rows / cols))), but for two things: the Newton-Schulz iteration runs in ns_dtype
    (torch's always runs it in bfloat16, which a CPU without native bf16 emulates: that made the speedrun's
    whole step 3.4x slower), and a group may set 'blocks' to orthogonalize a fused matrix block by block
    (q, k and v of qkv)."""

    def __init__(self, params, lr, momentum, weight_decay, ns_dtype):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, blocks=1))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}  # the shape of an update (blocks, rows, cols) -> [(parameter, update)]
            params = [p for p in group['params'] if p.grad is not None]
            for p in params:
                momentum = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                momentum.lerp_(p.grad, 1 - group['momentum'])
                update = p.grad.lerp(momentum, group['momentum']).view(group['blocks'], -1, p.size(1))  # Nesterov
                by_shape.setdefault(update.shape, []).append((p, update))
            # one Newton-Schulz iteration for all the matrices of a shape: a few large matmuls rather than
            # many small ones (on a CPU, a third of Muon's time at the speedrun's size went to the calls)
            for (blocks, rows, cols), pairs in by_shape.items():
                done = orthogonalize(torch.cat([u for _, u in pairs]).to(self.ns_dtype)).split(blocks)
                for (p, _), orthogonal in zip(pairs, done):
                    p.mul_(1 - group['lr'] * group['weight_decay'])
                    p.add_(orthogonal.reshape(p.shape).to(p.dtype), alpha=-group['lr'] * max(1, rows / cols) ** 0.5)
