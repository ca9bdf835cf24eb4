"""A streaming world session: the first image, then chunk after chunk of camera poses -> video frames.

Every cache (GDN states, conv contexts, FFN last frames, softmax sink + window K/V, the decoder's causal
cache) is preallocated and carried forward, so the cost and the memory of a chunk stay flat however long
the walk. `snapshot()` / `restore()` rewind to an earlier point and branch from it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from runtime.camera import camera_conditions, chunk_latent_range, chunk_plucker, raw_frames_for_chunk
from runtime.sampler import denoise_chunk


@dataclass
class ChunkResult:
    chunk_index: int
    raw_frames: range
    """Global raw frame indices of `frames` (chunk 0 holds the first image's frame 0)."""
    frames: np.ndarray | None
    """uint8 [F, H, W, 3] decoded frames (None without a decoder)."""
    latents: Tensor
    """[1, C, T, h, w] clean latents of the chunk."""
    timings: dict = field(default_factory=dict)
    """Milliseconds: generate (denoise + cache pass), decode, total."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WorldSession:
    def __init__(self, model, text, *, first_latent: Tensor, intrinsics_latent, seed: int = 0,
                 autoencoder=None, timesteps=None, cuda_graphs: bool = False):
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
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.chunk_index)
        shape = (1, self.cfg.in_channels, T, self.cfg.latent_height, self.cfg.latent_width)
        return torch.randn(shape, generator=gen).to(self.device, self.dtype)

    def _camera_inputs(self, latents: range) -> tuple[Tensor, Tensor]:
        c2w = np.stack(self.poses)
        cond = camera_conditions(c2w, self.intrinsics, list(latents), self.stride)
        plk = chunk_plucker(c2w, self.intrinsics, list(latents), (self.cfg.latent_height, self.cfg.latent_width),
                            self.stride)
        cam = torch.from_numpy(cond)[None].to(self.device)
        plucker = torch.from_numpy(plk)[None].to(self.device, self.dtype)
        return cam, plucker

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
        camera, plucker = self._camera_inputs(latents)
        noise = self._noise(len(latents))
        clean_first = self.first_latent[:, :, 0] if self.chunk_index == 0 else None
        if self.cuda_graphs and self.cache.steady and noise.shape[2] == self.cfg.chunk_size:
            x0 = self._graph_step(noise, camera, plucker)
        else:
            x0 = denoise_chunk(self.model, noise, self.text, camera, plucker, self.cache, self.timesteps,
                               clean_first=clean_first)
        _sync(self.device)
        t1 = time.perf_counter()
        frames = self.decoder.decode(x0) if self.decoder is not None else None
        if isinstance(frames, Tensor):
            frames = frames.cpu().numpy()
        t2 = time.perf_counter()
        result = ChunkResult(self.chunk_index, raw, frames, x0,
                             {"generate_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1),
                              "total_ms": 1e3 * (t2 - t0)})
        self.chunk_index += 1
        return result

    def _graph_step(self, noise: Tensor, camera: Tensor, plucker: Tensor) -> Tensor:
        """The steady-state chunk step through one captured CUDA graph (captured on first use)."""
        T = noise.shape[2]
        if self._graph is None:
            self._static = {"noise": noise.clone(), "camera": camera.clone(), "plucker": plucker.clone(),
                            "positions": torch.zeros(T, dtype=torch.long, device=self.device)}
            st = self._static

            def run():
                return denoise_chunk(self.model, st["noise"], self.text, st["camera"], st["plucker"], self.cache,
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
        st["camera"].copy_(camera)
        st["plucker"].copy_(plucker)
        st["positions"].copy_(torch.arange(self.cache.frames_done, self.cache.frames_done + T))
        self._graph.replay()
        self.cache.replay_bookkeeping(T)
        return self._graph_out.clone()

    # ------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything needed to return to this point of the walk (caches cloned)."""
        return {"cache": self.cache.snapshot(), "chunk_index": self.chunk_index, "poses": list(self.poses),
                "origin_inv": self._origin_inv,
                "decoder": self.decoder.snapshot() if self.decoder is not None else None}

    def restore(self, snap: dict) -> None:
        self.cache.restore(snap["cache"])
        self.chunk_index = snap["chunk_index"]
        self.poses = list(snap["poses"])
        self._origin_inv = snap["origin_inv"]
        if self.decoder is not None:
            self.decoder.restore(snap["decoder"])

    def cache_nbytes(self) -> int:
        return self.cache.nbytes()

    def close(self) -> None:
        """Free the caches (GPU memory) now rather than at garbage collection."""
        if self.closed:
            return
        self.closed = True
        self._graph = None
        self._static = None
        if self.decoder is not None:
            self.decoder.close()
        self.cache = None
        self.text = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
