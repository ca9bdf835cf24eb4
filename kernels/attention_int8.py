"""Softmax attention with INT8 scores (SageAttention's recipe), for the softmax blocks' streaming self-attention:
q and k in INT8 with fp32 scales, the value product in E4M3 (v and the probabilities) or in bf16.

Why: in the FP8 generator the softmax blocks' self-attention (2 x 20 heads, 2640 queries over 8800 keys, D = 112)
takes ~0.9 ms per call in cuDNN's bf16 flash attention, 25 calls and ~23 ms per chunk (H200, round 27d profile),
and Hopper's INT8 / FP8 tensor cores run at twice the bf16 rate. What it costs in quality was measured first, on the
shipped model (docs/quantization.md): all-E4M3 attention costs ~6 dB on the FP8 model (E4M3 keys, 3 mantissa
bits, move the logits); INT8 q and k cost 0.1-0.5 dB (39.64 dB with bf16 values, 39.26 with E4M3 values, against
39.71 without).

The arithmetic (`attention_int8_reference` spells it in PyTorch):
- q, k: int8 codes with fp32 scales per token (amax / 127; k optionally per key tile: one multiply less per
  score, 47.2 vs 47.7 dB at 64 keys in a session-13 throwaway run), head dim zero-padded to a power of two of at
  least 32 (the INT8 tensor-core K step; 112 -> 128); scores = (q8 . k8) * q_scale * k_scale * softmax scale,
  exact int32 products;
- online softmax in fp32; each tile's probabilities relative to the running row maximum, times 448, rounded to
  E4M3 (or bf16) for the value product; the row sum takes the unrounded ones;
- v: E4M3 codes with one fp32 scale per tensor, stored transposed [..., D_pad, N_pad] so that the value product's
  reduction dimension (the keys) is contiguous, as Hopper's FP8 tensor cores require of both operands; or v as it
  is ([..., N, D], bf16) with the value product in bf16: half the tensor-core rate for that product, but nothing
  to quantize or transpose per call.

Measured on the H200 (round 29, `bench.kernels --only attention_int8,attention_int8_sweep,sdpa_pair`): 0.898 ms at
its fastest launch from quantized operands and 1.357 ms with the per-call quantization, against 0.919 ms for cuDNN's
bf16 attention; the FP8 generator with it ran 149.6 ms per chunk against ~140 without. So it stays off by default.
The softmax blocks take it when asked (`runtime.attention.set_attention_kernel_(model, "int8" or "int8_bf16v")`, or
SANA_WM_ATTENTION), as a drop-in that quantizes q, k (and v) on every call: for GPUs with a relatively faster INT8
rate; there, K / V cached already quantized and q quantized in the prep kernel would be the next step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.dispatch import HAVE_TRITON, use_triton

__all__ = ["P_SCALE", "attention_int8", "attention_int8_quantized", "attention_int8_reference", "launch_layout",
           "pad_to", "padded_head_dim", "quantize_int8_per_token", "quantize_v_fp8_transposed"]

E4M3_MAX = 448.0
P_SCALE = E4M3_MAX
"""Probabilities in (0, 1] times 448 fill E4M3's range before the value product."""
INT8_K_STEP = 32
"""The INT8 MMA's reduction step: the head dim is zero-padded to a power of two of at least this."""
KEY_ALIGN = 16
"""The transposed values' key count is padded to a multiple of this (16-byte rows for E4M3)."""


def pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_head_dim(d: int) -> int:
    """The head dim the quantized operands carry: a power of two (Triton's tile sizes) of at least INT8_K_STEP."""
    return max(INT8_K_STEP, 1 << (d - 1).bit_length())


