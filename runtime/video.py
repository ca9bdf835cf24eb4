"""MP4 writing and reading (H.264 through the ffmpeg binary that imageio-ffmpeg ships).

The writer emits a fragmented MP4 (a self-contained fragment per keyframe group), so a file cut short by a
crash or Ctrl-C still plays up to the last complete fragment.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class Mp4Writer:
    """Streams uint8 RGB frames [F, H, W, 3] to a playable H.264 MP4 at `fps`."""

    def __init__(self, path: str | Path, size_hw: tuple[int, int], fps: int = 16, crf: int = 18,
                 fragment_frames: int = 24):
        import imageio_ffmpeg

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width = size_hw
        self.frames_written = 0
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path), (self.width, self.height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
            output_params=["-crf", str(crf), "-preset", "veryfast", "-g", str(fragment_frames),
                           "-movflags", "+frag_keyframe+empty_moov+default_base_moof"])
        self._gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"Mp4Writer: expected uint8 frames [F, {self.height}, {self.width}, 3], got "
                             f"{frames.dtype} {list(frames.shape)}")
        for frame in frames:
            self._gen.send(np.ascontiguousarray(frame))
        self.frames_written += len(frames)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames uint8 [F, H, W, 3] and the frame rate of an MP4 file."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return (np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)), float(meta["fps"])
