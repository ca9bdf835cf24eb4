"""The tiny causal video autoencoder of the embedded `tiny-world` model (8 x 16 x 16 compression, 32 channels).

Latent layout as the official causal LTX-2 VAE: latent frame 0 encodes raw frame 0 alone, latent frame k >= 1
encodes raw frames 8k-7 .. 8k. Internally every latent frame is a *group* of 8 raw frames stacked as 24
channels (group 0 is raw frame 0 repeated 8 times), so encoder and decoder are per-group 2D conv nets:

- encoder: pixel-unshuffle x4 -> 1x1 conv -> residual / strided 3x3 convs down to 1/16 -> causal temporal
  mix with the previous group's features -> (mean, log-variance) of 32 channels;
- decoder: 3x3 conv -> causal temporal mix -> residual block -> three x2 pixel-shuffle upsamplings (a second
  causal mix at 1/4 resolution) -> 8 frames x RGB via a final x2 pixel shuffle, plus a linear 1x1 path from
  the latent bilinearly upsampled x16 (the low frequencies).

"Causal temporal mix" is h_t + conv1x1([h_t, h_{t-1}]) with h_{-1} = h_0, so latent k's decode depends on
latents <= k only, and a stream that carries the two [C, h, w] feature maps of its last latent frame
(`TinyDecoderStream`) reproduces the whole-video decode. Latents are normalised per channel with stored
statistics (`latent_mean`, `latent_std`), as the DiT expects.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.decoder import (
    DecoderStream,
    VideoAutoencoder,
    check_stream_latents,
    register_autoencoder,
    registered_autoencoders,
    uint8_frames,
)

FORMAT = "sana-wm/tiny-vae/1"
"""`format` metadata of the safetensors file."""
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny-world" / "vae.safetensors"
"""Where the embedded weights live (written by `python -m runtime.train.train_vae`)."""
FRAMES_PER_LATENT = 8
SPATIAL_STRIDE = 16

DEFAULT_CONFIG = {"latent_channels": 32, "enc_channels": [48, 96, 128], "dec_channels": [128, 96, 64, 32]}


class _Res(nn.Module):
    """x + conv3x3(silu(conv3x3(silu(x)))), the second conv scaled down at init."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(0.3)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class _CausalMix(nn.Module):
    """h_t + conv1x1([h_t, h_{t-1}]) over groups; h_{-1} is the carried cache or h_0 itself."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2 * ch, ch, 1)
        with torch.no_grad():
            self.proj.weight.mul_(0.3)

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None):
        """h: [B, T, C, H, W]; prev: [B, C, H, W] (the last group before h) or None.
        Returns (mixed [B, T, C, H, W], new cache [B, C, H, W] = h[:, -1])."""
        B, T = h.shape[:2]
        first = h[:, :1] if prev is None else prev[:, None].to(h.dtype)
        shifted = torch.cat([first, h[:, :-1]], 1)
        x = torch.cat([h, shifted], 2).flatten(0, 1)
        out = h + self.proj(x).unflatten(0, (B, T))
        return out, h[:, -1]


class _Encoder(nn.Module):
    def __init__(self, latent_channels: int, ch: list[int]) -> None:
        super().__init__()
        c0, c1, c2 = ch
        self.stem = nn.Conv2d(3 * FRAMES_PER_LATENT * 16, c0, 1)
        self.res0 = _Res(c0)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.res1 = _Res(c1)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mix = _CausalMix(c2)
        self.res2 = _Res(c2)
        self.out = nn.Conv2d(c2, 2 * latent_channels, 3, padding=1)

    def forward(self, groups: torch.Tensor):
        """groups [B, T, 24, H, W] -> (mean, logvar) [B, C, T, H/16, W/16]."""
        B, T = groups.shape[:2]
        x = F.pixel_unshuffle(groups.flatten(0, 1), 4)
        x = self.res0(self.stem(x))
        x = self.res1(self.down1(F.silu(x)))
        x = self.down2(F.silu(x))
        x, _ = self.mix(x.unflatten(0, (B, T)), None)
        x = self.out(F.silu(self.res2(x.flatten(0, 1))))
        x = x.unflatten(0, (B, T)).transpose(1, 2)                       # [B, 2C, T, h, w]
        mean, logvar = x.chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 6.0)


class _Decoder(nn.Module):
    def __init__(self, latent_channels: int, ch: list[int]) -> None:
        super().__init__()
        c0, c1, c2, c3 = ch
        self.stem = nn.Conv2d(latent_channels, c0, 3, padding=1)
        self.mix16 = _CausalMix(c0)
        self.res16 = _Res(c0)
        self.up8 = nn.Conv2d(c0, 4 * c1, 1)
        self.res8 = _Res(c1)
        self.up4 = nn.Conv2d(c1, 4 * c2, 1)
        self.mix4 = _CausalMix(c2)
        self.res4 = _Res(c2)
        self.up2 = nn.Conv2d(c2, 4 * c3, 1)
        self.conv2 = nn.Conv2d(c3, c3, 3, padding=1)
        self.out = nn.Conv2d(c3, 4 * 3 * FRAMES_PER_LATENT, 1)
        # A linear low-frequency path (latent -> 8 RGB frames, bilinearly upsampled): the colours are right
        # after a few hundred steps and the conv path only has to add detail.
        self.base = nn.Conv2d(latent_channels, 3 * FRAMES_PER_LATENT, 1)

    def forward(self, z: torch.Tensor, cache: dict | None):
        """z [B, C, T, h, w] raw latents -> (groups [B, T, 24, 16h, 16w], new cache)."""
        B, _, T = z.shape[:3]
        cache = cache or {}
        zf = z.transpose(1, 2).flatten(0, 1)
        base = F.interpolate(self.base(zf), scale_factor=SPATIAL_STRIDE, mode="bilinear", align_corners=False)
        x = self.stem(zf)
        x, c16 = self.mix16(x.unflatten(0, (B, T)), cache.get("f16"))
        x = self.res16(x.flatten(0, 1))
        x = self.res8(F.pixel_shuffle(self.up8(F.silu(x)), 2))
        x = F.pixel_shuffle(self.up4(F.silu(x)), 2)
        x, c4 = self.mix4(x.unflatten(0, (B, T)), cache.get("f4"))
        x = self.res4(x.flatten(0, 1))
        x = F.pixel_shuffle(self.up2(F.silu(x)), 2)
        x = self.conv2(F.silu(x))
        x = F.pixel_shuffle(self.out(F.silu(x)), 2) + base
        return x.unflatten(0, (B, T)), {"f16": c16, "f4": c4}


def video_to_groups(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] with F = 8k + 1 -> groups [B, k + 1, 24, H, W] (group 0 = frame 0 repeated 8 times;
    channel index = 3 * frame_in_group + rgb)."""
    B, C, n, H, W = video.shape
    if C != 3 or (n - 1) % FRAMES_PER_LATENT:
        raise ValueError(f"expected video [B, 3, 8k+1, H, W], got {tuple(video.shape)}")
    first = video[:, :, :1].expand(B, 3, FRAMES_PER_LATENT, H, W)
    frames = torch.cat([first, video[:, :, 1:]], 2)                       # [B, 3, 8(k+1), H, W]
    T = frames.shape[2] // FRAMES_PER_LATENT
    g = frames.reshape(B, 3, T, FRAMES_PER_LATENT, H, W).permute(0, 2, 3, 1, 4, 5)
    return g.reshape(B, T, FRAMES_PER_LATENT * 3, H, W)


