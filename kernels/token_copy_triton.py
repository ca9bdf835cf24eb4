"""Triton version of `kernels.token_copy.copy_tokens` (see there)."""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK_T = 32
"""Tokens per program: [32, D] rows, one 16-byte access per lane and row at D = 112 (bf16)."""


@triton.jit
def _copy_tokens_kernel(
    p_dst, p_s0, p_s1, p_s2, p_s3,
    n_tokens, H, start,
    d_stream, d_b, d_h, d_t,
    s_b0, s_h0, s_t0, s_b1, s_h1, s_t1, s_b2, s_h2, s_t2, s_b3, s_h3, s_t3,
    D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t, bh, stream = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = bh // H
    h = bh % H
    if stream == 0:
        src = p_s0 + b.to(tl.int64) * s_b0 + h.to(tl.int64) * s_h0
        s_t = s_t0
    elif stream == 1:
        src = p_s1 + b.to(tl.int64) * s_b1 + h.to(tl.int64) * s_h1
        s_t = s_t1
    elif stream == 2:
        src = p_s2 + b.to(tl.int64) * s_b2 + h.to(tl.int64) * s_h2
        s_t = s_t2
    else:
        src = p_s3 + b.to(tl.int64) * s_b3 + h.to(tl.int64) * s_h3
        s_t = s_t3
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    mask = (t < n_tokens)[:, None] & (d < D)[None, :]
    rows = tl.load(src + t.to(tl.int64)[:, None] * s_t + d[None, :], mask=mask)
    dst = (p_dst + stream.to(tl.int64) * d_stream + b.to(tl.int64) * d_b + h.to(tl.int64) * d_h
           + (start + t).to(tl.int64)[:, None] * d_t + d[None, :])
    tl.store(dst, rows, mask=mask)


def copy_tokens_triton(buffer: Tensor, start: int, parts: list[Tensor]) -> None:
    streams, B, H, _, D = buffer.shape
    n = parts[0].shape[2]
    src_strides = [s for p in parts for s in p.stride()[:3]]
    grid = (triton.cdiv(n, BLOCK_T), B * H, streams)
    _copy_tokens_kernel[grid](buffer, *parts, n, H, start, *buffer.stride()[:4], *src_strides,
                              D=D, BLOCK_T=BLOCK_T, BLOCK_D=triton.next_power_of_2(D), num_warps=4)
