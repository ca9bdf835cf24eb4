"""Camera trajectory files: ``.npy``, ``.npz`` (official benchmark layout) and ``.json``.

- ``.npy``: [F, 4, 4] c2w only.
- ``.npz``: ``c2w`` [F, 4, 4]; optional ``intrinsics`` ((3,3), (F,3,3), (4,) or (F,4), source-image pixels),
  ``fps``, ``num_frames`` (keeps the first num_frames poses), ``image_size`` (H, W). Other arrays are ignored
  (third-party files carry extras).
- ``.json``: ``{"c2w": [[[...]]], "intrinsics": ..., "image_size": [H, W], "fps": 16, "num_frames": F}``;
  only ``c2w`` is required and unknown keys are an error (a hand-written typo must not vanish).

Poses are camera-to-world, OpenCV axes (+X right, +Y down, +Z forward), in the dataset's metric units.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .intrinsics import intrinsics_to_vec4

ORTHONORMAL_TOL = 1e-3
"""Largest |R^T R - I| entry accepted in a pose's rotation."""
LAST_ROW_TOL = 1e-6
"""Largest deviation from [0, 0, 0, 1] accepted in a pose's last row."""
MIN_FRAMES = 2
"""Shortest trajectory a camera file may hold."""

_JSON_KEYS = ("c2w", "intrinsics", "image_size", "fps", "num_frames")


