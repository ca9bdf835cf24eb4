"""Cross-attention from video tokens to text tokens (spec section 1.4)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from runtime.norms import RMSNorm


class MultiHeadCrossAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(hidden, hidden)
        self.kv_linear = nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        # q / k RMS-normalised over all channels before the head split (cross_norm).
        self.q_norm = RMSNorm(hidden, eps=1e-6)
        self.k_norm = RMSNorm(hidden, eps=1e-6)

    def text_kv(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the text [B, H, L, D]; constant over a session, so callers may cache them."""
        B, L, _ = y.shape
        k, v = self.kv_linear(y).chunk(2, dim=-1)
        k = self.k_norm(k)
        return (k.view(B, L, self.num_heads, -1).transpose(1, 2),
                v.view(B, L, self.num_heads, -1).transpose(1, 2))

    def forward(self, x: Tensor, y: Tensor | None, mask_bias: Tensor | None, kv: tuple[Tensor, Tensor] | None = None):
        """x [B, N, C]; y [B, L, C] (or precomputed `kv`); mask_bias [B, 1, 1, L] additive (-10000 on padding),
        or None when every key is valid."""
        B, N, C = x.shape
        k, v = kv if kv is not None else self.text_kv(y)
        q = self.q_norm(self.q_linear(x)).view(B, N, self.num_heads, -1).transpose(1, 2)
        bias = None if mask_bias is None else mask_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


def text_mask_bias(mask: Tensor) -> Tensor:
    """Bool / 0-1 mask [B, L] -> additive bias [B, 1, 1, L] (the official -10000 on padded keys)."""
    return ((1.0 - mask.float()) * -10000.0)[:, None, None, :]
