"""LTX-2 video autoencoder (diffusers `AutoencoderKLLTX2Video`) behind the `VideoAutoencoder` interface.

Latent convention (spec 6.1): the first image is encoded alone (T = 1), posterior mode, then
`z = (z - latents_mean) * scaling_factor / latents_std` with the per-channel statistics of the checkpoint;
decoding inverts it and runs the decoder with `temb=None`.

Streaming decode. diffusers' LTX-2 decoder has no incremental API: every call pads each causal conv with copies
of its first input frame and drops the first frame after each temporal upsampler. Its time structure is simple
though: (1) every op that mixes frames is an `LTX2VideoCausalConv3d` (temporal kernel 3, stride 1, dilation 1);
(2) each `LTX2VideoUpsampler3d` is such a conv + depth-to-space that turns T frames into 2T and then drops the
first one; (3) everything else (per-pixel RMS norms, LayerNorm, SiLU, 1x1x1 shortcuts, unpatchify) acts on each
frame alone. So for a causal decoder the stream keeps, per conv, the last k_t - 1 = 2 input frames it has seen
and uses them as the left padding of the next chunk (a stream's first chunk pads with copies of its first
frame, as diffusers does), and the upsamplers drop their first frame on the stream's first chunk only. Any
chunking then decodes like one whole-video `vae.decode` (the unit tests check it against diffusers), with
caches of a fixed size: 2 frames per conv, however long the walk.

Frame counts: each of the three temporal upsamplers maps T -> 2T - 1 on a stream's first chunk and T -> 2T
later, so T latent frames give 1 + 8 (T - 1) frames at the start and 8 T afterwards: latent frame 0 (the
image) decodes to exactly one frame, as in the official pipeline (8k + 1 frames from k + 1 latents).

Non-causal decoders (the original LTX-2 VAE, `decoder_causal: false`, shipped with the bidirectional release)
look one frame ahead in every conv, so exact streaming would need a delay of many latent frames. Their stream
re-decodes each chunk with `context` previous latent frames prepended, treats the chunk's end like a video's
end (replicate padding), and keeps only the new frames: approximate near chunk boundaries, the same scheme as
the official `decode_with_cache` for non-causal models.
"""
from __future__ import annotations

import abc
import contextlib
import functools
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Video
from diffusers.models.autoencoders.autoencoder_kl_ltx2 import (
    LTX2VideoCausalConv3d,
    LTX2VideoResnetBlock3d,
    LTX2VideoUpsampler3d,
    PerChannelRMSNorm,
)

from kernels.decoder_prep import conv_input
from runtime.decoder import DecoderStream, VideoAutoencoder, check_stream_latents, uint8_frames
from runtime.weights import IncompatibleWeightsError, MissingWeightsError

log = logging.getLogger(__name__)


def ltx2_config(*, causal: bool = True) -> dict:
    """The full LTX-2 video VAE config (diffusers' LTX-2 conversion script, version "2.0").

    Args:
        causal: decoder_causal. The official LTX-2 VAE has a non-causal decoder; SANA-WM's streaming release
            ships a causal fine-tune of the same architecture (`ltx2_causal_vae/`).

    Returns:
        Constructor kwargs of `AutoencoderKLLTX2Video`: 128 latent channels, compression 8 x 32 x 32.
    """
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "block_out_channels": (256, 512, 1024, 2048),
        "down_block_types": ("LTX2VideoDownBlock3D",) * 4,
        "decoder_block_out_channels": (256, 512, 1024),
        "layers_per_block": (4, 6, 6, 2, 2),
        "decoder_layers_per_block": (5, 5, 5, 5),
        "spatio_temporal_scaling": (True, True, True, True),
        "decoder_spatio_temporal_scaling": (True, True, True),
        "decoder_inject_noise": (False, False, False, False),
        "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        "upsample_residual": (True, True, True),
        "upsample_factor": (2, 2, 2),
        "timestep_conditioning": False,
        "patch_size": 4,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        "encoder_causal": True,
        "decoder_causal": causal,
        "encoder_spatial_padding_mode": "zeros",
        "decoder_spatial_padding_mode": "reflect",
        # The constructor's default formula would say 64 (it counts the purely temporal block); set explicitly.
        "spatial_compression_ratio": 32,
        "temporal_compression_ratio": 8,
    }


