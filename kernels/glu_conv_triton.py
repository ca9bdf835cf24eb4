"""Triton versions of `kernels.glu_conv.depthwise_glu` (see there for the math and the reference).

Two launch shapes of the same math, both fp32 accumulation, bias and gate in the epilogue, zero padding by masked
loads (the channels of a position are contiguous, so every load is a run of channels):

* "tiles" (`_depthwise_glu_tiles_kernel`), grid (position blocks of a frame, channel blocks, frames): for each of
  the 9 taps it loads the shifted [positions, channels] tiles of both GLU halves. A row neighbour sits W positions
  away, outside a small position block, so an input element is fetched about 9 times from L1/L2. "tiles_rowloop"
  is the same with the three tap rows as a loop the compiler keeps (fewer registers: more programs per SM), and
  "tiles_rowpipe" that loop software-pipelined (the next rows' tiles prefetched into shared memory).
* "rows" (`_depthwise_glu_rows_kernel`), grid (channel blocks, frames, row segments): a program walks the rows of
  its segment (plus one halo row each side); each input row is loaded once per column shift (3 loads, mostly L1
  hits) and added into the three output rows it touches, held as rolling accumulators; an output row is stored
  as soon as it is complete. "rows_gather" loads each input row once, a row ahead of its use, and takes its
  column-shifted copies with `tl.gather` (through registers / shared memory): one global load and one SiLU per
  input element, so SiLU inside the kernel costs no recomputation (and no separate pass). A "_w<n>" suffix (e.g.
  "rows_gather_w8") splits each row into strips of n columns, one per program: a whole row takes a power-of-two
  block (W = 40 runs 64 lanes, 37.5 % of them idle); the gather kind then loads the strip's two neighbour columns
  (its halo) beside it.

With `silu_input` (the FFN's activation before the depthwise conv) the launch config picks where SiLU runs: on every
loaded value inside the kernel (no separate pass over the input, but recomputed per load: 9 times per element for
"tiles", 3 for "rows") or as a separate PyTorch pass first.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["CONFIG", "CONFIG_CHOICES", "depthwise_glu_triton"]

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

ROWS_KINDS = {"rows": 1, "rows_gather": 1, "rows_gatherpipe4": 4, "rows_gatherpipe6": 6}
"""The rows kernel's launch kinds: three loads per row; one load per row and its shifted copies gathered, the next
row prefetched by hand; the same with Triton's pipeliner keeping 3 or 5 rows in flight (asynchronous copies into
shared memory; value: the loop's stages)."""
TILES_KINDS = {"tiles": 1, "tiles_rowloop": 1, "tiles_rowpipe": 3}
"""The tiles kernel's launch kinds: nine taps unrolled; the tap rows as a loop; the same loop software-pipelined
(value: the loop's pipeline stages)."""

CONFIG = ("rows_w8", 22, 64, 4, True)
"""(kind, positions or rows per program, channels per program, warps, SiLU of the input inside the kernel; when
False a `silu_input` call first runs a separate SiLU pass). H200, round 36 (2026-12-02): rows in strips of 8
columns (no idle lanes at W = 40), three shifted loads per row (L1 hits) with SiLU inside, 22 x 64 x 4: 0.1055 ms
against 0.1116 for rows_gather 22 x 16 x 8 in the same session (every gather launch in strips was slower: the
halo columns' extra loads and SiLUs); FP8 static generator 135.2 -> 133.2 ms per chunk. Round 27 at the full
model's chunk shape: rows_gather 22 rows x 16 channels x 8 warps with SiLU inside, 0.112 ms, against 0.139 ms for
the former default (tiles 32 x 64 x 4 and a separate SiLU pass; round 24 had taken the generator from 154.8 to
144.5 ms per chunk with it); FP8 static generator 144.8 -> 140.5 ms per chunk (round 27b, official+tconv scope).
`bench.kernels --only depthwise_glu_sweep` times every choice. Tried and removed (session 14, round 32): loading 2 or
3 input rows ahead by hand (more bytes in flight per SM), 0.114 ms at 22 x 16 x 8: the kernel is not limited by its
loads' latency."""
if os.environ.get("SANA_WM_GLU_CONFIG"):   # e.g. "rows,22,16,4,1": a launch choice to time without editing CONFIG
    _kind, *_ints = os.environ["SANA_WM_GLU_CONFIG"].split(",")
    CONFIG = (_kind, *(int(v) for v in _ints[:3]), _ints[3] == "1")
