"""GLUMBConvTemp: the per-frame GLU MBConv FFN with a dense temporal conv (spec section 1.6).

The temporal conv mixes frames t-1, t, t+1. Its left neighbour crosses chunk boundaries (the previous
chunk's last frame, or the streaming cache); its right neighbour is zero at every chunk end, so a chunk
never sees the future.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.glu_conv import depthwise_glu


class ConvLayer(nn.Module):
    """A Conv2d under `.conv` (the checkpoints' `mlp.*_conv.conv.*` keys)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class GLUMBConvTemp(nn.Module):
    def __init__(self, hidden: int, mlp_hidden: int, t_kernel: int = 3):
        super().__init__()
        if t_kernel != 3:
            raise ValueError("GLUMBConvTemp: only a 3-tap temporal conv is supported")
        self.inverted_conv = ConvLayer(hidden, 2 * mlp_hidden, 1)
        self.depth_conv = ConvLayer(2 * mlp_hidden, 2 * mlp_hidden, 3, groups=2 * mlp_hidden)
        self.point_conv = ConvLayer(mlp_hidden, hidden, 1, bias=False)
        self.t_conv = nn.Conv2d(hidden, hidden, kernel_size=(3, 1), padding=(1, 0), bias=False)
        nn.init.zeros_(self.t_conv.weight)

    def forward(self, x: Tensor, grid: tuple[int, int], chunks, left_frame: Tensor | None = None,
                cache_out: Tensor | None = None) -> Tensor:
        """x [B, T, S, C] -> [B, T, S, C].

        chunks: (start, end) frame ranges. left_frame [B, S, C]: temporal-conv input of the frame before
        this call (streaming cache), None for zeros. cache_out [B, S, C]: receives this call's last frame.
        """
        B, T, S, C = x.shape
        h, w = grid
        # Token-major throughout: the 1x1 convs are GEMMs over [tokens, channels] and SiLU + depthwise conv + GLU
        # gate is one op, a Triton kernel on CUDA (kernels.glu_conv), instead of cuDNN convs on NCHW views.
        y = _pointwise(self.inverted_conv.conv, x.reshape(B * T * S, C))
        depth = self.depth_conv.conv
        y = depthwise_glu(y.view(B * T, h, w, -1), depth.weight, depth.bias, silu_input=True)
        y = _pointwise(self.point_conv.conv, y.view(B * T * S, -1)).view(B, T, S, C)
        return y + self.temporal_mix(y, chunks, left_frame, cache_out)

    def temporal_mix(self, y: Tensor, chunks, left_frame, cache_out) -> Tensor:
        B, T, S, C = y.shape
        zero = y.new_zeros(B, 1, S, C)
        prev = torch.cat([zero if left_frame is None else left_frame[:, None].to(y.dtype), y[:, :-1]], dim=1)
        nxt = torch.cat([y[:, 1:], zero], dim=1)
        for _, end in chunks[:-1]:
            nxt[:, end - 1] = 0                                     # no look-ahead past a chunk end
        if cache_out is not None:
            cache_out.copy_(y[:, -1])
        # One GEMM over the three taps: [prev, y, next] interleaved per channel is the (C_in, tap) order of the
        # conv weight, so its [C_out, C_in * 3] view needs no copy (three GEMMs on w[:, :, k] each copied a
        # strided C x C weight per call).
        taps = torch.stack([prev, y, nxt], dim=-1).view(B * T * S, C * 3)
        if isinstance(self.t_conv, nn.Conv2d):
            out = taps @ self.t_conv.weight.reshape(C, -1).T
        else:   # quantized (quant.linear, compact scope): its own GEMM (FP8 x FP8 for fp8), seen by forward hooks
            out = self.t_conv(taps)
        return out.view(B, T, S, C)


def _pointwise(conv: nn.Module, tokens: Tensor) -> Tensor:
    """A 1x1 conv applied to token-major input [N, in] -> [N, out]. Quantized convs (quant.linear) and the ONNX
    export's placeholders take that input themselves (called as modules, so forward hooks see the call)."""
    if isinstance(conv, nn.Conv2d):
        return F.linear(tokens, conv.weight.flatten(1), conv.bias)
    return conv(tokens)
