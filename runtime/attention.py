"""Dual-branch self-attention of every block: a main branch (GDN or softmax) plus the UCPE camera branch,
summed before the shared output gate and projection (spec sections 2, 3, 4.2-4.4).

Both kinds share one parameter layout (the checkpoints keep the GDN gate parameters in softmax blocks too);
only GDN blocks have the K short convolutions `conv_k` / `conv_k_cam`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.attention_int8 import attention_int8
from kernels.gdn_layer import gdn_layer, split_heads
from kernels.prep import gdn_prep, ucpe_prep, ucpe_qkv_prep
from quant.attention import attention_fp8
from runtime.cache import GDNBlockCache, SoftmaxBlockCache
from runtime.config import ModelConfig
from runtime.norms import RMSNorm
from runtime.short_conv import bidirectional_short_conv, next_left_context
from runtime.stacked_linear import StackedLinears

ATTENTION_KERNELS = ("sdpa", "int8", "int8_bf16v")
"""How the softmax blocks' self-attention runs: "sdpa" (bf16 F.scaled_dot_product_attention, as the official
model), "int8" (INT8 scores, E4M3 values and probabilities, kernels.attention_int8) or "int8_bf16v" (INT8 scores,
the value product in bf16 from the cached values as they are). Both INT8 kinds are opt-in: on the H200 (round 29) the kernel
is no faster than cuDNN's bf16 attention even before the per-call quantization, and the FP8 generator with it is
~10 ms per chunk slower; they are kept for GPUs whose INT8 tensor rate is relatively higher (consumer cards run bf16
products with fp32 accumulation at half rate). Quality on the shipped model: docs/quantization.md. Default from
SANA_WM_ATTENTION."""
DEFAULT_ATTENTION_KERNEL = os.environ.get("SANA_WM_ATTENTION", "sdpa")
if DEFAULT_ATTENTION_KERNEL not in ATTENTION_KERNELS:
    raise ValueError(f"SANA_WM_ATTENTION: expected one of {', '.join(ATTENTION_KERNELS)}, got "
                     f"{DEFAULT_ATTENTION_KERNEL!r}")

# SiLU(1.278464542761074) = 1: the output gate starts as identity.
OUTPUT_GATE_BIAS = 1.278464542761074


@dataclass
class FrameContext:
    """What every block needs to know about the frames of one forward call."""

    chunks: tuple[tuple[int, int], ...]
    """(start, end) local frame ranges; one chunk = bidirectional over the call."""
    grid: tuple[int, int]
    """Latent (height, width)."""
    rope: tuple[Tensor, Tensor]
    """Main-branch RoPE cos / sin [T, S, D/2] at absolute frame positions."""
    cam_rope: tuple[Tensor, Tensor]
    """Camera-branch RoPE cos / sin [T, S, D/4]."""
    rays: Tensor
    """UCPE world-to-ray matrices [B, T, S, 4, 4] fp32."""
    softmax_mask: Tensor | None
    """Bool [N, N] chunk-causal mask with sink and window for multi-chunk calls, else None."""
    write_cache: bool = False
    """This is the clean pass that writes the streaming caches."""


def _tokens(x: Tensor) -> Tensor:
    """[B, H, T, S, D] -> [B, T, S, H*D]."""
    B, H, T, S, D = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, T, S, H * D)


class CameraAttention(nn.Module):
    """Parameters shared by both block kinds (names as in the official checkpoints)."""

    def __init__(self, cfg: ModelConfig, has_short_conv: bool):
        super().__init__()
        C, H = cfg.hidden_size, cfg.num_heads
        self.cfg = cfg
        self.num_heads = H
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)
        self.q_norm = RMSNorm(C, eps=1e-5)
        self.k_norm = RMSNorm(C, eps=1e-5)
        self.beta_proj = nn.Linear(C, H)
        self.gate_proj = nn.Linear(C, H)
        self.A_log = nn.Parameter(torch.zeros(H))
        self.dt_bias = nn.Parameter(torch.full((H,), -5.0))
        self.register_buffer("recall_gate", torch.zeros(1))
        self.output_gate = nn.Linear(C, C)
        nn.init.zeros_(self.output_gate.weight)
        nn.init.constant_(self.output_gate.bias, OUTPUT_GATE_BIAS)
        self.q_proj_cam = nn.Linear(C, C)
        self.k_proj_cam = nn.Linear(C, C)
        self.v_proj_cam = nn.Linear(C, C)
        self.out_proj_cam = nn.Linear(C, C)
        nn.init.zeros_(self.out_proj_cam.weight)
        nn.init.zeros_(self.out_proj_cam.bias)
        self.q_norm_cam = RMSNorm(C, eps=1e-5)
        self.k_norm_cam = RMSNorm(C, eps=1e-5)
        if has_short_conv:
            K = cfg.conv_kernel_size
            self.conv_k = nn.Conv1d(C, C, K, groups=C, bias=False)
            self.conv_k_cam = nn.Conv1d(C, C, K, groups=C, bias=False)
            for conv in (self.conv_k, self.conv_k_cam):   # identity: last tap 1
                nn.init.zeros_(conv.weight)
                with torch.no_grad():
                    conv.weight[:, 0, -1] = 1.0

    _input_stack: StackedLinears | None = None
    """The projections of the block input as one GEMM (`stack_input_projections_`), or None."""

    def _input_layers(self) -> list[nn.Module]:
        """The linear layers that read the block input x, in `input_projections`' order (the GDN gate_proj reads
        its frame mean instead)."""
        return [self.qkv, self.output_gate]

    def input_projections(self, x: Tensor, codes: Tensor | None = None) -> list[Tensor]:
        """[qkv(x), output_gate(x), ...] (see `_input_layers`): one GEMM when stacked. codes: x's E4M3 codes under
        `prequantized_input_scale()` (kernels.norm_modulate), taken by the stacked FP8 GEMM as they are."""
        if self._input_stack is not None:
            if codes is not None:
                return self._input_stack(codes, out_dtype=x.dtype)
            return self._input_stack(x)
        return [m(x) for m in self._input_layers()]

    def prequantized_input_scale(self) -> Tensor | None:
        """The static scale under which `forward` takes its input already quantized (`codes`): the stacked FP8 input
        projections' (compile_blocks stacks them after calibration), or None."""
        stack = self._input_stack
        return None if stack is None or stack.hooked() else stack.static_input_scale

    _gate_stack: StackedLinears | None = None
    """gate_proj alone with its FP8 weight stored padded to 32 rows (`stack_input_projections_`), or None."""

    def stack_input_projections_(self) -> bool:
        """Stack the layers that read the block input (`_input_layers`) into one GEMM (runtime.stacked_linear:
        their weights become views of one matrix; same names, shapes and values), and store an FP8 gate_proj's
        weight padded once (it reads the frame mean). `compile_blocks` does this, after any FP8 calibration.
        Returns whether it stacked (plain bf16 / fp32 layers, or per-tensor FP8 layers with one input scale;
        NVFP4 layers keep their own GEMMs)."""
        self._input_stack = StackedLinears.stack(self._input_layers())
        self._gate_stack = StackedLinears.stack([self.gate_proj])
        return self._input_stack is not None

    def gates(self, x: Tensor, beta_logits: Tensor) -> tuple[Tensor, Tensor]:
        """beta [B, H, T, S] per token (from beta_proj(x), `beta_logits`) and decay g [B, H, T] per frame, from
        the block input."""
        beta = torch.sigmoid(beta_logits.float()).permute(0, 3, 1, 2)
        frame_mean = x.mean(dim=2)                                          # [B, T, C]
        if self._gate_stack is not None:
            pooled = self._gate_stack(frame_mean)[0].float()                # [B, T, H]
        else:
            pooled = self.gate_proj(frame_mean).float()
        g = torch.exp(-torch.exp(self.A_log.float()) * F.softplus(pooled + self.dt_bias.float()))
        return beta, g.permute(0, 2, 1)

    def combine(self, gate_logits: Tensor, main: Tensor, cam: Tensor) -> Tensor:
        """proj((main + cam) * SiLU(output_gate(x))), with `gate_logits` = output_gate(x)."""
        gate = F.silu(gate_logits.float())
        return self.proj(((main.float() + cam.float()) * gate).to(gate_logits.dtype))

    def fuse_camera_projections_(self) -> bool:
        """Store q/k/v_proj_cam's weights and biases as row blocks of one [3 C, C] matrix (the three parameters
        become views of it: same names, shapes and values), so that the camera branch runs one GEMM instead of
        three (`compile_blocks` does this; a quantized camera projection keeps its own GEMM). Returns whether it
        fused. Afterwards load weights with `load_state_dict` (it copies into the views), not with `assign=True`,
        which would swap in parameters the fused matrix does not see; and save checkpoints before fusing (the three
        parameters then share one storage, which safetensors refuses to write)."""
        layers = (self.q_proj_cam, self.k_proj_cam, self.v_proj_cam)
        if not all(type(m) is nn.Linear and m.bias is not None for m in layers):
            return False
        weight = torch.cat([m.weight.detach() for m in layers])
        bias = torch.cat([m.bias.detach() for m in layers])
        C = self.cfg.hidden_size
        for i, m in enumerate(layers):
            m.weight = nn.Parameter(weight[i * C:(i + 1) * C], requires_grad=False)
            m.bias = nn.Parameter(bias[i * C:(i + 1) * C], requires_grad=False)
        self._camera_qkv = (weight, bias)
        return True

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # .to() / .cuda() converted the views one by one: stack them again
        if getattr(self, "_camera_qkv", None) is not None:
            self.fuse_camera_projections_()
        if self._input_stack is not None or self._gate_stack is not None:
            self.stack_input_projections_()
        return out

    def camera_projections(self, x: Tensor, ctx: FrameContext, chunks_conv: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Camera-branch q, k, v [B, T, S, C] before their norms (k through its short conv in GDN blocks)."""
        fused = getattr(self, "_camera_qkv", None)
        if fused is not None:
            qc, kc, vc = F.linear(x, *fused).chunk(3, dim=-1)
        else:
            qc, kc, vc = self.q_proj_cam(x), self.k_proj_cam(x), self.v_proj_cam(x)
        if chunks_conv:
            # The camera K conv is bidirectional inside each chunk and carries nothing across chunks.
            kc = bidirectional_short_conv(kc, self.conv_k_cam.weight, ctx.chunks, causal_across_chunks=False)
        return qc, kc, vc

    def camera_qkv(self, x: Tensor, ctx: FrameContext, relu: bool, key_scale: float, chunks_conv: bool):
        """Camera-branch q', k', v' [B, H, T, S, D] after norms, (ReLU, key scale) and UCPE, plus the per-frame
        key-norm inflation of the UCPE transform [B, H, T] (for the beta discount). One fused op."""
        qc, kc, vc = self.camera_projections(x, ctx, chunks_conv)
        return ucpe_qkv_prep(qc, kc, vc, self.q_norm_cam.weight, self.k_norm_cam.weight, ctx.rays, *ctx.cam_rope,
                             num_heads=self.num_heads, key_scale=key_scale, relu=relu, out_dtype=x.dtype)


class GDNAttention(CameraAttention):
    """Frame-wise Gated DeltaNet main branch + numerator-only delta-rule camera branch."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, has_short_conv=True)
        self.key_scale = 1.0 / math.sqrt(cfg.head_dim * cfg.tokens_per_frame)

    def _input_layers(self) -> list[nn.Module]:
        return [self.qkv, self.output_gate, self.beta_proj]

    def forward(self, x: Tensor, ctx: FrameContext, cache: GDNBlockCache | None = None,
                codes: Tensor | None = None) -> Tensor:
        """x [B, T, S, C] (modulated block input) -> [B, T, S, C]; codes: x in E4M3 (`input_projections`)."""
        qkv, gate_logits, beta_logits = self.input_projections(x, codes)
        q, k, v = qkv.chunk(3, dim=-1)
        write = cache is not None and ctx.write_cache
        k_conv = bidirectional_short_conv(k, self.conv_k.weight, ctx.chunks, causal_across_chunks=True,
                                          left_context=None if cache is None else cache.conv_k)
        if write:
            cache.conv_k.copy_(next_left_context(k, cache.conv_k))
        beta, g = self.gates(x, beta_logits)
        qc, kc, vc = self.camera_projections(x, ctx, chunks_conv=True)
        # Both branches' preps and scans in one op (concurrent on the GPU). Prep outputs in the model's dtype: bf16
        # on the GPU halves their traffic and gives the scans their bf16 tensor-core path (fp32 inputs would take
        # the 3xTF32 path, ~3x slower); fp32 on the CPU, unchanged. The camera branch's beta is discounted by the
        # UCPE key-norm inflation and its inverse UCPE runs in the scan's epilogue.
        main, cam, final = gdn_layer(
            q, k_conv, v, self.q_norm.weight, self.k_norm.weight, *ctx.rope, beta, g,
            qc, kc, vc, self.q_norm_cam.weight, self.k_norm_cam.weight, ctx.rays, *ctx.cam_rope,
            num_heads=self.num_heads, key_scale=self.key_scale, eps=self.cfg.gdn_eps,
            initial_state=None if cache is None else (cache.state, cache.z, cache.cam_state),
            output_final_state=write, chunks=ctx.chunks, out_dtype=x.dtype, token_major=True)
        if write:
            cache.state.copy_(final[0])
            cache.z.copy_(final[1])
            cache.cam_state.copy_(final[2])
        # Both outputs come token-major in the model's dtype: the projections read them without a copy.
        return self.combine(gate_logits, main.flatten(3), self.out_proj_cam(cam.flatten(3)))


class SoftmaxAttention(CameraAttention):
    """Softmax attention main branch + UCPE softmax camera branch, with sink + window K/V when streaming."""

    fp8_attention = ""
    """Which attention operands to round to E4M3 (letters of "qkvp"; "" = none, the default): an emulated FP8
    attention (`quant.attention`, dynamic per-tensor scales) for measuring its quality
    (`quant.enable_fp8_attention_`, bench/quant_quality.py); the official model attends in bf16."""

    attention_kernel = DEFAULT_ATTENTION_KERNEL
    """ATTENTION_KERNELS: which kernel runs the unmasked self-attention (`set_attention_kernel_`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, has_short_conv=False)
        self.main_scale = 1.0 / math.sqrt(cfg.main_softmax_scale_dim)
        self.cam_scale = 1.0 / math.sqrt(cfg.cam_softmax_scale_dim)

    def forward(self, x: Tensor, ctx: FrameContext, cache: SoftmaxBlockCache | None = None,
                codes: Tensor | None = None) -> Tensor:
        T, S = x.shape[1:3]
        qkv, gate_logits = self.input_projections(x, codes)
        q, k, v = qkv.chunk(3, dim=-1)
        _, _, q_rot, k_rot = gdn_prep(q, k, self.q_norm.weight, self.k_norm.weight, *ctx.rope,
                                      num_heads=self.num_heads, key_scale=1.0, relu=False, out_dtype=x.dtype)
        dtype = x.dtype
        qm, km, vm = (t.flatten(2, 3).to(dtype) for t in (q_rot, k_rot, split_heads(v, self.num_heads)))
        qp, kp, vp, _ = self.camera_qkv(x, ctx, relu=False, key_scale=1.0, chunks_conv=False)
        qc, kc, vc = (t.flatten(2, 3).to(dtype) for t in (qp, kp, vp))
        mask = ctx.softmax_mask
        if isinstance(cache, SoftmaxBlockCache) and mask is None and self.main_scale == self.cam_scale:
            # Streaming: both branches in one attention call, a batch of two over views of the cache (H200, round
            # 17: 0.909 ms instead of 0.978 ms for two calls: one launch of twice the query tiles fills the GPU's
            # last wave better).
            keys, values = cache.pair_context(km, vm, kc, vc)
            both = self._attend(torch.stack([qm, qc]).flatten(0, 1), keys.flatten(0, 1), values.flatten(0, 1),
                                None, self.main_scale)
            main, cam = both.unflatten(0, (2, -1)).unbind(0)
        else:
            if cache is not None:
                km_all, vm_all, kc_all, vc_all = cache.context(km, vm, kc, vc)
            else:
                km_all, vm_all, kc_all, vc_all = km, vm, kc, vc
            main = self._attend(qm, km_all, vm_all, mask, self.main_scale)
            cam = self._attend(qc, kc_all, vc_all, mask, self.cam_scale)
        if cache is not None and ctx.write_cache:
            cache.write(km, vm, kc, vc)   # after the attention: the context may be a view of the slots it overwrites
        # Written token-major by the kernel: the projection reads it without a transposing copy.
        cam = ucpe_prep(cam.unflatten(2, (T, S)), ctx.rays, *ctx.cam_rope, "out", out_dtype=dtype, token_major=True)
        cam = self.out_proj_cam(cam.flatten(3))
        return self.combine(gate_logits, _tokens(main.unflatten(2, (T, S))), cam)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        if self.fp8_attention:
            return attention_fp8(q, k, v, scale, attn_mask=mask, operands=self.fp8_attention)
        if self.attention_kernel != "sdpa" and mask is None:
            return attention_int8(q, k, v, scale, v_fp8=self.attention_kernel == "int8")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def set_attention_kernel_(model: nn.Module, kernel: str) -> int:
    """Run every softmax block's unmasked self-attention with `kernel` (one of ATTENTION_KERNELS); returns how
    many blocks it set. Masked calls (not in the streaming steady state) stay on SDPA."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel: expected one of {', '.join(ATTENTION_KERNELS)}, got {kernel!r}")
    blocks = [m for m in model.modules() if isinstance(m, SoftmaxAttention)]
    for attn in blocks:
        attn.attention_kernel = kernel
    return len(blocks)


def attention_kernels_of(model) -> list[str] | None:
    """The kernels a model's softmax blocks attend with (ATTENTION_KERNELS, sorted), for records; None for a model
    without such blocks (e.g. an engine backend's stand-in)."""
    modules = model.modules() if isinstance(model, nn.Module) else ()
    return sorted({m.attention_kernel for m in modules if isinstance(m, SoftmaxAttention)}) or None
