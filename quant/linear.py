"""Quantized drop-in modules for nn.Linear, 1x1 nn.Conv2d and (k, 1) temporal nn.Conv2d.

Each holds its weight in the checkpoint layout under the checkpoint names (`weight`, `weight_scale`,
`weight_scale_2`, optional `input_scale`, `bias`), so `state_dict()` of a quantized model is the saved quantized
layout and `load_state_dict` of that layout needs no conversion. The weight of a 1x1 conv is stored 2-D
([out, in] before packing), like a linear's; a (k, 1) conv's as [out, in * k].

Module.to(dtype) / .half() / .bfloat16() cast every floating buffer; the fp8 block scales and the fp32 tensor
scale are part of the format, so these modules let such calls move them between devices but never change their
dtype. The bias follows the model's dtype like any parameter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quant.fp8 import dequantize_fp8, infer_block_size, quantize_fp8, quantize_fp8_per_tensor
from quant.gemm import fp8_linear, nvfp4_dequantize, nvfp4_linear
from quant.nvfp4 import BLOCK_SIZE, NVFP4Tensor, quantize_nvfp4

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class QuantLinear(nn.Module):
    """Base class: y = x @ dequant(W)^T + b over the last dim of x ([..., in] -> [..., out])."""

    FORMAT = ""
    FORMAT_BUFFERS: tuple[str, ...] = ()
    """Floating buffers whose dtype is part of the format (protected from Module.to(dtype))."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.backend = "auto"
        """GEMM backend passed to the format's dispatch (see quant.gemm)."""

    def _apply(self, fn, recurse=True):
        kept = {n: self._buffers.pop(n) for n in self.FORMAT_BUFFERS if self._buffers.get(n) is not None}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in kept.items():
                # An integer view is moved by fn (device changes) but never cast (dtype changes skip ints).
                self._buffers[name] = fn(t.view(_SAME_SIZE_INT[t.element_size()])).view(t.dtype)
        return self

    def _set_bias(self, bias: torch.Tensor | None) -> None:
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[out, in] weight in `dtype`."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={self.FORMAT}")


