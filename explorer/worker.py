"""The generation thread and the bounded queue it fills.

The worker owns the world client and the pose integrator. For each chunk it samples the keys of the chunk's
raw frames as late as possible (when it starts generating the chunk; `KeySampler`), integrates them into
poses, calls `client.step`, and pushes the decoded frames into a `FrameQueue`. The queue is bounded in
frames: when it is full the worker waits (backpressure). In paced (interactive) mode the worker also waits
to *start* a chunk until the frames still queued barely cover the expected generation time, so a key press
reaches the screen after about one chunk of generation rather than after a long buffer.

Only the UI thread touches pygame / OpenGL; the worker only talks to the client and the queue.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from runtime.camera import PoseIntegrator

from .client import SessionInfo, WorldClient
from .keys import KeySampler

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_CHUNKS = 4
"""A rewind point every 4 chunks (6 s of video at 16 fps with 24-frame chunks)."""
REWIND_MIN_SHOWN_S = 1.0
"""Backspace goes to the latest snapshot shown for at least this long, else to the one before."""
PACE_MARGIN = 1.25
"""Paced mode starts a chunk once the queued video is shorter than 1.25x the expected chunk time..."""
PACE_SLACK_S = 0.15
"""...plus this slack."""


# ---- queue items ------------------------------------------------------------------------------------------
@dataclass
class ChunkRecord:
    """What determined one generated chunk (for the walk log / sidecar)."""

    epoch: int
    index: int
    raw_start: int
    poses: np.ndarray
    """[n, 4, 4] c2w of every raw frame of the chunk (also those past a scripted end)."""
    keys: list[frozenset[str]]
    """DSL keys per raw frame (frame 0 of the walk: none)."""
    speed: float
    """Speed multiplier the chunk was integrated with."""
    timings: dict
    """Milliseconds from the client, plus `wall_ms` (step call to frames in hand)."""


@dataclass
class Frame:
    epoch: int
    raw: int
    """Global raw frame index in the session (0 = the first image)."""
    image: np.ndarray
    """uint8 [H, W, 3]."""
    pose: np.ndarray
    """[4, 4] c2w of this frame."""
    keys: frozenset[str]
    presses: tuple[float, ...] = ()
    """Press times first sampled into this frame (key-to-photon latency starts there)."""
    chunk: ChunkRecord | None = None
    """Set on the first frame of each chunk."""


@dataclass
class SessionStarted:
    epoch: int
    info: SessionInfo
    seed: int
    reason: str = "open"
    """"open" (the first), "new_seed" (N), or "rewind" (Backspace before the first rewind point)."""


@dataclass
class Seek:
    """The walk was rewound to a snapshot: frames after `raw` are gone; `image` / `pose` are frame `raw`."""

    epoch: int
    raw: int
    image: np.ndarray
    pose: np.ndarray


@dataclass
class End:
    """A scripted walk is complete: every frame of the script has been queued."""

    epoch: int


@dataclass
class Failed:
    error: str


class FrameQueue:
    """FIFO of frames and control items, bounded in frames (control items never wait)."""

    def __init__(self, capacity: int = 49):
        self.capacity = capacity
        self._items: collections.deque = collections.deque()
        self._frames = 0
        self._cond = threading.Condition()

    def put_frame(self, frame: Frame, abort: threading.Event) -> bool:
        """Append a frame, waiting while the queue holds `capacity` frames; False if `abort` got set."""
        with self._cond:
            while self._frames >= self.capacity:
                if abort.is_set():
                    return False
                self._cond.wait(0.05)
            if abort.is_set():
                return False
            self._items.append(frame)
            self._frames += 1
            self._cond.notify_all()
            return True

    def put_control(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def get_nowait(self):
        """Next item or None (never blocks: the render loop calls it)."""
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            if isinstance(item, Frame):
                self._frames -= 1
            self._cond.notify_all()
            return item

    def peek_is_frame(self) -> bool:
        with self._cond:
            return bool(self._items) and isinstance(self._items[0], Frame)

    def drain_frames(self) -> int:
        """Drop every queued frame (a rewind / new session made them stale); returns how many."""
        with self._cond:
            kept = collections.deque(item for item in self._items if not isinstance(item, Frame))
            dropped = self._frames
            self._items, self._frames = kept, 0
            self._cond.notify_all()
            return dropped

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        """Frames queued."""
        with self._cond:
            return self._frames


@dataclass
class _Snap:
    sid: str
    chunk: int
    raw: int
    """First raw frame generated after restoring this snapshot."""
    integrator: dict
    speed: float
    anchor: tuple[np.ndarray, np.ndarray] | None
    """(image, pose) of raw frame raw - 1 (shown while the next chunk generates)."""


@dataclass
class WorkerStats:
    gen_fps: float | None = None
    """Raw frames generated per second (EMA over chunks; client.step wall time)."""
    chunk_ms: float | None = None
    """Wall time of the last client.step (chunk latency)."""
    chunks: int = 0
    loading: bool = True
    generating: bool = False
    error: str | None = None


class GenerationWorker:
    """Runs `client.step` chunk after chunk on its own thread and fills `queue`.

    Args:
        client: a `WorldClient` (local or remote); the worker opens and closes its session.
        sampler: per-raw-frame keys (`KeySampler`).
        image, prompt, seed: the session's start (encoded image bytes or None for the default image).
        paced: wait to start a chunk until the queued video runs low (interactive); False generates as
            fast as the queue allows (headless).
        snapshot_every: chunks between automatic snapshots (rewind points).
        integrator_kwargs: `PoseIntegrator` arguments (scheme, speeds); the speed presets multiply them.
        queue_chunks: queue capacity in chunks.
    """

    def __init__(self, client: WorldClient, sampler: KeySampler, *, image: bytes | None = None, prompt: str = "",
                 seed: int = 0, paced: bool = True, snapshot_every: int = SNAPSHOT_EVERY_CHUNKS,
                 integrator_kwargs: dict | None = None, queue_chunks: int = 2):
        self.client = client
        self.sampler = sampler
        self.image, self.prompt, self.seed = image, prompt, seed
        self.paced = paced
        self.snapshot_every = max(1, int(snapshot_every))
        self.integrator_kwargs = dict(integrator_kwargs or {})
        self.queue_chunks = queue_chunks
        self.queue = FrameQueue()
        self.stats = WorkerStats()
        self.epoch = 0
        self.info: SessionInfo | None = None
        self.speed = 1.0
        self.paused = False
        self._stop = threading.Event()
        self._interrupt = threading.Event()     # a command arrived: abandon a blocked put
        self._commands: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sana-wm-generation", daemon=True)
        self._base = PoseIntegrator(**self.integrator_kwargs)
        self._integ = PoseIntegrator(**self.integrator_kwargs)
        self._integ_speed = 1.0
        self._raw = 0
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._snaps: list[_Snap] = []
        self._ended = False

    # ---- UI-thread API ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Ask the thread to finish (after the step in flight) and wait up to `timeout`; True if it ended."""
        self._stop.set()
        self._interrupt.set()
        self.sampler.cancel()
        self.queue.wake()
        self._notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def rewind(self, shown_raw: int) -> None:
        """Go back to the latest snapshot shown for a while (`REWIND_MIN_SHOWN_S`) before `shown_raw`."""
        self._command(("rewind", shown_raw))

    def new_seed(self, seed: int | None = None) -> None:
        """Restart the session from the first image with another seed (default: seed + 1)."""
        self._command(("new_seed", seed))

    def set_speed(self, multiplier: float) -> None:
        """Speed multiplier for the chunks generated from now on."""
        self.speed = float(multiplier)

    def set_paused(self, paused: bool) -> None:
        self.paused = bool(paused)
        self._notify()

    def _command(self, cmd) -> None:
        self._commands.append(cmd)
        self._interrupt.set()
        self._notify()

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # ---- thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._open(self.seed)
            while not self._stop.is_set():
                if self._commands:
                    self._handle(self._commands.popleft())
                    continue
                self._interrupt.clear()
                if self._ended or self.paused or not self._due():
                    with self._wake:
                        self._wake.wait(0.02)
                    continue
                self._generate_chunk()
        except Exception as exc:     # surfaced in the HUD / exit code, not lost in a thread
            log.exception("generation failed")
            self.stats.error = f"{type(exc).__name__}: {exc}"
            self.queue.put_control(Failed(self.stats.error))
        finally:
            self.stats.generating = False

    def _open(self, seed: int, reason: str = "open") -> None:
        self.stats.loading = True
        self.seed = seed
        self.info = self.client.open_session(image=self.image, prompt=self.prompt, seed=seed)
        self.queue.capacity = self.queue_chunks * self.info.chunk_frames + 1
        self._integ = PoseIntegrator(**self.integrator_kwargs)
        self._integ_speed = 1.0
        self._raw, self._last, self._snaps, self._ended = 0, None, [], False
        self.stats.loading = False
        self.queue.put_control(SessionStarted(self.epoch, self.info, seed, reason))

    def _handle(self, cmd) -> None:
        kind, arg = cmd
        self.epoch += 1
        self.queue.drain_frames()
        if kind == "new_seed":
            self._open(self.seed + 1 if arg is None else int(arg), reason="new_seed")
            return
        # rewind
        assert kind == "rewind"
        min_gap = REWIND_MIN_SHOWN_S * (self.info.fps if self.info else 16)
        target = None
        for snap in reversed(self._snaps):
            if snap.raw + min_gap <= arg:
                target = snap
                break
        while target is not None:
            try:
                self.client.restore(target.sid)
                break
            except KeyError:                     # the client evicted it: try an older one
                self._snaps.remove(target)
                target = next((s for s in reversed(self._snaps) if s.raw <= target.raw), None)
        if target is None:                        # no rewind point yet: back to the first image
            self._open(self.seed, reason="rewind")
            return
        self._snaps = [s for s in self._snaps if s.raw <= target.raw]
        self._integ = PoseIntegrator.from_state(target.integrator)
        self._integ_speed = target.speed
        self._raw, self._last, self._ended = target.raw, target.anchor, False
        image, pose = target.anchor
        self.queue.put_control(Seek(self.epoch, target.raw - 1, image, pose))

    def _due(self) -> bool:
        """Paced mode: start the next chunk only when the queued video runs low."""
        if not self.paced or self.stats.gen_fps is None or self.info is None:
            return len(self.queue) < self.queue.capacity
        chunk_s = self.info.chunk_frames / max(self.stats.gen_fps, 1e-6)
        queued_s = len(self.queue) / self.info.fps
        return queued_s <= chunk_s * PACE_MARGIN + PACE_SLACK_S

    def _integrator(self) -> PoseIntegrator:
        if self.speed != self._integ_speed:
            state = self._integ.state()
            state["params"]["translation_speed"] = self._base.translation_speed * self.speed
            state["params"]["rotation_speed_deg"] = self._base.rotation_speed_deg * self.speed
            self._integ = PoseIntegrator.from_state(state)
            self._integ_speed = self.speed
        return self._integ

    def _generate_chunk(self) -> None:
        client = self.client
        chunk = client.chunk_index
        if chunk > 0 and chunk % self.snapshot_every == 0 and not any(s.chunk == chunk for s in self._snaps):
            self._snaps.append(_Snap(client.snapshot(), chunk, self._raw, self._integ.state(),
                                     self._integ_speed, self._last))
            self._snaps = self._snaps[-8:]
        n = client.frames_needed()
        integ = self._integrator()
        start, speed = self._raw, self._integ_speed
        poses = np.empty((n, 4, 4))
        keys: list[frozenset[str]] = []
        presses: list[tuple[float, ...]] = []
        end_raw = None
        for j in range(n):
            raw = start + j
            if raw == 0:
                poses[j], k, p = integ.pose, frozenset(), ()
            elif end_raw is not None:
                poses[j], k, p = poses[j - 1], frozenset(), ()
            else:
                sample = self.sampler.sample(raw)
                if sample is None:                # cancelled: the app is stopping
                    return
                if sample.end:
                    end_raw = raw
                    # Past a script's end the pose is held, as `sana-wm render` pads a short path.
                    poses[j], k, p = (poses[j - 1] if j else integ.pose), frozenset(), ()
                else:
                    poses[j], k, p = integ.step(sample.keys), sample.keys, sample.presses
            keys.append(k)
            presses.append(p)
        if end_raw == start:
            self._ended = True
            self.queue.put_control(End(self.epoch))
            return
        self.stats.generating = True
        t0 = time.perf_counter()
        result = client.step(poses)
        t1 = time.perf_counter()
        self.stats.generating = False
        frames = np.asarray(result.frames)
        if frames.shape[0] != n:
            raise RuntimeError(f"client returned {frames.shape[0]} frames for a {n}-frame chunk")
        if result.raw_start != start:
            raise RuntimeError(f"client chunk starts at raw frame {result.raw_start}, expected {start}")
        fps_now = n / max(t1 - t0, 1e-6)
        self.stats.gen_fps = fps_now if self.stats.gen_fps is None else 0.6 * fps_now + 0.4 * self.stats.gen_fps
        self.stats.chunk_ms = 1e3 * (t1 - t0)
        self.stats.chunks += 1
        self._raw = start + n
        self._last = (frames[-1], poses[-1].copy())
        record = ChunkRecord(self.epoch, result.chunk_index, start, poses.copy(), keys, speed,
                             dict(result.timings, wall_ms=1e3 * (t1 - t0)))
        epoch = self.epoch
        for j in range(n):
            raw = start + j
            if end_raw is not None and raw >= end_raw:
                break
            item = Frame(epoch, raw, frames[j], poses[j].copy(), keys[j], presses[j], record if j == 0 else None)
            if not self.queue.put_frame(item, self._interrupt):
                return                            # a command or stop: the rest of the chunk is stale
        if end_raw is not None:
            self._ended = True
            self.queue.put_control(End(epoch))
