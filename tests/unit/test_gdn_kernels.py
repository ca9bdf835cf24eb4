"""GDN scan and prep kernels against their fp32 PyTorch references (CPU; Triton under TRITON_INTERPRET=1).

Without CUDA this module switches the Triton interpreter on before the kernel modules are imported (Triton
reads TRITON_INTERPRET when a kernel is decorated), so the CPU CI runs the Triton kernels at small fp32
shapes. Full shapes, bf16 and graph capture are in tests/gpu/test_gdn_kernels_gpu.py.
"""
from __future__ import annotations

import os

import torch

from tests.triton_setup import DEVICE, HAVE_TRITON, needs_triton

# The kernel modules below must see the interpreter switch tests.triton_setup sets.
# isort: split

import pytest

from kernels import gdn, prep
from kernels.gdn_reference import gdn_bidirectional_reference, gdn_scan_chunked, gdn_scan_recurrent
from kernels.gdn_triton_testing import chunk_causal_chunks, gdn_inputs, prep_inputs, random_rigid, ucpe_inputs
from tests.tolerances import BF16_REL, FP32_REL, TF32_REL, rel_err

# (B, H, T, S, D, Dv): odd token counts (not multiples of the 64-token blocks), T = 1, T = 4, a head dim
# that is not a power of two, D = 112 as in the model, and Dv != Dk.
GDN_SHAPES = [
    (1, 2, 4, 37, 16, 16),
    (1, 1, 1, 20, 16, 16),
    (2, 1, 3, 70, 24, 24),
    (1, 1, 2, 45, 112, 112),
    (1, 1, 3, 19, 16, 32),
]
SHAPE_IDS = [f"B{b}H{h}T{t}S{s}D{d}V{v}" for b, h, t, s, d, v in GDN_SHAPES]


SCAN_TOL = FP32_REL if DEVICE == "cpu" else TF32_REL
"""Triton scans against the fp32 reference: the interpreter computes exactly in fp32, a GPU runs the dots in
TF32 (tests/gpu holds them to the same-precision-PyTorch rule at full shape)."""


def assert_close(name, out, ref, tol=FP32_REL):
    """Relative RMS error of `out` against the fp32 reference."""
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative RMS error {err:.3e} > {tol:.1e}"


def assert_scan_close(name, out, ref):
    assert_close(name, out, ref, tol=SCAN_TOL)


def _split_chunks(T: int):
    """Backward chunks like the chunk-causal model (first chunk one frame longer), or None for T < 3."""
    if T < 3:
        return None
    return ((0, 2), (2, T))


def _scan_kwargs(inp, reverse):
    kw = dict(inp)
    if reverse:
        kw.pop("initial_state", None)
    return kw


# ----------------------------------------------------------------------------------------------------------
# References agree with each other
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_z", [True, False])
@pytest.mark.parametrize("init", [False, True])
def test_recurrent_and_chunked_references_agree(reverse, with_z, init):
    if reverse and init:
        pytest.skip("the backward scan takes no initial state")
    inp = gdn_inputs(2, 3, 5, 33, 16, 24, initial_state=init, seed=1)
    kw = dict(_scan_kwargs(inp, reverse), reverse=reverse, with_z=with_z, output_final_state=True)
    a = gdn_scan_recurrent(**kw)
    b = gdn_scan_chunked(**kw)
    assert_close("num", b.num, a.num)
    if with_z:
        assert_close("den", b.den, a.den)
    if reverse:
        assert a.final_state is None and b.final_state is None
    else:
        assert_close("final state", b.final_state[0], a.final_state[0])
        if with_z:
            assert_close("final z", b.final_state[1], a.final_state[1])


