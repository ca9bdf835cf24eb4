"""The stage-2 refinement procedures (spec 6.5): SDEdit re-noising of stage-1 latents and 3 distilled Euler steps,
the clean sink frame kept as is.

Both modes are built from one primitive, `LTX2Refiner.forward` over a group of *active* frames whose queries
attend to a prefix of keys/values plus their own:

- Single-shot, sink-bidirectional (`refine_clip`): the active group is every frame after the sink; the prefix
  is the sink's K/V. In the official formulation one pass runs [sink ‖ current] with two attention calls (sink
  queries attend the sink only; current queries attend everything). Because the sink attends only itself, its
  hidden states, and so its K/V in every layer, are those of a pass over the sink alone at sigma = 0: computing
  them once and prefixing them is the same attention pattern, and saves the sink's share of every step.
- Autoregressive (`BlockRefiner`): blocks of `block_size` frames; the prefix is [sink K/V, re-rotated so the
  sink sits just before the window ‖ K/V of the last `kv_max_frames - 1` refined frames]. The window is a K/V
  cache: after a block is refined, one more pass over it at sigma = 0 under the same prefix records its rotated
  K/V, which later blocks reuse (recomputing the window instead would cost a pass over up to 10 frames per
  step). The sink's keys are stored before RoPE so each block can place it at its own offset.

`frame_attention` / `token_attention_mask` state the two attention patterns per latent frame / per token; the
tests run the dense masked reference (`predict_x0_dense`) against the prefix implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from runtime.refiner.model import LayerKV, LTX2Refiner, RefinerText

DISTILLED_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)
"""Stage-2 distilled schedule: re-noise to 0.909375, then 3 Euler steps to 0 (official STAGE_2_DISTILLED_SIGMA_VALUES)."""


@dataclass(frozen=True)
class RefineSettings:
    """How to refine: `block_size` None = single-shot sink-bidirectional, else autoregressive blocks."""

    block_size: int | None = 3
    kv_max_frames: int = 11
    """Sink + recent refined frames visible to a block (11 = 1 sink + 10)."""
    sink_frames: int = 1
    seed: int = 42
    sigmas: tuple[float, ...] = DISTILLED_SIGMAS
    fps: float = 16.0
    """Video frame rate: LTX-2's RoPE measures time in seconds."""

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"refiner block size must be >= 1 (or None for single-shot), got {self.block_size}")
        if self.sink_frames < 1:
            raise ValueError(f"sink_frames must be >= 1, got {self.sink_frames}")
        if self.kv_max_frames < self.sink_frames:
            raise ValueError(f"refiner kv_max_frames ({self.kv_max_frames}) must be >= the sink frames "
                             f"({self.sink_frames})")
        s = self.sigmas
        if len(s) < 2 or s[-1] != 0.0 or any(a <= b for a, b in pairwise(s)) or not 0 < s[0] < 1:
            raise ValueError(f"refiner sigmas must descend from (0, 1) to 0, got {list(s)}")


# Latent <-> tokens (patch size 1: one token per latent pixel, frame-major) ------------------------------------------
def to_tokens(z: torch.Tensor) -> torch.Tensor:
    """[B, C, T, h, w] -> [B, T h w, C]."""
    return z.flatten(2).transpose(1, 2)


