"""The decoder's one-pass conv input at the LTX-2 decoder's streaming shapes on CUDA, bf16.

The reference computes in fp32 and rounds once to bf16, like the kernel; they may differ by one bf16 rounding
where the fp32 results fall differently, so the bound is BF16_REL's rounding scale, not exact equality.
"""
from __future__ import annotations

import pytest
import torch

from kernels.decoder_prep import conv_input, conv_input_reference
from tests.tolerances import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

BF16_ONE_ROUNDING = 4e-3   # relative RMS of one bf16 rounding (2^-8 ulp / sqrt(3) ~ 2.3e-3), with margin

# (C, T, H, W) of decoder stages for a 3-latent-frame chunk of a 704 x 1280 video: the mid block at the latent
# grid, then up-sampled stages (the last one before the 4 x 4 unpatchify).
STAGES = [(1024, 3, 22, 40), (512, 6, 44, 80), (256, 12, 88, 160), (128, 24, 176, 320)]


@pytest.mark.parametrize("stage", STAGES, ids=[f"C{c}T{t}" for c, t, _, _ in STAGES])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d], ids=["ncthw", "nthwc"])
def test_conv_input_bf16_at_decoder_shapes(stage, layout):
    from kernels.gdn_triton import nan_filled_buffers

    C, T, H, W = stage
    g = torch.Generator(device="cuda").manual_seed(C)
    x = torch.randn(1, C, T, H, W, device="cuda", generator=g).to(torch.bfloat16).contiguous(memory_format=layout)
    left = torch.randn(1, C, 2, H, W, device="cuda", generator=g).to(torch.bfloat16)
    for lft in (left, None):
        for eps in (1e-8, None):
            kw = {"pad_frames": 2, "ph": 1, "pw": 1, "norm_eps": eps, "memory_format": layout}
            with nan_filled_buffers():
                got = conv_input(x, lft, impl="triton", **kw)
            want = conv_input_reference(x, lft, **kw)
            assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=layout)
            if eps is None:
                assert torch.equal(got, want)
            else:
                assert rel_err(got, want) < BF16_ONE_ROUNDING
