"""Write a softmax block's current K/V (four [B, H, n, D] streams) into its packed streaming-cache buffer
[streams, B, H, tokens, D] at token offset `start`: all streams in one launch.

PyTorch's copy_ into the buffer's slice (a non-contiguous view) takes its generic strided elementwise kernel, one
launch per stream: ~16.5 us per [1, 20, 2640, 112] bf16 stream (0.7 TB/s), 4 per softmax block and pass, ~2 ms per
chunk at the full size (H200 profile, round 24). The Triton kernel moves rows of D contiguous values (16-byte
accesses) with the sources' own strides (the main V is a strided view of the qkv projection's output).
"""
from __future__ import annotations

from torch import Tensor

from kernels.dispatch import use_triton

__all__ = ["copy_tokens", "copy_tokens_reference"]


def _check(buffer: Tensor, start: int, parts: list[Tensor]) -> None:
    if buffer.dim() != 5 or len(parts) != buffer.shape[0]:
        raise ValueError(f"copy_tokens: buffer [streams, B, H, tokens, D] with one part per stream, got buffer "
                         f"{tuple(buffer.shape)} and {len(parts)} parts")
    n = parts[0].shape[2]
    for part in parts:
        if part.shape != (*buffer.shape[1:3], n, buffer.shape[4]) or part.dtype != buffer.dtype:
            raise ValueError(f"copy_tokens: part {tuple(part.shape)} {part.dtype} does not fit buffer "
                             f"{tuple(buffer.shape)} {buffer.dtype}")
    if not 0 <= start <= buffer.shape[3] - n:
        raise ValueError(f"copy_tokens: tokens {start}:{start + n} outside the buffer's {buffer.shape[3]}")


def copy_tokens_reference(buffer: Tensor, start: int, parts: list[Tensor]) -> None:
    """buffer[i, :, :, start:start + n] = parts[i], in place."""
    _check(buffer, start, parts)
    n = parts[0].shape[2]
    for i, part in enumerate(parts):
        buffer[i, :, :, start:start + n].copy_(part)


def copy_tokens(buffer: Tensor, start: int, parts: list[Tensor], impl: str = "auto") -> None:
    """buffer[i, :, :, start:start + n] = parts[i] for every stream i, in place (Triton on CUDA for four streams
    whose rows are contiguous, else the reference)."""
    if (use_triton(buffer, impl) and len(parts) == 4 and buffer.stride(-1) == 1
            and all(p.stride(-1) == 1 for p in parts)):
        from kernels.token_copy_triton import copy_tokens_triton

        _check(buffer, start, parts)
        copy_tokens_triton(buffer, start, parts)
    else:
        copy_tokens_reference(buffer, start, parts)