def from_tokens(x: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
    """[B, T h w, C] -> [B, C, T, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], frames, h, w)


def _check_patch(refiner: LTX2Refiner) -> None:
    cfg = refiner.transformer.config
    if cfg.patch_size != 1 or cfg.patch_size_t != 1:
        raise ValueError("the refiner supports patch size 1 (the LTX-2 refiner's); got "
                         f"{cfg.patch_size_t}x{cfg.patch_size}x{cfg.patch_size}")


def _noise(gen: torch.Generator, shape, device) -> torch.Tensor:
    """Re-noising epsilon from a CPU generator (the same numbers on every device); pinned + non-blocking so a
    refiner running on its own CUDA stream never stalls the host."""
    eps = torch.randn(shape, generator=gen)
    if torch.device(device).type == "cuda":
        return eps.pin_memory().to(device, non_blocking=True)
    return eps.to(device)


def _euler(refiner: LTX2Refiner, x: torch.Tensor, text: RefinerText, rope, prefix, sigmas, hw) -> torch.Tensor:
    """3 distilled steps from x at sigmas[0] to 0: x0 = x - sigma v; x <- x + (x - x0) / sigma (sigma' - sigma),
    written as the blend r x + (1 - r) x0, r = sigma' / sigma (the last step lands exactly on x0)."""
    frames = x.shape[2]
    for sigma, nxt in pairwise(sigmas):
        tokens = to_tokens(x)
        v, _ = refiner.forward(tokens, sigma, text, rope, prefix=prefix)
        x0 = from_tokens(tokens.float() - sigma * v, frames, *hw)
        r = nxt / sigma
        x = r * x + (1.0 - r) * x0
    return x


def sink_kv(refiner: LTX2Refiner, sink: torch.Tensor, text: RefinerText, fps: float) -> list[LayerKV]:
    """Per-layer K/V of the sink frames at sigma = 0, keys before RoPE (positions 0..sink-1 when rotated)."""
    h, w = sink.shape[3:]
    rope = refiner.rope(0, sink.shape[2], h, w, fps)
    _, kv = refiner.forward(to_tokens(sink), 0.0, text, rope, capture="pre", velocity=False)
    return kv


def refine_clip(refiner: LTX2Refiner, z: torch.Tensor, text: RefinerText,
                settings: RefineSettings = RefineSettings(block_size=None)) -> torch.Tensor:
    """Single-shot sink-bidirectional refinement of a whole clip.

    Args:
        z: stage-1 latents [1, C, T, h, w] (T > sink frames); frame 0 is the clean image frame.
    Returns:
        [1, C, T, h, w] in z's dtype and device: the sink frames copied bit for bit, the rest refined.
    """
    _check_patch(refiner)
    n = settings.sink_frames
    if z.shape[2] <= n:
        raise ValueError(f"refine: {z.shape[2]} latent frames, need more than the {n} sink frame(s)")
    dev = refiner.device
    h, w = z.shape[3:]
    sink = z[:, :, :n]
    current = z[:, :, n:].to(dev, torch.float32)
    sk = sink_kv(refiner, sink.to(dev), text, settings.fps)
    rope0 = refiner.rope(0, n, h, w, settings.fps)
    prefix = [LayerKV(refiner.rotate(i, kv.k, rope0), kv.v) for i, kv in enumerate(sk)]
    gen = torch.Generator().manual_seed(settings.seed)
    s0 = settings.sigmas[0]
    x = (1.0 - s0) * current + s0 * _noise(gen, current.shape, dev)
    rope = refiner.rope(n, current.shape[2], h, w, settings.fps)
    x = _euler(refiner, x, text, rope, prefix, settings.sigmas, (h, w))
    return torch.cat([sink, x.to(sink.device, sink.dtype)], dim=2)   # the sink's own tensor: bit-identical


class BlockRefiner:
    """Autoregressive refinement, one block of latent frames at a time, with the sink + K/V window.

    Feed frames in order with `push` (any number at a time: stage-1 chunks need not match blocks); it returns
    the refined frames completed so far. Usage: `start(sink)`, `push(frames)` ..., `push(last, final=True)`.
    """

    def __init__(self, refiner: LTX2Refiner, text: RefinerText, settings: RefineSettings = RefineSettings()) -> None:
        if settings.block_size is None:
            raise ValueError("BlockRefiner needs a block size (use refine_clip for single-shot)")
        _check_patch(refiner)
        self.refiner, self.text, self.s = refiner, text, settings
        self.max_history = settings.kv_max_frames - settings.sink_frames
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.sink_pre: list[LayerKV] | None = None
        self.history: list[LayerKV] | None = None
        self.history_frames = 0
        self.next_frame = settings.sink_frames     # absolute latent index of the next frame to refine
        self.pending: list[torch.Tensor] = []
        self.hw: tuple[int, int] | None = None

    def start(self, sink: torch.Tensor) -> None:
        """Record the sink's K/V (pre-RoPE) from the clean sink frames [1, C, sink_frames, h, w]."""
        if sink.shape[2] != self.s.sink_frames:
            raise ValueError(f"start: expected {self.s.sink_frames} sink frame(s), got {sink.shape[2]}")
        self.hw = tuple(sink.shape[3:])
        self.sink_pre = sink_kv(self.refiner, sink.to(self.refiner.device), self.text, self.s.fps)

    def push(self, frames: torch.Tensor, *, final: bool = False) -> torch.Tensor:
        """Add stage-1 frames [1, C, n, h, w]; returns the refined frames of every block completed (all pending
        frames when `final`) as [1, C, m, h, w] float32, m possibly 0."""
        if self.sink_pre is None:
            raise RuntimeError("BlockRefiner.start(sink) must come first")
        if frames.shape[2]:
            self.pending.append(frames.to(self.refiner.device, torch.float32))
        buf = torch.cat(self.pending, dim=2) if self.pending else None
        out = []
        b = self.s.block_size
        while buf is not None and (buf.shape[2] >= b or (final and buf.shape[2] > 0)):
            out.append(self.refine_block(buf[:, :, :b]))
            buf = buf[:, :, b:]
        self.pending = [buf] if buf is not None and buf.shape[2] else []
        if out:
            return torch.cat(out, dim=2)
        return frames.new_zeros((*frames.shape[:2], 0, *frames.shape[3:]), dtype=torch.float32,
                                device=self.refiner.device)

    def refine_block(self, block: torch.Tensor) -> torch.Tensor:
        """Refine the next block [1, C, n, h, w] (n <= block size) and extend the K/V window with it."""
        ref, s = self.refiner, self.s
        h, w = self.hw
        n = block.shape[2]
        start = self.next_frame
        prefix = self._prefix(start)
        s0 = s.sigmas[0]
        x = (1.0 - s0) * block.float() + s0 * _noise(self.gen, block.shape, ref.device)
        rope = ref.rope(start, n, h, w, s.fps)
        x = _euler(ref, x, self.text, rope, prefix, s.sigmas, (h, w))
        if self.max_history > 0:
            # One pass over the refined block at sigma 0 under the same prefix: its rotated K/V join the window.
            _, kv = ref.forward(to_tokens(x), 0.0, self.text, rope, prefix=prefix, capture="post", velocity=False)
            del prefix   # the window now lives only in `self.history` (views of it): freed layer by layer below
            self._append(kv, n)
        self.next_frame += n
        return x

    def _prefix(self, start: int) -> list[LayerKV]:
        """[sink rotated to sit right before the window ‖ window K/V] per layer. The window is then kept as views
        of this prefix, so sink + window exist once in memory (not once more as the prefix's copy)."""
        h, w = self.hw
        offset = start - self.history_frames - self.s.sink_frames
        rope = self.refiner.rope(offset, self.s.sink_frames, h, w, self.s.fps)
        out = []
        for i, kv in enumerate(self.sink_pre):
            k = self.refiner.rotate(i, kv.k, rope)
            if self.history is not None:
                hist, self.history[i] = self.history[i], None     # drop the old tensors as soon as copied
                both = LayerKV(torch.cat([k, hist.k], 1), torch.cat([kv.v, hist.v], 1))
                self.history[i] = LayerKV(both.k[:, k.shape[1]:], both.v[:, k.shape[1]:])
                out.append(both)
            else:
                out.append(LayerKV(k, kv.v))
        return out

    def _append(self, kv: list[LayerKV], n: int) -> None:
        """Append a block's K/V and keep the last `kv_max_frames - sink` frames; layer by layer, so at most one
        layer's window is held twice."""
        keep_frames = min(self.history_frames + n, self.max_history)
        keep = keep_frames * self.hw[0] * self.hw[1]
        if self.history is None:
            self.history = [None] * len(kv)
        for i, e in enumerate(kv):
            old = self.history[i]
            if old is None:
                self.history[i] = LayerKV(e.k[:, -keep:], e.v[:, -keep:])
            else:
                self.history[i] = LayerKV(torch.cat([old.k, e.k], 1)[:, -keep:], torch.cat([old.v, e.v], 1)[:, -keep:])
            kv[i] = None
        self.history_frames = keep_frames

    def cache_frames(self) -> int:
        """Latent frames held in the K/V window (sink excluded)."""
        return self.history_frames


def refine_blocks(refiner: LTX2Refiner, z: torch.Tensor, text: RefinerText,
                  settings: RefineSettings = RefineSettings()) -> torch.Tensor:
    """Autoregressive refinement of a whole clip [1, C, T, h, w]; the sink frames are returned untouched."""
    n = settings.sink_frames
    if z.shape[2] <= n:
        raise ValueError(f"refine: {z.shape[2]} latent frames, need more than the {n} sink frame(s)")
    runner = BlockRefiner(refiner, text, settings)
    runner.start(z[:, :, :n])
    refined = runner.push(z[:, :, n:], final=True)
    sink = z[:, :, :n]
    return torch.cat([sink, refined.to(sink.device, sink.dtype)], dim=2)


def refine(refiner: LTX2Refiner, z: torch.Tensor, text: RefinerText, settings: RefineSettings) -> torch.Tensor:
    """`refine_clip` or `refine_blocks`, by `settings.block_size`."""
    if settings.block_size is None:
        return refine_clip(refiner, z, text, settings)
    return refine_blocks(refiner, z, text, settings)


# Attention patterns -------------------------------------------------------------------------------------------------
def frame_attention(num_frames: int, *, block_size: int | None = None, kv_max_frames: int | None = None,
                    sink_frames: int = 1) -> torch.Tensor:
    """Which key frames each query frame attends while it is refined: bool [T, T], [query, key].

    Single-shot (block_size None): sink queries attend the sink only; every other query attends all frames.
    Autoregressive: sink queries attend the sink; a query in block [s, e) attends the sink, the window of the
    last `kv_max_frames - sink` frames before s (refined frames; all of them when None), and its own block.
    """
    t = num_frames
    m = torch.zeros(t, t, dtype=torch.bool)
    m[:sink_frames, :sink_frames] = True
    if block_size is None:
        m[sink_frames:, :] = True
        return m
    window = t if kv_max_frames is None else kv_max_frames - sink_frames
    for s in range(sink_frames, t, block_size):
        e = min(s + block_size, t)
        m[s:e, :sink_frames] = True
        m[s:e, max(sink_frames, s - window):e] = True
    return m


def token_attention_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Per-token mask from a per-frame one (tokens are frame-major): bool [T n, T n]."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def predict_x0_dense(refiner: LTX2Refiner, z: torch.Tensor, sigma_per_frame: list[float], text: RefinerText,
                     frame_mask: torch.Tensor, fps: float) -> torch.Tensor:
    """Reference: one pass over the whole sequence [1, C, T, h, w] with per-frame sigmas and a dense per-token
    mask built from `frame_mask` -> x0 of every frame. O((T h w)^2) memory; for tests of the prefix path."""
    t, (h, w) = z.shape[2], z.shape[3:]
    n = h * w
    sig = torch.tensor(sigma_per_frame, dtype=torch.float32).repeat_interleave(n)
    rope = refiner.rope(0, t, h, w, fps)
    mask = token_attention_mask(frame_mask, n).to(refiner.device)
    tokens = to_tokens(z.to(refiner.device, torch.float32))
    v, _ = refiner.forward(tokens, sig, text, rope, token_mask=mask)
    return from_tokens(tokens - sig.to(v.device)[None, :, None] * v, t, h, w)
