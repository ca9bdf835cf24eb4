"""Video autoencoder interface, streaming decoder interface, and the factory that loads one by name.

The session encodes the first image once (`encode_image`) and then decodes the generated latents chunk by
chunk through one `DecoderStream` per walk. Streams are causal: the first latent frame a stream ever sees
decodes to 1 video frame, every later latent frame to `stride[0]` frames (8 for LTX-2), so a stream fed
latent frames 0..T-1 in any chunking yields the 1 + 8 (T - 1) frames of the official whole-video decode.
`snapshot()` / `restore()` let a session rewind the stream together with its own caches.

Autoencoders are found by name in a registry (`register_autoencoder`); "ltx2" and "ltx2-causal" are built
in and resolve the official weights through `runtime.weights.resolve_weights`; a folder holding a diffusers
`config.json` (or a `vae/` subfolder with one) or an `hf://` reference loads directly.
"""
from __future__ import annotations

import abc
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Self

import torch

from runtime.weights import HUB_SCHEME, OFFICIAL_WEIGHTS, resolve_weights


def check_stream_latents(latents: torch.Tensor, channels: int, grid: tuple[int, int] | None,
                         closed: bool) -> tuple[int, int]:
    """Validate the next latents of a stream; returns their (h, w) grid (fixed for the stream's life)."""
    if closed:
        raise RuntimeError("decoder stream is closed")
    if latents.dim() != 5 or latents.shape[0] != 1 or latents.shape[1] != channels or latents.shape[2] < 1:
        raise ValueError(f"decode: expected latents [1, {channels}, T>=1, h, w], got {tuple(latents.shape)}")
    new = (int(latents.shape[3]), int(latents.shape[4]))
    if grid is not None and new != grid:
        raise ValueError(f"decode: latent grid changed mid-stream from {grid} to {new}")
    return new


def uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Decoder output [1, 3, F, H, W] in ~[-1, 1] -> uint8 [F, H, W, 3] ((x + 1) * 127.5, rounded), on its device."""
    x = ((video[0].float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous()


class DecoderStream(abc.ABC):
    """Causal, chunked decode of one latent video; holds the decoder's left-context caches."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames of the stream.

        Args:
            latents: normalised latents [1, C, T, h, w] (T >= 1 latent frames following the ones already
                decoded), any device / dtype.

        Returns:
            uint8 frames [F, H, W, 3] on the CPU, F = 1 + stride[0] * (T - 1) on the stream's first call and
            stride[0] * T afterwards (raw video frames).
        """

    def decode_device(self, latents: torch.Tensor) -> torch.Tensor:
        """Like `decode`, but the frames may stay where the decoder made them (the GPU for a GPU decoder).

        Returns the uint8 frames [F, H, W, 3] of `decode`, on any device: the caller moves them to the host,
        e.g. with an asynchronous copy (the session's overlapped decode queues the whole decode on a side
        stream and must not block on it). Streams that end `decode` with a blocking device-to-host copy
        override this; the default just calls `decode`.
        """
        return self.decode(latents)

    @abc.abstractmethod
    def snapshot(self) -> object:
        """An opaque copy of the stream's caches; `restore` of it rewinds the stream to this point."""

    @abc.abstractmethod
    def restore(self, snap: object) -> None:
        """Rewind to a snapshot taken from this stream (a snapshot may be restored any number of times)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the caches; the stream cannot decode afterwards."""

    def cache_bytes(self) -> int:
        """Bytes held by the stream's caches (constant once the stream is warm); 0 for cache-free streams."""
        return 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoAutoencoder(abc.ABC):
    """A video autoencoder: first-image encoder plus streaming decoder."""

    latent_channels: int
    """Channels of the latents (C)."""
    stride: tuple[int, int, int]
    """Compression (raw frames, pixels, pixels) per latent frame / latent pixel: (8, 32, 32) for LTX-2."""

    @abc.abstractmethod
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Encode the first frame.

        Args:
            image: [1, 3, H, W] in [-1, 1], H and W multiples of stride[1], stride[2].

        Returns:
            normalised latent [1, C, 1, H / stride[1], W / stride[2]] (float32, on the autoencoder's device).
        """

    @abc.abstractmethod
    def open_stream(self) -> DecoderStream:
        """A fresh decoding stream (its first latent frame is the video's frame 0)."""

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Whole-video decode through a throw-away stream: [1, C, T, h, w] -> uint8 [1 + 8 (T - 1), H, W, 3]."""
        with self.open_stream() as stream:
            return stream.decode(latents)

    def num_frames(self, latent_frames: int) -> int:
        """Raw frames a stream yields for its first `latent_frames` latent frames."""
        return 0 if latent_frames <= 0 else 1 + self.stride[0] * (latent_frames - 1)


AutoencoderFactory = Callable[..., VideoAutoencoder]
"""Called as `factory(device=device, dtype=dtype)`; returns a ready autoencoder on that device."""

_REGISTRY: dict[str, AutoencoderFactory | str] = {}


def register_autoencoder(name: str, factory: AutoencoderFactory | str, *, overwrite: bool = False) -> None:
    """Make `load_autoencoder(name, device=..., dtype=...)` call `factory(device=..., dtype=...)`.

    Args:
        name: the name configs use (`ModelConfig.vae`), e.g. "tiny-world".
        factory: a callable, or "package.module:function" imported on first use (keeps imports lazy).
        overwrite: replace an existing registration instead of raising.
    """
    if not overwrite and name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"autoencoder {name!r} is already registered (pass overwrite=True to replace it)")
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"lazy factory for {name!r} must read 'package.module:function', got {factory!r}")
    _REGISTRY[name] = factory


def registered_autoencoders() -> list[str]:
    return sorted(_REGISTRY)


def _official_ltx2(name: str) -> AutoencoderFactory:
    def factory(*, device, dtype, allow_download: bool | None = None) -> VideoAutoencoder:
        from runtime.ltx2_vae import LTX2Autoencoder

        folder = resolve_weights(OFFICIAL_WEIGHTS[name], what=f"video autoencoder ({name})",
                                 allow_download=allow_download)
        return LTX2Autoencoder.from_pretrained(folder, device=device, dtype=dtype)

    return factory


register_autoencoder("ltx2", _official_ltx2("ltx2"))
register_autoencoder("ltx2-causal", _official_ltx2("ltx2-causal"))
# The embedded model's autoencoder, imported on first use.
register_autoencoder("tiny-world", "runtime.tiny_vae:load_tiny_world")


def load_autoencoder(name_or_path: str | Path, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, allow_download: bool | None = None) -> VideoAutoencoder:
    """Load a video autoencoder by registered name, folder path or `hf://` reference.

    Args:
        name_or_path: "ltx2", "ltx2-causal", another registered name ("tiny-world"), a folder with a
            diffusers `config.json` (or with a `vae/` subfolder holding one), or `hf://org/repo/path`.
        device, dtype: where and in which precision the autoencoder runs.
        allow_download: passed to `resolve_weights` (None: the `SANA_WM_ALLOW_DOWNLOAD` environment decides).

    Raises:
        MissingWeightsError: the weights are not on this machine and may not be downloaded.
        IncompatibleWeightsError: the folder's weights do not fit its config.
        ValueError: an unknown name or an unsupported folder.
    """
    text = str(name_or_path)
    if text in _REGISTRY:
        factory = _REGISTRY[text]
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
            _REGISTRY[text] = factory
        if text in OFFICIAL_WEIGHTS:
            return factory(device=device, dtype=dtype, allow_download=allow_download)
        return factory(device=device, dtype=dtype)
    looks_like_path = "/" in text or "\\" in text or text.startswith((".", "~"))
    if not text.startswith(HUB_SCHEME) and not looks_like_path and not Path(text).exists():
        raise ValueError(f"unknown autoencoder {text!r}: not a registered name ({', '.join(registered_autoencoders())})"
                         " and no such folder")
    folder = resolve_weights(text, what="video autoencoder", allow_download=allow_download)
    return _load_folder(folder, device=device, dtype=dtype)


_LTX2_CLASSES = {"AutoencoderKLLTX2Video", "AutoencoderKLCausalLTX2Video"}


def _load_folder(folder: Path, *, device, dtype) -> VideoAutoencoder:
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder}: not an autoencoder folder (no config.json, no vae/config.json)")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_file}: unreadable config: {exc}") from None
    if class_name in _LTX2_CLASSES:
        from runtime.ltx2_vae import LTX2Autoencoder

        return LTX2Autoencoder.from_pretrained(folder, device=device, dtype=dtype)
    raise ValueError(f"{config_file}: unsupported autoencoder class {class_name!r} "
                     f"(supported: {', '.join(sorted(_LTX2_CLASSES))})")