CONFIG_CHOICES = tuple((*shape, inside) for inside in (False, True) for shape in (
    # rounds 11, 24 and 25 kept the ones worth another look; SiLU inside takes the one-instruction tanh
    ("tiles", 32, 64, 4), ("tiles", 16, 64, 4), ("tiles", 64, 32, 4), ("tiles", 32, 32, 4),
    ("tiles_rowloop", 32, 64, 4), ("tiles_rowloop", 32, 64, 8), ("rows", 22, 16, 4))) + tuple(
    # session 11, chosen by registers per thread (sm_90 compile without a GPU: 32 x 64 x 4 unrolled 156, row loop
    # 126; 32 x 64 x 8 row loop 80): more warps per SM to hide the tap loads' latency
    (*shape, False) for shape in (("tiles", 32, 64, 8), ("tiles", 16, 64, 8), ("tiles_rowloop", 16, 64, 4),
                                  ("tiles_rowloop", 64, 64, 8), ("tiles_rowloop", 16, 64, 8),
                                  ("tiles_rowloop", 64, 128, 8), ("tiles_rowpipe", 32, 64, 4),
                                  ("tiles_rowpipe", 32, 64, 8), ("tiles_rowpipe", 64, 64, 8),
                                  ("tiles_rowpipe", 16, 64, 4))) + tuple(
    # session 12: one load and one SiLU per input element (SiLU inside, tanh.approx); shapes that compile without
    # spills on sm_90 (8 warps x 16 channels: ~119 registers, 2 programs per SM; 16 warps x 32 channels: ~119, one
    # program), with 1, 3 or 5 rows in flight (6 stages: ~40 KB of loads in flight per SM at either shape)
    (*shape, True) for shape in (("rows_gather", 22, 16, 8), ("rows_gather", 11, 16, 8), ("rows_gather", 11, 32, 16),
                                 ("rows_gatherpipe4", 22, 16, 8), ("rows_gatherpipe4", 11, 16, 8),
                                 ("rows_gatherpipe4", 11, 32, 16), ("rows_gatherpipe6", 22, 16, 8),
                                 ("rows_gatherpipe6", 22, 32, 16), ("rows_gatherpipe6", 11, 32, 16))) + tuple(
    # session 15: rows in strips of 8 or 16 columns (W = 40: no idle lanes at 8, 48 lanes at 16 against 64)
    (*shape, inside) for shape, inside in (
        (("rows_gather_w8", 22, 64, 4), True), (("rows_gather_w8", 22, 64, 8), True),
        (("rows_gather_w8", 22, 128, 8), True), (("rows_gather_w8", 11, 64, 4), True),
        (("rows_gather_w8", 22, 32, 4), True), (("rows_gather_w16", 22, 32, 8), True),
        (("rows_gather_w16", 22, 64, 8), True), (("rows_gatherpipe4_w8", 22, 64, 8), True),
        (("rows_w8", 22, 64, 4), True), (("rows_w8", 22, 64, 4), False), (("rows_w8", 22, 128, 8), False),
        # after round 36 (rows_w8 22 x 64 x 4 the fastest): its neighbours
        (("rows_w8", 22, 32, 4), True), (("rows_w8", 22, 64, 2), True), (("rows_w8", 11, 64, 4), True),
        (("rows_w8", 22, 128, 4), True), (("rows_w8", 22, 64, 8), True), (("rows_w4", 22, 64, 4), True),
        (("rows_w16", 22, 64, 4), True), (("rows_w4", 22, 128, 4), True)))


@triton.jit
def _silu(x, APPLY: tl.constexpr):
    """APPLY 0: x; 1: SiLU(x); 2: SiLU(x) with sigmoid(x) = (1 + tanh(x / 2)) / 2 from the GPU's one-instruction
    tanh (tanh.approx.f32, relative error < 2^-10.9: below the bf16 rounding a separate SiLU pass adds). Inside the
    depthwise kernel every input value's SiLU is recomputed per tap (9x for "tiles"), and the exact sigmoid's exp
    and reciprocal (two special-function instructions) made that the kernel's limit (round 11)."""
    if APPLY == 1:
        x = x * tl.sigmoid(x)
    elif APPLY == 2:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x * 0.5], dtype=tl.float32,
                                      is_pure=True, pack=1)
        x = x * (0.5 + 0.5 * t)
    return x


