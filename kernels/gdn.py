"""Public frame-wise Gated DeltaNet ops: Triton on CUDA, the fp32 PyTorch reference elsewhere.

The Triton path goes through `torch.ops.sana_wm.gdn_scan` / `torch.ops.sana_wm.gdn_bidirectional`
(`torch.library.custom_op` with fake implementations), so a streaming step that calls these functions can be
captured by torch.compile without a graph break and replayed in a CUDA graph (run the op once before capture:
the chunk table of the backward scan is cached on the device at the first call).
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.gdn_reference import GDNScanOutput, gdn_bidirectional_reference, gdn_scan_chunked

__all__ = ["GDNScanOutput", "gdn_bidirectional", "gdn_scan"]


from kernels.dispatch import HAVE_TRITON as _HAVE_TRITON  # noqa: F401
from kernels.dispatch import use_triton as _use_triton


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops around the Triton kernels. Optional results come back as 0-element tensors
# (custom ops cannot return None); chunks travel as their end frames.
# ----------------------------------------------------------------------------------------------------------
def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    # A fresh 0-element tensor per missing result: custom-op outputs must not alias each other.
    return like.new_empty(0, dtype=torch.float32) if t is None else t


@torch.library.custom_op("sana_wm::gdn_scan", mutates_args=())
def _gdn_scan_op(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, q_rot: Tensor | None,
                 k_rot: Tensor | None, h0: Tensor | None, z0: Tensor | None, reverse: bool, with_z: bool,
                 output_final_state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from kernels.gdn_triton import gdn_scan_triton

    init = None if h0 is None else (h0, z0)
    num, den, final = gdn_scan_triton(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, reverse=reverse,
                                      initial_state=init, with_z=with_z,
                                      output_final_state=output_final_state)
    ht, zt = final if final is not None else (None, None)
    return num, _or_empty(den, q), _or_empty(ht, q), _or_empty(zt, q)


@_gdn_scan_op.register_fake
def _(q, k, v, beta, g, q_rot, k_rot, h0, z0, reverse, with_z, output_final_state):
    B, H, T, S, Dk = q.shape
    Dv = v.shape[-1]
    f32 = {"dtype": torch.float32}
    final = output_final_state and not reverse
    return (q.new_empty(B, H, T, S, Dv, **f32), q.new_empty((B, H, T, S) if with_z else (0,), **f32),
            q.new_empty((B, H, Dv, Dk) if final else (0,), **f32),
            q.new_empty((B, H, Dk) if final and with_z else (0,), **f32))


@torch.library.custom_op("sana_wm::gdn_bidirectional", mutates_args=())
def _gdn_bidirectional_op(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, q_rot: Tensor | None,
                          k_rot: Tensor | None, h0: Tensor | None, z0: Tensor | None, with_z: bool,
                          eps: float, output_final_state: bool, chunk_ends: list[int] | None,
                          ucpe_P: Tensor | None = None, ucpe_cos: Tensor | None = None,
                          ucpe_sin: Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                          token_major: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    from kernels.gdn_triton import gdn_bidirectional_triton

    init = None if h0 is None else (h0, z0)
    chunks = None
    if chunk_ends is not None:
        starts = [0] + list(chunk_ends[:-1])
        chunks = tuple(zip(starts, chunk_ends))
    out_ucpe = None if ucpe_P is None else (ucpe_P, ucpe_cos, ucpe_sin)
    out, final = gdn_bidirectional_triton(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, initial_state=init,
                                          with_z=with_z, eps=eps, output_final_state=output_final_state,
                                          chunks=chunks, out_ucpe=out_ucpe, out_dtype=out_dtype,
                                          token_major=token_major)
    ht, zt = final if final is not None else (None, None)
    return out, _or_empty(ht, q), _or_empty(zt, q)


@_gdn_bidirectional_op.register_fake
def _(q, k, v, beta, g, q_rot, k_rot, h0, z0, with_z, eps, output_final_state, chunk_ends, ucpe_P=None,
      ucpe_cos=None, ucpe_sin=None, out_dtype=torch.float32, token_major=False):
    B, H, T, S, Dk = q.shape
    Dv = v.shape[-1]
    f32 = {"dtype": torch.float32}
    return (q.new_empty((B, T, S, H, Dv) if token_major else (B, H, T, S, Dv), dtype=out_dtype),
            q.new_empty((B, H, Dv, Dk) if output_final_state else (0,), **f32),
            q.new_empty((B, H, Dk) if output_final_state and with_z else (0,), **f32))


def _split_state(initial_state, with_z):
    if initial_state is None:
        return None, None
    h0, z0 = initial_state
    return h0, (z0 if with_z else None)


# ----------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------
def gdn_scan(q, k, v, beta, g, *, q_rot=None, k_rot=None, reverse=False, initial_state=None, with_z=True,
             output_final_state=False, impl: str = "auto") -> GDNScanOutput:
    """One direction of the frame-wise delta-rule scan; see `kernels.gdn_reference.gdn_scan_recurrent`."""
    if _use_triton(q, impl):
        if with_z and initial_state is not None and initial_state[1] is None:
            raise ValueError("gdn scan: with_z needs an initial z state")
        h0, z0 = _split_state(initial_state, with_z)
        num, den, ht, zt = torch.ops.sana_wm.gdn_scan(q, k, v, beta, g, q_rot, k_rot, h0, z0, reverse, with_z,
                                                      output_final_state)
        final = None
        if output_final_state and not reverse:
            final = (ht, zt if with_z else None)
        return GDNScanOutput(num, den if with_z else None, final)
    return gdn_scan_chunked(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, reverse=reverse,
                            initial_state=initial_state, with_z=with_z, output_final_state=output_final_state)


def gdn_bidirectional(q, k, v, beta, g, *, q_rot=None, k_rot=None, initial_state=None, with_z=True,
                      eps: float = 1e-8, output_final_state=False, chunks=None, out_ucpe=None,
                      out_dtype: torch.dtype = torch.float32, token_major: bool = False,
                      impl: str = "auto") -> tuple[Tensor, tuple | None]:
    """Forward scan over all frames + backward scan inside each chunk, fused into one output.

    See `kernels.gdn_reference.gdn_bidirectional_reference` for shapes and semantics. `out_ucpe` =
    (P [B, T, S, 4, 4], cam_cos, cam_sin [T, S, Dv/4]) also applies `kernels.prep.ucpe_prep(out, P, cam_cos,
    cam_sin, "out")` (the camera branch's inverse UCPE), fused into the Triton output epilogue. The output comes
    in `out_dtype` (math in fp32), as [B, T, S, H, Dv] with `token_major` (the layout the block's projections
    read: no transposing copy after the scan) instead of [B, H, T, S, Dv].
    """
    if _use_triton(q, impl):
        if with_z and initial_state is not None and initial_state[1] is None:
            raise ValueError("gdn scan: with_z needs an initial z state")
        h0, z0 = _split_state(initial_state, with_z)
        chunk_ends = None if chunks is None else [int(e) for _, e in chunks]
        if chunks is not None and [int(s) for s, _ in chunks] != [0] + chunk_ends[:-1]:
            raise ValueError(f"gdn: chunks must tile [0, T) in order without gaps; got {chunks}")
        P, cos, sin = (None, None, None) if out_ucpe is None else out_ucpe
        out, ht, zt = torch.ops.sana_wm.gdn_bidirectional(q, k, v, beta, g, q_rot, k_rot, h0, z0, with_z,
                                                          float(eps), output_final_state, chunk_ends, P, cos, sin,
                                                          out_dtype, token_major)
        final = (ht, zt if with_z else None) if output_final_state else None
        return out, final
    out, final = gdn_bidirectional_reference(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot,
                                             initial_state=initial_state, with_z=with_z, eps=eps,
                                             output_final_state=output_final_state, chunks=chunks)
    if out_ucpe is not None:
        from kernels.prep import ucpe_prep_reference

        out = ucpe_prep_reference(out, *out_ucpe, "out")
    out = out.to(out_dtype)
    return (out.permute(0, 2, 3, 1, 4).contiguous() if token_major else out), final
