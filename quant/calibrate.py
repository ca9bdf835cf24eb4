"""Static FP8 activation scales by max calibration (ModelOpt's FP8 recipe: one per-tensor input scale per layer).

A per-tensor FP8 layer (`FP8Linear` with a scalar weight scale) quantizes its input per token by default: a row
amax before every GEMM. With a static `input_scale` the quantization is a plain scale-and-cast, which the kernel
that produces the activations does on the fly (no reduction), and TensorRT's explicit quantization needs exactly
that scale. `calibrate_fp8_inputs(model, run)` records each layer's input amax while `run()` streams a few chunks
and sets `input_scale = amax / 448`.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.fp8 import E4M3_MAX

__all__ = ["calibrate_fp8_inputs", "fp8_per_tensor_layers", "set_fp8_input_scales"]


def fp8_per_tensor_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the FP8 layers with per-tensor weight scales (the W8A8 ones)."""
    from quant.linear import FP8Linear

    return {n: m for n, m in model.named_modules() if isinstance(m, FP8Linear) and m.block_size is None}


@torch.no_grad()
def calibrate_fp8_inputs(model: nn.Module, run) -> dict[str, float]:
    """Record each per-tensor FP8 layer's input amax over `run()` (a few streaming chunks, run eagerly: forward
    pre-hooks see every call), then give every such layer the static scale amax / 448 (a layer never called, or
    only on zeros, gets 1.0). Returns {layer: scale}."""
    layers = fp8_per_tensor_layers(model)
    if not layers:
        raise ValueError("calibrate_fp8_inputs: the model has no per-tensor FP8 layers (quantize it to fp8 first)")
    for mod in layers.values():   # earlier static scales off: every layer sees (and quantizes) its input as usual
        if "input_scale" in mod._buffers:
            del mod.input_scale
            mod.input_scale = None
    amax = {name: torch.zeros((), dtype=torch.float32, device=mod.weight.device) for name, mod in layers.items()}
    hooks = []
    for name, mod in layers.items():
        def hook(_m, args, name=name):
            torch.maximum(amax[name], args[0].detach().abs().amax().float(), out=amax[name])   # no host sync
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    scales = {n: float(a) / E4M3_MAX if float(a) > 0 else 1.0 for n, a in amax.items()}
    set_fp8_input_scales(model, scales)
    return scales


@torch.no_grad()
def set_fp8_input_scales(model: nn.Module, scales: dict[str, float]) -> None:
    """Static activation scales for the named per-tensor FP8 layers."""
    layers = fp8_per_tensor_layers(model)
    unknown = sorted(set(scales) - set(layers))
    if unknown:
        raise KeyError(f"set_fp8_input_scales: not per-tensor FP8 layers of this model: {unknown[:5]}")
    for name, scale in scales.items():
        mod = layers[name]
        if "input_scale" in mod._buffers:
            mod.input_scale.fill_(scale)
        else:
            del mod.input_scale      # a plain None attribute until now
            mod.register_buffer("input_scale", torch.tensor(scale, dtype=torch.float32,
                                                            device=mod.weight_scale.device))
