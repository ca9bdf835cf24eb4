"""`kernels.gdn_layer`: both scans of a GDN layer in one op, against the layer spelled out with the fp32 references.

On the CPU the op runs its Triton kernels under TRITON_INTERPRET=1 (one stream); on a GPU the camera branch runs
on a second stream, checked here eagerly and replayed from a CUDA graph.
"""
from __future__ import annotations

import torch

from tests.triton_setup import DEVICE, needs_triton

# isort: split

import pytest

from kernels import gdn_layer as layer_mod
from kernels.gdn_reference import gdn_bidirectional_reference
from kernels.gdn_triton_testing import random_rigid
from kernels.prep import gdn_prep_reference, ucpe_prep_reference, ucpe_qkv_prep_reference
from tests.tolerances import BF16_REL, TF32_REL, rel_err

TOL = 1e-5 if DEVICE == "cpu" else TF32_REL


def layer_inputs(B, T, S, H, D, seed, initial_state=True):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    C = H * D

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device=DEVICE)

    theta, theta_c = rand(T, S, D // 2) * 6.2832, rand(T, S, D // 4) * 6.2832
    args = [randn(B, T, S, C), randn(B, T, S, C), randn(B, T, S, C), 0.5 + rand(C), 0.5 + rand(C),
            theta.cos(), theta.sin(), torch.sigmoid(randn(B, H, T, S)), 0.5 + 0.5 * rand(B, H, T),
            randn(B, T, S, C), randn(B, T, S, C), randn(B, T, S, C), 0.5 + rand(C), 0.5 + rand(C),
            random_rigid(B, T, S, device=DEVICE, gen=gen), theta_c.cos(), theta_c.sin()]
    state = (0.1 * randn(B, H, D, D), rand(B, H, D), 0.1 * randn(B, H, D, D)) if initial_state else None
    return args, {"num_heads": H, "key_scale": (D * S) ** -0.5, "initial_state": state}


def layer_by_hand(q, k, v, wq, wk, cos, sin, beta, g, qc, kc, vc, wqc, wkc, P, ccos, csin, *, num_heads, key_scale,
                  initial_state, chunks):
    """The layer as runtime/attention.py composed it before the fused op, all in fp32 references."""
    B, T, S, _ = q.shape
    qh, kh, q_rot, k_rot = gdn_prep_reference(q, k, wq, wk, cos, sin, num_heads=num_heads, key_scale=key_scale)
    vh = v.view(B, T, S, num_heads, -1).permute(0, 3, 1, 2, 4)
    h0 = None if initial_state is None else initial_state[:2]
    main, final = gdn_bidirectional_reference(qh, kh, vh, beta, g, q_rot=q_rot, k_rot=k_rot, initial_state=h0,
                                              output_final_state=True, chunks=chunks)
    qp, kp, vp, inflation = ucpe_qkv_prep_reference(qc, kc, vc, wqc, wkc, P, ccos, csin, num_heads=num_heads,
                                                    key_scale=key_scale)
    hc0 = None if initial_state is None else (initial_state[2], None)
    cam, cam_final = gdn_bidirectional_reference(qp, kp, vp, beta / inflation.clamp_min(1.0)[..., None], g,
                                                 with_z=False, initial_state=hc0, output_final_state=True,
                                                 chunks=chunks)
    return main, ucpe_prep_reference(cam, P, ccos, csin, "out"), (final[0], final[1], cam_final[0])


def assert_layer_close(got, want, tol=TOL):
    for name, a, b in (("main", got[0], want[0]), ("camera", got[1], want[1])):
        assert rel_err(a, b) <= tol, f"{name}: relative RMS error {rel_err(a, b):.2e}"
    for name, a, b in zip(("state", "z", "camera state"), got[2], want[2]):
        assert rel_err(a, b) <= tol, f"{name}: relative RMS error {rel_err(a, b):.2e}"


@needs_triton
@pytest.mark.parametrize("shape,chunks,init", [
    ((1, 3, 11, 2, 16), ((0, 3),), True),
    ((1, 4, 9, 2, 16), ((0, 1), (1, 4)), False),
    ((2, 2, 7, 1, 24), None, True),
])
def test_fused_layer_equals_the_layer_by_hand(shape, chunks, init):
    B, T, S, H, D = shape
    args, kw = layer_inputs(B, T, S, H, D, seed=T * 7 + S, initial_state=init)
    want = layer_by_hand(*args, **kw, chunks=chunks)
    got = layer_mod.gdn_layer(*args, **kw, output_final_state=True, chunks=chunks, impl="triton")
    assert_layer_close(got, want)
    # The reference path of the public function is the same composition.
    ref = layer_mod.gdn_layer(*args, **kw, output_final_state=True, chunks=chunks, impl="reference")
    assert_layer_close(ref, want, tol=1e-5)


@needs_triton
def test_token_major_outputs_in_the_prep_dtype():
    """token_major: both outputs [B, T, S, H, D] in out_dtype (as the GDN blocks call it), same values."""
    B, T, S, H, D = 1, 3, 11, 2, 16
    args, kw = layer_inputs(B, T, S, H, D, seed=9)
    want = layer_by_hand(*args, **kw, chunks=None)
    main, cam, final = layer_mod.gdn_layer(*args, **kw, output_final_state=True, out_dtype=torch.bfloat16,
                                           token_major=True, impl="triton")
    assert main.shape == cam.shape == (B, T, S, H, D) and main.dtype == cam.dtype == torch.bfloat16
    got = (main.float().permute(0, 3, 1, 2, 4), cam.float().permute(0, 3, 1, 2, 4), final)
    assert_layer_close(got, want, tol=BF16_REL)


@needs_triton
def test_without_final_state_returns_none():
    args, kw = layer_inputs(1, 2, 5, 1, 16, seed=3)
    main, cam, final = layer_mod.gdn_layer(*args, **kw, impl="triton")
    assert final is None and main.shape == cam.shape == (1, 1, 2, 5, 16)


@needs_triton
def test_custom_op_fake_and_real_agree():
    args, kw = layer_inputs(1, 2, 5, 2, 16, seed=5)
    h0, z0, hc0 = kw["initial_state"]
    torch.library.opcheck(torch.ops.sana_wm.gdn_layer.default,
                          (*args, h0, z0, hc0, kw["num_heads"], kw["key_scale"], 1e-8, True, [1, 2],
                           torch.float32, False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(DEVICE != "cuda", reason="the second stream and graph capture need CUDA")
def test_two_streams_equal_one_and_replay_from_a_graph():
    B, T, S, H, D = 1, 3, 880, 20, 112
    args, kw = layer_inputs(B, T, S, H, D, seed=11)
    args = [a.to(torch.bfloat16) if a.dim() == 4 and a.shape[-1] == H * D else a for a in args]
    call = dict(kw, output_final_state=True, chunks=((0, 3),), out_dtype=torch.bfloat16, impl="triton")
    one = layer_mod.gdn_layer(*args, **call, streams=False)
    two = layer_mod.gdn_layer(*args, **call, streams=True)
    torch.cuda.synchronize()
    assert_layer_close(two, one, tol=0.0)          # same kernels on the same inputs: bit-identical
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer_mod.gdn_layer(*args, **call, streams=True)
    fresh, _ = layer_inputs(B, T, S, H, D, seed=12)
    for dst, src in zip(args, fresh):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert_layer_close(captured, layer_mod.gdn_layer(*args, **call, streams=False), tol=0.0)
