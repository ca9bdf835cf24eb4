"""One client API for a world session, local (in-process) or remote (`explorer.remote`).

No torch at import time: a thin client on a laptop only needs numpy to drive a remote GPU server.
"""
from __future__ import annotations

import abc
import itertools
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SessionInfo:
    height: int
    width: int
    fps: int
    model: str
    first_chunk_frames: int
    """Raw frames of the first chunk (25 for the official layout), later chunks give `chunk_frames`."""
    chunk_frames: int


@dataclass
class StepResult:
    frames: np.ndarray
    """uint8 [F, H, W, 3]."""
    chunk_index: int
    raw_start: int
    """Global raw frame index of frames[0]."""
    timings: dict = field(default_factory=dict)
    """Milliseconds: generate_ms, decode_ms, total_ms (server side), and round_trip_ms for remote clients."""


class WorldClient(abc.ABC):
    """Drive one world session: open, step chunk by chunk with camera poses, snapshot / restore, close."""

    info: SessionInfo | None = None
    chunk_index: int = 0

    @abc.abstractmethod
    def open_session(self, *, image: bytes | None = None, prompt: str = "", seed: int = 0,
                     model: str | None = None) -> SessionInfo:
        """Start a session from encoded image bytes (PNG / JPEG; None = the built-in start image)."""

    @abc.abstractmethod
    def step(self, c2w: np.ndarray) -> StepResult:
        """Generate the next chunk from its raw-frame poses [n, 4, 4] (n = `frames_needed()`)."""

    @abc.abstractmethod
    def snapshot(self) -> str:
        """Remember this point of the walk; returns an id for `restore`."""

    @abc.abstractmethod
    def restore(self, snapshot_id: str) -> None:
        """Return to a snapshot (later steps branch from there)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session and free its memory."""

    def frames_needed(self) -> int:
        if self.info is None:
            raise RuntimeError("no open session")
        return self.info.first_chunk_frames if self.chunk_index == 0 else self.info.chunk_frames

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalClient(WorldClient):
    """Runs the generator in this process (imports torch and the runtime on first use)."""

    def __init__(self, model: str = "tiny-world", device: str = "cpu", max_snapshots: int = 8, fast=None):
        self.model_name = model
        self.fast = fast
        """The generator's fast path (`runtime.pipeline.FastPath`; None: as stored)."""
        self.device = device
        self.max_snapshots = max_snapshots
        self._gen = None
        self._session = None
        self._snapshots: dict[str, dict] = {}
        self._ids = itertools.count()

    def _generator(self, model: str):
        if self._gen is None or model != self.model_name:
            from runtime.pipeline import load_generator

            self.model_name = model
            self._gen = load_generator(model, device=self.device, fast=self.fast)
        return self._gen

    def open_session(self, *, image=None, prompt="", seed=0, model=None) -> SessionInfo:
        import io

        from PIL import Image

        from runtime.cli import DEFAULT_IMAGE
        from runtime.pipeline import open_session

        gen = self._generator(model or self.model_name)
        if self._session is not None:
            self.close()
        pil = Image.open(io.BytesIO(image)) if image is not None else Image.open(DEFAULT_IMAGE)
        self._session = open_session(gen, pil, prompt, seed=seed)
        cfg = gen.config
        self.chunk_index = 0
        self.info = SessionInfo(cfg.height, cfg.width, cfg.fps, self.model_name,
                                len(self._session.next_raw_frames()), cfg.chunk_size * cfg.frames_per_latent)
        return self.info

    def step(self, c2w: np.ndarray) -> StepResult:
        if self._session is None:
            raise RuntimeError("no open session")
        t0 = time.perf_counter()
        result = self._session.step(c2w)
        self.chunk_index = self._session.chunk_index
        timings = dict(result.timings, round_trip_ms=1e3 * (time.perf_counter() - t0))
        return StepResult(result.frames, result.chunk_index, result.raw_frames.start, timings)

    def snapshot(self) -> str:
        if self._session is None:
            raise RuntimeError("no open session")
        sid = f"s{next(self._ids)}"
        self._snapshots[sid] = self._session.snapshot()
        while len(self._snapshots) > self.max_snapshots:          # bound the memory snapshots hold
            self._snapshots.pop(next(iter(self._snapshots)))
        return sid

    def restore(self, snapshot_id: str) -> None:
        if snapshot_id not in self._snapshots:
            raise KeyError(f"unknown snapshot {snapshot_id!r}")
        self._session.restore(self._snapshots[snapshot_id])
        self.chunk_index = self._session.chunk_index

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._snapshots.clear()
        self.info = None
