"""INT8-score / E4M3-value attention (`kernels.attention_int8`): the quantizers, the PyTorch reference against exact
attention and against the quality emulation in `quant.attention`, and the Triton kernel against an emulation of
its own tile-by-tile arithmetic (on CPU under TRITON_INTERPRET=1, tests/triton_setup.py).

The interpreter's fp32 -> E4M3 conversion is not torch's (it drops the carry when rounding up fills the mantissa,
tests/tolerances.py, and rounds subnormals toward zero); the expected results round the probabilities with
Triton's own conversion, as the kernel does.
"""
from __future__ import annotations

import functools
import math
import os

import torch

from tests.triton_setup import DEVICE, RUN_TRITON, needs_triton

# The kernel modules below must see the interpreter switch tests.triton_setup sets.
# isort: split

import pytest
import torch.nn.functional as F

from kernels import attention_int8 as ai
from tests.tolerances import rel_err

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _qkv(b=2, h=3, m=70, n=150, d=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, m, d, generator=g).to(DEVICE), (torch.randn(b, h, n, d, generator=g) * 2).to(DEVICE),
            (torch.randn(b, h, n, d, generator=g) * 0.5).to(DEVICE))


def _operands(q, k, v, key_block=1, v_fp8=True):
    dp = ai.padded_head_dim(q.shape[-1])
    values = ai.quantize_v_fp8_transposed(v, dp) if v_fp8 else (v, torch.ones((), device=v.device))
    return (*ai.quantize_int8_per_token(q, dp), *ai.quantize_int8_per_token(k, dp, key_block), *values)


def _round_e4m3_like_the_kernel(x: torch.Tensor) -> torch.Tensor:
    """x rounded to E4M3 by Triton's own conversion (the kernel's): the hardware's on a GPU; under the interpreter
    its numpy emulation, which differs from torch's cast (it drops the carry of a full mantissa and rounds
    subnormals toward zero), so the expected results here round the same way the kernel does."""
    if not RUN_TRITON:
        return x.to(torch.float8_e4m3fn).float()
    import triton

    flat = x.contiguous().reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.float8_e4m3fn, device=x.device)
    _e4m3_kernel()[(triton.cdiv(flat.numel(), 1024),)](flat, out, flat.numel(), BLOCK=1024)
    return out.float().reshape(x.shape)


