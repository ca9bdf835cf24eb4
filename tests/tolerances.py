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