def quantize_int8_per_token(x: Tensor, pad_dim: int | None = None, block: int = 1) -> tuple[Tensor, Tensor]:
    """x [..., N, D] -> (int8 codes [..., N, pad_dim or D], fp32 scales [..., ceil(N / block)]): symmetric, one
    scale per token (block = 1: its amax / 127, so every token uses the full code range) or per block of tokens;
    the padded channels are zero."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp(min=1e-12) / 127
    if block > 1:
        n = x.shape[-2]
        scale = torch.nn.functional.pad(scale, (0, pad_to(n, block) - n)).unflatten(-1, (-1, block)).amax(-1)
    codes = (xf / _per_token(scale, block, x.shape[-2])[..., None]).round().clamp(-127, 127).to(torch.int8)
    if pad_dim is not None and pad_dim > x.shape[-1]:
        codes = torch.nn.functional.pad(codes, (0, pad_dim - x.shape[-1]))
    return codes, scale


def quantize_v_fp8_transposed(v: Tensor, pad_dim: int | None = None) -> tuple[Tensor, Tensor]:
    """v [..., N, D] -> (float8_e4m3fn [..., pad_dim or D, N padded to KEY_ALIGN], fp32 scalar scale): one scale
    per tensor (amax / 448), transposed so that the keys are contiguous; padded entries are zero."""
    n, d = v.shape[-2:]
    scale = (v.float().abs().amax().clamp(min=1e-12) / E4M3_MAX).reshape(())
    vt = v.float().transpose(-1, -2) / scale
    vt = torch.nn.functional.pad(vt, (0, pad_to(n, KEY_ALIGN) - n, 0, (pad_dim or d) - d))
    return vt.to(torch.float8_e4m3fn).contiguous(), scale


def _per_token(scale: Tensor, block: int, n: int) -> Tensor:
    return scale if block == 1 else scale.repeat_interleave(block, dim=-1)[..., :n]


def round_e4m3(x: Tensor) -> Tensor:
    """x rounded to float8_e4m3fn (nearest even), back in fp32: the probabilities' rounding."""
    return x.to(torch.float8_e4m3fn).float()


