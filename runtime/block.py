"""One transformer block with frame-aware adaLN-single (spec section 1.3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from runtime.attention import FrameContext, GDNAttention, SoftmaxAttention
from runtime.config import ModelConfig
from runtime.cross_attention import MultiHeadCrossAttention
from runtime.ffn import GLUMBConvTemp
from runtime.norms import layer_norm, modulate


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
        x = x + gate_msa * self.attn(modulate(layer_norm(x), shift_msa, scale_msa), ctx, cache)
        x = x + plucker_term
        x = x + self.cross_attn(x.reshape(B, T * S, C), None, text_bias, kv=text_kv).view(B, T, S, C)
        left = None if cache is None else cache.tconv
        out = None if cache is None or not ctx.write_cache else cache.tconv
        h = self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp), ctx.grid, ctx.chunks, left, out)
        return x + gate_mlp * h
