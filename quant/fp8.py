"""FP8 E4M3 weight format with a per-tensor or per-block (default 128 x 128) FP32 scale.

    weight        float8_e4m3fn  [N, K]
    weight_scale  float32        []                               per tensor
                                 [ceil(N / b), ceil(K / b)]       per b x b block (the last blocks may be partial)

    W[n, k] = float(weight[n, k]) * weight_scale[n // b, k // b]

scale = amax / 448 and weight = (W / scale) cast with round-to-nearest-even, as ModelOpt's FP8QTensor does. A zero
amax (all-zero tensor or block) gets scale 1.0 rather than 0, so quantization never divides 0 by 0; such
weights dequantize to exact zeros. Activations use the same per-tensor recipe (`quantize_fp8_per_tensor`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from quant.nvfp4 import check_finite

E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn magnitude."""
DEFAULT_BLOCK = 128
"""Edge of the square weight blocks of the per-block variant (DeepSeek-V3 / TE Float8BlockScaling size)."""


class FP8Tensor(NamedTuple):
    """A quantized 2-D weight; `block_size` None means one scale for the tensor."""

    weight: torch.Tensor
    """float8_e4m3fn [N, K]."""
    weight_scale: torch.Tensor
    """float32 [] or [ceil(N/b), ceil(K/b)]."""
    block_size: int | None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.weight_scale, self.block_size, dtype)


def _safe_scale(amax: torch.Tensor) -> torch.Tensor:
    scale = amax.float() / E4M3_MAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _cast_e4m3(x: torch.Tensor) -> torch.Tensor:
    # amax / (amax / 448) can land a hair above 448; the cast does not saturate, so clamp first.
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_fp8_per_tensor(x: torch.Tensor, scale: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Any-shape tensor -> (float8_e4m3fn same shape, float32 [] scale). No host sync, no finiteness check:
    this also quantizes activations inside forward. Pass `scale` for a static (calibrated) scale."""
    if scale is None:
        scale = _safe_scale(x.detach().abs().amax())
    return _cast_e4m3(x.float() / scale), scale


def quantize_fp8_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., K] -> (float8_e4m3fn same shape, float32 [..., 1] scales): one scale per row (per token), so one
    outlier token does not crush the resolution of all others. No host sync (used inside forward)."""
    scale = _safe_scale(x.detach().abs().amax(dim=-1, keepdim=True))
    return _cast_e4m3(x.float() / scale), scale


def _block_view(shape: tuple[int, int], b: int) -> tuple[int, int]:
    return math.ceil(shape[0] / b), math.ceil(shape[1] / b)


def _expand_block_scale(scale: torch.Tensor, shape: tuple[int, int], b: int) -> torch.Tensor:
    return scale.repeat_interleave(b, 0).repeat_interleave(b, 1)[: shape[0], : shape[1]]


def quantize_fp8(w: torch.Tensor, block_size: int | None = None, name: str = "weight") -> FP8Tensor:
    """Quantize a 2-D weight [N, K] to FP8 E4M3.

    Args:
        w: [N, K] float tensor; computation is in fp32 on w's device.
        block_size: None for one per-tensor scale, else the edge b of square b x b scale blocks.
        name: used in error messages.
    Returns:
        FP8Tensor(weight fp8 [N, K], weight_scale fp32 [] or [ceil(N/b), ceil(K/b)], block_size).
    """
    if w.ndim != 2:
        raise ValueError(f"{name}: FP8 quantizes 2-D weights [N, K], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point weight, got {w.dtype}")
    check_finite(w, name)
    w32 = w.detach().float()
    if block_size is None:
        q, scale = quantize_fp8_per_tensor(w32)
        return FP8Tensor(q, scale, None)
    if block_size <= 0:
        raise ValueError(f"{name}: block_size must be positive, got {block_size}")
    n, k = w32.shape
    bn, bk = _block_view((n, k), block_size)
    padded = torch.zeros(bn * block_size, bk * block_size, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w32
    amax = padded.abs().view(bn, block_size, bk, block_size).amax(dim=(1, 3))
    scale = _safe_scale(amax)
    q = _cast_e4m3(w32 / _expand_block_scale(scale, (n, k), block_size))
    return FP8Tensor(q, scale, block_size)


def dequantize_fp8(weight: torch.Tensor, weight_scale: torch.Tensor, block_size: int | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FP8 weight + scale -> [N, K] in `dtype` (fp32 math, one rounding at the end)."""
    if block_size is None:
        if weight_scale.numel() != 1:
            raise ValueError(f"weight_scale: per-tensor FP8 needs one scale, got shape {tuple(weight_scale.shape)}")
        return (weight.float() * weight_scale.float().reshape(())).to(dtype)
    expected = _block_view(tuple(weight.shape), block_size)
    if tuple(weight_scale.shape) != expected:
        raise ValueError(f"weight_scale: expected shape {expected} for weight {tuple(weight.shape)} with "
                         f"{block_size}x{block_size} blocks, got {tuple(weight_scale.shape)}")
    full = _expand_block_scale(weight_scale.float(), tuple(weight.shape), block_size)
    return (weight.float() * full).to(dtype)


def infer_block_size(weight_shape: tuple[int, int], scale_shape: tuple[int, ...],
                     preferred: int = DEFAULT_BLOCK) -> int | None:
    """Block size implied by a stored scale: None for a per-tensor scale, `preferred` if consistent, else the
    smallest power of two that is. Raises ValueError when no block size explains the shapes."""
    if len(scale_shape) == 0 or (len(scale_shape) == 1 and scale_shape[0] == 1):
        return None
    if len(scale_shape) != 2:
        raise ValueError(f"weight_scale: expected [] or a 2-D block grid, got shape {tuple(scale_shape)}")
    candidates = [preferred] + [2 ** i for i in range(13)]
    for b in candidates:
        if _block_view(weight_shape, b) == tuple(scale_shape):
            return b
    raise ValueError(f"weight_scale: shape {tuple(scale_shape)} is not a block grid of weight {weight_shape}")


def fp8_nbytes(n: int, k: int, block_size: int | None = None) -> int:
    """Bytes of one [N, K] FP8 weight with its scales."""
    scales = 1 if block_size is None else math.prod(_block_view((n, k), block_size))
    return n * k + 4 * scales
