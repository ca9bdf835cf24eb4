"""`sana-wm render --refine`: stage 1 (the session) -> LTX-2 refiner -> LTX-2 decoder, written to the MP4.

Autoregressive mode (`--refiner-block-size N`, default 3): a three-stage pipeline (`schedule.PipelineScheduler`)
over the stage-1 chunks; on CUDA each stage has its own stream and the refiner works one chunk behind stage 1,
the decoder one behind the refiner. With the default sizes the pipeline is 1:1: chunk 0 = the image frame (the
sink) + 3 frames = refiner block 0, every later chunk = one block; the decoder decodes sink + block 0 first and
drops the sink's pixel frame. Single-shot mode (`--refiner-block-size 0`): stage 1 runs to the end, the whole
clip is refined at once (sink-bidirectional), then decoded chunk by chunk.

Either way the first decoded frame (the input image, which the refiner does not touch) is dropped, as the
official pipeline does: a render of 8k + 1 frames writes 8k.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.config import ModelConfig, load_config
from runtime.refiner.refine import BlockRefiner, RefineSettings, refine_clip
from runtime.refiner.schedule import PipelineScheduler, Stage

log = logging.getLogger(__name__)

LTX2_VAES = ("ltx2", "ltx2-causal")


class RefinerError(ValueError):
    """The refiner cannot run on this model / with these options (one line, exit code 2)."""


def model_config(model: str) -> ModelConfig:
    """The config of a model name as `runtime.pipeline.load_generator` reads it, without loading weights."""
    if model == "tiny-world":
        return load_config("tiny-world")
    path = Path(model)
    if path.is_dir():
        return load_config(path / "config.yaml")
    if path.is_file() and path.suffix.lower() not in (".yaml", ".yml"):
        return load_config(path.parent / "config.yaml")
    return load_config(model)


def check_refinable(cfg: ModelConfig) -> None:
    """The refiner works on LTX-2 latents (128 channels, 8 x 32 x 32) only."""
    if cfg.vae not in LTX2_VAES or cfg.in_channels != 128 or tuple(cfg.vae_stride) != (8, 32, 32):
        raise RefinerError(f"--refine needs a model whose latents are LTX-2 latents (sana-wm-streaming, "
                           f"sana-wm-bidirectional); {cfg.name} uses the {cfg.vae!r} autoencoder "
                           f"({cfg.in_channels} latent channels)")


@dataclass(frozen=True)
class RefineOptions:
    root: str | None = None
    """Refiner root (`transformer/`, `connectors/`); None: the official one of the model's preset."""
    gemma_root: str | None = None
    """Gemma-3 text encoder folder; None: next to the root (see `resolve_refiner_weights`)."""
    block_size: int = 3
    """Latent frames per autoregressive block; 0 = single-shot sink-bidirectional over the whole clip."""
    kv_max_frames: int = 11
    seed: int = 42
    offload: str = "none"
    precision: str = "bf16"

    def settings(self, fps: float) -> RefineSettings:
        return RefineSettings(block_size=self.block_size or None, kv_max_frames=self.kv_max_frames,
                              seed=self.seed, fps=float(fps))

    def describe(self) -> dict:
        """What a sidecar records (a replay with --refine reuses the block size, window and seed)."""
        return {"block_size": self.block_size, "kv_max_frames": self.kv_max_frames, "seed": self.seed,
                "precision": self.precision, "first_frame_dropped": True}


def resolve_folders(cfg: ModelConfig, opts: RefineOptions, allow_download: bool | None = None) -> dict:
    """The refiner's local folders; MissingWeightsError names every missing one."""
    from runtime.weights import REFINER_WEIGHTS, resolve_refiner_weights

    root, gemma = opts.root, opts.gemma_root
    if root is None:
        if cfg.name not in REFINER_WEIGHTS:
            raise RefinerError(f"no official refiner is known for config {cfg.name!r}: pass --refiner-root")
        root, default_gemma = REFINER_WEIGHTS[cfg.name]
        gemma = gemma or default_gemma
    return resolve_refiner_weights(root, gemma, allow_download=allow_download)


@dataclass
class RefineJob:
    """A loaded refiner with its prompt and settings, ready for `render`."""

    refiner: object
    text: object
    options: RefineOptions

    def render(self, session, c2w: np.ndarray, num_frames: int, writer, sidecar: dict, side: Path, bar) -> int:
        """Fill `writer` with the refined walk (num_frames - 1 frames); keeps the sidecar current. Returns the
        number of frames written."""
        from runtime.render import write_json_atomic

        sidecar["refiner"] = self.options.describe()
        written = 0

        def on_chunk(k: int, frames: np.ndarray | None, generate_ms: float) -> None:
            nonlocal written
            n = 0 if frames is None else len(frames)
            if n:
                writer.write(frames)
            written += n
            sidecar["chunks"].append({"index": k, "frames": n, "generate_ms": round(generate_ms, 2)})
            sidecar["frames_written"] = written
            write_json_atomic(side, sidecar)
            bar.update(n)

        try:
            stats = refine_walk(session, c2w, num_frames, self.refiner, self.text,
                                self.options.settings(session.cfg.fps), on_chunk)
        finally:
            self.refiner.release()     # offload "model": the transformer goes back to CPU memory
        if stats is not None:
            sidecar["refiner"]["pipeline"] = stats.summary()
        return written


