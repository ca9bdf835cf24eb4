"""Triton kernels of the frame-wise Gated DeltaNet scan (transition form of `gdn_reference.gdn_scan_chunked`).

Three launches per call, each parallel over what it can be:

* Phase A, grid (products x row blocks, B*H*T): per frame the D x D Gram products of the delta rule,
      A_t = K~^T diag(b) K~      U_t = V^T diag(b) K~      Az_t = K^T diag(b) K      uz_t = K^T b
  (Az, uz only with the z stream). D is padded to a power of two (112 -> 128) with masked loads, so the
  padded rows / columns are exact zeros. At small B*H*T the output rows of each product are split across
  programs (each still sums all S tokens, so the products are complete and deterministic). Optionally
  (`a_split_s` > 1) the tokens are split too, the programs adding their partial products into zeroed
  outputs with fp32 atomics (shorter serial loops, bits of run-to-run nondeterminism); phase B reads the
  products the same way either way.
* Phase B, grid (B*H*(row blocks + z), directions): the serial scan over frames with the state in registers,
      S_t = S_{t-1} W_t + U_t = g_t (S_{t-1} - S_{t-1} A_t) + U_t.
  Rows of S are independent, so the state is split into row blocks across programs (the z vector gets a
  program of its own); the forward
  (inclusive, optional initial state, optional final state out) and backward (exclusive, restarting at
  each chunk end) directions run as separate programs of one launch.
* Phase C, grid (S-blocks, B*H*T): outputs. Because num_f + num_b = Q~ (S^f_t + S^b_t)^T the two states
  are summed before the one matmul, and the bidirectional combine (num_f+num_b)/(den_f+den_b+eps) happens
  in registers.

Precision: inputs may be fp32, bf16 or fp16. fp32 inputs get 3xTF32 dots in phases A and C (fp32-accurate);
bf16 / fp16 inputs get bf16 Gram products in phase A and TF32 dots on fp32 tiles elsewhere (~1e-3 relative).
The serial update of phase B is written S - S A_t, so TF32 rounding only touches the small correction and does
not compound over frames. bf16 values are exact in TF32.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.gdn_reference import GDNScanOutput, _check
from kernels.prep_triton import _ucpe_groups

__all__ = ["LAUNCH_CONFIGS", "config_key", "gdn_bidirectional_triton", "gdn_scan_triton", "nan_filled_buffers"]

# Launch configurations, chosen once per GPU family (no autotuning in the streaming loop). Keys are matched
# as substrings of torch.cuda.get_device_name(); "default" covers everything else (and the interpreter).
# "default" was swept on the H200 (round 20b, `bench.kernels --tune layer`) with the whole GDN layer as the
# objective: both branches on two streams, replayed from a CUDA graph, T = 3 with state, as the model runs it.
# 0.2481 -> 0.1884 ms; the largest steps were one phase-A program per SM instead of two (the other branch fills
# the rest of the GPU) and one 128-token tile per phase-C program. (The earlier sweep timed each branch's scan
# alone; its config made the lone main scan faster, 0.177 vs 0.207 ms, and the layer slower.)
LAUNCH_CONFIGS: dict[str, dict[str, int]] = {
    "default": {
        "a_block_s": 16, "a_warps": 4, "a_stages": 3,      # phase A: tokens per step, warps, pipeline stages
        "a_block_s_bf16": 64,                              # phase A tokens per step with bf16 Gram products
        "b_block_v": 32, "b_warps": 4, "b_stages": 2,      # phase B: state rows per program, warps, stages
        "c_block_s": 128, "c_tiles": 1, "c_warps": 8, "c_stages": 1,  # phase C: tokens per tile, tiles per
                                                                       # program, warps, stages
        "target_programs_per_sm": 1,                       # phase A splits output rows until the grid
                                                           # reaches this many programs per SM
        "a_split_s": 1,                                    # phase A token blocks per product (atomic adds
                                                           # when > 1; no faster in round 12)
    },
    # CPU interpreter (tests): large tiles mean fewer interpreted loop iterations.
    "interpreter": {
        "a_block_s": 64, "a_block_s_bf16": 64, "a_warps": 4, "a_stages": 1, "b_block_v": 32, "b_warps": 4, "b_stages": 1,
        "c_block_s": 64, "c_tiles": 1, "c_warps": 4, "c_stages": 1, "target_programs_per_sm": 1,
    },
}

# Matmul precisions (see module docstring). fp32 inputs get 3xTF32 in the parallel phases (A and C), so an
# fp32 caller gets fp32-accurate results (rel. RMS ~1e-5 instead of ~1.2e-3 with plain TF32, measured on H100).
# The state update is written S - S A (not S W with W = I - A), so TF32 rounding only touches the small
# correction S A and does not compound over frames the way a rounded W ~ I would; 3xTF32 there would double
# phase B's registers (128x128 operand split in two) and spill.
# SANA_WM_GDN_PRECISION="parallel_fp32,scan" overrides them (for measuring the precision / speed trade).
_PREC_PARALLEL, _PREC_SCAN = os.environ.get("SANA_WM_GDN_PRECISION", "tf32x3,tf32").split(",")
# Phase A's Gram products for bf16 / fp16 inputs run as bf16 tensor-core dots (operands already bf16; only
# beta * y is rounded to bf16): on the H200 the bf16 main scan took 0.159 ms instead of 0.329 ms with TF32 dots
# on fp32 copies, at 1.2e-3 relative RMS on the fp32 scan output instead of 4e-4, below the bf16 rounding of
# the layer's output (bench/results/2026-12-01_h200_kernels_phase_a_bf16.json). SANA_WM_GDN_PHASE_A=tf32
# restores the TF32 products; tests/gpu checks both against the bf16 error budget.
_PREC_PHASE_A_LOW = os.environ.get("SANA_WM_GDN_PHASE_A", "bf16")
# Phase C's output product for bf16 inputs is a bf16 tensor-core dot (the summed state rounded to bf16; q~ is
# bf16 already) instead of TF32 on fp32 copies with the state transposed in registers (144 instead of 240
# registers at sm_90). H200, round 7: the GDN layer 0.345 instead of 0.359 ms at 2.9e-3 instead of 2.4e-3
# relative RMS (bf16 budget 2e-2); round 8: the generator 234.4 instead of 236.5 ms per chunk.
# SANA_WM_GDN_PHASE_C=tf32 restores the TF32 product; tests/gpu checks both against the bf16 budget.
_PREC_PHASE_C_LOW = os.environ.get("SANA_WM_GDN_PHASE_C", "bf16")


def _dot_precision(x: Tensor, low: str) -> str:
    """A parallel phase's dot precision for inputs like `x`: 3xTF32 for fp32, else `low` ("tf32" or "bf16"); the
    Triton interpreter (CPU tests) computes bf16 dots wrongly, so it keeps TF32 there."""
    if x.dtype == torch.float32:
        return _PREC_PARALLEL
    return "tf32" if x.device.type == "cpu" else low


_NAN_FILL = False


@contextlib.contextmanager
def nan_filled_buffers():
    """Allocate every output and intermediate buffer filled with NaN (tests: an unwritten tile shows up)."""
    global _NAN_FILL
    prev, _NAN_FILL = _NAN_FILL, True
    try:
        yield
    finally:
        _NAN_FILL = prev


def _alloc(shape, device, dtype: torch.dtype = torch.float32) -> Tensor:
    if _NAN_FILL:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@functools.cache
def _device_info(device: torch.device) -> tuple[int, str]:
    if device.type != "cuda":
        return 4, "interpreter"
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count, props.name


def config_key(device: torch.device) -> str:
    """The LAUNCH_CONFIGS entry used on `device`."""
    name = _device_info(device)[1]
    if name == "interpreter":
        return "interpreter"
    for key in LAUNCH_CONFIGS:
        if key not in ("default", "interpreter") and key in name:
            return key
    return "default"


def _config(device: torch.device) -> dict[str, int]:
    return {**LAUNCH_CONFIGS[config_key(device)], **_LAUNCH_OVERRIDE}


def _launch_override(text: str) -> dict[str, int]:
    """SANA_WM_GDN_LAUNCH, e.g. '{"a_split_s": 2}': launch settings to time without editing LAUNCH_CONFIGS."""
    if not text:
        return {}
    try:
        override = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"SANA_WM_GDN_LAUNCH: not JSON ({exc}): {text!r}") from None
    known = set(LAUNCH_CONFIGS["default"])
    if not isinstance(override, dict) or not set(override) <= known or not all(
            isinstance(v, int) for v in override.values()):
        raise ValueError(f"SANA_WM_GDN_LAUNCH: expected a JSON object of integers with keys among "
                         f"{sorted(known)}, got {text!r}")
    return override


_LAUNCH_OVERRIDE = _launch_override(os.environ.get("SANA_WM_GDN_LAUNCH", ""))


def _block(d: int) -> int:
    # tl.dot needs every dimension >= 16.
    return max(16, triton.next_power_of_2(d))


# ----------------------------------------------------------------------------------------------------------
# Phase A: per-frame Gram products
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _gram(p_x, p_y, p_beta, s_lo, s_hi, stride_xs, stride_ys, stride_bs, o_x, DX, DY,
          BLOCK_S: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, SAME: tl.constexpr,
          NUM_STAGES: tl.constexpr, PRECISION: tl.constexpr):
    """Rows o_x of sum_s x_s^T (beta_s y_s) -> [BX, BY], and sum_s beta_s y_s -> [BY] (x, y: [S, D] tiles), over
    tokens s_lo <= s < s_hi. SAME: x is y (all rows), loaded once."""
    o_s = tl.arange(0, BLOCK_S)
    o_y = tl.arange(0, BY)
    m_x = o_x < DX
    m_y = o_y < DY
    b_acc = tl.zeros([BX, BY], dtype=tl.float32)
    b_sum = tl.zeros([BY], dtype=tl.float32)
    for s0 in tl.range(s_lo, s_hi, BLOCK_S, num_stages=NUM_STAGES):
        o_t = s0 + o_s
        m_s = o_t < s_hi
        b_beta = tl.load(p_beta + o_t * stride_bs, mask=m_s, other=0.0).to(tl.float32)
        b_y = tl.load(p_y + o_t[:, None] * stride_ys + o_y[None, :], mask=m_s[:, None] & m_y[None, :],
                      other=0.0).to(tl.float32)
        if SAME:
            b_x = b_y
        else:
            b_x = tl.load(p_x + o_t[:, None] * stride_xs + o_x[None, :], mask=m_s[:, None] & m_x[None, :],
                          other=0.0).to(tl.float32)
        b_yb = b_y * b_beta[:, None]
        if PRECISION == "bf16":
            b_acc += tl.dot(tl.trans(b_x.to(tl.bfloat16)), b_yb.to(tl.bfloat16))
        else:
            b_acc += tl.dot(tl.trans(b_x), b_yb, input_precision=PRECISION)
        b_sum += tl.sum(b_yb, axis=0)
    return b_acc, b_sum


@triton.jit
def _gdn_phase_a_kernel(
    p_k, p_kr, p_v, p_beta, p_A, p_U, p_Az, p_uz,
    stride_kb, stride_kh, stride_kt, stride_ks,
    stride_krb, stride_krh, stride_krt, stride_krs,
    stride_vb, stride_vh, stride_vt, stride_vs,
    stride_bb, stride_bh, stride_bt, stride_bs,
    H, T, S, DK, DV,
    BLOCK_S: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NROW: tl.constexpr, SPLIT: tl.constexpr,
    HAS_Z: tl.constexpr, NUM_STAGES: tl.constexpr, PRECISION: tl.constexpr,
):
    # When B*H*T alone does not fill the GPU, each product's output rows are split over NROW programs
    # (the y operand is then re-read from L2), and with SPLIT > 1 its tokens over SPLIT programs, which add
    # their partial sums into the zeroed outputs (fp32 atomics: the order of the additions, and so the last
    # bits of the sums, may differ between runs). With SPLIT = 1 every program covers all S tokens and
    # stores complete products; phase B reads them as they are either way.
    # Programs of one frame are adjacent in launch order (axis 0), so their shared operand tiles meet in L2.
    i_p = tl.program_id(0) // (NROW * SPLIT)           # 0: A, 1: U, 2: Az / uz
    i_r = tl.program_id(0) // SPLIT % NROW             # block of output rows
    i_sp = tl.program_id(0) % SPLIT                    # block of tokens
    i_bht = tl.program_id(1)          # (b * H + h) * T + t
    i_bh = i_bht // T
    i_t = i_bht % T
    i_b = i_bh // H
    i_h = i_bh % H
    BKR: tl.constexpr = BK // NROW
    BVR: tl.constexpr = BV // NROW
    s_per = tl.cdiv(tl.cdiv(S, SPLIT), BLOCK_S) * BLOCK_S
    s_lo = i_sp * s_per
    s_hi = tl.minimum(S, s_lo + s_per)
    o_k = tl.arange(0, BK)
    o_kr = i_r * BKR + tl.arange(0, BKR)
    o_vr = i_r * BVR + tl.arange(0, BVR)
    p_kr_t = p_kr + i_b * stride_krb + i_h * stride_krh + i_t * stride_krt
    p_beta_t = p_beta + i_b * stride_bb + i_h * stride_bh + i_t * stride_bt
    o_slot = i_bht.to(tl.int64)
    if i_p == 0:
        b_A, _ = _gram(p_kr_t, p_kr_t, p_beta_t, s_lo, s_hi, stride_krs, stride_krs, stride_bs, o_kr, DK, DK,
                       BLOCK_S, BKR, BK, NROW == 1, NUM_STAGES, PRECISION)
        _put(p_A + o_slot * BK * BK + o_kr[:, None] * BK + o_k[None, :], b_A, SPLIT)
    elif i_p == 1:
        p_v_t = p_v + i_b * stride_vb + i_h * stride_vh + i_t * stride_vt
        b_U, _ = _gram(p_v_t, p_kr_t, p_beta_t, s_lo, s_hi, stride_vs, stride_krs, stride_bs, o_vr, DV, DK,
                       BLOCK_S, BVR, BK, False, NUM_STAGES, PRECISION)
        _put(p_U + o_slot * BV * BK + o_vr[:, None] * BK + o_k[None, :], b_U, SPLIT)
    else:
        if HAS_Z:
            p_k_t = p_k + i_b * stride_kb + i_h * stride_kh + i_t * stride_kt
            b_Az, b_uz = _gram(p_k_t, p_k_t, p_beta_t, s_lo, s_hi, stride_ks, stride_ks, stride_bs, o_kr, DK,
                               DK, BLOCK_S, BKR, BK, NROW == 1, NUM_STAGES, PRECISION)
            _put(p_Az + o_slot * BK * BK + o_kr[:, None] * BK + o_k[None, :], b_Az, SPLIT)
            m_uz = o_k < tl.where(i_r == 0, BK, 0)
            if SPLIT == 1:
                tl.store(p_uz + o_slot * BK + o_k, b_uz, mask=m_uz)
            else:
                tl.atomic_add(p_uz + o_slot * BK + o_k, b_uz, mask=m_uz, sem="relaxed")


@triton.jit
def _put(ptrs, values, SPLIT: tl.constexpr):
    """Store a complete product, or add a token block's partial sum into the zeroed output."""
    if SPLIT == 1:
        tl.store(ptrs, values)
    else:
        tl.atomic_add(ptrs, values, sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# Phase B: serial scan over frames
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _gdn_phase_b_kernel(
    p_A, p_U, p_Az, p_uz, p_g, p_h0, p_z0, p_S, p_z, p_ht, p_zt, p_reset,
    stride_gb, stride_gh, stride_gt,
    H, T, DK, DV,
    BK: tl.constexpr, BV: tl.constexpr, BLOCK_VB: tl.constexpr,
    HAS_Z: tl.constexpr, DO_FWD: tl.constexpr, DO_BWD: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr, HAS_RESET: tl.constexpr, PRECISION: tl.constexpr,
):
    # Programs per (b, h): NVB blocks of state rows, plus one for the z stream.
    NVB: tl.constexpr = BV // BLOCK_VB
    NPB: tl.constexpr = NVB + 1 if HAS_Z else NVB
    i_bhv = tl.program_id(0)
    i_d = tl.program_id(1)        # direction slot in the [directions, B*H*T, ...] state buffers
    i_bh = i_bhv // NPB
    i_v = i_bhv % NPB
    i_b = i_bh // H
    i_h = i_bh % H
    n_bht = tl.num_programs(0) // NPB * T
    if DO_FWD and DO_BWD:
        is_bwd = i_d            # program axis 1: 0 forward, 1 backward
    elif DO_BWD:
        is_bwd = 1
    else:
        is_bwd = 0
    is_fwd = is_bwd == 0
    o_k = tl.arange(0, BK)
    m_k = o_k < DK
    p_g_bh = p_g + i_b * stride_gb + i_h * stride_gh
    # Masks as index limits (scalar booleans do not mix with block masks everywhere): the initial state is
    # read and the final state written by forward programs only.
    lim_h0 = (1 - is_bwd) * (1 if HAS_H0 else 0)
    lim_ht = (1 - is_bwd) * (1 if STORE_HT else 0)

    # Forward (inclusive): state_t = step(state_{t-1}, frame t).
    # Backward (exclusive): state_t = step(state_{t+1}, frame t+1), reset to 0 at the last frame of a chunk.
    if i_v < NVB:
        o_r = i_v * BLOCK_VB + tl.arange(0, BLOCK_VB)
        m_rk = (o_r[:, None] < DV) & m_k[None, :]
        o_h = i_bh.to(tl.int64) * DV * DK + o_r[:, None] * DK + o_k[None, :]
        b_h = tl.load(p_h0 + o_h, mask=m_rk & (o_r[:, None] < DV * lim_h0), other=0.0).to(tl.float32)
        for i_i in range(T):
            i_t = tl.where(is_fwd, i_i, T - 1 - i_i)
            i_src = tl.where(is_fwd, i_t, tl.minimum(i_t + 1, T - 1))
            i_slot = (i_bh * T + i_src).to(tl.int64)
            b_A = tl.load(p_A + i_slot * BK * BK + o_k[:, None] * BK + o_k[None, :])
            b_U = tl.load(p_U + i_slot * BV * BK + o_r[:, None] * BK + o_k[None, :])
            b_g = tl.load(p_g_bh + i_src * stride_gt).to(tl.float32)
            b_h = b_g * (b_h - tl.dot(b_h, b_A, input_precision=PRECISION)) + b_U
            if HAS_RESET:
                reset = tl.load(p_reset + i_t)
            else:
                reset = (i_t == T - 1).to(tl.int32)
            b_h = tl.where(reset * is_bwd != 0, 0.0, b_h)
            i_out = ((i_d * n_bht + i_bh * T + i_t) * BV).to(tl.int64)
            tl.store(p_S + (i_out + o_r[:, None]) * BK + o_k[None, :], b_h)
        tl.store(p_ht + o_h, b_h, mask=m_rk & (o_r[:, None] < DV * lim_ht))
    else:
        b_z = tl.load(p_z0 + i_bh.to(tl.int64) * DK + o_k, mask=o_k < DK * lim_h0, other=0.0).to(tl.float32)
        for i_i in range(T):
            i_t = tl.where(is_fwd, i_i, T - 1 - i_i)
            i_src = tl.where(is_fwd, i_t, tl.minimum(i_t + 1, T - 1))
            i_slot = (i_bh * T + i_src).to(tl.int64)
            b_Az = tl.load(p_Az + i_slot * BK * BK + o_k[:, None] * BK + o_k[None, :])
            b_uz = tl.load(p_uz + i_slot * BK + o_k)
            b_g = tl.load(p_g_bh + i_src * stride_gt).to(tl.float32)
            b_z = b_g * (b_z - tl.sum(b_z[:, None] * b_Az, axis=0)) + b_uz
            if HAS_RESET:
                reset = tl.load(p_reset + i_t)
            else:
                reset = (i_t == T - 1).to(tl.int32)
            b_z = tl.where(reset * is_bwd != 0, 0.0, b_z)
            tl.store(p_z + (i_d * n_bht + i_bh * T + i_t).to(tl.int64) * BK + o_k, b_z)
        tl.store(p_zt + i_bh.to(tl.int64) * DK + o_k, b_z, mask=o_k < DK * lim_ht)


# ----------------------------------------------------------------------------------------------------------
# Phase C: per-frame outputs
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _out_ucpe(b_x, p_P, p_cos, p_sin, i_b, i_t, o_s, m_s, T, S, DV, stride_ct, stride_cs, stride_st, stride_ss,
              BLOCK_S: tl.constexpr, BV: tl.constexpr):
    """Inverse UCPE (`ucpe_prep` mode "out") of an output tile [BLOCK_S tokens, BV]: 4-groups g -> P g with
    the token's pose, inverse camera RoPE on the last DV/2 dims."""
    p_P_s = p_P + ((i_b * T + i_t) * S + o_s).to(tl.int64) * 16
    m00 = tl.load(p_P_s + 0, mask=m_s, other=0.0)[:, None]
    m01 = tl.load(p_P_s + 1, mask=m_s, other=0.0)[:, None]
    m02 = tl.load(p_P_s + 2, mask=m_s, other=0.0)[:, None]
    m03 = tl.load(p_P_s + 3, mask=m_s, other=0.0)[:, None]
    m10 = tl.load(p_P_s + 4, mask=m_s, other=0.0)[:, None]
    m11 = tl.load(p_P_s + 5, mask=m_s, other=0.0)[:, None]
    m12 = tl.load(p_P_s + 6, mask=m_s, other=0.0)[:, None]
    m13 = tl.load(p_P_s + 7, mask=m_s, other=0.0)[:, None]
    m20 = tl.load(p_P_s + 8, mask=m_s, other=0.0)[:, None]
    m21 = tl.load(p_P_s + 9, mask=m_s, other=0.0)[:, None]
    m22 = tl.load(p_P_s + 10, mask=m_s, other=0.0)[:, None]
    m23 = tl.load(p_P_s + 11, mask=m_s, other=0.0)[:, None]
    m30 = tl.load(p_P_s + 12, mask=m_s, other=0.0)[:, None]
    m31 = tl.load(p_P_s + 13, mask=m_s, other=0.0)[:, None]
    m32 = tl.load(p_P_s + 14, mask=m_s, other=0.0)[:, None]
    m33 = tl.load(p_P_s + 15, mask=m_s, other=0.0)[:, None]
    G = DV // 8
    o_g = tl.arange(0, BV // 4)
    m_r = m_s[:, None] & ((o_g >= G) & (o_g < 2 * G))[None, :]
    o_ja = 2 * (o_g - G)[None, :]
    p_cos_s = p_cos + i_t * stride_ct + o_s[:, None] * stride_cs + o_ja
    p_sin_s = p_sin + i_t * stride_st + o_s[:, None] * stride_ss + o_ja
    b_ca = tl.load(p_cos_s, mask=m_r, other=1.0).to(tl.float32)
    b_sa = -tl.load(p_sin_s, mask=m_r, other=0.0).to(tl.float32)        # inverse rotation
    b_cb = tl.load(p_cos_s + 1, mask=m_r, other=1.0).to(tl.float32)
    b_sb = -tl.load(p_sin_s + 1, mask=m_r, other=0.0).to(tl.float32)
    return _ucpe_groups(b_x, m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33,
                        b_ca, b_sa, b_cb, b_sb, G, BLOCK_S, BV)


@triton.jit
def _gdn_phase_c_kernel(
    p_q, p_qr, p_S, p_z, p_out, p_den, p_P, p_cos, p_sin,
    stride_qb, stride_qh, stride_qt, stride_qs,
    stride_qrb, stride_qrh, stride_qrt, stride_qrs,
    stride_ct, stride_cs, stride_st, stride_ss,
    H, T, S, DK, DV, eps,
    BLOCK_S: tl.constexpr, TILES: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_Z: tl.constexpr,
    NDIR: tl.constexpr, COMBINE: tl.constexpr, OUT_UCPE: tl.constexpr, PRECISION: tl.constexpr,
    TOKEN_MAJOR: tl.constexpr,
):
    # The output is [B, H, T, S, DV], or [B, T, S, H, DV] with TOKEN_MAJOR (the layout the block's projections
    # read), in the output tensor's dtype.
    i_sb = tl.program_id(0)       # block of TILES * BLOCK_S tokens
    i_bht = tl.program_id(1)
    n_bht = tl.num_programs(1)
    i_bh = i_bht // T
    i_t = i_bht % T
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k = o_k < DK
    m_v = o_v < DV

    # num_f + num_b = Q~ (S_f + S_b)^T: sum the directions' states once, reuse them for TILES token tiles.
    b_M = tl.zeros([BV, BK], dtype=tl.float32)
    b_zs = tl.zeros([BK], dtype=tl.float32)
    for i_d in tl.static_range(NDIR):
        i_slot = (i_d * n_bht + i_bht).to(tl.int64)
        b_M += tl.load(p_S + i_slot * BV * BK + o_v[:, None] * BK + o_k[None, :])
        if HAS_Z:
            b_zs += tl.load(p_z + i_slot * BK + o_k)
    b_Mt = tl.trans(b_M)
    p_qr_t = p_qr + i_b * stride_qrb + i_h * stride_qrh + i_t * stride_qrt
    p_q_t = p_q + i_b * stride_qb + i_h * stride_qh + i_t * stride_qt
    if TOKEN_MAJOR:
        p_out_t = p_out + ((i_b * T + i_t) * S).to(tl.int64) * H * DV + i_h * DV
        stride_os = H * DV
    else:
        p_out_t = p_out + i_bht.to(tl.int64) * S * DV
        stride_os = DV
    for i_tile in tl.static_range(TILES):
        o_s = (i_sb * TILES + i_tile) * BLOCK_S + tl.arange(0, BLOCK_S)
        m_s = o_s < S
        b_qr = tl.load(p_qr_t + o_s[:, None] * stride_qrs + o_k[None, :], mask=m_s[:, None] & m_k[None, :],
                       other=0.0).to(tl.float32)
        if PRECISION == "bf16":
            b_num = tl.dot(b_qr.to(tl.bfloat16), b_Mt.to(tl.bfloat16))            # [BLOCK_S, BV]
        else:
            b_num = tl.dot(b_qr, b_Mt, input_precision=PRECISION)
        if HAS_Z:
            b_q = tl.load(p_q_t + o_s[:, None] * stride_qs + o_k[None, :], mask=m_s[:, None] & m_k[None, :],
                          other=0.0).to(tl.float32)
            b_den = tl.sum(b_q * b_zs[None, :], axis=1)                           # [BLOCK_S]
            if COMBINE:
                b_num = b_num / (b_den + eps)[:, None]
            else:
                tl.store(p_den + i_bht.to(tl.int64) * S + o_s, b_den, mask=m_s)
        if OUT_UCPE:
            b_num = _out_ucpe(b_num, p_P, p_cos, p_sin, i_b, i_t, o_s, m_s, T, S, DV,
                              stride_ct, stride_cs, stride_st, stride_ss, BLOCK_S, BV)
        tl.store(p_out_t + o_s[:, None] * stride_os + o_v[None, :], b_num.to(p_out.dtype.element_ty),
                 mask=m_s[:, None] & m_v[None, :])


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------
def _last_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def phase_a_rows(n_products: int, BK: int, BV: int, cfg: dict, n_sm: int) -> int:
    """Phase A's row blocks per product: output rows are split over NROW programs until the grid fills the GPU
    (at least 16 rows per program: the tl.dot minimum)."""
    nrow = 1
    while (nrow * n_products < cfg["target_programs_per_sm"] * n_sm and BK // (2 * nrow) >= 16
           and BV // (2 * nrow) >= 16):
        nrow *= 2
    return nrow


def _launch_phase_a(k: Tensor, k_rot: Tensor, v: Tensor, beta: Tensor, with_z: bool, cfg: dict,
                    n_sm: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Phase A over [B, H, T, S, D] inputs: the per-frame products (A, U, Az, uz buffers; Az / uz alias A
    without the z stream)."""
    B, H, T, S, DK = k.shape
    DV = v.shape[-1]
    BK, BV = _block(DK), _block(DV)
    n_bht = B * H * T
    n_prod = 3 if with_z else 2
    nrow = phase_a_rows(n_bht * n_prod, BK, BV, cfg, n_sm)
    prec_a = _dot_precision(k, _PREC_PHASE_A_LOW)
    split = max(1, int(cfg.get("a_split_s", 1)))
    # Token-split programs add into their outputs: those start at zero (never NaN-filled).
    alloc_a = _alloc if split == 1 else (lambda shape, dev: torch.zeros(shape, dtype=torch.float32, device=dev))
    buf_A = alloc_a((n_bht, BK, BK), k.device)
    buf_U = alloc_a((n_bht, BV, BK), k.device)
    buf_Az = alloc_a((n_bht, BK, BK), k.device) if with_z else buf_A
    buf_uz = alloc_a((n_bht, BK), k.device) if with_z else buf_A
    _gdn_phase_a_kernel[(n_prod * nrow * split, n_bht)](
        k, k_rot, v, beta, buf_A, buf_U, buf_Az, buf_uz,
        *k.stride()[:4], *k_rot.stride()[:4], *v.stride()[:4], *beta.stride(),
        H, T, S, DK, DV,
        BLOCK_S=cfg["a_block_s_bf16" if prec_a == "bf16" else "a_block_s"], BK=BK, BV=BV, NROW=nrow, SPLIT=split,
        HAS_Z=with_z, NUM_STAGES=cfg["a_stages"], PRECISION=prec_a, num_warps=cfg["a_warps"],
    )
    return buf_A, buf_U, buf_Az, buf_uz


_RESET_CACHE: dict[tuple, Tensor] = {}


def _chunk_resets(chunks, T: int, device: torch.device) -> Tensor | None:
    """int32 [T] flags marking the last frame of each backward chunk (None: one chunk, no table needed).

    Cached per (chunks, device) so a CUDA-graph replay never copies from the host; run the op once before
    capture.
    """
    if chunks is None:
        return None
    chunks = tuple((int(s), int(e)) for s, e in chunks)
    pos = 0
    for s, e in chunks:
        if s != pos or e <= s:
            raise ValueError(f"gdn: chunks must tile [0, {T}) in order without gaps; got {chunks}")
        pos = e
    if pos != T:
        raise ValueError(f"gdn: chunks must tile [0, {T}) in order without gaps; got {chunks}")
    if len(chunks) == 1:
        return None
    key = (chunks, str(device))
    flags = _RESET_CACHE.get(key)
    if flags is None:
        host = torch.zeros(T, dtype=torch.int32)
        for _, e in chunks:
            host[e - 1] = 1
        flags = host.to(device)
        _RESET_CACHE[key] = flags
    return flags


def _run(q, k, v, beta, g, q_rot, k_rot, *, do_fwd, do_bwd, initial_state, with_z, output_final_state,
         combine, eps, resets, out_ucpe=None, out_dtype=torch.float32, token_major=False):
    """Launch phases A, B, C. Returns (num_or_out, den or None, final_state or None)."""
    q_rot = q if q_rot is None else q_rot
    k_rot = k if k_rot is None else k_rot
    # beta and g are read through their strides (the runtime passes permuted views); the D-wide tiles need a
    # unit last stride.
    q, k, v, q_rot, k_rot = (_last_contiguous(t) for t in (q, k, v, q_rot, k_rot))
    B, H, T, S, DK = q.shape
    DV = v.shape[-1]
    device = q.device
    BK, BV = _block(DK), _block(DV)
    cfg = _config(device)
    n_sm = _device_info(device)[0]
    n_bht = B * H * T
    buf_A, buf_U, buf_Az, buf_uz = _launch_phase_a(k, k_rot, v, beta, with_z, cfg, n_sm)

    # Phase B.
    ndir = int(do_fwd) + int(do_bwd)
    states = _alloc((ndir, n_bht, BV, BK), device)
    zs = _alloc((ndir, n_bht, BK), device) if with_z else None
    has_h0 = initial_state is not None
    h0 = z0 = None
    if has_h0:
        h0 = initial_state[0].float().contiguous()
        if h0.shape != (B, H, DV, DK):
            raise ValueError(f"gdn: initial state must be [B, H, Dv, Dk] = {(B, H, DV, DK)}; got "
                             f"{tuple(h0.shape)}")
        if with_z:
            if initial_state[1] is None:
                raise ValueError("gdn scan: with_z needs an initial z state")
            z0 = initial_state[1].float().contiguous()
            if z0.shape != (B, H, DK):
                raise ValueError(f"gdn: initial z must be [B, H, Dk] = {(B, H, DK)}; got {tuple(z0.shape)}")
    ht = zt = None
    if output_final_state:
        ht = _alloc((B, H, DV, DK), device)
        zt = _alloc((B, H, DK), device) if with_z else None
    dummy = buf_A       # never dereferenced (masked off or behind a constexpr flag)
    block_v = min(cfg["b_block_v"], BV)
    n_prog_bh = BV // block_v + int(with_z)
    _gdn_phase_b_kernel[(B * H * n_prog_bh, ndir)](
        buf_A, buf_U, buf_Az, buf_uz, g,
        dummy if h0 is None else h0, dummy if z0 is None else z0,
        states, dummy if zs is None else zs,
        dummy if ht is None else ht, dummy if zt is None else zt,
        dummy if resets is None else resets,
        *g.stride(), H, T, DK, DV,
        BK=BK, BV=BV, BLOCK_VB=block_v, HAS_Z=with_z, DO_FWD=do_fwd, DO_BWD=do_bwd,
        HAS_H0=has_h0, STORE_HT=output_final_state, HAS_RESET=resets is not None, PRECISION=_PREC_SCAN,
        num_warps=cfg["b_warps"], num_stages=cfg["b_stages"],
    )

    # Phase C.
    out = _alloc((B, T, S, H, DV) if token_major else (B, H, T, S, DV), device, out_dtype)
    den = _alloc((B, H, T, S), device) if with_z and not combine else None
    c_block_s, c_tiles = cfg["c_block_s"], cfg["c_tiles"]
    if out_ucpe is not None and c_block_s > 16:
        # The UCPE epilogue holds ~20 more [BLOCK_S, D/4] tiles: half-height tiles, twice as many, no spills.
        c_block_s, c_tiles = c_block_s // 2, 2 * c_tiles
    c_tiles = max(1, min(c_tiles, triton.cdiv(S, c_block_s)))
    if out_ucpe is not None:
        P, cam_cos, cam_sin = out_ucpe
        P = P.float().contiguous()
        cam_cos, cam_sin = _last_contiguous(cam_cos), _last_contiguous(cam_sin)
        c_strides = (cam_cos.stride(0), cam_cos.stride(1), cam_sin.stride(0), cam_sin.stride(1))
    else:
        P = cam_cos = cam_sin = dummy
        c_strides = (0, 0, 0, 0)
    _gdn_phase_c_kernel[(triton.cdiv(S, c_block_s * c_tiles), n_bht)](
        q, q_rot, states, dummy if zs is None else zs, out, dummy if den is None else den, P, cam_cos, cam_sin,
        *q.stride()[:4], *q_rot.stride()[:4], *c_strides,
        H, T, S, DK, DV, eps,
        BLOCK_S=c_block_s, TILES=c_tiles, BK=BK, BV=BV, HAS_Z=with_z, NDIR=ndir, COMBINE=combine,
        OUT_UCPE=out_ucpe is not None, PRECISION=_dot_precision(q_rot, _PREC_PHASE_C_LOW), TOKEN_MAJOR=token_major,
        num_warps=cfg["c_warps"], num_stages=cfg["c_stages"],
    )
    final = (ht, zt) if output_final_state else None
    return out, den, final


def gdn_scan_triton(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *,
                    q_rot: Tensor | None = None, k_rot: Tensor | None = None, reverse: bool = False,
                    initial_state: tuple[Tensor, Tensor | None] | None = None, with_z: bool = True,
                    output_final_state: bool = False) -> GDNScanOutput:
    """Triton version of `kernels.gdn_reference.gdn_scan_recurrent` (same arguments, fp32 results).

    Args:
        q, k: [B, H, T, S, D] plain queries / keys (denominator stream); fp32, bf16 or fp16.
        v: [B, H, T, S, Dv] values.
        beta: [B, H, T, S] per-token write strength.
        g: [B, H, T] per-frame decay.
        q_rot, k_rot: rotated queries / keys of the numerator stream (default q, k).
        reverse: backward exclusive scan instead of forward inclusive.
        initial_state: (state [B, H, Dv, Dk], z [B, H, Dk] or None), forward only.
        with_z: also run the z (denominator) stream.
        output_final_state: return the state after the last frame (forward only).
    Returns:
        GDNScanOutput(num [B, H, T, S, Dv], den [B, H, T, S] or None, final_state or None), fp32.
    """
    _check(q, k, v, beta, g, initial_state, reverse)
    num, den, final = _run(q, k, v, beta, g, q_rot, k_rot, do_fwd=not reverse, do_bwd=reverse,
                           initial_state=initial_state, with_z=with_z,
                           output_final_state=output_final_state and not reverse, combine=False, eps=0.0,
                           resets=None)
    return GDNScanOutput(num, den, final)


def gdn_bidirectional_triton(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *,
                             q_rot: Tensor | None = None, k_rot: Tensor | None = None,
                             initial_state: tuple[Tensor, Tensor | None] | None = None, with_z: bool = True,
                             eps: float = 1e-8, output_final_state: bool = False,
                             chunks: tuple[tuple[int, int], ...] | None = None,
                             out_ucpe: tuple[Tensor, Tensor, Tensor] | None = None,
                             out_dtype: torch.dtype = torch.float32,
                             token_major: bool = False) -> tuple[Tensor, tuple | None]:
    """Triton version of `kernels.gdn_reference.gdn_bidirectional_reference` (one fused call).

    Args: as `gdn_scan_triton`, plus
        eps: denominator epsilon of (num_f + num_b) / (den_f + den_b + eps) (with_z only).
        chunks: (start, end) frame ranges tiling [0, T) in order; the backward state restarts in each.
            None: one chunk.
        out_ucpe: (P [B, T, S, 4, 4], cam_cos, cam_sin [T, S, Dv/4]): apply `ucpe_prep(out, ..., "out")` in
            the output epilogue (the camera branch), saving a pass over the output.
        out_dtype: dtype of out (the math stays fp32).
        token_major: out as [B, T, S, H, Dv] instead of [B, H, T, S, Dv].
    Returns:
        (out [B, H, T, S, Dv] (or [B, T, S, H, Dv]), (state [B, H, Dv, Dk], z [B, H, Dk] or None) or None).
    """
    _check(q, k, v, beta, g, initial_state, False)
    resets = _chunk_resets(chunks, q.shape[2], q.device)
    if out_ucpe is not None:
        from kernels.prep import _check_ucpe

        B, H, T, S, _ = q.shape
        _check_ucpe(q.new_empty((B, H, T, S, v.shape[-1]), device="meta"), *out_ucpe, "out")
    out, _, final = _run(q, k, v, beta, g, q_rot, k_rot, do_fwd=True, do_bwd=True,
                         initial_state=initial_state, with_z=with_z, output_final_state=output_final_state,
                         combine=True, eps=eps, resets=resets, out_ucpe=out_ucpe, out_dtype=out_dtype,
                         token_major=token_major)
    return out, final
