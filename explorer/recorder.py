"""Recording a session: an MP4 of the frames shown plus a sidecar log that `sana-wm render --replay` reads.

`WalkLog` is the walk of the current branch (every generated raw frame's pose and keys, chunk by chunk; a
rewind truncates it). `Recorder` writes each shown frame to a fragmented H.264 MP4 at the session's fps and
rewrites the sidecar (`kind: "sana-wm-walk"`, the format of `runtime.render`) once per chunk, so a crash
loses at most the last chunk and leaves a playable file.

Replay contract: the sidecar's `c2w`, `seed`, `prompt`, `image` and `model` regenerate the current branch
from raw frame 0; `num_frames` ends at the last recorded frame. A recording started at frame 0 without a
rewind therefore equals the replay frame for frame; otherwise `explorer.frames` maps every recorded frame
to its raw index and branch (epoch), and `explorer.record_start_raw` says where the recording began.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.camera import format_actions
from runtime.render import SIDECAR_VERSION, sidecar_path, write_json_atomic

from .client import SessionInfo
from .worker import ChunkRecord, Frame


@dataclass
class WalkLog:
    """Poses and keys of every generated raw frame on the current branch, and the chunks that made them."""

    poses: list[np.ndarray] = field(default_factory=list)
    keys: list[frozenset[str]] = field(default_factory=list)
    chunks: list[ChunkRecord] = field(default_factory=list)
    c2w_lists: list[list] = field(default_factory=list)
    """`poses` as nested lists, converted once per chunk (the sidecar is rewritten every chunk)."""

    def __len__(self) -> int:
        return len(self.poses)

    def add_chunk(self, rec: ChunkRecord) -> None:
        self.truncate(rec.raw_start)
        if rec.raw_start != len(self.poses):
            raise ValueError(f"chunk {rec.index} starts at raw frame {rec.raw_start}, but the walk has "
                             f"{len(self.poses)} frames")
        self.poses.extend(np.asarray(rec.poses))
        self.c2w_lists.extend(np.asarray(rec.poses, dtype=np.float64).tolist())
        self.keys.extend(rec.keys)
        self.chunks.append(rec)

    def truncate(self, n_raw: int) -> None:
        """Keep raw frames [0, n_raw) (a rewind to a snapshot at raw frame n_raw)."""
        del self.poses[n_raw:]
        del self.c2w_lists[n_raw:]
        del self.keys[n_raw:]
        self.chunks = [c for c in self.chunks if c.raw_start < n_raw]

    def reset(self) -> None:
        self.truncate(0)

    def chunk_end(self, raw: int) -> int:
        """End (exclusive) of the generated chunk holding raw frame `raw`."""
        for c in self.chunks:
            if c.raw_start <= raw < c.raw_start + len(c.poses):
                return c.raw_start + len(c.poses)
        return raw + 1


def file_sha256(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Recorder:
    """MP4 + sidecar of the frames shown.

    Args:
        path: output .mp4 (the sidecar is the same path with .json).
        info: the session being recorded.
        walk: the app's `WalkLog` (read at every flush).
        seed, prompt, image, model: what the session was opened with (image: a file path or None for the
            built-in start image).
        fast_path: the local model's `FastPath.to_dict()` (None: unknown, a remote model's).
        softmax_attention: the local model's softmax attention kernels (`runtime.attention.attention_kernels_of`;
            None: unknown, a remote model's).
    """

    def __init__(self, path: str | Path, *, info: SessionInfo, walk: WalkLog, seed: int, prompt: str,
                 image: str | None, model: str, fast_path: dict | None = None,
                 softmax_attention: list[str] | None = None):
        from runtime.video import Mp4Writer

        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)
        self.info = info
        self.walk = walk
        self.started = time.perf_counter()
        self.frames: list[tuple[int, int]] = []        # (raw, epoch) per recorded frame
        self.rewinds: list[dict] = []
        self.key_to_photon_ms: list[float] = []
        self.closed = False
        self._writer = Mp4Writer(self.path, (info.height, info.width), fps=info.fps,
                                 fragment_frames=info.chunk_frames)
        # The sidecar grows with the walk: it is serialised on a helper thread (latest version wins) so a
        # long recording never stalls the render loop.
        self._pending: dict | None = None
        self._cond = threading.Condition()
        self._flusher = threading.Thread(target=self._flush_loop, name="sana-wm-sidecar", daemon=True)
        self._flusher.start()
        image_ref = None if image is None else str(Path(image).resolve())
        self._meta = {
            "kind": "sana-wm-walk", "version": SIDECAR_VERSION, "source": "sana-wm explore",
            "model": model, "fast_path": fast_path, "softmax_attention": softmax_attention, "seed": int(seed),
            "prompt": prompt, "image": image_ref,
            "image_sha256": file_sha256(image_ref), "fps": info.fps, "intrinsics": None, "image_hw": None,
        }
        self.flush()

    @property
    def frames_written(self) -> int:
        return len(self.frames)

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.info.fps

    def add(self, frame: Frame) -> None:
        """Append one shown frame; the sidecar is rewritten when a new chunk begins."""
        if frame.chunk is not None and self.frames:
            self.flush()
        self._writer.write(frame.image)
        self.frames.append((frame.raw, frame.epoch))

    def note_rewind(self, to_raw: int) -> None:
        """The walk went back: raw frames after `to_raw` (-1: all) were abandoned."""
        self.rewinds.append({"at_frame": len(self.frames), "to_raw": int(to_raw)})

    def note_latency(self, seconds: float) -> None:
        self.key_to_photon_ms.append(round(1e3 * seconds, 2))

    def sidecar_dict(self, complete: bool = False) -> dict:
        walk = self.walk
        epoch = self.frames[-1][1] if self.frames else None
        on_branch = [raw for raw, e in self.frames if e == epoch and raw < len(walk)]
        num = (max(on_branch) + 1) if on_branch else 0
        extent = walk.chunk_end(num - 1) if num else 0
        chunks = [c for c in walk.chunks if c.raw_start < extent]
        return dict(
            self._meta,
            # Raw frames 1.. carry the keys that moved the camera into them (frame 0 is the first image).
            actions=format_actions(walk.keys[1:num]) or None,
            num_frames=num,
            # Poses through the end of the last chunk: the frames past `num_frames` shaped that chunk too.
            c2w=walk.c2w_lists[:extent],
            chunks=[{"index": c.index, "raw_start": c.raw_start, "frames": len(c.poses), "speed": c.speed,
                     **{k: round(float(v), 2) for k, v in c.timings.items()}} for c in chunks],
            frames_written=len(self.frames),
            complete=complete,
            explorer={
                "record_start_raw": self.frames[0][0] if self.frames else None,
                "frames": [list(f) for f in self.frames],
                "rewinds": list(self.rewinds),
                "key_to_photon_ms": list(self.key_to_photon_ms),
                "session": {"height": self.info.height, "width": self.info.width,
                            "first_chunk_frames": self.info.first_chunk_frames,
                            "chunk_frames": self.info.chunk_frames},
                "wall_s": round(time.perf_counter() - self.started, 3),
            },
        )

    def flush(self) -> None:
        """Queue the current sidecar for writing (the helper thread writes the latest one)."""
        with self._cond:
            self._pending = self.sidecar_dict()
            self._cond.notify_all()

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self.closed:
                    self._cond.wait()
                data, self._pending = self._pending, None
            if data is None:
                return
            write_json_atomic(self.sidecar, data)

    def close(self) -> None:
        """Finish the MP4 and write the complete sidecar (synchronously: the files are final on return)."""
        if self.closed:
            return
        self._writer.close()
        with self._cond:
            self.closed = True
            self._pending = None
            self._cond.notify_all()
        self._flusher.join()
        write_json_atomic(self.sidecar, self.sidecar_dict(complete=True))
