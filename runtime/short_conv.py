"""The K short convolution along latent frames (spec sections 2.1, 2.2, 2.4).

A depthwise 4-tap causal conv w (last tap = current frame) run forward, plus the same conv run backward,
minus the shared centre tap: a symmetric 7-tap filter over frames t-3 .. t+3. The forward pass crosses
chunk boundaries (left context = the previous chunk's last 3 conv inputs) when `causal_across_chunks`;
the backward pass never crosses a chunk end.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _causal(x: Tensor, w: Tensor) -> Tensor:
    """x [B, Tctx + T, S, C] with Tctx = K-1 frames of left context; returns [B, T, S, C]."""
    K = w.shape[-1]
    T = x.shape[1] - (K - 1)
    out = x[:, K - 1:] * w[:, K - 1]
    for i in range(K - 1):
        out = out + x[:, i:i + T] * w[:, i]
    return out


def bidirectional_short_conv(x: Tensor, weight: Tensor, chunks, *, causal_across_chunks: bool,
                             left_context: Tensor | None = None) -> Tensor:
    """x [B, T, S, C]; weight [C, 1, K]; left_context [B, K-1, S, C] (streaming cache) or None for zeros."""
    w = weight[:, 0, :].to(x.dtype)                                  # [C, K]
    K = w.shape[-1]
    B, _, S, C = x.shape
    pad = x.new_zeros(B, K - 1, S, C)
    out = torch.empty_like(x)
    if causal_across_chunks:
        ctx = pad if left_context is None else left_context.to(x.dtype)
        fwd = _causal(torch.cat([ctx, x], dim=1), w)
    for s, e in chunks:
        xc = x[:, s:e]
        if not causal_across_chunks:
            fwd_c = _causal(torch.cat([pad, xc], dim=1), w)
        else:
            fwd_c = fwd[:, s:e]
        bwd_c = _causal(torch.cat([pad, xc.flip(1)], dim=1), w).flip(1)
        out[:, s:e] = fwd_c + bwd_c - xc * w[:, K - 1]
    return out


def next_left_context(x: Tensor, left_context: Tensor) -> Tensor:
    """The last K-1 conv inputs after this call: [B, K-1, S, C]."""
    n = left_context.shape[1]
    return torch.cat([left_context.to(x.dtype), x], dim=1)[:, -n:]
