"""A streaming world session: the first image, then chunk after chunk of camera poses -> video frames.

Every cache (GDN states, conv contexts, FFN last frames, softmax sink + window K/V, the decoder's causal
cache) is preallocated and carried forward, so the cost and the memory of a chunk stay flat however long
the walk. `snapshot()` / `restore()` rewind to an earlier point and branch from it.

Overlapped decode (`overlap_decode=True`, CUDA only): `step()` queues the chunk's decode on a side CUDA stream
and returns once the generation is done; the decode of chunk N then runs while chunk N+1 generates, and
`result.frames` waits for it. Decodes run in order on the one side stream, which owns the decoder's caches.
"""
from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from runtime.camera import camera_conditions, chunk_latent_range, chunk_plucker, raw_frames_for_chunk
from runtime.camera_torch import camera_conditions_torch, chunk_plucker_torch
from runtime.sampler import denoise_chunk


class PendingFrames(Protocol):
    """Frames still being made: `wait()` blocks until they are in host memory and returns them."""

    timings: dict
    """Filled by `wait()`: the timings only known once the decode is done (decode_ms, total_ms)."""

    def wait(self) -> np.ndarray | None: ...

    def ready(self) -> bool: ...


def _replay_timings(replay: tuple | None, t0: float) -> dict:
    """host_ms (step start -> graph replay: host work the GPU waits for) and graph_gpu_ms (the replay's GPU time)
    of a graph-replayed step, read once its stream is done; {} for a step without the graph."""
    if replay is None:
        return {}
    t_replay, start, end = replay
    return {"host_ms": 1e3 * (t_replay - t0), "graph_gpu_ms": start.elapsed_time(end)}


