"""FP8 attention in the softmax blocks, emulated: the arithmetic of an FP8 flash-attention forward (cuDNN's,
FlashAttention-3's) in PyTorch, so that its cost in image quality can be measured on any machine before any GPU
time goes into it (`enable_fp8_attention_`; bench/quant_quality.py; docs/quantization.md has the result: not
adopted, off by default).

Q, K and V are rounded to float8_e4m3fn with per-tensor scales (x ~ x_e4m3 * descale; those kernels take one
descale per tensor); the scores are fp32; each row's probabilities relative to the row maximum (in (0, 1]) are
rounded to E4M3 after scaling by 448 (`P_SCALE`); the value product accumulates in fp32 and the row sum of the
unrounded probabilities divides it. (The kernels round P against the running maximum of their online softmax;
the difference is below one E4M3 rounding of P.)

Measured on the shipped model (docs/quantization.md): E4M3 keys cost the most (35.6 dB alone); subtracting the
keys' mean first (SageAttention's K smoothing, exact for softmax) does not help here (35.2 dB), but INT8 q and k with
one scale per token do: 47.7 dB with E4M3 values and probabilities ("ivp"), 39.6 dB on top of the FP8 static
linears against 39.7 without FP8 attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.attention_int8 import quantize_int8_per_token
from quant.fp8 import E4M3_MAX, quantize_fp8_per_tensor

__all__ = ["P_SCALE", "attention_fp8", "enable_fp8_attention_", "sdpa_fp8_reference"]

P_SCALE = E4M3_MAX
"""Probabilities in (0, 1] times 448 fill E4M3's range; the smallest kept is 2^-9 / 448 ~ 4.4e-6 of the row max."""


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


def _check_operands(operands: str, who: str) -> None:
    if not set(operands) <= set("qkvpi") or ("i" in operands and set("qk") & set(operands)):
        raise ValueError(f"{who}: operands must be letters of 'qkvp', or 'i' (q and k in INT8) with 'v' / 'p', "
                         f"got {operands!r}")


def _softmax_numerator(s: Tensor) -> tuple[Tensor, Tensor]:
    """(exp(s - row max), its row sum): each row's probabilities relative to its maximum, unnormalised."""
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return p, p.sum(dim=-1, keepdim=True)


def _round_p(p: Tensor) -> Tensor:
    """p in (0, 1] rounded to E4M3 after scaling by P_SCALE (the result stays scaled)."""
    return (p * P_SCALE).to(torch.float8_e4m3fn).float()


def sdpa_fp8_reference(q: Tensor, k: Tensor, v: Tensor, descale_q: Tensor, descale_k: Tensor, descale_v: Tensor,
                       scale: float, out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """softmax(q k^T * scale) v from E4M3 inputs with P rounded to E4M3 (see the module docstring). [B, H, Sq, D]."""
    _check(q, k, v, (descale_q, descale_k, descale_v))
    s = (q.float() @ k.float().transpose(-1, -2)) * (descale_q * descale_k * scale)
    p, row_sum = _softmax_numerator(s)
    out = (_round_p(p) @ v.float()) * (descale_v / P_SCALE) / row_sum
    return out.to(out_dtype)


def attention_fp8(q: Tensor, k: Tensor, v: Tensor, scale: float, attn_mask: Tensor | None = None,
                  operands: str = "qkvp") -> Tensor:
    """F.scaled_dot_product_attention(q, k, v, scale=scale) with q, k, v rounded to E4M3 under dynamic
    per-tensor scales and P to E4M3 (result in q's dtype). `operands` names the ones rounded (any of "q", "k",
    "v", "p"; the others stay exact: for finding which rounding costs the quality); "i" rounds q and k to INT8
    with one scale per token instead (`kernels.attention_int8.quantize_int8_per_token`, SageAttention's recipe
    for the score product; "ivp" adds E4M3 values and probabilities). A mask (not in the streaming steady state)
    keeps the exact attention, as the FP8 kernels this stands for take none."""
    if attn_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if set(operands) == set("qkvp"):
        (q8, sq), (k8, sk), (v8, sv) = (quantize_fp8_per_tensor(t) for t in (q, k, v))
        return sdpa_fp8_reference(q8, k8, v8, sq, sk, sv, scale, out_dtype=q.dtype)
    _check_operands(operands, "attention_fp8")

    def rounded(x: Tensor, name: str) -> Tensor:
        if "i" in operands and name in "qk":
            x8, s = quantize_int8_per_token(x)
            return x8.float() * s[..., None]
        if name not in operands:
            return x.float()
        x8, s = quantize_fp8_per_tensor(x)
        return x8.float() * s

    s = (rounded(q, "q") @ rounded(k, "k").transpose(-1, -2)) * scale
    p, row_sum = _softmax_numerator(s)
    if "p" in operands:
        p = _round_p(p) / P_SCALE
    return ((p @ rounded(v, "v")) / row_sum).to(q.dtype)


def enable_fp8_attention_(model: nn.Module, operands: str = "qkvp") -> int:
    """Switch every softmax block's self-attention (main and camera branches) to E4M3 inputs and probabilities
    (`quant.attention`, emulated in PyTorch: slow, for measuring quality); `operands` picks which of q, k, v
    and p are rounded ("" switches it off; "i": q and k in INT8 with per-token scales). Cross-attention stays
    bf16. Returns how many blocks it set."""
    from runtime.attention import SoftmaxAttention

    _check_operands(operands, "enable_fp8_attention_")
    blocks = [m for m in model.modules() if isinstance(m, SoftmaxAttention)]
    for attn in blocks:
        attn.fp8_attention = operands
    return len(blocks)