def validate_c2w(c2w, *, source: str = "c2w", min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Check a camera-to-world trajectory and return it as [F, 4, 4] float64.

    Raises:
        ValueError naming `source` and the problem: wrong shape, fewer than `min_frames` frames, non-finite
        values, last row not [0, 0, 0, 1], rotation not orthonormal (tolerance 1e-3) or a reflection.
    """
    a = np.asarray(c2w)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{source}: c2w must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != 3 or a.shape[1:] != (4, 4):
        raise ValueError(f"{source}: wrong c2w shape {a.shape} (expected (F, 4, 4) camera-to-world matrices)")
    if a.shape[0] < min_frames:
        raise ValueError(f"{source}: too few frames ({a.shape[0]}; need at least {min_frames})")
    bad = ~np.isfinite(a).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"{source}: non-finite values in c2w at frame {int(np.argmax(bad))}")
    row_err = np.abs(a[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    if (row_err > LAST_ROW_TOL).any():
        i = int(np.argmax(row_err > LAST_ROW_TOL))
        raise ValueError(f"{source}: last row of c2w frame {i} is {a[i, 3].tolist()}, expected [0, 0, 0, 1]")
    R = a[:, :3, :3]
    ortho_err = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
    if (ortho_err > ORTHONORMAL_TOL).any():
        i = int(np.argmax(ortho_err > ORTHONORMAL_TOL))
        raise ValueError(f"{source}: rotation of c2w frame {i} is not orthonormal (max |R^T R - I| = "
                         f"{ortho_err[i]:.3g} > {ORTHONORMAL_TOL})")
    det = np.linalg.det(R)
    if (det < 0).any():
        i = int(np.argmax(det < 0))
        raise ValueError(f"{source}: rotation of c2w frame {i} is a reflection (det = {det[i]:.3g})")
    return a


def _check_image_size(image_size, source: str) -> tuple[int, int] | None:
    if image_size is None:
        return None
    try:
        vals = [float(v) for v in np.asarray(image_size).reshape(-1)]
    except (TypeError, ValueError):
        raise ValueError(f"{source}: image_size must be [H, W], got {image_size!r}") from None
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 and v == int(v) for v in vals):
        raise ValueError(f"{source}: image_size must be two positive integers [H, W], got {image_size!r}")
    return int(vals[0]), int(vals[1])


def _check_fps(fps, source: str) -> float:
    try:
        value = float(np.asarray(fps).reshape(-1)[0]) if np.ndim(fps) else float(fps)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{source}: fps must be a number, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{source}: fps must be positive, got {fps!r}")
    return value


@dataclass
class CameraPath:
    """A camera trajectory as loaded from / saved to a file."""

    c2w: np.ndarray
    """[F, 4, 4] float64 camera-to-world poses, one per raw frame, OpenCV axes."""
    intrinsics: np.ndarray | None = None
    """[F, 4] float64 (fx, fy, cx, cy) in source-image pixels, or None (use `default_intrinsics`)."""
    image_size: tuple[int, int] | None = None
    """(H, W) of the image the intrinsics refer to, or None."""
    fps: float = 16.0
    """Raw frames per second."""

    def __post_init__(self) -> None:
        self.c2w = validate_c2w(self.c2w, source="CameraPath")
        if self.intrinsics is not None:
            self.intrinsics = intrinsics_to_vec4(self.intrinsics, self.num_frames, source="CameraPath")
        self.image_size = _check_image_size(self.image_size, "CameraPath")
        self.fps = _check_fps(self.fps, "CameraPath")

    @property
    def num_frames(self) -> int:
        """F, the number of raw frames (poses)."""
        return int(self.c2w.shape[0])


def _build(source: str, c2w, intrinsics=None, image_size=None, fps=None, num_frames=None) -> CameraPath:
    c2w = validate_c2w(c2w, source=source)
    if num_frames is not None:
        try:
            n = int(np.asarray(num_frames).reshape(-1)[0]) if np.ndim(num_frames) else int(num_frames)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"{source}: num_frames must be an integer, got {num_frames!r}") from None
        if n < MIN_FRAMES or n > c2w.shape[0]:
            raise ValueError(f"{source}: num_frames {n} outside [{MIN_FRAMES}, {c2w.shape[0]}] "
                             f"(the file holds {c2w.shape[0]} poses)")
        c2w = c2w[:n]
    intr = None if intrinsics is None else intrinsics_to_vec4(intrinsics, c2w.shape[0], source=source)
    return CameraPath(c2w=c2w, intrinsics=intr, image_size=_check_image_size(image_size, source),
                      fps=16.0 if fps is None else _check_fps(fps, source))


def load_camera(path: str | Path) -> CameraPath:
    """Load a camera trajectory from ``.npy``, ``.npz`` or ``.json`` (module docstring for the layouts).

    Returns:
        CameraPath with c2w [F, 4, 4] float64 and intrinsics [F, 4] (source pixels) or None.

    Raises:
        ValueError naming the file and the problem.
    """
    p = Path(path)
    source = str(p)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz", ".json"):
        raise ValueError(f"{source}: unsupported camera file type {p.suffix!r} (expected .npy, .npz or .json)")
    if not p.is_file():
        raise FileNotFoundError(f"{source}: no such camera file")
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{source}: not a numeric .npy array ({exc})") from None
        return _build(source, arr)
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except ValueError as exc:
            raise ValueError(f"{source}: not a readable .npz archive ({exc})") from None
        if "c2w" not in data:
            raise ValueError(f"{source}: missing array 'c2w' (found: {', '.join(sorted(data)) or 'none'})")
        return _build(source, data["c2w"], data.get("intrinsics"), data.get("image_size"), data.get("fps"),
                      data.get("num_frames"))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object with a 'c2w' key, got {type(data).__name__}")  # noqa: TRY004 (bad file content)
    unknown = sorted(set(data) - set(_JSON_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(_JSON_KEYS)})")
    if "c2w" not in data:
        raise ValueError(f"{source}: missing key 'c2w'")
    try:
        c2w = np.asarray(data["c2w"], dtype=np.float64)
        intr = None if data.get("intrinsics") is None else np.asarray(data["intrinsics"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: c2w / intrinsics must be nested lists of numbers ({exc})") from None
    return _build(source, c2w, intr, data.get("image_size"), data.get("fps"), data.get("num_frames"))


def save_camera(path: str | Path, camera_path: CameraPath) -> None:
    """Write a CameraPath as ``.npy`` (c2w only), ``.npz`` or ``.json``; `load_camera` reads it back exactly.

    Raises:
        ValueError for another suffix, or for ``.npy`` when intrinsics / image_size / a non-16 fps would be lost.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    cp = camera_path
    if suffix == ".npy":
        if cp.intrinsics is not None or cp.image_size is not None or cp.fps != 16.0:
            raise ValueError(f"{p}: .npy holds only c2w; save as .npz or .json to keep intrinsics, "
                             "image_size and fps")
        np.save(p, cp.c2w)
    elif suffix == ".npz":
        arrays = {"c2w": cp.c2w, "fps": np.asarray(cp.fps), "num_frames": np.asarray(cp.num_frames)}
        if cp.intrinsics is not None:
            arrays["intrinsics"] = cp.intrinsics
        if cp.image_size is not None:
            arrays["image_size"] = np.asarray(cp.image_size, dtype=np.int64)
        # np.savez appends ".npz" to a name without it; the suffix check above guarantees one.
        np.savez(p, **arrays)
    elif suffix == ".json":
        data: dict = {"c2w": cp.c2w.tolist(), "fps": cp.fps}
        if cp.intrinsics is not None:
            data["intrinsics"] = cp.intrinsics.tolist()
        if cp.image_size is not None:
            data["image_size"] = list(cp.image_size)
        # Python's float repr round-trips float64 exactly.
        p.write_text(json.dumps(data), encoding="utf-8")
    else:
        raise ValueError(f"{p}: unsupported camera file type {p.suffix!r} (expected .npy, .npz or .json)")


def load_intrinsics(path_or_array, num_frames: int) -> np.ndarray:
    """Load intrinsics from a ``.npy`` file (or take an array) for a trajectory of `num_frames` raw frames.

    Args:
        path_or_array: path to a ``.npy`` or an array shaped (3,3), (F',3,3), (4,) or (F',4), source pixels.
        num_frames: F; per-frame arrays are truncated (F' >= F) or linearly resampled (F' < F).

    Returns:
        [F, 4] float64 (fx, fy, cx, cy) in source-image pixels.
    """
    if isinstance(path_or_array, (str, Path)):
        p = Path(path_or_array)
        if p.suffix.lower() != ".npy":
            raise ValueError(f"{p}: intrinsics files must be .npy (got {p.suffix!r})")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such intrinsics file")
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{p}: not a numeric .npy array ({exc})") from None
        return intrinsics_to_vec4(arr, num_frames, source=str(p))
    return intrinsics_to_vec4(path_or_array, num_frames, source="intrinsics")
