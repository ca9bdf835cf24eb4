"""Random camera trajectories through a `Scene`: key-driven (the action DSL) and smooth random paths.

Every trajectory starts at the identity pose (the first camera at the origin looking along +Z, OpenCV axes),
stays at the start height (the DSL walks on the horizontal plane, so the camera stays `ground.y` above the
ground), keeps `margin` world units of horizontal clearance from objects and stays inside the populated
region. Key-driven trajectories are rolled out with `runtime.camera.PoseIntegrator`, so
`runtime.camera.actions_to_c2w(actions)` reproduces their poses exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.camera import PoseIntegrator, format_actions, rot_x, rot_y

from .scene import Scene

# Key combinations a player holds, with how often a segment holds them (unified scheme: w/s move, a/d yaw,
# i/k pitch, j/l strafe).
SEGMENT_KEYS: tuple[tuple[str, float], ...] = (
    ("w", 0.26), ("wa", 0.09), ("wd", 0.09), ("a", 0.07), ("d", 0.07), ("s", 0.05), ("j", 0.05), ("l", 0.05),
    ("", 0.08), ("wj", 0.03), ("wl", 0.03), ("i", 0.025), ("k", 0.025), ("sa", 0.015), ("sd", 0.015),
    ("wi", 0.01), ("wk", 0.01),
)
# A training-only alternative dominated by yaw (a/d), alone and combined with moving: the default mix turns in
# only about a third of its segments, and a model trained on it under-follows yaw. Never used for evaluation.
TURN_SEGMENT_KEYS: tuple[tuple[str, float], ...] = (
    ("a", 0.18), ("d", 0.18), ("wa", 0.18), ("wd", 0.18), ("sa", 0.08), ("sd", 0.08), ("w", 0.07), ("", 0.05),
)
_ESCAPE_KEYS: tuple[tuple[str, float], ...] = (("a", 0.3), ("d", 0.3), ("s", 0.15), ("sa", 0.1), ("sd", 0.1),
                                               ("", 0.05))
MIN_SEGMENT, MAX_SEGMENT = 8, 48
"""Frames a key combination is held (inclusive range)."""


@dataclass
class Trajectory:
    """A camera path.

    Attributes:
        c2w: [F, 4, 4] float32 camera-to-world poses, OpenCV axes, c2w[0] = identity.
        actions: the action string that produces it ("" for smooth paths, which are not key-driven).
        kind: "keys" or "smooth".
    """

    c2w: np.ndarray
    actions: str
    kind: str


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    s = int(seed_or_rng)
    return np.random.Generator(np.random.PCG64([s & 0xFFFFFFFF, s >> 32, 0x7247]))


def _pick(rng, table) -> str:
    w = np.array([t[1] for t in table], dtype=np.float64)
    return table[int(rng.choice(len(table), p=w / w.sum()))][0]


def _valid(scene: Scene, positions: np.ndarray, margin: float, limit: float) -> bool:
    if positions.size == 0:
        return True
    if np.hypot(positions[:, 0], positions[:, 2]).max() > limit:
        return False
    return bool(scene.clearance(positions).min() >= margin)


def key_trajectory(scene: Scene, seed, num_frames: int, *, translation_speed: float = 0.025,
                   rotation_speed_deg: float = 0.6, margin: float = 0.5, tries: int = 8,
                   segment_keys: tuple[tuple[str, float], ...] | None = None) -> Trajectory:
    """Random held-key segments (8-48 frames each) rolled out with the official velocity model.

    Segments that would bring the camera within `margin` of an object or outside the populated region are
    redrawn (turning or backing off more often); after `tries` failures the last candidate is kept.

    Args:
        scene: the world (for collisions and its region radius).
        seed: int or numpy Generator.
        num_frames: poses to return (F >= 1); the action string covers F - 1 frames.
        translation_speed, rotation_speed_deg: DSL speeds (official defaults 0.025 / 0.6).
        segment_keys: (keys, weight) table the segments are drawn from (None: SEGMENT_KEYS; e.g.
            TURN_SEGMENT_KEYS for turn-heavy training walks). Escapes from collisions still use their own table.

    Returns:
        Trajectory(c2w [F, 4, 4] float32, actions, "keys").
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    table = SEGMENT_KEYS if segment_keys is None else segment_keys
    if not table or any(w < 0 for _, w in table) or sum(w for _, w in table) <= 0:
        raise ValueError("segment_keys must be a non-empty (keys, weight) table with a positive total weight")
    rng = _rng(seed)
    limit = scene.region_radius - 2.0
    integ = PoseIntegrator(translation_speed=translation_speed, rotation_speed_deg=rotation_speed_deg)
    poses = [integ.pose]
    frames: list[str] = []
    while len(frames) < num_frames - 1:
        n = int(min(rng.integers(MIN_SEGMENT, MAX_SEGMENT + 1), num_frames - 1 - len(frames)))
        start = integ.state()
        for attempt in range(tries):
            if attempt == 0:
                keys = _pick(rng, table)
                # Level out: a long look up or down turns into the opposite pitch key.
                if abs(integ.pitch_deg) > 12.0 and ("i" in keys or "k" in keys or rng.random() < 0.3):
                    keys = keys.replace("i", "").replace("k", "") + ("k" if integ.pitch_deg > 0 else "i")
            else:
                keys = _pick(rng, _ESCAPE_KEYS)
            trial = PoseIntegrator.from_state(start)
            seg = np.stack([trial.step(keys) for _ in range(n)])
            if _valid(scene, seg[:, :3, 3], margin, limit) or attempt == tries - 1:
                integ = trial
                break
        poses.extend(seg)
        frames.extend([keys] * n)
    c2w = np.stack(poses).astype(np.float32)
    return Trajectory(c2w, format_actions(frames), "keys")


