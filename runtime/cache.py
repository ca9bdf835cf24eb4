"""Streaming state carried from chunk to chunk, preallocated so its size never grows with the walk.

Per GDN block: the forward scan states (main S and z, camera S), the K short-conv left context (last K-1
conv inputs) and the FFN temporal-conv last frame. Per softmax block: post-RoPE main K/V and post-UCPE
camera K/V for the sink chunk plus a ring of the most recent chunks, and the FFN last frame.
(spec sections 2.5 and 3; official num_cached_blocks = `kv_cache_chunks`, counting the sink when on).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from kernels.token_copy import copy_tokens
from runtime.config import ModelConfig


@torch.library.custom_op("sana_wm::write_tokens", mutates_args=("buffer",))
def _write_tokens_op(buffer: Tensor, start: int, parts: list[Tensor]) -> None:
    copy_tokens(buffer, start, parts)


def write_tokens(buffer: Tensor, start: int, parts: list[Tensor]) -> None:
    """buffer[i, :, :, start:start + n] = parts[i] for a [streams, B, H, tokens, D] K/V buffer, in place.

    Under torch.compile through a mutating custom op, so the compiled block writes only the slice: the same copy_
    spelled in the block was functionalised into a rewrite of the whole buffer (a graph input), 173 MB per softmax
    block and pass at the full size (H200 profile, round 9: ~0.36 ms each, ~7 ms per chunk). Eagerly, the plain
    copies (the custom op's dispatch costs a second of imports on its first eager call). The copy itself is
    `kernels.token_copy.copy_tokens` (one Triton launch for the four streams on CUDA)."""
    if torch.compiler.is_compiling():
        _write_tokens_op(buffer, start, parts)
    else:
        copy_tokens(buffer, start, parts)


@dataclass
class GDNBlockCache:
    state: Tensor      # [B, H, D, D] fp32
    z: Tensor          # [B, H, D] fp32
    cam_state: Tensor  # [B, H, D, D] fp32
    conv_k: Tensor     # [B, K-1, S, C]
    tconv: Tensor      # [B, S, C]

    def tensors(self) -> dict[str, Tensor]:
        return {"state": self.state, "z": self.z, "cam_state": self.cam_state, "conv_k": self.conv_k,
                "tconv": self.tconv}


KV_STREAMS = ("main K", "camera K", "main V", "camera V")
"""Order of the four K/V streams in a softmax block's cache buffers: both branches' keys adjacent (and values),
so the two attentions can run as one batched call on views of the buffer."""


@dataclass
class SoftmaxBlockCache:
    """K/V of past chunks: a permanent sink (first chunk) and a ring of the most recent chunks."""

    sink: Tensor | None  # [4, B, H, first*S, D]: main K, camera K, main V, camera V (KV_STREAMS)
    ring: Tensor         # [slots, 4, B, H, slot_frames*S, D]
    tconv: Tensor        # [B, S, C]
    tokens_per_frame: int
    sink_tokens: int = 0
    ring_tokens: list[int] = field(default_factory=list)   # valid tokens per slot, 0 = empty
    ring_age: list[int] = field(default_factory=list)      # chunk index held by each slot, -1 = empty
    chunks_written: int = 0
    packed: Tensor | None = None
    """[4, B, H, sink + ring + current tokens, D]: when set, `sink` and `ring` are views of its first regions
    and the current chunk's K/V has the region after them, so a full cache is attended as one slice of it."""
    write_slot: int | None = None
    """Where the next chunk's K/V go: -1 = the sink, i = ring slot i, None = nowhere (no sink, no ring). Kept
    up to date by `claim` (outside the compiled blocks), so `write` reads one int that stays the same from chunk
    to chunk in steady state and a compiled block does not recompile on the ring's bookkeeping."""

    def __post_init__(self) -> None:
        if self.write_slot is None:
            self.write_slot = self._slot_for_next_write()

    def context(self, km: Tensor, vm: Tensor, kc: Tensor, vc: Tensor) -> tuple[Tensor, ...]:
        """Keys / values to attend: cached chunks and the current chunk's, per stream (km, vm, kc, vc). Softmax
        attention without a mask does not depend on the order of the keys, so the slots may come in any order."""
        main_k, cam_k, main_v, cam_v = self._all_streams(km, vm, kc, vc).unbind(0)
        return main_k, main_v, cam_k, cam_v

    def pair_context(self, km: Tensor, vm: Tensor, kc: Tensor, vc: Tensor) -> tuple[Tensor, Tensor]:
        """The same context as (keys, values), each [2, B, H, tokens, D] with the main branch's first and the
        camera branch's second: one attention call can take both branches as a batch (a view of the buffer in
        steady state, where both branches' keys are adjacent)."""
        streams = self._all_streams(km, vm, kc, vc)
        return streams[0:2], streams[2:4]

    def _all_streams(self, km: Tensor, vm: Tensor, kc: Tensor, vc: Tensor) -> Tensor:
        """[4, B, H, tokens, D] in KV_STREAMS order: cached chunks and the current chunk's K/V."""
        current = [km, kc, vm, vc]
        base = self._packed_tokens()
        if base is not None and base + km.shape[2] <= self.packed.shape[3]:
            # Steady state: write the current K/V behind the cached ones and attend one slice; no copy of the
            # cached tokens (the concatenation below copies all of them for every pass).
            write_tokens(self.packed, base, current)
            return self.packed[:, :, :, :base + km.shape[2]]
        parts = []
        if self.sink is not None and self.sink_tokens:
            parts.append(self.sink[:, :, :, : self.sink_tokens])
        for slot in sorted((i for i, n in enumerate(self.ring_tokens) if n), key=lambda i: self.ring_age[i]):
            parts.append(self.ring[slot][:, :, :, : self.ring_tokens[slot]])
        stacked = torch.stack(current)
        return torch.cat(parts + [stacked], dim=3) if parts else stacked

    def _packed_tokens(self) -> int | None:
        """The cached token count when the sink and every ring slot are full (the packed layout is then one
        contiguous run of tokens), else None."""
        if self.packed is None:
            return None
        sink_cap = 0 if self.sink is None else self.sink.shape[3]
        slot_cap = self.ring.shape[4]
        if self.sink_tokens != sink_cap or any(n != slot_cap for n in self.ring_tokens):
            return None
        return sink_cap + slot_cap * len(self.ring_tokens)

    def _slot_for_next_write(self) -> int | None:
        if self.sink is not None and self.chunks_written == 0:
            return -1
        if self.ring_age:   # an empty slot, else the oldest chunk's
            return self.ring_age.index(-1) if -1 in self.ring_age else self.ring_age.index(min(self.ring_age))
        return None

    def claim(self, tokens: int) -> int | None:
        """Bookkeeping of a chunk's write (after its cache pass ran `write`): returns the slot its K/V went to
        (-1 = the sink) and advances the ring. Separate from the copy so a replayed CUDA graph (whose copies are
        baked in) keeps the same records."""
        slot = self.write_slot
        if slot == -1:
            self.sink_tokens = tokens
        elif slot is not None:
            self.ring_tokens[slot] = tokens
            self.ring_age[slot] = self.chunks_written
        self.chunks_written += 1
        self.write_slot = self._slot_for_next_write()
        return slot

    def write(self, km: Tensor, vm: Tensor, kc: Tensor, vc: Tensor) -> None:
        """Copy this chunk's K/V into `write_slot`; the caller then `claim`s it (StreamCache.commit_chunk)."""
        slot = self.write_slot
        if slot is not None and self.packed is not None:
            sink_cap = 0 if self.sink is None else self.sink.shape[3]
            write_tokens(self.packed, 0 if slot == -1 else sink_cap + slot * self.ring.shape[4], [km, kc, vm, vc])
            return
        current = torch.stack([km, kc, vm, vc])
        n = current.shape[3]
        if slot == -1:
            self.sink[:, :, :, :n].copy_(current)
        elif slot is not None:
            self.ring[slot][:, :, :, :n].copy_(current)

    @property
    def full(self) -> bool:
        """Sink and every ring slot hold a chunk: from here on the attended context has a fixed shape."""
        return (self.sink is None or self.sink_tokens > 0) and all(self.ring_tokens)

    def tensors(self) -> dict[str, Tensor]:
        if self.packed is not None:   # sink and ring live inside it
            return {"packed": self.packed, "tconv": self.tconv}
        out = {"ring": self.ring, "tconv": self.tconv}
        if self.sink is not None:
            out["sink"] = self.sink
        return out


class StreamCache:
    """All blocks' carried state plus the position of the walk."""

    def __init__(self, cfg: ModelConfig, batch: int, device, dtype):
        S, C, H, D = cfg.tokens_per_frame, cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.cfg = cfg
        self.blocks: list[GDNBlockCache | SoftmaxBlockCache] = []
        ring_slots = cfg.kv_cache_chunks - 1 if cfg.sink else cfg.kv_cache_chunks
        slot_frames = cfg.chunk_size if cfg.sink else max(cfg.chunk_size, cfg.first_chunk_size)
        for i in range(cfg.depth):
            tconv = torch.zeros(batch, S, C, device=device, dtype=dtype)
            if i in cfg.softmax_blocks:
                # One buffer: [sink | ring slot 0 | slot 1 | ... | current chunk] along the tokens.
                sink_tokens = cfg.first_chunk_size * S if cfg.sink else 0
                slot_tokens = slot_frames * S
                current = max(cfg.chunk_size, cfg.first_chunk_size) * S
                packed = torch.zeros(4, batch, H, sink_tokens + ring_slots * slot_tokens + current, D,
                                     device=device, dtype=dtype)
                sink = packed[:, :, :, :sink_tokens] if cfg.sink else None
                ring = packed[:, :, :, sink_tokens:sink_tokens + ring_slots * slot_tokens].unflatten(
                    3, (ring_slots, slot_tokens)).permute(3, 0, 1, 2, 4, 5)        # [slots, 4, B, H, tokens, D]
                self.blocks.append(SoftmaxBlockCache(sink, ring, tconv, S, ring_tokens=[0] * ring_slots,
                                                     ring_age=[-1] * ring_slots, packed=packed))
            else:
                f32 = {"device": device, "dtype": torch.float32}
                self.blocks.append(GDNBlockCache(
                    state=torch.zeros(batch, H, D, D, **f32), z=torch.zeros(batch, H, D, **f32),
                    cam_state=torch.zeros(batch, H, D, D, **f32),
                    conv_k=torch.zeros(batch, cfg.conv_kernel_size - 1, S, C, device=device, dtype=dtype),
                    tconv=tconv))
        self.chunks_done = 0
        self.frames_done = 0   # latent frames whose caches are written

    @property
    def steady(self) -> bool:
        """Every softmax cache is full and its ring has at most one slot, so every later chunk reads and
        writes the same buffers: the chunk step can be captured once in a CUDA graph and replayed."""
        kv = [b for b in self.blocks if isinstance(b, SoftmaxBlockCache)]
        return all(b.full and len(b.ring_tokens) <= 1 for b in kv)

    def commit_chunk(self, frames: int) -> None:
        """The Python-side records of one chunk's cache pass, after its tensor copies ran (in the blocks' `write`,
        eagerly or inside a replayed CUDA graph): the softmax blocks' slots and the walk's position."""
        S = self.cfg.tokens_per_frame
        for b in self.blocks:
            if isinstance(b, SoftmaxBlockCache):
                b.claim(frames * S)
        self.chunks_done += 1
        self.frames_done += frames

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for b in self.blocks for t in b.tensors().values())

    def snapshot(self) -> dict:
        """A deep copy of the state (tensors cloned), for rewinding and branching a walk."""
        blocks = []
        for b in self.blocks:
            entry = {k: v.clone() for k, v in b.tensors().items()}
            if isinstance(b, SoftmaxBlockCache):
                entry["meta"] = (b.sink_tokens, list(b.ring_tokens), list(b.ring_age), b.chunks_written)
            blocks.append(entry)
        return {"blocks": blocks, "chunks_done": self.chunks_done, "frames_done": self.frames_done}

    def restore(self, snap: dict) -> None:
        for b, entry in zip(self.blocks, snap["blocks"]):
            for k, t in b.tensors().items():
                t.copy_(entry[k])
            if isinstance(b, SoftmaxBlockCache):
                b.sink_tokens, ring_tokens, ring_age, b.chunks_written = entry["meta"]
                b.ring_tokens, b.ring_age = list(ring_tokens), list(ring_age)
                b.write_slot = b._slot_for_next_write()
        self.chunks_done = snap["chunks_done"]
        self.frames_done = snap["frames_done"]