class ChunkResult:
    """One generated chunk.

    Attributes:
        chunk_index: the chunk's index in the walk.
        raw_frames: global raw frame indices of `frames` (chunk 0 holds the first image's frame 0).
        latents: [1, C, T, h, w] clean latents of the chunk.
        timings: milliseconds: generate_ms (denoise + cache pass), decode_ms, total_ms. With an overlapped
            decode only generate_ms is there at first (host time until the generating stream is done; it also
            covers queueing the decode, which normally hides behind the generation); decode_ms (the decode's
            GPU time on the side stream, sharing the GPU with the next generation) and total_ms (generate_ms
            plus latents ready -> frames in host memory) are added when the frames are resolved (`frames` or
            `wait()`). A step replayed from the CUDA graph adds host_ms (host work before the replay, which the
            GPU waits for) and graph_gpu_ms (the replay's GPU time).
    """

    def __init__(self, chunk_index: int, raw_frames: range, frames: np.ndarray | PendingFrames | None,
                 latents: Tensor, timings: dict | None = None) -> None:
        self.chunk_index = chunk_index
        self.raw_frames = raw_frames
        self._frames = frames
        self.latents = latents
        self.timings = {} if timings is None else timings

    @property
    def frames(self) -> np.ndarray | None:
        """uint8 [F, H, W, 3] decoded frames (None without a decoder); waits for a pending decode once."""
        pending = self._frames
        if pending is not None and not isinstance(pending, np.ndarray):
            frames = pending.wait()
            self.timings.update(pending.timings)
            self._frames = frames
        return self._frames

    @frames.setter
    def frames(self, value: np.ndarray | None) -> None:
        self._frames = value

    def wait(self) -> np.ndarray | None:
        """Block until the frames are in host memory; returns them (same as reading `frames`)."""
        return self.frames

    @property
    def ready(self) -> bool:
        """Whether `frames` can be read without waiting."""
        pending = self._frames
        return pending is None or isinstance(pending, np.ndarray) or pending.ready()

    def __repr__(self) -> str:
        state = "ready" if self.ready else "decoding"
        return (f"ChunkResult(chunk_index={self.chunk_index}, raw_frames={self.raw_frames}, frames: {state}, "
                f"latents={tuple(self.latents.shape)}, timings={self.timings})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sync_current_stream(device: torch.device) -> None:
    """Wait for the current stream only: not for a side stream's decode."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _to_numpy(frames) -> np.ndarray | None:
    return frames.numpy() if isinstance(frames, Tensor) else frames


class _CudaPendingFrames:
    """A chunk's decode queued on the side stream; its frames land in page-locked host memory."""

    def __init__(self, host, ready: torch.cuda.Event, start: torch.cuda.Event, done: torch.cuda.Event,
                 chunk_timings: dict) -> None:
        self._host, self._ready, self._start, self._done = host, ready, start, done
        self._chunk_timings = chunk_timings   # the result's timings, where step() puts generate_ms
        self._frames = None
        self._resolved = False
        self.timings: dict = {}

    def ready(self) -> bool:
        return self._resolved or self._done.query()

    def wait(self) -> np.ndarray | None:
        if not self._resolved:
            self._done.synchronize()
            # Only now is the asynchronous copy into `host` complete: no numpy view of it before this point.
            self._frames = _to_numpy(self._host)
            self._host = None
            # decode_ms: the decode's own time on the side stream (sharing the GPU with the next chunk's
            # generation); total_ms: generate_ms plus latents-ready -> frames-in-host-memory (GPU clock).
            generate_ms = self._chunk_timings.get("generate_ms", 0.0)
            self.timings = {"decode_ms": self._start.elapsed_time(self._done),
                            "total_ms": generate_ms + self._ready.elapsed_time(self._done)}
            self._resolved = True
        return self._frames


class _SideStreamDecode:
    """The session's side CUDA stream: decodes chunk N while chunk N+1 generates on the current stream.

    Every decoder call (decode, snapshot, restore, close) runs on this one stream, so decodes stay in order
    and the decoder's caches are only ever allocated and used on it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def launch(self, decoder, x0: Tensor, chunk_timings: dict) -> _CudaPendingFrames:
        """Queue the decode of x0 (made on the current stream) and return without waiting for it."""
        main = torch.cuda.current_stream(self.device)
        ready = torch.cuda.Event(enable_timing=True)
        ready.record(main)
        self.stream.wait_event(ready)
        # x0 was allocated on the generating stream: without this, once the caller drops it the allocator
        # could hand its memory to the next chunk's generation while the decode still reads it.
        x0.record_stream(self.stream)
        start = torch.cuda.Event(enable_timing=True)
        done = torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream), torch.no_grad():
            start.record(self.stream)
            frames = decoder.decode_device(x0)
            host = frames
            if isinstance(frames, Tensor) and frames.is_cuda:
                host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
                # Queued on the side stream; the host allocator records an event so the block is not reused
                # before the copy ends, and `frames` (allocated on this stream) is freed in stream order.
                host.copy_(frames, non_blocking=True)
            done.record(self.stream)
        return _CudaPendingFrames(host, ready, start, done, chunk_timings)

    def call(self, fn, *args):
        """fn(*args) on the side stream after the queued decodes; returns with the side stream idle."""
        self.stream.synchronize()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))   # inputs made on the current stream
        with torch.cuda.stream(self.stream):
            out = fn(*args)
        # Snapshots cloned here may be restored on another stream (or another session): finish them now.
        self.stream.synchronize()
        return out


class WorldSession:
    def __init__(self, model, text, *, first_latent: Tensor, intrinsics_latent, seed: int = 0,
                 autoencoder=None, timesteps=None, cuda_graphs: bool = False, overlap_decode: bool = False):
        """
        Args:
            model: a SanaWorldModel.
            text: a TextContext (model.prepare_text) for the prompt.
            first_latent: [1, C, 1, h, w] normalised latent of the first image.
            intrinsics_latent: (fx, fy, cx, cy) in latent pixels, [4] or per raw frame [F, 4].
            seed: noise seed; chunk k's noise depends only on (seed, k), so a rewound walk replays exactly.
            autoencoder: a VideoAutoencoder to decode frames (None: latents only).
            timesteps: denoising timesteps (default: the config's).
            cuda_graphs: once the caches reach their steady shape (sink and window full), capture the whole
                chunk step (every denoising pass and the cache pass) in one CUDA graph and replay it.
            overlap_decode: on CUDA, decode each chunk on a side stream while the next one generates: `step`
                returns when the generation is done and `result.frames` waits for the decode (see
                `ChunkResult.timings`). Ignored on the CPU (the decode stays synchronous).
        """
        self.model = model
        self.cfg = model.cfg
        self.text = text
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.first_latent = first_latent.to(self.device, self.dtype)
        self.intrinsics = np.asarray(intrinsics_latent, dtype=np.float64)
        self.seed = int(seed)
        self.timesteps = tuple(timesteps or self.cfg.denoising_timesteps)
        self.cache = model.new_cache(batch=1)
        self.autoencoder = autoencoder
        self.decoder = autoencoder.open_stream() if autoencoder is not None else None
        self.chunk_index = 0
        self.poses: list[np.ndarray] = []   # raw-frame c2w so far, relative to raw frame 0
        self._origin_inv: np.ndarray | None = None
        self.closed = False
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graph = None
        self._next_noise: tuple[tuple[int, int], Tensor] | None = None
        self.overlap_decode = bool(overlap_decode) and self.device.type == "cuda" and self.decoder is not None
        self._side = _SideStreamDecode(self.device) if self.overlap_decode else None

    # ------------------------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.cfg.frames_per_latent

    def next_raw_frames(self) -> range:
        """Raw frame indices the next `step` generates (25 for the first chunk, then 24)."""
        return raw_frames_for_chunk(self.chunk_index, self.cfg.first_chunk_size, self.cfg.chunk_size, self.stride)

    def next_poses(self, c2w: np.ndarray) -> np.ndarray:
        """The poses of a whole walk [N, 4, 4] that the next `step` needs; past its end the last pose holds."""
        raw = self.next_raw_frames()
        return np.asarray(c2w)[np.minimum(np.arange(raw.start, raw.stop), len(c2w) - 1)]

    def _latent_range(self) -> range:
        return chunk_latent_range(self.chunk_index, self.cfg.first_chunk_size, self.cfg.chunk_size)

    def _noise(self, T: int) -> Tensor:
        key = (self.chunk_index, T)
        if self._next_noise is not None and self._next_noise[0] == key:
            return self._next_noise[1]
        return self._make_noise(*key)

    def _make_noise(self, chunk_index: int, T: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk_index)
        shape = (1, self.cfg.in_channels, T, self.cfg.latent_height, self.cfg.latent_width)
        noise = torch.randn(shape, generator=gen)
        if self.device.type == "cuda":
            return noise.pin_memory().to(self.device, self.dtype, non_blocking=True)
        return noise.to(self.device, self.dtype)

    def _prefetch_noise(self) -> None:
        """On CUDA, draw the next chunk's noise while this chunk generates (the same numbers, from the same CPU
        generator): the host's few milliseconds of randn no longer sit in front of the next chunk's kernels.
        A rewind (`restore`) simply misses it and draws again."""
        if self.device.type == "cuda":
            key = (self.chunk_index + 1, self.cfg.chunk_size)
            self._next_noise = (key, self._make_noise(*key))

    def _camera_inputs(self, latents: range) -> tuple[Tensor, Tensor]:
        c2w = np.stack(self.poses)
        cond = camera_conditions(c2w, self.intrinsics, list(latents), self.stride)
        cam = torch.from_numpy(cond)[None].to(self.device)
        hw = (self.cfg.latent_height, self.cfg.latent_width)
        if self.device.type == "cuda":
            # The ray maps on the GPU (float32 math, tested against the numpy float64 reference): the numpy
            # version costs milliseconds of host time per chunk (graph-replayed chunks build them in the graph).
            plk = chunk_plucker_torch(torch.from_numpy(c2w).to(self.device), torch.from_numpy(
                np.asarray(self.intrinsics, dtype=np.float64)).to(self.device), list(latents), hw, self.stride)
            return cam, plk[None].to(self.dtype)
        plk = chunk_plucker(c2w, self.intrinsics, list(latents), hw, self.stride)
        return cam, torch.from_numpy(plk)[None].to(self.device, self.dtype)

    def _pose_window(self, latents: range) -> np.ndarray:
        """[stride * T + 1, 20] float32: c2w (row-major) and latent intrinsics of the raw frames that the camera
        inputs of latent frames `latents` (k >= 1) read, from the raw frame before the first one on; in it the
        chunk's latent frames are frames 1..T (see `_window_camera`)."""
        start = self.stride * (latents[0] - 1)
        stop = start + self.stride * len(latents) + 1
        if latents[0] < 1 or stop > len(self.poses):
            raise ValueError(f"no pose window for latent frames {list(latents)} over {len(self.poses)} poses")
        window = np.empty((stop - start, 20), dtype=np.float32)
        window[:, :16] = np.stack(self.poses[start:stop]).reshape(-1, 16)
        window[:, 16:] = self.intrinsics if self.intrinsics.ndim == 1 else self.intrinsics[start:stop]
        return window

    def _window_camera(self, window: Tensor, latents_in_window: Tensor) -> tuple[Tensor, Tensor]:
        """The chunk's camera inputs (UCPE conditions [1, T, 20] float32, Plucker maps [1, 6 * stride, T, h, w])
        from its pose window (`_pose_window`, on the device) without a host synchronisation: it runs inside the
        captured graph. The same values as `_camera_inputs` from every pose (the same float32 math)."""
        c2w, intr = window[:, :16].reshape(-1, 4, 4), window[:, 16:]
        hw = (self.cfg.latent_height, self.cfg.latent_width)
        camera = camera_conditions_torch(c2w, intr, latents_in_window, self.stride)
        plucker = chunk_plucker_torch(c2w, intr, latents_in_window, hw, self.stride)
        return camera[None], plucker[None].to(self.dtype)

    def step(self, c2w: np.ndarray) -> ChunkResult:
        """Generate the next chunk.

        Args:
            c2w: [n, 4, 4] camera-to-world poses (OpenCV axes) of the chunk's raw frames, n =
                len(next_raw_frames()); the walk is made relative to the first pose of the first chunk.
        """
        if self.closed:
            raise RuntimeError("the session is closed")
        raw = self.next_raw_frames()
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.shape != (len(raw), 4, 4):
            raise ValueError(f"chunk {self.chunk_index} needs poses for {len(raw)} raw frames "
                             f"[{len(raw)}, 4, 4]; got {list(c2w.shape)}")
        if not np.isfinite(c2w).all():
            raise ValueError("camera poses contain NaN or Inf")
        if self._origin_inv is None:
            self._origin_inv = np.linalg.inv(c2w[0])
        self.poses.extend(self._origin_inv @ c2w)
        latents = self._latent_range()
        t0 = time.perf_counter()
        clean_first = self.first_latent[:, :, 0] if self.chunk_index == 0 else None
        replay = None   # (host clock at the replay, start / end events around it) when the graph runs
        # (never the first chunk: it keeps the image's frame clean, and its window would start before frame 0)
        if self.cuda_graphs and self.cache.steady and latents[0] >= 1 and len(latents) == self.cfg.chunk_size:
            # The camera inputs are built inside the graph from the chunk's pose window: their ~30 small
            # kernels and the host work around them no longer sit in front of every replay (round 42: 2.4 ms).
            x0, replay = self._graph_step(self._noise(len(latents)), self._pose_window(latents))
        else:
            camera, plucker = self._camera_inputs(latents)
            x0 = denoise_chunk(self.model, self._noise(len(latents)), self.text, camera, plucker, self.cache,
                               self.timesteps, clean_first=clean_first)
        self._prefetch_noise()   # the GPU is busy with this chunk now
        if self._side is not None:   # only made with a decoder
            # Queue the decode first (it starts on the GPU when x0 is ready), so its kernel launches overlap
            # this chunk's generation; then wait for the generating stream only, never the side stream.
            timings: dict = {}
            pending = self._side.launch(self.decoder, x0, timings)
            _sync_current_stream(self.device)
            timings["generate_ms"] = 1e3 * (time.perf_counter() - t0)
            timings.update(_replay_timings(replay, t0))
            result = ChunkResult(self.chunk_index, raw, pending, x0, timings)
            self.chunk_index += 1
            return result
        _sync(self.device)
        t1 = time.perf_counter()
        frames = self.decoder.decode(x0) if self.decoder is not None else None
        if isinstance(frames, Tensor):
            frames = frames.cpu().numpy()
        t2 = time.perf_counter()
        result = ChunkResult(self.chunk_index, raw, frames, x0,
                             {"generate_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1),
                              "total_ms": 1e3 * (t2 - t0), **_replay_timings(replay, t0)})
        self.chunk_index += 1
        return result

    def _graph_step(self, noise: Tensor, window: np.ndarray) -> tuple[Tensor, tuple]:
        """The steady-state chunk step through one captured CUDA graph (captured on first use), camera inputs
        included: its inputs are the noise, the pose window (`_pose_window`) and the latent positions.

        Returns the clean latents and (host clock at the replay, CUDA events recorded around it): the step's
        time splits into host work in front of the replay and the graph's own GPU time."""
        T = noise.shape[2]
        if self._graph is None:
            self._static = {"noise": noise.clone(), "window": torch.from_numpy(window).to(self.device),
                            "window_host": torch.empty(window.shape, dtype=torch.float32, pin_memory=True),
                            "positions": torch.zeros(T, dtype=torch.long, device=self.device),
                            "latents_in_window": torch.arange(1, T + 1, device=self.device)}
            st = self._static

            def run():
                camera, plucker = self._window_camera(st["window"], st["latents_in_window"])
                return denoise_chunk(self.model, st["noise"], self.text, camera, plucker, self.cache,
                                     self.timesteps, positions=st["positions"])

            st["positions"].copy_(torch.arange(self.cache.frames_done, self.cache.frames_done + T))
            before = self.cache.snapshot()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):          # warm-up off the capture stream (allocator, library handles)
                run()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.cache.restore(before)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_out = run()
            self.cache.restore(before)             # capture ran no kernels but did the Python bookkeeping
            self._graph = graph
        st = self._static
        st["noise"].copy_(noise)
        # The pinned staging buffer is free again: the previous step waited for its stream.
        st["window_host"].numpy()[:] = window
        st["window"].copy_(st["window_host"], non_blocking=True)
        st["positions"].copy_(torch.arange(self.cache.frames_done, self.cache.frames_done + T))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t_replay = time.perf_counter()
        start.record()
        self._graph.replay()
        end.record()
        self.cache.commit_chunk(T)
        return self._graph_out.clone(), (t_replay, start, end)

    # ------------------------------------------------------------------------------------------------
    def _decoder_call(self, fn, *args):
        """A decoder call outside `step`: with an overlapped decode, on the side stream after the queued decodes."""
        if self._side is None:
            return fn(*args)
        return self._side.call(fn, *args)

    def snapshot(self) -> dict:
        """Everything needed to return to this point of the walk (caches cloned).

        With an overlapped decode this first waits for the queued decodes (the decoder's caches are theirs)."""
        return {"cache": self.cache.snapshot(), "chunk_index": self.chunk_index, "poses": list(self.poses),
                "origin_inv": self._origin_inv,
                "decoder": self._decoder_call(self.decoder.snapshot) if self.decoder is not None else None}

    def restore(self, snap: dict) -> None:
        """Rewind to `snap`; results of chunks already stepped stay valid (their decodes finish first)."""
        self.cache.restore(snap["cache"])
        self.chunk_index = snap["chunk_index"]
        self.poses = list(snap["poses"])
        self._origin_inv = snap["origin_inv"]
        if self.decoder is not None:
            self._decoder_call(self.decoder.restore, snap["decoder"])

    def cache_nbytes(self) -> int:
        return self.cache.nbytes()

    def close(self) -> None:
        """Free the caches (GPU memory) now rather than at garbage collection."""
        if self.closed:
            return
        self.closed = True
        self._graph = None
        self._static = None
        self._next_noise = None
        if self.decoder is not None:
            self._decoder_call(self.decoder.close)   # waits for the queued decodes: their frames stay readable
        self._side = None
        self.cache = None
        self.text = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
