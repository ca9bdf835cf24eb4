"""The heads-up display: what the explorer reports (text lines) and how it is drawn (pygame.font -> RGBA).

`hud_lines` / `status_badges` are plain functions of a `HudInfo` (testable without a window); `HudRenderer`
turns them into one RGBA overlay the size of the target, re-rendered only when its text changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .keys import HELP_LINES, keys_label

HUD_MODES = ("hud", "hud+help", "off")
"""H cycles through these."""


@dataclass
class HudInfo:
    model: str = ""
    seed: int = 0
    raw: int = 0
    """Raw frame index on screen."""
    fps: int = 16
    gen_fps: float | None = None
    """Raw frames generated per second."""
    play_fps: float | None = None
    """Frames shown per second (drops below `fps` when the model is slower than real time)."""
    chunk_ms: float | None = None
    key_latency_s: float | None = None
    """Last key-to-photon latency: key press to the first shown frame generated with it."""
    key_latency_mean_s: float | None = None
    queue: int = 0
    queue_capacity: int = 0
    pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    held: frozenset[str] = frozenset()
    speed_preset: int = 2
    speed: float = 1.0
    recording: bool = False
    record_s: float = 0.0
    paused: bool = False
    stalled: bool = False
    """The render loop wanted a frame and none was ready."""
    loading: bool = False
    error: str | None = None
    message: str | None = None
    """A transient notice (screenshot saved, recording written, ...)."""


def heading_pitch_deg(pose: np.ndarray) -> tuple[float, float]:
    """(heading, pitch) in degrees of a c2w pose in OpenCV axes: heading + = turned right, pitch + = up."""
    fwd = np.asarray(pose, dtype=np.float64)[:3, 2]
    heading = math.degrees(math.atan2(fwd[0], fwd[2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -fwd[1]))))
    return heading, pitch


def _deg(value: float) -> str:
    return f"{0.0 if abs(value) < 0.5 else value:+.0f}°"        # no "-0°"


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "--" if value is None else f"{value:{spec}}{unit}"


def realtime_factor(info: HudInfo) -> float | None:
    return None if info.gen_fps is None else info.gen_fps / info.fps


def hud_lines(info: HudInfo) -> list[str]:
    """The statistics panel, one string per line."""
    heading, pitch = heading_pitch_deg(info.pose)
    x, y, z = (float(v) for v in np.asarray(info.pose)[:3, 3])
    mins, secs = divmod(info.raw / info.fps, 60)
    return [
        f"{info.model}  seed {info.seed}  t {int(mins)}:{secs:04.1f}  frame {info.raw}",
        (f"gen {_fmt(info.gen_fps, '.1f', ' fps')}  x{_fmt(realtime_factor(info), '.2f')} real time  "
         f"shown {_fmt(info.play_fps, '.1f', ' fps')}"),
        (f"chunk {_fmt(info.chunk_ms, '.0f', ' ms')}  key-to-photon {_fmt(info.key_latency_s, '.2f', ' s')}"
         f" (mean {_fmt(info.key_latency_mean_s, '.2f', ' s')})"),
        f"queue {info.queue}/{info.queue_capacity} frames",
        f"pos x {x:+.2f}  y {y:+.2f}  z {z:+.2f}   heading {_deg(heading)}  pitch {_deg(pitch)}",
        f"keys {keys_label(info.held)}   speed {info.speed_preset} (x{info.speed:g})",
    ]


def status_badges(info: HudInfo) -> list[str]:
    """Top-right indicators."""
    out = []
    if info.recording:
        mins, secs = divmod(info.record_s, 60)
        out.append(f"REC {int(mins)}:{secs:04.1f}")
    if info.paused:
        out.append("PAUSED")
    rt = realtime_factor(info)
    if rt is not None and rt < 0.98 and not info.paused:
        out.append(f"slow motion x{rt:.2f}")      # playback follows the model
    return out


def banner(info: HudInfo) -> str | None:
    """Centre notice: loading, an error, or the model running slower than real time."""
    if info.error:
        return f"error: {info.error}"
    if info.loading:
        return "loading the model..."
    if info.stalled and not info.paused:
        rt = realtime_factor(info)
        return "generating..." if rt is None else f"generating... x{rt:.2f} real time"
    return None


class HudRenderer:
    """Renders the HUD for a target size into straight-alpha RGBA bytes (top row first)."""

    BG = (0, 0, 0, 150)
    FG = (235, 235, 235, 255)
    REC = (255, 70, 60, 255)
    NOTE = (255, 220, 120, 255)

    def __init__(self):
        import pygame

        self._pg = pygame
        if not pygame.font.get_init():
            pygame.font.init()
        self._fonts: dict[int, object] = {}
        self._key = None
        self._cached: tuple[bytes, tuple[int, int]] | None = None

    def _font(self, px: int):
        if px not in self._fonts:
            self._fonts[px] = self._pg.font.Font(None, px)
        return self._fonts[px]

    def render(self, info: HudInfo, size: tuple[int, int], mode: str = "hud") -> tuple[bytes, tuple[int, int]] | None:
        """(RGBA bytes, size) or None when the HUD is off; cached while the text does not change."""
        if mode == "off":
            return None
        texts = (hud_lines(info), status_badges(info), banner(info), info.message,
                 HELP_LINES if mode == "hud+help" else ())
        key = (texts, tuple(size))
        if key == self._key and self._cached is not None:
            return self._cached
        pg = self._pg
        w, h = max(1, size[0]), max(1, size[1])
        px = max(14, min(28, round(h / 30)))
        font, pad = self._font(px), max(4, px // 3)
        line_h = font.get_linesize()
        surf = pg.Surface((w, h), pg.SRCALPHA, 32)
        surf.fill((0, 0, 0, 0))

        def panel(lines, x, y, color, anchor="left"):
            rendered = [font.render(t, True, color) for t in lines]
            if not rendered:
                return
            pw = max(r.get_width() for r in rendered) + 2 * pad
            ph = line_h * len(rendered) + 2 * pad
            if anchor == "right":
                x = w - x - pw
            elif anchor == "centre":
                x = (w - pw) // 2
            if y < 0:
                y = h + y - ph
            surf.fill(self.BG, pg.Rect(x, y, pw, ph))
            for i, r in enumerate(rendered):
                surf.blit(r, (x + pad, y + pad + i * line_h))

        panel(texts[0], pad, pad, self.FG)
        panel(texts[1], pad, pad, self.REC, anchor="right")
        if texts[2]:
            panel([texts[2]], 0, h // 2 - line_h, self.NOTE, anchor="centre")
        if texts[3]:
            panel([texts[3]], 0, -(pad + (line_h * len(texts[4]) + 3 * pad if texts[4] else 0)), self.NOTE,
                  anchor="centre")
        if texts[4]:
            panel(list(texts[4]), pad, -pad, self.FG)
        self._key = key
        self._cached = (pg.image.tobytes(surf, "RGBA"), (w, h))
        return self._cached
