"""Keyboard state for the explorer: held keys from KEYDOWN / KEYUP events, and per-raw-frame key samples.

Two halves, one per thread:

- `KeyTracker` (UI thread) follows the held movement keys from pygame's KEYDOWN / KEYUP events (never from
  `pygame.key.get_pressed`, so injected events in headless mode behave exactly like real ones). A key that
  is pressed and released between two samples (a tap) still counts for the next sample, so short taps are
  never lost.
- `KeySampler` (worker thread) hands out one key set per raw frame. Live: the keys held right now (the worker
  asks for a whole chunk at once, when it starts generating it, so the frames of a chunk use the keys held
  at its start). Scripted: the worker blocks until the UI loop has injected and processed the scripted
  events of that raw frame, which makes a scripted run deterministic whatever the timing.

pygame is imported lazily: `explorer.keys` holds only the mapping logic and the thread hand-off.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from runtime.camera import ACTION_KEYS, parse_actions

SPEED_PRESETS: dict[int, float] = {1: 0.5, 2: 1.0, 3: 2.0, 4: 4.0}
"""Key 1-4 -> multiplier of the scheme's translation and rotation speeds."""
DEFAULT_SPEED_PRESET = 2

MOVE_KEY_NAMES: dict[str, str] = {
    "w": "w", "a": "a", "s": "s", "d": "d", "i": "i", "j": "j", "k": "k", "l": "l",
    "up": "i", "down": "k", "left": "j", "right": "l",
}
"""pygame key name -> DSL key (the arrows stand for the i/j/k/l cluster, as in `runtime.camera`)."""

HELP_LINES = (
    "W/S  forward / back       A/D  turn left / right",
    "I/K  look up / down       J/L  strafe left / right",
    "Space pause    R record    F12 screenshot    F11 fullscreen",
    "Backspace rewind    N new seed    1-4 speed    H HUD/help    Esc quit",
)


def pygame_move_keys() -> dict[int, str]:
    """pygame key code -> DSL key for every movement key (WASD, IJKL, arrows)."""
    import pygame

    return {pygame.key.key_code(name): dsl for name, dsl in MOVE_KEY_NAMES.items()}


def keys_label(keys: Iterable[str]) -> str:
    """Held DSL keys in canonical order, upper case (``"W D"``), or ``"-"``."""
    held = set(keys)
    return " ".join(k.upper() for k in ACTION_KEYS if k in held) or "-"


@dataclass(frozen=True)
class KeySample:
    """The keys of one raw frame."""

    keys: frozenset[str]
    """DSL keys held for this raw frame."""
    presses: tuple[float, ...] = ()
    """perf_counter times of the key presses this sample is the first to include (key-to-photon latency)."""
    end: bool = False
    """A scripted run has no more frames: this raw frame is past the script's end."""


class KeyTracker:
    """Held movement keys, tracked from KEYDOWN / KEYUP events (UI thread), sampled by the worker.

    Several physical keys may map to one DSL key (``j`` and the left arrow): the DSL key is held while any of
    them is down.
    """

    def __init__(self, keymap: dict[int, str] | None = None):
        self._keymap = keymap if keymap is not None else pygame_move_keys()
        self._lock = threading.Lock()
        self._down: dict[int, str] = {}          # physical key code -> DSL key, currently down
        self._tapped: set[str] = set()           # pressed since the last sample (taps survive a release)
        self._presses: list[float] = []          # press times not yet included in a sample

    def is_move_key(self, code: int) -> bool:
        return code in self._keymap

    def key_down(self, code: int, t: float | None = None) -> bool:
        """A KEYDOWN; returns whether it was a movement key."""
        dsl = self._keymap.get(code)
        if dsl is None:
            return False
        with self._lock:
            if dsl not in self._down.values():
                self._presses.append(time.perf_counter() if t is None else t)
            self._down[code] = dsl
            self._tapped.add(dsl)
        return True

    def key_up(self, code: int) -> bool:
        """A KEYUP; returns whether it was a movement key."""
        if code not in self._keymap:
            return False
        with self._lock:
            self._down.pop(code, None)
        return True

    def release_all(self) -> None:
        """Forget every held key (focus lost: the KEYUPs would go to another window)."""
        with self._lock:
            self._down.clear()

    def forget_presses(self) -> None:
        """Drop the pending press times (latency is not measured across a pause)."""
        with self._lock:
            self._presses.clear()

    @property
    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._down.values())

    def sample(self) -> KeySample:
        """Keys for one raw frame: held now, plus taps since the last sample; consumes the pending presses."""
        with self._lock:
            keys = frozenset(self._down.values()) | frozenset(self._tapped)
            self._tapped.clear()
            presses, self._presses = tuple(self._presses), []
        return KeySample(keys, presses)


class KeySampler:
    """Per-raw-frame key samples for the generation worker.

    Live mode: `sample` returns the tracker's state at once. Scripted mode: `sample(raw)` posts a request
    and waits until the UI loop calls `publish(raw, sample)` (after injecting and handling that frame's
    scripted events); `cancel` wakes a waiting worker when the app stops.
    """

    def __init__(self, tracker: KeyTracker, *, scripted: bool = False):
        self.tracker = tracker
        self.scripted = scripted
        self._cond = threading.Condition()
        self._wanted: int | None = None
        self._ready: dict[int, KeySample] = {}
        self._cancelled = False

    def sample(self, raw: int) -> KeySample | None:
        """Keys of raw frame `raw` (>= 1); None when cancelled."""
        if not self.scripted:
            return self.tracker.sample()
        with self._cond:
            self._wanted = raw
            self._cond.notify_all()
            while raw not in self._ready and not self._cancelled:
                self._cond.wait(0.05)
            self._wanted = None
            return None if self._cancelled else self._ready.pop(raw)

    def wanted(self) -> int | None:
        """Raw frame the worker waits for and nobody has published yet (scripted mode), or None."""
        with self._cond:
            return None if self._wanted in self._ready else self._wanted

    def publish(self, raw: int, sample: KeySample) -> None:
        with self._cond:
            self._ready[raw] = sample
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()


@dataclass
class ScriptDriver:
    """Plays an action string as held keys: the KEYDOWN / KEYUP codes to inject before each raw frame.

    Script frame f (0-based) holds the keys of raw frame f + 1 (raw frame 0 is the first image).
    """

    actions: str
    frames: list[frozenset[str]] = field(init=False)
    _codes: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.frames = parse_actions(self.actions)
        import pygame

        self._codes = {k: pygame.key.key_code(k) for k in ACTION_KEYS}

    def __len__(self) -> int:
        return len(self.frames)

    def keys_at(self, raw: int) -> frozenset[str] | None:
        """Scripted keys of raw frame `raw` (>= 1), None past the end."""
        f = raw - 1
        return self.frames[f] if 0 <= f < len(self.frames) else None

    def transitions(self, before: Iterable[str], after: Iterable[str]) -> tuple[list[int], list[int]]:
        """(codes to release, codes to press) to go from holding `before` to holding `after`."""
        b, a = set(before), set(after)
        return ([self._codes[k] for k in ACTION_KEYS if k in b - a],
                [self._codes[k] for k in ACTION_KEYS if k in a - b])
