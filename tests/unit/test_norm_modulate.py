"""The adaLN input in one pass (`kernels.norm_modulate.ln_modulate`): the reference against the block's own
spelling (runtime.norms + quant.fp8), and the Triton kernel against the reference.

On CPU the kernel runs under TRITON_INTERPRET=1 (tests/triton_setup.py) at small fp32 / bf16 shapes.
"""
from __future__ import annotations

import torch

from tests.triton_setup import DEVICE, needs_triton

# The kernel modules below must see the interpreter switch tests.triton_setup sets.
# isort: split

import pytest

from kernels.norm_modulate import ln_modulate, ln_modulate_reference
from tests.tolerances import FP32_REL, e4m3_codes_agree, rel_err

# (B, T, S, C): C not a power of two, rows not a multiple of the rows per program, tiles spanning frames, B > 1.
SHAPES = [(1, 3, 5, 24), (2, 2, 3, 40), (1, 1, 1, 7), (1, 2, 3, 32)]   # C = 32: one tile, no split


def _inputs(shape, seed=0, dtype=torch.float32):
    B, T, S, C = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, T, S, C, generator=g) * 3 + 0.5).to(DEVICE, dtype)
    res = torch.randn(B, T, S, C, generator=g).to(DEVICE, dtype)
    shift = torch.randn(B, T, 1, C, generator=g).to(DEVICE, dtype)
    scale = (torch.randn(B, T, 1, C, generator=g) * 0.3).to(DEVICE, dtype)
    return x, res, shift, scale


def test_reference_is_the_blocks_norm_modulate_and_fp8_quantizer():
    """The reference equals the block's spelling: x + residual, runtime.norms.layer_norm, modulate, and the
    static per-tensor E4M3 quantizer of the FP8 linears (quant.fp8.quantize_fp8_per_tensor)."""
    from quant.fp8 import quantize_fp8_per_tensor
    from runtime.norms import layer_norm, modulate

    x, res, shift, scale = (t.cpu() for t in _inputs((2, 3, 4, 32)))
    s = torch.tensor(0.02)
    summed, normed, codes = ln_modulate_reference(x, shift, scale, residual=res, out_scale=s)
    want = modulate(layer_norm(x + res), shift, scale)
    assert torch.equal(summed, x + res)
    assert rel_err(normed, want) < FP32_REL
    assert torch.equal(codes.view(torch.uint8), quantize_fp8_per_tensor(normed, s)[0].view(torch.uint8))
    none_sum, only_normed, no_codes = ln_modulate_reference(x, shift[:, :, 0], scale[:, :, 0])
    assert none_sum is None and no_codes is None and rel_err(only_normed, modulate(layer_norm(x), shift, scale)) < FP32_REL


def test_table_rows_are_added_to_the_modulation():
    """shift_bias / scale_bias (a block's scale_shift_table rows, [C]) act as if added to every frame's shift /
    scale first, in fp32."""
    x, res, shift, scale = (t.cpu() for t in _inputs((2, 3, 4, 32)))
    g = torch.Generator().manual_seed(9)
    shift_bias, scale_bias = torch.randn(32, generator=g) * 0.2, torch.randn(32, generator=g) * 0.2
    s = torch.tensor(0.02)
    got = ln_modulate_reference(x, shift, scale, residual=res, out_scale=s, shift_bias=shift_bias,
                                scale_bias=scale_bias)
    want = ln_modulate_reference(x, shift + shift_bias, scale + scale_bias, residual=res, out_scale=s)
    assert torch.equal(got[0], want[0]) and rel_err(got[1], want[1]) < FP32_REL
    assert e4m3_codes_agree(got[2], want[2], max_differing=0.01)
    assert rel_err(got[1], ln_modulate_reference(x, shift, scale, residual=res)[1]) > 0.05   # the rows matter
    with pytest.raises(ValueError, match="shift_bias must be"):
        ln_modulate_reference(x, shift, scale, shift_bias=shift_bias[:8])


def test_bad_arguments_are_refused():
    x, res, shift, scale = (t.cpu() for t in _inputs((1, 2, 3, 8)))
    with pytest.raises(ValueError, match="x \\[B, T, S, C\\]"):
        ln_modulate_reference(x[0], shift, scale)
    with pytest.raises(ValueError, match="residual"):
        ln_modulate_reference(x, shift, scale, residual=res[:, :1])
    with pytest.raises(ValueError, match="scale must be"):
        ln_modulate_reference(x, shift, scale[:, :1])
    with pytest.raises(ValueError, match="out_scale"):
        ln_modulate_reference(x, shift, scale, out_scale=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="nothing to compute"):
        ln_modulate_reference(x, shift, scale, want_normed=False)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}T{t}S{s}C{c}" for b, t, s, c in SHAPES])
