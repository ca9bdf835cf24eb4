"""Raw-frame / latent-frame / chunk bookkeeping.

The causal video autoencoder maps F = stride*(T-1) + 1 raw frames to T latent frames: latent frame 0 is raw
frame 0 alone, latent frame k >= 1 covers raw frames stride*k - stride + 1 .. stride*k (stride = 8, the
config's `frames_per_latent`). Generation runs in chunks of latent frames: the first chunk holds 4 (the
image frame plus 3), every later chunk 3 (`first_chunk_size`, `chunk_size`).
"""
from __future__ import annotations

DEFAULT_STRIDE = 8
"""Raw frames per latent frame (vae_stride[0])."""
DEFAULT_FIRST_CHUNK = 4
"""Latent frames in the first chunk."""
DEFAULT_CHUNK = 3
"""Latent frames in every later chunk."""


def _check_stride(stride: int) -> None:
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride: must be a positive int, got {stride!r}")


def snap_num_frames(n: int, max_frames: int | None = None, *, stride: int = DEFAULT_STRIDE) -> int:
    """Raw frame count to generate: `n` clipped to `max_frames`, then snapped to the nearest stride*k + 1.

    Ties round up unless that passes `max_frames` (the trajectory length), in which case they round down;
    the official `_snap_num_frames` rule (spec 5.4).

    Returns:
        a raw frame count of the form stride*k + 1, >= 1.
    """
    _check_stride(stride)
    if n < 1:
        raise ValueError(f"num_frames: must be >= 1, got {n}")
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames: must be >= 1, got {max_frames}")
        n = min(n, max_frames)
    floor = n - (n - 1) % stride
    if floor == n:
        return n
    ceil = floor + stride
    snapped = floor if n - floor < ceil - n else ceil
    if max_frames is not None and snapped > max_frames:
        snapped = floor
    return snapped


def latent_frame_count(raw_frames: int, *, stride: int = DEFAULT_STRIDE) -> int:
    """Latent frames T for F raw frames: (F - 1) / stride + 1. F must be stride*k + 1 (see `snap_num_frames`)."""
    _check_stride(stride)
    if raw_frames < 1 or (raw_frames - 1) % stride:
        raise ValueError(f"raw frame count {raw_frames} is not of the form {stride}k+1 "
                         "(snap it with snap_num_frames)")
    return (raw_frames - 1) // stride + 1


def raw_frame_count(latent_frames: int, *, stride: int = DEFAULT_STRIDE) -> int:
    """Raw frames F for T latent frames: stride*(T - 1) + 1."""
    _check_stride(stride)
    if latent_frames < 1:
        raise ValueError(f"latent frame count must be >= 1, got {latent_frames}")
    return stride * (latent_frames - 1) + 1


def raw_frames_of_latent(k: int, *, stride: int = DEFAULT_STRIDE) -> range:
    """Raw frame indices that latent frame `k` encodes: k = 0 -> [0]; k >= 1 -> stride*k-stride+1 .. stride*k."""
    _check_stride(stride)
    if k < 0:
        raise ValueError(f"latent frame index must be >= 0, got {k}")
    if k == 0:
        return range(1)
    return range(stride * k - stride + 1, stride * k + 1)


def chunk_layout(num_latent_frames: int, first: int = DEFAULT_FIRST_CHUNK,
                 size: int = DEFAULT_CHUNK) -> list[tuple[int, int]]:
    """Split T latent frames into generation chunks.

    Returns:
        list of half-open (start, end) latent-frame ranges: the first `first` frames, then runs of `size`;
        the last chunk may be shorter (streaming stops wherever the user stops).
    """
    if num_latent_frames < 1:
        raise ValueError(f"num_latent_frames: must be >= 1, got {num_latent_frames}")
    if first < 1 or size < 1:
        raise ValueError(f"chunk sizes must be >= 1, got first={first}, size={size}")
    out = [(0, min(first, num_latent_frames))]
    start = out[0][1]
    while start < num_latent_frames:
        out.append((start, min(start + size, num_latent_frames)))
        start += size
    return out


def chunk_latent_range(chunk_index: int, first: int = DEFAULT_FIRST_CHUNK, size: int = DEFAULT_CHUNK) -> range:
    """Latent frames of chunk `chunk_index` in an unbounded stream: chunk 0 -> 0..first-1, chunk c -> ..."""
    if chunk_index < 0:
        raise ValueError(f"chunk_index: must be >= 0, got {chunk_index}")
    if first < 1 or size < 1:
        raise ValueError(f"chunk sizes must be >= 1, got first={first}, size={size}")
    if chunk_index == 0:
        return range(first)
    start = first + (chunk_index - 1) * size
    return range(start, start + size)


def raw_frames_for_chunk(chunk_index: int, first: int = DEFAULT_FIRST_CHUNK, size: int = DEFAULT_CHUNK,
                         stride: int = DEFAULT_STRIDE) -> range:
    """Raw frame indices chunk `chunk_index` decodes to.

    With the defaults: chunk 0 -> 0..24 (25 frames), chunk 1 -> 25..48, chunk c -> 24c+1 .. 24c+24.
    """
    _check_stride(stride)
    lat = chunk_latent_range(chunk_index, first, size)
    return range(raw_frames_of_latent(lat.start, stride=stride).start,
                 raw_frames_of_latent(lat.stop - 1, stride=stride).stop)
