import torch
from torch import nn


class RepBN(nn.Module):
    """BN over the channels of (B, N, C) tokens plus ``alpha * x``."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return (self.bn(x.transpose(1, 2)) + self.alpha * x.transpose(1, 2)).transpose(1, 2)


class LinearNorm(nn.Module):
    """PRepBN: LayerNorm -> RepBN, mixed by ``lam = r0 * iter / total_step`` (read before decrement)."""

    def __init__(self, dim, step, warm=0, r0=1.0, ln_eps=1e-5):
        super().__init__()
        self.register_buffer("warm", torch.tensor(warm))
        self.register_buffer("iter", torch.tensor(step))
        self.register_buffer("total_step", torch.tensor(step))
        self.r0 = r0
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.norm2 = RepBN(dim)

    def forward(self, x):
        if not self.training:
            return self.norm2(x)
        if self.warm > 0:
            self.warm.copy_(self.warm - 1)
            return self.norm1(x)
        lam = self.r0 * self.iter / self.total_step
        if self.iter > 0:
            self.iter.copy_(self.iter - 1)
        return lam * self.norm1(x) + (1 - lam) * self.norm2(x)


def make_norm(kind, total_step=None, ln_eps=1e-5):
    if kind == "prepbn":
        return lambda dim: LinearNorm(dim, total_step, ln_eps=ln_eps)
    if kind == "repbn":
        return RepBN
    return lambda dim: nn.LayerNorm(dim, eps=ln_eps)