@pytest.mark.parametrize("with_z", [True, False])
def test_bidirectional_reference_forms_agree(with_z):
    inp = gdn_inputs(1, 2, 7, 21, 16, initial_state=True, seed=2)
    chunks = ((0, 4), (4, 7))
    a, fa = gdn_bidirectional_reference(**inp, with_z=with_z, output_final_state=True, chunks=chunks,
                                        form="recurrent")
    b, fb = gdn_bidirectional_reference(**inp, with_z=with_z, output_final_state=True, chunks=chunks)
    assert_close("out", b, a)
    assert_close("final state", fb[0], fa[0])


def test_streaming_chunks_equal_one_pass_reference():
    """Forward scan in two pieces with the carried state == one pass (the streaming invariant)."""
    inp = gdn_inputs(1, 2, 6, 17, 16, initial_state=True, seed=3)
    full = gdn_scan_chunked(**inp, output_final_state=True)
    head = {n: (t[:, :, :2] if n != "initial_state" else t) for n, t in inp.items()}
    tail = {n: t[:, :, 2:] for n, t in inp.items() if n != "initial_state"}
    a = gdn_scan_chunked(**head, output_final_state=True)
    b = gdn_scan_chunked(**tail, initial_state=a.final_state, output_final_state=True)
    assert_close("num", torch.cat((a.num, b.num), 2), full.num)
    assert_close("state", b.final_state[0], full.final_state[0])


def test_chunk_causal_chunks_helper():
    assert chunk_causal_chunks(7) == ((0, 4), (4, 7))
    assert chunk_causal_chunks(5) == ((0, 5),)
    assert chunk_causal_chunks(121)[-1] == (118, 121) and len(chunk_causal_chunks(121)) == 40
    assert chunk_causal_chunks(41)[-1] == (37, 41)


# ----------------------------------------------------------------------------------------------------------
# Triton scans against the reference
# ----------------------------------------------------------------------------------------------------------
def _triton_scan(**kw):
    from kernels.gdn_triton import nan_filled_buffers

    with nan_filled_buffers():
        return gdn.gdn_scan(**kw, impl="triton")


def _triton_bidirectional(**kw):
    from kernels.gdn_triton import nan_filled_buffers

    with nan_filled_buffers():
        return gdn.gdn_bidirectional(**kw, impl="triton")


