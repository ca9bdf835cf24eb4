"""Camera tensors the model reads, from raw-frame poses (numpy reference; GPU twins in `runtime.camera_torch`).

All math is float64; the tensors handed to the model are float32. Conventions (spec 4.1, 4.3):

- poses are c2w in OpenCV axes, relative to raw frame 0 (`relative_to_first`);
- intrinsics are (fx, fy, cx, cy) in latent pixels (`intrinsics_to_latent`);
- latent pixel grid: u = 0..w-1, v = 0..h-1 integers (no +0.5 offset), token s = v*w + u;
- latent frame k is represented by raw frame stride*k (the last raw frame it encodes) in `camera_conditions`
  and by its raw frames stride*k-stride+1 .. stride*k (k = 0: raw frames 0..stride-1) in `chunk_plucker`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .frames import DEFAULT_STRIDE

NORM_EPS = 1e-6
"""Floor on vector norms in the UCPE ray frame (torch F.normalize eps of the official code)."""


def relative_to_first(c2w: np.ndarray) -> np.ndarray:
    """Re-express a trajectory relative to its first pose: P'_i = P_0^-1 P_i, P'_0 = I.

    Args:
        c2w: [F, 4, 4] c2w poses (raw frames), rigid.

    Returns:
        [F, 4, 4] float64; the first pose is exactly the identity.
    """
    a = _poses(c2w)
    R0, t0 = a[0, :3, :3], a[0, :3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R0.T
    inv[:3, 3] = -R0.T @ t0
    out = inv @ a
    out[0] = np.eye(4)
    return out


def camera_conditions(c2w_raw: np.ndarray, intr_latent: np.ndarray, latent_frames: Sequence[int],
                      stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """Per-latent-frame camera vector of the UCPE branch ("raymap" in the official code).

    Args:
        c2w_raw: [F, 4, 4] c2w per raw frame, already relative to frame 0.
        intr_latent: [F, 4] per raw frame or [4] shared (fx, fy, cx, cy), latent pixels.
        latent_frames: T latent frame indices k; each needs raw frame stride*k < F.
        stride: raw frames per latent frame.

    Returns:
        [T, 20] float32: c2w at raw frame stride*k flattened row-major (16), then fx, fy, cx, cy.
    """
    c2w = _poses(c2w_raw)
    intr = _intr(intr_latent, c2w.shape[0])
    ks = _latent_indices(latent_frames, c2w.shape[0], stride)
    idx = stride * ks
    return np.concatenate([c2w[idx].reshape(len(idx), 16), intr[idx]], axis=1).astype(np.float32)


def plucker_raw_indices(latent_frames: Sequence[int], num_raw: int, stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """[T, stride] raw frame index per (latent frame, slot j): stride*k-stride+1+j (k = 0: j), clamped to F-1."""
    ks = _latent_indices(latent_frames, num_raw, stride)
    start = np.maximum(stride * ks - (stride - 1), 0)
    # Past the end the last pose repeats (official padding of short tails).
    return np.minimum(start[:, None] + np.arange(stride)[None, :], num_raw - 1)


def chunk_plucker(c2w_raw: np.ndarray, intr_latent: np.ndarray, latent_frames: Sequence[int],
                  latent_hw: tuple[int, int], stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """Plucker ray maps of every raw frame of each latent frame, for the fine camera branch.

    Args:
        c2w_raw: [F, 4, 4] c2w per raw frame, already relative to frame 0.
        intr_latent: [F, 4] per raw frame or [4] shared, latent pixels.
        latent_frames: T latent frame indices k (raw frames stride*k-stride+1 .. stride*k; k = 0 uses raw
            frames 0..stride-1; indices past the trajectory end repeat the last pose).
        latent_hw: (h, w) latent grid.
        stride: raw frames per latent frame.

    Returns:
        [6*stride, T, h, w] float32; channel 6*j + c is raw-frame slot j, component c of
        [d (unit world ray direction), o x d (moment, o = camera centre)].
    """
    c2w = _poses(c2w_raw)
    intr = _intr(intr_latent, c2w.shape[0])
    h, w = _hw(latent_hw)
    idx = plucker_raw_indices(latent_frames, c2w.shape[0], stride)  # [T, S]
    poses, K = c2w[idx], intr[idx]  # [T, S, 4, 4], [T, S, 4]
    d_cam = _pinhole_dirs(K, h, w)  # [T, S, h, w, 3]
    d = np.einsum("tsij,tshwj->tshwi", poses[..., :3, :3], d_cam)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(poses[:, :, None, None, :3, 3], d.shape)
    m = np.cross(o, d)
    out = np.concatenate([d, m], axis=-1)  # [T, S, h, w, 6]
    T, S = idx.shape
    return np.ascontiguousarray(out.transpose(1, 4, 0, 2, 3).reshape(6 * S, T, h, w)).astype(np.float32)


def ucpe_ray_matrices(cond: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """World -> ray-local 4x4 transforms P of every latent token (UCPE, spec 4.3 steps 1-2).

    Rays: unified camera model with xi = 0, d_cam = (x, y, 1) / sqrt(1 + x^2 + y^2), x = (u - cx) / fx,
    y = (v - cy) / fy. Ray frame: z = normalize(R d_cam), x = normalize(R[:, 1] x z), y = normalize(z x x);
    P = [[R_l2w^T, -R_l2w^T t], [0, 0, 0, 1]]; rays with NaN get the identity. (The official fx -> FoV -> fx
    round trip is the identity for xi = 0 and is skipped.)

    Args:
        cond: [..., T, 20] `camera_conditions` rows (c2w row-major + latent fx, fy, cx, cy).
        latent_hw: (h, w) latent grid.

    Returns:
        [..., T, h*w, 4, 4] float32, token s = v*w + u.
    """
    c = np.asarray(cond, dtype=np.float64)
    if c.shape[-1:] != (20,):
        raise ValueError(f"cond: expected [..., T, 20], got {c.shape}")
    h, w = _hw(latent_hw)
    lead = c.shape[:-1]
    M = c[..., :16].reshape(lead + (4, 4))
    R, t = M[..., :3, :3], M[..., :3, 3]
    fx, fy, cx, cy = (c[..., i, None, None] for i in range(16, 20))
    u = np.arange(w, dtype=np.float64)
    v = np.arange(h, dtype=np.float64)[:, None]
    x = np.broadcast_to((u - cx) / fx, lead + (h, w))
    y = np.broadcast_to((v - cy) / fy, lead + (h, w))
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1) / np.sqrt(1.0 + x * x + y * y)[..., None]
    d_w = np.einsum("...ij,...hwj->...hwi", R, d_cam)
    z = _normalize(d_w)
    cam_y = np.broadcast_to(R[..., None, None, :, 1], z.shape)
    xr = _normalize(np.cross(cam_y, z))
    yr = _normalize(np.cross(z, xr))
    R_w2l = np.stack([xr, yr, z], axis=-2)  # rows = ray axes = R_l2w^T
    P = np.zeros(lead + (h, w, 4, 4))
    P[..., :3, :3] = R_w2l
    P[..., :3, 3] = -np.einsum("...hwij,...j->...hwi", R_w2l, t)
    P[..., 3, 3] = 1.0
    nan = np.isnan(d_w).any(axis=-1)
    P[nan] = np.eye(4)
    return P.reshape(lead + (h * w, 4, 4)).astype(np.float32)


def camera_tensors(c2w: np.ndarray, intr_latent: np.ndarray, latent_hw: tuple[int, int],
                   latent_frames: Sequence[int] | None = None, stride: int = DEFAULT_STRIDE) -> dict:
    """Convenience: relativise `c2w` [F, 4, 4] to frame 0 and build both model tensors.

    Returns:
        {"camera_conditions": [T, 20], "chunk_plucker": [6*stride, T, h, w]} float32; T covers every latent
        frame whose raw frame stride*k exists when `latent_frames` is None.
    """
    rel = relative_to_first(c2w)
    if latent_frames is None:
        latent_frames = range((rel.shape[0] - 1) // stride + 1)
    return {"camera_conditions": camera_conditions(rel, intr_latent, latent_frames, stride),
            "chunk_plucker": chunk_plucker(rel, intr_latent, latent_frames, latent_hw, stride)}


# --------------------------------------------------------------------------------------------------------
def _poses(c2w) -> np.ndarray:
    a = np.asarray(c2w, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (4, 4) or a.shape[0] < 1:
        raise ValueError(f"c2w: expected [F, 4, 4] with F >= 1, got {a.shape}")
    return a


def _intr(intr, num_raw: int) -> np.ndarray:
    a = np.asarray(intr, dtype=np.float64)
    if a.shape == (4,):
        return np.broadcast_to(a, (num_raw, 4))
    if a.shape != (num_raw, 4):
        raise ValueError(f"intr_latent: expected [4] or [F, 4] with F = {num_raw}, got {a.shape}")
    return a


def _latent_indices(latent_frames, num_raw: int, stride: int) -> np.ndarray:
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: must be a positive int, got {stride!r}")
    ks = np.asarray(list(latent_frames) if not isinstance(latent_frames, np.ndarray) else latent_frames)
    if ks.ndim != 1 or ks.size == 0 or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(f"latent_frames: expected a non-empty sequence of ints, got {latent_frames!r}")
    if ks.min() < 0:
        raise ValueError(f"latent_frames: indices must be >= 0, got {int(ks.min())}")
    last = int(ks.max())
    if stride * last > num_raw - 1:
        raise ValueError(f"latent frame {last} needs raw frame {stride * last}, but the trajectory has only "
                         f"{num_raw} raw frames")
    return ks.astype(np.int64)


def _pinhole_dirs(K: np.ndarray, h: int, w: int) -> np.ndarray:
    """[..., 4] intrinsics -> [..., h, w, 3] unnormalised camera rays ((u-cx)/fx, (v-cy)/fy, 1)."""
    fx, fy, cx, cy = (K[..., i, None, None] for i in range(4))
    u = np.arange(w, dtype=np.float64)
    v = np.arange(h, dtype=np.float64)[:, None]
    shape = K.shape[:-1] + (h, w)
    x = np.broadcast_to((u - cx) / fx, shape)
    y = np.broadcast_to((v - cy) / fy, shape)
    return np.stack([x, y, np.ones(shape)], axis=-1)


def _normalize(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), NORM_EPS)


def _hw(hw) -> tuple[int, int]:
    h, w = (int(x) for x in hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"latent_hw: sizes must be positive, got {(h, w)}")
    return h, w
