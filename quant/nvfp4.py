"""NVFP4 weight format: E2M1 values in blocks of 16 along K, an E4M3 scale per block, one FP32 scale per tensor.

Layout and arithmetic follow NVIDIA ModelOpt's NVFP4 export (`NVFP4QTensor`, checked against modelopt 0.47), so
a checkpoint written here loads there and the other way round:

    weight          uint8          [N, K/2]   two E2M1 codes per byte, even k in the low nibble
    weight_scale    float8_e4m3fn  [N, K/16]  per-block scale
    weight_scale_2  float32        []         per-tensor scale, amax / (6 * 448)

    W[n, k] = e2m1(code[n, k]) * float(weight_scale[n, k // 16]) * weight_scale_2

E2M1 codes are sign (bit 3) | exponent (bits 2..1) | mantissa (bit 0); the magnitudes of codes 0..7 are
{0, 0.5, 1, 1.5, 2, 3, 4, 6}. Rounding is to nearest with ties to the even code, saturating at 6. A negative value
that rounds to zero keeps its sign bit (code 0x8, "-0"), as ModelOpt does.

Two deliberate departures from ModelOpt, both on inputs where ModelOpt produces NaN:
- An all-zero tensor (or one whose amax / 2688 underflows to 0) gets weight_scale_2 = 1.0 instead of 0, so no
  consumer divides by zero; it still dequantizes to exact zeros.
- NaN / Inf in the input raise ValueError instead of propagating.
All-zero (or underflowing) blocks get block scale 1.0 exactly as in ModelOpt; their codes are 0 so they
dequantize to zeros.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

BLOCK_SIZE = 16
"""Elements of K that share one E4M3 block scale."""
E2M1_MAX = 6.0
"""Largest E2M1 magnitude."""
E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn magnitude."""
E4M3_MIN_SCALE = 2.0 ** -9
"""Smallest positive (subnormal) E4M3 value; block scales are clamped up to it so none rounds to zero."""

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
"""Value of each 4-bit code 0..15."""

# Rounding thresholds between consecutive E2M1 magnitudes. At a tie the even code wins: ties at the midpoints
# below an odd code (0.25, 1.25, 2.5, 5) round down, ties below an even code (0.75, 1.75, 3.5) round up.
_ROUND_UP_ABOVE = (0.25, 1.25, 2.5, 5.0)
_ROUND_UP_FROM = (0.75, 1.75, 3.5)


class NVFP4Tensor(NamedTuple):
    """A quantized 2-D weight in the ModelOpt NVFP4 layout (field names are the checkpoint key suffixes)."""

    weight: torch.Tensor
    """uint8 [N, K/2], packed E2M1 codes."""
    weight_scale: torch.Tensor
    """float8_e4m3fn [N, K/16], per-block scales."""
    weight_scale_2: torch.Tensor
    """float32 [], per-tensor scale."""

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K) of the unpacked weight."""
        return self.weight.shape[0], self.weight.shape[1] * 2

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nvfp4(self.weight, self.weight_scale, self.weight_scale_2, dtype)


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ValueError naming `what` if `x` holds NaN or Inf (quantization would silently spread them)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{what}: cannot quantize a tensor with NaN/Inf: {count} non-finite value(s) of "
                         f"{x.numel()}, first at index {first} = {x[first].item()}")


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round already-scaled values to 4-bit E2M1 codes (uint8 in 0..15), ties to even, saturating at +-6."""
    a = x.abs()
    mag = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for t in _ROUND_UP_ABOVE:
        mag += a > t
    for t in _ROUND_UP_FROM:
        mag += a >= t
    return mag | ((x < 0).to(torch.uint8) << 3)


