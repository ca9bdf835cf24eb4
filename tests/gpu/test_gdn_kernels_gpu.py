"""GDN scan and prep kernels at the model's shapes on CUDA (fp32 and bf16 inputs), graph capture, compile.

Tolerance rule (CONVENTIONS.md), against the fp32 reference on the same inputs:
- fp32 inputs (3xTF32 matmuls): within 2x the error of same-precision PyTorch, the fp32 reference with TF32
  matmuls (measured: ~1e-5 against a budget of ~1e-3);
- bf16 inputs (plain TF32 matmuls): within 2x the error of storing the exact result in bf16, the precision the
  model consumes it in.
Elementwise prep ops are held to FP32_REL.
"""
from __future__ import annotations

import pytest
import torch

from kernels import gdn, prep
from kernels.gdn_reference import gdn_bidirectional_reference, gdn_scan_chunked
from kernels.gdn_triton_testing import chunk_causal_chunks, gdn_inputs, prep_inputs, tf32_matmuls, ucpe_inputs
from tests.tolerances import BF16_REL, FP32_REL, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

H, S, D = 20, 880, 112
"""Heads, tokens per latent frame (22 x 40), head dim of SANA-WM."""


def _nan_filled(fn, **kw):
    from kernels.gdn_triton import nan_filled_buffers

    with nan_filled_buffers():
        return fn(**kw, impl="triton")


def assert_tf32_close(name: str, out, ref, same_precision, input_dtype=torch.float32) -> None:
    if input_dtype == torch.float32:
        budget = 2 * rel_err(same_precision, ref) + FP32_REL
    else:
        budget = 2 * rel_err(ref.to(input_dtype).float(), ref) + FP32_REL
    err = rel_err(out, ref)
    print(f"{name}: rel RMS {err:.2e} (budget {budget:.2e})")
    assert err <= budget, f"{name}: relative RMS error {err:.3e} > budget {budget:.3e}"


def _check_bidirectional(kw: dict, dtype, check_z: bool) -> None:
    """The Triton bidirectional scan (NaN-filled buffers) against the fp32 reference: output and final states."""
    out, final = _nan_filled(gdn.gdn_bidirectional, **kw)
    ref, ref_final = gdn_bidirectional_reference(**kw)
    with tf32_matmuls():
        same, same_final = gdn_bidirectional_reference(**kw)
    assert_tf32_close("out", out, ref, same, dtype)
    assert_tf32_close("final state", final[0], ref_final[0], same_final[0], dtype)
    if check_z:
        assert_tf32_close("final z", final[1], ref_final[1], same_final[1], dtype)


CASES = [  # (T, initial state, input dtype)
    (3, True, torch.float32), (4, False, torch.float32), (3, True, torch.bfloat16), (4, True, torch.bfloat16),
    (1, True, torch.float32),
]


@pytest.mark.parametrize("T,init,dtype", CASES, ids=[f"T{t}-{'init' if i else 'noinit'}-{str(d)[6:]}"
                                                     for t, i, d in CASES])
@pytest.mark.parametrize("with_z", [True, False], ids=["main", "camera"])
def test_bidirectional_streaming_shape(T, init, dtype, with_z):
    inp = gdn_inputs(1, H, T, S, D, device="cuda", dtype=dtype, initial_state=init, seed=T)
    if not with_z:
        del inp["q_rot"], inp["k_rot"]
    _check_bidirectional(dict(inp, with_z=with_z, output_final_state=True), dtype, check_z=with_z)


@pytest.mark.parametrize("T", [3, 4])
@pytest.mark.parametrize("with_z", [True, False], ids=["main", "camera"])
@pytest.mark.parametrize("phase_a", ["bf16", "tf32"])
def test_phase_a_precisions_stay_in_the_bf16_budget(monkeypatch, T, with_z, phase_a):
    """Phase A for bf16 inputs: bf16 tensor-core Gram products (the default) and the TF32 ones
    (SANA_WM_GDN_PHASE_A=tf32) both stay within the bf16 budget. (Not checkable on the CPU: the Triton
    interpreter's bf16 dot is wrong, so the CPU keeps TF32.)"""
    from kernels import gdn_triton

    monkeypatch.setattr(gdn_triton, "_PREC_PHASE_A_LOW", phase_a)
    inp = gdn_inputs(1, H, T, S, D, device="cuda", dtype=torch.bfloat16, initial_state=True, seed=T)
    if not with_z:
        del inp["q_rot"], inp["k_rot"]
    _check_bidirectional(dict(inp, with_z=with_z, output_final_state=True), torch.bfloat16, check_z=with_z)


