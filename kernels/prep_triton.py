"""Triton versions of `kernels.prep` (see there for the math and the references).

* `_gdn_prep_kernel`: one program per token (b, t, s): a first pass over its C = H * D channels of q and k gives
  the full-channel RMS, then the heads are taken PREP_HEADS at a time as [heads, D] tiles (normed, ReLU, key
  scale; RoPE pairs from splitting the tile into its even / odd columns) and written straight into the
  head-major [B, H, T, S, D] scan layout (one D-element row per head).
* `_ucpe_prep_kernel`: one program per token holding all its heads as an [H, D] tile: the 4x4 matrix is
  built in registers from the token's P (transpose / rigid inverse / identity map by mode) and applied to the
  D/8 groups of 4, the last D/2 dims get the (inverse) camera RoPE; the result goes to the head-major
  [B, H, T, S, D] layout or, token-major, to [B, T, S, H, D] (the camera output's layout for out_proj_cam).
* `_ucpe_qkv_prep_kernel`: the camera branch's whole prep per token: norms of q and k over all C channels (a
  first pass), then UCPE of q, k, v on [heads, D] tiles, PREP_HEADS heads at a time (the pose is per token, so
  one 4x4 serves all heads), and the per-head key-norm inflation. The 4-groups are taken apart in registers by
  reshaping the tile to [heads, D/4, 2, 2] and splitting twice, which gives the four components of every group
  (and both RoPE pairs of the last-half groups) as [heads, D/4] tiles.

Results are stored in the output tensor's dtype (fp32 by default, bf16 on request); the math is fp32.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.prep import UCPE_MODES, _check_prep, _check_ucpe, _check_ucpe_qkv

__all__ = ["gdn_prep_triton", "ucpe_prep_triton", "ucpe_qkv_prep_triton"]


def _prep_warps(tile: int) -> int:
    # One program holds a whole token ([H, D] tiles of q, k, ...): 16 warps keep it at ~80-100 registers
    # per thread (8 warps: 150-180, fewer warps per SM for a memory-bound kernel; 4 warps spill).
    return 16 if tile >= 4096 else (8 if tile >= 1024 else 4)


def _heads_per_step(H: int) -> int:
    return min(triton.next_power_of_2(H), triton.next_power_of_2(max(1, PREP_HEADS)))


def _rms_block(C: int) -> int:
    return min(1024, triton.next_power_of_2(C))


def _empty(shape, device, dtype=torch.float32) -> Tensor:
    from kernels import gdn_triton  # NaN-fill switch shared with the scan kernels (tests)

    if gdn_triton._NAN_FILL:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _token_coords(T, S):
    """This program's token (axis 0 of a one-program-per-token grid over [B, T, S]) and its (b, t, s)."""
    i_tok = tl.program_id(0)
    return i_tok, i_tok // (T * S), (i_tok // S) % T, i_tok % S


# Heads per step of the per-token prep kernels: a program holds one token and walks its heads in groups of this
# many ([HEADS, D] tiles, after a first pass for the token's RMS), instead of holding all 20 heads padded to 32 at
# once (~100 registers x 16 warps: one program per SM, latency-bound). SANA_WM_PREP_HEADS overrides it (timing).
PREP_HEADS = int(os.environ.get("SANA_WM_PREP_HEADS", "4"))


@triton.jit
def _inv_rms(p_x_t, C, eps, BLOCK_C: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) over the C contiguous channels of one token, read in BLOCK_C-wide steps."""
    o_c = tl.arange(0, BLOCK_C)
    b_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        b_x = tl.load(p_x_t + c0 + o_c, mask=c0 + o_c < C, other=0.0).to(tl.float32)
        b_acc += b_x * b_x
    return 1.0 / tl.sqrt(tl.sum(b_acc, axis=0) / C + eps)


@triton.jit
def _normed_qk(p_q_t, p_k_t, p_wq, p_wk, o_c, m_hd, b_rq, b_rk, key_scale, RELU: tl.constexpr):
    """One head group's q and k tiles of a token (offsets o_c, mask m_hd): times their inverse RMS (`_inv_rms`)
    and norm weights, ReLU'd if RELU, k times the key scale."""
    b_q = tl.load(p_q_t + o_c, mask=m_hd, other=0.0).to(tl.float32)
    b_k = tl.load(p_k_t + o_c, mask=m_hd, other=0.0).to(tl.float32)
    b_q = b_q * b_rq * tl.load(p_wq + o_c, mask=m_hd, other=0.0).to(tl.float32)
    b_k = b_k * b_rk * tl.load(p_wk + o_c, mask=m_hd, other=0.0).to(tl.float32)
    if RELU:
        b_q = tl.maximum(b_q, 0.0)
        b_k = tl.maximum(b_k, 0.0)
    return b_q, b_k * key_scale


