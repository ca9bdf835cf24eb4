"""A block's adaLN input in one pass: optional residual add, LayerNorm without affine, per-frame modulate, then the
E4M3 codes an FP8 GEMM with a static input scale takes and / or the result in the activations' dtype.

    s = x + residual                      (stored in x's dtype: the block's running residual)
    y = layer_norm(s) * (1 + scale[frame] + scale_bias) + shift[frame] + shift_bias
    normed = y                            (x's dtype; the bf16 camera projections read it)
    codes = e4m3(clamp(y / out_scale, +-448))

x, residual [B, T, S, C] token-major; shift, scale [B, T, 1, C] (or [B, T, C]); shift_bias, scale_bias [C] or None
(a block passes its timestep modulation and its scale_shift_table rows apart: the sum is taken in the kernel, with
no small kernel per call to materialise it first). The attention's input takes both outputs (the FP8 stacked
projections and the bf16 camera projections), the FFN's the residual add and the codes.

Why: inductor fuses exactly these ops, but as a looped two-pass Welford reduction over the 2240 channels; in the
full model's FP8 chunk (H200, round 30) those kernels took 35 us (attention input) and 26 us (FFN input) per call,
6.1 ms per chunk, about a third of the bandwidth their bytes need. The Triton kernel (`kernels.norm_modulate_triton`)
loads each row once into registers, [rows, C] tiles, two plain reductions: 21 / 24 us per call (H200, round 39,
graphed, L2 flushed); on the model's path by default since session 15 (runtime.block.ADALN_KERNEL; FP8 static
generator 135.6 -> 131.7 ms per chunk with the other session-15 kernels). `bench.kernels --only ln_modulate,
ln_modulate_sweep` times it against the compiled PyTorch expression.

`ln_modulate_reference` is the PyTorch version (fp32 math); the public op picks Triton on CUDA (`kernels.dispatch`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.dispatch import use_triton
from kernels.glu_conv import E4M3_MAX

__all__ = ["ln_modulate", "ln_modulate_reference"]


def _check(x: Tensor, shift: Tensor, scale: Tensor, residual: Tensor | None, out_scale: Tensor | None,
           want_normed: bool, shift_bias: Tensor | None = None, scale_bias: Tensor | None = None
           ) -> tuple[Tensor, Tensor]:
    """Validates the arguments; returns shift and scale as [B, T, C] views."""
    if x.dim() != 4:
        raise ValueError(f"ln_modulate: expected x [B, T, S, C], got {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"ln_modulate: residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    B, T, _, C = x.shape
    mods = []
    for name, t in (("shift", shift), ("scale", scale)):
        if t.dim() == 4 and t.shape[2] == 1:
            t = t[:, :, 0]
        if tuple(t.shape) != (B, T, C):
            raise ValueError(f"ln_modulate: {name} must be [B, T, 1, C] or [B, T, C] = {(B, T, C)}, got "
                             f"{tuple(t.shape)}")
        mods.append(t)
    for name, t in (("shift_bias", shift_bias), ("scale_bias", scale_bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"ln_modulate: {name} must be [C] = [{C}], got {tuple(t.shape)}")
    if out_scale is not None and (out_scale.numel() != 1 or out_scale.dtype != torch.float32):
        raise ValueError(f"ln_modulate: out_scale must be a float32 scalar tensor, got {out_scale.dtype} "
                         f"{tuple(out_scale.shape)}")
    if out_scale is None and not want_normed:
        raise ValueError("ln_modulate: nothing to compute (no out_scale and want_normed=False)")
    return mods[0], mods[1]


def ln_modulate_reference(x: Tensor, shift: Tensor, scale: Tensor, *, residual: Tensor | None = None,
                          eps: float = 1e-6, out_scale: Tensor | None = None, want_normed: bool = True,
                          shift_bias: Tensor | None = None, scale_bias: Tensor | None = None
                          ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(summed residual or None, normed or None, E4M3 codes or None); see the module docstring. fp32 math: the
    sum is rounded to x's dtype first (what is stored, and what the norm of the stored stream sees)."""
    shift, scale = _check(x, shift, scale, residual, out_scale, want_normed, shift_bias, scale_bias)
    shift, scale = shift.float(), scale.float()
    if shift_bias is not None:
        shift = shift + shift_bias.float()
    if scale_bias is not None:
        scale = scale + scale_bias.float()
    summed = None if residual is None else (x.float() + residual.float()).to(x.dtype)
    s = (x if summed is None else summed).float()
    mean = s.mean(-1, keepdim=True)
    d = s - mean
    y = d * torch.rsqrt((d * d).mean(-1, keepdim=True) + eps)
    y = y * (1 + scale[:, :, None]) + shift[:, :, None]
    normed = y.to(x.dtype) if want_normed else None
    codes = None
    if out_scale is not None:
        codes = (y / out_scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return summed, normed, codes


# A custom op, so that torch.compile keeps the kernel as one opaque call (outputs not asked for come back empty).
@torch.library.custom_op("sana_wm::ln_modulate", mutates_args=())
def _ln_modulate_op(x: Tensor, shift: Tensor, scale: Tensor, residual: Tensor | None, eps: float,
                    out_scale: Tensor | None, want_normed: bool, shift_bias: Tensor | None,
                    scale_bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    from kernels.norm_modulate_triton import ln_modulate_triton

    summed, normed, codes = ln_modulate_triton(x, shift, scale, residual=residual, eps=eps, out_scale=out_scale,
                                               want_normed=want_normed, shift_bias=shift_bias,
                                               scale_bias=scale_bias)
    return (x.new_empty(0) if summed is None else summed, x.new_empty(0) if normed is None else normed,
            x.new_empty(0, dtype=torch.float8_e4m3fn) if codes is None else codes)


@_ln_modulate_op.register_fake
def _(x, shift, scale, residual, eps, out_scale, want_normed, shift_bias, scale_bias):
    return (x.new_empty(x.shape if residual is not None else (0,)), x.new_empty(x.shape if want_normed else (0,)),
            x.new_empty(x.shape if out_scale is not None else (0,), dtype=torch.float8_e4m3fn))


def ln_modulate(x: Tensor, shift: Tensor, scale: Tensor, *, residual: Tensor | None = None, eps: float = 1e-6,
                out_scale: Tensor | None = None, want_normed: bool = True, shift_bias: Tensor | None = None,
                scale_bias: Tensor | None = None, impl: str = "auto"
                ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """`ln_modulate_reference` in one Triton kernel; impl: "auto" (Triton on CUDA), "triton" or "reference"."""
    if use_triton(x, impl):
        _check(x, shift, scale, residual, out_scale, want_normed, shift_bias, scale_bias)
        summed, normed, codes = _ln_modulate_op(x, shift, scale, residual, eps, out_scale, want_normed, shift_bias,
                                                scale_bias)
        return (summed if residual is not None else None, normed if want_normed else None,
                codes if out_scale is not None else None)
    return ln_modulate_reference(x, shift, scale, residual=residual, eps=eps, out_scale=out_scale,
                                 want_normed=want_normed, shift_bias=shift_bias, scale_bias=scale_bias)