@pytest.mark.parametrize("with_z", [True, False], ids=["main", "camera"])
@pytest.mark.parametrize("phase_c", ["bf16", "tf32"])
def test_phase_c_precisions_stay_in_the_bf16_budget(monkeypatch, with_z, phase_c):
    """Phase C's output product for bf16 inputs, bf16 tensor-core dots (the default) or TF32
    (SANA_WM_GDN_PHASE_C=tf32), stays within the bf16 budget (GPU only: the Triton interpreter's bf16 dot is
    wrong)."""
    from kernels import gdn_triton

    monkeypatch.setattr(gdn_triton, "_PREC_PHASE_C_LOW", phase_c)
    inp = gdn_inputs(1, H, 3, S, D, device="cuda", dtype=torch.bfloat16, initial_state=True, seed=11)
    if not with_z:
        del inp["q_rot"], inp["k_rot"]
    _check_bidirectional(dict(inp, with_z=with_z, output_final_state=True), torch.bfloat16, check_z=with_z)


def test_camera_bidirectional_fused_inverse_ucpe():
    from kernels.gdn_triton_testing import random_rigid

    T = 3
    inp = gdn_inputs(1, H, T, S, D, device="cuda", initial_state=True, seed=9)
    del inp["q_rot"], inp["k_rot"]
    inp["initial_state"] = (inp["initial_state"][0], None)
    P = random_rigid(1, T, S, device="cuda")
    theta = torch.rand(T, S, D // 4, device="cuda") * 6.2832
    kw = dict(inp, with_z=False, out_ucpe=(P, theta.cos(), theta.sin()))
    out, _ = _nan_filled(gdn.gdn_bidirectional, **kw)
    ref, _ = gdn.gdn_bidirectional(**kw, impl="reference")
    with tf32_matmuls():
        same, _ = gdn.gdn_bidirectional(**kw, impl="reference")
    assert_tf32_close("out", out, ref, same)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
def test_scan_streaming_shape(reverse):
    inp = gdn_inputs(1, H, 4, S, D, device="cuda", initial_state=not reverse, seed=7)
    kw = dict(inp, reverse=reverse, output_final_state=True)
    out = _nan_filled(gdn.gdn_scan, **kw)
    ref = gdn_scan_chunked(**kw)
    with tf32_matmuls():
        same = gdn_scan_chunked(**kw)
    assert_tf32_close("num", out.num, ref.num, same.num)
    assert_tf32_close("den", out.den, ref.den, same.den)
    if not reverse:
        assert_tf32_close("final state", out.final_state[0], ref.final_state[0], same.final_state[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bidirectional_long_chunk_causal(dtype):
    T = 121
    inp = gdn_inputs(1, H, T, S, D, device="cuda", dtype=dtype, seed=121)
    chunks = chunk_causal_chunks(T)
    _check_bidirectional(dict(inp, output_final_state=True, chunks=chunks), dtype, check_z=False)


def test_nan_filled_buffers_are_overwritten():
    from kernels.gdn_triton import nan_filled_buffers

    inp = gdn_inputs(1, H, 3, S, D, device="cuda", initial_state=True, seed=3)
    with nan_filled_buffers():
        out, final = gdn.gdn_bidirectional(**inp, output_final_state=True, impl="triton")
        p = prep.gdn_prep(*prep_inputs(1, 3, S, H, D, device="cuda", dtype=torch.bfloat16)[0], num_heads=H,
                          key_scale=(S * D) ** -0.5, impl="triton")
    assert torch.isfinite(out).all() and torch.isfinite(final[0]).all() and torch.isfinite(final[1]).all()
    assert all(torch.isfinite(t).all() for t in p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gdn_prep_model_shape(dtype):
    args, kw = prep_inputs(1, 4, S, H, D, device="cuda", dtype=dtype)
    from kernels.gdn_triton import nan_filled_buffers

    with nan_filled_buffers():
        out = prep.gdn_prep(*args, **kw, impl="triton")
    ref = prep.gdn_prep(*args, **kw, impl="reference")
    for name, a, b in zip(("q", "k", "q_rot", "k_rot"), out, ref, strict=True):
        err = rel_err(a, b)
        assert err <= FP32_REL, f"{name}: {err:.2e}"


@pytest.mark.parametrize("mode", prep.UCPE_MODES)
def test_ucpe_prep_model_shape(mode):
    from kernels.gdn_triton import nan_filled_buffers

    x, P, cc, cs = ucpe_inputs(1, H, 4, S, D, device="cuda")
    with nan_filled_buffers():
        out = prep.ucpe_prep(x, P, cc, cs, mode, impl="triton")
        tokens = prep.ucpe_prep(x, P, cc, cs, mode, token_major=True, impl="triton")
    ref = prep.ucpe_prep(x, P, cc, cs, mode, impl="reference")
    err = rel_err(out, ref)
    assert err <= FP32_REL, f"{mode}: {err:.2e}"
    assert torch.equal(tokens, out.permute(0, 2, 3, 1, 4))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ucpe_qkv_prep_model_shape(out_dtype):
    from kernels.gdn_triton import nan_filled_buffers
    from kernels.gdn_triton_testing import random_rigid

    T = 4
    (q, k, wq, wk, _, _), kw = prep_inputs(1, T, S, H, D, device="cuda", dtype=torch.bfloat16, seed=5)
    v = torch.randn_like(q)
    P = random_rigid(1, T, S, device="cuda")
    theta = torch.rand(T, S, D // 4, device="cuda") * 6.2832
    args = (q, k, v, wq, wk, P, theta.cos(), theta.sin())
    with nan_filled_buffers():
        out = prep.ucpe_qkv_prep(*args, **kw, out_dtype=out_dtype, impl="triton")
    ref = prep.ucpe_qkv_prep(*args, **kw, impl="reference")
    tol = FP32_REL if out_dtype == torch.float32 else BF16_REL
    for name, a, b in zip(("q'", "k'", "v'", "inflation"), out, ref, strict=True):
        err = rel_err(a, b)
        assert err <= (FP32_REL if name == "inflation" else tol), f"{name}: {err:.2e}"
    # the camera beta from the per-token ratio, in one launch, against the reference's mean / clamp / division
    ratio = prep.ucpe_qkv_prep(*args, **kw, out_dtype=out_dtype, per_token_ratio=True, impl="triton")[3]
    beta = torch.rand(1, T, S, H, device="cuda").permute(0, 3, 1, 2)     # a strided view, as the layer hands it
    with nan_filled_buffers():
        got = prep.ucpe_beta_discount(beta, ratio, impl="triton")
    assert rel_err(got, prep.ucpe_beta_discount_reference(beta, ratio)) <= FP32_REL


def _streaming_step(qp, kp, vp, wq, wk, cos, sin, beta, g, h0, z0, P, ccos, csin, hc0):
    """The GDN part of one streaming step with carried state: main prep + scans, fused camera prep + scans with
    the inverse UCPE in their epilogue."""
    key_scale = (S * D) ** -0.5
    q, k, q_rot, k_rot = prep.gdn_prep(qp, kp, wq, wk, cos, sin, num_heads=H, key_scale=key_scale)
    v = vp.view(*vp.shape[:3], H, D).permute(0, 3, 1, 2, 4)
    out, (ht, zt) = gdn.gdn_bidirectional(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, initial_state=(h0, z0),
                                          output_final_state=True)
    qc, kc, vc, inflation = prep.ucpe_qkv_prep(qp, kp, vp, wq, wk, P, ccos, csin, num_heads=H,
                                               key_scale=key_scale)
    cam, (hc, _) = gdn.gdn_bidirectional(qc, kc, vc, beta / inflation.clamp_min(1.0)[..., None], g,
                                         initial_state=(hc0, None), with_z=False, output_final_state=True,
                                         out_ucpe=(P, ccos, csin))
    return out, ht, zt, cam, hc


def _step_inputs(seed: int, T: int = 3):
    from kernels.gdn_triton_testing import random_rigid

    (qp, kp, wq, wk, cos, sin), _ = prep_inputs(1, T, S, H, D, device="cuda", dtype=torch.bfloat16, seed=seed)
    g_ = torch.Generator(device="cuda").manual_seed(seed)
    vp = torch.randn(1, T, S, H * D, device="cuda", generator=g_).to(torch.bfloat16)
    beta = torch.rand(1, H, T, S, device="cuda", generator=g_)
    g = 0.5 + 0.5 * torch.rand(1, H, T, device="cuda", generator=g_)
    h0 = 0.1 * torch.randn(1, H, D, D, device="cuda", generator=g_)
    z0 = torch.rand(1, H, D, device="cuda", generator=g_)
    P = random_rigid(1, T, S, device="cuda", gen=g_)
    theta = torch.rand(T, S, D // 4, device="cuda", generator=g_) * 6.2832
    hc0 = 0.1 * torch.randn(1, H, D, D, device="cuda", generator=g_)
    return [qp, kp, vp, wq, wk, cos, sin, beta, g, h0, z0, P, theta.cos(), theta.sin(), hc0]


def test_streaming_step_cuda_graph_replay():
    static = _step_inputs(0)
    _streaming_step(*static)                      # warm-up: compile kernels, cache tables
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _streaming_step(*static)
    for seed in (1, 2):
        fresh = _step_inputs(seed)
        for dst, src in zip(static, fresh, strict=True):
            dst.copy_(src)
        graph.replay()
        want = _streaming_step(*fresh)
        for a, b in zip(static_out, want, strict=True):
            assert rel_err(a, b) <= FP32_REL


def test_streaming_step_compiles_without_graph_breaks_or_recompiles():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    step = torch.compile(_streaming_step, backend=counter, fullgraph=True)
    for seed in (0, 1, 2):
        inputs = _step_inputs(seed)
        got = step(*inputs)
        want = _streaming_step(*inputs)
        for a, b in zip(got, want, strict=True):
            assert rel_err(a, b) <= FP32_REL
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"