@pytest.mark.parametrize("config", [(1, 4), (4, 8), (2, 4, 1, 2)], ids=["rows1", "rows4", "persistent"])
def test_triton_matches_reference(shape, config):
    """Every output combination: with the residual add (the FFN's input: the sum and the codes), without (the
    attention's: normed and codes), normed alone; modulation tensors as [B, T, 1, C] views of a larger tensor;
    with and without table rows added to them."""
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.norm_modulate_triton import ln_modulate_triton

    x, res, shift, scale = _inputs(shape, seed=sum(shape))
    mods = torch.cat([shift, scale], dim=2)              # [B, T, 2, C]: shift / scale as strided views
    shift, scale = mods[:, :, :1], mods[:, :, 1:]
    s = torch.tensor(0.01, device=DEVICE)
    # table rows: both on the first call, the scale's alone on the last
    rows = (torch.randn(2, shape[-1], generator=torch.Generator().manual_seed(1)) * 0.2).to(DEVICE, x.dtype)
    for residual, out_scale, want_normed, (shift_bias, scale_bias) in (
            (res, s, False, rows), (None, s, True, (None, None)), (None, None, True, (None, None)),
            (res, s, True, (None, rows[1]))):
        bias = {"shift_bias": shift_bias, "scale_bias": scale_bias}
        with nan_filled_buffers():                       # an unwritten element would stay NaN
            got = ln_modulate_triton(x, shift, scale, residual=residual, out_scale=out_scale,
                                     want_normed=want_normed, config=config, **bias)
        want = ln_modulate_reference(x, shift, scale, residual=residual, out_scale=out_scale,
                                     want_normed=want_normed, **bias)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if w is None:
                continue
            if w.dtype == torch.float8_e4m3fn:
                assert e4m3_codes_agree(g, w, max_differing=0.02, interpreter=DEVICE == "cpu")
            else:
                assert rel_err(g, w) < FP32_REL


@needs_triton
def test_triton_bf16_rounds_the_sum_before_the_norm():
    """bf16 activations: the stored sum is the bf16 rounding of the fp32 sum, and the norm is taken of that stored
    value (as the next block reads it), so the kernel and the reference agree to one bf16 rounding of y. (The
    interpreter converts fp32 to bf16 by truncation, the GPU to nearest: on the CPU the sums may differ by one bf16
    step.)"""
    x, res, shift, scale = _inputs((1, 2, 6, 48), seed=3, dtype=torch.bfloat16)
    got = ln_modulate(x, shift, scale, residual=res, impl="triton")
    want = ln_modulate_reference(x, shift, scale, residual=res)
    if DEVICE == "cuda":
        assert torch.equal(got[0], want[0])
    else:
        step = want[0].float().abs() * 2.0 ** -7
        assert bool(((got[0].float() - want[0].float()).abs() <= step).all())
    assert rel_err(got[1], want[1]) < 8e-3


@needs_triton
def test_custom_op_compiles_whole_and_returns_only_what_was_asked():
    """The op as a compiled block calls it (sana_wm::ln_modulate inside torch.compile, fullgraph): the outputs not
    asked for come back as None, the others equal the kernel's eager results."""
    x, res, shift, scale = _inputs((1, 2, 3, 40), seed=4)
    s = torch.tensor(0.02, device=DEVICE)
    ffn = torch.compile(lambda x, r: ln_modulate(x, shift, scale, residual=r, out_scale=s, want_normed=False,
                                                 impl="triton"), fullgraph=True)
    attn = torch.compile(lambda x: ln_modulate(x, shift, scale, out_scale=s, impl="triton"), fullgraph=True)
    eager_ffn = ln_modulate(x, shift, scale, residual=res, out_scale=s, want_normed=False, impl="triton")
    eager_attn = ln_modulate(x, shift, scale, out_scale=s, impl="triton")
    for got, want in ((ffn(x, res), eager_ffn), (attn(x), eager_attn)):
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            assert w is None or torch.equal(g.view(torch.uint8) if g.dtype == torch.float8_e4m3fn else g,
                                            w.view(torch.uint8) if w.dtype == torch.float8_e4m3fn else w)
    assert eager_ffn[1] is None and eager_attn[0] is None
