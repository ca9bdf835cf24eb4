"""FP8 attention in the softmax blocks, emulated: a quality experiment beside the linear layers' policy (off by
default; bench/quant_quality.py measures it, docs/quantization.md has the result)."""
from __future__ import annotations

from torch import nn


def enable_fp8_attention_(model: nn.Module, operands: str = "qkvp") -> int:
    """Switch every softmax block's self-attention (main and camera branches) to E4M3 inputs and probabilities
    (`kernels.fp8_attention`, emulated in PyTorch: slow, for measuring quality); `operands` picks which of q, k, v
    and p are rounded ("" switches it off). Cross-attention stays bf16. Returns how many blocks it set."""
    from runtime.attention import SoftmaxAttention

    if not set(operands) <= set("qkvp"):
        raise ValueError(f"enable_fp8_attention_: operands must be letters of 'qkvp', got {operands!r}")
    blocks = [m for m in model.modules() if isinstance(m, SoftmaxAttention)]
    for attn in blocks:
        attn.fp8_attention = operands
    return len(blocks)
