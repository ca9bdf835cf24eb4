"""The adaLN input kernel (kernels.norm_modulate) at the full model's chunk shape on CUDA, bf16, every launch choice
the bench sweeps, against the same expression compiled by inductor (the model's path now)."""
from __future__ import annotations

import pytest
import torch

from kernels.norm_modulate import ln_modulate_reference
from tests.tolerances import e4m3_codes_agree, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("residual", [False, True], ids=["attention", "ffn"])
def test_ln_modulate_full_shape_every_launch(residual):
    from kernels.norm_modulate_triton import CONFIG_CHOICES, ln_modulate_triton

    B, T, S, C = 1, 3, 880, 2240
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, T, S, C, device="cuda", generator=g).to(torch.bfloat16)
    res = torch.randn(B, T, S, C, device="cuda", generator=g).to(torch.bfloat16) if residual else None
    mods = (torch.randn(B, T, 6, C, device="cuda", generator=g) * 0.3).to(torch.bfloat16)
    shift, scale = mods[:, :, 0:1], mods[:, :, 1:2]
    out_scale = torch.tensor(0.02, device="cuda")
    want = ln_modulate_reference(x, shift, scale, residual=res, out_scale=out_scale)
    for config in CONFIG_CHOICES:
        got = ln_modulate_triton(x, shift, scale, residual=res, out_scale=out_scale, config=config)
        if residual:
            assert torch.equal(got[0], want[0]), config
        assert rel_err(got[1], want[1]) < 8e-3, config          # one bf16 rounding of y
        assert e4m3_codes_agree(got[2], want[2], max_differing=0.01), config
