"""Triton version of `kernels.attention_int8.attention_int8_quantized` (see there for the arithmetic).

One program per (BLOCK_M queries, batch x head): the queries' int8 codes stay in registers, the keys stream by in
BLOCK_N tiles: int8 x int8 -> int32 score tile, scaled to log2 units, online softmax, probabilities x 448 to
E4M3, E4M3 x E4M3 -> fp32 value product. The loop's loads are software-pipelined by Triton (num_stages); only the
last, partial tile is masked.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["CONFIG", "CONFIG_CHOICES", "attention_int8_triton"]

CONFIG = (128, 64, 8, 3, False)
"""(queries per program, keys per tile, warps, pipeline stages, one k scale per key tile instead of per token). Not yet timed on a GPU. Compiled for sm_90 without
a GPU (`python -m kernels.gdn_triton_testing --resources`), both products are wgmma (m64n64k32 s32.s8.s8 and
m64n128k32 f32.e4m3.e4m3), 230 registers per thread (225 with per-tile k scales), no spills, 64.5 KB of shared
memory; `bench.kernels --only attention_int8_sweep` times every choice. SANA_WM_ATTN_INT8_CONFIG="128,64,8,3,1"
picks another (the fifth value 1: per-tile k scales)."""
if os.environ.get("SANA_WM_ATTN_INT8_CONFIG"):   # e.g. "128,128,8,2": a launch choice to time without editing CONFIG
    _ints = [int(v) for v in os.environ["SANA_WM_ATTN_INT8_CONFIG"].split(",")]
    CONFIG = (*_ints[:4], len(_ints) > 4 and _ints[4] == 1)
CONFIG_CHOICES = tuple((*shape, tile_scales) for tile_scales in (False, True) for shape in (
    (128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 3), (128, 128, 8, 2), (128, 32, 8, 3),
    (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3)))
"""Launch choices that compile for sm_90 without spills (128 queries on 4 warps spill at 64- and 32-key tiles, 64
queries on 4 warps at 128-key tiles), with per-token and per-tile k scales."""

LOG2E = 1.0 / math.log(2.0)


@triton.jit
def _key_tile(acc, m_i, l_i, q, q_scale, k_base, ks_base, v_base, start, N, s_kn, s_vd, dims,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, TILE_SCALES: tl.constexpr):
    """One tile of keys into the running (acc, row max, row sum). Few fp32 operations per score, since with the
    products at INT8 / E4M3 rate the elementwise work is what bounds the loop: the int32 score turns into fp32
    by an integer add and a bit cast (exact below 2^22; the conversion instruction runs at a quarter rate), the
    query's scale goes into the exponent's fused multiply-add, and x 448 into the exponent as + log2(448) (the row
    sum carries the same factor, so it cancels). With one k scale per tile (TILE_SCALES) it goes into the
    exponent's multiply-add too: one multiply fewer per score."""
    cols = start + tl.arange(0, BLOCK_N)
    if MASKED:
        col_ok = cols < N
        k = tl.load(k_base + cols.to(tl.int64)[:, None] * s_kn + dims[None, :], mask=col_ok[:, None], other=0)
        vt = tl.load(v_base + dims.to(tl.int64)[:, None] * s_vd + cols[None, :], mask=col_ok[None, :], other=0.0)
    else:
        k = tl.load(k_base + cols.to(tl.int64)[:, None] * s_kn + dims[None, :])
        vt = tl.load(v_base + dims.to(tl.int64)[:, None] * s_vd + cols[None, :])
    s = tl.dot(q, tl.trans(k))                                                    # int32, |s| < 2^22
    # s as fp32 (exact: |s| < 2^22) by an integer add, a bit cast and a subtraction of the offset
    t = (s + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
    if TILE_SCALES:
        c = q_scale * tl.load(ks_base + start // BLOCK_N)
        if MASKED:
            t = tl.where(col_ok[None, :], t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(t, 1) * c)      # c >= 0: the row max of the scores
        p = tl.exp2(t * c[:, None] - (m_new - 8.807354922057604)[:, None])     # 448 * 2^(score - max)
    else:
        if MASKED:
            k_scale = tl.load(ks_base + cols, mask=col_ok, other=0.0)
        else:
            k_scale = tl.load(ks_base + cols)
        x = t * k_scale[None, :]
        if MASKED:
            x = tl.where(col_ok[None, :], x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1) * q_scale)      # q_scale >= 0: the row max of x * q_scale
        p = tl.exp2(x * q_scale[:, None] - (m_new - 8.807354922057604)[:, None])     # 448 * 2^(score - max)
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float8e4nv), tl.trans(vt))
    return acc, m_new, l_i