@functools.cache
def _e4m3_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def to_e4m3(p_x, p_y, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(p_y + i, tl.load(p_x + i, mask=i < n).to(tl.float8e4nv), mask=i < n)

    return to_e4m3


def _tiled_reference(q8, qs, k8, ks, vt8, vs, scale, d, block_n, tile_scales=False):
    """The kernel's loop in PyTorch: key tiles of block_n, running maximum, P rounded against it."""
    qk_scale = scale / math.log(2.0)
    q_scale = qs.float() * qk_scale
    n = k8.shape[-2]
    if tile_scales:
        ks = ks.repeat_interleave(block_n, dim=-1)[..., :n]
    m_i = torch.full(q8.shape[:-1], float("-inf"), device=q8.device)
    l_i = torch.zeros(q8.shape[:-1], device=q8.device)
    acc = torch.zeros(*q8.shape, device=q8.device)
    for start in range(0, n, block_n):
        cols = slice(start, min(start + block_n, n))
        x = (q8.float() @ k8[..., cols, :].float().transpose(-1, -2)) * ks[..., None, cols]
        m_new = torch.maximum(m_i, x.amax(-1) * q_scale)
        alpha = torch.exp2(m_i - m_new)
        p = torch.exp2(x * q_scale[..., None] - (m_new - math.log2(448))[..., None])   # 448 x the probability
        l_i = l_i * alpha + p.sum(-1)
        if vt8.dtype == torch.float8_e4m3fn:
            acc = acc * alpha[..., None] + _round_e4m3_like_the_kernel(p) @ vt8[..., cols].float().transpose(-1, -2)
        else:   # the value product from v as it is, in bf16 (fp16 under the interpreter, as the kernel)
            dot = torch.float16 if INTERPRETED or vt8.dtype == torch.float16 else torch.bfloat16
            v = F.pad(vt8[..., cols, :].to(dot).float(), (0, q8.shape[-1] - d))
            acc = acc * alpha[..., None] + p.to(dot).float() @ v
        m_i = m_new
    return (acc * vs / l_i[..., None])[..., :d]


def test_quantizers_layouts_and_bounds():
    q, _, v = _qkv(d=40)
    q8, qs = ai.quantize_int8_per_token(q, 64)
    assert q8.shape == (2, 3, 70, 64) and q8.dtype == torch.int8 and qs.shape == (2, 3, 70)
    assert not q8[..., 40:].any()                                            # padded channels are zero
    assert int(q8.abs().amax(-1).min()) == 127                               # each token fills the code range
    assert float(((q8[..., :40].float() * qs[..., None] - q).abs() / qs[..., None]).max()) <= 0.5 + 1e-4
    vt8, vs = ai.quantize_v_fp8_transposed(v, 64)
    assert vt8.shape == (2, 3, 64, 160) and vt8.dtype == torch.float8_e4m3fn and vs.numel() == 1   # keys to x16
    assert not vt8[..., 40:, :].float().any() and not vt8[..., 150:].float().any()
    back = vt8[..., :40, :150].float().transpose(-1, -2) * vs
    assert rel_err(back, v) < 0.04                                           # E4M3: 3 mantissa bits
    assert ai.padded_head_dim(112) == 128 and ai.padded_head_dim(16) == 32 and ai.padded_head_dim(64) == 64


def test_reference_is_attention_of_the_dequantized_operands_but_for_p():
    """Against exact attention of the dequantized operands the reference differs by P's E4M3 rounding alone (a
    few percent at most); against exact attention of the originals, far less than all-E4M3 attention does."""
    from quant.attention import attention_fp8

    q, k, v = _qkv(seed=1)
    ops = _operands(q, k, v)
    q8, qs, k8, ks, vt8, vs = ops
    scale = 48 ** -0.5
    got = ai.attention_int8_reference(*ops, scale, 48, torch.float32)
    deq = F.scaled_dot_product_attention(q8[..., :48].float() * qs[..., None], k8[..., :48].float() * ks[..., None],
                                         vt8[..., :48, :150].float().transpose(-1, -2) * vs, scale=scale)
    err_p = rel_err(got, deq)
    assert 1e-4 < err_p < 0.03
    exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert rel_err(got, exact) < 0.5 * rel_err(attention_fp8(q, k, v, scale), exact)


def test_reference_is_the_quality_emulation():
    """quant.attention's "ivp" (what bench/quant_quality.py measured on the model) is the same arithmetic (an
    E4M3 rounding of P is ~3 % of the value: the bound is far below what a different recipe would give)."""
    from quant.attention import attention_fp8

    q, k, v = _qkv(seed=2, d=32)
    want = attention_fp8(q, k, v, 0.2, operands="ivp")
    # the same roundings; the products are scaled in another order, which flips the odd E4M3 rounding of P
    assert rel_err(ai.attention_int8(q, k, v, 0.2, impl="reference"), want) < 2e-3


@needs_triton
@pytest.mark.parametrize("config", [(64, 256, 4, 1, False), (32, 32, 4, 2, False), None, (64, 256, 4, 1, True),
                                    (32, 32, 4, 2, True), (64, 256, 4, 1, False, False), (32, 32, 4, 2, True, False)],
                         ids=["one-tile", "tiles", "default", "one-tile-tile-scales", "tiles-tile-scales",
                              "one-tile-bf16-v", "tiles-tile-scales-bf16-v"])
@pytest.mark.parametrize("shape", [(2, 3, 70, 150, 48), (1, 2, 33, 17, 112)], ids=["d48", "d112"])
def test_triton_kernel_is_its_tiled_arithmetic(config, shape, monkeypatch):
    """Queries and keys not multiples of the blocks; one key tile (P rounded against the final maximum: the
    reference itself) and several (against the running one); k scaled per token or per key tile."""
    from kernels.attention_int8_triton import CONFIG, Launch, attention_int8_triton

    b, h, m, n, d = shape
    q, k, v = _qkv(b, h, m, n, d, seed=3)
    launch = Launch(*(config or CONFIG))
    block_n, tile_scales = launch.block_n, launch.tile_scales
    key_block = block_n if tile_scales else 1
    ops = _operands(q, k, v, key_block, launch.v_fp8)
    scale = d ** -0.5
    got = attention_int8_triton(*ops, scale, d, torch.float32, config=config, key_block=key_block)
    assert got.shape == (b, h, m, d)
    assert rel_err(got, _tiled_reference(*ops, scale, d, block_n, tile_scales)) < 1e-4
    if block_n >= n and launch.v_fp8:
        monkeypatch.setattr(ai, "round_e4m3", _round_e4m3_like_the_kernel)
        want = ai.attention_int8_reference(*ops, scale, d, torch.float32, key_block=key_block)
        assert rel_err(got, want) < 1e-4
    exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert rel_err(got, exact) < 0.06


@needs_triton
def test_triton_kernel_takes_strided_views_and_writes_bf16():
    """Operands that are views of larger buffers (as cached K / V would be), a bf16 result."""
    from kernels.attention_int8_triton import attention_int8_triton

    q, k, v = _qkv(1, 2, 20, 40, 32, seed=4)
    q8, qs, k8, ks, vt8, vs = _operands(q, k, v)
    big_k = torch.zeros(1, 2, 60, 32, dtype=torch.int8, device=DEVICE)
    big_k[:, :, 5:45] = k8
    big_ks = torch.zeros(1, 2, 60, device=DEVICE)
    big_ks[:, :, 5:45] = ks
    got = attention_int8_triton(q8, qs, big_k[:, :, 5:45], big_ks[:, :, 5:45], vt8, vs, 0.3, 32)
    want = attention_int8_triton(q8, qs, k8, ks, vt8, vs, 0.3, 32)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_bad_operands_are_named():
    q, k, v = _qkv(1, 1, 4, 8, 16)
    q8, qs, k8, ks, vt8, vs = _operands(q, k, v)
    with pytest.raises(TypeError, match="int8"):
        ai.attention_int8_quantized(q8.float(), qs, k8, ks, vt8, vs, 0.25, 16)
    with pytest.raises(ValueError, match="shapes"):
        ai.attention_int8_quantized(q8, qs, k8[..., :16], ks, vt8, vs, 0.25, 16)
    with pytest.raises(ValueError, match="scales"):
        ai.attention_int8_quantized(q8, qs[..., :2], k8, ks, vt8, vs, 0.25, 16)


def _walk_latents(model, chunks=3):
    from runtime.camera import actions_to_c2w
    from runtime.pipeline import latent_intrinsics
    from runtime.session import WorldSession

    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width, generator=g)
    text = model.prepare_text(torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=g),
                              torch.ones(1, cfg.text_max_length))
    session = WorldSession(model, text, first_latent=first, intrinsics_latent=latent_intrinsics(cfg), seed=3)
    poses = actions_to_c2w("w-40,wd-30,l-20,none-200")
    out = []
    for _ in range(chunks):
        raw = session.next_raw_frames()
        out.append(session.step(poses[raw.start:raw.stop]).latents.float())
    return out


