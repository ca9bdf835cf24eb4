"""wan_rope: 3-axis rotary tables (t, h, w) on interleaved pairs of each head (spec section 1.5, 4.3).

Per axis with d real dims, frequencies w_j = theta^(-2j/d), j < d/2 (float64). A token at (frame f, row i,
column j) gets angles [f w_t | i w_h | j w_w]. The camera branch rotates only the last half of each head
with the highest-frequency quarter of each axis table (t[0:d_t/4], h[0:d_h/4], w[0:d_w/4]).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _axis_freqs(dim: int, theta: float, device) -> Tensor:
    # Built on the target device: no host-to-device copy (the tables are rebuilt inside captured CUDA graphs).
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def rope_angles(split: tuple[int, int, int], frames: Tensor, height: int, width: int, theta: float,
                camera: bool = False) -> Tensor:
    """Rotation angles [T, S, P] in float64 for absolute latent frame indices `frames` [T].

    P = head_dim / 2 pairs for the main branch, head_dim / 4 for the camera branch (`camera=True`).
    """
    freqs = [_axis_freqs(d, theta, frames.device) for d in split]
    if camera:
        freqs = [f[: len(f) // 2] for f in freqs]
    ft, fh, fw = freqs
    T, S = frames.numel(), height * width
    rows = torch.arange(height, dtype=torch.float64, device=frames.device)
    cols = torch.arange(width, dtype=torch.float64, device=frames.device)
    a_t = (frames.double()[:, None] * ft).view(T, 1, -1).expand(T, S, -1)
    a_h = (rows[:, None] * fh)[:, None, :].expand(height, width, -1).reshape(1, S, -1).expand(T, S, -1)
    a_w = (cols[:, None] * fw)[None, :, :].expand(height, width, -1).reshape(1, S, -1).expand(T, S, -1)
    return torch.cat([a_t, a_h, a_w], dim=-1)


def rope_tables(split, frames, height, width, theta, camera=False, dtype=torch.float32):
    """(cos, sin), each [T, S, P]."""
    ang = rope_angles(split, frames, height, width, theta, camera)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, inverse: bool = False) -> Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) of the last dim by the angles; x [..., T, S, 2P]."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    if inverse:
        sin = -sin
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
