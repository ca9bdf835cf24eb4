"""Pinhole intrinsics: layouts, validation, the resize + centre-crop map and the latent-grid scaling.

Intrinsics travel as (fx, fy, cx, cy) vectors. Three pixel spaces appear, each named where it is used:

- source pixels: the user's image (and any intrinsics file), size ``src_hw``;
- output pixels: the model video after the aspect-preserving cover resize and centre crop, ``out_hw``
  (704 x 1280 for the released model);
- latent pixels: the autoencoder grid, ``latent_hw`` (22 x 40), where the camera tensors are computed.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_HFOV_DEG = 65.0
"""Horizontal field of view assumed when no intrinsics are given (docs/camera.md explains the choice)."""


def intrinsics_to_vec4(arr, num_frames: int | None = None, *, source: str = "intrinsics") -> np.ndarray:
    """Normalise any accepted intrinsics layout to (fx, fy, cx, cy) rows.

    Args:
        arr: (3, 3) K, (F', 3, 3) per-frame K, (4,) vector or (F', 4) per-frame vectors.
        num_frames: wanted F. Shared layouts are broadcast; per-frame arrays with F' >= F are truncated and
            with F' < F linearly resampled over the trajectory. None keeps F'.
        source: file name or description used in error messages.

    Returns:
        [F, 4] float64 (or [F', 4] / [1, 4] when num_frames is None).
    """
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{source}: intrinsics must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.shape == (3, 3):
        vec = np.array([[a[0, 0], a[1, 1], a[0, 2], a[1, 2]]])
    elif a.shape == (4,):
        vec = a[None]
    elif a.ndim == 3 and a.shape[1:] == (3, 3) and a.shape[0] >= 1:
        vec = np.stack([a[:, 0, 0], a[:, 1, 1], a[:, 0, 2], a[:, 1, 2]], axis=1)
    elif a.ndim == 2 and a.shape[1] == 4 and a.shape[0] >= 1:
        vec = a
    else:
        raise ValueError(f"{source}: wrong intrinsics shape {a.shape} (expected (3,3), (F,3,3), (4,) or (F,4))")
    validate_intrinsics(vec, source=source)
    if num_frames is None:
        return vec.copy()
    if num_frames < 1:
        raise ValueError(f"{source}: num_frames must be >= 1, got {num_frames}")
    n = vec.shape[0]
    if n == 1:
        return np.repeat(vec, num_frames, axis=0)
    if n >= num_frames:
        return vec[:num_frames].copy()
    # Stretch the per-frame track over the whole trajectory (official load_intrinsics behaviour).
    pos = np.linspace(0.0, n - 1.0, num_frames)
    return np.stack([np.interp(pos, np.arange(n), vec[:, c]) for c in range(4)], axis=1)


def validate_intrinsics(vec: np.ndarray, *, source: str = "intrinsics") -> None:
    """Raise ValueError naming `source` and the frame if [..., 4] (fx, fy, cx, cy) is not finite or fx/fy <= 0."""
    v = np.asarray(vec, dtype=np.float64).reshape(-1, 4)
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise ValueError(f"{source}: non-finite intrinsics at frame {int(np.argmax(bad))}")
    bad = (v[:, 0] <= 0) | (v[:, 1] <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{source}: non-positive focal length at frame {i} (fx={v[i, 0]}, fy={v[i, 1]})")


def vec4_to_matrix(vec: np.ndarray) -> np.ndarray:
    """[..., 4] (fx, fy, cx, cy) -> [..., 3, 3] K."""
    v = np.asarray(vec, dtype=np.float64)
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = v[..., 0], v[..., 1], v[..., 2], v[..., 3], 1.0
    return K


def cover_resize_crop(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Geometry of the aspect-preserving resize that covers `out_hw`, then the centred crop.

    Same integer rounding as the official image preprocessing, so image and intrinsics stay in step.

    Returns:
        ((resized_h, resized_w), (top, left)): size after the resize and the crop's offset, in pixels.
    """
    src_h, src_w = _hw(src_hw, "src_hw")
    out_h, out_w = _hw(out_hw, "out_hw")
    scale = max(out_h / src_h, out_w / src_w)
    rh = max(out_h, round(src_h * scale))
    rw = max(out_w, round(src_w * scale))
    return (rh, rw), ((rh - out_h) // 2, (rw - out_w) // 2)


def crop_intrinsics(intr: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Map [..., 4] intrinsics from source pixels to output pixels (cover resize + centre crop)."""
    v = np.array(intr, dtype=np.float64)
    src_h, src_w = _hw(src_hw, "src_hw")
    (rh, rw), (top, left) = cover_resize_crop(src_hw, out_hw)
    sx, sy = rw / src_w, rh / src_h
    v[..., 0] *= sx
    v[..., 1] *= sy
    v[..., 2] = v[..., 2] * sx - left
    v[..., 3] = v[..., 3] * sy - top
    return v


def intrinsics_to_latent(intr: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int],
                         latent_hw: tuple[int, int]) -> np.ndarray:
    """Source-pixel intrinsics -> latent-grid intrinsics, as the model reads them.

    Args:
        intr: [F, 4] or [4] (fx, fy, cx, cy) in source-image pixels.
        src_hw: (H, W) of the source image.
        out_hw: (H, W) of the model video (cover resize + centre crop target).
        latent_hw: (h, w) of the latent grid.

    Returns:
        same shape as `intr`, float64, latent pixels: fx, cx scaled by w / W and fy, cy by h / H.
    """
    out_h, out_w = _hw(out_hw, "out_hw")
    lat_h, lat_w = _hw(latent_hw, "latent_hw")
    v = crop_intrinsics(intr, src_hw, out_hw)
    v[..., [0, 2]] *= lat_w / out_w
    v[..., [1, 3]] *= lat_h / out_h
    return v


def default_intrinsics(out_hw: tuple[int, int], fov_deg: float = DEFAULT_HFOV_DEG) -> np.ndarray:
    """Intrinsics to use when none are given (the official pipeline estimates them with Pi3X).

    Square pixels, principal point at (W/2, H/2) as the official crop-centre convention, and a horizontal
    field of view of `fov_deg` (default 65 degrees).

    Returns:
        [4] float64 (fx, fy, cx, cy) in output pixels of an `out_hw` image (pass src_hw = out_hw to
        `intrinsics_to_latent`).
    """
    out_h, out_w = _hw(out_hw, "out_hw")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg: must be in (0, 180), got {fov_deg}")
    f = (out_w / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([f, f, out_w / 2.0, out_h / 2.0])


def fov_deg(intr: np.ndarray, hw: tuple[int, int]) -> tuple[float, float]:
    """(horizontal, vertical) field of view in degrees of (fx, fy, ...) intrinsics on an (H, W) image."""
    h, w = _hw(hw, "hw")
    v = np.asarray(intr, dtype=np.float64).reshape(-1)
    return (math.degrees(2 * math.atan(w / (2 * v[0]))), math.degrees(2 * math.atan(h / (2 * v[1]))))


def _hw(hw, name: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected (H, W), got {hw!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: sizes must be positive, got {(h, w)}")
    return h, w
