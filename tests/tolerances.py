"""Named tolerances and error measures shared by all tests (one place, not ad-hoc atol)."""
import torch

FP32_REL = 1e-5          # fp32 reference vs. an equivalent fp32 computation in another order
FP32_STREAM_REL = 1e-5   # streaming with carried state vs. one chunk-causal forward (fp32)
TF32_REL = 3e-3          # tf32 / Triton default fp32 dots
BF16_REL = 2e-2          # bf16 operands


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives inf."""
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all() or not torch.isfinite(b).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def e4m3_codes_agree(got: torch.Tensor, want: torch.Tensor, max_differing: float,
                     interpreter: bool = False) -> bool:
    """Two float8_e4m3fn results of the same fp32 values computed in another order (or from a bf16-rounded input):
    every element equal or one E4M3 step apart (a value on a rounding boundary), less than `max_differing` of them
    apart. `interpreter`: the Triton interpreter's fp32 -> e4m3 conversion (triton 3.9, CPU) drops the carry when
    rounding up fills the mantissa (31.1 becomes 16, not 32; the GPU's cvt.rn.satfinite gets 32), so exactly those
    elements (`want` a power of two, `got` half of it) are set aside."""
    assert got.dtype == want.dtype == torch.float8_e4m3fn and got.shape == want.shape
    g, w = got.float(), want.float()
    if interpreter:
        carry = (g * 2 == w) & (w != 0) & (torch.log2(w.abs()) == torch.log2(w.abs()).round())
        g = torch.where(carry, w, g)
    step = w.abs().clamp(min=2.0 ** -6) * 2.0 ** -3 + 2.0 ** -9   # one E4M3 step at w (subnormals: 2^-9)
    return bool(((g - w).abs() <= step).all()) and float((g != w).float().mean()) < max_differing
