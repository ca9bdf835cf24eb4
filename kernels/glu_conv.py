"""The middle of the FFN (GLUMBConv, spec section 1.6): depthwise 3x3 conv, bias and GLU gate in one pass.

    y = depthwise_conv3x3(act, weight, bias, zero padding 1)     act [N, H, W, 2M] (after the inverted conv's SiLU,
                                                                 or SiLU applied here with silu_input=True)
    a, g = y[..., :M], y[..., M:]
    out = a * silu(g)                                            [N, H, W, M]

The tensors are token-major (channels last), as the FFN's 1x1 convs run as GEMMs over [tokens, channels]. Stock
PyTorch spends a cuDNN depthwise conv (it wrote and re-read the 2M-channel result) plus a gating pass on this:
at the full model's shape (3 frames of 22 x 40 tokens, 2M = 13440) about 130 us per call, 100 calls per chunk
(H200 profile, round 9); `depthwise_glu` reads act once and writes the M-channel result once on CUDA.

`depthwise_glu_reference` is the PyTorch version (fp32 math, result in act's dtype); the public op picks Triton on
CUDA and the reference elsewhere (`kernels.dispatch`).

With `out_scale` (a float32 scalar tensor) the result is written as FP8 E4M3 instead, `e4m3(clamp(out / out_scale,
+-448))` from the fp32 values: the static per-tensor input quantization of the FFN's next layer (an FP8 `point_conv`
with a calibrated `input_scale`, quant/calibrate.py), which then takes it as is. That saves the separate quantizing
pass over the M-channel result and half of the kernel's write.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dispatch import use_triton

__all__ = ["E4M3_MAX", "depthwise_glu", "depthwise_glu_reference"]

E4M3_MAX = 448.0   # largest finite float8_e4m3fn (as quant.fp8.E4M3_MAX; kernels/ does not import quant/)


def _check(act: Tensor, weight: Tensor, bias: Tensor | None, out_scale: Tensor | None = None) -> None:
    if out_scale is not None and (out_scale.numel() != 1 or out_scale.dtype != torch.float32):
        raise ValueError(f"depthwise_glu: out_scale must be a float32 scalar tensor, got {out_scale.dtype} "
                         f"{tuple(out_scale.shape)}")
    if act.dim() != 4 or act.shape[-1] % 2:
        raise ValueError(f"depthwise_glu: expected act [N, H, W, 2M], got {tuple(act.shape)}")
    c = act.shape[-1]
    if tuple(weight.shape) != (c, 1, 3, 3):
        raise ValueError(f"depthwise_glu: weight {tuple(weight.shape)} != ({c}, 1, 3, 3)")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"depthwise_glu: bias {tuple(bias.shape)} != ({c},)")


def depthwise_glu_reference(act: Tensor, weight: Tensor, bias: Tensor | None, *, silu_input: bool = False,
                            out_scale: Tensor | None = None) -> Tensor:
    """PyTorch version of `depthwise_glu` (same arguments and result)."""
    _check(act, weight, bias, out_scale)
    x = F.silu(act.float()) if silu_input else act.float()
    y = F.conv2d(x.permute(0, 3, 1, 2), weight.float(), None if bias is None else bias.float(),
                 padding=1, groups=act.shape[-1])
    a, g = y.chunk(2, dim=1)
    out = (a * F.silu(g)).permute(0, 2, 3, 1)
    if out_scale is not None:
        return (out / out_scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return out.to(act.dtype)


@torch.library.custom_op("sana_wm::depthwise_glu", mutates_args=())
def _depthwise_glu_op(act: Tensor, weight: Tensor, bias: Tensor | None, silu_input: bool,
                      out_scale: Tensor | None = None) -> Tensor:
    from kernels.glu_conv_triton import depthwise_glu_triton

    return depthwise_glu_triton(act, weight, bias, silu_input=silu_input, out_scale=out_scale)


@_depthwise_glu_op.register_fake
def _(act, weight, bias, silu_input, out_scale=None):
    n, h, w, c = act.shape
    return act.new_empty((n, h, w, c // 2), dtype=act.dtype if out_scale is None else torch.float8_e4m3fn)


def depthwise_glu(act: Tensor, weight: Tensor, bias: Tensor | None, *, silu_input: bool = False,
                  out_scale: Tensor | None = None, impl: str = "auto") -> Tensor:
    """Depthwise 3x3 conv (zero padding) + bias, then the GLU gate: [N, H, W, 2M] -> [N, H, W, M] in act's dtype
    (or FP8 E4M3 with `out_scale`).

    Args:
        act: [N, H, W, 2M] activations, channels last (any float dtype; read with any strides of N, H, W as
            long as the channels are contiguous).
        weight: [2M, 1, 3, 3] depthwise kernel (an nn.Conv2d's with groups = 2M).
        bias: [2M] or None.
        silu_input: apply SiLU to act first (the FFN's activation after its inverted conv) inside the op.
        out_scale: float32 scalar: write e4m3(clamp(out / out_scale, +-448)) (float8_e4m3fn) instead.
        impl: "auto" (Triton on CUDA), "triton" or "reference".
    """
    if use_triton(act, impl):
        from kernels.glu_conv_triton import CONFIG

        _check(act, weight, bias, out_scale)
        if silu_input and not CONFIG[-1]:
            # The launch config keeps SiLU out of the kernel: a plain op here, which torch.compile fuses into the
            # pass that produces act (inside the custom op it would be one more eager pass).
            act, silu_input = F.silu(act), False
        return torch.ops.sana_wm.depthwise_glu(act, weight, bias, silu_input, out_scale)
    return depthwise_glu_reference(act, weight, bias, silu_input=silu_input, out_scale=out_scale)