class LTX2Autoencoder(VideoAutoencoder):
    """An `AutoencoderKLLTX2Video` with SANA-WM's latent normalisation and a streaming decoder.

    Attributes:
        vae: the diffusers model (eval, no grad).
        causal: whether the decoder is causal (exact streaming) or not (overlap streaming).
        device, dtype: where the model runs.
    """

    def __init__(self, vae: AutoencoderKLLTX2Video, *, device=None, dtype=None) -> None:
        if vae.config.timestep_conditioning:
            raise IncompatibleWeightsError("timestep-conditioned LTX decoders are not supported "
                                           "(the LTX-2 / SANA-WM VAEs decode with temb=None)")
        mean = vae.latents_mean.detach().float().clone()
        std = vae.latents_std.detach().float().clone()
        if device is not None or dtype is not None:
            # nn.Module.to: ModelMixin.to would warn about fp32-pinned modules, which this model has none of.
            torch.nn.Module.to(vae, device=device, dtype=dtype)
        # On CUDA the decoder's conv weights are stored channels-last, so cuDNN runs its convs in NDHWC without the
        # nchw <-> nhwc transposes and the one-pass conv inputs below are written channels-last too (H200, round 8:
        # 57.7 ms per 3-latent chunk instead of 114.3 ms channels-first with the same fused inputs, 122.4 ms without;
        # bench/results). SANA_WM_DECODER_CHANNELS_LAST=0 / 1 forces the layout (the CPU keeps channels-first).
        layout = os.environ.get("SANA_WM_DECODER_CHANNELS_LAST", "auto")
        if layout == "1" or (layout == "auto" and next(vae.parameters()).device.type == "cuda"):
            vae.decoder.to(memory_format=torch.channels_last_3d)
        self.vae = vae.eval().requires_grad_(False)
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.latent_channels = int(vae.config.latent_channels)
        self.causal = bool(vae.decoder.is_causal)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latents_mean = mean.to(self.device).view(1, -1, 1, 1, 1)
        self.latents_std = std.to(self.device).view(1, -1, 1, 1, 1)
        self._convs = [(name, m) for name, m in vae.decoder.named_modules() if isinstance(m, LTX2VideoCausalConv3d)]
        self._upsamplers = [m for m in vae.decoder.modules() if isinstance(m, LTX2VideoUpsampler3d)]
        # The streaming decode writes each conv's input in one pass (kernels.decoder_prep), the ResNet blocks' and
        # conv_out's RMS norm + SiLU included, where the modules are the stock ones it knows how to fuse.
        # SANA_WM_DECODER_FUSED_INPUT=0 keeps the norms and activations as diffusers runs them (A/B measurement).
        fuse = os.environ.get("SANA_WM_DECODER_FUSED_INPUT", "1") != "0"
        self._fused_resnets = [m for m in vae.decoder.modules()
                               if fuse and isinstance(m, LTX2VideoResnetBlock3d) and _fusable_resnet(m)]
        self._fused_output = fuse and _fusable_output(vae.decoder)
        for name, conv in self._convs:
            if conv.conv.stride[0] != 1 or conv.conv.dilation[0] != 1:
                raise IncompatibleWeightsError(f"decoder conv {name} has temporal stride/dilation "
                                               f"{conv.conv.stride[0]}/{conv.conv.dilation[0]}; streaming needs 1/1")
        t, s = vae.decoder.patch_size_t, vae.decoder.patch_size
        for up in self._upsamplers:
            t, s = t * up.stride[0], s * up.stride[1]
        self.stride = (t, s, s)
        # The stream patches decoder modules for the duration of a call; one call at a time per model.
        self._lock = threading.RLock()

    # Construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device="cpu", dtype=torch.float32) -> LTX2Autoencoder:
        """Load a diffusers folder (config.json + safetensors); missing keys / shape mismatches raise."""
        folder = Path(folder)
        kwargs = diffusers_kwargs(_read_json(folder / "config.json"), source=str(folder / "config.json"))
        state = _read_state_dict(folder)
        with torch.device("meta"):
            vae = AutoencoderKLLTX2Video(**kwargs)
        load_state_strict(vae, state, source=str(folder))
        return cls(vae, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, config: dict, *, device="cpu", dtype=torch.float32, seed: int = 0) -> LTX2Autoencoder:
        """Random weights (benchmarks, tests): `config` holds `AutoencoderKLLTX2Video` kwargs."""
        device = torch.device(device)
        gpus = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):  # seeding here leaves the caller's generators alone
            torch.manual_seed(seed)
            with device:
                vae = AutoencoderKLLTX2Video(**config)
        return cls(vae, device=device, dtype=dtype)

    # Latent normalisation ----------------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent -> model latent: (z - mean) * scaling_factor / std, in float32."""
        return (z.float() - self.latents_mean) * self.scaling_factor / self.latents_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Model latent -> raw VAE latent, in float32."""
        return z.float() * self.latents_std / self.scaling_factor + self.latents_mean

    # VideoAutoencoder ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"encode_image: expected an image [B, 3, H, W], got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self.stride[1] or w % self.stride[2]:
            raise ValueError(f"encode_image: {h}x{w} is not a multiple of the spatial stride {self.stride[1]}")
        x = image.to(device=self.device, dtype=self.dtype).unsqueeze(2)
        with self._lock:
            z = self.vae.encode(x).latent_dist.mode()
        return self.normalize(z)

    def open_stream(self, *, context: int = 1) -> LTX2Stream:
        """A new stream. `context`: latent frames re-decoded as left context (non-causal decoders only)."""
        return CausalCacheStream(self) if self.causal else OverlapStream(self, context=context)

    @torch.no_grad()
    def decode_reference(self, latents: torch.Tensor) -> torch.Tensor:
        """diffusers' whole-video decode (no streaming): [1, C, T, h, w] -> float [1, 3, 1 + 8 (T-1), H, W]."""
        z = self.denormalize(latents.to(self.device)).to(self.dtype)
        with self._lock:
            return self.vae.decode(z, temb=None).sample