def _smooth_signal(rng, t: np.ndarray, amp: float, freq_range, *, n: int = 3, zero_start: bool = False):
    """Sum of n random sinusoids (frequencies in cycles per frame) of amplitudes up to amp / n each."""
    out = np.zeros_like(t, dtype=np.float64)
    for _ in range(n):
        a = amp / n * rng.uniform(0.5, 1.0)
        f = rng.uniform(*freq_range)
        ph = rng.uniform(0, 2 * math.pi)
        out += a * (np.sin(2 * math.pi * f * t + ph) - (math.sin(ph) if zero_start else 0.0))
    return out


def smooth_trajectory(scene: Scene, seed, num_frames: int, *, max_speed: float = 0.04, margin: float = 0.5,
                      tries: int = 8) -> Trajectory | None:
    """A smooth random walk: heading rate, speed, pitch and a look-around yaw offset are sums of slow
    sinusoids; the heading steers back toward the origin near the region border.

    Returns:
        Trajectory(c2w [F, 4, 4] float32, "", "smooth"), or None if `tries` attempts all collided.
    """
    rng = _rng(seed)
    limit = scene.region_radius - 2.0
    t = np.arange(num_frames, dtype=np.float64)
    fps = 16.0
    for _ in range(tries):
        base_speed = rng.choice([0.0, rng.uniform(0.005, 0.02), rng.uniform(0.015, max_speed)], p=[0.1, 0.3, 0.6])
        speed = np.clip(base_speed + _smooth_signal(rng, t, 0.02, (0.05 / fps, 0.3 / fps)), 0.0, max_speed)
        yaw_rate = (math.radians(0.9) * _smooth_signal(rng, t, 1.0, (0.03 / fps, 0.25 / fps))
                    + rng.uniform(-1, 1) * math.radians(0.25))
        pitch = np.clip(math.radians(12.0) * _smooth_signal(rng, t, 1.0, (0.03 / fps, 0.2 / fps), zero_start=True),
                        -0.6, 0.6)
        look = (math.radians(15.0) * _smooth_signal(rng, t, 1.0, (0.05 / fps, 0.3 / fps), zero_start=True)
                * (rng.random() < 0.5))
        pos = np.zeros((num_frames, 3))
        heading = np.zeros(num_frames)
        for i in range(1, num_frames):
            h = heading[i - 1] + yaw_rate[i - 1]
            p = pos[i - 1]
            r = math.hypot(p[0], p[2])
            if r > 0.6 * limit:  # steer toward the origin, harder the farther out
                to_center = math.atan2(-p[0], -p[2])
                err = (to_center - h + math.pi) % (2 * math.pi) - math.pi
                h += np.clip(err, -1, 1) * math.radians(1.0) * (r / limit)
            heading[i] = h
            pos[i] = p + speed[i - 1] * np.array([math.sin(h), 0.0, math.cos(h)])
        if not _valid(scene, pos, margin, limit):
            continue
        c2w = np.tile(np.eye(4), (num_frames, 1, 1))
        for i in range(num_frames):
            c2w[i, :3, :3] = rot_y(heading[i] + look[i]) @ rot_x(pitch[i])
            c2w[i, :3, 3] = pos[i]
        return Trajectory(c2w.astype(np.float32), "", "smooth")
    return None


def random_trajectory(scene: Scene, seed, num_frames: int, *, kind: str | None = None,
                      smooth_fraction: float = 0.3,
                      segment_keys: tuple[tuple[str, float], ...] | None = None) -> Trajectory:
    """A key-driven trajectory (most often) or a smooth path, drawn from `seed`.

    Args:
        kind: "keys", "smooth" or None (smooth with probability `smooth_fraction`).
        segment_keys: held-key table of key-driven paths (None: SEGMENT_KEYS); smooth paths ignore it.
    """
    rng = _rng(seed)
    if kind is None:
        kind = "smooth" if rng.random() < smooth_fraction else "keys"
    if kind == "smooth":
        traj = smooth_trajectory(scene, rng, num_frames)
        if traj is not None:
            return traj
    elif kind != "keys":
        raise ValueError(f"unknown trajectory kind {kind!r} (expected 'keys' or 'smooth')")
    return key_trajectory(scene, rng, num_frames, segment_keys=segment_keys)
