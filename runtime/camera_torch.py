"""Torch twins of the camera tensors in `runtime.camera.conditions`, for building them on the GPU.

Same semantics as the numpy reference (tested against it); math in `compute_dtype` (float32 by default,
float64 on request). No host synchronisation when `latent_frames` is given as a tensor, so these can sit
inside a captured streaming step. Kept apart from `runtime.camera` so that package never imports torch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from runtime.camera.conditions import NORM_EPS
from runtime.camera.frames import DEFAULT_STRIDE


def camera_conditions_to_ray_matrices(cond: torch.Tensor, latent_hw: tuple[int, int], *,
                                      compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """World -> ray-local UCPE transforms P of every latent token (twin of `ucpe_ray_matrices`).

    Args:
        cond: [B, T, 20] (any leading dims) camera conditions: c2w row-major (16) + fx, fy, cx, cy latent px.
        latent_hw: (h, w) latent grid.
        compute_dtype: dtype of the math and of the result.

    Returns:
        [B, T, h*w, 4, 4] in `compute_dtype`, token s = v*w + u; rays with NaN get the identity.
    """
    if cond.shape[-1] != 20:
        raise ValueError(f"cond: expected [..., T, 20], got {tuple(cond.shape)}")
    h, w = (int(x) for x in latent_hw)
    c = cond.to(compute_dtype)
    lead = c.shape[:-1]
    M = c[..., :16].reshape(*lead, 4, 4)
    R, t = M[..., :3, :3], M[..., :3, 3]
    fx, fy, cx, cy = (c[..., i, None, None] for i in range(16, 20))
    u = torch.arange(w, device=c.device, dtype=compute_dtype)
    v = torch.arange(h, device=c.device, dtype=compute_dtype)[:, None]
    x = ((u - cx) / fx).expand(*lead, h, w)
    y = ((v - cy) / fy).expand(*lead, h, w)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1) * torch.rsqrt(1.0 + x * x + y * y)[..., None]
    d_w = torch.einsum("...ij,...hwj->...hwi", R, d_cam)
    z = _normalize(d_w)
    cam_y = R[..., None, None, :, 1].expand_as(z)
    xr = _normalize(torch.linalg.cross(cam_y, z, dim=-1))
    yr = _normalize(torch.linalg.cross(z, xr, dim=-1))
    R_w2l = torch.stack([xr, yr, z], dim=-2)
    t_w2l = -torch.einsum("...hwij,...j->...hwi", R_w2l, t)
    top = torch.cat([R_w2l, t_w2l[..., None]], dim=-1)  # [..., h, w, 3, 4]
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    P = torch.cat([top, bottom], dim=-2)
    eye = torch.eye(4, device=c.device, dtype=compute_dtype)
    # torch.where, not boolean indexing: no host sync.
    P = torch.where(torch.isnan(d_w).any(dim=-1)[..., None, None], eye, P)
    return P.reshape(*lead, h * w, 4, 4)


def _latent_tensor(latent_frames: Sequence[int] | torch.Tensor, num_raw: int, stride: int,
                   device) -> torch.Tensor:
    if isinstance(latent_frames, torch.Tensor):
        return latent_frames.to(device=device, dtype=torch.long)
    ks = [int(k) for k in latent_frames]
    if not ks or min(ks) < 0:
        raise ValueError(f"latent_frames: expected non-negative ints, got {latent_frames!r}")
    if stride * max(ks) > num_raw - 1:
        raise ValueError(f"latent frame {max(ks)} needs raw frame {stride * max(ks)}, but the trajectory has "
                         f"only {num_raw} raw frames")
    return torch.tensor(ks, device=device, dtype=torch.long)


def plucker_raw_indices_torch(latent_frames: Sequence[int] | torch.Tensor, num_raw: int,
                              stride: int = DEFAULT_STRIDE, device=None) -> torch.Tensor:
    """[T, stride] int64 raw frame per (latent frame, slot j), clamped to F-1 (twin of `plucker_raw_indices`)."""
    ks = _latent_tensor(latent_frames, num_raw, stride, device)
    start = (stride * ks - (stride - 1)).clamp_min(0)
    return (start[:, None] + torch.arange(stride, device=ks.device)).clamp_max(num_raw - 1)


def chunk_plucker_torch(c2w_raw: torch.Tensor, intr_latent: torch.Tensor,
                        latent_frames: Sequence[int] | torch.Tensor, latent_hw: tuple[int, int],
                        stride: int = DEFAULT_STRIDE, *, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Plucker maps of every raw frame of each latent frame (twin of `chunk_plucker`).

    Args:
        c2w_raw: [..., F, 4, 4] c2w per raw frame, relative to frame 0.
        intr_latent: [..., F, 4] per raw frame or [4] / [..., 1, 4] shared, latent pixels.
        latent_frames: T latent frame indices (a list, or a 1-D int tensor to avoid host syncs).
        latent_hw: (h, w) latent grid.
        stride: raw frames per latent frame.
        compute_dtype: dtype of the math and of the result.

    Returns:
        [..., 6*stride, T, h, w]; channel 6*j + c = raw-frame slot j, component c of [d, o x d].
    """
    if c2w_raw.shape[-2:] != (4, 4) or c2w_raw.dim() < 3:
        raise ValueError(f"c2w_raw: expected [..., F, 4, 4], got {tuple(c2w_raw.shape)}")
    h, w = (int(x) for x in latent_hw)
    num_raw = c2w_raw.shape[-3]
    c2w = c2w_raw.to(compute_dtype)
    intr = _intrinsics_per_frame(intr_latent, num_raw, c2w)
    idx = plucker_raw_indices_torch(latent_frames, num_raw, stride, device=c2w.device)  # [T, S]
    T, S = idx.shape
    poses = c2w[..., idx, :, :]  # [..., T, S, 4, 4]
    K = intr[..., idx, :]  # [..., T, S, 4]
    fx, fy, cx, cy = (K[..., i, None, None] for i in range(4))
    u = torch.arange(w, device=c2w.device, dtype=compute_dtype)
    v = torch.arange(h, device=c2w.device, dtype=compute_dtype)[:, None]
    shape = (*K.shape[:-1], h, w)
    x = ((u - cx) / fx).expand(shape)
    y = ((v - cy) / fy).expand(shape)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    d = torch.einsum("...ij,...hwj->...hwi", poses[..., :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = poses[..., None, None, :3, 3].expand_as(d)
    m = torch.linalg.cross(o, d, dim=-1)
    out = torch.cat([d, m], dim=-1)  # [..., T, S, h, w, 6]
    nd = out.dim()
    lead = tuple(range(nd - 5))
    out = out.permute(*lead, nd - 4, nd - 1, nd - 5, nd - 3, nd - 2)  # [..., S, 6, T, h, w]
    return out.reshape(*out.shape[:-5], 6 * S, T, h, w)


def camera_conditions_torch(c2w_raw: torch.Tensor, intr_latent: torch.Tensor,
                            latent_frames: Sequence[int] | torch.Tensor, stride: int = DEFAULT_STRIDE,
                            *, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[..., T, 20] camera conditions: c2w at raw frame stride*k (row-major) + intrinsics (twin of numpy)."""
    num_raw = c2w_raw.shape[-3]
    idx = (stride * _latent_tensor(latent_frames, num_raw, stride, c2w_raw.device)).clamp_max(num_raw - 1)
    c2w = c2w_raw.to(compute_dtype)
    intr = _intrinsics_per_frame(intr_latent, num_raw, c2w)
    flat = c2w[..., idx, :, :].reshape(*c2w.shape[:-3], idx.shape[0], 16)
    return torch.cat([flat, intr[..., idx, :]], dim=-1)


def _intrinsics_per_frame(intr_latent: torch.Tensor, num_raw: int, like: torch.Tensor) -> torch.Tensor:
    """[4], [..., 1, 4] (shared) or [..., F, 4] intrinsics -> [..., F, 4] on `like`'s device and dtype."""
    intr = intr_latent.to(device=like.device, dtype=like.dtype)
    if intr.dim() == 1:
        intr = intr[None]
    if intr.shape[-2] == 1:
        intr = intr.expand(*intr.shape[:-2], num_raw, 4)
    return intr


def _normalize(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
