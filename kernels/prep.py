"""Per-token pre-processing of the GDN block (spec 2.2) and the UCPE camera transforms (spec 4.3).

Three ops, each with a pure-PyTorch fp32 reference here and a Triton version in `kernels.prep_triton`;
the public functions pick Triton on CUDA and the reference elsewhere (same rule as `kernels.gdn`).

* `gdn_prep`: full-channel RMSNorm -> ReLU -> key scale -> split heads -> interleaved RoPE, producing the
  plain (denominator stream) and rotated (numerator stream) queries / keys in the scan layout.
* `ucpe_prep`: the camera branch's per-ray transform of a [B, H, T, S, D] tensor: the first D/2 dims are
  D/8 homogeneous 4-vectors multiplied by a 4x4 matrix built from the per-token pose P, the last D/2 dims
  get the camera RoPE (inverse rotation for the output).
* `ucpe_qkv_prep`: the whole camera-branch prep in one pass (spec 4.3 step 5-6): `gdn_prep` without RoPE on
  q and k, UCPE on q ("q"), k and v ("kv"), and the per-frame key-norm inflation for the beta discount.
  Same results as the three separate ops, about a third of the memory traffic.

`out_dtype` (default fp32) sets the dtype of the results; bf16 halves the traffic of the op and of the scan
that reads them, at bf16 rounding of q / k / v (the math stays fp32).

RoPE convention (both ops): pairs (2j, 2j+1) rotate by angle theta_j,
    y0 = x0 cos - x1 sin,   y1 = x0 sin + x1 cos      (the inverse uses -theta).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "UCPE_MODES",
    "gdn_prep",
    "gdn_prep_reference",
    "rigid_inverse",
    "ucpe_beta_discount",
    "ucpe_beta_discount_reference",
    "ucpe_prep",
    "ucpe_prep_reference",
    "ucpe_qkv_prep",
    "ucpe_qkv_prep_reference",
]

UCPE_MODES = ("q", "kv", "out")


# ----------------------------------------------------------------------------------------------------------
# References (fp32 math)
# ----------------------------------------------------------------------------------------------------------
def _rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor, inverse: bool = False) -> Tensor:
    """Rotate pairs (2j, 2j+1) of the last dim of x [..., 2n] by cos/sin [..., n] (broadcast)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    if inverse:
        sin = -sin
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return torch.stack((y0, y1), dim=-1).flatten(-2)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def gdn_prep_reference(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, rope_cos: Tensor,
                       rope_sin: Tensor, *, num_heads: int, key_scale: float, eps: float = 1e-5,
                       relu: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fp32 PyTorch reference of `gdn_prep` (same arguments and results)."""
    B, T, S, C = _check_prep(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads)
    D = C // num_heads
    qn = _rms_norm(q, q_weight, eps)
    kn = _rms_norm(k, k_weight, eps)
    if relu:
        qn, kn = torch.relu(qn), torch.relu(kn)
    kn = kn * key_scale
    qh = qn.view(B, T, S, num_heads, D).permute(0, 3, 1, 2, 4).contiguous()
    kh = kn.view(B, T, S, num_heads, D).permute(0, 3, 1, 2, 4).contiguous()
    cos, sin = rope_cos.float()[None, None], rope_sin.float()[None, None]
    return qh, kh, _rope_interleaved(qh, cos, sin), _rope_interleaved(kh, cos, sin)


def rigid_inverse(P: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms [[A, b], [0, 1]] (A orthonormal): [[A^T, -A^T b], [0, 1]]."""
    A = P[..., :3, :3]
    b = P[..., :3, 3:]
    At = A.transpose(-1, -2)
    out = torch.zeros_like(P)
    out[..., :3, :3] = At
    out[..., :3, 3:] = -(At @ b)
    out[..., 3, 3] = 1.0
    return out


def ucpe_prep_reference(x: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, mode: str) -> Tensor:
    """fp32 PyTorch reference of `ucpe_prep` (same arguments and result)."""
    B, H, T, S, D = _check_ucpe(x, P, cam_cos, cam_sin, mode)
    x = x.float()
    P = P.float()
    if mode == "q":
        M = P.transpose(-1, -2)
    elif mode == "kv":
        M = rigid_inverse(P)
    else:
        M = P
    half = D // 2
    groups = x[..., :half].reshape(B, H, T, S, half // 4, 4)
    # M [B, T, S, 4, 4] acts on each group: out_i = sum_j M_ij g_j.
    g_out = torch.einsum("btsij,bhtsgj->bhtsgi", M, groups).reshape(B, H, T, S, half)
    cos, sin = cam_cos.float()[None, None], cam_sin.float()[None, None]
    r_out = _rope_interleaved(x[..., half:], cos, sin, inverse=(mode == "out"))
    return torch.cat((g_out, r_out), dim=-1)


def _norm_heads(x: Tensor, weight: Tensor, eps: float, relu: bool, scale: float, num_heads: int) -> Tensor:
    """[B, T, S, C] -> RMSNorm (full C) -> ReLU -> * scale -> [B, H, T, S, D] fp32."""
    B, T, S, C = x.shape
    y = _rms_norm(x, weight, eps)
    if relu:
        y = torch.relu(y)
    return (y * scale).view(B, T, S, num_heads, C // num_heads).permute(0, 3, 1, 2, 4).contiguous()


def ucpe_qkv_prep_reference(q: Tensor, k: Tensor, v: Tensor, q_weight: Tensor, k_weight: Tensor, P: Tensor,
                            cam_cos: Tensor, cam_sin: Tensor, *, num_heads: int, key_scale: float,
                            eps: float = 1e-5, relu: bool = True,
                            per_token_ratio: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fp32 PyTorch reference of `ucpe_qkv_prep` (same arguments and results)."""
    _check_ucpe_qkv(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, num_heads)
    B, T, S, C = q.shape
    qh = _norm_heads(q, q_weight, eps, relu, 1.0, num_heads)
    kh = _norm_heads(k, k_weight, eps, relu, key_scale, num_heads)
    vh = v.float().view(B, T, S, num_heads, C // num_heads).permute(0, 3, 1, 2, 4)
    qp = ucpe_prep_reference(qh, P, cam_cos, cam_sin, "q")
    kp = ucpe_prep_reference(kh, P, cam_cos, cam_sin, "kv")
    vp = ucpe_prep_reference(vh, P, cam_cos, cam_sin, "kv")
    ratio = kp.pow(2).sum(-1) / kh.pow(2).sum(-1).clamp_min(1e-12)
    return qp, kp, vp, ratio if per_token_ratio else ratio.mean(-1)


def ucpe_beta_discount_reference(beta: Tensor, ratio: Tensor) -> Tensor:
    """The camera branch's write strength: beta [B, H, T, S] / max(1, inflation), the inflation being the mean
    of the per-token key-norm ratio [B, H, T, S] over the frame's tokens (`ucpe_qkv_prep(..., per_token_ratio=
    True)`); fp32."""
    return beta.float() / ratio.float().mean(-1).clamp_min(1.0)[..., None]


def ucpe_beta_discount(beta: Tensor, ratio: Tensor, impl: str = "auto") -> Tensor:
    """`ucpe_beta_discount_reference` in one Triton launch (the mean, the clamp and the division were three eager
    kernels inside the GDN layer op: it runs eagerly, so inductor fuses nothing there). No custom op: it is called
    from inside `sana_wm::gdn_layer`."""
    if beta.shape != ratio.shape:
        raise ValueError(f"ucpe_beta_discount: beta {tuple(beta.shape)} and ratio {tuple(ratio.shape)} must both "
                         "be [B, H, T, S]")
    if _use_triton(ratio, impl):
        from kernels.prep_triton import ucpe_beta_discount_triton

        return ucpe_beta_discount_triton(beta, ratio)
    return ucpe_beta_discount_reference(beta, ratio)


def _check_ucpe_qkv(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, num_heads):
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"ucpe_qkv_prep: q, k, v must be [B, T, S, C] of one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, S, C = q.shape
    if C % num_heads or (C // num_heads) % 8:
        raise ValueError(f"ucpe_qkv_prep: C={C} must split into {num_heads} heads of a multiple of 8")
    D = C // num_heads
    if q_weight.shape != (C,) or k_weight.shape != (C,):
        raise ValueError(f"ucpe_qkv_prep: norm weights must be [{C}]; got {tuple(q_weight.shape)}, "
                         f"{tuple(k_weight.shape)}")
    if P.shape != (B, T, S, 4, 4):
        raise ValueError(f"ucpe_qkv_prep: P must be [B, T, S, 4, 4] = {(B, T, S, 4, 4)}; got {tuple(P.shape)}")
    if cam_cos.shape != (T, S, D // 4) or cam_sin.shape != (T, S, D // 4):
        raise ValueError(f"ucpe_qkv_prep: cam cos/sin must be [T, S, D/4] = {(T, S, D // 4)}; got "
                         f"{tuple(cam_cos.shape)}, {tuple(cam_sin.shape)}")
    return B, T, S, C


def _check_prep(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"gdn_prep: q and k must be [B, T, S, C] of one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    B, T, S, C = q.shape
    if C % num_heads or (C // num_heads) % 2:
        raise ValueError(f"gdn_prep: C={C} must split into {num_heads} heads of even size")
    if q_weight.shape != (C,) or k_weight.shape != (C,):
        raise ValueError(f"gdn_prep: norm weights must be [{C}]; got {tuple(q_weight.shape)}, "
                         f"{tuple(k_weight.shape)}")
    D = C // num_heads
    if rope_cos.shape != (T, S, D // 2) or rope_sin.shape != (T, S, D // 2):
        raise ValueError(f"gdn_prep: rope cos/sin must be [T, S, D/2] = {(T, S, D // 2)}; got "
                         f"{tuple(rope_cos.shape)}, {tuple(rope_sin.shape)}")
    return B, T, S, C


def _check_ucpe(x, P, cam_cos, cam_sin, mode):
    if mode not in UCPE_MODES:
        raise ValueError(f"ucpe_prep: mode must be one of {UCPE_MODES}; got {mode!r}")
    if x.dim() != 5:
        raise ValueError(f"ucpe_prep: x must be [B, H, T, S, D]; got {tuple(x.shape)}")
    B, H, T, S, D = x.shape
    if D % 8:
        raise ValueError(f"ucpe_prep: head dim {D} must be a multiple of 8")
    if P.shape != (B, T, S, 4, 4):
        raise ValueError(f"ucpe_prep: P must be [B, T, S, 4, 4] = {(B, T, S, 4, 4)}; got {tuple(P.shape)}")
    if cam_cos.shape != (T, S, D // 4) or cam_sin.shape != (T, S, D // 4):
        raise ValueError(f"ucpe_prep: cam cos/sin must be [T, S, D/4] = {(T, S, D // 4)}; got "
                         f"{tuple(cam_cos.shape)}, {tuple(cam_sin.shape)}")
    return B, H, T, S, D


# ----------------------------------------------------------------------------------------------------------
# torch.library custom ops around the Triton kernels (graph-safe: torch.compile sees one opaque op).
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("sana_wm::gdn_prep", mutates_args=())
def _gdn_prep_op(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, rope_cos: Tensor, rope_sin: Tensor,
                 num_heads: int, key_scale: float, eps: float, relu: bool,
                 out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from kernels.prep_triton import gdn_prep_triton

    return gdn_prep_triton(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads=num_heads,
                           key_scale=key_scale, eps=eps, relu=relu, out_dtype=out_dtype)


@_gdn_prep_op.register_fake
def _(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads, key_scale, eps, relu, out_dtype):
    B, T, S, C = q.shape
    shape = (B, num_heads, T, S, C // num_heads)
    return tuple(q.new_empty(shape, dtype=out_dtype) for _ in range(4))


@torch.library.custom_op("sana_wm::ucpe_prep", mutates_args=())
def _ucpe_prep_op(x: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, mode: str,
                  out_dtype: torch.dtype) -> Tensor:
    from kernels.prep_triton import ucpe_prep_triton

    return ucpe_prep_triton(x, P, cam_cos, cam_sin, mode, out_dtype=out_dtype)


@_ucpe_prep_op.register_fake
def _(x, P, cam_cos, cam_sin, mode, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype)


@torch.library.custom_op("sana_wm::ucpe_prep_tokens", mutates_args=())
def _ucpe_prep_tokens_op(x: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, mode: str,
                         out_dtype: torch.dtype) -> Tensor:
    from kernels.prep_triton import ucpe_prep_triton

    return ucpe_prep_triton(x, P, cam_cos, cam_sin, mode, out_dtype=out_dtype, token_major=True)


@_ucpe_prep_tokens_op.register_fake
def _(x, P, cam_cos, cam_sin, mode, out_dtype):
    B, H, T, S, D = x.shape
    return x.new_empty((B, T, S, H, D), dtype=out_dtype)


@torch.library.custom_op("sana_wm::ucpe_qkv_prep", mutates_args=())
def _ucpe_qkv_prep_op(q: Tensor, k: Tensor, v: Tensor, q_weight: Tensor, k_weight: Tensor, P: Tensor,
                      cam_cos: Tensor, cam_sin: Tensor, num_heads: int, key_scale: float, eps: float, relu: bool,
                      out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q', k', v' and the per-token inflation ratio [B, H, T, S]: its mean over S is left to the caller (inside
    the op it was one more eager kernel per call): fused by inductor in the softmax blocks' compiled camera branch,
    one launch with the beta discount in the GDN layer op (`ucpe_beta_discount`)."""
    from kernels.prep_triton import ucpe_qkv_prep_triton

    return ucpe_qkv_prep_triton(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, num_heads=num_heads,
                                key_scale=key_scale, eps=eps, relu=relu, out_dtype=out_dtype)


@_ucpe_qkv_prep_op.register_fake
def _(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, num_heads, key_scale, eps, relu, out_dtype):
    B, T, S, C = q.shape
    shape = (B, num_heads, T, S, C // num_heads)
    return (*(q.new_empty(shape, dtype=out_dtype) for _ in range(3)),
            q.new_empty((B, num_heads, T, S), dtype=torch.float32))


# ----------------------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------------------
from kernels.dispatch import HAVE_TRITON as _HAVE_TRITON  # noqa: F401
from kernels.dispatch import use_triton as _use_triton


def gdn_prep(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, rope_cos: Tensor, rope_sin: Tensor, *,
             num_heads: int, key_scale: float, eps: float = 1e-5, relu: bool = True,
             out_dtype: torch.dtype = torch.float32, impl: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RMSNorm (full C) -> ReLU -> key scale -> heads -> RoPE for the GDN scans (spec 2.2 steps 3-5).

    Args:
        q, k: [B, T, S, C] raw projections (k already through the short conv), any float dtype.
        q_weight, k_weight: [C] RMSNorm weights.
        rope_cos, rope_sin: [T, S, D/2] interleaved-pair RoPE tables, D = C / num_heads.
        num_heads: H.
        key_scale: multiplies k after the ReLU (D^-1/2 S^-1/2 in SANA-WM).
        eps: RMSNorm epsilon.
        relu: apply ReLU after the norm.
        out_dtype: dtype of the results (fp32 default; bf16 halves the traffic).
        impl: "auto" (Triton on CUDA), "triton" or "reference".
    Returns:
        (q, k, q_rot, k_rot), each [B, H, T, S, D] in out_dtype: plain (z stream) and rotated (numerator).
    """
    if _use_triton(q, impl):
        _check_prep(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads)
        return torch.ops.sana_wm.gdn_prep(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads,
                                          float(key_scale), float(eps), relu, out_dtype)
    out = gdn_prep_reference(q, k, q_weight, k_weight, rope_cos, rope_sin, num_heads=num_heads,
                             key_scale=key_scale, eps=eps, relu=relu)
    return tuple(t.to(out_dtype) for t in out)


def ucpe_prep(x: Tensor, P: Tensor, cam_cos: Tensor, cam_sin: Tensor, mode: str, *,
              out_dtype: torch.dtype = torch.float32, token_major: bool = False, impl: str = "auto") -> Tensor:
    """UCPE per-ray transform of the camera branch (spec 4.3 step 3).

    Args:
        x: [B, H, T, S, D] features (D a multiple of 8), any float dtype.
        P: [B, T, S, 4, 4] fp32 world -> ray-local rigid transform per token.
        cam_cos, cam_sin: [T, S, D/4] camera RoPE tables for the last D/2 dims.
        mode: "q" (groups g -> P^T g, RoPE), "kv" (g -> P^-1 g, RoPE) or "out" (g -> P g, inverse RoPE).
            The first D/2 dims are D/8 groups of 4 consecutive dims.
        out_dtype: dtype of the result (fp32 default).
        token_major: return [B, T, S, H, D] (contiguous: [B, T, S, H * D] is a view of it, the layout the
            camera branch's output projection reads) instead of [B, H, T, S, D].
        impl: "auto" (Triton on CUDA), "triton" or "reference".
    Returns:
        [B, H, T, S, D] (or [B, T, S, H, D]) in out_dtype.
    """
    if _use_triton(x, impl):
        _check_ucpe(x, P, cam_cos, cam_sin, mode)
        op = torch.ops.sana_wm.ucpe_prep_tokens if token_major else torch.ops.sana_wm.ucpe_prep
        return op(x, P, cam_cos, cam_sin, mode, out_dtype)
    out = ucpe_prep_reference(x, P, cam_cos, cam_sin, mode).to(out_dtype)
    return out.permute(0, 2, 3, 1, 4).contiguous() if token_major else out


def ucpe_qkv_prep(q: Tensor, k: Tensor, v: Tensor, q_weight: Tensor, k_weight: Tensor, P: Tensor,
                  cam_cos: Tensor, cam_sin: Tensor, *, num_heads: int, key_scale: float, eps: float = 1e-5,
                  relu: bool = True, out_dtype: torch.dtype = torch.float32, per_token_ratio: bool = False,
                  impl: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Camera-branch prep in one pass: equal to
        qh, kh, _, _ = gdn_prep(q, k, q_weight, k_weight, ..., num_heads, key_scale, eps, relu)
        q' = ucpe_prep(qh, P, ..., "q"); k' = ucpe_prep(kh, P, ..., "kv"); v' = ucpe_prep(heads(v), P, ..., "kv")
        inflation = mean_S(|k'|^2 / max(|kh|^2, 1e-12))      (per head and frame; beta_cam = beta / max(1, .))

    Args:
        q, k, v: [B, T, S, C] camera projections (k after its short conv), any float dtype.
        q_weight, k_weight: [C] RMSNorm weights of q and k (v is not normalized).
        P: [B, T, S, 4, 4] fp32 world -> ray-local rigid transforms.
        cam_cos, cam_sin: [T, S, D/4] camera RoPE tables.
        num_heads, key_scale, eps, relu: as `gdn_prep` (key_scale 1 and relu False for softmax blocks).
        out_dtype: dtype of q', k', v' (fp32 default).
        impl: "auto" (Triton on CUDA), "triton" or "reference".
    Returns:
        (q', k', v' [B, H, T, S, D] in out_dtype, inflation [B, H, T] fp32; with `per_token_ratio` the ratio
        per token [B, H, T, S] before its mean, for `ucpe_beta_discount`).
    """
    if _use_triton(q, impl):
        _check_ucpe_qkv(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin, num_heads)
        qp, kp, vp, ratio = torch.ops.sana_wm.ucpe_qkv_prep(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin,
                                                            num_heads, float(key_scale), float(eps), relu, out_dtype)
        return qp, kp, vp, ratio if per_token_ratio else ratio.mean(-1)
    qp, kp, vp, inflation = ucpe_qkv_prep_reference(q, k, v, q_weight, k_weight, P, cam_cos, cam_sin,
                                                     num_heads=num_heads, key_scale=key_scale, eps=eps, relu=relu,
                                                     per_token_ratio=per_token_ratio)
    return qp.to(out_dtype), kp.to(out_dtype), vp.to(out_dtype), inflation