def test_softmax_blocks_run_the_int8_kernel_when_asked():
    """set_attention_kernel_(model, "int8") routes the softmax blocks' streaming self-attention through
    kernels.attention_int8: the latents move (it runs), stay close to SDPA's, and equal the quality emulation's
    ("ivp", what bench/quant_quality.py measured) up to the odd flipped E4M3 rounding of P."""
    from quant.attention import enable_fp8_attention_
    from runtime.attention import set_attention_kernel_
    from runtime.model import build_model

    model = build_model("tiny-world", init="random", seed=1)
    sdpa = _walk_latents(model)
    assert set_attention_kernel_(model, "int8") == sum(1 for b in model.blocks if b.attn.__class__.__name__ ==
                                                       "SoftmaxAttention") > 0
    int8 = _walk_latents(model)
    set_attention_kernel_(model, "sdpa")
    enable_fp8_attention_(model, "ivp")
    emulated = _walk_latents(model)
    for a, b, e in zip(int8, sdpa, emulated):
        assert 0 < rel_err(a, b) < 0.1          # random init: ~1e-4 (the residual stream dominates)
        assert rel_err(a, e) < 0.1 * rel_err(a, b)   # ~3e-6
    enable_fp8_attention_(model, "")
    set_attention_kernel_(model, "int8_bf16v")   # the value product in bf16: closer to SDPA than E4M3 values
    for a, b, e8 in zip(_walk_latents(model), sdpa, int8):
        assert 0 < rel_err(a, b) < rel_err(e8, b)
    with pytest.raises(ValueError, match="attention kernel"):
        set_attention_kernel_(model, "fp8")


@needs_triton
def test_the_kernel_compiles_into_a_graph_as_one_op():
    """torch.compile(fullgraph=True) takes the kernel as the sana_wm::attention_int8 custom op (its fake gives the
    output's shape and dtype) with the quantization around it, as the compiled softmax blocks run it."""
    import torch._dynamo

    q, k, v = _qkv(1, 2, 20, 40, 32, seed=5)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda q, k, v: ai.attention_int8(q, k, v, 0.3, impl="triton"), fullgraph=True,
                                 dynamic=False)
        got = compiled(q, k, v)
    finally:
        torch._dynamo.reset()
    assert got.shape == q.shape and got.dtype == q.dtype
    assert rel_err(got, ai.attention_int8(q, k, v, 0.3, impl="triton")) < 1e-5


def test_key_scales_per_tile():
    """k quantized per block of tokens: each block's scale is its largest token's, the codes use it, and the
    reference expands it back to the tokens; a launch whose key tile is not the scales' block is refused."""
    _, k, v = _qkv(1, 2, 4, 150, 32, seed=6)
    k8, ks = ai.quantize_int8_per_token(k, 32, block=64)
    per_token = ai.quantize_int8_per_token(k, 32)[1]
    assert ks.shape == (1, 2, 3)                                   # 150 keys: blocks of 64, 64, 22
    assert torch.equal(ks[..., 2], per_token[..., 128:].amax(-1))
    assert float(((k8.float() * ks.repeat_interleave(64, -1)[..., :150, None] - k).abs()).max()) <= \
        0.5 * float(ks.max()) + 1e-6
    q, _, _ = _qkv(1, 2, 4, 150, 32, seed=6)
    q8, qs = ai.quantize_int8_per_token(q, 32)
    vt8, vs = ai.quantize_v_fp8_transposed(v, 32)
    with pytest.raises(ValueError, match="per 32 keys"):
        ai.attention_int8_quantized(q8, qs, k8, ks, vt8, vs, 0.2, 32, key_block=32)
    if RUN_TRITON:
        from kernels.attention_int8_triton import attention_int8_triton

        with pytest.raises(ValueError, match="key tiles of 32"):
            attention_int8_triton(q8, qs, k8, ks, vt8, vs, 0.2, 32, config=(32, 32, 4, 2, True), key_block=64)
