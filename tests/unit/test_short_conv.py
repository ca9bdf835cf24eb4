"""The GDN blocks' K short convolution along frames (runtime.short_conv) against its definition: a depthwise
causal conv (nn.functional.conv1d, last tap on the current frame) run forward over each chunk (or over the whole
call after the streamed left context), plus the same conv run backward over each chunk, minus the centre tap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runtime.short_conv import bidirectional_short_conv, next_left_context
from tests.tolerances import FP32_REL, rel_err


def _causal_conv(x, weight, left):
    """x [B, T, S, C], left [B, K-1, S, C] -> the depthwise causal conv over frames, [B, T, S, C]."""
    B, T, S, C = x.shape
    seq = torch.cat([left, x], dim=1).permute(0, 2, 3, 1).reshape(B * S, C, -1)   # [B S, C, K-1+T]
    out = F.conv1d(seq, weight, groups=C)                                          # [B S, C, T]
    return out.reshape(B, S, C, T).permute(0, 3, 1, 2)


def _definition(x, weight, chunks, causal_across_chunks, left_context):
    B, _, S, C = x.shape
    K = weight.shape[-1]
    zeros = x.new_zeros(B, K - 1, S, C)
    whole = _causal_conv(x, weight, zeros if left_context is None else left_context)
    out = torch.empty_like(x)
    for s, e in chunks:
        fwd = whole[:, s:e] if causal_across_chunks else _causal_conv(x[:, s:e], weight, zeros)
        bwd = _causal_conv(x[:, s:e].flip(1), weight, zeros).flip(1)
        out[:, s:e] = fwd + bwd - x[:, s:e] * weight[:, 0, K - 1]
    return out


@pytest.mark.parametrize("chunks", [((0, 3),), ((0, 4), (4, 7)), ((0, 1), (1, 5), (5, 7))],
                         ids=["one", "two", "three"])
@pytest.mark.parametrize("causal_across_chunks", [True, False], ids=["across", "within"])
@pytest.mark.parametrize("with_left", [True, False], ids=["left", "noleft"])
def test_short_conv_is_the_forward_plus_backward_causal_conv(chunks, causal_across_chunks, with_left):
    torch.manual_seed(0)
    T = chunks[-1][1]
    B, S, C, K = 2, 5, 6, 4
    x = torch.randn(B, T, S, C, dtype=torch.float64)
    weight = torch.randn(C, 1, K, dtype=torch.float64)
    left = torch.randn(B, K - 1, S, C, dtype=torch.float64) if with_left else None
    got = bidirectional_short_conv(x, weight, chunks, causal_across_chunks=causal_across_chunks, left_context=left)
    want = _definition(x, weight, chunks, causal_across_chunks, left if causal_across_chunks else None)
    assert rel_err(got, want) < FP32_REL
    assert torch.equal(next_left_context(x, left if with_left else x.new_zeros(B, K - 1, S, C))[:, -1], x[:, -1])


def test_short_conv_bf16_close_to_fp32():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 4, 8)
    weight = torch.randn(8, 1, 4)
    left = torch.randn(1, 3, 4, 8)
    want = bidirectional_short_conv(x, weight, ((0, 3),), causal_across_chunks=True, left_context=left)
    got = bidirectional_short_conv(x.bfloat16(), weight.bfloat16(), ((0, 3),), causal_across_chunks=True,
                                   left_context=left.bfloat16())
    assert got.dtype == torch.bfloat16 and rel_err(got.float(), want) < 2e-2
