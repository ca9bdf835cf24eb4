"""Procedural 3D worlds with known cameras: the training data of the embedded tiny model.

- `scene`: `Scene` (primitives, ground, sky), `Scene.random(seed, biome, time_of_day)`;
- `render`: `render(scene, c2w, intrinsics, height, width, device)` -> uint8 frames (+ depth), plain PyTorch;
- `trajectories`: key-driven (action DSL) and smooth random camera paths that avoid objects;
- `dataset`: `generate_clip(seed, ...)`, `ClipStream` batches, disjoint train / eval seeds.

See docs/world.md.
"""
from .dataset import (
    EVAL_SEED_BASE,
    HFOV_RANGE_DEG,
    TRAIN_SEED_LIMIT,
    ClipStream,
    clip_intrinsics,
    eval_seed,
    generate_clip,
    train_seed,
)
from .render import render
from .scene import BIOMES, TIMES_OF_DAY, Scene
from .trajectories import Trajectory, key_trajectory, random_trajectory, smooth_trajectory

__all__ = [
    "BIOMES",
    "EVAL_SEED_BASE",
    "HFOV_RANGE_DEG",
    "TIMES_OF_DAY",
    "TRAIN_SEED_LIMIT",
    "ClipStream",
    "Scene",
    "Trajectory",
    "clip_intrinsics",
    "eval_seed",
    "generate_clip",
    "key_trajectory",
    "random_trajectory",
    "render",
    "smooth_trajectory",
    "train_seed",
]
