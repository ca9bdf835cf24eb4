"""Normalisation helpers shared by the layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, normalised in fp32 (Sana's RMSNorm; `weight` key as in the checkpoints)."""

    def __init__(self, dim: int, eps: float = 1e-5, init: float = 1.0):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm without affine parameters (norm1 / norm2 / final layer)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Per-frame adaLN modulation: x [B, T, S, C], shift / scale [B, T, 1, C]."""
    return x * (1 + scale) + shift