class LTX2Stream(DecoderStream):
    """Shared input checks and output conversion of the two LTX-2 stream kinds."""

    def __init__(self, ae: LTX2Autoencoder) -> None:
        self._ae = ae
        self._grid: tuple[int, int] | None = None
        self._closed = False
        self.latent_frames = 0
        """Latent frames decoded so far."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8_frames(self.decode_float(latents))

    def decode_device(self, latents: torch.Tensor) -> torch.Tensor:
        return uint8_frames(self.decode_float(latents))

    @abc.abstractmethod
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Like `decode` but returns the decoder output: float [1, 3, F, H, W] in ~[-1, 1] on the device."""

    def _check(self, latents: torch.Tensor) -> None:
        self._grid = check_stream_latents(latents, self._ae.latent_channels, self._grid, self._closed)

    def close(self) -> None:
        self._closed = True


@dataclass(frozen=True)
class _Snapshot:
    autoencoder: int
    kind: str
    started: bool
    latent_frames: int
    grid: tuple[int, int] | None
    tensors: dict = field(default_factory=dict)


class CausalCacheStream(LTX2Stream):
    """Exact streaming through a causal decoder: each temporal conv keeps its last 2 input frames."""

    def __init__(self, ae: LTX2Autoencoder) -> None:
        super().__init__(ae)
        self._caches: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        ae = self._ae
        z = ae.denormalize(latents.to(ae.device)).to(ae.dtype)
        written: dict[str, torch.Tensor] = {}
        first = self.latent_frames == 0
        with ae._lock, _streaming_patches(ae, self._caches, written, trim_first=first):
            video = ae.vae.decoder(z, None, causal=True)
        # Committed only after the whole decoder ran, so a failed call leaves the stream where it was.
        self._caches = {**self._caches, **written}
        self.latent_frames += int(latents.shape[2])
        return video

    def snapshot(self) -> object:
        return _Snapshot(id(self._ae), "causal", self.latent_frames > 0, self.latent_frames, self._grid,
                         {k: v.clone() for k, v in self._caches.items()})

    def restore(self, snap: object) -> None:
        _check_snapshot(snap, self._ae, "causal")
        self._caches = {k: v.clone() for k, v in snap.tensors.items()}
        self.latent_frames, self._grid, self._closed = snap.latent_frames, snap.grid, False

    def close(self) -> None:
        super().close()
        self._caches = {}

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._caches.values())


