"""Triton version of `kernels.attention_int8.attention_int8_quantized` (see there for the arithmetic).

One program per (BLOCK_M queries, batch x head): the queries' int8 codes stay in registers, the keys stream by in
BLOCK_N tiles: int8 x int8 -> int32 score tile, scaled to log2 units, online softmax, probabilities x 448 to
E4M3, E4M3 x E4M3 -> fp32 value product. The loop's loads are software-pipelined by Triton (num_stages); only the
last, partial tile is masked.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["CONFIG", "CONFIG_CHOICES", "Launch", "attention_int8_triton"]


class Launch(NamedTuple):
    block_m: int
    """Queries per program."""
    block_n: int
    """Keys per tile."""
    warps: int
    stages: int
    """Software-pipeline stages of the key loop."""
    tile_scales: bool = False
    """One k scale per key tile instead of per token (one multiply fewer per score)."""
    v_fp8: bool = True
    """E4M3 values (transposed, one scale) and E4M3 probabilities; False: the value product in bf16 from v as
    it is ([..., keys, D], e.g. a view of the cache: nothing to quantize or transpose per call)."""


CONFIG = Launch(128, 64, 8, 3)
"""H200, round 29 (2026-12-02), the softmax block's shape: 1.136 ms at this launch, 0.898 ms at the sweep's fastest
(64, 64, 4, 3, tile_scales) from quantized operands, against 0.919 ms for cuDNN's bf16 call: the default stays as it
was, since the kernel is not on the H200's default path (runtime.attention.ATTENTION_KERNELS). Compiled for sm_90 without a GPU (`python -m kernels.gdn_triton_testing --resources`):
both products are wgmma (m64n64k32 s32.s8.s8 and m64n128k32 f32.e4m3.e4m3), 230 registers per thread, no spills,
64.5 KB of shared memory. `bench.kernels --only attention_int8_sweep` times every choice;
SANA_WM_ATTN_INT8_CONFIG="128,64,8,3,1,0" picks another (the Launch fields in order, booleans as 0 / 1)."""
if os.environ.get("SANA_WM_ATTN_INT8_CONFIG"):   # a launch choice to time without editing CONFIG
    _ints = [int(v) for v in os.environ["SANA_WM_ATTN_INT8_CONFIG"].split(",")]
    CONFIG = Launch(*_ints[:4], *(bool(v) for v in _ints[4:6]))
CONFIG_CHOICES = tuple(Launch(*shape, tile_scales, v_fp8) for v_fp8 in (True, False) for tile_scales in (False, True)
                       for shape in ((128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 32, 8, 3),
                                     (64, 64, 4, 3), (64, 32, 4, 3)))
"""Launch choices that compile for sm_90 without spills (128 queries on 4 warps spill at 64- and 32-key tiles, 64
queries on 4 warps at 128-key tiles)."""

LOG2E = 1.0 / math.log(2.0)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _key_tile(acc, m_i, l_i, q, q_scale, k_base, ks_base, v_base, start, N, s_kn, s_vn, s_vd, dims,
              D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, TILE_SCALES: tl.constexpr,
              V_FP8: tl.constexpr, V_DOT_FP16: tl.constexpr):
    """One tile of keys into the running (acc, row max, row sum). Few fp32 operations per score, since with the
    products at INT8 / E4M3 rate the elementwise work is what bounds the loop: the int32 score turns into fp32
    by an integer add and a bit cast (exact below 2^22; the conversion instruction runs at a quarter rate), the
    query's scale goes into the exponent's fused multiply-add, and x 448 into the exponent as + log2(448) (the row
    sum carries the same factor, so it cancels). With one k scale per tile (TILE_SCALES) it goes into the
    exponent's multiply-add too: one multiply fewer per score. Values: E4M3 transposed (keys contiguous, as FP8
    wgmma wants both operands), or bf16 / fp16 as they are (dims contiguous, the padded dims masked)."""
    cols = start + tl.arange(0, BLOCK_N)
    if V_FP8:   # loaded [dims, keys] (keys contiguous) and transposed in the dot: 230 registers, no spills
        v_ptrs = v_base + dims.to(tl.int64)[:, None] * s_vd + cols[None, :] * s_vn
    else:
        v_ptrs = v_base + cols.to(tl.int64)[:, None] * s_vn + dims[None, :] * s_vd
    if MASKED:
        col_ok = cols < N
        k = tl.load(k_base + cols.to(tl.int64)[:, None] * s_kn + dims[None, :], mask=col_ok[:, None], other=0)
        if V_FP8:
            v = tl.load(v_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            v = tl.load(v_ptrs, mask=col_ok[:, None] & (dims < D)[None, :], other=0.0)
    else:
        k = tl.load(k_base + cols.to(tl.int64)[:, None] * s_kn + dims[None, :])
        if V_FP8:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=(dims < D)[None, :], other=0.0)
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
    if V_FP8:
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float8e4nv), tl.trans(v))
    elif V_DOT_FP16:   # fp16 v, or the Triton interpreter (CPU tests), whose bf16 dots are wrong
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v.to(tl.float16))
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v.to(tl.bfloat16))
    return acc, m_new, l_i


@triton.jit
def _attention_int8_kernel(
    p_q, p_qs, p_k, p_ks, p_v, p_out, p_vs,
    M, N, H, qk_scale,
    s_qb, s_qh, s_qm, s_qsb, s_qsh,
    s_kb, s_kh, s_kn, s_ksb, s_ksh,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_SCALES: tl.constexpr,
    V_FP8: tl.constexpr, V_DOT_FP16: tl.constexpr,
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
    v_base = p_v + b * s_vb + h * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, q_scale, k_base, ks_base, v_base, start, N, s_kn, s_vn, s_vd,
                                  dims, D, BLOCK_N, False, TILE_SCALES, V_FP8, V_DOT_FP16)
    if n_full < N:   # the last, partial tile: the only one with masks
        acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, q_scale, k_base, ks_base, v_base, n_full, N, s_kn, s_vn, s_vd,
                                  dims, D, BLOCK_N, True, TILE_SCALES, V_FP8, V_DOT_FP16)
    out = acc * tl.load(p_vs) / l_i[:, None]
    tl.store(p_out + b * s_ob + h * s_oh + rows.to(tl.int64)[:, None] * s_om + dims[None, :],
             out.to(p_out.dtype.element_ty), mask=row_ok[:, None] & (dims < D)[None, :])


def attention_int8_triton(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, v: Tensor, v_scale: Tensor,
                          scale: float, d: int, out_dtype: torch.dtype = torch.bfloat16,
                          config: Launch | None = None, key_block: int = 1) -> Tensor:
    """key_block: keys per k scale (1, or the launch's key tile with its per-tile scales). v: E4M3 transposed
    [B, H, DP, keys padded] or bf16 [B, H, keys, d] (`attention_int8.py`), which picks the value product. config: a
    launch choice, else CONFIG with its key tile set to key_block when that is above 1 and its v_fp8 set by v."""
    B, H, M, DP = q8.shape
    N = k8.shape[2]
    v_fp8 = v.dtype == torch.float8_e4m3fn
    if config is None:
        config = CONFIG._replace(tile_scales=key_block > 1, v_fp8=v_fp8)
        if key_block > 1:
            config = config._replace(block_n=key_block)
    config = Launch(*config)
    if config.tile_scales != (key_block > 1) or (config.tile_scales and key_block != config.block_n):
        raise ValueError(f"attention_int8: k scaled per {key_block} keys, the launch takes key tiles of "
                         f"{config.block_n} with {'per-tile' if config.tile_scales else 'per-token'} scales")
    if config.v_fp8 != v_fp8:
        raise ValueError(f"attention_int8: the launch takes {'E4M3' if config.v_fp8 else 'bf16'} values, got {v.dtype}")
    for t in (q8, k8, q_scale, k_scale):
        if t.stride(-1) != 1:
            raise ValueError("attention_int8: the operands' and scales' last dimension must be contiguous")
    if v.stride(-1) != 1:
        raise ValueError("attention_int8: v's last dimension must be contiguous")
    # the value tile is addressed as [keys, dims] in both layouts
    s_vn, s_vd = (v.stride(3), v.stride(2)) if v_fp8 else (v.stride(2), v.stride(3))
    out = torch.empty(B, H, M, d, device=q8.device, dtype=out_dtype)
    grid = (triton.cdiv(M, config.block_m), B * H)
    _attention_int8_kernel[grid](
        q8, q_scale, k8, k_scale, v, out, v_scale.float().reshape(1), M, N, H, scale * LOG2E,
        q8.stride(0), q8.stride(1), q8.stride(2), q_scale.stride(0), q_scale.stride(1),
        k8.stride(0), k8.stride(1), k8.stride(2), k_scale.stride(0), k_scale.stride(1),
        v.stride(0), v.stride(1), s_vn, s_vd,
        out.stride(0), out.stride(1), out.stride(2),
        D=d, DP=DP, BLOCK_M=config.block_m, BLOCK_N=config.block_n, TILE_SCALES=config.tile_scales,
        V_FP8=v_fp8, V_DOT_FP16=v.dtype == torch.float16 or INTERPRETED, num_warps=config.warps,
        num_stages=config.stages)
    return out
