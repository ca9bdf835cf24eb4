"""Precision policy as data: which modules are quantized, to which format; everything else stays bf16.

Patterns are `fnmatch` globs (case-sensitive; `*` also crosses dots) over module names in the official checkpoint
layout (spec section 7.3), e.g. `blocks.7.attn.qkv`. A module is quantized iff some `include` pattern matches its
name and no `exclude` pattern does, and it is an nn.Linear or a 1x1 / stride-1 / ungrouped nn.Conv2d.

The default scope mirrors the official Stage-1 recipe (spec section 9: "self_attn+cross+ffn" per block): the
per-block attention projections, the cross-attention linears and the two 1x1 FFN convs. Embedders, the final
layer, the camera projections (the camera residual is small and is quantized away otherwise), norms and convs with
spatial / temporal kernels stay bf16.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("nvfp4", "fp8", "fp8_block")
"""nvfp4: W4A16 with NVFP4 weights; fp8: W8A8 with per-tensor scales; fp8_block: W8A16 with b x b weight scales."""

DEFAULT_INCLUDE = (
    "blocks.*.attn.qkv",
    "blocks.*.attn.proj",
    "blocks.*.attn.beta_proj",
    "blocks.*.attn.gate_proj",
    "blocks.*.attn.output_gate",
    "blocks.*.cross_attn.*",
    "blocks.*.mlp.inverted_conv.conv",
    "blocks.*.mlp.point_conv.conv",
)
DEFAULT_EXCLUDE = (
    "x_embedder*",
    "raymap_embedder*",
    "plucker_embedder*",
    "t_embedder*",
    "t_block*",
    "y_embedder*",
    "final_layer*",
    "*_proj_cam",
    "*plucker_proj*",
    "*norm*",
    "*.depth_conv*",
    "*.t_conv*",
    "*.conv_k*",
)


TCONV_INCLUDE = DEFAULT_INCLUDE + ("blocks.*.mlp.t_conv",)
TCONV_EXCLUDE = tuple(p for p in DEFAULT_EXCLUDE if p != "*.t_conv*")

COMPACT_INCLUDE = DEFAULT_INCLUDE + (
    "blocks.*.attn.q_proj_cam",
    "blocks.*.attn.k_proj_cam",
    "blocks.*.attn.v_proj_cam",
    "blocks.*.attn.out_proj_cam",
    "blocks.*.plucker_proj",
    "blocks.*.mlp.t_conv",
)
COMPACT_EXCLUDE = tuple(p for p in DEFAULT_EXCLUDE if p not in ("*_proj_cam", "*plucker_proj*", "*.t_conv*"))
SCOPES = {"official": (DEFAULT_INCLUDE, DEFAULT_EXCLUDE), "official+tconv": (TCONV_INCLUDE, TCONV_EXCLUDE),
          "compact": (COMPACT_INCLUDE, COMPACT_EXCLUDE)}
"""official: the release's scope (camera projections, Plucker projections and the FFN temporal conv stay bf16);
official+tconv: the FFN temporal conv too (3 x 2240 -> 2240 per token; the release keeps it bf16 only because it
quantizes nn.Linear modules and this is a Conv2d), the camera and Plucker projections still bf16 (FP8 with static
scales on the shipped model: 39.46 vs 39.71 dB against bf16, docs/quantization.md); compact: all three (the full
2.6B model then takes 1.57 GB in NVFP4 instead of 2.72 GB), at a measured cost in quality (docs/quantization.md).
Embedders, norms, the final layer and the GDN short convs stay bf16 in every scope."""


class PolicyError(ValueError):
    """A quantization policy is invalid; the message names the field."""


@dataclass(frozen=True)
class QuantPolicy:
    format: str = "nvfp4"
    """Weight format of the selected modules: one of FORMATS."""
    include: tuple[str, ...] = DEFAULT_INCLUDE
    """Globs over module names; a module must match at least one to be quantized."""
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    """Globs over module names; a module matching any of them stays in high precision."""
    block_size: int = 128
    """Edge of the square weight-scale blocks for format fp8_block (ignored by the other formats)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise PolicyError(f"format: expected one of {', '.join(FORMATS)}, got {self.format!r}")
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
                raise PolicyError(f"{key}: expected a list of non-empty glob strings, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        if not self.include:
            raise PolicyError("include: empty, the policy would quantize nothing")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise PolicyError(f"block_size: expected a positive int, got {self.block_size!r}")

    def selects(self, name: str) -> bool:
        """Whether the module called `name` is in scope (type eligibility is checked by quantize)."""
        return (any(fnmatch.fnmatchcase(name, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    def replace(self, **changes) -> QuantPolicy:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> QuantPolicy:
        """Missing keys take the official defaults; unknown keys raise PolicyError."""
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
        values = dict(data)
        for key in ("include", "exclude"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise PolicyError(f"{source}: {key}: expected a list of globs, got {values[key]!r}")
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> QuantPolicy:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(path))


def default_policy(format: str = "nvfp4", scope: str = "official") -> QuantPolicy:
    """The given weight format over one of the named SCOPES (default: the official one)."""
    if scope not in SCOPES:
        raise PolicyError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    include, exclude = SCOPES[scope]
    return QuantPolicy(format=format, include=include, exclude=exclude)


def as_policy(config: QuantPolicy | dict | str | Path) -> QuantPolicy:
    """A QuantPolicy, a dict of its fields, a format name ('nvfp4', 'fp8', 'fp8_block': default scope) or a
    YAML file path."""
    if isinstance(config, QuantPolicy):
        return config
    if isinstance(config, dict):
        return QuantPolicy.from_dict(config)
    if isinstance(config, str) and config in FORMATS:
        return default_policy(config)
    if isinstance(config, (str, Path)) and Path(config).is_file():
        return QuantPolicy.from_yaml(config)
    raise PolicyError(f"quantization config {config!r} is not a QuantPolicy, a dict, a format name "
                      f"({', '.join(FORMATS)}) or an existing YAML file")
