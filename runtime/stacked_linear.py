"""Linear layers that read the same input, run as one GEMM.

An attention block's q/k/v projection, its output gate and (GDN blocks) its beta projection all read the
modulated block input: stacked row-wise they are one GEMM of N = 3 C + C + H instead of three, the small ones
(N = C, N = H = 20 heads) no longer paying a launch and a poorly filled wave of tiles each, and the input is read
(and, in FP8, quantized) once.

The layers keep their modules, names and state-dict entries: their weights (and biases) become row blocks (views)
of the stacked matrix, as `CameraAttention.fuse_camera_projections_` does for the camera projections, so
`load_state_dict` into the modules updates the stack. Afterwards do not swap in new parameters with
`assign=True` (the stack would not see them), and save checkpoints before stacking (safetensors refuses tensors
that share storage). Layers with forward hooks (FP8 calibration records inputs with pre-hooks) are called one by
one, so hooks see every call.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from quant.gemm import fp8_linear_stacked
from quant.linear import FP8Linear

ROW_MULTIPLE = 16
"""Rows of the stacked matrix are padded to this (torch._scaled_mm needs N % 16 == 0; aligned slices for bf16)."""


class StackedLinears:
    """One GEMM for `layers` (plain nn.Linear of one dtype, or per-tensor FP8Linear sharing one input scale).
    Build with `stack`, which returns None for layers it cannot stack; call with x [..., in] to get one output
    per layer, as the layers would give (to within one bf16 rounding in static-scale FP8, see
    quant.gemm.fp8_linear_stacked)."""

    def __init__(self, layers: list[nn.Module], weight: Tensor, bias: Tensor | None, fp8: bool):
        self.layers = layers
        self.sizes = [m.out_features for m in layers]
        self.weight = weight
        self.bias = bias
        self.fp8 = fp8

    @classmethod
    def stack(cls, layers: list[nn.Module]) -> StackedLinears | None:
        """Stack `layers` (their weights become views of the stacked matrix), or None where they cannot be:
        mixed or other kinds (NVFP4, per-block FP8), different input sizes, dtypes or devices, or FP8 layers
        whose static input scales differ (they would quantize the shared input differently). A single FP8 layer
        whose output size is not a multiple of 16 is "stacked" alone: its weight is then stored padded once
        (torch._scaled_mm needs N % 16 == 0) instead of padded on every call."""
        if not layers:
            return None
        first = layers[0]
        if all(type(m) is nn.Linear for m in layers):
            fp8 = False
        elif all(type(m) is FP8Linear and m.block_size is None for m in layers):
            fp8 = True
            scales = [m.input_scale for m in layers]
            if any(s is None for s in scales) and not all(s is None for s in scales):
                return None
            if scales[0] is not None and not all(torch.equal(s, scales[0]) for s in scales):
                return None
        else:
            return None
        if any(m.in_features != first.in_features or m.weight.dtype != first.weight.dtype
               or m.weight.device != first.weight.device for m in layers):
            return None
        n = sum(m.out_features for m in layers)
        pad = -n % ROW_MULTIPLE
        if len(layers) == 1 and not (fp8 and pad):
            return None
        with torch.no_grad():
            # torch.cat has no float8 kernel on every backend: stack the bytes.
            raw = [m.weight.detach().view(torch.uint8) if fp8 else m.weight.detach() for m in layers]
            raw.append(raw[0].new_zeros(pad, first.in_features))
            weight = torch.cat(raw)
            weight = weight.view(torch.float8_e4m3fn) if fp8 else weight
            bias = None
            if not fp8 and any(m.bias is not None for m in layers):
                bias = torch.cat([m.bias.detach() if m.bias is not None
                                  else m.weight.new_zeros(m.out_features) for m in layers]
                                 + [first.weight.new_zeros(pad)])
        start = 0
        for m in layers:
            rows = slice(start, start + m.out_features)
            start += m.out_features
            if fp8:
                m._buffers["weight"] = weight[rows]
            else:
                m.weight = nn.Parameter(weight[rows], requires_grad=False)
                if m.bias is not None:
                    m.bias = nn.Parameter(bias[rows], requires_grad=False)
        return cls(layers, weight, bias, fp8)

    @property
    def static_input_scale(self) -> Tensor | None:
        """The FP8 layers' shared static input scale (then `__call__` takes E4M3 codes under it), else None."""
        return self.layers[0].input_scale if self.fp8 else None

    def hooked(self) -> bool:
        """Whether some layer has forward hooks (then the layers must be called one by one)."""
        return any(m._forward_pre_hooks or m._forward_hooks for m in self.layers)

    def __call__(self, x: Tensor, out_dtype: torch.dtype | None = None) -> list[Tensor]:
        """x, or (FP8 layers with a static input scale) its E4M3 codes under that scale with out_dtype."""
        if self.hooked():
            return [m(x) for m in self.layers]
        if self.fp8:
            return fp8_linear_stacked(x, self.weight, [m.weight_scale for m in self.layers], self.sizes,
                                      [m.bias for m in self.layers], self.layers[0].input_scale, out_dtype)
        y = nn.functional.linear(x, self.weight, self.bias)
        return list(y.split(self.sizes + [self.weight.shape[0] - sum(self.sizes)], dim=-1)[:-1])
