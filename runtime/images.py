"""First-frame image loading: aspect-preserving LANCZOS resize that covers (H, W), then a centre crop.

Same geometry as the official `resize_and_center_crop` (NVlabs/Sana inference_video_scripts/
inference_sana_wm.py): scale = max(H / h, W / w), resized size = max(target, round(side * scale)) per side,
crop offset = ((rw - W) // 2, (rh - H) // 2). The crop is returned too, because user intrinsics given for the
source image must be mapped into the cropped frame (`CropInfo.map_intrinsics`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An image path is missing or not a readable image; the message is one line naming the path."""


@dataclass(frozen=True)
class CropInfo:
    """How a source image became the model's frame."""

    src_size: tuple[int, int]
    """(width, height) of the source image."""
    resized_size: tuple[int, int]
    """(width, height) after the covering resize."""
    offset: tuple[int, int]
    """(left, top) of the crop in the resized image."""

    def map_intrinsics(self, fx: float, fy: float, cx: float, cy: float) -> tuple[float, float, float, float]:
        """Source-image pinhole intrinsics (pixels) -> intrinsics of the cropped frame (pixels)."""
        sx = self.resized_size[0] / self.src_size[0]
        sy = self.resized_size[1] / self.src_size[1]
        return fx * sx, fy * sy, cx * sx - self.offset[0], cy * sy - self.offset[1]


def open_rgb(path: str | Path) -> Image.Image:
    """Read an image file as RGB (alpha dropped, palette / grey expanded); clear errors for bad paths."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageLoadError(f"image not found: {p}")
    if p.is_dir():
        raise ImageLoadError(f"image path is a folder, not a file: {p}")
    try:
        with Image.open(p) as img:
            img.load()  # PIL opens lazily; decode now so truncated files fail here
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ImageLoadError(f"cannot read image {p}: not an image format Pillow can decode") from None
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image {p}: {exc}") from None


def resize_and_center_crop(image: Image.Image, height: int, width: int) -> tuple[Image.Image, CropInfo]:
    """Aspect-preserving LANCZOS resize so that both sides cover (height, width), then a centre crop."""
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    src_w, src_h = image.size
    if src_w <= 0 or src_h <= 0:
        raise ImageLoadError(f"image has no pixels ({src_w}x{src_h})")
    scale = max(height / src_h, width / src_w)
    rw = max(width, round(src_w * scale))
    rh = max(height, round(src_h * scale))
    resized = image if (rw, rh) == (src_w, src_h) else image.resize((rw, rh), Image.LANCZOS)
    left, top = (rw - width) // 2, (rh - height) // 2
    cropped = resized.crop((left, top, left + width, top + height))
    return cropped, CropInfo((src_w, src_h), (rw, rh), (left, top))


def image_to_tensor(image: Image.Image, *, as_uint8: bool = False) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W]: float32 in [-1, 1] (x / 127.5 - 1), or uint8 with `as_uint8`."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()
    return t if as_uint8 else t.float() / 127.5 - 1.0


def load_image(source: str | Path | Image.Image | np.ndarray, height: int, width: int, *,
               as_uint8: bool = False, return_crop: bool = False):
    """Load the first frame for a (height, width) model.

    Args:
        source: a path, a PIL image, or an HxWx3 uint8 array.
        height, width: model frame size in pixels (704 x 1280 for SANA-WM).
        as_uint8: return uint8 [1, 3, H, W] instead of float [-1, 1].
        return_crop: also return the `CropInfo`.

    Returns:
        [1, 3, height, width] tensor (and the CropInfo when asked).

    Raises:
        ImageLoadError: missing / unreadable file, or an array that is not HxWx3 / HxW.
    """
    if isinstance(source, Image.Image):
        image = source.convert("RGB")
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ImageLoadError(f"image array must be uint8, got {source.dtype}")
        if source.ndim == 2:
            source = np.repeat(source[..., None], 3, axis=-1)
        if source.ndim != 3 or source.shape[-1] not in (3, 4):
            raise ImageLoadError(f"image array must be HxWx3 (or HxW, HxWx4), got shape {source.shape}")
        image = Image.fromarray(np.ascontiguousarray(source[..., :3]))
    else:
        image = open_rgb(source)
    cropped, crop = resize_and_center_crop(image, height, width)
    tensor = image_to_tensor(cropped, as_uint8=as_uint8)
    return (tensor, crop) if return_crop else tensor
