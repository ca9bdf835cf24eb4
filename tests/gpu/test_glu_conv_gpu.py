"""The FFN's fused depthwise conv + GLU gate at the full model's shape on CUDA, bf16, every launch choice the bench
sweeps, with and without the input's SiLU inside.

The reference computes in fp32 from the same bf16 input and rounds once, like the kernel (fp32 accumulation); they
may differ by one bf16 rounding, so the bound is a rounding's scale, not equality.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.glu_conv import depthwise_glu, depthwise_glu_reference
from tests.tolerances import e4m3_codes_agree, rel_err

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


def test_depthwise_glu_fp8_output_at_full_shape():
    """With out_scale the kernel's E4M3 codes match the reference's: the hardware conversion rounds to nearest
    even like torch's cast. A launch with a separate SiLU pass takes SiLU(act) rounded to bf16, so its reference
    gets that same input; a launch with SiLU inside (the default since round 27) takes it in fp32, like the
    reference with silu_input. The two fp32 sums then differ only in order, and codes one E4M3 step apart are
    values on a rounding boundary. (Across the two SiLU roundings the one-step bound does not hold: near zero the
    bf16 rounding of the nine terms is many E4M3 steps of the small sum; rounds 23 and 28 failed on exactly that:
    5 % of codes differ, 0.4 % by more than a step.) The dequantized codes also stay within E4M3 rounding of the
    fp32-SiLU result."""
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.glu_conv_triton import CONFIG, depthwise_glu_triton

    g = torch.Generator(device="cuda").manual_seed(1)
    n, h, w, m = 3, 22, 40, 6720
    act = torch.randn(n, h, w, 2 * m, device="cuda", generator=g).to(torch.bfloat16)
    weight = (torch.randn(2 * m, 1, 3, 3, device="cuda", generator=g) / 3).to(torch.bfloat16)
    bias = torch.randn(2 * m, device="cuda", generator=g).to(torch.bfloat16)
    ref = depthwise_glu_reference(act, weight, bias, silu_input=True)
    scale = (ref.float().abs().amax() / 448).reshape(())
    silu_bf16 = F.silu(act.float()).to(torch.bfloat16)          # what the separate SiLU pass hands the kernel
    want_separate = depthwise_glu_reference(silu_bf16, weight, bias, out_scale=scale)
    want_inside = depthwise_glu_reference(act, weight, bias, silu_input=True, out_scale=scale)
    with nan_filled_buffers():
        for config in (None, ("rows", 22, 16, 4, False), ("tiles", 32, 64, 4, False), ("tiles", 16, 64, 4, True)):
            want = want_inside if (config or CONFIG)[-1] else want_separate
            got = depthwise_glu_triton(act, weight, bias, config, True, out_scale=scale)
            assert e4m3_codes_agree(got, want, max_differing=0.01), config
            assert rel_err(got.float() * scale, ref.float()) < 0.05, config    # E4M3 keeps 3 mantissa bits


def test_ffn_with_prequantized_fp8_point_conv_input(monkeypatch):
    """The FFN at the full model's width in bf16 on CUDA, FP8 1x1 convs with calibrated static input scales: the
    depthwise kernel's E4M3 output fed straight to the point conv's GEMM agrees with quantizing in the point conv
    (within one E4M3 rounding of the activations: the unfused path rounds to bf16 first), eagerly and compiled."""
    from quant import quantize
    from quant.calibrate import calibrate_fp8_inputs
    from quant.linear import FP8Linear
    from runtime.ffn import GLUMBConvTemp

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability >= 8.9")
    torch.manual_seed(0)
    C, h, w = 2240, 22, 40
    ffn = GLUMBConvTemp(C, 6720).cuda()
    for p in ffn.parameters():
        torch.nn.init.normal_(p, std=p[0].numel() ** -0.5)
    ffn = ffn.to(torch.bfloat16)
    quantize(ffn, {"format": "fp8", "include": ["inverted_conv.conv", "point_conv.conv"]})
    x = torch.randn(1, 3, h * w, C, device="cuda").to(torch.bfloat16)
    chunks = ((0, 3),)
    with torch.no_grad():
        calibrate_fp8_inputs(ffn, lambda: ffn(x, (h, w), chunks))
        fused = ffn(x, (h, w), chunks)
        compiled = torch.compile(lambda t: ffn(t, (h, w), chunks), fullgraph=True)(x)
        monkeypatch.setattr(FP8Linear, "static_input_scale", property(lambda self: None))
        unfused = ffn(x, (h, w), chunks)
    assert rel_err(fused, unfused) < 0.03 and rel_err(compiled, fused) < 0.03


def test_fp8_temporal_conv_by_taps_full_width():
    """The FFN's FP8 temporal conv (official+tconv scope, static input scale) at the full model's width on CUDA:
    one _scaled_mm per tap over frame-shifted rows (store_tap_weights_, as compile_blocks stores them) against the
    one GEMM over interleaved taps, eagerly and compiled: the same E4M3 codes, so they differ only by the bf16
    roundings of the three tap outputs summed (~3e-3 on the CPU at a small width: a bound of two roundings)."""
    from quant import quantize
    from quant.calibrate import calibrate_fp8_inputs
    from runtime.ffn import GLUMBConvTemp

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability >= 8.9")
    torch.manual_seed(0)
    C, S = 2240, 880
    ffn = GLUMBConvTemp(C, 6720).cuda()
    torch.nn.init.normal_(ffn.t_conv.weight, std=(3 * C) ** -0.5)
    ffn = ffn.to(torch.bfloat16)
    quantize(ffn, {"format": "fp8", "include": ["t_conv"]})
    y = torch.randn(1, 3, S, C, device="cuda").to(torch.bfloat16)
    left = torch.randn(1, S, C, device="cuda").to(torch.bfloat16)
    chunks = ((0, 3),)
    with torch.no_grad():
        calibrate_fp8_inputs(ffn, lambda: ffn.temporal_mix(y, chunks, left, None))
        interleaved = ffn.temporal_mix(y, chunks, left, None)
        assert ffn.t_conv.store_tap_weights_()
        by_taps = ffn.temporal_mix(y, chunks, left, None)
        compiled = torch.compile(lambda t: ffn.temporal_mix(t, chunks, left, None), fullgraph=True)(y)
    assert rel_err(by_taps, interleaved) < 2 * BF16_ONE_ROUNDING
    assert rel_err(compiled, by_taps) < 2 * BF16_ONE_ROUNDING
