"""The quantization entry points.

    quantize(model, config)                      replace in-scope modules in place by quantized ones
    quantize_state_dict(state_dict, config)      same result as a checkpoint (ModelOpt-compatible keys)
    load_quantized_state_dict(model, sd)         build quantized modules straight from packed tensors and load

For every quantized module `<name>` the checkpoint holds `<name>.weight` (packed), `<name>.weight_scale`, for
NVFP4 `<name>.weight_scale_2`, optionally `<name>.input_scale`, and `<name>.bias` unchanged. 1x1 conv weights are
stored 2-D. `quantize(model, p).state_dict()` equals `quantize_state_dict(model.state_dict(), p)` bit for bit.

Quantizing the fp32 release checkpoint with quantize_state_dict is slightly more accurate than quantizing a model
already cast to bf16 (the scales are computed from unrounded weights).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quant.fp8 import quantize_fp8
from quant.linear import (
    FP8Conv1x1,
    FP8Linear,
    FP8TemporalConv,
    NVFP4Conv1x1,
    NVFP4Linear,
    NVFP4TemporalConv,
    QuantLinear,
    is_conv1x1,
    is_temporal_conv,
)
from quant.nvfp4 import quantize_nvfp4
from quant.policy import PolicyError, QuantPolicy, as_policy

_MODULE_CLASSES = {
    ("nvfp4", "linear"): NVFP4Linear,
    ("nvfp4", "conv1x1"): NVFP4Conv1x1,
    ("nvfp4", "temporal_conv"): NVFP4TemporalConv,
    ("fp8", "linear"): FP8Linear,
    ("fp8", "conv1x1"): FP8Conv1x1,
    ("fp8", "temporal_conv"): FP8TemporalConv,
}


def _format_family(policy: QuantPolicy) -> tuple[str, int | None]:
    if policy.format == "nvfp4":
        return "nvfp4", None
    return "fp8", (policy.block_size if policy.format == "fp8_block" else None)


def _module_kind(module: nn.Module) -> str | None:
    """"linear", "conv1x1" or "temporal_conv" ((k, 1) kernel) for a module a quantized module can replace, else
    None (already quantized modules included)."""
    if isinstance(module, QuantLinear):
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if is_conv1x1(module):
        return "conv1x1"
    if is_temporal_conv(module):
        return "temporal_conv"
    return None


def _kind(name: str, module: nn.Module) -> str | None:
    """`_module_kind`, but a conv the policy selected that cannot be quantized (spatial kernel, stride, groups)
    raises: that is a policy bug, not a skip."""
    kind = _module_kind(module)
    if kind is None and isinstance(module, nn.modules.conv._ConvNd):
        raise PolicyError(f"{name}: selected by the quantization policy but it is a {type(module).__name__} with "
                          f"kernel {tuple(module.kernel_size)}, stride {tuple(module.stride)}, groups "
                          f"{module.groups}; only linears, 1x1 and (k, 1) Conv2d can be quantized (add it to "
                          "exclude)")
    return kind


def _install(model: nn.Module, name: str, old: nn.Module, new: nn.Module, kind: str) -> None:
    """Put quantized module `new` in place of `old` (a temporal conv takes its kernel geometry from `old`)."""
    if kind == "temporal_conv":
        new.configure(old)
    _replace(model, name, new)


def select_modules(model: nn.Module, config) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) for every module `config` would quantize, in model order (kind: see _kind)."""
    policy = as_policy(config)
    out = []
    for name, module in model.named_modules():
        if name and policy.selects(name):
            kind = _kind(name, module)
            if kind is not None:
                out.append((name, module, kind))
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def quantize(model: nn.Module, config: QuantPolicy | dict | str | Path, *, allow_empty: bool = False
             ) -> nn.Module:
    """Replace the policy's nn.Linear / 1x1 nn.Conv2d modules of `model` in place by quantized modules.

    Args:
        model: any module tree named like the official checkpoint (`blocks.{i}.attn.qkv`, ...). Weights are
            quantized on the device they live on (a GPU is much faster for the full model).
        config: a QuantPolicy, a dict of its fields, a format name ('nvfp4' / 'fp8' / 'fp8_block' with the
            official scope) or a YAML path.
        allow_empty: if False (default), a policy that selects no module raises PolicyError.
    Returns:
        `model` (modified in place). Quantized modules keep their names; their state-dict keys are the
        checkpoint layout.
    """
    policy = as_policy(config)
    family, block_size = _format_family(policy)
    targets = select_modules(model, policy)
    if not targets and not allow_empty:
        raise PolicyError(f"quantize: the policy selected no nn.Linear / nn.Conv2d (include={policy.include})")
    for name, module, kind in targets:
        cls = _MODULE_CLASSES[family, kind]
        if family == "nvfp4":
            new = cls.from_float(module, name=name)
        else:
            new = cls.from_float(module, block_size=block_size, name=name)
        _install(model, name, module, new, kind)
    return model


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    """Name -> quantized module, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@torch.no_grad()
def quantize_state_dict(state_dict: dict[str, torch.Tensor], config: QuantPolicy | dict | str | Path
                        ) -> dict[str, torch.Tensor]:
    """Quantize a checkpoint's in-scope weights; other entries are passed through untouched.

    A `<name>.weight` is quantized when the policy selects `<name>` and the tensor is floating point with shape
    [out, in] (linear), [out, in, 1, 1] (1x1 conv) or [out, in, k, 1] (temporal conv, stored as [out, in * k]).
    Selected 1-D tensors (norm weights) are left alone; other selected shapes (spatial convs) raise PolicyError.

    Returns:
        a new dict, same key order, with `<name>.weight_scale` (and `.weight_scale_2` for NVFP4) inserted after
        each quantized weight.
    """
    policy = as_policy(config)
    family, block_size = _format_family(policy)
    out: dict[str, torch.Tensor] = {}
    for key, t in state_dict.items():
        name = key[: -len(".weight")] if key.endswith(".weight") else None
        if name is None or not policy.selects(name) or not t.is_floating_point() or t.ndim < 2:
            out[key] = t
            continue
        if not (t.ndim == 2 or (t.ndim == 4 and t.shape[3] == 1)):
            raise PolicyError(f"{name}: selected by the quantization policy but its weight has shape "
                              f"{tuple(t.shape)}, not a linear [out, in] or a conv [out, in, k, 1]")
        w = t.reshape(t.shape[0], -1)
        if family == "nvfp4":
            q = quantize_nvfp4(w, name=key)
            out[key], out[f"{name}.weight_scale"], out[f"{name}.weight_scale_2"] = q
        else:
            q = quantize_fp8(w, block_size, name=key)
            out[key], out[f"{name}.weight_scale"] = q.weight, q.weight_scale
    return out


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    bias = getattr(module, "bias", None)
    return module.weight.device, (None if bias is None else bias.dtype)


@torch.no_grad()
def load_quantized_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, strict: bool = True,
                              assign: bool = False, block_size: int | None = None) -> nn.Module:
    """Load a (partly) quantized checkpoint into a high-precision model, building each quantized module directly
    from its packed tensors.

    Every nn.Linear / 1x1 nn.Conv2d `<name>` for which the checkpoint has `<name>.weight_scale` is replaced: a uint8
    weight makes an NVFP4 module, a float8_e4m3fn weight an FP8 one (per-block size inferred from the scale grid
    unless `block_size` is given). All other keys go through model.load_state_dict. The model may live on the
    meta device when `assign=True` (the checkpoint tensors are then used as they are).

    Raises:
        ValueError on a module / checkpoint shape mismatch; RuntimeError naming every missing and unexpected key
        when `strict`.
    Returns:
        `model`, modified in place.
    """
    consumed: set[str] = set()
    replaced: set[str] = set()
    for name, module in list(model.named_modules()):
        if not name or f"{name}.weight_scale" not in state_dict or isinstance(module, QuantLinear):
            continue
        kind = _module_kind(module)
        if kind is None:
            raise ValueError(f"{name}: the checkpoint holds a quantized weight but the model's module is a "
                             f"{type(module).__name__}, which cannot take one")
        if kind == "linear":
            in_f, out_f = module.in_features, module.out_features
        else:   # a temporal conv's GEMM reads its k frames as k x in_channels features
            in_f, out_f = module.in_channels * module.kernel_size[0], module.out_channels
        keys = [k for k in (f"{name}.weight", f"{name}.weight_scale", f"{name}.weight_scale_2",
                            f"{name}.input_scale", f"{name}.bias") if k in state_dict]
        if f"{name}.weight" not in state_dict:
            raise ValueError(f"{name}: the checkpoint has {name}.weight_scale but no {name}.weight")
        weight = state_dict[f"{name}.weight"]
        bias = state_dict.get(f"{name}.bias")
        if (module.bias is None) != (bias is None):
            raise ValueError(f"{name}: the model's module {'has no' if module.bias is None else 'has a'} bias but "
                             f"the checkpoint {'has' if bias is not None else 'has no'} {name}.bias")
        input_scale = state_dict.get(f"{name}.input_scale")
        if weight.dtype == torch.uint8:
            if f"{name}.weight_scale_2" not in state_dict:
                raise ValueError(f"{name}: NVFP4 weight without {name}.weight_scale_2")
            new = _MODULE_CLASSES["nvfp4", kind].from_tensors(
                weight, state_dict[f"{name}.weight_scale"], state_dict[f"{name}.weight_scale_2"], bias,
                input_scale, name=name)
        elif weight.dtype == torch.float8_e4m3fn:
            new = _MODULE_CLASSES["fp8", kind].from_tensors(
                weight, state_dict[f"{name}.weight_scale"], bias, input_scale, block_size, name=name)
        else:
            raise ValueError(f"{name}: {name}.weight_scale is present but {name}.weight has dtype {weight.dtype} "
                             "(expected uint8 for NVFP4 or float8_e4m3fn for FP8)")
        if (new.out_features, new.in_features) != (out_f, in_f):
            raise ValueError(f"{name}: checkpoint weight is [{new.out_features}, {new.in_features}] but the model's "
                             f"{type(module).__name__} is [{out_f}, {in_f}]")
        if not assign:
            device, bias_dtype = _module_device_dtype(module)
            if device.type != "meta":
                new.to(device)
            if new.bias is not None and bias_dtype is not None:
                new.bias.data = new.bias.data.to(bias_dtype)
        _install(model, name, module, new, kind)
        consumed.update(keys)
        replaced.add(name)

    rest = {k: v for k, v in state_dict.items() if k not in consumed}
    result = model.load_state_dict(rest, strict=False, assign=assign)
    missing = [k for k in result.missing_keys if k.rpartition(".")[0] not in replaced]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        lines = []
        if missing:
            lines.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
        raise RuntimeError("load_quantized_state_dict: " + "; ".join(lines))
    return model