@triton.jit
def _rope_pairs(b_x, b_cos, b_sin, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rotate the interleaved pairs (2j, 2j+1) of b_x [BLOCK_H, BLOCK_D] by cos/sin [BLOCK_D // 2]."""
    b_e, b_o = tl.split(tl.reshape(b_x, [BLOCK_H, BLOCK_D // 2, 2]))
    b_ye = b_e * b_cos[None, :] - b_o * b_sin[None, :]
    b_yo = b_e * b_sin[None, :] + b_o * b_cos[None, :]
    return tl.reshape(tl.join(b_ye, b_yo), [BLOCK_H, BLOCK_D])


@triton.jit
def _gdn_prep_kernel(
    p_q, p_k, p_wq, p_wk, p_cos, p_sin, p_qo, p_ko, p_qro, p_kro,
    stride_qb, stride_qt, stride_qs, stride_kb, stride_kt, stride_ks,
    stride_ct, stride_cs, stride_st, stride_ss,
    T, S, H, D, C, key_scale, eps,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr,
):
    # One token per program, its heads BLOCK_H at a time (see PREP_HEADS).
    _, i_b, i_t, i_s = _token_coords(T, S)
    o_h = tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, BLOCK_D)
    o_j = tl.arange(0, BLOCK_D // 2)
    p_q_t = p_q + i_b * stride_qb + i_t * stride_qt + i_s * stride_qs
    p_k_t = p_k + i_b * stride_kb + i_t * stride_kt + i_s * stride_ks
    b_rq = _inv_rms(p_q_t, C, eps, BLOCK_C)
    b_rk = _inv_rms(p_k_t, C, eps, BLOCK_C)
    m_j = o_j < D // 2
    b_cos = tl.load(p_cos + i_t * stride_ct + i_s * stride_cs + o_j, mask=m_j, other=1.0).to(tl.float32)
    b_sin = tl.load(p_sin + i_t * stride_st + i_s * stride_ss + o_j, mask=m_j, other=0.0).to(tl.float32)

    for h0 in range(0, H, BLOCK_H):
        m_hd = (h0 + o_h < H)[:, None] & (o_d[None, :] < D)
        o_c = (h0 + o_h)[:, None] * D + o_d[None, :]
        b_q, b_k = _normed_qk(p_q_t, p_k_t, p_wq, p_wk, o_c, m_hd, b_rq, b_rk, key_scale, RELU)
        b_qr = _rope_pairs(b_q, b_cos, b_sin, BLOCK_H, BLOCK_D)
        b_kr = _rope_pairs(b_k, b_cos, b_sin, BLOCK_H, BLOCK_D)

        # [B, H, T, S, D] contiguous outputs.
        o_out = ((i_b * H + h0 + o_h[:, None]).to(tl.int64) * T + i_t) * S * D + i_s * D + o_d[None, :]
        tl.store(p_qo + o_out, b_q.to(p_qo.dtype.element_ty), mask=m_hd)
        tl.store(p_ko + o_out, b_k.to(p_ko.dtype.element_ty), mask=m_hd)
        tl.store(p_qro + o_out, b_qr.to(p_qro.dtype.element_ty), mask=m_hd)
        tl.store(p_kro + o_out, b_kr.to(p_kro.dtype.element_ty), mask=m_hd)


def gdn_prep_triton(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, rope_cos: Tensor,
                    rope_sin: Tensor, *, num_heads: int, key_scale: float, eps: float = 1e-5,
                    relu: bool = True,
                    out_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton version of `kernels.prep.gdn_prep_reference` (same arguments and results)."""
    B, T, S, C = _check_prep(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads)
    H, D = num_heads, C // num_heads
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    rope_cos = rope_cos if rope_cos.stride(-1) == 1 else rope_cos.contiguous()
    rope_sin = rope_sin if rope_sin.stride(-1) == 1 else rope_sin.contiguous()
    q_weight, k_weight = q_weight.contiguous(), k_weight.contiguous()
    outs = [_empty((B, H, T, S, D), q.device, out_dtype) for _ in range(4)]
    block_d = triton.next_power_of_2(D)
    block_h = _heads_per_step(H)
    _gdn_prep_kernel[(B * T * S,)](
        q, k, q_weight, k_weight, rope_cos, rope_sin, *outs,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        rope_cos.stride(0), rope_cos.stride(1), rope_sin.stride(0), rope_sin.stride(1),
        T, S, H, D, C, float(key_scale), float(eps),
        BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_C=_rms_block(C), RELU=relu,
        num_warps=_prep_warps(block_h * block_d),
    )
    return tuple(outs)


@triton.jit
def _cam_rope_groups(p_cos_t, p_sin_t, G, BLOCK_D: tl.constexpr, INVERSE: tl.constexpr):
    """One token's camera-RoPE cos / sin per 4-group as [1, D/4] rows for `_ucpe_groups`: groups c in [G, 2G)
    hold pairs 2 (c - G) and 2 (c - G) + 1 (the others get the identity rotation); INVERSE negates the sines."""
    o_g = tl.arange(0, BLOCK_D // 4)
    m_r = (o_g >= G) & (o_g < 2 * G)
    o_ja = 2 * (o_g - G)
    sign = -1.0 if INVERSE else 1.0
    b_ca = tl.load(p_cos_t + o_ja, mask=m_r, other=1.0).to(tl.float32)[None, :]
    b_sa = sign * tl.load(p_sin_t + o_ja, mask=m_r, other=0.0).to(tl.float32)[None, :]
    b_cb = tl.load(p_cos_t + o_ja + 1, mask=m_r, other=1.0).to(tl.float32)[None, :]
    b_sb = sign * tl.load(p_sin_t + o_ja + 1, mask=m_r, other=0.0).to(tl.float32)[None, :]
    return b_ca, b_sa, b_cb, b_sb


@triton.jit
def _load_pose(p_P_t):
    """The 16 entries of one token's row-major 4x4 pose as fp32 scalars."""
    return (tl.load(p_P_t + 0).to(tl.float32), tl.load(p_P_t + 1).to(tl.float32),
            tl.load(p_P_t + 2).to(tl.float32), tl.load(p_P_t + 3).to(tl.float32),
            tl.load(p_P_t + 4).to(tl.float32), tl.load(p_P_t + 5).to(tl.float32),
            tl.load(p_P_t + 6).to(tl.float32), tl.load(p_P_t + 7).to(tl.float32),
            tl.load(p_P_t + 8).to(tl.float32), tl.load(p_P_t + 9).to(tl.float32),
            tl.load(p_P_t + 10).to(tl.float32), tl.load(p_P_t + 11).to(tl.float32),
            tl.load(p_P_t + 12).to(tl.float32), tl.load(p_P_t + 13).to(tl.float32),
            tl.load(p_P_t + 14).to(tl.float32), tl.load(p_P_t + 15).to(tl.float32))


@triton.jit
def _ucpe_prep_kernel(
    p_x, p_P, p_cos, p_sin, p_out,
    stride_xb, stride_xh, stride_xt, stride_xs,
    stride_ob, stride_oh, stride_ot, stride_os,
    stride_ct, stride_cs, stride_st, stride_ss,
    T, S, H, D,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, MODE: tl.constexpr,
):
    # MODE 0: g -> P^T g, RoPE.   1: g -> P^-1 g (rigid), RoPE.   2: g -> P g, inverse RoPE.
    i_tok, i_b, i_t, i_s = _token_coords(T, S)
    o_h = tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, BLOCK_D)
    m_hd = (o_h < H)[:, None] & (o_d[None, :] < D)
    b_x = tl.load(p_x + i_b.to(tl.int64) * stride_xb + i_t * stride_xt + i_s * stride_xs
                  + o_h[:, None].to(tl.int64) * stride_xh + o_d[None, :], mask=m_hd, other=0.0).to(tl.float32)

    # Pose of this token, row-major 4x4 scalars; one matrix serves every head.
    p_P_t = p_P + i_tok.to(tl.int64) * 16
    p00, p01, p02, p03, p10, p11, p12, p13, p20, p21, p22, p23, p30, p31, p32, p33 = _load_pose(p_P_t)

    G = D // 8
    b_ca, b_sa, b_cb, b_sb = _cam_rope_groups(p_cos + i_t * stride_ct + i_s * stride_cs,
                                              p_sin + i_t * stride_st + i_s * stride_ss, G, BLOCK_D, MODE == 2)

    if MODE == 2:
        b_y = _ucpe_groups(b_x, p00, p01, p02, p03, p10, p11, p12, p13, p20, p21, p22, p23, p30, p31, p32, p33,
                           b_ca, b_sa, b_cb, b_sb, G, BLOCK_H, BLOCK_D)
    elif MODE == 0:
        b_y = _ucpe_groups(b_x, p00, p10, p20, p30, p01, p11, p21, p31, p02, p12, p22, p32, p03, p13, p23, p33,
                           b_ca, b_sa, b_cb, b_sb, G, BLOCK_H, BLOCK_D)
    else:
        # [[A^T, -A^T b], [0, 1]] for P = [[A, b], [0, 1]].
        i03 = -(p00 * p03 + p10 * p13 + p20 * p23)
        i13 = -(p01 * p03 + p11 * p13 + p21 * p23)
        i23 = -(p02 * p03 + p12 * p13 + p22 * p23)
        b_y = _ucpe_groups(b_x, p00, p10, p20, i03, p01, p11, p21, i13, p02, p12, p22, i23, 0.0, 0.0, 0.0, 1.0,
                           b_ca, b_sa, b_cb, b_sb, G, BLOCK_H, BLOCK_D)
    o_out = (i_b.to(tl.int64) * stride_ob + i_t * stride_ot + i_s * stride_os
             + o_h[:, None].to(tl.int64) * stride_oh + o_d[None, :])
    tl.store(p_out + o_out, b_y.to(p_out.dtype.element_ty), mask=m_hd)


def ucpe_prep_triton(x: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, mode: str,
                     out_dtype: torch.dtype = torch.float32, token_major: bool = False) -> Tensor:
    """Triton version of `kernels.prep.ucpe_prep_reference` (same arguments and result; token_major gives it as
    [B, T, S, H, D] instead of [B, H, T, S, D])."""
    B, H, T, S, D = _check_ucpe(x, P, cam_cos, cam_sin, mode)
    if x.stride(-1) != 1:
        x = x.contiguous()
    P = P.float().contiguous()
    cam_cos = cam_cos if cam_cos.stride(-1) == 1 else cam_cos.contiguous()
    cam_sin = cam_sin if cam_sin.stride(-1) == 1 else cam_sin.contiguous()
    if token_major:
        out = _empty((B, T, S, H, D), x.device, out_dtype)
        out_strides = (out.stride(0), out.stride(3), out.stride(1), out.stride(2))
    else:
        out = _empty((B, H, T, S, D), x.device, out_dtype)
        out_strides = out.stride()[:4]
    block_h, block_d = triton.next_power_of_2(H), triton.next_power_of_2(D)
    _ucpe_prep_kernel[(B * T * S,)](
        x, P, cam_cos, cam_sin, out, *x.stride()[:4], *out_strides,
        cam_cos.stride(0), cam_cos.stride(1), cam_sin.stride(0), cam_sin.stride(1),
        T, S, H, D,
        BLOCK_H=block_h, BLOCK_D=block_d, MODE=UCPE_MODES.index(mode), num_warps=_prep_warps(block_h * block_d),
    )
    return out


@triton.jit
def _ucpe_groups(b_x, m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33,
                 b_ca, b_sa, b_cb, b_sb, G, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """UCPE of an [R, D] tile (rows: heads of one token, or tokens of one head): the 4-groups c < G (= D/8)
    -> M g, the groups c >= G hold two RoPE pairs rotated by (b_ca, b_sa) and (b_cb, b_sb). The m's are
    scalars or [R, 1] columns, the cos / sin [1, D/4] or [R, D/4] (indexed by group)."""
    BLOCK_C: tl.constexpr = BLOCK_D // 4
    b_e, b_o = tl.split(tl.reshape(b_x, [BLOCK_R, BLOCK_C, 2, 2]))      # (x0, x2), (x1, x3)
    x0, x2 = tl.split(b_e)
    x1, x3 = tl.split(b_o)
    is_grp = (tl.arange(0, BLOCK_C) < G)[None, :]
    y0 = tl.where(is_grp, m00 * x0 + m01 * x1 + m02 * x2 + m03 * x3, x0 * b_ca - x1 * b_sa)
    y1 = tl.where(is_grp, m10 * x0 + m11 * x1 + m12 * x2 + m13 * x3, x0 * b_sa + x1 * b_ca)
    y2 = tl.where(is_grp, m20 * x0 + m21 * x1 + m22 * x2 + m23 * x3, x2 * b_cb - x3 * b_sb)
    y3 = tl.where(is_grp, m30 * x0 + m31 * x1 + m32 * x2 + m33 * x3, x2 * b_sb + x3 * b_cb)
    return tl.reshape(tl.join(tl.join(y0, y2), tl.join(y1, y3)), [BLOCK_R, BLOCK_D])


@triton.jit
def _ucpe_qkv_prep_kernel(
    p_q, p_k, p_v, p_wq, p_wk, p_P, p_cos, p_sin, p_qo, p_ko, p_vo, p_ratio,
    stride_qb, stride_qt, stride_qs, stride_kb, stride_kt, stride_ks, stride_vb, stride_vt, stride_vs,
    stride_ct, stride_cs, stride_st, stride_ss,
    T, S, H, D, C, key_scale, eps,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr,
):
    # One token per program, its heads BLOCK_H at a time (see PREP_HEADS).
    i_tok, i_b, i_t, i_s = _token_coords(T, S)
    o_h = tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, BLOCK_D)
    p_q_t = p_q + i_b * stride_qb + i_t * stride_qt + i_s * stride_qs
    p_k_t = p_k + i_b * stride_kb + i_t * stride_kt + i_s * stride_ks
    p_v_t = p_v + i_b * stride_vb + i_t * stride_vt + i_s * stride_vs
    b_rq = _inv_rms(p_q_t, C, eps, BLOCK_C)
    b_rk = _inv_rms(p_k_t, C, eps, BLOCK_C)

    # Pose of this token, row-major 4x4 scalars.
    p_P_t = p_P + i_tok.to(tl.int64) * 16
    p00, p01, p02, p03, p10, p11, p12, p13, p20, p21, p22, p23, p30, p31, p32, p33 = _load_pose(p_P_t)
    # Rigid inverse [[A^T, -A^T b], [0, 1]] for k and v.
    i03 = -(p00 * p03 + p10 * p13 + p20 * p23)
    i13 = -(p01 * p03 + p11 * p13 + p21 * p23)
    i23 = -(p02 * p03 + p12 * p13 + p22 * p23)
    G = D // 8
    b_ca, b_sa, b_cb, b_sb = _cam_rope_groups(p_cos + i_t * stride_ct + i_s * stride_cs,
                                              p_sin + i_t * stride_st + i_s * stride_ss, G, BLOCK_D, False)

    for h0 in range(0, H, BLOCK_H):
        m_h = h0 + o_h < H
        m_hd = m_h[:, None] & (o_d[None, :] < D)
        o_c = (h0 + o_h)[:, None] * D + o_d[None, :]
        b_v = tl.load(p_v_t + o_c, mask=m_hd, other=0.0).to(tl.float32)
        b_q, b_k = _normed_qk(p_q_t, p_k_t, p_wq, p_wk, o_c, m_hd, b_rq, b_rk, key_scale, RELU)

        b_qp = _ucpe_groups(b_q, p00, p10, p20, p30, p01, p11, p21, p31, p02, p12, p22, p32, p03, p13, p23, p33,
                            b_ca, b_sa, b_cb, b_sb, G, BLOCK_H, BLOCK_D)
        b_kp = _ucpe_groups(b_k, p00, p10, p20, i03, p01, p11, p21, i13, p02, p12, p22, i23, 0.0, 0.0, 0.0, 1.0,
                            b_ca, b_sa, b_cb, b_sb, G, BLOCK_H, BLOCK_D)
        b_vp = _ucpe_groups(b_v, p00, p10, p20, i03, p01, p11, p21, i13, p02, p12, p22, i23, 0.0, 0.0, 0.0, 1.0,
                            b_ca, b_sa, b_cb, b_sb, G, BLOCK_H, BLOCK_D)

        o_out = ((i_b * H + h0 + o_h[:, None]).to(tl.int64) * T + i_t) * S * D + i_s * D + o_d[None, :]
        tl.store(p_qo + o_out, b_qp.to(p_qo.dtype.element_ty), mask=m_hd)
        tl.store(p_ko + o_out, b_kp.to(p_ko.dtype.element_ty), mask=m_hd)
        tl.store(p_vo + o_out, b_vp.to(p_vo.dtype.element_ty), mask=m_hd)
        # |k'|^2 / max(|k|^2, 1e-12) per head (before any rounding of k' to out_dtype, like the reference).
        b_ratio = tl.sum(b_kp * b_kp, axis=1) / tl.maximum(tl.sum(b_k * b_k, axis=1), 1e-12)
        tl.store(p_ratio + ((i_b * H + h0 + o_h).to(tl.int64) * T + i_t) * S + i_s, b_ratio, mask=m_h)


def ucpe_qkv_prep_triton(q: Tensor, k: Tensor, v: Tensor, q_weight: Tensor, k_weight: Tensor, P: Tensor,
                         cam_cos: Tensor, cam_sin: Tensor, *, num_heads: int, key_scale: float, eps: float = 1e-5,
                         relu: bool = True,
                         out_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton version of `kernels.prep.ucpe_qkv_prep_reference` with `per_token_ratio=True`: the last result is the
    key-norm ratio per token [B, H, T, S], its mean over S left to the caller."""
    B, T, S, C = _check_ucpe_qkv(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, num_heads)
    H, D = num_heads, C // num_heads
    q, k, v, cam_cos, cam_sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, cam_cos, cam_sin))
    P = P.float().contiguous()
    q_weight, k_weight = q_weight.contiguous(), k_weight.contiguous()
    outs = [_empty((B, H, T, S, D), q.device, out_dtype) for _ in range(3)]
    ratio = _empty((B, H, T, S), q.device)
    block_d = triton.next_power_of_2(D)
    block_h = _heads_per_step(H)
    _ucpe_qkv_prep_kernel[(B * T * S,)](
        q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, *outs, ratio,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        cam_cos.stride(0), cam_cos.stride(1), cam_sin.stride(0), cam_sin.stride(1),
        T, S, H, D, C, float(key_scale), float(eps),
        BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_C=_rms_block(C), RELU=relu,
        num_warps=_prep_warps(block_h * block_d),
    )
    return (*outs, ratio)


@triton.jit
def _beta_discount_kernel(p_beta, p_ratio, p_out, S, s_bb, s_bh, s_bt, s_bs, H, T, BLOCK_S: tl.constexpr):
    """One program per (b, h, t): beta / max(1, mean over the frame's S tokens of the key-norm ratio)."""
    i_bht = tl.program_id(0)
    i_bh, i_t = i_bht // T, i_bht % T
    i_b, i_h = i_bh // H, i_bh % H
    o_s = tl.arange(0, BLOCK_S)
    row = i_bht.to(tl.int64) * S
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        total += tl.load(p_ratio + row + s0 + o_s, mask=s0 + o_s < S, other=0.0)
    inv = 1.0 / tl.maximum(tl.sum(total, axis=0) / S, 1.0)
    p_b = p_beta + i_b.to(tl.int64) * s_bb + i_h.to(tl.int64) * s_bh + i_t.to(tl.int64) * s_bt
    for s0 in range(0, S, BLOCK_S):
        m = s0 + o_s < S
        b = tl.load(p_b + (s0 + o_s).to(tl.int64) * s_bs, mask=m, other=0.0).to(tl.float32)
        tl.store(p_out + row + s0 + o_s, b * inv, mask=m)


def ucpe_beta_discount_triton(beta: Tensor, ratio: Tensor) -> Tensor:
    """Triton version of `kernels.prep.ucpe_beta_discount_reference` (one launch; fp32 [B, H, T, S] out)."""
    B, H, T, S = ratio.shape
    ratio = ratio.float().contiguous()
    out = _empty((B, H, T, S), ratio.device)
    _beta_discount_kernel[(B * H * T,)](beta, ratio, out, S, *beta.stride(), H, T,
                                        BLOCK_S=min(1024, triton.next_power_of_2(S)), num_warps=4)
    return out