def _check(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, vt8: Tensor, v_scale: Tensor, d: int,
           key_block: int) -> None:
    if (q8.dtype != torch.int8 or k8.dtype != torch.int8
            or vt8.dtype not in (torch.float8_e4m3fn, torch.bfloat16, torch.float16, torch.float32)):
        raise TypeError(f"attention_int8: q and k must be int8 and v float8_e4m3fn or a float, got {q8.dtype}, "
                        f"{k8.dtype}, {vt8.dtype}")
    if q8.dim() != 4 or k8.dim() != 4 or vt8.dim() != 4:
        raise ValueError("attention_int8: q [B, H, M, Dp], k [B, H, N, Dp] and v transposed [B, H, Dp, Np] (E4M3) "
                         "or [B, H, N, D]")
    dp = q8.shape[-1]
    v_fits = ((vt8.shape[-2] == dp and vt8.shape[-1] >= k8.shape[-2]) if vt8.dtype == torch.float8_e4m3fn
              else vt8.shape[-2:] == (k8.shape[-2], d))
    if (k8.shape[-1] != dp or not v_fits or q8.shape[:2] != k8.shape[:2] or k8.shape[:2] != vt8.shape[:2]
            or dp % INT8_K_STEP or not 0 < d <= dp):
        raise ValueError(f"attention_int8: shapes do not fit: q {tuple(q8.shape)}, k {tuple(k8.shape)}, v^T "
                         f"{tuple(vt8.shape)}, head dim {d} (padded to a multiple of {INT8_K_STEP})")
    key_scales = (*k8.shape[:-2], -(-k8.shape[-2] // key_block))
    if q_scale.shape != q8.shape[:-1] or k_scale.shape != key_scales or v_scale.numel() != 1:
        raise ValueError(f"attention_int8: scales per token of q {tuple(q_scale.shape)}, per {key_block} keys of k "
                         f"{tuple(k_scale.shape)}, one for v ({v_scale.numel()})")


def attention_int8_reference(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, vt8: Tensor,
                             v_scale: Tensor, scale: float, d: int, out_dtype: torch.dtype = torch.bfloat16,
                             key_block: int = 1) -> Tensor:
    """The kernel's arithmetic in fp32 (P rounded against each row's final maximum; the kernel rounds against
    the running one, a difference below one E4M3 rounding of P). Returns [B, H, M, d]."""
    _check(q8, q_scale, k8, k_scale, vt8, v_scale, d, key_block)
    n = k8.shape[-2]
    k_scale = _per_token(k_scale, key_block, n)
    s = (q8.float() @ k8.float().transpose(-1, -2)) * (q_scale[..., :, None] * k_scale[..., None, :] * scale)
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    row_sum = p.sum(dim=-1, keepdim=True)
    if vt8.dtype == torch.float8_e4m3fn:
        p8 = round_e4m3(p * P_SCALE)
        v = vt8[..., :n].float().transpose(-1, -2)
    else:   # the value product in bf16: P and v rounded to bf16
        p8 = (p * P_SCALE).to(torch.bfloat16).float()
        v = torch.nn.functional.pad(vt8.to(torch.bfloat16).float(), (0, q8.shape[-1] - d))
    out = (p8 @ v) * (v_scale.float() / P_SCALE) / row_sum
    return out[..., :d].to(out_dtype)


def attention_int8_quantized(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, vt8: Tensor,
                             v_scale: Tensor, scale: float, d: int, out_dtype: torch.dtype = torch.bfloat16,
                             impl: str = "auto", key_block: int = 1) -> Tensor:
    """Attention from already quantized operands (see the module docstring for the layouts; key_block: keys per k
    scale, 1 or the launch's key tile); [B, H, M, d]."""
    if use_triton(q8, impl):
        _check(q8, q_scale, k8, k_scale, vt8, v_scale, d, key_block)
        return torch.ops.sana_wm.attention_int8(q8, q_scale, k8, k_scale, vt8, v_scale, scale, d, out_dtype,
                                                key_block)
    return attention_int8_reference(q8, q_scale, k8, k_scale, vt8, v_scale, scale, d, out_dtype, key_block)


@torch.library.custom_op("sana_wm::attention_int8", mutates_args=())
def _attention_int8_op(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, vt8: Tensor, v_scale: Tensor,
                       scale: float, d: int, out_dtype: torch.dtype, key_block: int) -> Tensor:
    from kernels.attention_int8_triton import attention_int8_triton

    return attention_int8_triton(q8, q_scale, k8, k_scale, vt8, v_scale, scale, d, out_dtype, key_block=key_block)


@_attention_int8_op.register_fake
def _(q8, q_scale, k8, k_scale, vt8, v_scale, scale, d, out_dtype, key_block):
    return q8.new_empty((*q8.shape[:-1], d), dtype=out_dtype)


def launch_layout() -> tuple[int, bool]:
    """(keys per k scale, E4M3 values) of the default launch (kernels.attention_int8_triton.CONFIG): its key tile
    when it scales keys per tile, else 1 (per token); whether it takes E4M3 values or bf16 ones."""
    if not HAVE_TRITON:
        return 1, True
    from kernels.attention_int8_triton import CONFIG

    return (CONFIG.block_n if CONFIG.tile_scales else 1), CONFIG.v_fp8


def attention_int8(q: Tensor, k: Tensor, v: Tensor, scale: float, impl: str = "auto",
                   key_block: int | None = None, v_fp8: bool | None = None) -> Tensor:
    """F.scaled_dot_product_attention(q, k, v, scale=scale) for [B, H, *, D] inputs, computed with INT8 scores and
    E4M3 or bf16 values (quantized here, per call; k per token or per key tile and v as the default launch takes
    them unless given; result in q's dtype)."""
    d = q.shape[-1]
    dp = padded_head_dim(d)
    launch_block, launch_fp8 = launch_layout()
    key_block = key_block or launch_block
    v_fp8 = launch_fp8 if v_fp8 is None else v_fp8
    q8, qs = quantize_int8_per_token(q, dp)
    k8, ks = quantize_int8_per_token(k, dp, key_block)
    if v_fp8:
        v, vs = quantize_v_fp8_transposed(v, dp)
    else:
        vs = torch.ones((), device=v.device)
    return attention_int8_quantized(q8, qs, k8, ks, v, vs, scale, d, q.dtype, impl, key_block)
