"""`sana-wm explore`: the interactive loop (pygame window + moderngl) and its headless twin.

One loop serves both modes. Each iteration: feed scripted key events (if a script drives the keys), handle
pygame's events (held keys come from KEYDOWN / KEYUP only), take the next frame from the worker's queue when
playback is due, refresh the HUD, draw. The loop never waits on the model: when no frame is ready it keeps
the last one on screen and says so in the HUD.

Interactive: frames are shown at the session's fps (16), slowed smoothly towards the generation rate when
the model is slower than real time. Headless (`--headless`): SDL's dummy video driver for the events, a
standalone EGL context and an offscreen framebuffer for the drawing, no wall-clock pacing; the run ends when
the script has been shown.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .client import LocalClient, SessionInfo, WorldClient
from .hud import HUD_MODES, HudInfo, HudRenderer
from .keys import DEFAULT_SPEED_PRESET, SPEED_PRESETS, KeySample, KeySampler, KeyTracker, ScriptDriver
from .recorder import Recorder, WalkLog
from .worker import End, Failed, Frame, GenerationWorker, Seek, SessionStarted

log = logging.getLogger(__name__)

HUD_REFRESH_S = 0.125
"""The HUD text is rebuilt at most 8 times a second."""
MESSAGE_S = 3.0
"""How long a notice (screenshot saved, recording written) stays on screen."""
STOP_TIMEOUT_S = 60.0
"""How long quitting waits for a chunk in flight before leaving the generation thread behind."""


class ExplorerStartError(ValueError):
    """The window or the GL context cannot be created (one line for the CLI, exit code 2)."""


@dataclass
class ExploreOptions:
    image: str | None = None
    """First frame (a file); None: the built-in start image."""
    prompt: str = ""
    model: str = "tiny-world"
    device: str = "cpu"
    connect: str | None = None
    """HOST:PORT of a `sana-wm serve` server instead of a local model."""
    token: str | None = None
    seed: int = 0
    record: str | None = None
    """Record from the start into this .mp4 (R toggles recording; later files get -2, -3, ...)."""
    headless: bool = False
    script: str | None = None
    """Action string played as held keys (required headless; optional in a window)."""
    size: tuple[int, int] = (960, 540)
    """Window (or offscreen framebuffer) size in pixels."""
    fullscreen: bool = False
    hud: str = "hud"
    """Initial HUD mode: hud, hud+help or off."""
    out_dir: str = "."
    """Where F12 screenshots and recordings without --record go."""
    fast: object = None
    """The local model's fast path (a `runtime.pipeline.FastPath`; None: as stored)."""
    queue_chunks: int = 2
    snapshot_every: int = 4


@dataclass
class LoopStats:
    shown: int = 0
    stalls: int = 0
    latencies: list[float] = field(default_factory=list)
    show_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=33))

    def play_fps(self) -> float | None:
        t = self.show_times
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) / (t[-1] - t[0])


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--connect: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def make_client(opts: ExploreOptions) -> WorldClient:
    if opts.connect:
        from .remote import RemoteClient

        host, port = parse_hostport(opts.connect)
        return RemoteClient(host, port, token=opts.token)
    return LocalClient(opts.model, opts.device, fast=opts.fast)


def _numbered(path: Path, n: int) -> Path:
    return path if n <= 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")