def load_job(cfg: ModelConfig, folders: dict, opts: RefineOptions, prompt: str, *, device) -> RefineJob:
    from runtime.refiner.model import LTX2Refiner

    refiner = LTX2Refiner.from_pretrained(folders, device=device, offload=opts.offload, precision=opts.precision)
    text = refiner.encode_prompt(prompt)
    return RefineJob(refiner, text, opts)


@dataclass
class RefinePlan:
    """Checked options and resolved folders; `load` builds the refiner and encodes the prompt."""

    cfg: ModelConfig
    folders: dict
    options: RefineOptions

    def load(self, prompt: str, *, device) -> RefineJob:
        return load_job(self.cfg, self.folders, self.options, prompt, device=device)


def prepare_refine(args, model: str, logged: dict | None = None) -> RefinePlan:
    """From `sana-wm render` arguments: check the model takes LTX-2 latents, build the options (flags, else the
    replayed log's, else defaults) and resolve the refiner's weights (MissingWeightsError names the folders)."""
    cfg = model_config(model)
    check_refinable(cfg)
    logged = logged or {}

    def pick(flag, key, default):
        return flag if flag is not None else logged.get(key, default)

    opts = RefineOptions(root=args.refiner_root, gemma_root=args.refiner_gemma_root,
                         block_size=pick(args.refiner_block_size, "block_size", 3),
                         kv_max_frames=pick(args.refiner_kv_max_frames, "kv_max_frames", 11),
                         seed=pick(args.refiner_seed, "seed", 42), offload=args.refiner_offload,
                         precision=args.refiner_precision)
    if opts.block_size < 0:
        raise RefinerError(f"--refiner-block-size must be >= 0 (0: single-shot), got {opts.block_size}")
    opts.settings(cfg.fps)   # validates the window against the sink
    return RefinePlan(cfg, resolve_folders(cfg, opts), opts)


def latent_frames_for(num_frames: int, stride: int) -> int:
    """Latent frames whose decode gives num_frames (8k + 1) video frames."""
    return (num_frames - 1) // stride + 1


def refine_walk(session, c2w: np.ndarray, num_frames: int, refiner, text, settings: RefineSettings,
                on_chunk, *, pipelined: bool | None = None) -> object:
    """Generate, refine and decode a walk; `on_chunk(k, uint8 frames [n, H, W, 3] or None, generate_ms)` per
    stage-1 chunk, in order. Returns the pipeline's stats (autoregressive mode) or None.

    pipelined: overlap the stages on three CUDA streams (default: on CUDA); False runs them one after the
    other (the benchmark's baseline)."""
    cfg = session.cfg
    ae = session.autoencoder
    if session.decoder is not None:    # refined latents are decoded here, not the session's raw ones
        session.decoder.close()
        session.decoder = None
    total = latent_frames_for(num_frames, cfg.frames_per_latent)
    n_chunks = 1 + max(0, -(-(total - cfg.first_chunk_size) // cfg.chunk_size))
    produced = 0
    gen_ms: dict[int, float] = {}

    def generate(k: int, _) -> torch.Tensor:
        nonlocal produced
        result = session.step(session.next_poses(c2w))
        gen_ms[k] = result.timings["generate_ms"]
        lat = result.latents[:, :, : total - produced]      # the last chunk may overshoot the clip
        produced += lat.shape[2]
        return lat

    decoder = _Decoder(ae)

    if settings.block_size is None:     # single-shot: the whole clip, then decode chunk by chunk
        lats = [generate(k, None) for k in range(n_chunks)]
        z = refine_clip(refiner, torch.cat(lats, dim=2), text, settings)
        start = 0
        for k, lat in enumerate(lats):
            frames = decoder(z[:, :, start:start + lat.shape[2]])
            start += lat.shape[2]
            if z.is_cuda:     # the decoder's copy to the host is asynchronous
                torch.cuda.current_stream(z.device).synchronize()
            on_chunk(k, None if frames is None else frames.numpy(), gen_ms[k])
        return None

    runner = BlockRefiner(refiner, text, settings)
    sink_n = settings.sink_frames

    def refine_chunk(k: int, lat: torch.Tensor) -> torch.Tensor:
        final = k == n_chunks - 1
        if k == 0:
            runner.start(lat[:, :, :sink_n])
            out = runner.push(lat[:, :, sink_n:], final=final)
            return torch.cat([lat[:, :, :sink_n], out.to(lat.dtype)], dim=2)   # the sink, untouched, goes first
        return runner.push(lat, final=final)

    def decode_chunk(k: int, z: torch.Tensor):
        return decoder(z)

    def sink(k: int, frames) -> None:
        on_chunk(k, None if frames is None else frames.numpy(), gen_ms[k])

    device = next(session.model.parameters()).device
    stages = [Stage("generate", generate), Stage("refine", refine_chunk), Stage("decode", decode_chunk)]
    return PipelineScheduler(stages, device=device, pipelined=pipelined).run(n_chunks, sink)


class _Decoder:
    """Streams refined latents through the LTX-2 decoder; drops the first decoded frame (the image frame)."""

    def __init__(self, ae) -> None:
        self.stream = ae.open_stream()
        self.first = True

    def __call__(self, z: torch.Tensor):
        if z.shape[2] == 0:
            return None
        if hasattr(self.stream, "decode_float"):
            video = self.stream.decode_float(z)[0]                        # [3, F, H, W] on the device
            frames = ((video.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 3, 0)
        else:
            frames = self.stream.decode(z)
        if self.first:
            frames = frames[1:]
            self.first = False
        if frames.is_cuda:   # copy out without blocking this stream's host thread; the sink waits on the event
            host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            return host
        return frames.contiguous()