class OverlapStream(LTX2Stream):
    """Approximate streaming through a non-causal decoder: re-decode `context` latent frames of left context."""

    def __init__(self, ae: LTX2Autoencoder, *, context: int = 1) -> None:
        super().__init__(ae)
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.context = context
        self._tail: torch.Tensor | None = None

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        ae = self._ae
        z = latents.to(ae.device).float()
        full = z if self._tail is None else torch.cat([self._tail, z], dim=2)
        with ae._lock:
            video = ae.vae.decoder(ae.denormalize(full).to(ae.dtype), None, causal=False)
        if self._tail is not None:
            video = video[:, :, video.shape[2] - ae.stride[0] * z.shape[2]:]
        self._tail = full[:, :, full.shape[2] - self.context:].clone() if self.context else None
        self.latent_frames += int(z.shape[2])
        return video

    def snapshot(self) -> object:
        tensors = {} if self._tail is None else {"tail": self._tail.clone()}
        return _Snapshot(id(self._ae), "overlap", self.latent_frames > 0, self.latent_frames, self._grid, tensors)

    def restore(self, snap: object) -> None:
        _check_snapshot(snap, self._ae, "overlap")
        self._tail = snap.tensors["tail"].clone() if "tail" in snap.tensors else None
        self.latent_frames, self._grid, self._closed = snap.latent_frames, snap.grid, False

    def close(self) -> None:
        super().close()
        self._tail = None

    def cache_bytes(self) -> int:
        return 0 if self._tail is None else self._tail.numel() * self._tail.element_size()