class NVFP4Linear(QuantLinear):
    """nn.Linear with an NVFP4 weight (W4A16): uint8 `weight` [out, in/2], float8_e4m3fn `weight_scale`
    [out, in/16], float32 `weight_scale_2` []; optional float32 `input_scale` [] is kept for checkpoints that
    carry one (unused: activations stay in bf16)."""

    FORMAT = "nvfp4"
    FORMAT_BUFFERS = ("weight_scale", "weight_scale_2", "input_scale")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.bfloat16, input_scale: bool = False) -> None:
        super().__init__(in_features, out_features)
        if in_features % BLOCK_SIZE:
            raise ValueError(f"NVFP4Linear: in_features = {in_features} must be a multiple of {BLOCK_SIZE}")
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, in_features // BLOCK_SIZE, device=device
                                                        ).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale_2", torch.ones((), dtype=torch.float32, device=device))
        if input_scale:
            self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        else:
            self.input_scale = None
        self._set_bias(torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor,
                     bias: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
                     name: str = "") -> NVFP4Linear:
        """Build from packed checkpoint tensors (no high-precision detour). Validates dtypes and shapes."""
        where = f"{name}: " if name else ""
        if weight.dtype != torch.uint8 or weight.ndim != 2:
            raise ValueError(f"{where}NVFP4 weight must be uint8 [out, in/2], got {weight.dtype} "
                             f"{tuple(weight.shape)}")
        out_f, in_f = weight.shape[0], weight.shape[1] * 2
        if weight_scale.dtype != torch.float8_e4m3fn or tuple(weight_scale.shape) != (out_f, in_f // BLOCK_SIZE):
            raise ValueError(f"{where}weight_scale must be float8_e4m3fn {(out_f, in_f // BLOCK_SIZE)}, got "
                             f"{weight_scale.dtype} {tuple(weight_scale.shape)}")
        if weight_scale_2.numel() != 1:
            raise ValueError(f"{where}weight_scale_2 must hold one value, got shape {tuple(weight_scale_2.shape)}")
        if bias is not None and tuple(bias.shape) != (out_f,):
            raise ValueError(f"{where}bias must have shape {(out_f,)}, got {tuple(bias.shape)}")
        m = cls.__new__(cls)
        QuantLinear.__init__(m, in_f, out_f)
        m.register_buffer("weight", weight.detach())
        m.register_buffer("weight_scale", weight_scale.detach())
        m.register_buffer("weight_scale_2", weight_scale_2.detach().float().reshape(()))
        if input_scale is not None:
            m.register_buffer("input_scale", input_scale.detach().float().reshape(()))
        else:
            m.input_scale = None
        m._set_bias(bias)
        return m

    @classmethod
    def from_float(cls, module: nn.Linear | nn.Conv2d, name: str = "") -> NVFP4Linear:
        w = module.weight.detach()
        q = quantize_nvfp4(w.reshape(w.shape[0], -1), name=f"{name}.weight" if name else "weight")
        return cls.from_tensors(*q, bias=module.bias, name=name)

    @property
    def packed(self) -> NVFP4Tensor:
        return NVFP4Tensor(self.weight, self.weight_scale, self.weight_scale_2)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return nvfp4_dequantize(self.weight, self.weight_scale, self.weight_scale_2, dtype)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] -> [..., out]."""
        return nvfp4_linear(x, self.weight, self.weight_scale, self.weight_scale_2, self.bias, self.backend)

    forward = linear


class FP8Linear(QuantLinear):
    """nn.Linear with an FP8 E4M3 weight: float8_e4m3fn `weight` [out, in], float32 `weight_scale` ([] per
    tensor: W8A8 with dynamic per-token activation scales, or the static `input_scale` if present; or a
    [ceil(out/b), ceil(in/b)] grid of b x b block scales: W8A16)."""

    FORMAT = "fp8"
    FORMAT_BUFFERS = ("weight", "weight_scale", "input_scale")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.bfloat16, block_size: int | None = None,
                 input_scale: bool = False) -> None:
        super().__init__(in_features, out_features)
        self.block_size = block_size
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device
                                                   ).to(torch.float8_e4m3fn))
        scale_shape = () if block_size is None else (-(-out_features // block_size), -(-in_features // block_size))
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        if input_scale:
            self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        else:
            self.input_scale = None
        self._set_bias(torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                     input_scale: torch.Tensor | None = None, block_size: int | None = None,
                     name: str = "") -> FP8Linear:
        """Build from checkpoint tensors; `block_size` None infers it from the scale's shape (128 preferred)."""
        where = f"{name}: " if name else ""
        if weight.dtype != torch.float8_e4m3fn or weight.ndim != 2:
            raise ValueError(f"{where}FP8 weight must be float8_e4m3fn [out, in], got {weight.dtype} "
                             f"{tuple(weight.shape)}")
        out_f, in_f = weight.shape
        if block_size is None:
            block_size = infer_block_size((out_f, in_f), tuple(weight_scale.shape))
        if bias is not None and tuple(bias.shape) != (out_f,):
            raise ValueError(f"{where}bias must have shape {(out_f,)}, got {tuple(bias.shape)}")
        m = cls.__new__(cls)
        QuantLinear.__init__(m, in_f, out_f)
        m.block_size = block_size
        m.register_buffer("weight", weight.detach())
        scale = weight_scale.detach().float()
        m.register_buffer("weight_scale", scale.reshape(()) if block_size is None and scale.numel() == 1 else scale)
        if input_scale is not None:
            m.register_buffer("input_scale", input_scale.detach().float().reshape(()))
        else:
            m.input_scale = None
        m._set_bias(bias)
        expected = () if block_size is None else (-(-out_f // block_size), -(-in_f // block_size))
        if tuple(m.weight_scale.shape) != expected:
            raise ValueError(f"{where}weight_scale must have shape {expected} for weight {(out_f, in_f)} and "
                             f"block_size {block_size}, got {tuple(weight_scale.shape)}")
        return m

    @classmethod
    def from_float(cls, module: nn.Linear | nn.Conv2d, block_size: int | None = None, name: str = ""
                   ) -> FP8Linear:
        w = module.weight.detach()
        q = quantize_fp8(w.reshape(w.shape[0], -1), block_size, name=f"{name}.weight" if name else "weight")
        return cls.from_tensors(q.weight, q.weight_scale, module.bias, block_size=q.block_size, name=name)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.weight_scale, self.block_size, dtype)

    @property
    def static_input_scale(self) -> torch.Tensor | None:
        """The calibrated per-tensor activation scale when this layer quantizes its input with one (W8A8 with a
        static `input_scale`): a producer may then hand it the input already quantized (float8_e4m3fn)."""
        return self.input_scale if self.block_size is None else None

    def linear(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """[..., in] -> [..., out]; x in float8_e4m3fn is taken as already quantized with the static input scale
        (then out_dtype says the result's dtype)."""
        return fp8_linear(x, self.weight, self.weight_scale, self.bias, self.input_scale, self.block_size,
                          self.backend, out_dtype)

    forward = linear

    def extra_repr(self) -> str:
        blocks = "per-tensor" if self.block_size is None else f"{self.block_size}x{self.block_size} blocks"
        return f"{super().extra_repr()}, {blocks}"


class _Conv1x1:
    """Conv2d(kernel 1) semantics on NCHW input; `linear` still takes token-major [..., in] input, which is the
    cheaper call for a runtime that keeps activations token-major."""

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, H, W]; channels_last input costs no copy and gives channels_last output.
        Token-major [N, in] input (pixels as rows) gives [N, out]: the runtime's FFN calls it so, through the
        module so that forward hooks (FP8 calibration) see the call (kwargs: `linear`'s, e.g. out_dtype)."""
        if x.ndim == 2 and x.shape[1] == self.in_features:
            return self.linear(x, **kwargs)
        if x.ndim != 4 or x.shape[1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected [B, {self.in_features}, H, W] or "
                             f"[N, {self.in_features}], got {tuple(x.shape)}")
        b, _, h, w = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        y = self.linear(x.permute(0, 2, 3, 1).reshape(b * h * w, self.in_features))
        y = y.view(b, h, w, self.out_features).permute(0, 3, 1, 2)
        return y if channels_last else y.contiguous()


class NVFP4Conv1x1(_Conv1x1, NVFP4Linear):
    """1x1 nn.Conv2d with an NVFP4 weight; state-dict layout identical to NVFP4Linear."""


class FP8Conv1x1(_Conv1x1, FP8Linear):
    """1x1 nn.Conv2d with an FP8 weight; state-dict layout identical to FP8Linear."""


class _TemporalConv:
    """Conv2d with a (k, 1) kernel (the FFN's temporal mix over frames) holding a quantized weight, stored 2-D as
    [out, in * k] (the conv weight flattened, as ModelOpt stores conv weights). The runtime's FFN calls it on
    token-major taps [N, in * k] (one quantized GEMM); 4-D input gets the plain convolution with the kernel
    decoded by `conv_weight`."""

    taps: int = 1
    """k, the kernel height (frames)."""
    pad: int = 0
    """Zero padding along the frame axis."""

    def configure(self, conv: nn.Conv2d):
        """Copy the kernel height and padding of the float conv this module replaces; returns self."""
        self.taps, self.pad = conv.kernel_size[0], conv.padding[0]
        if self.in_features != conv.in_channels * self.taps or self.out_features != conv.out_channels:
            raise ValueError(f"{type(self).__name__}: weight [{self.out_features}, {self.in_features}] does not "
                             f"fit a Conv2d {conv.in_channels} -> {conv.out_channels} with kernel {conv.kernel_size}")
        return self

    def conv_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized kernel [out, in, k, 1]."""
        w = self.dequantize_weight(dtype)
        return w.view(self.out_features, self.in_features // self.taps, self.taps, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, H, W] (nn.Conv2d semantics), or taps [N, in * k] -> [N, out]: row n holds
        the k frames of its pixel interleaved per input channel (the flattened kernel's (in, k) order), which the
        runtime's FFN builds itself and runs through the quantized GEMM."""
        if x.ndim == 2 and x.shape[1] == self.in_features:
            return self.linear(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x, self.conv_weight(x.dtype), bias, padding=(self.pad, 0))


class NVFP4TemporalConv(_TemporalConv, NVFP4Linear):
    """(k, 1) nn.Conv2d with an NVFP4 weight; state-dict layout identical to NVFP4Linear with in = in_ch * k."""


class FP8TemporalConv(_TemporalConv, FP8Linear):
    """(k, 1) nn.Conv2d with an FP8 weight; state-dict layout identical to FP8Linear with in = in_ch * k.

    With a per-tensor weight and a static input scale, `store_tap_weights_` adds each tap's [out, in] E4M3 matrix as
    a contiguous (non-persistent) buffer, and `mix_by_taps` then runs the conv as one FP8 GEMM per tap over
    frame-shifted row ranges of the input quantized once: no [N, in * k] interleaved copy of the taps, whose
    quantizing pass cost as much as the FP8 GEMM saved (H200 rounds 27b / 30)."""

    FORMAT_BUFFERS = FP8Linear.FORMAT_BUFFERS + ("tap_weights",)

    def store_tap_weights_(self) -> bool:
        """Store the per-tap weights [k, out, in] (the same codes, another layout; a copy of the weight's bytes).
        Returns whether this layer can take the per-tap path (a per-tensor weight and a static input scale)."""
        if self.block_size is not None or self.input_scale is None:
            return False
        in_ch = self.in_features // self.taps
        taps = self.weight.view(torch.uint8).view(self.out_features, in_ch, self.taps).permute(2, 0, 1)
        self.register_buffer("tap_weights", taps.contiguous().view(torch.float8_e4m3fn), persistent=False)
        return True

    def mix_by_taps(self, y: torch.Tensor, chunks, left_frame: torch.Tensor | None) -> torch.Tensor:
        """The 3-tap temporal mix of the FFN (runtime.ffn.GLUMBConvTemp.temporal_mix) on y [B, T, S, C]:
        out[t] = W0 y[t-1] + W1 y[t] + W2 y[t+1] with y[-1] = left_frame (or zeros) and no right neighbour past
        a chunk end. Needs `store_tap_weights_`."""
        if self.taps != 3 or getattr(self, "tap_weights", None) is None:
            raise ValueError("mix_by_taps needs a 3-tap conv with stored tap weights (store_tap_weights_)")
        B, T, S, C = y.shape
        left = y.new_zeros(B, 1, S, C) if left_frame is None else left_frame[:, None].to(y.dtype)
        codes, _ = quantize_fp8_per_tensor(torch.cat([left, y], dim=1), self.input_scale)   # [B, T + 1, S, C]

        def tap(k: int, first: int, frames: int) -> torch.Tensor:   # W_k over `frames` frames from `first`
            rows = codes[:, first:first + frames].reshape(B * frames * S, C)
            out = fp8_linear(rows, self.tap_weights[k], self.weight_scale, None, self.input_scale, None,
                             self.backend, y.dtype)
            return out.view(B, frames, S, self.out_features)

        from_next = torch.cat([tap(2, 2, T - 1), y.new_zeros(B, 1, S, self.out_features)], dim=1)
        for _, end in chunks[:-1]:
            from_next[:, end - 1] = 0                                   # no look-ahead past a chunk end
        return tap(0, 0, T) + tap(1, 1, T) + from_next


def is_temporal_conv(module: nn.Module) -> bool:
    """A Conv2d whose kernel spans k > 1 frames and one pixel (stride 1, zero padding along frames only)."""
    return (isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple) and module.kernel_size[0] > 1
            and module.kernel_size[1] == 1 and module.padding[1] == 0 and tuple(module.stride) == (1, 1)
            and tuple(module.dilation) == (1, 1) and module.groups == 1 and module.padding_mode == "zeros")


def is_conv1x1(module: nn.Module) -> bool:
    """A Conv2d that is a per-pixel linear map (kernel 1, stride 1, no padding / dilation / groups)."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1)
            and tuple(module.padding) == (0, 0) and tuple(module.dilation) == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")
