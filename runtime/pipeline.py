"""Assemble a generator (model + autoencoder + text encoder) by name, and open sessions on it.

Model names: "tiny-world" (the embedded default shipped in `runtime/weights/tiny-world/`), an official
preset ("sana-wm-streaming": weights resolved by `runtime.weights.resolve_weights`), a folder holding
`config.yaml` and `model.safetensors`, or a checkpoint file next to a `config.yaml`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.camera import default_intrinsics, intrinsics_to_latent
from runtime.checkpoint import load_checkpoint
from runtime.config import ModelConfig, load_config
from runtime.model import SanaWorldModel, build_model
from runtime.session import WorldSession

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "tiny-world"
DEFAULT_MODEL = "tiny-world"


class GeneratorError(RuntimeError):
    """A generator cannot be assembled; the message says what is missing."""


PRECISIONS = ("bf16", "fp8", "nvfp4")
QUANT_SCOPES = ("official", "official+tconv", "compact")
CALIBRATION_WALK = "w-16,wa-16,d-16,wl-16,s-8,none-8"
"""Keys of the short walk that FP8's static activation scales are calibrated on (`FastPath`)."""


@dataclass(frozen=True)
class FastPath:
    """How a generator runs its chunk steps: what `sana-wm bench` measures, for render / serve / explore too.

    precision: "bf16" (no quantization: the model's dtype), "fp8" (E4M3 weights and activations, one static
        input scale per layer from max calibration on `calib_chunks` chunks of a short walk from the built-in
        start image: ModelOpt's recipe; needs compute capability >= 8.9 on CUDA, and is only an emulation on the
        CPU) or "nvfp4" (4-bit weights, bf16 math: less memory, not faster on Hopper).
    scope: which layers are quantized (quant.policy.SCOPES; the release's is "official").
    compile: torch.compile each block (`runtime.model.compile_blocks`; the first chunks then take minutes).
    cuda_graphs: capture each steady chunk step as one CUDA graph (no effect on the CPU).
    """

    precision: str = "bf16"
    scope: str = "official"
    compile: bool = False
    cuda_graphs: bool = False
    calib_chunks: int = 2

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.scope not in QUANT_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(QUANT_SCOPES)}, got {self.scope!r}")
        if self.calib_chunks < 1:
            raise ValueError(f"calib_chunks must be >= 1, got {self.calib_chunks}")

    def to_dict(self) -> dict:
        """For sidecars and logs."""
        return {"precision": self.precision, "scope": self.scope if self.precision != "bf16" else None,
                "compile": self.compile, "cuda_graphs": self.cuda_graphs}


