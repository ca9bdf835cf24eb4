"""Model configuration: frozen, typed dataclasses loaded from the YAML presets in `configs/`.

No torch here: the explorer client and the camera math read configs on machines without the model.
"""
from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from configs import PRESET_DIR, preset_names


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    """Preset name, used in logs, checkpoints and benchmark records."""
    depth: int
    """Number of transformer blocks."""
    hidden_size: int
    """Channels of the residual stream (C)."""
    num_heads: int
    """Attention heads of every branch (GDN, softmax, camera, cross-attention)."""
    head_dim: int
    """Channels per head; hidden_size = num_heads * head_dim."""
    softmax_every_n: int
    """Block i is a softmax-attention block iff (i + 1) % softmax_every_n == 0; the others are GDN blocks."""
    in_channels: int
    """Latent channels of the video autoencoder (128 for LTX-2)."""
    caption_channels: int
    """Channels of the text encoder's hidden states (2304 for Gemma-2-2b)."""
    text_max_length: int
    """Text tokens per prompt (300 for the official recipe)."""
    mlp_ratio: float
    """FFN hidden channels = int(hidden_size * mlp_ratio)."""
    conv_kernel_size: int
    """Taps of the causal K short convolution along latent frames."""
    t_kernel_size: int
    """Taps of the FFN temporal convolution (3: frames t-1, t, t+1)."""
    rope_theta: float
    """RoPE base frequency."""
    rope_max_len: int
    """Positions in each RoPE axis table."""
    height: int
    """Video height in pixels."""
    width: int
    """Video width in pixels."""
    vae_stride: tuple[int, int, int]
    """Autoencoder compression (raw frames, pixels, pixels) per latent frame / latent pixel."""
    chunk_size: int
    """Latent frames per autoregressive chunk after the first."""
    first_chunk_size: int
    """Latent frames of the first chunk (it holds the image frame)."""
    gdn_eps: float = 1e-8
    """Epsilon of the GDN num / den normalisation."""
    y_norm_scale: float = 0.01
    """Initial weight of the RMSNorm on projected text tokens."""
    main_softmax_scale_dim: int = 128
    """SDPA scale of the main softmax branch is 1/sqrt(this) (112 unpadded, 128 where heads are padded)."""
    cam_softmax_scale_dim: int = 128
    """SDPA scale of the camera softmax branch is 1/sqrt(this)."""
    kv_cache_chunks: int = 2
    """Chunks of softmax K/V kept as context (official num_cached_blocks; includes the sink when on)."""
    sink: bool = True
    """Keep the first chunk's K/V for the whole session (attention sink)."""
    denoising_timesteps: tuple[int, ...] = (1000, 960, 889, 727, 0)
    """Distilled sampler timesteps, descending, ending with 0."""
    fps: int = 16
    """Raw video frames per second."""
    text_encoder: str = "gemma-2-2b-it"
    """Text encoder the model was trained with."""
    vae: str = "ltx2-causal"
    """Video autoencoder the latents belong to."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
        positive = ["depth", "hidden_size", "num_heads", "head_dim", "softmax_every_n", "in_channels",
                    "caption_channels", "text_max_length", "conv_kernel_size", "t_kernel_size",
                    "rope_max_len", "height", "width", "chunk_size", "first_chunk_size", "fps",
                    "main_softmax_scale_dim", "cam_softmax_scale_dim", "kv_cache_chunks"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio: must be positive, got {self.mlp_ratio}")
        if self.hidden_size != self.num_heads * self.head_dim:
            raise ConfigError(f"hidden_size: {self.hidden_size} != num_heads * head_dim "
                              f"({self.num_heads} * {self.head_dim})")
        # UCPE: the first half of each head is groups of 4; the second half takes a quarter of each RoPE axis.
        if self.head_dim % 8 != 0:
            raise ConfigError(f"head_dim: must be a multiple of 8 (UCPE groups of 4), got {self.head_dim}")
        t, h, w = self.rope_split
        if min(t, h, w) <= 0 or t % 4 or h % 4 or w % 4:
            raise ConfigError(f"head_dim: RoPE split {t}/{h}/{w} of {self.head_dim} must be positive "
                              "multiples of 4 (camera RoPE takes half of each axis' frequencies)")
        if len(self.vae_stride) != 3 or min(self.vae_stride) <= 0:
            raise ConfigError(f"vae_stride: expected 3 positive ints, got {self.vae_stride}")
        if self.height % self.vae_stride[1] or self.width % self.vae_stride[2]:
            raise ConfigError(f"height/width: {self.height}x{self.width} not divisible by vae_stride "
                              f"{self.vae_stride[1]}x{self.vae_stride[2]}")
        ts = self.denoising_timesteps
        if len(ts) < 2 or ts[-1] != 0 or any(a <= b for a, b in itertools.pairwise(ts)) or ts[0] > 1000:
            raise ConfigError(f"denoising_timesteps: must be strictly descending within [0, 1000] and end "
                              f"with 0, got {list(ts)}")
        if self.first_chunk_size < 1:
            raise ConfigError("first_chunk_size: must be >= 1")

    # Derived quantities --------------------------------------------------------------------------------
    @property
    def latent_height(self) -> int:
        return self.height // self.vae_stride[1]

    @property
    def latent_width(self) -> int:
        return self.width // self.vae_stride[2]

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_height * self.latent_width

    @property
    def frames_per_latent(self) -> int:
        return self.vae_stride[0]

    @property
    def plucker_channels(self) -> int:
        """6 Plucker channels for each raw frame of a latent frame (48 for the official 8x stride)."""
        return 6 * self.vae_stride[0]

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def softmax_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.depth) if (i + 1) % self.softmax_every_n == 0)

    @property
    def gdn_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.depth) if (i + 1) % self.softmax_every_n != 0)

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Real dims of each head given to the (t, h, w) RoPE axes: wan_rope's 40/36/36 for 112."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vae_stride"] = list(self.vae_stride)
        d["denoising_timesteps"] = list(self.denoising_timesteps)
        return d

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _field_types() -> dict:
    return typing.get_type_hints(ModelConfig)


def _check_type(key: str, value, expected) -> None:
    origin = typing.get_origin(expected)
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{key}: expected {getattr(expected, '__name__', expected)}, "
                          f"got {type(value).__name__} {value!r}")


def config_from_dict(data: dict, source: str = "<dict>") -> ModelConfig:
    """Build a config from a mapping; unknown keys and bad values raise ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = _field_types()
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
    missing = [f.name for f in dataclasses.fields(ModelConfig)
               if f.default is dataclasses.MISSING and f.name not in data]
    if missing:
        raise ConfigError(f"{source}: missing key {missing[0]!r}")
    values = {}
    for key, value in data.items():
        if typing.get_origin(hints[key]) is tuple:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{source}: {key}: expected a list, got {type(value).__name__} {value!r}")
            value = tuple(value)
        elif hints[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif hints[key] is float and isinstance(value, str):
            # PyYAML reads exponents without a dot (1e-08) as strings.
            try:
                value = float(value)
            except ValueError:
                pass
        values[key] = value
    try:
        return ModelConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(name_or_path: str | Path | ModelConfig) -> ModelConfig:
    """A preset name (`sana-wm-streaming`, `tiny-world`, ...), a YAML path, or a config (returned as is)."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    text = str(name_or_path)
    path = PRESET_DIR / f"{text}.yaml" if text in preset_names() else Path(text)
    if not path.is_file():
        raise ConfigError(f"no config preset or file named {text!r} (presets: {', '.join(preset_names())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(data, source=str(path))
