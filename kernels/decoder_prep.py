"""The input buffer of one causal 3D conv of the LTX-2 decoder's streaming decode, written in one pass.

Each temporal conv of the streamed decoder (runtime.ltx2_vae) convolves, without padding of its own,

    buf = reflect_pad_hw(cat([left, act(x)], dim=2), ph, pw)

where `left` holds the conv input's last k-1 frames of the previous chunk (the stream's cache; on the first
chunk, k-1 copies of the first frame of act(x), as diffusers pads), and act is, in front of the ResNet convs
and conv_out, the decoder's per-location RMS norm over channels followed by SiLU,

    act(x) = silu(x / sqrt(mean_c(x^2) + eps)),

and the identity elsewhere. Stock PyTorch spends about a dozen full passes over the activation on this (pow,
mean, add, sqrt, div, silu, the cat, the padding copies); `conv_input` is one read and one write on CUDA.

`conv_input_reference` is the PyTorch version (fp32 math, result in x's dtype); the public op picks Triton on
CUDA and the reference elsewhere (`kernels.dispatch`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dispatch import use_triton

__all__ = ["conv_input", "conv_input_reference", "reflect_padded_cat"]


def reflect_padded_cat(left: Tensor, x: Tensor, ph: int, pw: int,
                       memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """F.pad(torch.cat([left, x], dim=2), (pw, pw, ph, ph), mode="reflect") for [B, C, T, H, W] tensors, written
    into one buffer (in `memory_format`): the interior once, then the reflected border rows and columns."""
    b, c, t0, h, w = left.shape
    t = t0 + x.shape[2]
    _check_pad(h, w, ph, pw)
    out = torch.empty(b, c, t, h + 2 * ph, w + 2 * pw, dtype=x.dtype, device=x.device, memory_format=memory_format)
    out[:, :, :t0, ph:ph + h, pw:pw + w] = left
    out[:, :, t0:, ph:ph + h, pw:pw + w] = x
    for i in range(1, ph + 1):   # rows (interior columns): padded row ph - i mirrors row ph + i
        out[:, :, :, ph - i, pw:pw + w] = out[:, :, :, ph + i, pw:pw + w]
        out[:, :, :, ph + h - 1 + i, pw:pw + w] = out[:, :, :, ph + h - 1 - i, pw:pw + w]
    for j in range(1, pw + 1):   # then columns over all rows, which also fills the corners
        out[..., pw - j] = out[..., pw + j]
        out[..., pw + w - 1 + j] = out[..., pw + w - 1 - j]
    return out


def _check_pad(h: int, w: int, ph: int, pw: int) -> None:
    if ph < 0 or pw < 0 or not (ph < h and pw < w):
        raise ValueError(f"reflection padding ({ph}, {pw}) needs a frame larger than that, got {h}x{w}")


def _check(x: Tensor, left: Tensor | None, pad_frames: int, ph: int, pw: int) -> None:
    if x.dim() != 5:
        raise ValueError(f"conv_input: expected x [B, C, T, H, W], got {tuple(x.shape)}")
    if left is not None:
        want = (x.shape[0], x.shape[1], pad_frames, x.shape[3], x.shape[4])
        if tuple(left.shape) != want:
            raise ValueError(f"conv_input: left context {tuple(left.shape)} != {want}")
        if left.dtype != x.dtype or left.device != x.device:
            raise ValueError("conv_input: left context and x differ in dtype or device")
    _check_pad(x.shape[3], x.shape[4], ph, pw)


def norm_silu_reference(x: Tensor, eps: float) -> Tensor:
    """silu(x / sqrt(mean_c(x^2) + eps)) over dim 1, fp32 math, in x's dtype."""
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(1, keepdim=True) + eps)
    return F.silu(y).to(x.dtype)


def conv_input_reference(x: Tensor, left: Tensor | None, *, pad_frames: int, ph: int, pw: int,
                         norm_eps: float | None = None,
                         memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """PyTorch version of `conv_input` (same arguments and result)."""
    _check(x, left, pad_frames, ph, pw)
    y = norm_silu_reference(x, norm_eps) if norm_eps is not None else x
    if left is None:
        left = y[:, :, :1].expand(-1, -1, pad_frames, -1, -1)
    return reflect_padded_cat(left, y, ph, pw, memory_format)


def conv_input(x: Tensor, left: Tensor | None, *, pad_frames: int, ph: int, pw: int, norm_eps: float | None = None,
               memory_format: torch.memory_format = torch.contiguous_format, impl: str = "auto") -> Tensor:
    """The padded conv input [B, C, pad_frames + T, H + 2 ph, W + 2 pw] in x's dtype and `memory_format`.

    x [B, C, T, H, W]: this chunk's activations; left [B, C, pad_frames, H, W] (already activated) or None for
    copies of act(x)'s first frame; norm_eps: apply the RMS norm + SiLU to x with this eps (None: copy x as is).
    """
    # "auto" runs the kernel for channels-last buffers only: channels-first, its reflected column reads do not
    # vectorise and it measured slower than PyTorch's slice copies (H200, round 8: 122.4 vs 84.5 ms per decoded
    # chunk); channels-last it reads whole channel rows (57.7 ms per chunk with cuDNN's NDHWC convs).
    if use_triton(x, impl) and (impl == "triton" or memory_format == torch.channels_last_3d):
        from kernels.decoder_prep_triton import conv_input_triton

        _check(x, left, pad_frames, ph, pw)
        return conv_input_triton(x, left, pad_frames=pad_frames, ph=ph, pw=pw, norm_eps=norm_eps,
                                 memory_format=memory_format)
    return conv_input_reference(x, left, pad_frames=pad_frames, ph=ph, pw=pw, norm_eps=norm_eps,
                                memory_format=memory_format)
