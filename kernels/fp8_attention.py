"""FP8 attention for the softmax blocks, emulated: the arithmetic of an FP8 flash-attention forward (cuDNN's,
FlashAttention-3's) in PyTorch, so that its cost in image quality can be measured on any machine before any GPU
time goes into it (bench/quant_quality.py; docs/quantization.md has the result: not adopted).

Q, K and V are rounded to float8_e4m3fn with per-tensor scales (x ~ x_e4m3 * descale; those kernels take one
descale per tensor); the scores are fp32; each row's probabilities relative to the row maximum (in (0, 1]) are
rounded to E4M3 after scaling by 448 (`P_SCALE`); the value product accumulates in fp32 and the row sum of the
unrounded probabilities divides it. (The kernels round P against the running maximum of their online softmax;
the difference is below one E4M3 rounding of P.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["P_SCALE", "attention_fp8", "quantize_per_tensor", "sdpa_fp8_reference"]

E4M3_MAX = 448.0
P_SCALE = 448.0
"""Probabilities in (0, 1] times 448 fill E4M3's range; the smallest kept is 2^-9 / 448 ~ 4.4e-6 of the row max."""


def quantize_per_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x / s rounded to E4M3, s) with s = amax(|x|) / 448 as a float32 scalar tensor (1 for an all-zero x)."""
    amax = x.detach().abs().amax().float()
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def _check(q: Tensor, k: Tensor, v: Tensor, scales) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != torch.float8_e4m3fn or t.dim() != 4:
            raise ValueError(f"sdpa_fp8: {name} must be a float8_e4m3fn [B, H, S, D] tensor, got {t.dtype} "
                             f"{tuple(t.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"sdpa_fp8: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    for s in scales:
        if s.numel() != 1 or s.dtype != torch.float32:
            raise ValueError(f"sdpa_fp8: scales must be float32 scalar tensors, got {s.dtype} {tuple(s.shape)}")


def sdpa_fp8_reference(q: Tensor, k: Tensor, v: Tensor, descale_q: Tensor, descale_k: Tensor, descale_v: Tensor,
                       scale: float, out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """softmax(q k^T * scale) v from E4M3 inputs with P rounded to E4M3 (see the module docstring). [B, H, Sq, D]."""
    _check(q, k, v, (descale_q, descale_k, descale_v))
    s = (q.float() @ k.float().transpose(-1, -2)) * (descale_q * descale_k * scale)
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    row_sum = p.sum(dim=-1, keepdim=True)
    p8 = (p * P_SCALE).to(torch.float8_e4m3fn).float()
    out = (p8 @ v.float()) * (descale_v / P_SCALE) / row_sum
    return out.to(out_dtype)


def attention_fp8(q: Tensor, k: Tensor, v: Tensor, scale: float, attn_mask: Tensor | None = None,
                  operands: str = "qkvp") -> Tensor:
    """F.scaled_dot_product_attention(q, k, v, scale=scale) with q, k, v rounded to E4M3 under dynamic
    per-tensor scales and P to E4M3 (result in q's dtype). `operands` names the ones rounded (any of "q", "k",
    "v", "p"; the others stay exact: for finding which rounding costs the quality). A mask (not in the streaming
    steady state) keeps the exact attention, as the FP8 kernels this stands for take none."""
    if attn_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if set(operands) == set("qkvp"):
        (q8, sq), (k8, sk), (v8, sv) = (quantize_per_tensor(t) for t in (q, k, v))
        return sdpa_fp8_reference(q8, k8, v8, sq, sk, sv, scale, out_dtype=q.dtype)
    if not set(operands) <= set("qkvp"):
        raise ValueError(f"attention_fp8: operands must be letters of 'qkvp', got {operands!r}")

    def rounded(x: Tensor, name: str) -> Tensor:
        if name not in operands:
            return x.float()
        x8, s = quantize_per_tensor(x)
        return x8.float() * s

    s = (rounded(q, "q") @ rounded(k, "k").transpose(-1, -2)) * scale
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    row_sum = p.sum(dim=-1, keepdim=True)
    if "p" in operands:
        p = (p * P_SCALE).to(torch.float8_e4m3fn).float() / P_SCALE
    return ((p @ rounded(v, "v")) / row_sum).to(q.dtype)