@triton.jit
def _attention_int8_kernel(
    p_q, p_qs, p_k, p_ks, p_vt, p_out, p_vs,
    M, N, H, qk_scale,
    s_qb, s_qh, s_qm, s_qsb, s_qsh,
    s_kb, s_kh, s_kn, s_ksb, s_ksh,
    s_vb, s_vh, s_vd,
    s_ob, s_oh, s_om,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_SCALES: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, DP)
    row_ok = rows < M
    q = tl.load(p_q + b * s_qb + h * s_qh + rows.to(tl.int64)[:, None] * s_qm + dims[None, :],
                mask=row_ok[:, None], other=0)
    # softmax scale and log2(e) folded into the query scale: the scores come out in log2 units for exp2
    q_scale = tl.load(p_qs + b * s_qsb + h * s_qsh + rows, mask=row_ok, other=1.0) * qk_scale   # no 0 * inf
    k_base = p_k + b * s_kb + h * s_kh
    ks_base = p_ks + b * s_ksb + h * s_ksh
    v_base = p_vt + b * s_vb + h * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, q_scale, k_base, ks_base, v_base, start, N, s_kn, s_vd, dims,
                                  BLOCK_N, False, TILE_SCALES)
    if n_full < N:   # the last, partial tile: the only one with masks
        acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, q_scale, k_base, ks_base, v_base, n_full, N, s_kn, s_vd, dims,
                                  BLOCK_N, True, TILE_SCALES)
    out = acc * tl.load(p_vs) / l_i[:, None]
    tl.store(p_out + b * s_ob + h * s_oh + rows.to(tl.int64)[:, None] * s_om + dims[None, :],
             out.to(p_out.dtype.element_ty), mask=row_ok[:, None] & (dims < D)[None, :])


def attention_int8_triton(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, vt8: Tensor, v_scale: Tensor,
                          scale: float, d: int, out_dtype: torch.dtype = torch.bfloat16,
                          config: tuple | None = None, key_block: int = 1) -> Tensor:
    """key_block: keys per k scale (1, or the launch's key tile with its per-tile scales); config: a launch
    choice (CONFIG's form), else CONFIG with its key tile set to key_block when that is above 1."""
    B, H, M, DP = q8.shape
    N = k8.shape[2]
    block_m, block_n, warps, stages, tile_scales = config or CONFIG
    if config is None:
        tile_scales = key_block > 1
        block_n = key_block if tile_scales else block_n
    if tile_scales != (key_block > 1) or (tile_scales and key_block != block_n):
        raise ValueError(f"attention_int8: k scaled per {key_block} keys, the launch takes key tiles of {block_n} "
                         f"with {'per-tile' if tile_scales else 'per-token'} scales")
    for t in (q8, k8, vt8, q_scale, k_scale):
        if t.stride(-1) != 1:
            raise ValueError("attention_int8: the operands' and scales' last dimension must be contiguous")
    out = torch.empty(B, H, M, d, device=q8.device, dtype=out_dtype)
    grid = (triton.cdiv(M, block_m), B * H)
    _attention_int8_kernel[grid](
        q8, q_scale, k8, k_scale, vt8, out, v_scale.float().reshape(1), M, N, H, scale * LOG2E,
        q8.stride(0), q8.stride(1), q8.stride(2), q_scale.stride(0), q_scale.stride(1),
        k8.stride(0), k8.stride(1), k8.stride(2), k_scale.stride(0), k_scale.stride(1),
        vt8.stride(0), vt8.stride(1), vt8.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        D=d, DP=DP, BLOCK_M=block_m, BLOCK_N=block_n, TILE_SCALES=tile_scales, num_warps=warps, num_stages=stages)
    return out
