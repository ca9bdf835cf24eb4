"""FP8 attention for the softmax blocks, emulated (`quant.attention`; an experiment, off by default, measured
by bench/quant_quality.py): the arithmetic against exact attention, the dynamic per-tensor quantization, the
switch on the model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quant.attention import attention_fp8, sdpa_fp8_reference
from quant.fp8 import quantize_fp8_per_tensor
from tests.tolerances import rel_err


def _qkv(seed=0, b=2, h=3, sq=40, skv=70, d=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, sq, d, generator=g), torch.randn(b, h, skv, d, generator=g) * 2,
            torch.randn(b, h, skv, d, generator=g) * 0.5)


def test_dynamic_per_tensor_quantization_round_trips_within_e4m3():
    x = torch.randn(5, 7, 11) * 3
    x8, scale = quantize_fp8_per_tensor(x)
    assert x8.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.numel() == 1
    assert float(x8.float().abs().max()) == 448.0                       # the amax maps to the top code
    assert rel_err(x8.float() * scale, x) < 0.04                        # 3 mantissa bits: ~2-3% RMS
    zero8, one = quantize_fp8_per_tensor(torch.zeros(3))
    assert float(one) == 1.0 and not zero8.float().any()


def test_reference_equals_exact_attention_but_for_the_rounding_of_p():
    """Against exact attention of the dequantized inputs the reference differs only by P's rounding to E4M3 (a
    few percent at most); against exact attention of the unquantized inputs the E4M3 rounding of q and k moves
    the logits as well (here ~2 standard deviations wide: ~8% relative error, the scale of what FP8 attention
    costs; bench/quant_quality.py measures it on the model's frames)."""
    q, k, v = _qkv()
    (q8, sq), (k8, sk), (v8, sv) = (quantize_fp8_per_tensor(t) for t in (q, k, v))
    scale = 16 ** -0.5
    dequantized = F.scaled_dot_product_attention(q8.float() * sq, k8.float() * sk, v8.float() * sv, scale=scale)
    got = sdpa_fp8_reference(q8, k8, v8, sq, sk, sv, scale, out_dtype=torch.float32)
    err_p = rel_err(got, dequantized)
    assert 1e-4 < err_p < 0.03                       # P rounded: visible, small
    exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert err_p < rel_err(got, exact) < 0.12
    assert rel_err(attention_fp8(q, k, v, scale), exact) < 0.12


def test_rounding_every_operand_is_the_fp8_kernel_arithmetic_and_each_alone_is_smaller():
    q, k, v = _qkv(seed=2)
    (q8, sq), (k8, sk), (v8, sv) = (quantize_fp8_per_tensor(t) for t in (q, k, v))
    scale = 0.25
    full = sdpa_fp8_reference(q8, k8, v8, sq, sk, sv, scale, out_dtype=torch.float32)
    assert torch.equal(attention_fp8(q, k, v, scale), full)
    exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert rel_err(attention_fp8(q, k, v, scale, operands=""), exact) < 1e-5
    for one in "qkvp":
        assert 0 < rel_err(attention_fp8(q, k, v, scale, operands=one), exact) < rel_err(full, exact), one
    with pytest.raises(ValueError, match="qkvp"):
        attention_fp8(q, k, v, scale, operands="qz")


def test_masked_attention_keeps_exact_attention():
    q, k, v = _qkv(seed=1)
    mask = torch.zeros(q.shape[2], k.shape[2], dtype=torch.bool)
    mask[:, :30] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25)
    assert torch.equal(attention_fp8(q, k, v, 0.25, attn_mask=mask), want)


def test_bad_inputs_are_rejected():
    q, k, v = _qkv()
    (q8, sq), (k8, sk), (v8, sv) = (quantize_fp8_per_tensor(t) for t in (q, k, v))
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        sdpa_fp8_reference(q, k8, v8, sq, sk, sv, 0.25)
    with pytest.raises(ValueError, match="do not match"):
        sdpa_fp8_reference(q8, k8[:, :, :5], v8, sq, sk, sv, 0.25)
    with pytest.raises(ValueError, match="scalar"):
        sdpa_fp8_reference(q8, k8, v8, sq.double(), sk, sv, 0.25)


def test_switch_on_the_model_changes_only_the_softmax_blocks_attention():
    from quant import enable_fp8_attention_
    from runtime.attention import SoftmaxAttention
    from runtime.model import build_model
    from tests.unit.test_model import random_inputs

    model = build_model("tiny-world", init="random", seed=3)
    x, ts, text, cam, plk = random_inputs(model, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(x, ts, text, cam, plk)
        n = enable_fp8_attention_(model)
        assert n == len(model.cfg.softmax_blocks) > 0
        assert all(m.fp8_attention for m in model.modules() if isinstance(m, SoftmaxAttention))
        got = model(x, ts, text, cam, plk)
        assert 0 < rel_err(got, want) < 0.05
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        enable_fp8_attention_(model, "p")                     # probabilities only: a much smaller change
        assert 0 < rel_err(model(x, ts, text, cam, plk), want) < rel_err(got, want)
        enable_fp8_attention_(model, "")
        assert torch.equal(model(x, ts, text, cam, plk), want)
        with pytest.raises(ValueError, match="qkvp"):
            enable_fp8_attention_(model, "qx")


def test_int8_per_token_scores_are_closer_than_fp8():
    """INT8 q and k with one scale per token ("i"): each code within half a step of its token's scale, and the
    attention (with E4M3 values and probabilities, "ivp") far closer to exact than all-E4M3, whose keys' 3-bit
    mantissas move the logits. Mixing "i" with "q" / "k" is refused."""
    from kernels.attention_int8 import quantize_int8_per_token

    q, k, v = _qkv(seed=3)
    k8, sk = quantize_int8_per_token(k)
    assert k8.dtype == torch.int8 and sk.shape == k.shape[:-1]
    assert int(k8.abs().amax(dim=-1).min()) == 127                     # every token's amax maps to the top code
    assert float(((k8.float() * sk[..., None] - k).abs() / sk[..., None]).max()) <= 0.5 + 1e-4
    scale = 0.25
    exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
    int8_qk = rel_err(attention_fp8(q, k, v, scale, operands="ivp"), exact)
    assert int8_qk < 0.5 * rel_err(attention_fp8(q, k, v, scale), exact)
    assert rel_err(attention_fp8(q, k, v, scale, operands="i"), exact) < int8_qk
    with pytest.raises(ValueError, match="INT8"):
        attention_fp8(q, k, v, scale, operands="ik")
