"""The FFN's fused depthwise conv + GLU gate (`kernels.glu_conv.depthwise_glu`) against its PyTorch reference,
and the reference against the FFN's original spelling (nn.Conv2d modules, NCHW).

On CPU the Triton kernel runs under TRITON_INTERPRET=1 (tests/triton_setup.py, imported before the kernel
module) at small fp32 shapes; tests/gpu/test_glu_conv_gpu.py runs it at the full model's shape in bf16.
"""
from __future__ import annotations

import torch

from tests.triton_setup import DEVICE, needs_triton

# The kernel modules below must see the interpreter switch tests.triton_setup sets.
# isort: split

import pytest
import torch.nn.functional as F

from kernels.glu_conv import depthwise_glu, depthwise_glu_reference
from tests.tolerances import FP32_REL, e4m3_codes_agree, rel_err

# (N, H, W, M): M not a multiple of the channel block, frames not a multiple of the position block, N = 1, a
# single row, a single column, a 1x1 frame (every neighbour is padding).
SHAPES = [(3, 5, 7, 37), (1, 6, 9, 8), (2, 1, 11, 70), (1, 9, 1, 16), (2, 1, 1, 5)]
IDS = [f"N{n}H{h}W{w}M{m}" for n, h, w, m in SHAPES]


def _inputs(shape, seed: int = 0):
    n, h, w, m = shape
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(n, h, w, 2 * m, generator=g).to(DEVICE)
    weight = torch.randn(2 * m, 1, 3, 3, generator=g).to(DEVICE) / 3
    bias = torch.randn(2 * m, generator=g).to(DEVICE)
    return act, weight, bias


def test_reference_is_the_ffn_depthwise_conv_then_glu():
    """The reference equals nn.Conv2d(groups=2M, padding=1) on the NCHW tensor, chunk, a * silu(g); with
    silu_input, of silu(act)."""
    act, weight, bias = _inputs((2, 4, 5, 6))
    conv = torch.nn.Conv2d(12, 12, 3, padding=1, groups=12)
    with torch.no_grad():
        conv.weight.copy_(weight.cpu())
        conv.bias.copy_(bias.cpu())
        y = conv(act.cpu().permute(0, 3, 1, 2))
    a, g = y.chunk(2, dim=1)
    want = (a * F.silu(g)).permute(0, 2, 3, 1)
    assert rel_err(depthwise_glu_reference(act.cpu(), weight.cpu(), bias.cpu()), want) < FP32_REL
    with torch.no_grad():
        y = conv(F.silu(act.cpu()).permute(0, 3, 1, 2))
    a, g = y.chunk(2, dim=1)
    want = (a * F.silu(g)).permute(0, 2, 3, 1)
    assert rel_err(depthwise_glu_reference(act.cpu(), weight.cpu(), bias.cpu(), silu_input=True), want) < FP32_REL


# Each launch kind on every shape, with row segments that split the frame unevenly (2 rows of H = 5, 9) or cover
# it whole; bias on and off alternate (the interpreter is slow: ~10 runs, not the full product).
TILES, ROWS_2, ROWS_ALL = ("tiles", 16, 16, 4, True), ("rows", 2, 16, 4, True), ("rows", 16, 8, 2, True)
ROW_LOOP, ROW_PIPE = ("tiles_rowloop", 16, 16, 4, True), ("tiles_rowpipe", 16, 16, 4, True)
GATHER_2, GATHER_ALL = ("rows_gather", 2, 16, 4, True), ("rows_gather", 16, 8, 2, True)
GATHER_PIPE = ("rows_gatherpipe4", 3, 16, 4, True)
# rows in strips of columns (the last one partial where W is not a multiple; the halo columns between strips)
GATHER_STRIP, PIPE_STRIP = ("rows_gather_w4", 2, 16, 4, True), ("rows_gatherpipe4_w2", 3, 16, 4, True)
ROWS_STRIP = ("rows_w4", 2, 16, 4, True)
CASES = [(SHAPES[0], TILES, True), (SHAPES[0], ROWS_2, False), (SHAPES[1], ROWS_ALL, True),
         (SHAPES[1], TILES, False), (SHAPES[2], ROWS_2, True), (SHAPES[3], ROWS_2, True),
         (SHAPES[3], TILES, True), (SHAPES[4], ROWS_ALL, False), (SHAPES[4], TILES, True),
         (SHAPES[0], ROW_LOOP, False), (SHAPES[2], ROW_LOOP, True), (SHAPES[1], ROW_PIPE, True),
         (SHAPES[0], GATHER_2, True), (SHAPES[3], GATHER_2, False), (SHAPES[4], GATHER_ALL, True),
         (SHAPES[0], GATHER_PIPE, False), (SHAPES[1], GATHER_PIPE, True), (SHAPES[0], GATHER_STRIP, True),
         (SHAPES[2], GATHER_STRIP, False), (SHAPES[1], PIPE_STRIP, True), (SHAPES[3], PIPE_STRIP, False),
         (SHAPES[2], ROWS_STRIP, True)]


@needs_triton
@pytest.mark.parametrize("shape,config,with_bias", CASES,
                         ids=[f"{IDS[SHAPES.index(s)]}-{c[0]}{c[1]}-{'bias' if b else 'nobias'}" for s, c, b in CASES])
