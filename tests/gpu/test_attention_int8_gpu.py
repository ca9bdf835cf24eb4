"""The INT8-score / E4M3-value attention kernel on CUDA at the softmax blocks' streaming shape (main + camera
batched: 2 x 20 heads, 2640 queries over 8800 keys, D = 112), every launch choice the bench sweeps, against an
emulation of its tile-by-tile arithmetic (tests/unit/test_attention_int8.py) and against exact attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import attention_int8 as ai
from tests.tolerances import rel_err
from tests.unit.test_attention_int8 import _tiled_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_attention_int8_at_the_streaming_shape():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("E4M3 tensor cores need compute capability >= 8.9")
    from kernels.attention_int8_triton import CONFIG_CHOICES, attention_int8_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 20, n, 112, device="cuda", generator=g).to(torch.bfloat16) for n in (2640, 8800, 8800))
    scale = 128 ** -0.5
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale)
    expected = {}
    for config in CONFIG_CHOICES:
        key_block = config.block_n if config.tile_scales else 1
        values = ai.quantize_v_fp8_transposed(v, 128) if config.v_fp8 else (v, torch.ones((), device="cuda"))
        ops = (*ai.quantize_int8_per_token(q, 128), *ai.quantize_int8_per_token(k, 128, key_block), *values)
        got = attention_int8_triton(*ops, scale, 112, torch.float32, config=config, key_block=key_block)
        layout = (config.block_n, config.tile_scales, config.v_fp8)
        if layout not in expected:
            expected[layout] = _tiled_reference(*ops, scale, 112, config.block_n, config.tile_scales)
        # exp2 on the GPU is not torch's to the last bit: the odd E4M3 rounding of P flips
        assert rel_err(got, expected[layout]) < 5e-3, config
        assert rel_err(got, exact) < 0.06, config
    assert rel_err(ai.attention_int8(q, k, v, scale), exact) < 0.06


@pytest.mark.parametrize("kind", ["int8", "int8_bf16v"], ids=["e4m3-values", "bf16-values"])
def test_full_config_with_int8_attention_compiled_and_graphed(kind):
    """The full 2.6B config in bf16 over 4 chunks: the softmax blocks on the INT8 kernel, compiled and replayed
    from one CUDA graph, against the eager SDPA step: close (the INT8 / E4M3 roundings of the attention alone,
    ~0.2 dB on the shipped model) and captured once (no recompiles across chunks)."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("E4M3 tensor cores need compute capability >= 8.9")
    from runtime.attention import set_attention_kernel_
    from tests.gpu.test_streaming_gpu import compiled_full_config_against_eager

    def int8_attention(model):
        assert set_attention_kernel_(model, kind) == 5

    fast, eager, seen = compiled_full_config_against_eager(int8_attention)
    assert len(seen) == 1
    for a, b in zip(fast, eager):
        assert rel_err(a, b) < 0.05
