"""The GDN part of one SANA-WM attention layer after its projections, as one op (spec 2.2-2.5, 4.3):

* main branch: `gdn_prep` (norms, ReLU, key scale, RoPE) -> bidirectional scan with the z stream;
* camera branch: `ucpe_qkv_prep` -> beta discounted by the UCPE key-norm inflation -> numerator-only
  bidirectional scan with the inverse UCPE in its epilogue.

The branches are independent until the block combines their outputs, and at the streaming shape every one of
their kernels is latency-bound (60 head-frames; 1-3 programs per SM). On CUDA the op runs the camera branch on
a second stream, so the two overlap; inside a captured CUDA graph they become parallel branches of the graph.
SANA_WM_GDN_STREAMS=0 runs them one after the other on the caller's stream (for timing the difference).
Elsewhere the same composition runs on the PyTorch references.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from kernels.dispatch import use_triton
from kernels.gdn import gdn_bidirectional
from kernels.prep import gdn_prep, ucpe_beta_discount, ucpe_qkv_prep

__all__ = ["gdn_layer", "split_heads"]

STREAMS = os.environ.get("SANA_WM_GDN_STREAMS", "1") != "0"

_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, T, S, C] -> [B, H, T, S, D] (a view): projections in the scan / attention layout."""
    B, T, S, C = x.shape
    return x.view(B, T, S, num_heads, C // num_heads).permute(0, 3, 1, 2, 4)


def _main_branch(q, k, v, q_weight, k_weight, rope_cos, rope_sin, beta, g, h0, z0, *, num_heads, key_scale,
                 eps, output_final_state, chunks, out_dtype, token_major, impl):
    qh, kh, q_rot, k_rot = gdn_prep(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads=num_heads,
                                    key_scale=key_scale, out_dtype=out_dtype, impl=impl)
    return gdn_bidirectional(qh, kh, split_heads(v, num_heads), beta, g, q_rot=q_rot, k_rot=k_rot, with_z=True, eps=eps,
                             initial_state=None if h0 is None else (h0, z0), output_final_state=output_final_state,
                             chunks=chunks, **_output_layout(out_dtype, token_major), impl=impl)


def _camera_branch(qc, kc, vc, qc_weight, kc_weight, P, cam_cos, cam_sin, beta, g, hc0, *, num_heads, key_scale,
                   output_final_state, chunks, out_dtype, token_major, impl):
    qp, kp, vp, ratio = ucpe_qkv_prep(qc, kc, vc, qc_weight, kc_weight, P, cam_cos, cam_sin, num_heads=num_heads,
                                      key_scale=key_scale, out_dtype=out_dtype, per_token_ratio=True, impl=impl)
    # Dynamic beta discount: the UCPE transform inflates key norms; damp the write strength to match.
    beta_cam = ucpe_beta_discount(beta, ratio, impl=impl)
    return gdn_bidirectional(qp, kp, vp, beta_cam, g, with_z=False,
                             initial_state=None if hc0 is None else (hc0, None),
                             output_final_state=output_final_state, chunks=chunks, out_ucpe=(P, cam_cos, cam_sin),
                             **_output_layout(out_dtype, token_major), impl=impl)


def _output_layout(out_dtype: torch.dtype, token_major: bool) -> dict:
    """The scans' output: fp32 [B, H, T, S, D], or token-major [B, T, S, H, D] in the prep dtype."""
    return {"out_dtype": out_dtype if token_major else torch.float32, "token_major": token_major}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def _both(main, camera, device: torch.device, streams: bool):
    """(main(), camera()); on CUDA with `streams` the camera branch runs on a side stream, forked from and joined
    back into the caller's stream (a fork / join a CUDA graph capture records as two parallel branches)."""
    if not (streams and device.type == "cuda"):
        return main(), camera()
    here = torch.cuda.current_stream(device)
    side = _side_stream(device)
    side.wait_stream(here)
    with torch.cuda.stream(side):
        cam_out, cam_final = camera()
    main_out, main_final = main()
    here.wait_stream(side)
    for t in (cam_out, *(cam_final or ())):
        if t is not None:
            t.record_stream(here)       # allocated on the side stream, used (and freed) on the caller's
    return (main_out, main_final), (cam_out, cam_final)


@torch.library.custom_op("sana_wm::gdn_layer", mutates_args=())
def _gdn_layer_op(q: Tensor, k: Tensor, v: Tensor, q_weight: Tensor, k_weight: Tensor, rope_cos: Tensor,
                  rope_sin: Tensor, beta: Tensor, g: Tensor, qc: Tensor, kc: Tensor, vc: Tensor, qc_weight: Tensor,
                  kc_weight: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, h0: Tensor | None,
                  z0: Tensor | None, hc0: Tensor | None, num_heads: int, key_scale: float, eps: float,
                  output_final_state: bool, chunk_ends: list[int] | None, out_dtype: torch.dtype,
                  streams: bool, token_major: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from kernels.gdn_triton import _chunk_resets

    chunks = None if chunk_ends is None else tuple(zip([0] + list(chunk_ends[:-1]), chunk_ends))
    # Cache the backward scan's chunk table on the caller's stream before the fork (both branches read it).
    _chunk_resets(chunks, q.shape[1], q.device)
    common = {"num_heads": num_heads, "key_scale": key_scale, "output_final_state": output_final_state,
              "chunks": chunks, "out_dtype": out_dtype, "token_major": token_major, "impl": "triton"}
    (main, final), (cam, cam_final) = _both(
        lambda: _main_branch(q, k, v, q_weight, k_weight, rope_cos, rope_sin, beta, g, h0, z0, eps=eps, **common),
        lambda: _camera_branch(qc, kc, vc, qc_weight, kc_weight, P, cam_cos, cam_sin, beta, g, hc0, **common),
        q.device, streams)
    empty = [q.new_empty(0, dtype=torch.float32) for _ in range(3)]
    ht, zt = final if final is not None else empty[:2]
    hct = cam_final[0] if cam_final is not None else empty[2]
    return main, ht, zt, cam, hct


@_gdn_layer_op.register_fake
def _(q, k, v, q_weight, k_weight, rope_cos, rope_sin, beta, g, qc, kc, vc, qc_weight, kc_weight, P, cam_cos,
      cam_sin, h0, z0, hc0, num_heads, key_scale, eps, output_final_state, chunk_ends, out_dtype, streams,
      token_major=False):
    B, T, S, C = q.shape
    H, D = num_heads, C // num_heads
    f32 = {"dtype": torch.float32}
    state = (B, H, D, D) if output_final_state else (0,)
    out_shape = (B, T, S, H, D) if token_major else (B, H, T, S, D)
    out = {"dtype": _output_layout(out_dtype, token_major)["out_dtype"]}
    return (q.new_empty(out_shape, **out), q.new_empty(state, **f32),
            q.new_empty((B, H, D) if output_final_state else (0,), **f32),
            q.new_empty(out_shape, **out), q.new_empty(state, **f32))


def gdn_layer(q: Tensor, k: Tensor, v: Tensor, q_weight: Tensor, k_weight: Tensor, rope_cos: Tensor,
              rope_sin: Tensor, beta: Tensor, g: Tensor, qc: Tensor, kc: Tensor, vc: Tensor, qc_weight: Tensor,
              kc_weight: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, *, num_heads: int, key_scale: float,
              eps: float = 1e-8, initial_state: tuple[Tensor, Tensor, Tensor] | None = None,
              output_final_state: bool = False, chunks: tuple[tuple[int, int], ...] | None = None,
              out_dtype: torch.dtype = torch.float32, token_major: bool = False, streams: bool | None = None,
              impl: str = "auto") -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """Both scans of a GDN layer from its projections.

    Args:
        q, k, v: [B, T, S, C] main projections (k after its short conv).
        q_weight, k_weight: [C] RMSNorm weights of the main q / k.
        rope_cos, rope_sin: [T, S, D/2] RoPE tables of the main branch.
        beta: [B, H, T, S] write strength; g: [B, H, T] per-frame decay (shared by both branches).
        qc, kc, vc: [B, T, S, C] camera projections (kc after its short conv).
        qc_weight, kc_weight: [C] RMSNorm weights of the camera q / k.
        P, cam_cos, cam_sin: UCPE pose [B, T, S, 4, 4] and camera RoPE tables [T, S, D/4].
        num_heads, key_scale: as `gdn_prep` (ReLU on, RMSNorm eps 1e-5, as the GDN blocks use them).
        eps: denominator epsilon of the main branch.
        initial_state: (main state [B, H, D, D], main z [B, H, D], camera state [B, H, D, D]) or None.
        output_final_state: also return the three states after the last frame.
        chunks: (start, end) frame ranges of the backward scans (None: one chunk).
        out_dtype: dtype of the prepped q / k / v the scans read.
        token_major: give both outputs as [B, T, S, H, D] in out_dtype (what the block's projections read, written
            so by the scans' epilogue) instead of fp32 [B, H, T, S, D].
        streams: run the branches concurrently on CUDA (default: SANA_WM_GDN_STREAMS, on).
        impl: "auto" (Triton on CUDA), "triton" or "reference".
    Returns:
        (main out, camera out after the inverse UCPE (both [B, H, T, S, D] fp32, or token-major),
         (main state, main z, camera state) or None).
    """
    streams = STREAMS if streams is None else streams
    h0, z0, hc0 = (None, None, None) if initial_state is None else initial_state
    if use_triton(q, impl):
        chunk_ends = None if chunks is None else [int(e) for _, e in chunks]
        if chunks is not None and [int(s) for s, _ in chunks] != [0] + chunk_ends[:-1]:
            raise ValueError(f"gdn: chunks must tile [0, T) in order without gaps; got {chunks}")
        main, ht, zt, cam, hct = torch.ops.sana_wm.gdn_layer(
            q, k, v, q_weight, k_weight, rope_cos, rope_sin, beta, g, qc, kc, vc, qc_weight, kc_weight, P, cam_cos,
            cam_sin, h0, z0, hc0, num_heads, float(key_scale), float(eps), output_final_state, chunk_ends, out_dtype,
            streams, token_major)
        return main, cam, ((ht, zt, hct) if output_final_state else None)
    common = {"num_heads": num_heads, "key_scale": key_scale, "output_final_state": output_final_state,
              "chunks": chunks, "out_dtype": out_dtype, "token_major": token_major, "impl": impl}
    main, final = _main_branch(q, k, v, q_weight, k_weight, rope_cos, rope_sin, beta, g, h0, z0, eps=eps, **common)
    cam, cam_final = _camera_branch(qc, kc, vc, qc_weight, kc_weight, P, cam_cos, cam_sin, beta, g, hc0, **common)
    return main, cam, ((*final, cam_final[0]) if output_final_state else None)