@needs_triton
@pytest.mark.parametrize("shape", GDN_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("reverse,init,with_z", [(False, False, False), (False, True, True), (True, False, True),
                                                 (True, False, False)],
                         ids=["fwd", "fwd-init-z", "bwd-z", "bwd"])
def test_triton_scan_matches_reference(shape, reverse, init, with_z):
    B, H, T, S, D, Dv = shape
    inp = gdn_inputs(B, H, T, S, D, Dv, device=DEVICE, initial_state=init, seed=10)
    kw = dict(_scan_kwargs(inp, reverse), reverse=reverse, with_z=with_z, output_final_state=True)
    out = _triton_scan(**kw)
    ref = gdn_scan_chunked(**kw)
    assert_scan_close("num", out.num, ref.num)
    if with_z:
        assert_scan_close("den", out.den, ref.den)
    else:
        assert out.den is None
    if reverse:
        assert out.final_state is None
    else:
        assert_scan_close("final state", out.final_state[0], ref.final_state[0])
        if with_z:
            assert_scan_close("final z", out.final_state[1], ref.final_state[1])
        else:
            assert out.final_state[1] is None


@needs_triton
@pytest.mark.parametrize("shape", GDN_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("init", [False, True], ids=["no-init", "init"])
def test_triton_bidirectional_matches_reference(shape, init):
    B, H, T, S, D, Dv = shape
    inp = gdn_inputs(B, H, T, S, D, Dv, device=DEVICE, initial_state=init, seed=20)
    # The z and no-z paths, each once with the backward restarting inside the frames and once without.
    combos = ((True, _split_chunks(T)), (False, None)) if init else ((True, None), (False, _split_chunks(T)))
    for with_z, chunks in combos:
        kw = dict(inp, with_z=with_z, output_final_state=True, chunks=chunks)
        out, final = _triton_bidirectional(**kw)
        ref, ref_final = gdn_bidirectional_reference(**kw)
        assert_scan_close(f"out z={with_z} chunks={chunks}", out, ref)
        assert_scan_close("final state", final[0], ref_final[0])
        if with_z:
            assert_scan_close("final z", final[1], ref_final[1])


@needs_triton
def test_triton_bidirectional_without_final_state_and_rotation():
    inp = gdn_inputs(1, 2, 3, 30, 16, device=DEVICE, seed=21)
    del inp["q_rot"], inp["k_rot"]
    out, final = _triton_bidirectional(**inp)
    ref, _ = gdn_bidirectional_reference(**inp)
    assert final is None
    assert_scan_close("out", out, ref)


@needs_triton
def test_triton_many_chunks_and_strided_inputs():
    """Many backward restarts (chunks of 1 and 2 frames) and inputs given as permuted views."""
    B, H, T, S, D = 1, 2, 6, 25, 16
    inp = gdn_inputs(B, H, T, S, D, device=DEVICE, initial_state=True, seed=22)
    # Values as a [B, T, S, H, D] projection viewed in the scan layout, beta / g as the runtime makes them
    # ([B, T, S, H] / [B, T, H] permuted): all non-contiguous views.
    inp["v"] = inp["v"].permute(0, 2, 3, 1, 4).contiguous().permute(0, 3, 1, 2, 4)
    inp["beta"] = inp["beta"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    inp["g"] = inp["g"].permute(0, 2, 1).contiguous().permute(0, 2, 1)
    assert not (inp["v"].is_contiguous() or inp["beta"].is_contiguous() or inp["g"].is_contiguous())
    chunks = ((0, 1), (1, 3), (3, 4), (4, 6))
    out, final = _triton_bidirectional(**inp, chunks=chunks, output_final_state=True)
    ref, ref_final = gdn_bidirectional_reference(**inp, chunks=chunks, output_final_state=True)
    assert_scan_close("out", out, ref)
    assert_scan_close("final state", final[0], ref_final[0])


def _check_with_and_without_z(inp: dict) -> None:
    """The Triton bidirectional scan (buffers NaN-filled) against the reference, with and without the z stream."""
    for with_z in (True, False):
        out, final = _triton_bidirectional(**inp, with_z=with_z, output_final_state=True)
        ref, ref_final = gdn_bidirectional_reference(**inp, with_z=with_z, output_final_state=True)
        assert_scan_close("out", out, ref)
        assert_scan_close("final state", final[0], ref_final[0])
        if with_z:
            assert_scan_close("final z", final[1], ref_final[1])


@needs_triton
def test_triton_split_rows_and_multi_tile_outputs(monkeypatch):
    """Launch shapes the GPU configs use at small B*H*T: phase A products split over output-row blocks, phase
    C programs looping over several token tiles."""
    from kernels import gdn_triton

    cfg = dict(gdn_triton._config(torch.device(DEVICE)), a_block_s=16, target_programs_per_sm=64,
               c_block_s=16, c_tiles=2)
    monkeypatch.setattr(gdn_triton, "_config", lambda device: cfg)
    inp = gdn_inputs(1, 1, 3, 40, 48, 64, device=DEVICE, initial_state=True, seed=25)   # BK = BV = 64: 4 blocks
    _check_with_and_without_z(inp)


@needs_triton
@pytest.mark.parametrize("split", [2, 4])
def test_triton_phase_a_token_split(monkeypatch, split):
    """Phase A with its tokens split over programs that add partial Gram products atomically (`a_split_s`),
    with row blocks too: S = 40 in blocks of 16 leaves the last split short (2: 32 + 8 tokens) or empty (4:
    16 + 16 + 8 + 0)."""
    from kernels import gdn_triton

    cfg = dict(gdn_triton._config(torch.device(DEVICE)), a_block_s=16, a_block_s_bf16=16, a_split_s=split,
               target_programs_per_sm=64)
    monkeypatch.setattr(gdn_triton, "_config", lambda device: cfg)
    inp = gdn_inputs(1, 2, 3, 40, 48, 32, device=DEVICE, initial_state=True, seed=26)
    _check_with_and_without_z(inp)


@needs_triton
@pytest.mark.parametrize("D", [16, 112])
def test_triton_bidirectional_fused_inverse_ucpe(D):
    """out_ucpe applies the camera branch's inverse UCPE in the output epilogue: equal to ucpe_prep(out, 'out')."""
    B, H, T, S = 1, 2, 3, 21
    inp = gdn_inputs(B, H, T, S, D, device=DEVICE, initial_state=True, seed=26)
    del inp["q_rot"], inp["k_rot"]
    inp["initial_state"] = (inp["initial_state"][0], None)
    _, P, cc, cs = ucpe_inputs(B, H, T, S, D, device=DEVICE, seed=27)
    out, _ = _triton_bidirectional(**inp, with_z=False, out_ucpe=(P, cc, cs))
    ref, _ = gdn.gdn_bidirectional(**inp, with_z=False, out_ucpe=(P, cc, cs), impl="reference")
    assert_scan_close("fused inverse UCPE", out, ref)
    plain, _ = gdn.gdn_bidirectional(**inp, with_z=False, impl="reference")
    assert_close("reference composition", ref, prep.ucpe_prep(plain, P, cc, cs, "out", impl="reference"))


@needs_triton
@pytest.mark.parametrize("with_z", [True, False])
def test_triton_bidirectional_token_major_bf16_output(with_z):
    """token_major / out_dtype: phase C writes [B, T, S, H, Dv] in bf16 (the layout and dtype the block's
    projections read), the same values as the fp32 head-major output; with the inverse UCPE epilogue too."""
    B, H, T, S, D = 1, 3, 3, 21, 16
    inp = gdn_inputs(B, H, T, S, D, device=DEVICE, initial_state=True, seed=28)
    if not with_z:
        del inp["q_rot"], inp["k_rot"]
        inp["initial_state"] = (inp["initial_state"][0], None)
    _, P, cc, cs = ucpe_inputs(B, H, T, S, D, device=DEVICE, seed=29)
    extra = {} if with_z else {"out_ucpe": (P, cc, cs)}
    head_major, _ = _triton_bidirectional(**inp, with_z=with_z, **extra)
    out, _ = _triton_bidirectional(**inp, with_z=with_z, out_dtype=torch.bfloat16, token_major=True, **extra)
    assert out.dtype == torch.bfloat16 and out.shape == (B, T, S, H, D)
    assert_close("token-major bf16", out.float(), head_major.permute(0, 2, 3, 1, 4), tol=BF16_REL / 4)
    ref, _ = gdn.gdn_bidirectional(**inp, with_z=with_z, out_dtype=torch.bfloat16, token_major=True, impl="reference",
                                   **extra)
    assert ref.dtype == torch.bfloat16 and ref.shape == out.shape
    assert_close("reference", out.float(), ref.float(), tol=BF16_REL / 4)


@needs_triton
def test_triton_streaming_chunks_equal_one_pass():
    inp = gdn_inputs(1, 2, 7, 23, 16, device=DEVICE, initial_state=True, seed=23)
    full = _triton_scan(**inp, output_final_state=True)
    state = inp["initial_state"]
    nums = []
    for s, e in ((0, 4), (4, 7)):
        part = {n: t[:, :, s:e] for n, t in inp.items() if n != "initial_state"}
        out = _triton_scan(**part, initial_state=state, output_final_state=True)
        nums.append(out.num)
        state = out.final_state
    assert_scan_close("num", torch.cat(nums, 2), full.num)
    assert_scan_close("den", state[1], full.final_state[1])
    assert_scan_close("state", state[0], full.final_state[0])


@needs_triton
def test_bad_chunks_rejected():
    inp = gdn_inputs(1, 1, 4, 8, 16, device=DEVICE)
    with pytest.raises(ValueError):
        gdn.gdn_bidirectional(**inp, chunks=((0, 2), (3, 4)), impl="triton")


@needs_triton
def test_custom_ops_fake_and_real_agree():
    """torch.library.opcheck: schema, fake (meta) implementation and real kernel are consistent."""
    inp = gdn_inputs(1, 1, 2, 9, 16, device=DEVICE, initial_state=True, seed=24)
    h0, z0 = inp["initial_state"]
    args = (inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], inp["q_rot"], inp["k_rot"], h0, z0, True,
            1e-8, True, [1, 2])
    torch.library.opcheck(torch.ops.sana_wm.gdn_bidirectional.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    (q, k, wq, wk, cos, sin), kw = prep_inputs(1, 2, 5, 2, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.sana_wm.gdn_prep.default,
                          (q, k, wq, wk, cos, sin, kw["num_heads"], kw["key_scale"], 1e-5, True, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))
    x, P, cc, cs = ucpe_inputs(1, 2, 2, 5, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.sana_wm.ucpe_prep.default, (x, P, cc, cs, "kv", torch.float32),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.sana_wm.ucpe_prep_tokens.default, (x, P, cc, cs, "out", torch.bfloat16),
                          test_utils=("test_schema", "test_faketensor"))
    cargs, ckw = _camera_inputs(1, 2, 5, 2, 16, seed=45)
    torch.library.opcheck(torch.ops.sana_wm.ucpe_qkv_prep.default,
                          (*cargs, ckw["num_heads"], ckw["key_scale"], 1e-5, True, torch.bfloat16),
                          test_utils=("test_schema", "test_faketensor"))


@needs_triton
def test_streaming_step_traces_without_graph_breaks():
    """torch.compile(fullgraph=True) through gdn_prep + gdn_bidirectional (the custom ops), no recompiles."""
    from torch._dynamo.testing import CompileCounter

    H, S, D, T = 2, 9, 16, 3

    def step(qp, kp, vp, wq, wk, cos, sin, beta, g, h0, z0):
        q, k, q_rot, k_rot = prep.gdn_prep(qp, kp, wq, wk, cos, sin, num_heads=H, key_scale=0.1, impl="triton")
        v = vp.view(*vp.shape[:3], H, D).permute(0, 3, 1, 2, 4)
        out, (ht, zt) = gdn.gdn_bidirectional(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, initial_state=(h0, z0),
                                              output_final_state=True, impl="triton")
        return out, ht, zt

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for seed in range(2):
        args, _ = prep_inputs(1, T, S, H, D, device=DEVICE, seed=seed)
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        rest = (torch.randn(1, T, S, H * D, generator=gen, device=DEVICE), torch.rand(1, H, T, S, device=DEVICE),
                torch.rand(1, H, T, device=DEVICE), torch.randn(1, H, D, D, device=DEVICE),
                torch.rand(1, H, D, device=DEVICE))
        inputs = (*args[:2], rest[0], *args[2:], *rest[1:])
        for a, b in zip(compiled(*inputs), step(*inputs), strict=True):
            assert_close("compiled", a, b)
    assert counter.frame_count == 1


# ----------------------------------------------------------------------------------------------------------
# Prep
# ----------------------------------------------------------------------------------------------------------
def test_ucpe_reference_properties():
    """kv then out on the same token is the identity; q'.k' on the group part equals q^T P_i P_j^-1 k."""
    x, P, cc, cs = ucpe_inputs(1, 2, 2, 6, 16, seed=5)
    back = prep.ucpe_prep(prep.ucpe_prep(x, P, cc, cs, "kv"), P, cc, cs, "out")
    assert_close("kv->out identity", back, x)
    eye = torch.eye(4).expand_as(P)
    assert_close("rigid inverse", prep.rigid_inverse(P) @ P, eye)
    q = prep.ucpe_prep(x, P, cc, cs, "q")[..., :4]
    k = prep.ucpe_prep(x, P, cc, cs, "kv")[..., :4]
    # token 0 vs token 1 of frame 0, first group, first head.
    lhs = (q[0, 0, 0, 0] * k[0, 0, 0, 1]).sum()
    rhs = x[0, 0, 0, 0, :4] @ P[0, 0, 0] @ prep.rigid_inverse(P[0, 0, 1]) @ x[0, 0, 0, 1, :4]
    assert_close("relative transform", lhs, rhs)


# (B, T, S, H, D): odd token counts, a head count that is not a power of two, D = 112.
PREP_SHAPES = [(1, 2, 5, 3, 16), (2, 1, 7, 5, 24), (1, 3, 9, 20, 112)]


@needs_triton
@pytest.mark.parametrize("shape", PREP_SHAPES, ids=[f"B{b}T{t}S{s}H{h}D{d}" for b, t, s, h, d in PREP_SHAPES])
@pytest.mark.parametrize("relu", [True, False])
def test_triton_gdn_prep_matches_reference(shape, relu):
    from kernels.gdn_triton import nan_filled_buffers

    B, T, S, H, D = shape
    args, kw = prep_inputs(B, T, S, H, D, device=DEVICE, seed=30)
    with nan_filled_buffers():
        out = prep.gdn_prep(*args, **kw, relu=relu, impl="triton")
    ref = prep.gdn_prep(*args, **kw, relu=relu, impl="reference")
    for name, a, b in zip(("q", "k", "q_rot", "k_rot"), out, ref, strict=True):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert_close(name, a, b)


@needs_triton
@pytest.mark.parametrize("shape", [(1, 2, 2, 5, 16), (2, 3, 1, 37, 24), (1, 2, 2, 33, 112)],
                         ids=["B1H2T2S5D16", "B2H3T1S37D24", "B1H2T2S33D112"])
@pytest.mark.parametrize("mode", prep.UCPE_MODES)
def test_triton_ucpe_prep_matches_reference(shape, mode):
    from kernels.gdn_triton import nan_filled_buffers

    x, P, cc, cs = ucpe_inputs(*shape, device=DEVICE, seed=31)
    with nan_filled_buffers():
        out = prep.ucpe_prep(x, P, cc, cs, mode, impl="triton")
        tokens = prep.ucpe_prep(x, P, cc, cs, mode, token_major=True, impl="triton")
    ref = prep.ucpe_prep(x, P, cc, cs, mode, impl="reference")
    assert_close(mode, out, ref)
    B, H, T, S, D = shape
    assert tokens.shape == (B, T, S, H, D) and tokens.is_contiguous()
    assert_close(f"{mode} token-major", tokens, ref.permute(0, 2, 3, 1, 4))
    assert torch.equal(prep.ucpe_prep(x, P, cc, cs, mode, token_major=True, impl="reference"),
                       ref.permute(0, 2, 3, 1, 4))


def _camera_inputs(B, T, S, H, D, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    C = H * D
    q, k, v = (torch.randn(B, T, S, C, generator=gen, device=DEVICE) for _ in range(3))
    wq, wk = (0.5 + torch.rand(C, generator=gen, device=DEVICE) for _ in range(2))
    theta = torch.rand(T, S, D // 4, generator=gen, device=DEVICE) * 6.2832
    P = random_rigid(B, T, S, device=DEVICE, gen=gen)
    return (q, k, v, wq, wk, P, theta.cos(), theta.sin()), {"num_heads": H, "key_scale": (D * S) ** -0.5}


def test_ucpe_qkv_reference_equals_separate_ops():
    (q, k, v, wq, wk, P, cc, cs), kw = _camera_inputs(1, 2, 7, 3, 16, seed=40)
    qp, kp, vp, inflation = prep.ucpe_qkv_prep(q, k, v, wq, wk, P, cc, cs, **kw)
    D = 16
    dummy = torch.ones(2, 7, D // 2, device=DEVICE), torch.zeros(2, 7, D // 2, device=DEVICE)   # no RoPE
    qh, kh, _, _ = prep.gdn_prep(q, k, wq, wk, *dummy, **kw)
    vh = v.view(1, 2, 7, 3, D).permute(0, 3, 1, 2, 4)
    kp2 = prep.ucpe_prep(kh, P, cc, cs, "kv")
    assert_close("q'", qp, prep.ucpe_prep(qh, P, cc, cs, "q"))
    assert_close("k'", kp, kp2)
    assert_close("v'", vp, prep.ucpe_prep(vh, P, cc, cs, "kv"))
    assert_close("inflation", inflation, (kp2.pow(2).sum(-1) / kh.pow(2).sum(-1)).mean(-1))


@needs_triton
@pytest.mark.parametrize("shape", [(1, 2, 5, 3, 16), (2, 1, 7, 5, 24), (1, 2, 9, 20, 112)],
                         ids=["B1T2S5H3D16", "B2T1S7H5D24", "B1T2S9H20D112"])
@pytest.mark.parametrize("relu", [True, False])
def test_triton_ucpe_qkv_prep_matches_reference(shape, relu):
    from kernels.gdn_triton import nan_filled_buffers

    args, kw = _camera_inputs(*shape, seed=41)
    with nan_filled_buffers():
        out = prep.ucpe_qkv_prep(*args, **kw, relu=relu, impl="triton")
    ref = prep.ucpe_qkv_prep(*args, **kw, relu=relu, impl="reference")
    for name, a, b in zip(("q'", "k'", "v'", "inflation"), out, ref, strict=True):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert_close(name, a, b)


@needs_triton
@pytest.mark.parametrize("S", [7, 1100], ids=["S7", "S1100"])   # 1100: two token blocks of the kernel's loop
def test_triton_ucpe_beta_discount_matches_reference(S):
    """The camera branch's beta: beta / max(1, mean_S ratio) per head and frame, in one launch, reading beta
    through the strides of a permuted view (as the GDN layer hands it); frames whose mean ratio is below 1 keep
    beta as is. The per-token ratio of ucpe_qkv_prep averages to its inflation."""
    from kernels.gdn_triton import nan_filled_buffers

    B, H, T = 2, 3, 4
    g = torch.Generator().manual_seed(44)
    beta = torch.rand(B, T, S, H, generator=g).to(DEVICE).permute(0, 3, 1, 2)       # [B, H, T, S] view
    ratio = (torch.rand(B, H, T, S, generator=g) * 2.5).to(DEVICE)                 # means around 1.25
    ratio[:, :, 0] *= 0.3                                                            # first frames: mean < 1
    with nan_filled_buffers():
        got = prep.ucpe_beta_discount(beta, ratio, impl="triton")
    want = prep.ucpe_beta_discount_reference(beta, ratio)
    assert got.dtype == torch.float32 and got.shape == (B, H, T, S)
    assert_close("beta_cam", got, want)
    assert torch.allclose(got[:, :, 0], beta[:, :, 0].float())
    assert not torch.allclose(got[:, :, 1:], beta[:, :, 1:].float())
    with pytest.raises(ValueError, match="ucpe_beta_discount"):
        prep.ucpe_beta_discount(beta, ratio[..., :-1])
    args, kw = _camera_inputs(1, 2, 5, 3, 16, seed=45)
    per_token = prep.ucpe_qkv_prep(*args, **kw, per_token_ratio=True, impl="triton")[3]
    assert per_token.shape == (1, 3, 2, 5)
    assert_close("inflation", per_token.mean(-1), prep.ucpe_qkv_prep(*args, **kw, impl="reference")[3])


@needs_triton
def test_triton_prep_bf16_outputs():
    """out_dtype=bf16: the fp32 results rounded once (the math stays fp32)."""
    args, kw = prep_inputs(1, 2, 7, 3, 16, device=DEVICE, seed=42)
    ref = prep.gdn_prep(*args, **kw, impl="reference")
    out = prep.gdn_prep(*args, **kw, out_dtype=torch.bfloat16, impl="triton")
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == torch.bfloat16
        assert_close("gdn_prep bf16", a, b, tol=BF16_REL)
    cargs, ckw = _camera_inputs(1, 2, 7, 3, 16, seed=43)
    ref = prep.ucpe_qkv_prep(*cargs, **ckw, impl="reference")
    out = prep.ucpe_qkv_prep(*cargs, **ckw, out_dtype=torch.bfloat16, impl="triton")
    for a, b in zip(out[:3], ref[:3], strict=True):
        assert a.dtype == torch.bfloat16
        assert_close("ucpe_qkv_prep bf16", a, b, tol=BF16_REL)
    assert_close("inflation", out[3], ref[3])
    x, P, cc, cs = ucpe_inputs(1, 2, 2, 5, 16, device=DEVICE, seed=44)
    out = prep.ucpe_prep(x, P, cc, cs, "out", out_dtype=torch.bfloat16, impl="triton")
    assert out.dtype == torch.bfloat16
    assert_close("ucpe bf16", out, prep.ucpe_prep(x, P, cc, cs, "out"), tol=BF16_REL)


def test_prep_shape_errors():
    args, _ = prep_inputs(1, 2, 5, 3, 16)
    with pytest.raises(ValueError):
        prep.gdn_prep(*args, num_heads=5, key_scale=1.0)
    x, P, cc, cs = ucpe_inputs(1, 2, 2, 5, 16)
    with pytest.raises(ValueError):
        prep.ucpe_prep(x, P, cc, cs, "v")
    with pytest.raises(ValueError):
        prep.ucpe_prep(x, P[:, :1], cc, cs, "q")
    assert random_rigid(2).shape == (2, 4, 4)


# ----------------------------------------------------------------------------------------------------------
# Launch resources of the default GPU configs (compiled ahead of time for sm_90, no GPU needed)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_default_launch_configs_fit_an_h100_without_spills():
    """Every kernel at the model's head dim (and the FFN's depthwise + GLU kernel and the adaLN input kernel at the
    model's width), default launch config: shared memory within an H100 block's limit and no register spills. Runs
    in a subprocess because this module may have switched the Triton interpreter on, and interpreted kernels cannot
    be compiled."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.gdn_triton_testing", "--resources"], env=env,
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skipped" in report:
        pytest.skip(report["skipped"])
    # every default launch is in the report (a launch kind the check does not know must not drop out silently)
    assert {"depthwise_glu", "ln_modulate residual=False", "ln_modulate residual=True"} <= set(report["kernels"])
    bad = {name: r for name, r in report["kernels"].items()
           if r["shared"] > report["shared_limit"] or (r["spill_bytes"] or 0) > 0}
    assert not bad, f"over the H100 limits: {bad}"


@needs_triton
def test_launch_override_from_the_environment():
    """SANA_WM_GDN_LAUNCH (JSON) overrides launch settings without editing LAUNCH_CONFIGS; bad values are named."""
    from kernels import gdn_triton

    assert gdn_triton._launch_override("") == {}
    assert gdn_triton._launch_override('{"a_split_s": 2, "c_tiles": 4}') == {"a_split_s": 2, "c_tiles": 4}
    for bad in ("a_split_s=2", '{"a_split": 2}', '{"a_split_s": "two"}', "[1]"):
        with pytest.raises(ValueError, match="SANA_WM_GDN_LAUNCH"):
            gdn_triton._launch_override(bad)