def groups_to_video(groups: torch.Tensor, *, drop_first: bool = True) -> torch.Tensor:
    """Inverse of `video_to_groups`: [B, T, 24, H, W] -> [B, 3, 8T (- 7), H, W]; group 0 contributes its last
    frame only when `drop_first`."""
    B, T, _, H, W = groups.shape
    v = groups.reshape(B, T, FRAMES_PER_LATENT, 3, H, W).permute(0, 3, 1, 2, 4, 5)
    v = v.reshape(B, 3, T * FRAMES_PER_LATENT, H, W)
    return v[:, :, FRAMES_PER_LATENT - 1:] if drop_first else v


class TinyVideoAutoencoder(nn.Module, VideoAutoencoder):
    """Tiny causal video autoencoder (about 1.5 M parameters, 2.9 MB as fp16).

    Args:
        latent_channels: C (32 for tiny-world).
        enc_channels: encoder widths at 1/4, 1/8, 1/16 resolution.
        dec_channels: decoder widths at 1/16, 1/8, 1/4, 1/2 resolution.
    """

    stride = (FRAMES_PER_LATENT, SPATIAL_STRIDE, SPATIAL_STRIDE)

    def __init__(self, latent_channels: int = 32, enc_channels=(48, 96, 128), dec_channels=(128, 96, 64, 32)):
        super().__init__()
        self.latent_channels = int(latent_channels)
        self.config = {"latent_channels": self.latent_channels, "enc_channels": [int(c) for c in enc_channels],
                       "dec_channels": [int(c) for c in dec_channels]}
        self.encoder = _Encoder(self.latent_channels, self.config["enc_channels"])
        self.decoder = _Decoder(self.latent_channels, self.config["dec_channels"])
        self.register_buffer("latent_mean", torch.zeros(self.latent_channels))
        self.register_buffer("latent_std", torch.ones(self.latent_channels))

    # ---- helpers ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.stem.weight.dtype

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent [B, C, T, h, w] -> normalised latent (float32)."""
        return (z.float() - self.latent_mean.float()[:, None, None, None]) / self.latent_std.float()[:, None, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.latent_std.float()[:, None, None, None] + self.latent_mean.float()[:, None, None, None]

    def _check_hw(self, h: int, w: int, what: str) -> None:
        if h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
            raise ValueError(f"{what}: {h}x{w} is not a multiple of the spatial stride {SPATIAL_STRIDE}")

    # ---- encoding -----------------------------------------------------------------------------------------
    def encode_moments(self, video: torch.Tensor):
        """[B, 3, 8k+1, H, W] in [-1, 1] -> raw (mean, logvar) [B, C, k+1, H/16, W/16] (differentiable)."""
        self._check_hw(video.shape[-2], video.shape[-1], "encode")
        return self.encoder(video_to_groups(video.to(self.device, self.dtype)))

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 8k+1, H, W] in [-1, 1] -> normalised latents (posterior mean) [B, C, k+1, H/16, W/16], float32."""
        mean, _ = self.encode_moments(video)
        return self.normalize(mean)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] in [-1, 1] -> normalised latent [1, C, 1, H/16, W/16] (equals latent frame 0 of
        `encode_video` of any video starting with this image: the encoder is causal)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"encode_image: expected an image [B, 3, H, W], got {tuple(image.shape)}")
        return self.encode_video(image.unsqueeze(2))

    # ---- decoding -----------------------------------------------------------------------------------------
    def decode_groups(self, z_raw: torch.Tensor, cache: dict | None = None):
        """Raw latents [B, C, T, h, w] -> (groups [B, T, 24, H, W] in ~[-1, 1], cache for the next call)."""
        return self.decoder(z_raw.to(self.device, self.dtype), cache)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Whole-video decode of normalised latents [B, C, T, h, w] -> float [B, 3, 1 + 8 (T-1), H, W]
        (differentiable; no clamping)."""
        groups, _ = self.decode_groups(self.denormalize(latents))
        return groups_to_video(groups)

    def open_stream(self) -> TinyDecoderStream:
        return TinyDecoderStream(self)

    # ---- files --------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, dtype: torch.dtype = torch.float16) -> None:
        """Write weights (cast to `dtype`; the latent statistics stay float32) and the config to safetensors."""
        from safetensors.torch import save_file

        tensors = {}
        for k, v in self.state_dict().items():
            v = v.detach().to("cpu")
            tensors[k] = (v.float() if k.startswith("latent_") else v.to(dtype)).contiguous()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": FORMAT, "config": json.dumps(self.config)})

    @classmethod
    def from_file(cls, path: str | Path, *, device="cpu", dtype: torch.dtype = torch.float32) -> TinyVideoAutoencoder:
        """Load `save` output. Raises ValueError naming missing / unexpected keys or a shape mismatch."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a tiny-vae file (format {meta.get('format')!r}, expected {FORMAT!r})")
        model = cls(**json.loads(meta["config"]))
        own = model.state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise ValueError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
        for k, v in tensors.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
        model.to(device=device)
        model.encoder.to(dtype)
        model.decoder.to(dtype)
        return model.eval()


