"""Quantized-weight GEMMs: y[..., N] = x[..., K] @ dequant(W)[N, K]^T + bias.

Each op has its faces side by side: a PyTorch fp32 reference, the fast path(s), and one public function that
picks between them.

NVFP4 weights (W4A16: activations stay bf16)
    nvfp4_linear_ref        fp32 reference
    nvfp4_dequant_triton    one-pass Triton dequantization to bf16 (bit-identical to quant.nvfp4's)
    nvfp4_dequantize        Triton on CUDA, the PyTorch decode elsewhere (used by the linear and the modules)
    nvfp4_linear_dequant    dequantize W to x.dtype (Triton on CUDA) into a scratch tensor, then cuBLAS: the
                            fastest W4A16 path on Hopper at large M (weights stay 4-bit at rest)
    nvfp4_linear_triton     Triton kernel that unpacks and scales W tiles in registers, bf16 tensor-core dot;
                            runs on sm_80+ (written for Hopper, which has no FP4 tensor cores)
    nvfp4_linear_sm100      UNTESTED: Triton `tl.dot_scaled` with E2M1 weights and E4M3 block scales for
                            Blackwell; only used when SANA_WM_NVFP4_SM100=1 on compute capability >= 10
    nvfp4_linear            dispatch
FP8 E4M3 weights
    fp8_linear_ref          fp32 reference; per-tensor weights quantize activations per tensor (W8A8),
                            per-block weights keep activations unquantized (W8A16)
    fp8_linear_scaled_mm    torch._scaled_mm: per-tensor weight scale, activations quantized on the fly per token
                            (row-wise scales, one Triton pass on CUDA) or with the static input_scale
    fp8_linear_stacked      several per-tensor layers that read the same input as one torch._scaled_mm
    fp8_linear              dispatch (per-block weights on CUDA: dequantize + cuBLAS)
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from quant.fp8 import dequantize_fp8, quantize_fp8_per_row, quantize_fp8_per_tensor
from quant.nvfp4 import BLOCK_SIZE, dequantize_nvfp4

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the references still work.
    triton = None
    tl = None
    HAS_TRITON = False

BACKENDS = ("auto", "torch", "dequant", "triton", "sm100", "scaled_mm")

# Launch configurations as data, keyed by the smallest M they are meant for. Tuned on H100 with bench/quant.py
# --sweep (see docs/quantization.md); no autotuning at run time so the streaming step never recompiles.
NVFP4_SM90_CONFIGS: dict[int, dict] = {
    0: {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    128: {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
}
NVFP4_SM100_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}


def _pick_config(table: dict[int, dict], m: int) -> dict:
    return table[max(k for k in table if k <= m)]


def _check_nvfp4_args(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[int, int]:
    n, k = weight.shape[0], weight.shape[1] * 2
    if weight.dtype != torch.uint8:
        raise TypeError(f"nvfp4 weight must be uint8 (packed E2M1), got {weight.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"x has K = {x.shape[-1]} but the packed weight {tuple(weight.shape)} has K = {k}")
    if weight_scale.shape != (n, k // BLOCK_SIZE):
        raise ValueError(f"weight_scale shape {tuple(weight_scale.shape)} != {(n, k // BLOCK_SIZE)}")
    return n, k


# ---------------------------------------------------------------------------------------------------------------
# NVFP4: references
# ---------------------------------------------------------------------------------------------------------------
def nvfp4_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     weight_scale_2: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 reference. x [..., K]; weight uint8 [N, K/2]; weight_scale fp8 [N, K/16]; weight_scale_2 fp32 [];
    bias [N] or None. Returns [..., N] in x.dtype."""
    _check_nvfp4_args(x, weight, weight_scale)
    w = dequantize_nvfp4(weight, weight_scale, weight_scale_2, torch.float32)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def nvfp4_linear_dequant(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         weight_scale_2: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize W to x.dtype, then F.linear (cuBLAS on CUDA). Same signature as nvfp4_linear_ref."""
    _check_nvfp4_args(x, weight, weight_scale)
    w = nvfp4_dequantize(weight, weight_scale, weight_scale_2, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def nvfp4_dequantize(weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed NVFP4 -> [N, K] in `dtype`: one Triton pass on CUDA, quant.nvfp4.dequantize_nvfp4 elsewhere (the
    same bits either way)."""
    if weight.is_cuda and HAS_TRITON:
        return nvfp4_dequant_triton(weight, weight_scale, weight_scale_2, dtype)
    return dequantize_nvfp4(weight, weight_scale, weight_scale_2, dtype)


# ---------------------------------------------------------------------------------------------------------------
# NVFP4: Triton kernels
# ---------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _e4m3_bits_as_f16(b_s):
        # E4M3 (s eeee mmm, bias 7) -> fp16 (s eeeee mmmmmmmmmm, bias 15): sign to bit 15, the 7 other bits to
        # bits 7..13. Reads the value times 2^-8, exactly (subnormals included), with no lookup table.
        b_si = b_s.to(tl.int32)
        return (((b_si & 0x80) << 8) | ((b_si & 0x7F) << 7)).to(tl.uint16).to(tl.float16, bitcast=True)

    @triton.jit
    def _e2m1_bits_as_f16(b_code):
        # E2M1 (s ee m, bias 1) -> fp16 the same way: sign to bit 15, the 3 other bits to bits 9..11; reads the
        # value times 2^-14, exactly.
        return (((b_code & 0x8) << 12) | ((b_code & 0x7) << 9)).to(tl.uint16).to(tl.float16, bitcast=True)

    @triton.jit
    def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        # Grouped tile order: GROUP_M row tiles sweep the N tiles together so their weight tiles stay in L2.
        # Returns this program's row and column offsets.
        i_pid = tl.program_id(0)
        n_group = GROUP_M * tl.cdiv(N, BLOCK_N)
        first_m = (i_pid // n_group) * GROUP_M
        group_m = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
        i_m = first_m + (i_pid % n_group) % group_m
        i_n = (i_pid % n_group) // group_m
        return i_m * BLOCK_M + tl.arange(0, BLOCK_M), i_n * BLOCK_N + tl.arange(0, BLOCK_N)

    @triton.jit
    def _store_tile(acc, p_b, p_y, o_m, o_n, m_m, m_n, stride_ym, stride_yn, HAS_BIAS: tl.constexpr):
        # Epilogue: + bias, cast to the output dtype, masked store.
        if HAS_BIAS:
            acc += tl.load(p_b + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        p_yb = p_y + o_m[:, None] * stride_ym + o_n[None, :] * stride_yn
        tl.store(p_yb, acc.to(p_y.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])

    @triton.jit
    def _nvfp4_w4a16_kernel_sm90(
        p_x, p_w, p_s, p_s2, p_b, p_y,
        M, N, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sk, stride_ym, stride_yn,
        HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        o_m, o_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        o_k = tl.arange(0, BLOCK_K)
        o_kb = tl.arange(0, BLOCK_K // 2)
        o_ks = tl.arange(0, BLOCK_K // 16)
        m_m = o_m < M
        m_n = o_n < N
        p_xb = p_x + o_m[:, None] * stride_xm + o_k[None, :] * stride_xk
        p_wb = p_w + o_n[:, None] * stride_wn + o_kb[None, :] * stride_wk
        p_sb = p_s + o_n[:, None] * stride_sn + o_ks[None, :] * stride_sk
        # Codes and scales are decoded through fp16 bit patterns (value * 2^-14 and value * 2^-8); undo both with
        # one power of two folded into the tensor scale.
        s2 = tl.load(p_s2).to(tl.float32) * 4194304.0  # 2^22

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                b_x = tl.load(p_xb, mask=m_m[:, None], other=0.0)
                b_w = tl.load(p_wb, mask=m_n[:, None], other=0)
                b_s = tl.load(p_sb, mask=m_n[:, None], other=0)
            else:
                b_x = tl.load(p_xb, mask=m_m[:, None] & (k0 + o_k[None, :] < K), other=0.0)
                b_w = tl.load(p_wb, mask=m_n[:, None] & (k0 // 2 + o_kb[None, :] < K // 2), other=0)
                b_s = tl.load(p_sb, mask=m_n[:, None] & (k0 // 16 + o_ks[None, :] < K // 16), other=0)
            b_sf = _e4m3_bits_as_f16(b_s).to(tl.float32) * s2
            # One scale per 16 codes = per 8 bytes of the packed tile.
            b_sf = tl.reshape(tl.broadcast_to(b_sf[:, :, None], (BLOCK_N, BLOCK_K // 16, 8)),
                              (BLOCK_N, BLOCK_K // 2))
            b_wi = b_w.to(tl.int32)
            b_lo = (_e2m1_bits_as_f16(b_wi & 0x0F).to(tl.float32) * b_sf).to(b_x.dtype)
            b_hi = (_e2m1_bits_as_f16(b_wi >> 4).to(tl.float32) * b_sf).to(b_x.dtype)
            # Even k sits in the low nibble: interleave (lo, hi) back to [BLOCK_N, BLOCK_K].
            b_wk = tl.reshape(tl.join(b_lo, b_hi), (BLOCK_N, BLOCK_K))
            acc = tl.dot(b_x, tl.trans(b_wk), acc)
            p_xb += BLOCK_K * stride_xk
            p_wb += (BLOCK_K // 2) * stride_wk
            p_sb += (BLOCK_K // 16) * stride_sk

        _store_tile(acc, p_b, p_y, o_m, o_n, m_m, m_n, stride_ym, stride_yn, HAS_BIAS)

    @triton.jit
    def _nvfp4_w4a16_kernel_sm100(
        p_x, p_w, p_s, p_s2, p_b, p_y,
        M, N, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sk, stride_ym, stride_yn,
        HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # UNTESTED on hardware: block-scaled dot with the packed E2M1 tile as the K-packed right operand and the
        # E4M3 block scales ([BLOCK_N, BLOCK_K / 16], i.e. group size 16) passed untransposed.
        o_m, o_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        o_k = tl.arange(0, BLOCK_K)
        o_kb = tl.arange(0, BLOCK_K // 2)
        o_ks = tl.arange(0, BLOCK_K // 16)
        m_m = o_m < M
        m_n = o_n < N
        p_xb = p_x + o_m[:, None] * stride_xm + o_k[None, :] * stride_xk
        p_wb = p_w + o_kb[:, None] * stride_wk + o_n[None, :] * stride_wn
        p_sb = p_s + o_n[:, None] * stride_sn + o_ks[None, :] * stride_sk

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                b_x = tl.load(p_xb, mask=m_m[:, None], other=0.0)
                b_w = tl.load(p_wb, mask=m_n[None, :], other=0)
                b_s = tl.load(p_sb, mask=m_n[:, None], other=0)
            else:
                b_x = tl.load(p_xb, mask=m_m[:, None] & (k0 + o_k[None, :] < K), other=0.0)
                b_w = tl.load(p_wb, mask=(k0 // 2 + o_kb[:, None] < K // 2) & m_n[None, :], other=0)
                b_s = tl.load(p_sb, mask=m_n[:, None] & (k0 // 16 + o_ks[None, :] < K // 16), other=0)
            acc = tl.dot_scaled(b_x, None, "bf16", b_w, b_s.to(tl.float8e4nv, bitcast=True), "e2m1", acc)
            p_xb += BLOCK_K * stride_xk
            p_wb += (BLOCK_K // 2) * stride_wk
            p_sb += (BLOCK_K // 16) * stride_sk

        acc = acc * tl.load(p_s2).to(tl.float32)
        _store_tile(acc, p_b, p_y, o_m, o_n, m_m, m_n, stride_ym, stride_yn, HAS_BIAS)

    @triton.jit
    def _nvfp4_dequant_kernel(p_w, p_s, p_s2, p_out, N, K2, stride_wn, stride_sn, stride_on,
                              BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr):
        # One [BLOCK_N, 2 * BLOCK_KB] tile of W: each packed byte holds codes 2j (low nibble) and 2j + 1.
        o_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        o_kb = tl.program_id(1) * BLOCK_KB + tl.arange(0, BLOCK_KB)
        mask = (o_n[:, None] < N) & (o_kb[None, :] < K2)
        b_w = tl.load(p_w + o_n[:, None] * stride_wn + o_kb[None, :], mask=mask, other=0).to(tl.int32)
        b_s = tl.load(p_s + o_n[:, None] * stride_sn + o_kb[None, :] // 8, mask=mask, other=0)
        s2 = tl.load(p_s2).to(tl.float32) * 4194304.0  # 2^22 undoes the 2^-8 and 2^-14 of the fp16 decodes
        b_sf = _e4m3_bits_as_f16(b_s).to(tl.float32) * s2
        b_lo = _e2m1_bits_as_f16(b_w & 0x0F).to(tl.float32) * b_sf
        b_hi = _e2m1_bits_as_f16(b_w >> 4).to(tl.float32) * b_sf
        b_out = tl.reshape(tl.join(b_lo, b_hi), (BLOCK_N, 2 * BLOCK_KB))
        o_k = tl.program_id(1) * 2 * BLOCK_KB + tl.arange(0, 2 * BLOCK_KB)
        tl.store(p_out + o_n[:, None] * stride_on + o_k[None, :], b_out.to(p_out.dtype.element_ty),
                 mask=(o_n[:, None] < N) & (o_k[None, :] < 2 * K2))

    @triton.jit
    def _fp8_quantize_rows_kernel(p_x, p_q, p_scale, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
        # One row per program: amax, scale = amax / 448 (1 for an all-zero row), q = clamp(x / scale) in E4M3.
        row = tl.program_id(0)
        o_k = tl.arange(0, BLOCK_K)
        mask = o_k < K
        b_x = tl.load(p_x + row * stride_xm + o_k, mask=mask, other=0.0).to(tl.float32)
        scale = tl.max(tl.abs(b_x), axis=0) / 448.0
        scale = tl.where(scale > 0, scale, 1.0)
        b_q = tl.clamp(tl.math.div_rn(b_x, scale), -448.0, 448.0)
        tl.store(p_q + row * stride_qm + o_k, b_q.to(p_q.dtype.element_ty), mask=mask)
        tl.store(p_scale + row, scale)


def nvfp4_dequant_triton(weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor,
                         dtype: torch.dtype = torch.bfloat16, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed NVFP4 -> [N, K] in `dtype` in one Triton pass; bit-identical to quant.nvfp4.dequantize_nvfp4
    (fp32 products, one rounding)."""
    if not HAS_TRITON:
        raise RuntimeError("nvfp4_dequant_triton needs triton, which is not installed")
    n, k2 = weight.shape
    if weight.dtype != torch.uint8:
        raise TypeError(f"nvfp4 weight must be uint8 (packed E2M1), got {weight.dtype}")
    if weight_scale.shape != (n, 2 * k2 // BLOCK_SIZE):
        raise ValueError(f"weight_scale shape {tuple(weight_scale.shape)} != {(n, 2 * k2 // BLOCK_SIZE)}")
    if out is None:
        out = torch.empty(n, 2 * k2, dtype=dtype, device=weight.device)
    weight, scale_u8 = weight.contiguous(), weight_scale.contiguous().view(torch.uint8)
    block_n, block_kb = 32, 64
    grid = (triton.cdiv(n, block_n), triton.cdiv(k2, block_kb))
    _nvfp4_dequant_kernel[grid](weight, scale_u8, weight_scale_2, out, n, k2, weight.stride(0),
                                scale_u8.stride(0), out.stride(0), BLOCK_N=block_n, BLOCK_KB=block_kb)
    return out


def fp8_quantize_rows_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (float8_e4m3fn [M, K], float32 [M, 1] scales) in one pass; equals
    quant.fp8.quantize_fp8_per_row."""
    if not HAS_TRITON:
        raise RuntimeError("fp8_quantize_rows_triton needs triton, which is not installed")
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    block_k = triton.next_power_of_2(k)
    _fp8_quantize_rows_kernel[(m,)](x, q, scale, k, x.stride(0), q.stride(0), BLOCK_K=block_k,
                                    num_warps=4 if block_k <= 4096 else 8)
    return q, scale



def _launch_nvfp4(kernel, default_config: dict, x, weight, weight_scale, weight_scale_2, bias, out, config):
    if not HAS_TRITON:
        raise RuntimeError("the Triton NVFP4 GEMM needs triton, which is not installed")
    n, k = _check_nvfp4_args(x, weight, weight_scale)
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    elif out.shape != (m, n):
        raise ValueError(f"out must have shape {(m, n)}, got {tuple(out.shape)}")
    cfg = dict(default_config if config is None else config)
    block_k = cfg["BLOCK_K"]
    if block_k < 32 or block_k & (block_k - 1):
        raise ValueError(f"BLOCK_K must be a power of two >= 32, got {block_k}")
    scale_u8 = weight_scale.view(torch.uint8)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    kernel[grid](
        x2, weight, scale_u8, weight_scale_2, x2 if bias is None else bias, out,
        m, n, k,
        x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), scale_u8.stride(0), scale_u8.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, **cfg,
    )
    return out.view(*x.shape[:-1], n)


def nvfp4_linear_triton(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                        weight_scale_2: torch.Tensor, bias: torch.Tensor | None = None, *,
                        out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Triton W4A16 GEMM (dequantizes weight tiles in registers). Same arguments as nvfp4_linear_ref, plus
    `out` ([M, N] with M = prod(x.shape[:-1]), written in place) and a launch `config` override.
    x may be bf16 / fp16 (tensor cores) or fp32 (used by the CPU interpreter tests)."""
    m = x.numel() // max(x.shape[-1], 1)
    return _launch_nvfp4(_nvfp4_w4a16_kernel_sm90 if HAS_TRITON else None,
                         _pick_config(NVFP4_SM90_CONFIGS, m),
                         x, weight, weight_scale, weight_scale_2, bias, out, config)


def nvfp4_linear_sm100(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                       weight_scale_2: torch.Tensor, bias: torch.Tensor | None = None, *,
                       out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """UNTESTED Blackwell path (tl.dot_scaled, bf16 x E2M1). Same arguments as nvfp4_linear_triton."""
    return _launch_nvfp4(_nvfp4_w4a16_kernel_sm100 if HAS_TRITON else None, NVFP4_SM100_CONFIG,
                         x, weight, weight_scale, weight_scale_2, bias, out, config)


NVFP4_DEQUANT_MIN_M = 256
"""From this many activation rows up, auto dispatch dequantizes W to a bf16 scratch tensor and calls cuBLAS (the
dequantization costs O(N K), the GEMM O(M N K)); below it, the fused kernel reads 4-bit weights only. On an H200
(bench/quant.py, docs/quantization.md) dequant + cuBLAS won at every M measured, 256 to 10560."""

_NVFP4_KERNELS = {"triton": nvfp4_linear_triton, "sm100": nvfp4_linear_sm100, "dequant": nvfp4_linear_dequant}


# Registered as a custom op so torch.compile / CUDA graphs see one opaque node with a shape-only fake.
@torch.library.custom_op("sana_wm_quant::nvfp4_linear", mutates_args=(), device_types="cuda")
def _nvfp4_linear_op(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     weight_scale_2: torch.Tensor, bias: torch.Tensor | None, kernel: str) -> torch.Tensor:
    return _NVFP4_KERNELS[kernel](x.contiguous(), weight, weight_scale, weight_scale_2, bias)


@_nvfp4_linear_op.register_fake
def _(x, weight, weight_scale, weight_scale_2, bias, kernel):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("sana_wm_quant::fp8_quantize_rows", mutates_args=(), device_types="cuda")
def _fp8_quantize_rows_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fp8_quantize_rows_triton(x)


@_fp8_quantize_rows_op.register_fake
def _(x):
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], 1), dtype=torch.float32))


# Read once at import: the dispatch below must stay traceable by torch.compile (fullgraph) and cheap per call.
SM100_OPT_IN = os.environ.get("SANA_WM_NVFP4_SM100", "0") == "1"
"""Let auto dispatch use the untested tl.dot_scaled kernel on compute capability >= 10."""


def _capability(device: torch.device) -> tuple[int, int]:
    # get_device_properties (not get_device_capability) is what dynamo constant-folds.
    props = torch.cuda.get_device_properties(device)
    return props.major, props.minor


def _use_sm100(device: torch.device) -> bool:
    return SM100_OPT_IN and _capability(device)[0] >= 10


def nvfp4_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                 weight_scale_2: torch.Tensor, bias: torch.Tensor | None = None,
                 backend: str = "auto") -> torch.Tensor:
    """y = x @ dequant(W)^T + bias for an NVFP4 weight.

    Args:
        x: [..., K] activations (bf16 / fp16 on CUDA; any float elsewhere).
        weight: uint8 [N, K/2]; weight_scale: float8_e4m3fn [N, K/16]; weight_scale_2: float32 [].
        bias: [N] or None.
        backend: "auto" (on CUDA with triton: the fused kernel below NVFP4_DEQUANT_MIN_M rows, dequant above;
            else the fp32 reference), "torch" (reference), "dequant", "triton", "sm100" (untested; auto picks
            it only with SANA_WM_NVFP4_SM100=1 on cc >= 10).
    Returns:
        [..., N] in x.dtype.
    """
    if backend == "auto":
        fast = (x.is_cuda and HAS_TRITON and x.dtype in (torch.bfloat16, torch.float16)
                and _capability(x.device) >= (8, 0))
        if not fast:
            backend = "torch"
        elif _use_sm100(x.device):
            backend = "sm100"
        else:
            backend = "dequant" if x.numel() // max(x.shape[-1], 1) >= NVFP4_DEQUANT_MIN_M else "triton"
    if backend in ("triton", "sm100", "dequant") and x.is_cuda and HAS_TRITON:
        if torch.compiler.is_compiling():  # the custom op costs tens of microseconds a call in eager mode
            return _nvfp4_linear_op(x, weight, weight_scale, weight_scale_2, bias, backend)
        return _NVFP4_KERNELS[backend](x.contiguous(), weight, weight_scale, weight_scale_2, bias)
    if backend == "triton":
        return nvfp4_linear_triton(x, weight, weight_scale, weight_scale_2, bias)
    if backend == "sm100":
        return nvfp4_linear_sm100(x, weight, weight_scale, weight_scale_2, bias)
    if backend == "dequant":
        return nvfp4_linear_dequant(x, weight, weight_scale, weight_scale_2, bias)
    if backend == "torch":
        return nvfp4_linear_ref(x, weight, weight_scale, weight_scale_2, bias)
    raise ValueError(f"nvfp4_linear: unknown backend {backend!r} (choose from auto, torch, dequant, triton, sm100)")


# ---------------------------------------------------------------------------------------------------------------
# FP8
# ---------------------------------------------------------------------------------------------------------------
def _prequantized(x: torch.Tensor, input_scale: torch.Tensor | None, block_size: int | None,
                  out_dtype: torch.dtype | None) -> bool:
    """Whether x is an activation already quantized with the static `input_scale` (then out_dtype is needed)."""
    if x.dtype != torch.float8_e4m3fn:
        return False
    if input_scale is None or block_size is not None or out_dtype is None:
        raise ValueError("an FP8 (already quantized) input needs a per-tensor weight, its static input_scale and "
                         "an out_dtype")
    return True


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
                   block_size: int | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """fp32 reference. x [..., K]; weight float8_e4m3fn [N, K]; weight_scale fp32 [] (per tensor: activations
    are quantized per tensor with a static `input_scale`, else per token with their own row amax) or
    [ceil(N/b), ceil(K/b)] for block_size b (activations stay unquantized). Returns [..., N] in x.dtype, or in
    out_dtype; an x in float8_e4m3fn is taken as already quantized with `input_scale` (out_dtype required)."""
    w = dequantize_fp8(weight, weight_scale, block_size, torch.float32)
    if _prequantized(x, input_scale, block_size, out_dtype):
        xf = x.float() * input_scale.float()
    elif block_size is None:
        if input_scale is None:
            xq, sx = quantize_fp8_per_row(x)
        else:
            xq, sx = quantize_fp8_per_tensor(x, input_scale)
        xf = xq.float() * sx
    else:
        xf = x.float()
    y = xf @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype or x.dtype)


# Hopper's FP8 tensor cores accumulate in reduced precision; cuBLAS's default promotes the accumulator to fp32
# every few K-steps, use_fast_accum skips that. On the H200 (bench/results/2026-12-01_h200_quant_gemm_round5.json)
# fast accumulation took the row-wise FP8 GEMM from 1.42-1.59x to 1.56-1.89x bf16 speed at the model's shapes for
# a relative RMS error of 1.9-2.5e-3 instead of 1.7e-3 against the same FP8 operands in fp32 (rounding the
# operands to E4M3 costs about ten times more).
# SANA_WM_FP8_FAST_ACCUM=0 turns it off.
FP8_FAST_ACCUM = os.environ.get("SANA_WM_FP8_FAST_ACCUM", "1") != "0"

# Under torch.compile the activations are quantized with plain torch ops (SANA_WM_FP8_ACT_QUANT=inductor, the
# default), so inductor fuses the per-token amax and the E4M3 cast into the kernel that produces x (norm, modulate,
# gate); SANA_WM_FP8_ACT_QUANT=triton calls the Triton quantizer as an opaque custom op, one more pass over the
# bf16 activations per linear. H200, round 10: FP8 generator 176.3 ms per chunk with inductor, 181.5 with triton
# (bench/results). Outside torch.compile the Triton quantizer runs either way.
FP8_ACT_QUANT = os.environ.get("SANA_WM_FP8_ACT_QUANT", "inductor")


def _fp8_activations(x2: torch.Tensor, input_scale: torch.Tensor | None, prequantized: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] activations -> (E4M3 [M, K], fp32 scale: [] static, [M, 1] per token) for torch._scaled_mm."""
    if prequantized:
        return x2, input_scale.float().reshape(())
    if input_scale is not None:
        return quantize_fp8_per_tensor(x2, input_scale)
    # Per-token scales: one fused pass on CUDA (see FP8_ACT_QUANT under torch.compile).
    if not (x2.is_cuda and HAS_TRITON):
        return quantize_fp8_per_row(x2)
    if torch.compiler.is_compiling():
        return quantize_fp8_per_row(x2) if FP8_ACT_QUANT == "inductor" else _fp8_quantize_rows_op(x2)
    return fp8_quantize_rows_triton(x2)


def fp8_linear_scaled_mm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-tensor FP8 x FP8 GEMM through torch._scaled_mm (fp32 accumulation), activations quantized on the fly
    (or, in float8_e4m3fn with the static input_scale and an out_dtype, already quantized by their producer).
    Needs K a multiple of 16 and x in bf16 / fp16. Same arguments as fp8_linear_ref without block_size.

    An N that is not a multiple of 16 (the GDN blocks' beta / gate projections: N = 20 heads) is padded with zero
    weight rows for the GEMM and sliced off after; the other outputs are unchanged by the padding. (These layers
    used to fall back to the fp32 reference: an fp32 copy of the activations and an fp32 GEMM per call.)"""
    n, k = weight.shape
    if k % 16:
        raise ValueError(f"torch._scaled_mm needs K divisible by 16, got K={k}")
    prequantized = _prequantized(x, input_scale, None, out_dtype)
    out_dtype = out_dtype or x.dtype
    if out_dtype not in (torch.bfloat16, torch.float16) or not (prequantized or x.dtype == out_dtype):
        raise TypeError(f"fp8_linear_scaled_mm: x must be bf16 or fp16 (or FP8 with an out_dtype), got {x.dtype}")
    n_pad = -n % 16
    if n_pad:
        weight = F.pad(weight.view(torch.uint8), (0, 0, 0, n_pad)).view(weight.dtype)   # pad has no fp8 kernel
        bias = None if bias is None else F.pad(bias, (0, n_pad))
    x2 = x.reshape(-1, k)
    w_scale = weight_scale.float().reshape(())
    xq, sx = _fp8_activations(x2, input_scale, prequantized)
    if input_scale is None:   # row-wise _scaled_mm (per-token x scales) takes the weight scale per column
        w_scale = w_scale.expand(1, n + n_pad).contiguous()
    y = torch._scaled_mm(xq, weight.t(), sx, w_scale, bias=None if bias is None else bias.to(out_dtype),
                         out_dtype=out_dtype, use_fast_accum=FP8_FAST_ACCUM)
    return y[:, :n].reshape(*x.shape[:-1], n)   # a view (padded or not)


def fp8_linear_stacked(x: torch.Tensor, weight: torch.Tensor, weight_scales: list[torch.Tensor],
                       sizes: list[int], biases: list[torch.Tensor | None],
                       input_scale: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
                       ) -> list[torch.Tensor]:
    """Per-tensor FP8 linears that read the same x (one shared static input_scale, or none: per-token scales) as
    one GEMM. weight: float8_e4m3fn [N, K], their weights stacked row-wise (sum(sizes) rows, then zero rows up to a
    multiple of 16); weight_scales: their fp32 scalar scales; biases: theirs (None where a layer has none).
    Returns one [..., n_i] output in x.dtype per layer (views of one GEMM output where no rescale is needed):
    - per-token activation scales: row-wise torch._scaled_mm with each column's own weight scale and the biases in
      its epilogue: the arithmetic of separate fp8_linear calls;
    - static input_scale: per-tensor torch._scaled_mm at the first layer's weight scale; every other layer's
      output is multiplied by its scale ratio (and gets its bias) after, in fp32 (one more bf16 rounding than a
      separate call: within bf16 tolerance; under torch.compile the consumer's kernel absorbs it).
    An x in float8_e4m3fn is taken as already quantized with the static input_scale (then out_dtype says the
    outputs' dtype). Off CUDA (or below sm_89) the same arithmetic runs in fp32 in place of torch._scaled_mm."""
    n_rows, k = weight.shape
    if sum(sizes) > n_rows or n_rows % 16 or k % 16:
        raise ValueError(f"fp8_linear_stacked: weight {tuple(weight.shape)} must hold sum(sizes) = {sum(sizes)} "
                         "rows padded to a multiple of 16, with K a multiple of 16")
    prequantized = _prequantized(x, input_scale, None, out_dtype)
    out_dtype = out_dtype or x.dtype
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"fp8_linear_stacked: x must be a float tensor, got {x.dtype}")
    x2 = x.reshape(-1, k)
    xq, sx = _fp8_activations(x2, input_scale, prequantized)
    static = input_scale is not None
    scales = [s.float().reshape(()) for s in weight_scales]
    if static:
        w_scale, bias = scales[0], None
    else:
        pad = n_rows - sum(sizes)
        w_scale = torch.cat([s.expand(n) for s, n in zip(scales, sizes)] + [scales[0].expand(pad)]).reshape(1, -1)
        bias = None
        if any(b is not None for b in biases):
            zeros = x.new_zeros(n_rows, dtype=out_dtype)
            bias = torch.cat([zeros[:n] if b is None else b.to(out_dtype) for b, n in zip(biases, sizes)]
                             + [zeros[:pad]])
    if x2.is_cuda and out_dtype != torch.float32 and _capability(x2.device) >= (8, 9):
        y = torch._scaled_mm(xq, weight.t(), sx, w_scale, bias=bias, out_dtype=out_dtype,
                             use_fast_accum=FP8_FAST_ACCUM)
    else:   # torch._scaled_mm's arithmetic in fp32: scale the fp32 product, add the bias, round once
        y = (xq.float() @ weight.float().t()) * (sx * w_scale)
        y = (y if bias is None else y + bias.float()).to(out_dtype)
    outs, start = [], 0
    for i, (n, b) in enumerate(zip(sizes, biases)):
        part = y[:, start:start + n]
        start += n
        if static and (i > 0 or b is not None):
            part = part.float() * (scales[i] / scales[0])
            part = (part if b is None else part + b.float()).to(out_dtype)
        outs.append(part.reshape(*x.shape[:-1], n))
    return outs


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
               block_size: int | None = None, backend: str = "auto",
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x @ dequant(W)^T + bias for an FP8 weight (see fp8_linear_ref for the activation recipe; an x already
    quantized with the static input_scale, float8_e4m3fn, needs out_dtype).

    backend: "auto" (per-tensor on CUDA cc >= 8.9 with K % 16 == 0: scaled_mm; per-block on CUDA: dequant;
    otherwise torch), "torch", "scaled_mm", "dequant" (dequantize W to x.dtype + F.linear, activations kept).
    """
    k = weight.shape[1]
    if backend == "auto":
        backend = "torch"
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16, torch.float8_e4m3fn):
            if block_size is not None:
                backend = "dequant"
            elif _capability(x.device) >= (8, 9) and k % 16 == 0:
                backend = "scaled_mm"
    if backend == "scaled_mm":
        if block_size is not None:
            raise ValueError("fp8_linear: the scaled_mm backend takes per-tensor weights only")
        return fp8_linear_scaled_mm(x, weight, weight_scale, bias, input_scale, out_dtype)
    if backend == "dequant":
        if x.dtype == torch.float8_e4m3fn:
            raise ValueError("fp8_linear: the dequant backend takes unquantized activations")
        w = dequantize_fp8(weight, weight_scale, block_size, x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))
    if backend == "torch":
        return fp8_linear_ref(x, weight, weight_scale, bias, input_scale, block_size, out_dtype)
    raise ValueError(f"fp8_linear: unknown backend {backend!r} (choose from auto, torch, scaled_mm, dequant)")
