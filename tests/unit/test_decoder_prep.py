"""The decoder's one-pass conv input (`kernels.decoder_prep.conv_input`) against its PyTorch reference.

On CPU the Triton kernel runs under TRITON_INTERPRET=1 (tests/triton_setup.py, imported before the kernel
module) at small fp32 shapes; tests/gpu/test_decoder_prep_gpu.py runs it at the LTX-2 decoder's shapes in bf16.
"""
from __future__ import annotations

import torch

from tests.triton_setup import DEVICE, needs_triton

# The kernel modules below must see the interpreter switch tests.triton_setup sets.
# isort: split

import pytest
import torch.nn.functional as F

from kernels.decoder_prep import conv_input, conv_input_reference
from tests.tolerances import FP32_REL, rel_err

# (B, C, T, H, W, pad_frames, ph, pw): channels not a multiple of the 32-channel step, frame sizes not a multiple
# of the 64-position block, T = 1, no padding, wider padding, a single-row frame with column padding only.
SHAPES = [
    (1, 37, 3, 5, 7, 2, 1, 1),
    (2, 8, 1, 6, 9, 2, 1, 1),
    (1, 70, 4, 9, 13, 2, 2, 3),
    (1, 5, 2, 4, 4, 1, 0, 0),
    (1, 16, 3, 1, 11, 2, 0, 2),
]
IDS = [f"B{b}C{c}T{t}H{h}W{w}p{p}_{ph}x{pw}" for b, c, t, h, w, p, ph, pw in SHAPES]


def _inputs(shape, with_left: bool, memory_format, seed: int = 0):
    B, C, T, H, W, pad, _, _ = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, C, T, H, W, generator=g) * 3).to(DEVICE).contiguous(memory_format=memory_format)
    left = torch.randn(B, C, pad, H, W, generator=g).to(DEVICE) if with_left else None
    return x, left


def test_reference_is_norm_silu_then_cat_then_reflection_pad():
    """The reference spelled out with diffusers' own formula: x / sqrt(mean_c(x^2) + eps), SiLU, first-frame
    copies as the left context, F.pad(mode="reflect")."""
    shape = (1, 6, 3, 4, 5, 2, 1, 2)
    x, _ = _inputs(shape, False, torch.contiguous_format)
    x = x.cpu()
    y = F.silu(x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-6))
    want = F.pad(torch.cat([y[:, :, :1], y[:, :, :1], y], dim=2), (2, 2, 1, 1, 0, 0), mode="reflect")
    got = conv_input_reference(x, None, pad_frames=2, ph=1, pw=2, norm_eps=1e-6)
    assert got.shape == want.shape and rel_err(got, want) < FP32_REL


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("with_left", [True, False], ids=["cached", "first-chunk"])
@pytest.mark.parametrize("norm", [True, False], ids=["norm-silu", "copy"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d], ids=["ncthw", "nthwc"])
def test_triton_conv_input_matches_reference(shape, with_left, norm, layout):
    from kernels.gdn_triton import nan_filled_buffers

    x, left = _inputs(shape, with_left, layout, seed=hash((with_left, norm)) % 1000)
    kw = {"pad_frames": shape[5], "ph": shape[6], "pw": shape[7], "norm_eps": 1e-6 if norm else None,
          "memory_format": layout}
    with nan_filled_buffers():   # an unwritten element would stay NaN
        got = conv_input(x, left, impl="triton", **kw)
    want = conv_input_reference(x, left, **kw)
    assert got.shape == want.shape and got.is_contiguous(memory_format=layout)
    assert torch.isfinite(got).all()
    if norm:
        assert rel_err(got, want) < FP32_REL
    else:
        assert torch.equal(got, want)   # a pure copy is exact


def test_conv_input_rejects_bad_input():
    x = torch.randn(1, 4, 2, 3, 5)
    with pytest.raises(ValueError, match="reflection padding"):
        conv_input(x, None, pad_frames=2, ph=3, pw=1)
    with pytest.raises(ValueError, match="left context"):
        conv_input(x, torch.randn(1, 4, 1, 3, 5), pad_frames=2, ph=1, pw=1)
    with pytest.raises(ValueError, match="dtype or device"):
        conv_input(x, torch.randn(1, 4, 2, 3, 5, dtype=torch.float64), pad_frames=2, ph=1, pw=1)
    with pytest.raises(ValueError, match="expected x"):
        conv_input(x[0], None, pad_frames=2, ph=1, pw=1)
