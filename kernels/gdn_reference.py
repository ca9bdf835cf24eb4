"""fp32 PyTorch references of the frame-wise Gated DeltaNet scan (spec section 2.3).

One delta-rule step per latent frame: all S tokens of a frame update the per-head state at once.
Layout everywhere: [B, H, T, S, D] (batch, heads, latent frames, tokens per frame, head dim).
State convention: `state` is value-dim x key-dim ([B, H, Dv, Dk]) and `z` is [B, H, Dk].

Forward (inclusive), frame t with keys K~ (rotated), K (plain), values V, betas b, decay g:
    S_t = g S_{t-1} + (V - g S_{t-1} K~)^T diag(b) K~          num_t = Q~ S_t^T
    z_t = g z_{t-1} + K^T (b * (1 - g K z_{t-1}))                den_t = Q z_t
Backward (exclusive): the same recurrence run from the last frame down, where the state used at frame t
has absorbed frames t+1 .. T-1 only.

Two forms: `recurrent` steps the recurrence directly; `chunked` builds the per-frame transition
W_t = g_t (I - K~^T diag(b) K~) and input U_t = V^T diag(b) K~ for all frames in parallel, runs the cheap
serial scan S_t = S_{t-1} W_t + U_t, then computes all outputs in parallel (the shape the Triton kernels take).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GDNScanOutput(NamedTuple):
    num: Tensor
    """[B, H, T, S, Dv] numerator stream."""
    den: Tensor | None
    """[B, H, T, S] denominator stream (None without the z stream)."""
    final_state: tuple[Tensor, Tensor | None] | None
    """(state [B, H, Dv, Dk], z [B, H, Dk] or None) after the last frame (forward scans only)."""


def _check(q, k, v, beta, g, initial_state, reverse):
    if q.dim() != 5 or k.shape != q.shape or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"gdn scan: q, k, v must be [B, H, T, S, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if beta.shape != q.shape[:4] or g.shape != q.shape[:3]:
        raise ValueError(f"gdn scan: beta must be [B, H, T, S] and g [B, H, T]; got {tuple(beta.shape)}, "
                         f"{tuple(g.shape)}")
    if reverse and initial_state is not None:
        raise ValueError("gdn scan: the backward (exclusive) scan takes no initial state")


def _initial(q, v, initial_state, with_z):
    B, H, _, _, Dk = q.shape
    Dv = v.shape[-1]
    if initial_state is None:
        state = q.new_zeros(B, H, Dv, Dk, dtype=torch.float32)
        z = q.new_zeros(B, H, Dk, dtype=torch.float32) if with_z else None
    else:
        state = initial_state[0].float().clone()
        z = None
        if with_z:
            if initial_state[1] is None:
                raise ValueError("gdn scan: with_z needs an initial z state")
            z = initial_state[1].float().clone()
    return state, z


def gdn_scan_recurrent(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *,
                       q_rot: Tensor | None = None, k_rot: Tensor | None = None, reverse: bool = False,
                       initial_state: tuple[Tensor, Tensor | None] | None = None, with_z: bool = True,
                       output_final_state: bool = False) -> GDNScanOutput:
    """Frame-wise delta-rule scan, stepped frame by frame in fp32.

    Args:
        q, k: [B, H, T, S, D] plain queries / keys (denominator stream).
        v: [B, H, T, S, Dv] values.
        beta: [B, H, T, S] per-token write strength in [0, 1].
        g: [B, H, T] per-frame decay in (0, 1].
        q_rot, k_rot: rotated queries / keys for the numerator stream (default: q, k).
        reverse: backward exclusive scan instead of forward inclusive.
        initial_state: (state [B, H, Dv, Dk], z [B, H, Dk] or None) to continue from (forward only).
        with_z: also run the z (denominator) stream.
        output_final_state: return the state after the last frame.
    """
    _check(q, k, v, beta, g, initial_state, reverse)
    q_rot = q if q_rot is None else q_rot
    k_rot = k if k_rot is None else k_rot
    q, k, v, beta, g, q_rot, k_rot = (t.float() for t in (q, k, v, beta, g, q_rot, k_rot))
    state, z = _initial(q, v, initial_state, with_z)
    T = q.shape[2]
    num = torch.empty(*q.shape[:4], v.shape[-1], dtype=torch.float32, device=q.device)
    den = torch.empty(q.shape[:4], dtype=torch.float32, device=q.device) if with_z else None

    def update(t, state, z):
        gt = g[:, :, t, None, None]
        kt, bt = k_rot[:, :, t], beta[:, :, t, :, None]
        pred = gt * (kt @ state.transpose(-1, -2))                       # [B,H,S,Dv]
        state = gt * state + ((v[:, :, t] - pred) * bt).transpose(-1, -2) @ kt
        if z is not None:
            ku = k[:, :, t]
            zpred = g[:, :, t, None] * (ku @ z.unsqueeze(-1)).squeeze(-1)  # [B,H,S]
            z = g[:, :, t, None] * z + (ku * (beta[:, :, t] * (1 - zpred))[..., None]).sum(-2)
        return state, z

    def emit(t, state, z):
        num[:, :, t] = q_rot[:, :, t] @ state.transpose(-1, -2)
        if z is not None:
            den[:, :, t] = (q[:, :, t] @ z.unsqueeze(-1)).squeeze(-1)

    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if reverse:
            emit(t, state, z)
            state, z = update(t, state, z)
        else:
            state, z = update(t, state, z)
            emit(t, state, z)
    final = (state, z) if output_final_state and not reverse else None
    return GDNScanOutput(num, den, final)


def gdn_scan_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *,
                     q_rot: Tensor | None = None, k_rot: Tensor | None = None, reverse: bool = False,
                     initial_state: tuple[Tensor, Tensor | None] | None = None, with_z: bool = True,
                     output_final_state: bool = False) -> GDNScanOutput:
    """Same function as `gdn_scan_recurrent`, in transition form (parallel prep, serial D x D scan)."""
    _check(q, k, v, beta, g, initial_state, reverse)
    q_rot = q if q_rot is None else q_rot
    k_rot = k if k_rot is None else k_rot
    q, k, v, beta, g, q_rot, k_rot = (t.float() for t in (q, k, v, beta, g, q_rot, k_rot))
    state, z = _initial(q, v, initial_state, with_z)
    T, D = q.shape[2], q.shape[-1]
    eye = torch.eye(D, dtype=torch.float32, device=q.device)
    gg = g[..., None, None]
    # Phase A: per-frame transitions and inputs, all frames at once.
    kb = k_rot * beta[..., None]
    W = gg * (eye - k_rot.transpose(-1, -2) @ kb)                          # [B,H,T,Dk,Dk] (symmetric)
    U = v.transpose(-1, -2) @ kb                                          # [B,H,T,Dv,Dk]
    if with_z:
        ku = k * beta[..., None]
        Wz = gg * (eye - k.transpose(-1, -2) @ ku)
        Uz = ku.sum(-2)                                                   # [B,H,T,Dk]
    # Phase B: serial scan over frames of the D x D states.
    states = torch.empty_like(U)
    zs = torch.empty(*q.shape[:3], D, dtype=torch.float32, device=q.device) if with_z else None
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        if reverse:
            states[:, :, t] = state
            if with_z:
                zs[:, :, t] = z
        state = state @ W[:, :, t] + U[:, :, t]
        if with_z:
            z = (z.unsqueeze(-2) @ Wz[:, :, t]).squeeze(-2) + Uz[:, :, t]
        if not reverse:
            states[:, :, t] = state
            if with_z:
                zs[:, :, t] = z
    # Phase C: outputs of all frames in parallel.
    num = q_rot @ states.transpose(-1, -2)
    den = (q @ zs.unsqueeze(-1)).squeeze(-1) if with_z else None
    final = (state, z) if output_final_state and not reverse else None
    return GDNScanOutput(num, den, final)


def gdn_bidirectional_reference(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *,
                                q_rot: Tensor | None = None, k_rot: Tensor | None = None,
                                initial_state: tuple[Tensor, Tensor | None] | None = None,
                                with_z: bool = True, eps: float = 1e-8, output_final_state: bool = False,
                                chunks: tuple[tuple[int, int], ...] | None = None,
                                form: str = "chunked") -> tuple[Tensor, tuple | None]:
    """Forward-inclusive scan over all frames plus a backward-exclusive scan inside each chunk.

    Returns (out [B, H, T, S, Dv] fp32, final forward state or None) where
    out = (num_f + num_b) / (den_f + den_b + eps) with the z stream, else num_f + num_b.
    `chunks` are (start, end) frame ranges; the backward state restarts at each (None: one chunk).
    """
    scan = gdn_scan_chunked if form == "chunked" else gdn_scan_recurrent
    fwd = scan(q, k, v, beta, g, q_rot=q_rot, k_rot=k_rot, initial_state=initial_state, with_z=with_z,
               output_final_state=output_final_state)
    T = q.shape[2]
    chunks = chunks or ((0, T),)
    num_b = torch.empty_like(fwd.num)
    den_b = torch.empty_like(fwd.den) if with_z else None
    for s, e in chunks:
        sl = slice(s, e)
        bwd = scan(q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], g[:, :, sl],
                   q_rot=None if q_rot is None else q_rot[:, :, sl],
                   k_rot=None if k_rot is None else k_rot[:, :, sl], reverse=True, with_z=with_z)
        num_b[:, :, sl] = bwd.num
        if with_z:
            den_b[:, :, sl] = bwd.den
    if with_z:
        out = (fwd.num + num_b) / (fwd.den + den_b + eps).unsqueeze(-1)
    else:
        out = fwd.num + num_b
    return out, fwd.final_state
