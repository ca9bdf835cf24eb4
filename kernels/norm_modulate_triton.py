"""Triton version of `kernels.norm_modulate.ln_modulate` (see there for the math and the reference).

Grid: one program per ROWS consecutive tokens. A program loads its [ROWS, C] tile once (one power-of-two tile of
channels, or two when C is not a power of two: 2240 = 2048 + 192 in a 256-lane tile, masked), adds the residual and
stores the sum, takes the mean and then the variance of the centred values (two reductions over registers, no
Welford loop, no second pass over memory), modulates with its rows' frame shift / scale plus the table rows (S
tokens per frame: a tile rarely spans two frames, the loads then hit the cache), and stores the normed values and /
or their E4M3 codes.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.norm_modulate import _check

__all__ = ["CONFIG", "ln_modulate_triton"]

CONFIG = (1, 4)
"""(rows per program, warps[, programs per SM, pipeline stages]: the persistent launch, untimed). Round 37 (H200):
2 x 8 took 21.2 us per call in the model once the table rows were added in the kernel (14.7 us without): 100
registers per thread instead of 64 (sm_90 compile), half the programs per SM. Round 38 (graphed sweep, bench.kernels --only ln_modulate_sweep): one row per program, 4 warps, fastest
over both calls (22.7 / 25.6 us with L2 flushed); FP8 static generator 132.2 -> 131.7 ms per chunk."""
if os.environ.get("SANA_WM_LN_CONFIG"):   # e.g. "4,8": a launch choice to time without editing CONFIG
    CONFIG = tuple(int(v) for v in os.environ["SANA_WM_LN_CONFIG"].split(","))
CONFIG_CHOICES = ((1, 4), (1, 8), (2, 4), (2, 8), (4, 8), (4, 16), (8, 16),
                  # session 15, untimed: persistent programs walking row blocks, the next block's loads pipelined
                  (1, 4, 8, 2), (1, 4, 16, 2), (1, 8, 4, 2), (1, 8, 8, 2), (2, 8, 4, 2), (1, 4, 8, 3))


@triton.jit
def _load_part(p_x, p_res, p_sum, rows, row_ok, c0, C, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    """Channels [c0, c0 + BLOCK) of the program's rows: x (+ residual, the sum stored) in fp32, with its offsets,
    mask and channel indices."""
    c = c0 + tl.arange(0, BLOCK)
    c_ok = c < C
    mask = row_ok[:, None] & c_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * C + c[None, :]
    x = tl.load(p_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(p_res + offs, mask=mask, other=0.0).to(tl.float32)).to(
            p_sum.dtype.element_ty)
        tl.store(p_sum + offs, x, mask=mask)
    return x.to(tl.float32), offs, mask, c, c_ok


@triton.jit
def _modulate_store(y, offs, mask, c, c_ok, mod_shift, mod_scale, p_shift, p_scale, p_shift_bias, p_scale_bias,
                    p_normed, p_codes, p_out_scale, HAS_SHIFT_BIAS: tl.constexpr, HAS_SCALE_BIAS: tl.constexpr,
                    WRITE_NORMED: tl.constexpr, WRITE_CODES: tl.constexpr):
    """y * (1 + scale) + shift for these channels (the frame's rows plus the table rows), stored as asked."""
    shift = tl.load(p_shift + mod_shift[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(p_scale + mod_scale[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_SHIFT_BIAS:
        shift += tl.load(p_shift_bias + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE_BIAS:
        scale += tl.load(p_scale_bias + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    y = y * (1.0 + scale) + shift
    if WRITE_NORMED:
        tl.store(p_normed + offs, y.to(p_normed.dtype.element_ty), mask=mask)
    if WRITE_CODES:
        q = tl.clamp(y / tl.load(p_out_scale), -448.0, 448.0)
        tl.store(p_codes + offs, q.to(p_codes.dtype.element_ty), mask=mask)


@triton.jit
def _ln_modulate_rows(
    rows, p_x, p_res, p_shift, p_scale, p_shift_bias, p_scale_bias, p_sum, p_normed, p_codes, p_out_scale,
    R, S, C, T, eps, s_shift_b, s_shift_t, s_scale_b, s_scale_t,
    HAS_RES: tl.constexpr, HAS_SHIFT_BIAS: tl.constexpr, HAS_SCALE_BIAS: tl.constexpr,
    WRITE_NORMED: tl.constexpr, WRITE_CODES: tl.constexpr, BLOCK_C: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_C2: tl.constexpr,
):
    """The whole computation for the token rows `rows` ([ROWS] indices; those >= R masked off)."""
    row_ok = rows < R
    # A row's channels as one power-of-two tile, or (SPLIT) two: [0, BLOCK_C) and the rest in a small one
    # (C = 2240: 2048 + 256 lanes instead of 4096, 45 % of them idle).
    xa, offs_a, mask_a, c_a, ok_a = _load_part(p_x, p_res, p_sum, rows, row_ok, 0, C, HAS_RES, BLOCK_C)
    total = tl.sum(xa, axis=1)
    if SPLIT:
        xb, offs_b, mask_b, c_b, ok_b = _load_part(p_x, p_res, p_sum, rows, row_ok, BLOCK_C, C, HAS_RES, BLOCK_C2)
        total += tl.sum(xb, axis=1)
    mean = total / C
    da = tl.where(mask_a, xa - mean[:, None], 0.0)
    sq = tl.sum(da * da, axis=1)
    if SPLIT:
        db = tl.where(mask_b, xb - mean[:, None], 0.0)
        sq += tl.sum(db * db, axis=1)
    rstd = tl.rsqrt(sq / C + eps)
    frame = rows // S                                    # b * T + t
    b, t = frame // T, frame % T
    mod_shift = b.to(tl.int64) * s_shift_b + t.to(tl.int64) * s_shift_t
    mod_scale = b.to(tl.int64) * s_scale_b + t.to(tl.int64) * s_scale_t
    _modulate_store(da * rstd[:, None], offs_a, mask_a, c_a, ok_a, mod_shift, mod_scale, p_shift, p_scale,
                    p_shift_bias, p_scale_bias, p_normed, p_codes, p_out_scale, HAS_SHIFT_BIAS, HAS_SCALE_BIAS,
                    WRITE_NORMED, WRITE_CODES)
    if SPLIT:
        _modulate_store(db * rstd[:, None], offs_b, mask_b, c_b, ok_b, mod_shift, mod_scale, p_shift, p_scale,
                        p_shift_bias, p_scale_bias, p_normed, p_codes, p_out_scale, HAS_SHIFT_BIAS, HAS_SCALE_BIAS,
                        WRITE_NORMED, WRITE_CODES)


@triton.jit
def _ln_modulate_kernel(
    p_x, p_res, p_shift, p_scale, p_shift_bias, p_scale_bias, p_sum, p_normed, p_codes, p_out_scale,
    R, S, C, T, eps,
    s_shift_b, s_shift_t, s_scale_b, s_scale_t,
    HAS_RES: tl.constexpr, HAS_SHIFT_BIAS: tl.constexpr, HAS_SCALE_BIAS: tl.constexpr,
    WRITE_NORMED: tl.constexpr, WRITE_CODES: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, SPLIT: tl.constexpr, BLOCK_C2: tl.constexpr,
    PERSISTENT: tl.constexpr, STAGES: tl.constexpr,
):
    # One program per ROWS rows, or (PERSISTENT) a grid of a few programs per SM, each walking row blocks with a
    # stride of the grid: Triton's pipeliner then issues the next block's loads while this one reduces (a row is
    # only 4.5 KB; one program per row leaves little in flight between its load and its two reductions).
    if PERSISTENT:
        step = tl.num_programs(0) * ROWS
        for start in tl.range(tl.program_id(0) * ROWS, R, step, num_stages=STAGES):
            _ln_modulate_rows(start + tl.arange(0, ROWS), p_x, p_res, p_shift, p_scale, p_shift_bias, p_scale_bias,
                              p_sum, p_normed, p_codes, p_out_scale, R, S, C, T, eps, s_shift_b, s_shift_t,
                              s_scale_b, s_scale_t, HAS_RES, HAS_SHIFT_BIAS, HAS_SCALE_BIAS, WRITE_NORMED,
                              WRITE_CODES, BLOCK_C, SPLIT, BLOCK_C2)
    else:
        _ln_modulate_rows(tl.program_id(0) * ROWS + tl.arange(0, ROWS), p_x, p_res, p_shift, p_scale, p_shift_bias,
                          p_scale_bias, p_sum, p_normed, p_codes, p_out_scale, R, S, C, T, eps, s_shift_b,
                          s_shift_t, s_scale_b, s_scale_t, HAS_RES, HAS_SHIFT_BIAS, HAS_SCALE_BIAS, WRITE_NORMED,
                          WRITE_CODES, BLOCK_C, SPLIT, BLOCK_C2)


def ln_modulate_triton(x: Tensor, shift: Tensor, scale: Tensor, *, residual: Tensor | None = None,
                       eps: float = 1e-6, out_scale: Tensor | None = None, want_normed: bool = True,
                       shift_bias: Tensor | None = None, scale_bias: Tensor | None = None,
                       config: tuple | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    from kernels.gdn_triton import _device_info
    from kernels.prep_triton import _empty  # NaN-filled under the tests' nan_filled_buffers()

    shift, scale = _check(x, shift, scale, residual, out_scale, want_normed, shift_bias, scale_bias)
    shift_bias, scale_bias = (None if t is None else t.contiguous() for t in (shift_bias, scale_bias))
    B, T, S, C = x.shape
    x = x.contiguous()
    residual = None if residual is None else residual.contiguous()
    if shift.stride(-1) != 1:
        shift = shift.contiguous()
    if scale.stride(-1) != 1:
        scale = scale.contiguous()
    rows, warps, *persistent = config or CONFIG
    programs_per_sm, stages = persistent or (0, 1)
    block_c = 1 << (C.bit_length() - 1)                 # the largest power of two <= C; the rest in a second tile
    rest = C - block_c
    summed = None if residual is None else _empty(x.shape, x.device, x.dtype)
    normed = _empty(x.shape, x.device, x.dtype) if want_normed else None
    codes = _empty(x.shape, x.device, torch.float8_e4m3fn) if out_scale is not None else None
    unused = x                                          # a pointer the kernel never touches
    R = B * T * S
    n_blocks = triton.cdiv(R, rows)
    grid = n_blocks if not programs_per_sm else min(n_blocks, programs_per_sm * _device_info(x.device)[0])
    _ln_modulate_kernel[(grid,)](
        x, unused if residual is None else residual, shift, scale,
        unused if shift_bias is None else shift_bias, unused if scale_bias is None else scale_bias,
        unused if summed is None else summed,
        unused if normed is None else normed, unused if codes is None else codes,
        unused if out_scale is None else out_scale.reshape(()),
        R, S, C, T, eps, shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
        HAS_RES=residual is not None, HAS_SHIFT_BIAS=shift_bias is not None,
        HAS_SCALE_BIAS=scale_bias is not None, WRITE_NORMED=want_normed, WRITE_CODES=out_scale is not None,
        ROWS=rows, BLOCK_C=block_c, SPLIT=rest > 0, BLOCK_C2=max(2, triton.next_power_of_2(rest)),
        PERSISTENT=bool(programs_per_sm), STAGES=stages, num_warps=warps,
    )
    return summed, normed, codes