def test_triton_depthwise_glu_matches_reference(shape, config, with_bias):
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.glu_conv_triton import depthwise_glu_triton

    act, weight, bias = _inputs(shape, seed=sum(shape))
    bias = bias if with_bias else None
    for silu, inside in ((False, True), (True, True), (True, False)):   # SiLU inside the kernel, or a pass first
        with nan_filled_buffers():   # an unwritten element would stay NaN
            got = depthwise_glu_triton(act, weight, bias, (*config[:4], inside), silu)
        want = depthwise_glu_reference(act, weight, bias, silu_input=silu)
        assert got.shape == want.shape == (*shape[:3], shape[3])
        assert rel_err(got, want) < FP32_REL, silu


@needs_triton
@pytest.mark.parametrize("config", [TILES, ROWS_2], ids=["tiles", "rows2"])
def test_triton_reads_taps_in_any_layout_and_dtype(config):
    """The kernel reads the taps and bias as stored: a tap-major weight (the FFN's compiled path,
    runtime.ffn.store_depthwise_tap_major_) gives the same result as the contiguous one, bit for bit; bf16 taps and
    bias are widened in the kernel (no per-call fp32 copies), equal to passing their fp32 values."""
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.glu_conv_triton import depthwise_glu_triton
    from runtime.ffn import store_depthwise_tap_major_

    act, weight, bias = _inputs(SHAPES[0], seed=11)
    conv = torch.nn.Conv2d(weight.shape[0], weight.shape[0], 3, padding=1, groups=weight.shape[0]).to(DEVICE)
    with torch.no_grad():
        conv.weight.copy_(weight)
    store_depthwise_tap_major_(conv)
    assert conv.weight.stride(0) == 1 and torch.equal(conv.weight, weight)
    with nan_filled_buffers():
        want = depthwise_glu_triton(act, weight, bias, config, True)
        got = depthwise_glu_triton(act, conv.weight.detach(), bias, config, True)
        assert torch.equal(got, want)
        w16, b16 = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
        want = depthwise_glu_triton(act, w16.float(), b16.float(), config, True)
        got = depthwise_glu_triton(act, w16, b16, config, True)
        assert torch.equal(got, want)


def _fp8_agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    return e4m3_codes_agree(got, want, max_differing=0.02, interpreter=DEVICE == "cpu")


@needs_triton
@pytest.mark.parametrize("config", [TILES, ROWS_2], ids=["tiles", "rows2"])
def test_triton_fp8_output_matches_reference(config):
    """With out_scale the kernel writes e4m3(clamp(out / scale)) from its fp32 result, as the reference does (the
    FFN's next layer then takes it as its statically quantized input); values past the scale's range saturate."""
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.glu_conv_triton import depthwise_glu_triton

    act, weight, bias = _inputs(SHAPES[0], seed=5)
    ref32 = depthwise_glu_reference(act, weight, bias, silu_input=True)
    scale = (ref32.abs().amax() / 448 * 0.5).float()           # half the range: the largest values saturate
    want = depthwise_glu_reference(act, weight, bias, silu_input=True, out_scale=scale)
    assert want.dtype == torch.float8_e4m3fn and float(want.float().abs().max()) == 448.0
    assert rel_err(want.float() * scale, ref32.clamp(-448 * scale, 448 * scale)) < 0.05
    with nan_filled_buffers():
        got = depthwise_glu_triton(act, weight, bias, (*config[:4], False), True, out_scale=scale)
    assert not got.float().isnan().any() and _fp8_agrees(got, want)
    got = depthwise_glu(act, weight, bias, silu_input=True, out_scale=scale, impl="triton")
    assert _fp8_agrees(got, want)
    with pytest.raises(ValueError, match="out_scale"):
        depthwise_glu(act, weight, bias, out_scale=scale.double())


@needs_triton
def test_public_op_dispatches_to_the_kernel():
    act, weight, bias = _inputs((2, 3, 4, 6), seed=2)
    for silu in (False, True):
        got = depthwise_glu(act, weight, bias, silu_input=silu, impl="triton")
        assert rel_err(got, depthwise_glu_reference(act, weight, bias, silu_input=silu)) < FP32_REL


@needs_triton
def test_triton_depthwise_glu_reads_strided_frames():
    """A view whose frames are not packed (e.g. a slice of a larger buffer) reads the right elements."""
    act, weight, bias = _inputs((4, 3, 5, 9), seed=1)
    view = act[::2]
    assert not view.is_contiguous()
    assert rel_err(depthwise_glu(view, weight, bias, impl="triton"), depthwise_glu_reference(view, weight, bias)) \
        < FP32_REL


def test_depthwise_glu_rejects_bad_input():
    act, weight, bias = _inputs((1, 3, 4, 5))
    with pytest.raises(ValueError, match="expected act"):
        depthwise_glu(act[..., :-1], weight, bias)
    with pytest.raises(ValueError, match="weight"):
        depthwise_glu(act, weight[:, :, :2], bias)
    with pytest.raises(ValueError, match="bias"):
        depthwise_glu(act, weight, bias[:-1])


@needs_triton
def test_custom_op_opcheck():
    """torch.library.opcheck: the op's schema, fake (meta) function and kernel agree, for fp32 and FP8 output."""
    act, weight, bias = _inputs((1, 3, 4, 6), seed=3)
    scale = torch.tensor(0.01, device=act.device)
    for out_scale in (None, scale):
        torch.library.opcheck(torch.ops.sana_wm.depthwise_glu.default, (act, weight, bias, True, out_scale),
                              test_utils=("test_schema", "test_faketensor"))
