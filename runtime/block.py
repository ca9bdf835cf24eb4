"""One transformer block with frame-aware adaLN-single (spec section 1.3)."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from kernels.norm_modulate import ln_modulate
from runtime.attention import FrameContext, GDNAttention, SoftmaxAttention
from runtime.config import ModelConfig
from runtime.cross_attention import MultiHeadCrossAttention
from runtime.ffn import GLUMBConvTemp
from runtime.norms import layer_norm, modulate

ADALN_KERNEL = os.environ.get("SANA_WM_ADALN_KERNEL", "1") == "1"
"""Whether FP8 blocks with static input scales take their attention and FFN inputs from one kernel pass
(kernels.norm_modulate: residual add, LayerNorm, modulate and the E4M3 codes their FP8 GEMMs read) instead of the
ops inductor fuses. On by default since round 35b (H200: 135.6 -> 133.4 ms per chunk for the FP8 static generator;
~21-24 us per call against ~35 / 26 us for inductor's two-pass reductions); SANA_WM_ADALN_KERNEL=0 turns it off."""


class SanaWMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, softmax: bool):
        super().__init__()
        C = cfg.hidden_size
        self.is_softmax = softmax
        self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)
        self.attn = SoftmaxAttention(cfg) if softmax else GDNAttention(cfg)
        self.plucker_proj = nn.Linear(C, C)
        nn.init.zeros_(self.plucker_proj.weight)
        nn.init.zeros_(self.plucker_proj.bias)
        self.cross_attn = MultiHeadCrossAttention(C, cfg.num_heads)
        self.mlp = GLUMBConvTemp(C, cfg.mlp_hidden, cfg.t_kernel_size)

    def forward(self, x: Tensor, t0: Tensor, plucker_term: Tensor, text_kv: tuple[Tensor, Tensor],
                text_bias: Tensor | None, ctx: FrameContext, cache=None) -> Tensor:
        """x [B, T, S, C]; t0 [B, T, 6, C] per-frame modulation; plucker_term [B, T, S, C]: this block's
        `plucker_proj` of the embedded ray maps (SanaWorldModel.plucker_terms, once per chunk)."""
        B, T, S, C = x.shape
        mods = (self.scale_shift_table[None, None] + t0).unbind(2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (m[:, :, None] for m in mods)
        attn_scale = self.attn.prequantized_input_scale() if ADALN_KERNEL else None
        # The kernel adds the table rows to t0's itself: views of the block's inputs, no kernel to materialise
        # shift / scale per call (inductor made two tiny ones per call, 400 launches per chunk).
        table, t0_rows = self.scale_shift_table, t0.unbind(2)
        if attn_scale is not None:
            _, h, codes = ln_modulate(x, t0_rows[0], t0_rows[1], out_scale=attn_scale, shift_bias=table[0],
                                      scale_bias=table[1])
            x = x + gate_msa * self.attn(h, ctx, cache, codes=codes)
        else:
            x = x + gate_msa * self.attn(modulate(layer_norm(x), shift_msa, scale_msa), ctx, cache)
        x = x + plucker_term
        cross = self.cross_attn(x.reshape(B, T * S, C), None, text_bias, kv=text_kv).view(B, T, S, C)
        left = None if cache is None else cache.tconv
        out = None if cache is None or not ctx.write_cache else cache.tconv
        ffn_scale = self.mlp.prequantized_input_scale() if ADALN_KERNEL else None
        if ffn_scale is not None:
            x, _, codes = ln_modulate(x, t0_rows[3], t0_rows[4], residual=cross, out_scale=ffn_scale,
                                      want_normed=False, shift_bias=table[3], scale_bias=table[4])
            h = self.mlp(codes, ctx.grid, ctx.chunks, left, out, act_dtype=x.dtype)
        else:
            x = x + cross
            h = self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp), ctx.grid, ctx.chunks, left, out)
        return x + gate_mlp * h
