"""Triton version of `kernels.glu_conv.depthwise_glu` (see there for the math and the reference).

`_depthwise_glu_kernel`, grid (blocks of positions of one frame, blocks of the M output channels, frames): for
each of the 9 taps it loads the shifted [positions, channels] tiles of both GLU halves (channel-contiguous rows,
so the loads coalesce; the neighbours' re-reads hit L1/L2) and accumulates in fp32, then adds the bias, gates and
stores once. Out-of-frame taps load zeros (the conv's zero padding).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["depthwise_glu_triton"]


BLOCKS = (32, 128, 4)
"""(positions, channels, warps) per program; `bench.kernels --only depthwise_glu` times the alternatives."""
BLOCK_CHOICES = ((32, 64, 4), (64, 64, 4), (32, 128, 4), (64, 128, 8), (16, 128, 4), (16, 256, 4))


@triton.jit
def _depthwise_glu_kernel(
    p_act, p_w, p_b, p_out,
    H, W, M,
    s_an, s_ah, s_aw,
    s_on, s_oh, s_ow,
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < H * W
    c_ok = c < M
    i = p // W
    j = p % W
    base = p_act + n.to(tl.int64) * s_an
    acc_a = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for tap in tl.static_range(9):
        ii = i + (tap // 3 - 1)
        jj = j + (tap % 3 - 1)
        ok = p_ok & (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
        row = ii.to(tl.int64) * s_ah + jj.to(tl.int64) * s_aw
        mask = ok[:, None] & c_ok[None, :]
        ptr = base + row[:, None] + c[None, :]
        x_a = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
        x_g = tl.load(ptr + M, mask=mask, other=0.0).to(tl.float32)
        w_a = tl.load(p_w + c * 9 + tap, mask=c_ok, other=0.0)
        w_g = tl.load(p_w + (c + M) * 9 + tap, mask=c_ok, other=0.0)
        acc_a += x_a * w_a[None, :]
        acc_g += x_g * w_g[None, :]
    if HAS_BIAS:
        acc_a += tl.load(p_b + c, mask=c_ok, other=0.0)[None, :]
        acc_g += tl.load(p_b + M + c, mask=c_ok, other=0.0)[None, :]
    out = acc_a * (acc_g * tl.sigmoid(acc_g))
    o_row = n.to(tl.int64) * s_on + i.to(tl.int64) * s_oh + j.to(tl.int64) * s_ow
    tl.store(p_out + o_row[:, None] + c[None, :], out.to(p_out.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])


def depthwise_glu_triton(act: Tensor, weight: Tensor, bias: Tensor | None,
                         blocks: tuple[int, int, int] | None = None) -> Tensor:
    from kernels import gdn_triton  # NaN-fill switch shared with the other kernels (tests)

    if act.stride(-1) != 1:
        act = act.contiguous()
    N, H, W, C = act.shape
    M = C // 2
    out = torch.empty((N, H, W, M), dtype=act.dtype, device=act.device)
    if gdn_triton._NAN_FILL:
        out.fill_(float("nan"))
    w = weight.reshape(C, 9).float().contiguous()     # fp32 taps: 0.5 MB at full size, read from L2
    b = bias.float().contiguous() if bias is not None else w
    block_p, block_c, warps = blocks or BLOCKS
    grid = (triton.cdiv(H * W, block_p), triton.cdiv(M, block_c), N)
    _depthwise_glu_kernel[grid](act, w, b, out, H, W, M, *act.stride()[:3], *out.stride()[:3],
                                HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return out