@triton.jit
def _output(out, p_scale, OUT_FP8: tl.constexpr):
    """The fp32 result as stored: e4m3(clamp(out / scale)) for an FP8 output (the store casts), else unchanged."""
    if OUT_FP8:
        out = tl.clamp(out / tl.load(p_scale), -448.0, 448.0)
    return out


@triton.jit
def _tiles_tap(acc_a, acc_g, base, p_w, i, j, c, p_ok, c_ok, H, W, M, s_ah, s_aw, s_wc, s_wr, s_ws, di, dj,
               SILU_IN: tl.constexpr):
    """Add tap (di, dj) (each in 0..2) of both GLU halves to the [positions, channels] accumulators."""
    ii = i + (di - 1)
    jj = j + (dj - 1)
    ok = p_ok & (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
    row = ii.to(tl.int64) * s_ah + jj.to(tl.int64) * s_aw
    mask = ok[:, None] & c_ok[None, :]
    ptr = base + row[:, None] + c[None, :]
    x_a = _silu(tl.load(ptr, mask=mask, other=0.0).to(tl.float32), SILU_IN)
    x_g = _silu(tl.load(ptr + M, mask=mask, other=0.0).to(tl.float32), SILU_IN)
    w_tap = p_w + c * s_wc + di * s_wr + dj * s_ws
    acc_a += x_a * tl.load(w_tap, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    acc_g += x_g * tl.load(w_tap + M * s_wc, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    return acc_a, acc_g


@triton.jit
def _depthwise_glu_tiles_kernel(
    p_act, p_w, p_b, p_out, p_scale,
    H, W, M,
    s_an, s_ah, s_aw,
    s_on, s_oh, s_ow,
    s_wc, s_wr, s_ws,
    HAS_BIAS: tl.constexpr, SILU_IN: tl.constexpr, OUT_FP8: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr, ROW_LOOP: tl.constexpr, ROW_STAGES: tl.constexpr,
):
    pid_p, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < H * W
    c_ok = c < M
    i = p // W
    j = p % W
    base = p_act + n.to(tl.int64) * s_an
    acc_a = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    if ROW_LOOP:
        # The three tap rows as a loop the compiler keeps: only one row's loads are live at a time (fewer
        # registers, more programs per SM), against all nine hoisted when unrolled. ROW_STAGES > 1 lets Triton's
        # pipeliner prefetch the next rows' tiles into shared memory asynchronously (cp.async) while this row
        # computes (sm_90 compile: 32 x 64 x 4 takes 90 registers and 50 KB of shared memory with 3 stages).
        for di in tl.range(3, num_stages=ROW_STAGES):
            for dj in tl.static_range(3):
                acc_a, acc_g = _tiles_tap(acc_a, acc_g, base, p_w, i, j, c, p_ok, c_ok, H, W, M, s_ah, s_aw,
                                          s_wc, s_wr, s_ws, di, dj, SILU_IN)
    else:
        for tap in tl.static_range(9):
            acc_a, acc_g = _tiles_tap(acc_a, acc_g, base, p_w, i, j, c, p_ok, c_ok, H, W, M, s_ah, s_aw,
                                      s_wc, s_wr, s_ws, tap // 3, tap % 3, SILU_IN)
    if HAS_BIAS:
        acc_a += tl.load(p_b + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        acc_g += tl.load(p_b + M + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = _output(acc_a * (acc_g * tl.sigmoid(acc_g)), p_scale, OUT_FP8)
    o_row = n.to(tl.int64) * s_on + i.to(tl.int64) * s_oh + j.to(tl.int64) * s_ow
    tl.store(p_out + o_row[:, None] + c[None, :], out.to(p_out.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _shifted_row(base, s_aw, j, c, W, M, row_ok, c_ok, dj: tl.constexpr, SILU_IN: tl.constexpr):
    """Input row at columns j + dj - 1, both GLU halves, [BLOCK_W, BLOCK_C] fp32 (zeros outside the frame)."""
    jj = j + (dj - 1)
    mask = (row_ok & (jj >= 0) & (jj < W))[:, None] & c_ok[None, :]
    ptr = base + jj.to(tl.int64)[:, None] * s_aw + c[None, :]
    x_a = _silu(tl.load(ptr, mask=mask, other=0.0).to(tl.float32), SILU_IN)
    x_g = _silu(tl.load(ptr + M, mask=mask, other=0.0).to(tl.float32), SILU_IN)
    return x_a, x_g


@triton.jit
def _raw_row(a_base, r, s_ah, s_aw, j, c, H, W, M, c_ok, live):
    """Input row r as loaded (both GLU halves, [BLOCK_W, BLOCK_C] in act's dtype; zeros outside the frame and
    where not `live`): the gather kind's prefetch, issued a row ahead of its use."""
    r_j = r + j * 0                # the row per lane: a scalar mask term breaks TRITON_INTERPRET's masks
    mask = ((j < W) & (r_j >= 0) & (r_j < H) & live)[:, None] & c_ok[None, :]
    ptr = a_base + r.to(tl.int64) * s_ah + j.to(tl.int64)[:, None] * s_aw + c[None, :]
    return tl.load(ptr, mask=mask, other=0.0), tl.load(ptr + M, mask=mask, other=0.0)


@triton.jit
def _halo_columns(a_base, r, s_ah, s_aw, j0, c, H, W, M, c_ok, live, BLOCK_W: tl.constexpr):
    """Row r's input at the columns left and right of a strip starting at column j0 (both GLU halves, [1, BLOCK_C]
    each, as loaded; zeros outside the frame and where not `live`)."""
    row = a_base + r.to(tl.int64) * s_ah + c[None, :]
    r_c, j0_c = r + c * 0, j0 + c * 0      # per lane: scalar mask terms break TRITON_INTERPRET's masks
    r_ok = c_ok & (r_c >= 0) & (r_c < H) & live
    left = row + (j0 - 1).to(tl.int64) * s_aw
    right = row + (j0 + BLOCK_W).to(tl.int64) * s_aw
    ok_l = (r_ok & (j0_c >= 1))[None, :]
    ok_r = (r_ok & (j0_c + BLOCK_W < W))[None, :]
    return (tl.load(left, mask=ok_l, other=0.0), tl.load(left + M, mask=ok_l, other=0.0),
            tl.load(right, mask=ok_r, other=0.0), tl.load(right + M, mask=ok_r, other=0.0))


@triton.jit
def _tap_row(w_ptr, c, c_ok, s_wc, s_wr, s_ws, t: tl.constexpr):
    """The 3 column weights of tap row t, [1, BLOCK_C] fp32 each."""
    row = w_ptr + c * s_wc + t * s_wr
    w0 = tl.load(row, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w1 = tl.load(row + s_ws, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(row + 2 * s_ws, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    return w0, w1, w2


@triton.jit
def _depthwise_glu_rows_kernel(
    p_act, p_w, p_b, p_out, p_scale,
    H, W, M,
    s_an, s_ah, s_aw,
    s_on, s_oh, s_ow,
    s_wc, s_wr, s_ws,
    HAS_BIAS: tl.constexpr, SILU_IN: tl.constexpr, OUT_FP8: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, GATHER: tl.constexpr, ROW_STAGES: tl.constexpr,
    STRIPS: tl.constexpr,
):
    pid_c, n, pid_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    lane = tl.arange(0, BLOCK_W)
    j0 = (pid_r % STRIPS) * BLOCK_W   # this program's first column (0 when one block spans the row)
    j = j0 + lane
    c_ok = c < M
    j_ok = j < W
    r0 = (pid_r // STRIPS) * ROWS
    a_base = p_act + n.to(tl.int64) * s_an
    o_base = p_out + n.to(tl.int64) * s_on + j.to(tl.int64)[:, None] * s_ow + c[None, :]
    a00, a01, a02 = _tap_row(p_w, c, c_ok, s_wc, s_wr, s_ws, 0)
    a10, a11, a12 = _tap_row(p_w, c, c_ok, s_wc, s_wr, s_ws, 1)
    a20, a21, a22 = _tap_row(p_w, c, c_ok, s_wc, s_wr, s_ws, 2)
    g00, g01, g02 = _tap_row(p_w + M * s_wc, c, c_ok, s_wc, s_wr, s_ws, 0)
    g10, g11, g12 = _tap_row(p_w + M * s_wc, c, c_ok, s_wc, s_wr, s_ws, 1)
    g20, g21, g22 = _tap_row(p_w + M * s_wc, c, c_ok, s_wc, s_wr, s_ws, 2)
    if HAS_BIAS:
        bias_a = tl.load(p_b + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        bias_g = tl.load(p_b + M + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    else:
        bias_a = tl.zeros([1, BLOCK_C], dtype=tl.float32)
        bias_g = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    # Output row i = sum over tap rows t of input row (i + t - 1) x w[t]. Walking input rows r: out row r - 1
    # takes tap row 2 and is then complete, out row r takes tap row 1, out row r + 1 starts with tap row 0.
    cur_a = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)   # out row r, tap row 0 added
    cur_g = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    nxt_a = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)   # out row r + 1
    nxt_g = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    if GATHER:   # a row's column neighbours, gathered from the row itself (x[j - 1], x[j + 1]; zero past the edges)
        idx_l = tl.broadcast_to(tl.maximum(lane - 1, 0)[:, None], [BLOCK_W, BLOCK_C])
        idx_r = tl.broadcast_to(tl.minimum(lane + 1, BLOCK_W - 1)[:, None], [BLOCK_W, BLOCK_C])
        keep_l = (lane >= 1)[:, None]
        # past column W - 1 the loads gave zeros; in strips, the last lane's neighbour is the right halo
        keep_r = ((j + 1 < W) if STRIPS == 1 else (lane + 1 < BLOCK_W))[:, None]
        if ROW_STAGES == 1:
            pre_a, pre_g = _raw_row(a_base, r0 - 1, s_ah, s_aw, j, c, H, W, M, c_ok, True)
            if STRIPS > 1:
                pre_la, pre_lg, pre_ra, pre_rg = _halo_columns(a_base, r0 - 1, s_ah, s_aw, j0, c, H, W, M, c_ok,
                                                               True, BLOCK_W)
    for k in tl.range(ROWS + 2, num_stages=ROW_STAGES):
        r = r0 - 1 + k
        if GATHER:
            # One load (and one SiLU) per input element, issued ahead of its use: a row ahead by hand, or
            # ROW_STAGES - 1 rows ahead by Triton's pipeliner (asynchronous copies into shared memory); the
            # shifted copies come from registers / shared memory.
            if ROW_STAGES == 1:
                raw_a, raw_g = pre_a, pre_g
                pre_a, pre_g = _raw_row(a_base, r + 1, s_ah, s_aw, j, c, H, W, M, c_ok, k + 1 < ROWS + 2)
                if STRIPS > 1:
                    la, lg, ra, rg = pre_la, pre_lg, pre_ra, pre_rg
                    pre_la, pre_lg, pre_ra, pre_rg = _halo_columns(a_base, r + 1, s_ah, s_aw, j0, c, H, W, M, c_ok,
                                                                   k + 1 < ROWS + 2, BLOCK_W)
            else:
                raw_a, raw_g = _raw_row(a_base, r, s_ah, s_aw, j, c, H, W, M, c_ok, True)
                if STRIPS > 1:
                    la, lg, ra, rg = _halo_columns(a_base, r, s_ah, s_aw, j0, c, H, W, M, c_ok, True, BLOCK_W)
            xa1 = _silu(raw_a.to(tl.float32), SILU_IN)
            xg1 = _silu(raw_g.to(tl.float32), SILU_IN)
            if STRIPS > 1:   # the strip's edge lanes take their neighbour from the halo
                edge_la = _silu(la.to(tl.float32), SILU_IN)
                edge_lg = _silu(lg.to(tl.float32), SILU_IN)
                edge_ra = _silu(ra.to(tl.float32), SILU_IN)
                edge_rg = _silu(rg.to(tl.float32), SILU_IN)
            else:
                edge_la, edge_lg, edge_ra, edge_rg = 0.0, 0.0, 0.0, 0.0
            xa0 = tl.where(keep_l, tl.gather(xa1, idx_l, 0), edge_la)
            xg0 = tl.where(keep_l, tl.gather(xg1, idx_l, 0), edge_lg)
            xa2 = tl.where(keep_r, tl.gather(xa1, idx_r, 0), edge_ra)
            xg2 = tl.where(keep_r, tl.gather(xg1, idx_r, 0), edge_rg)
        else:
            r_j = r + j * 0
            row_ok = j_ok & (r_j >= 0) & (r_j < H)
            base = a_base + r.to(tl.int64) * s_ah
            xa0, xg0 = _shifted_row(base, s_aw, j, c, W, M, row_ok, c_ok, 0, SILU_IN)
            xa1, xg1 = _shifted_row(base, s_aw, j, c, W, M, row_ok, c_ok, 1, SILU_IN)
            xa2, xg2 = _shifted_row(base, s_aw, j, c, W, M, row_ok, c_ok, 2, SILU_IN)
        i_done = r - 1
        if k >= 2 and i_done < H:   # rows r0 - 1 and r0 complete nothing of this segment
            y_a = cur_a + xa0 * a20 + xa1 * a21 + xa2 * a22 + bias_a
            y_g = cur_g + xg0 * g20 + xg1 * g21 + xg2 * g22 + bias_g
            out = _output(y_a * (y_g * tl.sigmoid(y_g)), p_scale, OUT_FP8)
            tl.store(o_base + i_done.to(tl.int64) * s_oh, out.to(p_out.dtype.element_ty),
                     mask=j_ok[:, None] & c_ok[None, :])
        cur_a = nxt_a + xa0 * a10 + xa1 * a11 + xa2 * a12
        cur_g = nxt_g + xg0 * g10 + xg1 * g11 + xg2 * g12
        nxt_a = xa0 * a00 + xa1 * a01 + xa2 * a02
        nxt_g = xg0 * g00 + xg1 * g01 + xg2 * g02


def _split_strip(kind: str) -> tuple[str, int | None]:
    """"rows_gather_w8" -> ("rows_gather", 8): a rows kind run in strips of 8 columns; any other kind -> (kind,
    None)."""
    base, _, width = kind.rpartition("_w")
    if base in ROWS_KINDS and width.isdigit() and int(width) >= 2 and int(width) & (int(width) - 1) == 0:
        return base, int(width)
    return kind, None


def depthwise_glu_triton(act: Tensor, weight: Tensor, bias: Tensor | None, config: tuple | None = None,
                         silu_input: bool = False, out_scale: Tensor | None = None) -> Tensor:
    from kernels.prep_triton import _empty  # NaN-filled under the tests' nan_filled_buffers()

    if act.stride(-1) != 1:
        act = act.contiguous()
    N, H, W, C = act.shape
    M = C // 2
    out = _empty((N, H, W, M), act.device, act.dtype if out_scale is None else torch.float8_e4m3fn)
    # The taps and bias are read as stored (any strides, any float dtype; no per-call fp32 copies, two kernels
    # each call). The FFN's compiled path stores the taps tap-major (runtime.ffn.store_depthwise_tap_major_): each
    # tap's per-channel load is then one contiguous run.
    w_strides = (weight.stride(0), weight.stride(2), weight.stride(3))
    kind, size, block_c, warps, silu_inside = config or CONFIG
    rows_kind, strip_width = _split_strip(kind)
    if silu_input and not silu_inside:
        act = torch.nn.functional.silu(act)
    # SiLU inside the kernel takes the one-instruction tanh on a GPU (the interpreter has no inline PTX)
    silu_mode = (2 if act.is_cuda and not _INTERPRETED else 1) if silu_input and silu_inside else 0
    common = {"HAS_BIAS": bias is not None, "SILU_IN": silu_mode, "OUT_FP8": out_scale is not None,
              "BLOCK_C": block_c, "num_warps": warps}
    unread = weight                                        # a pointer the kernel never reads (no bias / no FP8)
    scale = out_scale.float().reshape(()) if out_scale is not None else unread
    b = unread if bias is None else (bias if bias.stride(0) == 1 else bias.contiguous())
    strides = (*act.stride()[:3], *out.stride()[:3], *w_strides)
    if kind in TILES_KINDS:
        grid = (triton.cdiv(H * W, size), triton.cdiv(M, block_c), N)
        _depthwise_glu_tiles_kernel[grid](act, weight, b, out, scale, H, W, M, *strides, BLOCK_P=size,
                                          ROW_LOOP=kind != "tiles", ROW_STAGES=TILES_KINDS[kind], **common)
    elif rows_kind in ROWS_KINDS:
        block_w = max(2, triton.next_power_of_2(W) if strip_width is None else min(strip_width,
                                                                                     triton.next_power_of_2(W)))
        strips = triton.cdiv(W, block_w)
        grid = (triton.cdiv(M, block_c), N, triton.cdiv(H, size) * strips)
        _depthwise_glu_rows_kernel[grid](act, weight, b, out, scale, H, W, M, *strides, ROWS=size,
                                         BLOCK_W=block_w, GATHER=rows_kind != "rows",
                                         ROW_STAGES=ROWS_KINDS[rows_kind], STRIPS=strips, **common)
    else:
        raise ValueError(f"depthwise_glu_triton: unknown launch kind {kind!r}")
    return out
