"""Public frame-wise Gated DeltaNet ops: Triton on CUDA, the fp32 PyTorch reference elsewhere."""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.gdn_reference import GDNScanOutput, gdn_bidirectional_reference, gdn_scan_chunked

__all__ = ["GDNScanOutput", "gdn_scan", "gdn_bidirectional"]


def _use_triton(x: Tensor, impl: str) -> bool:
    if impl == "reference":
        return False
    if impl == "triton":
        return True
    if not x.is_cuda:
        return False
    try:
        import kernels.gdn_triton  # noqa: F401
    except ImportError:
        return False
    return True


def gdn_scan(q, k, v, beta, g, *, q_rot=None, k_rot=None, reverse=False, initial_state=None, with_z=True,
             output_final_state=False, impl: str = "auto") -> GDNScanOutput:
    """One direction of the frame-wise delta-rule scan; see `kernels.gdn_reference.gdn_scan_recurrent`."""
    if _use_triton(q, impl):
        from kernels.gdn_triton import gdn_scan_triton

        return gdn_scan_triton(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, reverse=reverse,
                               initial_state=initial_state, with_z=with_z,
                               output_final_state=output_final_state)
    return gdn_scan_chunked(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, reverse=reverse,
                            initial_state=initial_state, with_z=with_z, output_final_state=output_final_state)


def gdn_bidirectional(q, k, v, beta, g, *, q_rot=None, k_rot=None, initial_state=None, with_z=True,
                      eps: float = 1e-8, output_final_state=False, chunks=None,
                      impl: str = "auto") -> tuple[Tensor, tuple | None]:
    """Forward scan over all frames + backward scan inside each chunk, fused into one output.

    See `kernels.gdn_reference.gdn_bidirectional_reference` for shapes and semantics.
    """
    if _use_triton(q, impl):
        from kernels.gdn_triton import gdn_bidirectional_triton

        return gdn_bidirectional_triton(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot,
                                        initial_state=initial_state, with_z=with_z, eps=eps,
                                        output_final_state=output_final_state, chunks=chunks)
    return gdn_bidirectional_reference(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, initial_state=initial_state,
                                       with_z=with_z, eps=eps, output_final_state=output_final_state,
                                       chunks=chunks)
