"""Key actions -> camera-to-world poses: the action DSL, the velocity model and the pose integrator.

Poses are camera-to-world (c2w) 4x4 float64 matrices in OpenCV axes (+X right, +Y down, +Z forward),
one per raw video frame, starting from the identity. "Pitch up" therefore turns the view toward -Y and
"yaw right" turns it toward +X.

Two key layouts exist (spec 5.2 / 5.3):

- ``unified`` (current official scheme): w/s forward/back, a/d yaw left/right, i/k pitch up/down,
  j/l strafe left/right; exponential velocity smoothing; pitch clamped at +-60 degrees.
- ``legacy`` (first official release): w/s forward/back, a/d strafe, i/k pitch, j/l yaw; no smoothing;
  0.05 per frame and 1.2 degrees per frame; a pitch step that would pass +-85 degrees is dropped.

Old strings map to the unified scheme by swapping a/d <-> j/l.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ACTION_KEYS = "wasdijkl"
"""The DSL keys, in the canonical order `format_actions` writes them."""
MAX_ACTION_FRAMES = 100_000
"""Longest trajectory `parse_actions` accepts (about 1.7 hours at 16 fps)."""
KEY_ALIASES = {"up": "i", "down": "k", "left": "j", "right": "l"}
"""Arrow-key names accepted by `PoseIntegrator.step`: the arrows stand for the i/j/k/l cluster."""

CONTROLS = ("forward", "back", "strafe_left", "strafe_right", "yaw_left", "yaw_right", "pitch_up", "pitch_down")
"""Canonical controls a key can map to."""

SCHEMES: dict[str, dict[str, str]] = {
    "unified": {"w": "forward", "s": "back", "a": "yaw_left", "d": "yaw_right",
                "i": "pitch_up", "k": "pitch_down", "j": "strafe_left", "l": "strafe_right"},
    "legacy": {"w": "forward", "s": "back", "a": "strafe_left", "d": "strafe_right",
               "i": "pitch_up", "k": "pitch_down", "j": "yaw_left", "l": "yaw_right"},
}
"""DSL key -> control, per scheme."""


@dataclass(frozen=True)
class SchemeDefaults:
    translation_speed: float
    """World units per raw frame at full velocity."""
    rotation_speed_deg: float
    """Degrees per raw frame at full angular velocity (yaw and pitch)."""
    pitch_limit_deg: float
    """Largest absolute accumulated pitch."""
    smooth: bool
    """Whether the exponential velocity model is on by default."""
    pitch_clamp: bool
    """True: pitch saturates at the limit; False: a step that would pass the limit is dropped (legacy)."""


SCHEME_DEFAULTS = {
    "unified": SchemeDefaults(0.025, 0.6, 60.0, True, True),
    "legacy": SchemeDefaults(0.05, 1.2, 85.0, False, False),
}

TAU_PRESS_S = 0.45
"""Velocity time constant (s) while the target is non-zero."""
TAU_COAST_S = 1.0
"""Velocity time constant (s) while coasting to zero after a release."""
DEFAULT_FPS = 16
"""Raw frames per second; the smoothing step is dt = 1 / fps."""


def rot_x(angle_rad: float) -> np.ndarray:
    """[3, 3] rotation about +X by `angle_rad` (positive turns +Z toward -Y: pitch up in OpenCV axes)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle_rad: float) -> np.ndarray:
    """[3, 3] rotation about +Y by `angle_rad` (positive turns +Z toward +X: yaw right in OpenCV axes)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# --------------------------------------------------------------------------------------------------------
# The action DSL
# --------------------------------------------------------------------------------------------------------
_EXPECTED_KEYS = "expected w a s d i j k l or none"
_WHITESPACE = re.compile(r"\s+")


def parse_actions(text: str) -> list[frozenset[str]]:
    """Parse an action string into one set of held keys per raw frame.

    Grammar: comma-separated ``<keys>-<frames>`` segments, e.g. ``"w-16, wd-8, none-4"``. Keys come from
    ``wasdijkl`` (case-insensitive, several at once, duplicates ignored) or are the word ``none``; frames
    is a positive integer. The full-width comma "，" is accepted and whitespace is ignored.

    Returns:
        list of F frozensets of lower-case keys, F = sum of the segment frame counts (raw frames). The
        trajectory built from it has F + 1 poses (the identity first).

    Raises:
        ValueError naming the offending segment, its 1-based position and what was expected.
    """
    if not isinstance(text, str):
        raise TypeError(f"action string must be str, got {type(text).__name__}")
    cleaned = _WHITESPACE.sub("", text.replace("，", ","))
    if not cleaned:
        raise ValueError("empty action string (expected comma-separated '<keys>-<frames>' segments, "
                         "e.g. 'w-16,none-8')")
    frames: list[frozenset[str]] = []
    for pos, segment in enumerate(cleaned.split(","), start=1):
        where = f"segment {pos} {segment!r}"
        if not segment:
            raise ValueError(f"{where}: empty segment (expected '<keys>-<frames>', e.g. 'w-16')")
        if "-" not in segment:
            raise ValueError(f"{where}: missing '-' (expected '<keys>-<frames>', e.g. 'w-16')")
        keys_part, count_part = segment.split("-", 1)
        if not (count_part.isascii() and count_part.isdigit()):
            raise ValueError(f"{where}: frame count {count_part!r} is not a positive integer "
                             "(expected '<keys>-<frames>' with frames >= 1)")
        count = int(count_part)
        if count <= 0:
            raise ValueError(f"{where}: frame count must be at least 1, got {count}")
        keys_lower = keys_part.lower()
        if keys_lower == "none":
            keys: frozenset[str] = frozenset()
        elif not keys_lower:
            raise ValueError(f"{where}: no keys before '-' ({_EXPECTED_KEYS})")
        else:
            for ch in keys_lower:
                if ch not in ACTION_KEYS:
                    raise ValueError(f"{where}: unknown key {ch!r} ({_EXPECTED_KEYS})")
            keys = frozenset(keys_lower)
        if len(frames) + count > MAX_ACTION_FRAMES:
            raise ValueError(f"{where}: total frame count {len(frames) + count} exceeds the limit of "
                             f"{MAX_ACTION_FRAMES}")
        frames.extend([keys] * count)
    return frames


def format_actions(frames: Sequence[Iterable[str]]) -> str:
    """Run-length encode per-frame key sets into an action string (the inverse of `parse_actions`).

    Args:
        frames: one iterable of held keys per raw frame.

    Returns:
        e.g. ``"w-16,wd-8,none-4"``; keys are written in ``wasdijkl`` order, an empty set as ``none``;
        ``""`` for no frames.
    """
    segments: list[str] = []
    prev: str | None = None
    run = 0
    for i, frame in enumerate(frames):
        keys = frozenset(k.lower() for k in frame)
        bad = sorted(keys - set(ACTION_KEYS))
        if bad:
            raise ValueError(f"frame {i}: unknown key {bad[0]!r} ({_EXPECTED_KEYS})")
        name = "".join(k for k in ACTION_KEYS if k in keys) or "none"
        if name == prev:
            run += 1
            continue
        if prev is not None:
            segments.append(f"{prev}-{run}")
        prev, run = name, 1
    if prev is not None:
        segments.append(f"{prev}-{run}")
    return ",".join(segments)


# --------------------------------------------------------------------------------------------------------
# Velocity model and pose integrator
# --------------------------------------------------------------------------------------------------------
def _resolve_scheme(scheme: str) -> SchemeDefaults:
    if scheme not in SCHEME_DEFAULTS:
        raise ValueError(f"unknown control scheme {scheme!r} (expected one of {', '.join(SCHEME_DEFAULTS)})")
    return SCHEME_DEFAULTS[scheme]


class PoseIntegrator:
    """Stateful keys -> pose integrator: one `step` per raw frame.

    `actions_to_c2w` is built on this class, so stepping it over the same key sequence gives bit-identical
    poses. `state()` / `from_state()` snapshot everything (plain dict of floats, lists and strings, so
    msgpack / JSON can hold it) for the explorer's rewind.

    Args:
        translation_speed: world units per raw frame (default 0.025 unified, 0.05 legacy).
        rotation_speed_deg: degrees per raw frame for yaw and pitch (default 0.6 unified, 1.2 legacy).
        smooth: exponential velocity model (default on for unified, off for legacy).
        scheme: ``"unified"`` or ``"legacy"`` key layout (module docstring).
        pitch_limit_deg: largest absolute pitch (default 60 unified, 85 legacy).
        fps: raw frames per second; the smoothing step is dt = 1 / fps.
    """

    def __init__(self, *, translation_speed: float | None = None, rotation_speed_deg: float | None = None,
                 smooth: bool | None = None, scheme: str = "unified", pitch_limit_deg: float | None = None,
                 fps: float = DEFAULT_FPS) -> None:
        defaults = _resolve_scheme(scheme)
        self.scheme = scheme
        self.translation_speed = float(defaults.translation_speed if translation_speed is None
                                       else translation_speed)
        self.rotation_speed_deg = float(defaults.rotation_speed_deg if rotation_speed_deg is None
                                        else rotation_speed_deg)
        self.smooth = bool(defaults.smooth if smooth is None else smooth)
        self.pitch_limit_deg = float(defaults.pitch_limit_deg if pitch_limit_deg is None else pitch_limit_deg)
        self.fps = float(fps)
        for name in ("translation_speed", "rotation_speed_deg", "pitch_limit_deg", "fps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "fps" and value == 0):
                raise ValueError(f"{name}: must be a finite {'positive' if name == 'fps' else 'non-negative'} "
                                 f"number, got {value}")
        self._keymap = SCHEMES[scheme]
        self._pitch_clamp = defaults.pitch_clamp
        self._rot_rad = math.radians(self.rotation_speed_deg)
        self._limit_rad = math.radians(self.pitch_limit_deg)
        self._dt = 1.0 / self.fps
        self.reset()

    # ---- state ------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the identity pose, zero pitch, zero velocity, no keys held, frame 0."""
        self._pose = np.eye(4)
        self._pitch = 0.0
        self._vel = [0.0, 0.0, 0.0, 0.0]  # tx (forward), sx (strafe right), yaw (right+), pitch (up+)
        self._held: frozenset[str] = frozenset()
        self.frame = 0

    @property
    def pose(self) -> np.ndarray:
        """Current [4, 4] float64 c2w pose (a copy)."""
        return self._pose.copy()

    @property
    def pitch_deg(self) -> float:
        """Accumulated pitch in degrees (positive looks up)."""
        return math.degrees(self._pitch)

    @property
    def velocity(self) -> tuple[float, float, float, float]:
        """(forward units, strafe-right units, yaw-right rad, pitch-up rad) per raw frame."""
        return tuple(self._vel)  # type: ignore[return-value]

    def state(self) -> dict:
        """Plain-dict snapshot (msgpack / JSON friendly) that `from_state` restores exactly."""
        return {
            "version": 1,
            "params": {"translation_speed": self.translation_speed, "rotation_speed_deg": self.rotation_speed_deg,
                       "smooth": self.smooth, "scheme": self.scheme, "pitch_limit_deg": self.pitch_limit_deg,
                       "fps": self.fps},
            "pose": [float(v) for v in self._pose.reshape(-1)],
            "pitch": self._pitch,
            "velocity": list(self._vel),
            "held": sorted(self._held),
            "frame": self.frame,
        }

    @classmethod
    def from_state(cls, state: dict) -> PoseIntegrator:
        """Rebuild an integrator from `state()` output."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not a PoseIntegrator state (expected a dict with version 1)")
        self = cls(**state["params"])
        pose = np.asarray(state["pose"], dtype=np.float64)
        if pose.shape != (16,):
            raise ValueError(f"PoseIntegrator state: pose must hold 16 numbers, got {pose.shape}")
        self._pose = pose.reshape(4, 4).copy()
        self._pitch = float(state["pitch"])
        self._vel = [float(v) for v in state["velocity"]]
        held = frozenset(state["held"])
        if not held <= set(CONTROLS):
            raise ValueError(f"PoseIntegrator state: unknown controls {sorted(held - set(CONTROLS))}")
        self._held = held
        self.frame = int(state["frame"])
        return self

    # ---- stepping -----------------------------------------------------------------------------------------
    def controls(self, keys: Iterable[str]) -> frozenset[str]:
        """Canonical controls (`CONTROLS`) for a set of held DSL keys under this scheme."""
        out = set()
        for key in keys:
            k = key.lower()
            k = KEY_ALIASES.get(k, k)
            if k not in self._keymap:
                raise ValueError(f"unknown key {key!r} (expected one of w a s d i j k l, or up down left right)")
            out.add(self._keymap[k])
        return frozenset(out)

    def _target(self, controls: frozenset[str]) -> list[float]:
        def axis(pos: str, neg: str) -> float:
            return (1.0 if pos in controls else 0.0) - (1.0 if neg in controls else 0.0)

        return [axis("forward", "back") * self.translation_speed,
                axis("strafe_right", "strafe_left") * self.translation_speed,
                axis("yaw_right", "yaw_left") * self._rot_rad,
                axis("pitch_up", "pitch_down") * self._rot_rad]

    def step(self, keys: Iterable[str]) -> np.ndarray:
        """Consume one raw frame of held keys and return the new [4, 4] float64 c2w pose (a copy)."""
        controls = self.controls(keys)
        target = self._target(controls)
        if not self.smooth:
            self._vel = target
        elif controls - self._held:
            # A fresh press takes effect at once (official VelocityState.snap_to): every component snaps.
            self._vel = target
        else:
            for i in range(4):
                tau = TAU_PRESS_S if abs(target[i]) > 1e-12 else TAU_COAST_S
                alpha = 1.0 - math.exp(-self._dt / tau)
                self._vel[i] = self._vel[i] + alpha * (target[i] - self._vel[i])
        self._held = controls
        tx, sx, yaw, dpitch = self._vel

        new_pitch = self._pitch + dpitch
        if self._pitch_clamp:
            new_pitch = max(-self._limit_rad, min(self._limit_rad, new_pitch))
        elif not -self._limit_rad <= new_pitch <= self._limit_rad:
            new_pitch = self._pitch
        pitch_step = new_pitch - self._pitch
        self._pitch = new_pitch

        # Yaw about world Y (pre-multiply), pitch about the camera's own X (post-multiply), so the horizon
        # never rolls.
        R = rot_y(yaw) @ self._pose[:3, :3] @ rot_x(pitch_step)
        # Walk on the horizontal plane: the heading's Y component is dropped so pitching doesn't fly.
        fwd = R[:, 2].copy()
        fwd[1] = 0.0
        right = R[:, 0].copy()
        right[1] = 0.0
        fn, rn = float(np.linalg.norm(fwd)), float(np.linalg.norm(right))
        if fn > 0:
            fwd /= fn + 1e-6
        if rn > 0:
            right /= rn + 1e-6
        pose = np.eye(4)
        pose[:3, :3] = R
        pose[:3, 3] = self._pose[:3, 3] + fwd * tx + right * sx
        self._pose = pose
        self.frame += 1
        return pose.copy()


def actions_to_c2w(actions: str | Sequence[Iterable[str]], *, translation_speed: float | None = None,
                   rotation_speed_deg: float | None = None, smooth: bool | None = None,
                   scheme: str = "unified", pitch_limit_deg: float | None = None,
                   fps: float = DEFAULT_FPS) -> np.ndarray:
    """Roll out a camera trajectory from an action string or from per-frame key sets.

    Args:
        actions: an action string (`parse_actions`) or one iterable of held keys per raw frame (F frames).
        translation_speed, rotation_speed_deg, smooth, scheme, pitch_limit_deg, fps: as `PoseIntegrator`
            (None picks the scheme's default: unified 0.025 / 0.6 deg / smooth / 60 deg,
            legacy 0.05 / 1.2 deg / no smoothing / 85 deg).

    Returns:
        [F + 1, 4, 4] float64 c2w poses in OpenCV axes, one per raw frame; pose 0 is the identity.
    """
    frames = parse_actions(actions) if isinstance(actions, str) else actions
    integ = PoseIntegrator(translation_speed=translation_speed, rotation_speed_deg=rotation_speed_deg,
                           smooth=smooth, scheme=scheme, pitch_limit_deg=pitch_limit_deg, fps=fps)
    out = np.empty((len(frames) + 1, 4, 4))
    out[0] = integ.pose
    for i, keys in enumerate(frames, start=1):
        out[i] = integ.step(keys)
    return out