@dataclass
class Generator:
    model: SanaWorldModel
    autoencoder: object
    text_encoder: object
    source: str
    """Where the generator's weights came from (for logs and sidecars)."""
    fast: FastPath = FastPath()
    """How its chunk steps run (set by `accelerate`)."""

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def _resolve_model_dir(name: str) -> tuple[ModelConfig, Path | None]:
    """(config, checkpoint path or None for random weights) of a model name or path."""
    if name == DEFAULT_MODEL:
        ckpt = EMBEDDED_DIR / "model.safetensors"
        return load_config("tiny-world"), (ckpt if ckpt.is_file() else None)
    path = Path(name)
    if path.is_dir():
        cfg_file = path / "config.yaml"
        if not cfg_file.is_file():
            raise GeneratorError(f"{path}: a model folder needs config.yaml and model.safetensors")
        return load_config(cfg_file), path / "model.safetensors"
    if path.is_file():
        cfg_file = path.parent / "config.yaml"
        if not cfg_file.is_file():
            raise GeneratorError(f"{path}: no config.yaml beside the checkpoint (name a preset folder instead)")
        return load_config(cfg_file), path
    from runtime.weights import GENERATOR_WEIGHTS, resolve_weights

    cfg = load_config(name)
    if cfg.name not in GENERATOR_WEIGHTS:
        raise GeneratorError(f"no weights are known for config {cfg.name!r}")
    return cfg, resolve_weights(GENERATOR_WEIGHTS[cfg.name], what=f"{cfg.name} generator (DiT)")


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a GeneratorError saying why it cannot run here (no such device type, or no
    CUDA GPU visible to this torch)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GeneratorError(f"unknown device {str(device)[:40]!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise GeneratorError(f"device {dev.type!r} is not supported: use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise GeneratorError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GeneratorError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def load_generator(model: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None, random_weights: bool = False,
                   allow_download: bool | None = None, fast: FastPath | None = None) -> Generator:
    """Build the model, its autoencoder and text encoder on `device`.

    random_weights: skip the DiT checkpoint (benchmarks: speed does not depend on weights).
    fast: quantize / compile / capture the chunk steps (`accelerate`); None runs them as built.
    """
    from runtime.decoder import load_autoencoder
    from runtime.text_encoder import load_text_encoder

    device = check_device(device)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # The tiny model's tensors are small: one thread is as fast when the machine is idle and many times
        # faster when anything else (the explorer's UI thread, a server's I/O) wants a core.
        torch.set_num_threads(int(os.environ.get("SANA_WM_THREADS", "1")))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if random_weights:
        cfg, ckpt = load_config(model if model != DEFAULT_MODEL else "tiny-world"), None
    else:
        cfg, ckpt = _resolve_model_dir(model)
    net = build_model(cfg, device="cpu", dtype=torch.float32, init="random" if ckpt is None else "official")
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise GeneratorError(f"{ckpt}: model weights not found")
        load_checkpoint(net, ckpt)
        source = str(ckpt)
    else:
        if not random_weights:
            log.warning("no trained weights for %s: using random weights (the video will be noise)", cfg.name)
        source = "random weights"
    net = net.to(device=device, dtype=dtype).eval()
    ae = load_autoencoder(cfg.vae, device=device, dtype=dtype if device.type == "cuda" else torch.float32,
                          allow_download=allow_download)
    te = load_text_encoder(cfg.text_encoder, caption_channels=cfg.caption_channels,
                           max_length=cfg.text_max_length, device=device, dtype=dtype,
                           allow_download=allow_download)
    gen = Generator(net, ae, te, source)
    return gen if fast is None else accelerate(gen, fast)


def accelerate(gen: Generator, fast: FastPath) -> Generator:
    """Put `gen` on the fast path `fast` (in place; returns gen): quantize its model, calibrate FP8's static
    input scales on a short walk, compile its blocks, and let its sessions capture CUDA graphs. Checks first
    that the device can run the precision."""
    device = next(gen.model.parameters()).device
    if fast.precision == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise GeneratorError(f"fp8 needs FP8 tensor cores (compute capability >= 8.9: Ada, Hopper, Blackwell); "
                             f"{name} has {'.'.join(map(str, torch.cuda.get_device_capability(device)))}")
    if gen.fast.precision != "bf16" and fast.precision != "bf16":
        raise GeneratorError(f"the generator is already quantized ({gen.fast.precision})")
    if fast.precision != "bf16":
        from quant import default_policy, quantize

        if fast.precision == "fp8" and device.type == "cpu":
            log.warning("fp8 on the CPU is an fp32 emulation (for checking quality): slower, not faster")
        quantize(gen.model, default_policy(fast.precision, fast.scope))
        if fast.precision == "fp8":
            _calibrate_fp8(gen, fast.calib_chunks)
    if fast.compile:
        from runtime.model import compile_blocks

        log.info("compiling the blocks: the first chunks of a session take a while longer")
        compile_blocks(gen.model)
    gen.fast = fast
    return gen


def _calibrate_fp8(gen: Generator, chunks: int) -> None:
    """Static per-tensor input scales (max calibration) from `chunks` eager chunks of CALIBRATION_WALK."""
    from quant.calibrate import calibrate_fp8_inputs
    from runtime.camera import actions_to_c2w
    from runtime.cli import DEFAULT_IMAGE, DEFAULT_PROMPT

    c2w = actions_to_c2w(CALIBRATION_WALK)

    def walk():
        session = open_session(gen, str(DEFAULT_IMAGE), DEFAULT_PROMPT, seed=0)
        try:
            for _ in range(chunks):
                session.step(session.next_poses(c2w))
        finally:
            session.close()

    with torch.no_grad():
        calibrate_fp8_inputs(gen.model, walk)


def latent_intrinsics(cfg: ModelConfig, intrinsics=None, src_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(fx, fy, cx, cy) in latent pixels: from source-image pixel intrinsics [4] / [F, 4], or the default."""
    out_hw = (cfg.height, cfg.width)
    latent_hw = (cfg.latent_height, cfg.latent_width)
    if intrinsics is None:
        return intrinsics_to_latent(default_intrinsics(out_hw), out_hw, out_hw, latent_hw)
    return intrinsics_to_latent(np.asarray(intrinsics, dtype=np.float64), src_hw or out_hw, out_hw, latent_hw)


def open_session(gen: Generator, image, prompt: str = "", *, seed: int = 0, intrinsics=None,
                 src_hw: tuple[int, int] | None = None, timesteps=None, overlap_decode: bool = False) -> WorldSession:
    """A session starting from `image` (path, PIL image, HxWx3 uint8 array, or [1, 3, H, W] in [-1, 1]).

    overlap_decode: decode chunk N on a side CUDA stream while chunk N+1 generates (see `WorldSession`)."""
    from runtime.images import load_image

    cfg = gen.config
    device = next(gen.model.parameters()).device
    if isinstance(image, torch.Tensor):
        pixels = image
    else:
        pixels = load_image(image, cfg.height, cfg.width)
    with torch.no_grad():
        first = gen.autoencoder.encode_image(pixels.to(device))
        emb, mask = gen.text_encoder.encode([prompt])
        text = gen.model.prepare_text(emb.to(device), mask.to(device))
    return WorldSession(gen.model, text, first_latent=first, intrinsics_latent=latent_intrinsics(cfg, intrinsics, src_hw),
                        seed=seed, autoencoder=gen.autoencoder, timesteps=timesteps, overlap_decode=overlap_decode,
                        cuda_graphs=gen.fast.cuda_graphs)
