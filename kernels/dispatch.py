"""One rule for every op in `kernels/`: Triton on CUDA, the PyTorch reference elsewhere."""
from __future__ import annotations

import contextlib
import importlib.util
import os

from torch import Tensor

# Whether triton is installed, decided once at import: `use_triton` then stays free of imports and
# try/except, so torch.compile traces through the public functions without a graph break.
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def use_triton(x: Tensor, impl: str) -> bool:
    """impl: "auto" (Triton for CUDA tensors), "triton" or "reference"."""
    if impl == "reference":
        return False
    if impl == "triton":
        return True
    # SANA_WM_KERNELS=reference forces the PyTorch references everywhere (baselines, debugging, training).
    return x.is_cuda and HAVE_TRITON and os.environ.get("SANA_WM_KERNELS", "auto") != "reference"


@contextlib.contextmanager
def reference_kernels():
    """Within the block, "auto" dispatch picks the PyTorch references even on CUDA (e.g. for ONNX export,
    whose tracer needs plain ops); the previous SANA_WM_KERNELS setting comes back afterwards."""
    old = os.environ.get("SANA_WM_KERNELS")
    os.environ["SANA_WM_KERNELS"] = "reference"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SANA_WM_KERNELS", None)
        else:
            os.environ["SANA_WM_KERNELS"] = old
