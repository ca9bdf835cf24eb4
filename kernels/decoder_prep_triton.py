"""Triton version of `kernels.decoder_prep.conv_input` (see there for the math and the reference).

`_conv_input_kernel`, grid (blocks of output positions of one padded frame, output frames, batch): every
output position reads its reflected source position, so the padding costs no extra pass. With the norm, a
first loop over channel blocks sums x^2 per position and a second one scales, applies SiLU and stores; without
it, one loop copies. The left context and this chunk's frames are two launches of the same kernel (the left
frames are copied as they are). Strides are arguments, so contiguous and channels-last tensors both work (Triton
specialises a stride of 1, which makes the contiguous dimension known at compile time).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["conv_input_triton"]

_BLOCK_P = 64    # output positions per program
_BLOCK_C = 32    # channels per loop step


@triton.jit
def _conv_input_kernel(
    p_src, p_out,
    C, H, W, Wp, ph, pw, out_t0, src_shift, eps,
    s_sb, s_sc, s_st, s_sh, s_sw,
    s_ob, s_oc, s_ot, s_oh, s_ow,
    NORM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p, pid_t, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t_out = out_t0 + pid_t
    t_src = tl.maximum(t_out - src_shift, 0)          # frames before the source's first repeat its frame 0
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < (H + 2 * ph) * Wp
    i = p // Wp
    j = p % Wp
    si = tl.abs(i - ph)                               # reflect: -1 -> 1, ..., H -> H - 2
    si = tl.where(si >= H, 2 * (H - 1) - si, si)
    sj = tl.abs(j - pw)
    sj = tl.where(sj >= W, 2 * (W - 1) - sj, sj)
    src_pos = (b.to(tl.int64) * s_sb + t_src.to(tl.int64) * s_st + si.to(tl.int64) * s_sh
               + sj.to(tl.int64) * s_sw)
    out_pos = (b.to(tl.int64) * s_ob + t_out.to(tl.int64) * s_ot + i.to(tl.int64) * s_oh
               + j.to(tl.int64) * s_ow)
    cs = tl.arange(0, BLOCK_C)
    if NORM:
        sum_sq = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            mask = (c < C)[:, None] & p_mask[None, :]
            v = tl.load(p_src + c[:, None].to(tl.int64) * s_sc + src_pos[None, :], mask=mask, other=0.0)
            v = v.to(tl.float32)
            sum_sq += tl.sum(v * v, axis=0)
        inv_rms = 1.0 / tl.sqrt(sum_sq / C + eps)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cs
        mask = (c < C)[:, None] & p_mask[None, :]
        v = tl.load(p_src + c[:, None].to(tl.int64) * s_sc + src_pos[None, :], mask=mask, other=0.0)
        if NORM:
            v = v.to(tl.float32) * inv_rms[None, :]
            v = v * tl.sigmoid(v)
        tl.store(p_out + c[:, None].to(tl.int64) * s_oc + out_pos[None, :], v.to(p_out.dtype.element_ty),
                 mask=mask)


def _launch(src: Tensor, out: Tensor, *, out_t0: int, frames: int, src_shift: int, ph: int, pw: int,
            norm_eps: float | None) -> None:
    B, C, _, H, W = src.shape
    Wp = W + 2 * pw
    grid = (triton.cdiv((H + 2 * ph) * Wp, _BLOCK_P), frames, B)
    _conv_input_kernel[grid](
        src, out, C, H, W, Wp, ph, pw, out_t0, src_shift, float(norm_eps or 0.0),
        *src.stride(), *out.stride(),
        NORM=norm_eps is not None, BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C, num_warps=4)


def conv_input_triton(x: Tensor, left: Tensor | None, *, pad_frames: int, ph: int, pw: int,
                      norm_eps: float | None = None,
                      memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    from kernels import gdn_triton  # NaN-fill switch shared with the other kernels (tests)

    B, C, T, H, W = x.shape
    out = torch.empty((B, C, pad_frames + T, H + 2 * ph, W + 2 * pw), dtype=x.dtype, device=x.device,
                      memory_format=memory_format)
    if gdn_triton._NAN_FILL:
        out.fill_(float("nan"))
    if left is not None:   # the cached frames, copied as they are
        _launch(left, out, out_t0=0, frames=pad_frames, src_shift=0, ph=ph, pw=pw, norm_eps=None)
        _launch(x, out, out_t0=pad_frames, frames=T, src_shift=pad_frames, ph=ph, pw=pw, norm_eps=norm_eps)
    else:                  # first chunk: output frames before x's first repeat it
        _launch(x, out, out_t0=0, frames=pad_frames + T, src_shift=pad_frames, ph=ph, pw=pw, norm_eps=norm_eps)
    return out
