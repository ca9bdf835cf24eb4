"""The K short convolution along latent frames (spec sections 2.1, 2.2, 2.4).

A depthwise 4-tap causal conv w (last tap = current frame) run forward, plus the same conv run backward,
minus the shared centre tap: a symmetric 7-tap filter over frames t-3 .. t+3. The forward pass crosses
chunk boundaries (left context = the previous chunk's last 3 conv inputs) when `causal_across_chunks`;
the backward pass never crosses a chunk end.
"""
from __future__ import annotations

import torch
from torch import Tensor


def bidirectional_short_conv(x: Tensor, weight: Tensor, chunks, *, causal_across_chunks: bool,
                             left_context: Tensor | None = None) -> Tensor:
    """x [B, T, S, C]; weight [C, 1, K]; left_context [B, K-1, S, C] (streaming cache) or None for zeros.

    out[t] = w[K-1] x[t] + sum over j = 1 .. K-1 of w[K-1-j] (x[t-j] + x[t+j]): the forward conv's tap j reads
    frame t-j (the previous chunk's frames or the left context when `causal_across_chunks`, else zero before the
    chunk's start), the backward conv's frame t+j (zero from the chunk's end on). Written as one sum over shifted
    slices of the zero-padded frames, with no buffers written per direction or per chunk, so that inductor makes
    it one pass over x (the forward / backward / combine spelling took three kernels and two intermediate
    tensors: ~49 us per call at the full model's shape, H200 round 30)."""
    w = weight[:, 0, :].to(x.dtype)                                  # [C, K]
    K = w.shape[-1]
    B, T, S, C = x.shape
    pad = x.new_zeros(B, K - 1, S, C)
    left = left_context.to(x.dtype) if causal_across_chunks and left_context is not None else pad
    frames = torch.cat([left, x, pad], dim=1)                        # x[t] is frames[t + K - 1]
    before_ok, after_ok = _chunk_masks(chunks, T, K, causal_across_chunks, x)
    out = x * w[:, K - 1]
    for j in range(1, K):
        before = frames[:, K - 1 - j:K - 1 - j + T]                  # x[t - j]
        after = frames[:, K - 1 + j:K - 1 + j + T]                   # x[t + j]
        if before_ok is not None:
            before, after = before * before_ok[j], after * after_ok[j]
        out = out + (before + after) * w[:, K - 1 - j]
    return out


def _chunk_masks(chunks, T: int, K: int, causal_across_chunks: bool, like: Tensor):
    """Per tap j, [1, T, 1, 1] factors (1 / 0) saying whether frame t - j (t + j) is seen from frame t: None when
    the zero padding says it all (one chunk covering the call)."""
    chunks = tuple((int(s), int(e)) for s, e in chunks) if chunks else ((0, T),)
    if len(chunks) == 1 and chunks[0] == (0, T):
        return None, None
    start, end = [0] * T, [T] * T
    for s, e in chunks:
        for t in range(s, e):
            start[t], end[t] = s, e
    before = [[1.0 if causal_across_chunks or t - j >= start[t] else 0.0 for t in range(T)] for j in range(K)]
    after = [[1.0 if t + j < end[t] else 0.0 for t in range(T)] for j in range(K)]

    def factors(rows):
        return torch.tensor(rows, dtype=like.dtype, device=like.device).view(K, 1, T, 1, 1)

    return factors(before), factors(after)


def next_left_context(x: Tensor, left_context: Tensor) -> Tensor:
    """The last K-1 conv inputs after this call: [B, K-1, S, C]."""
    n = left_context.shape[1]
    return torch.cat([left_context.to(x.dtype), x], dim=1)[:, -n:]