def _check_snapshot(snap: object, ae: LTX2Autoencoder, kind: str) -> None:
    if not isinstance(snap, _Snapshot) or snap.kind != kind or snap.autoencoder != id(ae):
        raise ValueError("restore: not a snapshot of a stream of this autoencoder")


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Decoder output [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] on the CPU ((x + 1) * 127.5, rounded)."""
    x = uint8_frames(video)
    if not x.is_cuda:
        return x
    # Into page-locked memory (torch's caching host allocator reuses it): a pageable copy of a 720p chunk (65 MB)
    # took 51 ms on an H200 machine, about 20x the pinned rate. A blocking copy_ is cudaMemcpyAsync on the
    # *current* stream followed by a sync of that stream only (not the device), so under a side stream it
    # waits for the side stream's decode and nothing else. The session's overlapped decode uses
    # `decode_device` instead and copies without blocking.
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x)
    return host


# Streaming patches ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _streaming_patches(ae: LTX2Autoencoder, read: dict, written: dict, *, trim_first: bool):
    """Route the decoder's temporal convs through the stream's caches and its upsamplers through the
    first-chunk-only trim, for one call. Instance attributes shadow the class `forward`; deleting them
    restores the stock modules."""
    patched = []
    try:
        for key, conv in ae._convs:
            conv.forward = functools.partial(_cached_causal_conv, conv, key, read, written)
            patched.append(conv)
        for block in ae._fused_resnets:
            block.forward = functools.partial(_fused_resnet, block)
            patched.append(block)
        if ae._fused_output:   # norm_out and conv_act move into conv_out's input
            decoder = ae.vae.decoder
            decoder.norm_out.forward = decoder.conv_act.forward = _identity
            decoder.conv_out.forward = functools.partial(_cached_causal_conv, decoder.conv_out,
                                                         _conv_key(ae, decoder.conv_out), read, written,
                                                         norm_eps=decoder.norm_out.eps)
            patched += [decoder.norm_out, decoder.conv_act]
        for up in ae._upsamplers:
            up.forward = functools.partial(_stream_upsample, up, trim_first)
            patched.append(up)
        yield
    finally:
        for module in patched:
            del module.forward


def _cached_causal_conv(conv: LTX2VideoCausalConv3d, key: str, read: dict, written: dict,
                        hidden_states: torch.Tensor, causal: bool = True, norm_eps: float | None = None) -> torch.Tensor:
    """The conv over [cached left frames ; this chunk], its input first normalised + SiLU'd if `norm_eps` is set
    (the fused ResNet blocks and conv_out)."""
    if not causal:
        raise RuntimeError("cached streaming runs the decoder causally only")
    k = conv.kernel_size[0]
    inner = conv.conv
    if k == 1:
        x = hidden_states if norm_eps is None else conv_input(hidden_states, None, pad_frames=0, ph=0, pw=0,
                                                              norm_eps=norm_eps)
        return inner(x)
    left = read.get(key)   # None on the stream's first chunk: copies of the first frame, as diffusers pads
    _, ph, pw = inner.padding
    reflect = inner.padding_mode == "reflect" and inner.padding[0] == 0
    # Reflection padding goes into the input buffer, and the conv runs without padding (what nn.Conv3d does
    # after its own F.pad, so the result is the same): saves a full copy and PyTorch's reflection_pad3d kernel
    # (30 ms per chunk on an H200). The buffer takes the weight's layout: channels-last weights (the CUDA default,
    # see __init__) get channels-last input.
    layout = torch.channels_last_3d if inner.weight.is_contiguous(memory_format=torch.channels_last_3d) and \
        not inner.weight.is_contiguous() else torch.contiguous_format
    x = conv_input(hidden_states, left, pad_frames=k - 1, ph=ph if reflect else 0, pw=pw if reflect else 0,
                   norm_eps=norm_eps, memory_format=layout)
    bh, bw = (ph, pw) if reflect else (0, 0)
    # The cache is a copy, so the chunk's activations can be freed.
    written[key] = x[:, :, x.shape[2] - (k - 1):, bh:x.shape[3] - bh, bw:x.shape[4] - bw].clone()
    if reflect:
        return F.conv3d(x, inner.weight, inner.bias, inner.stride, 0, inner.dilation, inner.groups)
    return inner(x)


def _identity(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return x


def _conv_key(ae: LTX2Autoencoder, conv: LTX2VideoCausalConv3d) -> str:
    return next(key for key, c in ae._convs if c is conv)


def _fusable_resnet(block: LTX2VideoResnetBlock3d) -> bool:
    """Whether `_fused_resnet` computes what diffusers' forward does for this block: no timestep conditioning, no
    noise injection, RMS norms over channels then SiLU in front of both causal convs."""
    return (block.scale_shift_table is None and block.per_channel_scale1 is None
            and block.per_channel_scale2 is None and isinstance(block.nonlinearity, torch.nn.SiLU)
            and all(isinstance(n, PerChannelRMSNorm) and n.channel_dim == 1 for n in (block.norm1, block.norm2))
            and all(isinstance(c, LTX2VideoCausalConv3d) for c in (block.conv1, block.conv2)))


def _fusable_output(decoder) -> bool:
    return (decoder.time_embedder is None and isinstance(decoder.conv_act, torch.nn.SiLU)
            and isinstance(decoder.norm_out, PerChannelRMSNorm) and decoder.norm_out.channel_dim == 1
            and isinstance(decoder.conv_out, LTX2VideoCausalConv3d))


def _fused_resnet(block: LTX2VideoResnetBlock3d, inputs: torch.Tensor, temb=None, generator=None,
                  causal: bool = True) -> torch.Tensor:
    # diffusers' LTX2VideoResnetBlock3d.forward for the blocks `_fusable_resnet` accepts, each norm + SiLU done
    # inside the next conv's input pass (the convs are the stream's patched ones; dropout is off in eval).
    hidden = block.conv1(inputs, causal=causal, norm_eps=block.norm1.eps)
    hidden = block.conv2(hidden, causal=causal, norm_eps=block.norm2.eps)
    if block.norm3 is not None:
        inputs = block.norm3(inputs.movedim(1, -1)).movedim(-1, 1)
    if block.conv_shortcut is not None:
        inputs = block.conv_shortcut(inputs)
    return hidden + inputs


def _stream_upsample(up: LTX2VideoUpsampler3d, trim_first: bool, hidden_states: torch.Tensor,
                     causal: bool = True) -> torch.Tensor:
    # Same arithmetic as diffusers' LTX2VideoUpsampler3d.forward, except that the leading stride_t - 1 frames
    # are dropped only on the stream's first chunk (later chunks continue the same video).
    b, _, t, h, w = hidden_states.shape
    st, sh, sw = up.stride
    trim = st - 1 if trim_first else 0

    def depth_to_space(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(b, -1, st, sh, sw, t, h, w)
        return x.permute(0, 1, 5, 2, 6, 3, 7, 4).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    out = depth_to_space(up.conv(hidden_states, causal=causal))[:, :, trim:]
    if up.residual:
        residual = depth_to_space(hidden_states).repeat(1, (st * sh * sw) // up.upscale_factor, 1, 1, 1)
        out = out + residual[:, :, trim:]
    return out


# Loading ------------------------------------------------------------------------------------------------------
def diffusers_kwargs(config: dict, *, source: str = "<config>") -> dict:
    """A diffusers `config.json` (of `AutoencoderKLLTX2Video` or NVlabs' `AutoencoderKLCausalLTX2Video`) ->
    constructor kwargs of `AutoencoderKLLTX2Video`; keys the constructor does not take are logged and dropped."""
    params = set(inspect.signature(AutoencoderKLLTX2Video.__init__).parameters) - {"self"}
    config = dict(config)
    decoder_upsample_type = config.pop("decoder_upsample_type", None)
    if decoder_upsample_type is not None and "upsample_type" not in config:
        # NVlabs' causal class lists it encoder-side first and reverses it; diffusers indexes it as given.
        config["upsample_type"] = list(reversed(decoder_upsample_type))
    kwargs, dropped = {}, []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in params:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        else:
            dropped.append(key)
    if dropped:
        log.info("%s: ignoring config keys %s", source, ", ".join(sorted(dropped)))
    return kwargs


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MissingWeightsError("video autoencoder", str(path.parent), path, "no config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleWeightsError(f"{path}: unreadable config: {exc}") from None


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            if not f.is_file():
                raise MissingWeightsError("video autoencoder", str(folder), f, "shard listed in the index is missing")
            state.update(load_file(str(f)))
        return state
    bins = sorted(folder.glob("*.bin"))
    if bins:
        return torch.load(bins[0], map_location="cpu", weights_only=True)
    raise MissingWeightsError("video autoencoder", str(folder), folder, "no *.safetensors weights in the folder")


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into a (possibly meta) module: missing keys and shape mismatches raise by name,
    unexpected keys are logged."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or mismatched:
        raise IncompatibleWeightsError(f"{source}: {len(missing)} missing keys {_preview(missing)}, "
                                       f"{len(mismatched)} shape mismatches (checkpoint != model) "
                                       f"{_preview(mismatched)}")
    if unexpected:
        log.warning("%s: %d unexpected keys ignored %s", source, len(unexpected), _preview(unexpected))
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)


def _preview(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}]"