_DECODE_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of 4-bit codes (any integer dtype, 0..15)."""
    key = (codes.device, dtype)
    table = _DECODE_TABLES.get(key)
    if table is None:  # one host-to-device copy per device, not one per call
        table = _DECODE_TABLES[key] = torch.tensor(E2M1_VALUES, dtype=dtype, device=codes.device)
    return table[codes.long()]


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes -> [..., K/2] uint8; element 2j goes to the low nibble of byte j (ModelOpt / Triton order)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_e2m1: last dim must be even, got {tuple(codes.shape)}")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] uint8 -> [..., K] codes."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_e2m1: expected uint8, got {packed.dtype}")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def nvfp4_global_scale(w: torch.Tensor) -> torch.Tensor:
    """weight_scale_2 = amax / (6 * 448) as float32 [], or 1.0 where that is 0 (see module docstring)."""
    s2 = w.float().abs().amax() / (E2M1_MAX * E4M3_MAX)
    return torch.where(s2 > 0, s2, torch.ones_like(s2))


def quantize_nvfp4(w: torch.Tensor, weight_scale_2: torch.Tensor | None = None, name: str = "weight"
                   ) -> NVFP4Tensor:
    """Quantize a 2-D weight to NVFP4.

    Args:
        w: [N, K] float tensor (fp32 / bf16 / fp16), K a multiple of 16. Computation is in fp32 on w's device.
        weight_scale_2: optional float32 [] tensor scale to use instead of amax / 2688 (e.g. one shared scale
            for weights that are later fused); block scales are then clamped into E4M3's range.
        name: used in error messages.
    Returns:
        NVFP4Tensor(weight uint8 [N, K/2], weight_scale fp8 [N, K/16], weight_scale_2 fp32 []).
    """
    if w.ndim != 2:
        raise ValueError(f"{name}: NVFP4 quantizes 2-D weights [N, K], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point weight, got {w.dtype}")
    n, k = w.shape
    if k % BLOCK_SIZE:
        raise ValueError(f"{name}: K = {k} must be a multiple of {BLOCK_SIZE} for NVFP4 (shape {tuple(w.shape)})")
    check_finite(w, name)
    w32 = w.detach().float()
    if weight_scale_2 is None:
        s2 = nvfp4_global_scale(w32)
    else:
        s2 = weight_scale_2.detach().to(device=w.device, dtype=torch.float32).reshape(())
        if not bool(s2 > 0) or not bool(torch.isfinite(s2)):
            raise ValueError(f"{name}: weight_scale_2 must be positive and finite, got {s2.item()}")
    blocks = w32.view(n, k // BLOCK_SIZE, BLOCK_SIZE)
    # The operation order (amax / (6 * s2), then x / (scale * s2)) is ModelOpt's; other orders round
    # differently in the last bit and break bit-exact interchange.
    scale = blocks.abs().amax(dim=-1) / (E2M1_MAX * s2)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scale = scale.clamp(E4M3_MIN_SCALE, E4M3_MAX).to(torch.float8_e4m3fn)
    scaled = blocks / (scale.float() * s2).unsqueeze(-1)
    codes = e2m1_encode(scaled).view(n, k)
    return NVFP4Tensor(pack_e2m1(codes), scale, s2)


def dequantize_nvfp4(weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed NVFP4 -> [N, K] in `dtype` (computed in fp32, rounded once at the end)."""
    n, k2 = weight.shape
    k = 2 * k2
    if weight_scale.shape != (n, k // BLOCK_SIZE):
        raise ValueError(f"weight_scale: expected shape {(n, k // BLOCK_SIZE)} for weight {tuple(weight.shape)}, "
                         f"got {tuple(weight_scale.shape)}")
    values = e2m1_decode(unpack_e2m1(weight)).view(n, k // BLOCK_SIZE, BLOCK_SIZE)
    block_scale = weight_scale.float() * weight_scale_2.float().reshape(())
    return (values * block_scale.unsqueeze(-1)).view(n, k).to(dtype)


def nvfp4_nbytes(n: int, k: int) -> int:
    """Bytes of one [N, K] NVFP4 weight: packed codes, block scales and the tensor scale."""
    return n * k // 2 + n * k // BLOCK_SIZE + 4
