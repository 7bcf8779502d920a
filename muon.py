"""
Muon (Keller Jordan, 2024): momentum SGD for weight matrices whose every update is orthogonalized,
so that all directions of a matrix learn at the same rate.
"""
import torch


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
