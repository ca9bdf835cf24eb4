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
                cache_out: Tensor | None = None, act_dtype: torch.dtype | None = None) -> Tensor:
        """x [B, T, S, C] -> [B, T, S, C].

        chunks: (start, end) frame ranges. left_frame [B, S, C]: temporal-conv input of the frame before
        this call (streaming cache), None for zeros. cache_out [B, S, C]: receives this call's last frame.
        x may come as E4M3 codes under the FP8 inverted conv's static input scale (`prequantized_input_scale`;
        kernels.norm_modulate), with act_dtype the activations' dtype.
        """
        B, T, S, C = x.shape
        h, w = grid
        dtype = act_dtype or x.dtype
        # Token-major throughout: the 1x1 convs are GEMMs over [tokens, channels] and SiLU + depthwise conv + GLU
        # gate is one op, a Triton kernel on CUDA (kernels.glu_conv), instead of cuDNN convs on NCHW views.
        if x.dtype == torch.float8_e4m3fn:
            y = self.inverted_conv.conv(x.reshape(B * T * S, C), out_dtype=dtype)
        else:
            y = _pointwise(self.inverted_conv.conv, x.reshape(B * T * S, C))
        depth, point = self.depth_conv.conv, self.point_conv.conv
        # An FP8 point conv with a calibrated static input scale (quant/calibrate.py) gets its input from the
        # depthwise kernel already quantized: no separate quantizing pass over the M-channel activations.
        scale = getattr(point, "static_input_scale", None)
        y = depthwise_glu(y.view(B * T, h, w, -1), depth.weight, depth.bias, silu_input=True, out_scale=scale)
        if scale is None:
            y = _pointwise(point, y.view(B * T * S, -1)).view(B, T, S, C)
        else:
            y = point(y.view(B * T * S, -1), out_dtype=dtype).view(B, T, S, C)
        return y + self.temporal_mix(y, chunks, left_frame, cache_out)

    def prequantized_input_scale(self) -> Tensor | None:
        """The static scale under which `forward` takes its input as E4M3 codes (an FP8 inverted conv calibrated
        per tensor, without forward hooks), else None."""
        conv = self.inverted_conv.conv
        if conv._forward_pre_hooks or conv._forward_hooks:   # calibration must see real inputs
            return None
        return getattr(conv, "static_input_scale", None)

    def temporal_mix(self, y: Tensor, chunks, left_frame, cache_out) -> Tensor:
        if isinstance(self.t_conv, nn.Conv2d) and is_tap_major(self.t_conv):
            out = _temporal_mix_by_taps(y, self.t_conv.weight, chunks, left_frame)
        elif getattr(self.t_conv, "tap_weights", None) is not None:   # FP8, one GEMM per tap (compile_blocks)
            out = self.t_conv.mix_by_taps(y, chunks, left_frame)
        else:
            out = self._temporal_mix_interleaved(y, chunks, left_frame)
        if cache_out is not None:   # after the mix: the cache may hand the same buffer as left_frame
            cache_out.copy_(y[:, -1])
        return out

    def _temporal_mix_interleaved(self, y: Tensor, chunks, left_frame) -> Tensor:
        B, T, S, C = y.shape
        zero = y.new_zeros(B, 1, S, C)
        prev = torch.cat([zero if left_frame is None else left_frame[:, None].to(y.dtype), y[:, :-1]], dim=1)
        nxt = torch.cat([y[:, 1:], zero], dim=1)
        for _, end in chunks[:-1]:
            nxt[:, end - 1] = 0                                     # no look-ahead past a chunk end
        # One GEMM over the three taps: [prev, y, next] interleaved per channel is the (C_in, tap) order of the
        # conv weight, so its [C_out, C_in * 3] view needs no copy (three GEMMs on w[:, :, k] each copied a
        # strided C x C weight per call).
        taps = torch.stack([prev, y, nxt], dim=-1).view(B * T * S, C * 3)
        if isinstance(self.t_conv, nn.Conv2d):
            out = taps @ self.t_conv.weight.reshape(C, -1).T
        else:   # quantized (quant.linear, compact scope): its own GEMM (FP8 x FP8 for fp8), seen by forward hooks
            out = self.t_conv(taps)
        return out.view(B, T, S, C)


def store_tap_major_(conv: nn.Conv2d) -> None:
    """Re-store a (3, 1) temporal conv's weight tap by tap: the same [C_out, C_in, 3, 1] parameter (state dict, loading
    and `.to()` see no difference), laid out in memory as [3, C_out, C_in], so each tap's [C_out, C_in] matrix is
    contiguous and `temporal_mix` runs one GEMM per tap on shifted frames instead of stacking the three shifted
    copies of its input first (the stacking pass wrote a [tokens, 3 C] tensor: ~44 us per call at the full model's
    chunk shape, 100 calls per chunk; H200 profile, round 20b). `compile_blocks` applies it (the fast path)."""
    w = conv.weight
    conv.weight = nn.Parameter(w.detach().permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3),
                               requires_grad=w.requires_grad)


def store_depthwise_tap_major_(conv: nn.Conv2d) -> None:
    """Re-store a 3x3 depthwise conv's weight tap by tap: the same [C, 1, 3, 3] parameter, laid out in memory as
    [9, C], so the depthwise + GLU kernel's per-tap load over a block of channels is one contiguous run instead of
    a stride-9 gather (the kernel reads the weight with its strides, either layout). `compile_blocks` applies it."""
    w = conv.weight
    conv.weight = nn.Parameter(depthwise_tap_major(w.detach()), requires_grad=w.requires_grad)


def depthwise_tap_major(weight: Tensor) -> Tensor:
    """The same [C, 1, 3, 3] values with [9, C] memory (a copy)."""
    c = weight.shape[0]
    return weight.reshape(c, 9).t().contiguous().t().reshape(weight.shape)


def is_tap_major(conv: nn.Conv2d) -> bool:
    w = conv.weight
    return w.dim() == 4 and w.shape[2] == 3 and w[:, :, 0, 0].is_contiguous()


def _temporal_mix_by_taps(y: Tensor, weight: Tensor, chunks, left_frame: Tensor | None) -> Tensor:
    """temporal_mix with a tap-major weight: out[t] = W0 y[t-1] + W1 y[t] + W2 y[t+1], one GEMM per tap over
    the frames that have that neighbour (y[-1] = left_frame or zeros, no right neighbour past a chunk end)."""
    B, _, S, C = y.shape
    w_prev, w_cur, w_next = (weight[:, :, k, 0] for k in range(3))
    zero = y.new_zeros(B, 1, S, C)
    first = zero if left_frame is None else F.linear(left_frame[:, None].to(y.dtype), w_prev)
    from_prev = torch.cat([first, F.linear(y[:, :-1], w_prev)], dim=1)
    from_next = torch.cat([F.linear(y[:, 1:], w_next), zero], dim=1)
    for _, end in chunks[:-1]:
        from_next[:, end - 1] = 0                                   # no look-ahead past a chunk end
    return F.linear(y, w_cur) + from_prev + from_next


def _pointwise(conv: nn.Module, tokens: Tensor) -> Tensor:
    """A 1x1 conv applied to token-major input [N, in] -> [N, out]. Quantized convs (quant.linear) and the ONNX
    export's placeholders take that input themselves (called as modules, so forward hooks see the call)."""
    if isinstance(conv, nn.Conv2d):
        return F.linear(tokens, conv.weight.flatten(1), conv.bias)
    return conv(tokens)
