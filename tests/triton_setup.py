"""What the Triton kernel tests share; import it before any kernel module.

Without CUDA the kernels run in Triton's interpreter, which is read when a kernel is decorated: tests/conftest.py
switches it on for the whole run, and this module does too for a test module imported some other way."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAVE_TRITON = importlib.util.find_spec("triton") is not None
RUN_TRITON = HAVE_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not RUN_TRITON, reason="needs CUDA or TRITON_INTERPRET=1 with triton")
