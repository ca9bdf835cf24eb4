"""Clips of procedural worlds with known cameras, generated on the fly (no files).

A clip is fully determined by its seed: the seed picks the world (`Scene.random`), the field of view and
the trajectory. Training seeds lie in [0, TRAIN_SEED_LIMIT); held-out evaluation seeds start at
EVAL_SEED_BASE, so the two never meet.
"""
from __future__ import annotations

import numpy as np
import torch

from runtime.camera import default_intrinsics

from .render import render
from .scene import Scene
from .trajectories import TURN_SEGMENT_KEYS, random_trajectory

TRAIN_SEED_LIMIT = 10 ** 6
"""Training clips use seeds in [0, TRAIN_SEED_LIMIT)."""
EVAL_SEED_BASE = 10 ** 9
"""Evaluation clips use seeds EVAL_SEED_BASE + i."""
HFOV_RANGE_DEG = (65.0, 70.0)
"""Horizontal field of view of the clips (drawn per clip)."""


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, int(seed) >> 32, salt]))


def clip_intrinsics(seed: int, height: int, width: int) -> np.ndarray:
    """(fx, fy, cx, cy) of a clip in pixels: square pixels, centred principal point (W/2, H/2), horizontal
    FoV drawn from HFOV_RANGE_DEG."""
    hfov = _rng(seed, 0xF0F).uniform(*HFOV_RANGE_DEG)
    return default_intrinsics((height, width), hfov)


def generate_clip(seed: int, num_frames: int, height: int = 144, width: int = 256, device="cpu", *,
                  biome: str | None = None, time_of_day: str | None = None, trajectory: str | None = None,
                  shadows: bool = True, return_depth: bool = False, supersample: int = 1,
                  segment_keys: tuple[tuple[str, float], ...] | None = None) -> dict:
    """Render one clip.

    Args:
        seed: clip seed (world, field of view and trajectory all derive from it).
        num_frames: raw frames F (use 8k + 1 for the autoencoder).
        height, width: frame size in pixels.
        device: where to render; the returned tensors live there.
        biome, time_of_day: force the world's biome / time of day (None: drawn from the seed).
        trajectory: "keys", "smooth" or None (drawn from the seed).
        shadows, supersample: passed to `render`.
        return_depth: add "depth" float32 [F, H, W] (camera z; +inf for the sky).
        segment_keys: held-key table of key-driven trajectories (None: the default SEGMENT_KEYS, which
            evaluation relies on; training may pass TURN_SEGMENT_KEYS).

    Returns:
        dict with frames uint8 [F, H, W, 3], c2w float32 [F, 4, 4] (OpenCV axes, c2w[0] = identity),
        intrinsics float32 [4] (fx, fy, cx, cy) in pixels, caption str, actions str ("" for smooth paths),
        seed int, biome str, time_of_day str, trajectory str.
    """
    scene = Scene.random(seed, biome=biome, time_of_day=time_of_day)
    K = clip_intrinsics(seed, height, width)
    traj = random_trajectory(scene, _rng(seed, 0x7A7), num_frames, kind=trajectory, segment_keys=segment_keys)
    out = render(scene, traj.c2w, K, height, width, device, shadows=shadows, return_depth=return_depth,
                 supersample=supersample)
    frames, depth = out if return_depth else (out, None)
    clip = {
        "frames": frames,
        "c2w": torch.as_tensor(traj.c2w, dtype=torch.float32).to(frames.device),
        "intrinsics": torch.as_tensor(K, dtype=torch.float32).to(frames.device),
        "caption": scene.caption,
        "actions": traj.actions,
        "seed": int(seed),
        "biome": scene.biome,
        "time_of_day": scene.time_of_day,
        "trajectory": traj.kind,
    }
    if depth is not None:
        clip["depth"] = depth
    return clip


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def train_seed(index: int, stream_seed: int = 0) -> int:
    """Seed of the index-th training clip of a stream (a hash, in [0, TRAIN_SEED_LIMIT))."""
    return _splitmix64((int(stream_seed) << 32) ^ int(index)) % TRAIN_SEED_LIMIT


def eval_seed(index: int) -> int:
    """Seed of the index-th held-out clip."""
    return EVAL_SEED_BASE + int(index)


class ClipStream:
    """Endless iterator of clip batches rendered on `device`.

    Each batch is a dict: frames uint8 [B, F, H, W, 3], c2w float32 [B, F, 4, 4], intrinsics float32 [B, 4]
    (all on `device`), captions / actions / seeds lists. The stream position is `index` (clips served so
    far); `state_dict()` / `load_state_dict()` make a run resumable with the same clips.

    Args:
        batch_size, num_frames, height, width, device: batch layout.
        split: "train" (hashed seeds < TRAIN_SEED_LIMIT) or "eval" (EVAL_SEED_BASE + i, in order).
        seed: stream seed (train split; distinct streams for distinct seeds, e.g. one per data-parallel rank).
        start: index of the first clip.
        turn_mix: training only: the fraction of clips that are key-driven walks drawn from TURN_SEGMENT_KEYS
            (chosen per clip from its seed, so reproducible and resumable); 0 keeps the default clips.
        **clip_kwargs: passed to `generate_clip` (biome, time_of_day, trajectory, shadows, supersample).
    """

    def __init__(self, batch_size: int, num_frames: int, height: int = 144, width: int = 256, device="cpu", *,
                 split: str = "train", seed: int = 0, start: int = 0, turn_mix: float = 0.0, **clip_kwargs):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if not 0.0 <= turn_mix <= 1.0:
            raise ValueError(f"turn_mix must be in [0, 1], got {turn_mix}")
        self.batch_size, self.num_frames = int(batch_size), int(num_frames)
        self.height, self.width = int(height), int(width)
        self.device = torch.device(device)
        self.split, self.seed, self.index = split, int(seed), int(start)
        self.clip_kwargs = clip_kwargs
        self.turn_mix = float(turn_mix)

    def seed_at(self, index: int) -> int:
        return train_seed(index, self.seed) if self.split == "train" else eval_seed(index)

    def is_turn_clip(self, seed: int) -> bool:
        """Whether the clip of this seed is a turn-heavy walk: a draw of its own salted generator, so the
        choice depends on the seed alone (a resumed run makes the same choices) and no other draw moves."""
        return self.turn_mix > 0 and _rng(seed, 0x7E2).random() < self.turn_mix

    def clip_at(self, index: int) -> dict:
        seed = self.seed_at(index)
        kwargs = self.clip_kwargs
        if self.is_turn_clip(seed):
            kwargs = {**kwargs, "trajectory": "keys", "segment_keys": TURN_SEGMENT_KEYS}
        return generate_clip(seed, self.num_frames, self.height, self.width, self.device, **kwargs)

    def __iter__(self) -> ClipStream:
        return self

    def __next__(self) -> dict:
        clips = []
        for _ in range(self.batch_size):
            clips.append(self.clip_at(self.index))
            self.index += 1
        return {
            "frames": torch.stack([c["frames"] for c in clips]),
            "c2w": torch.stack([c["c2w"] for c in clips]),
            "intrinsics": torch.stack([c["intrinsics"] for c in clips]),
            "captions": [c["caption"] for c in clips],
            "actions": [c["actions"] for c in clips],
            "seeds": [c["seed"] for c in clips],
        }

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])
        self.seed = int(state.get("seed", self.seed))
        self.split = state.get("split", self.split)
