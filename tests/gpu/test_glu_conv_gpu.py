"""The FFN's fused depthwise conv + GLU gate at the full model's shape on CUDA, bf16, every launch choice the bench
sweeps, with and without the input's SiLU inside.

The reference computes in fp32 from the same bf16 input and rounds once, like the kernel (fp32 accumulation); they
may differ by one bf16 rounding, so the bound is a rounding's scale, not equality.
"""
from __future__ import annotations

import pytest
import torch

from kernels.glu_conv import depthwise_glu, depthwise_glu_reference
from tests.tolerances import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

BF16_ONE_ROUNDING = 4e-3   # relative RMS of one bf16 rounding (~2.3e-3), with margin


def test_depthwise_glu_bf16_at_full_shape():
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.glu_conv_triton import CONFIG_CHOICES, depthwise_glu_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    n, h, w, m = 3, 22, 40, 6720       # a chunk of the 2.6B model: 3 frames of 22 x 40 tokens, 2M = 13440
    act = torch.randn(n, h, w, 2 * m, device="cuda", generator=g).to(torch.bfloat16)
    weight = (torch.randn(2 * m, 1, 3, 3, device="cuda", generator=g) / 3).to(torch.bfloat16)
    bias = torch.randn(2 * m, device="cuda", generator=g).to(torch.bfloat16)
    for silu in (False, True):
        want = depthwise_glu_reference(act, weight, bias, silu_input=silu)
        with nan_filled_buffers():
            got = depthwise_glu(act, weight, bias, silu_input=silu)
            assert got.dtype == torch.bfloat16 and rel_err(got, want) < 2 * BF16_ONE_ROUNDING
            for config in CONFIG_CHOICES:
                got = depthwise_glu_triton(act, weight, bias, config, silu)
                # a separate SiLU pass rounds its output to bf16 once more
                tol = 2 * BF16_ONE_ROUNDING if silu and not config[-1] else BF16_ONE_ROUNDING
                assert rel_err(got, want) < tol, (config, silu)