class Explorer:
    """The explorer loop.

    Args:
        opts: `ExploreOptions`.
        client: a `WorldClient` (default: `make_client(opts)`).
        on_frame: called as `on_frame(explorer, frame)` after each shown frame is drawn (tests read the
            framebuffer there, or post events).
    """

    def __init__(self, opts: ExploreOptions, client: WorldClient | None = None,
                 on_frame: Callable[[Explorer, Frame], None] | None = None):
        if opts.headless and not opts.script:
            raise ValueError("--headless needs --script ACTIONS (there is no keyboard to read)")
        if opts.hud not in HUD_MODES:
            raise ValueError(f"hud mode must be one of {HUD_MODES}, got {opts.hud!r}")
        self.opts = opts
        self.client = client if client is not None else make_client(opts)
        self.on_frame = on_frame
        self.image_bytes = Path(opts.image).read_bytes() if opts.image else None
        self.running = False
        self.exit_code = 0
        self.paused = False
        self.hud_mode = opts.hud
        self.speed_preset = DEFAULT_SPEED_PRESET
        self.info: SessionInfo | None = None
        self.seed = opts.seed
        self.epoch = 0
        self.current: Frame | None = None
        self.walk = WalkLog()
        self.recorder: Recorder | None = None
        self.recordings: list[Path] = []
        self.screenshots: list[Path] = []
        self.stats = LoopStats()
        self.error: str | None = None
        self.stalled = False
        self._record_count = 0
        self._next_due = 0.0
        self._message: tuple[str, float] | None = None
        self._shot_wanted = False
        self._dirty = True
        self._hud_next = 0.0
        self._hud_uploaded = None
        self._script_held: frozenset[str] = frozenset()
        self._pending_latency: list[float] = []
        self._ended = False

    # ---- set-up / tear-down -----------------------------------------------------------------------------------
    def _init_window(self) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import moderngl
        import pygame

        # The runtime's kernel stack (triton's libtriton) loads before any OpenGL context: libtriton and Mesa's
        # llvmpipe each carry an LLVM, and libtriton loaded second crashed the process in its import (a segfault
        # when the first recording, or a model, came after the window).
        import runtime.attention  # noqa: F401

        if self.opts.headless:
            # Events need an initialised video subsystem; the dummy driver gives one without a screen.
            prev = os.environ.get("SDL_VIDEODRIVER")
            os.environ["SDL_VIDEODRIVER"] = "dummy"
            try:
                pygame.display.init()
            finally:
                if prev is None:
                    os.environ.pop("SDL_VIDEODRIVER", None)
                else:
                    os.environ["SDL_VIDEODRIVER"] = prev
            pygame.font.init()
            try:
                self.ctx = moderngl.create_standalone_context(backend="egl")
            except Exception as exc:  # noqa: BLE001  (glcontext raises plain Exception: no EGL here)
                log.info("EGL context failed (%s); using the default standalone backend", exc)
                self.ctx = moderngl.create_standalone_context()
            self.surface = None
        else:
            pygame.display.init()
            driver = pygame.display.get_driver()
            if driver in ("dummy", "offscreen"):
                pygame.quit()
                raise ExplorerStartError(f"no display to open a window on (SDL video driver {driver!r}): set "
                                         "DISPLAY, or run with --headless --script ACTIONS")
            pygame.font.init()
            pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MAJOR_VERSION, 3)
            pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MINOR_VERSION, 3)
            pygame.display.gl_set_attribute(pygame.GL_CONTEXT_PROFILE_MASK, pygame.GL_CONTEXT_PROFILE_CORE)
            flags = pygame.OPENGL | pygame.DOUBLEBUF | pygame.RESIZABLE
            if self.opts.fullscreen:
                flags |= pygame.FULLSCREEN
            # Named before the window exists, so it never shows pygame's default title.
            pygame.display.set_caption("SANA-WM explorer")
            try:
                self.surface = pygame.display.set_mode(self.opts.size, flags)
                self.ctx = moderngl.create_context()
            except Exception as exc:  # noqa: BLE001  (pygame.error, or glcontext's plain Exception)
                pygame.quit()
                raise ExplorerStartError(f"cannot open an OpenGL 3.3 window: {exc}") from None
        from .display import Display

        size = self.opts.size if self.opts.headless else pygame.display.get_window_size()
        self.display = Display(self.ctx, size, offscreen=self.opts.headless)
        self.hud = HudRenderer()
        self.clock = pygame.time.Clock()
        self.tracker = KeyTracker()
        self.script = ScriptDriver(self.opts.script) if self.opts.script else None
        self.sampler = KeySampler(self.tracker, scripted=self.script is not None)
        self.worker = GenerationWorker(
            self.client, self.sampler, image=self.image_bytes, prompt=self.opts.prompt, seed=self.opts.seed,
            paced=not self.opts.headless, snapshot_every=self.opts.snapshot_every,
            queue_chunks=self.opts.queue_chunks)
        self.worker.set_speed(SPEED_PRESETS[self.speed_preset])

    def _shutdown(self) -> None:
        import pygame

        if self.recorder is not None:
            self._stop_recording()
        try:
            self.display.release()
        except Exception as exc:  # noqa: BLE001  (the context may already be gone with the window)
            log.debug("releasing GL objects: %s", exc)
        pygame.display.quit()
        if self.worker.stop(STOP_TIMEOUT_S):
            self.client.close()
        else:
            log.warning("the generation thread is still in a step; leaving it behind")
        pygame.quit()

    # ---- main loop --------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until Esc / window close / the end of a headless script; returns the exit code."""
        self._init_window()
        self.running = True
        self.worker.start()
        try:
            while self.running:
                self._iterate()
        except KeyboardInterrupt:
            self.exit_code = 130
        finally:
            self._shutdown()
        return self.exit_code

    def _iterate(self) -> None:
        import pygame

        now = time.perf_counter()
        self._feed_script()
        self._handle_events(pygame.event.get())
        shown = self._advance(now)
        self._refresh_hud(now)
        if self._dirty:
            self.display.draw(hud=self.hud_mode != "off")
            if self._shot_wanted:
                self._save_screenshot()
            if not self.opts.headless:
                pygame.display.flip()
            photon = time.perf_counter()
            for t in self._pending_latency:
                self._note_latency(photon - t)
            self._pending_latency.clear()
            self._dirty = False
            if shown is not None and self.on_frame is not None:
                self.on_frame(self, shown)
        if not self.opts.headless:
            self.clock.tick(120)
        elif shown is None:
            time.sleep(0.002)      # nothing ready: let the generation thread have the CPU

    # ---- input ------------------------------------------------------------------------------------------------
    def _feed_script(self) -> None:
        """Scripted keys: inject the KEYDOWN / KEYUP events of each raw frame the worker asks for."""
        import pygame

        if self.script is None:
            return
        while (raw := self.sampler.wanted()) is not None:
            keys = self.script.keys_at(raw)
            ups, downs = self.script.transitions(self._script_held, keys or frozenset())
            for code in ups:
                pygame.event.post(pygame.event.Event(pygame.KEYUP, key=code, mod=0, scancode=0, unicode=""))
            for code in downs:
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code, mod=0, scancode=0,
                                                     unicode=pygame.key.name(code)))
            self._script_held = keys or frozenset()
            self._handle_events(pygame.event.get())
            sample = self.tracker.sample()
            self.sampler.publish(raw, KeySample(frozenset(), end=True) if keys is None else sample)

    def _handle_events(self, events) -> None:
        import pygame

        for ev in events:
            if ev.type == pygame.QUIT:
                self.running = False
            elif ev.type == pygame.KEYDOWN:
                if self.tracker.key_down(ev.key):
                    self._hud_next = 0.0            # show the held keys at once
                    continue
                self._command(ev.key)
            elif ev.type == pygame.KEYUP:
                if self.tracker.key_up(ev.key):
                    self._hud_next = 0.0
            elif ev.type in (pygame.VIDEORESIZE, pygame.WINDOWSIZECHANGED) and not self.opts.headless:
                self.display.resize(pygame.display.get_window_size())
                self._dirty = True
            elif ev.type == pygame.WINDOWFOCUSLOST:
                self.tracker.release_all()
            elif ev.type in (pygame.WINDOWEXPOSED, pygame.VIDEOEXPOSE):
                self._dirty = True

    def _command(self, key: int) -> None:
        import pygame

        self._dirty = True
        self._hud_next = 0.0
        if key == pygame.K_ESCAPE:
            self.running = False
        elif key == pygame.K_SPACE:
            self.paused = not self.paused
            self.worker.set_paused(self.paused)
            self.tracker.forget_presses()       # a pause is not latency
            self._next_due = time.perf_counter()
        elif key == pygame.K_r:
            if self.recorder is None:
                self._start_recording()
            else:
                self._stop_recording()
        elif key == pygame.K_F12:
            self._shot_wanted = True
        elif key == pygame.K_BACKSPACE:
            self.worker.rewind(self.current.raw if self.current is not None else 0)
            self._say("rewinding...")
        elif key == pygame.K_n:
            self.worker.new_seed()
            self._say(f"new seed {self.seed + 1}...")
        elif pygame.K_1 <= key <= pygame.K_4:
            self.speed_preset = key - pygame.K_0
            self.worker.set_speed(SPEED_PRESETS[self.speed_preset])
        elif key == pygame.K_h:
            self.hud_mode = HUD_MODES[(HUD_MODES.index(self.hud_mode) + 1) % len(HUD_MODES)]
        elif key == pygame.K_F11 and not self.opts.headless:
            try:
                pygame.display.toggle_fullscreen()
            except pygame.error as exc:
                self._say(f"fullscreen: {exc}")
            self.display.resize(pygame.display.get_window_size())

    # ---- playback ---------------------------------------------------------------------------------------------
    def _play_interval(self) -> float:
        """Seconds between shown frames: 1 / fps, stretched when generation is slower than real time."""
        fps = self.info.fps if self.info else 16
        gen = self.worker.stats.gen_fps
        if gen is None or gen >= fps:
            return 1.0 / fps
        # Play at the generation rate, nudged by the buffer (x1 at half a chunk queued, +-15% over a chunk's
        # sawtooth), so each chunk is spread over the time the next one takes: playback slows smoothly
        # instead of running at 16 fps and freezing in turn.
        chunk = self.info.chunk_frames if self.info else 24
        fill = len(self.worker.queue) / max(chunk, 1)
        rate = gen * min(1.3, max(0.7, 0.85 + 0.3 * fill))
        return 1.0 / min(fps, max(rate, 0.5))

    def _advance(self, now: float) -> Frame | None:
        """Apply control items at the queue head; show the next frame when due. Returns the frame shown."""
        queue = self.worker.queue
        while not queue.peek_is_frame():
            item = queue.get_nowait()
            if item is None:
                break
            self._control(item)
        if self.paused or not self.running:
            return None
        if not queue.peek_is_frame():
            if self.info is not None and not self._ended and now > self._next_due + 0.5 / self.info.fps:
                if not self.stalled:
                    self.stats.stalls += 1
                    self._hud_next = 0.0
                self.stalled = True
            return None
        if not self.opts.headless and now < self._next_due:
            return None
        frame = queue.get_nowait()
        if frame.epoch < self.epoch:
            return None                     # from before a rewind / new seed
        interval = self._play_interval()
        self._next_due = now + interval if now - self._next_due > interval else self._next_due + interval
        self._show(frame, now)
        return frame

    def _show(self, frame: Frame, now: float) -> None:
        if self.stalled:
            self._hud_next = 0.0
        self.stalled = False
        self.display.upload_frame(frame.image)
        self.current = frame
        if frame.chunk is not None:
            self.walk.add_chunk(frame.chunk)
        if self.recorder is not None:
            self.recorder.add(frame)
        self._pending_latency.extend(frame.presses)
        self.stats.shown += 1
        self.stats.show_times.append(now)
        self._dirty = True

    def _control(self, item) -> None:
        self._dirty = True
        self._hud_next = 0.0
        if isinstance(item, SessionStarted):
            recording = self.recorder is not None
            if item.reason == "new_seed" and recording:
                self._stop_recording()              # a new walk: a new file
            self.epoch = item.epoch
            self.info, self.seed = item.info, item.seed
            self.walk.reset()
            self._next_due = time.perf_counter()
            if item.reason == "open":
                if self.opts.record and self.recorder is None and not self.recordings:
                    self._start_recording()
            elif item.reason == "new_seed":
                if recording:
                    self._start_recording()
                self._say(f"new seed {item.seed}")
            elif recording:                         # rewind to the start of the same walk
                self.recorder.note_rewind(-1)
        elif isinstance(item, Seek):
            self.epoch = item.epoch
            self.walk.truncate(item.raw + 1)
            self.display.upload_frame(item.image)
            self.current = Frame(item.epoch, item.raw, item.image, item.pose, frozenset())
            if self.recorder is not None:
                self.recorder.note_rewind(item.raw)
            self._say(f"rewound to {item.raw / (self.info.fps if self.info else 16):.1f} s")
        elif isinstance(item, End):
            self._ended = True
            if self.opts.headless:
                self.running = False
        elif isinstance(item, Failed):
            self.error = item.error
            self.exit_code = 1
            if self.opts.headless:
                self.running = False

    # ---- recording, screenshots -------------------------------------------------------------------------------
    def _start_recording(self) -> None:
        if self.info is None:
            self._say("no session yet")
            return
        self._record_count += 1
        if self.opts.record:
            path = _numbered(Path(self.opts.record), self._record_count)
        else:
            path = Path(self.opts.out_dir) / time.strftime("explorer-%Y%m%d-%H%M%S.mp4")
            path = _numbered(path, 1 + sum(1 for p in self.recordings if p.stem.startswith(path.stem)))
        # A local model's fast path is known (a replay follows its precision); a server's is not.
        fast = self.opts.fast if self.opts.fast is not None and not self.opts.connect else None
        # A local model attends as SANA_WM_ATTENTION says (runtime.attention); a server's is unknown.
        from runtime.attention import DEFAULT_ATTENTION_KERNEL

        self.recorder = Recorder(path, info=self.info, walk=self.walk, seed=self.seed, prompt=self.opts.prompt,
                                 image=self.opts.image, model=self.info.model,
                                 fast_path=None if fast is None else fast.to_dict(),
                                 softmax_attention=None if self.opts.connect else [DEFAULT_ATTENTION_KERNEL])
        self.recordings.append(path)

    def _stop_recording(self) -> None:
        rec, self.recorder = self.recorder, None
        rec.close()
        self._say(f"recorded {rec.path} ({rec.frames_written} frames)")

    def _save_screenshot(self) -> None:
        import pygame

        self._shot_wanted = False
        pixels = self.display.read()
        out = Path(self.opts.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = out / f"explorer-{stamp}.png"
        n = 2
        while path.exists():
            path = out / f"explorer-{stamp}-{n}.png"
            n += 1
        pygame.image.save(pygame.image.frombuffer(pixels.tobytes(), (pixels.shape[1], pixels.shape[0]), "RGB"),
                          str(path))
        self.screenshots.append(path)
        self._say(f"screenshot {path}")

    # ---- HUD --------------------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self._message = (text, time.perf_counter() + MESSAGE_S)
        self._hud_next = 0.0

    def _note_latency(self, seconds: float) -> None:
        self.stats.latencies.append(seconds)
        if self.recorder is not None:
            self.recorder.note_latency(seconds)

    def hud_info(self) -> HudInfo:
        ws = self.worker.stats
        lat = self.stats.latencies
        msg = self._message[0] if self._message and self._message[1] > time.perf_counter() else None
        cur = self.current
        return HudInfo(
            model=self.info.model if self.info else self.opts.model, seed=self.seed,
            raw=cur.raw if cur else 0, fps=self.info.fps if self.info else 16, gen_fps=ws.gen_fps,
            play_fps=self.stats.play_fps(), chunk_ms=ws.chunk_ms,
            key_latency_s=lat[-1] if lat else None,
            key_latency_mean_s=float(np.mean(lat[-20:])) if lat else None,
            queue=len(self.worker.queue), queue_capacity=self.worker.queue.capacity,
            pose=cur.pose if cur else np.eye(4), held=self.tracker.held, speed_preset=self.speed_preset,
            speed=SPEED_PRESETS[self.speed_preset], recording=self.recorder is not None,
            record_s=self.recorder.seconds if self.recorder else 0.0, paused=self.paused, stalled=self.stalled,
            loading=ws.loading and self.error is None, error=self.error or ws.error, message=msg)

    def _refresh_hud(self, now: float) -> None:
        if now < self._hud_next:
            return
        self._hud_next = now + HUD_REFRESH_S
        rendered = self.hud.render(self.hud_info(), self.display.size, self.hud_mode)
        if rendered is None:
            self.display.upload_hud(None)
        elif rendered is not self._hud_uploaded:
            self.display.upload_hud(rendered[0], rendered[1], (0, 0))
            self._dirty = True
        self._hud_uploaded = rendered

    def summary(self) -> str:
        ws = self.worker.stats
        lat = self.stats.latencies
        fps = self.info.fps if self.info else 16
        parts = [f"shown {self.stats.shown} frames ({self.stats.stalls} waits for the model)"]
        if ws.gen_fps is not None:
            parts.append(f"generation {ws.gen_fps:.1f} fps (x{ws.gen_fps / fps:.2f} real time), "
                         f"last chunk {ws.chunk_ms:.0f} ms")
        if lat:
            parts.append(f"key-to-photon mean {np.mean(lat):.2f} s, median {np.median(lat):.2f} s over {len(lat)}")
        parts.extend(f"wrote {p}" for p in self.recordings)
        return "explore: " + "; ".join(parts)


def run_explorer(opts: ExploreOptions, client: WorldClient | None = None) -> int:
    """Run the explorer; returns the exit code (0: normal end, 1: generation failed, 130: Ctrl-C)."""
    import sys

    app = Explorer(opts, client)
    code = app.run()
    if app.error:
        print(f"sana-wm: error: {app.error}", file=sys.stderr)
    print(app.summary())
    return code