class TinyDecoderStream(DecoderStream):
    """Streaming decode: carries the decoder's two mix caches ([C, h, w] features of the last latent frame)."""

    def __init__(self, ae: TinyVideoAutoencoder) -> None:
        self._ae = ae
        self._cache: dict | None = None
        self._grid: tuple[int, int] | None = None
        self._closed = False
        self.latent_frames = 0
        """Latent frames decoded so far."""

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Like `decode` but float [1, 3, F, H, W] in ~[-1, 1] on the autoencoder's device."""
        grid = check_stream_latents(latents, self._ae.latent_channels, self._grid, self._closed)
        z = self._ae.denormalize(latents.to(self._ae.device))
        groups, cache = self._ae.decode_groups(z, self._cache)
        video = groups_to_video(groups, drop_first=self.latent_frames == 0)
        self._cache, self._grid = cache, grid
        self.latent_frames += int(latents.shape[2])
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return uint8_frames(self.decode_float(latents)).cpu()

    def decode_device(self, latents: torch.Tensor) -> torch.Tensor:
        return uint8_frames(self.decode_float(latents))

    def snapshot(self) -> object:
        cache = None if self._cache is None else {k: v.clone() for k, v in self._cache.items()}
        return {"owner": id(self._ae), "cache": cache, "grid": self._grid, "latent_frames": self.latent_frames}

    def restore(self, snap: object) -> None:
        if not isinstance(snap, dict) or snap.get("owner") != id(self._ae):
            raise ValueError("restore: not a snapshot of a stream of this autoencoder")
        cache = snap["cache"]
        self._cache = None if cache is None else {k: v.clone() for k, v in cache.items()}
        self._grid, self.latent_frames, self._closed = snap["grid"], snap["latent_frames"], False

    def close(self) -> None:
        self._cache = None
        self._closed = True

    def cache_bytes(self) -> int:
        if not self._cache:
            return 0
        return sum(t.numel() * t.element_size() for t in self._cache.values())


def load_tiny_world(*, device="cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None):
    """Autoencoder factory of the registry name "tiny-world": the embedded weights (or `path`)."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        from runtime.weights import MissingWeightsError

        raise MissingWeightsError("video autoencoder (tiny-world)", str(path), path,
                                  "train them with `python -m runtime.train.train_vae`")
    return TinyVideoAutoencoder.from_file(path, device=device, dtype=dtype)


if "tiny-world" not in registered_autoencoders():
    register_autoencoder("tiny-world", load_tiny_world)
