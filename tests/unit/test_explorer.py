"""The explorer loop, headless: real pygame events, a real moderngl (EGL) framebuffer, a real MP4.

A `FakeClient` stands in for the model: it ray-casts a checkered ground plane and a sky from the poses it is
given, so every frame depends on the camera exactly and cheaply. One test drives the real `LocalClient`
end to end and replays its recording through `sana-wm render --replay`.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import typing

import numpy as np
import pytest

from explorer.client import SessionInfo, StepResult, WorldClient
from runtime.camera import actions_to_c2w, format_actions, parse_actions


# ---- a world without a model -------------------------------------------------------------------------------
def render_world(c2w: np.ndarray, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3] views of a checkered ground plane (1 unit below the start) under a sky, OpenCV axes."""
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    f = (width / 2) / math.tan(math.radians(45))
    u = (np.arange(width) + 0.5 - width / 2) / f
    v = (np.arange(height) + 0.5 - height / 2) / f
    cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((height, width))), -1)   # [H, W, 3]
    out = np.empty((len(c2w), height, width, 3), np.uint8)
    tint = np.array([0.35 + 0.1 * (seed % 3), 0.55, 0.9])
    for i, pose in enumerate(c2w):
        d = cam @ pose[:3, :3].T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        o = pose[:3, 3]
        sky = (1.0 - 0.6 * np.clip(-d[..., 1:2], 0, 1)) * tint
        sun = np.clip(d @ np.array([0.45, -0.3, 0.84]), 0, 1) ** 400
        sky = sky + sun[..., None] * np.array([1.0, 0.9, 0.5])
        dy = np.where(d[..., 1] > 1e-3, d[..., 1], np.nan)
        s = (1.0 - o[1]) / dy
        px, pz = o[0] + s * d[..., 0], o[2] + s * d[..., 2]
        checker = (np.floor(px * 2) + np.floor(pz * 2)) % 2
        ground = np.where(checker[..., None] > 0, [0.25, 0.6, 0.25], [0.85, 0.8, 0.6])
        fog = np.exp(-np.nan_to_num(s, nan=1e9) / 12)[..., None]
        ground = ground * fog + (1 - fog) * np.array([0.7, 0.75, 0.8])
        img = np.where(np.isnan(dy)[..., None], sky, ground)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


class FakeClient(WorldClient):
    """Deterministic stand-in for a world model: frames are `render_world` of the poses, chunked as 25 + 24."""

    def __init__(self, height: int = 72, width: int = 128, first: int = 25, chunk: int = 24, delay: float = 0.0):
        self.height, self.width, self.first, self.chunk, self.delay = height, width, first, chunk, delay
        self.opened: list[int] = []
        self.steps: list[np.ndarray] = []
        self.poses: list[np.ndarray] = []
        self.restores: list[str] = []
        self.closed = False
        self._snaps: dict[str, tuple[int, int]] = {}
        self._seed = 0

    def open_session(self, *, image=None, prompt="", seed=0, model=None) -> SessionInfo:
        self._seed = seed
        self.opened.append(seed)
        self.chunk_index = 0
        self.poses = []
        self.info = SessionInfo(self.height, self.width, 16, "fake-world", self.first, self.chunk)
        return self.info

    def step(self, c2w):
        c2w = np.asarray(c2w)
        assert c2w.shape == (self.frames_needed(), 4, 4)
        t0 = time.perf_counter()
        start = len(self.poses)
        self.poses.extend(c2w)
        self.steps.append(c2w.copy())
        frames = render_world(c2w, self.height, self.width, self._seed)
        if self.delay:
            time.sleep(self.delay)
        self.chunk_index += 1
        ms = 1e3 * (time.perf_counter() - t0)
        return StepResult(frames, self.chunk_index - 1, start, {"generate_ms": ms, "total_ms": ms})

    def snapshot(self) -> str:
        sid = f"f{len(self._snaps)}"
        self._snaps[sid] = (self.chunk_index, len(self.poses))
        return sid

    def restore(self, snapshot_id: str) -> None:
        self.restores.append(snapshot_id)
        self.chunk_index, n = self._snaps[snapshot_id]
        del self.poses[n:]

    def close(self) -> None:
        self.closed = True


# ---- helpers -----------------------------------------------------------------------------------------------
def run_headless(client, script, tmp_path, *, record=True, size=(128, 72), hud="off", on_frame=None, app_cls=None,
                 **kw):
    from explorer.app import ExploreOptions, Explorer

    opts = ExploreOptions(headless=True, script=script, record=str(tmp_path / "walk.mp4") if record else None,
                          size=size, hud=hud, out_dir=str(tmp_path), **kw)
    app = (app_cls or Explorer)(opts, client, on_frame=on_frame)
    code = app.run()
    return app, code


def post_key(key: int) -> None:
    import pygame

    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, scancode=0, unicode=""))
    pygame.event.post(pygame.event.Event(pygame.KEYUP, key=key, mod=0, scancode=0, unicode=""))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


class Shown:
    """on_frame hook that keeps (raw, image, framebuffer) of every shown frame."""

    def __init__(self, read: bool = False):
        self.read = read
        self.raws: list[int] = []
        self.images: list[np.ndarray] = []
        self.pixels: list[np.ndarray] = []

    def __call__(self, app, frame):
        self.raws.append(frame.raw)
        self.images.append(frame.image)
        if self.read:
            self.pixels.append(app.display.read())


# ---- keys ----------------------------------------------------------------------------------------------------
@pytest.fixture
def pg():
    import pygame

    pygame.display.init()
    yield pygame
    pygame.quit()


def test_key_tracker_follows_events_taps_and_aliases(pg):
    from explorer.keys import KeyTracker

    t = KeyTracker()
    assert t.key_down(pg.K_w) and not t.key_down(pg.K_SPACE)
    t.key_down(pg.K_j)
    t.key_down(pg.K_LEFT)                      # the arrow stands for j too
    s = t.sample()
    assert s.keys == {"w", "j"} and len(s.presses) == 2     # j pressed twice counts as one press
    t.key_up(pg.K_j)
    assert t.held == {"w", "j"}                # the left arrow still holds j
    t.key_up(pg.K_LEFT)
    t.key_down(pg.K_d)
    t.key_up(pg.K_d)                           # a tap between two samples is not lost...
    assert t.sample().keys == {"w", "d"}
    assert t.sample().keys == {"w"}            # ...and counts once
    t.release_all()
    assert t.sample().keys == frozenset()


def test_script_driver_transitions(pg):
    from explorer.keys import ScriptDriver

    d = ScriptDriver("w-2,wd-1,none-1")
    assert len(d) == 4 and d.keys_at(1) == {"w"} and d.keys_at(3) == {"w", "d"} and d.keys_at(5) is None
    ups, downs = d.transitions({"w"}, {"d"})
    assert ups == [pg.K_w] and downs == [pg.K_d]


# ---- queue and worker ----------------------------------------------------------------------------------------
def test_frame_queue_is_bounded_and_keeps_control_items_in_order():
    from explorer.worker import End, Frame, FrameQueue

    q = FrameQueue(capacity=2)
    abort = threading.Event()
    f = [Frame(0, i, np.zeros((2, 2, 3), np.uint8), np.eye(4), frozenset()) for i in range(3)]
    assert q.put_frame(f[0], abort) and q.put_frame(f[1], abort)
    q.put_control(End(0))                      # control items never wait
    done = []
    th = threading.Thread(target=lambda: done.append(q.put_frame(f[2], abort)))
    th.start()
    time.sleep(0.15)
    assert not done and len(q) == 2            # backpressure: the third frame waits
    assert q.get_nowait() is f[0]
    th.join(2)
    assert done == [True]
    assert [type(q.get_nowait()).__name__ for _ in range(3)] == ["Frame", "End", "Frame"]
    assert q.get_nowait() is None
    q.capacity = 0
    abort.set()
    assert q.put_frame(f[0], abort) is False


def test_worker_backpressure_stops_generation_when_nobody_plays():
    from explorer.keys import KeySampler, KeyTracker
    from explorer.worker import GenerationWorker

    client = FakeClient(height=8, width=8)
    worker = GenerationWorker(client, KeySampler(KeyTracker(keymap={})), paced=False, queue_chunks=2)
    worker.start()
    time.sleep(1.0)
    try:
        assert len(worker.queue) <= worker.queue.capacity == 49
        assert len(client.steps) <= 3          # two chunks queued, the third waits to be put
    finally:
        assert worker.stop(5)


# ---- the loop, headless ------------------------------------------------------------------------------------------
SCRIPT = "w-12,wd-10,i-6,none-5,jk-8,sa-7"      # 48 frames: every kind of key, a chunk boundary inside


def test_scripted_keys_become_the_expected_poses(tmp_path):
    client = FakeClient()
    shown = Shown()
    app, code = run_headless(client, SCRIPT, tmp_path, record=False, on_frame=shown)
    assert code == 0
    expected = actions_to_c2w(SCRIPT)                            # [49, 4, 4], identity first
    sent = np.concatenate(client.steps)
    assert len(sent) == 25 + 24                                  # exactly the chunks the script needs
    np.testing.assert_array_equal(sent[: len(expected)], expected)
    assert shown.raws == list(range(len(expected)))              # every frame, in order, once
    np.testing.assert_array_equal(app.current.pose, expected[-1])


def test_script_past_a_chunk_holds_the_last_pose(tmp_path):
    client = FakeClient()
    _, code = run_headless(client, "d-30", tmp_path, record=False)
    expected = actions_to_c2w("d-30")
    sent = np.concatenate(client.steps)
    assert code == 0 and len(sent) == 49
    np.testing.assert_array_equal(sent[:31], expected)
    np.testing.assert_array_equal(sent[31:], np.repeat(expected[-1:], 18, axis=0))   # as `render` pads


def test_frames_reach_the_framebuffer(tmp_path):
    client = FakeClient()
    shown = Shown(read=True)
    run_headless(client, "a-12", tmp_path, record=False, on_frame=shown)     # window == frame size
    for image, pixels in zip(shown.images, shown.pixels):
        assert pixels.shape == image.shape
        assert np.abs(pixels.astype(int) - image).max() <= 1

    shown = Shown(read=True)
    run_headless(FakeClient(), "a-12", tmp_path, record=False, size=(300, 100), on_frame=shown)
    from PIL import Image

    from explorer.display import letterbox

    x, y, w, h = letterbox((128, 72), (300, 100))
    assert (w, h) == (178, 100) and x == 61
    for image, pixels in zip(shown.images, shown.pixels):
        assert pixels[:, :x].max() == 0 and pixels[:, x + w:].max() == 0          # black bars
        content = np.asarray(Image.fromarray(pixels[y:y + h, x:x + w]).resize((128, 72), Image.BILINEAR))
        assert psnr(content, image) > 24


def test_hud_is_drawn_over_the_frame(tmp_path):
    shown = Shown(read=True)
    app, _ = run_headless(FakeClient(), "w-30", tmp_path, record=False, size=(640, 360), hud="hud+help",
                          on_frame=shown)
    from explorer.display import letterbox

    x, y, w, h = letterbox((128, 72), (640, 360))
    from PIL import Image

    last = shown.pixels[-1]
    frame = np.asarray(Image.fromarray(shown.images[-1]).resize((w, h), Image.BILINEAR)).astype(int)
    diff = np.abs(last[y:y + h, x:x + w].astype(int) - frame).sum(-1)
    assert (diff[:60, :200] > 60).mean() > 0.3       # the stats panel covers the top left
    assert (diff[150:210, 200:440] > 60).mean() < 0.02    # the middle shows the frame
    assert "key-to-photon" in " ".join(__import__("explorer.hud", fromlist=["hud_lines"]).hud_lines(app.hud_info()))


def test_recording_and_sidecar(tmp_path):
    from runtime.render import load_sidecar, plan_from_sidecar
    from runtime.video import read_mp4

    shown = Shown()
    _, code = run_headless(FakeClient(), SCRIPT, tmp_path, on_frame=shown)
    assert code == 0
    frames, fps = read_mp4(tmp_path / "walk.mp4")
    assert fps == 16 and len(frames) == 49 == len(shown.images)
    assert min(psnr(a, b) for a, b in zip(frames, shown.images)) > 25      # H.264 4:2:0 of a checkerboard
    log = load_sidecar(tmp_path / "walk.json")
    plan = plan_from_sidecar(log)
    assert plan.num_frames == 49 and log["complete"] and log["frames_written"] == 49
    np.testing.assert_array_equal(plan.c2w[:49], actions_to_c2w(SCRIPT))
    assert log["actions"] == format_actions(parse_actions(SCRIPT)) == "w-12,wd-10,i-6,none-5,jk-8,as-7"
    assert log["explorer"]["record_start_raw"] == 0 and len(log["explorer"]["frames"]) == 49
    assert [c["raw_start"] for c in log["chunks"]] == [0, 25]
    assert all("generate_ms" in c and "wall_ms" in c for c in log["chunks"])
    assert len(log["explorer"]["key_to_photon_ms"]) >= 5


def test_escape_exits_cleanly_with_a_finished_file(tmp_path):
    import pygame

    from runtime.video import read_mp4

    def on_frame(app, frame):
        if frame.raw == 40:
            post_key(pygame.K_ESCAPE)

    shown = Shown()
    app, code = run_headless(FakeClient(), "w-5000", tmp_path, on_frame=lambda a, f: (shown(a, f), on_frame(a, f)))
    assert code == 0
    frames, _ = read_mp4(tmp_path / "walk.mp4")
    assert len(frames) == len(shown.raws) and 41 <= len(frames) <= 43
    log = json.loads((tmp_path / "walk.json").read_text())
    assert log["complete"] and log["frames_written"] == len(frames)
    assert not app.worker.alive


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"     # a zombie has finished
    except OSError:
        return False


def test_a_crash_leaves_a_playable_recording(tmp_path):
    import signal
    import subprocess
    import sys

    from runtime.video import read_mp4

    code = ("import sys; from tests.unit.test_explorer import FakeClient; "
            "from explorer.app import ExploreOptions, run_explorer; "
            "sys.exit(run_explorer(ExploreOptions(headless=True, script='wd-5000', size=(128, 72), hud='off', "
            f"record={str(tmp_path / 'crash.mp4')!r}), FakeClient(delay=0.15)))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=root))
    side = tmp_path / "crash.json"
    deadline = time.monotonic() + 60
    written = 0
    try:
        while written < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                written = json.loads(side.read_text())["frames_written"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
    finally:
        encoders = _children(proc.pid)                 # ffmpeg, fed through a pipe
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # The encoder sees the pipe close and finishes the file on its own; wait for it as a player would.
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in encoders) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert written >= 100
    log = json.loads(side.read_text())
    assert not log["complete"]
    frames, fps = read_mp4(tmp_path / "crash.mp4")
    assert fps == 16 and len(frames) >= log["frames_written"] - 24          # at most one chunk lost


def test_rewind_new_seed_speed_and_hud_keys(tmp_path):
    import pygame

    posted = set()

    def on_frame(app, frame):
        for raw, key in ((60, pygame.K_BACKSPACE), (120, pygame.K_3), (130, pygame.K_h), (180, pygame.K_n)):
            if frame.raw == raw and key not in posted:
                posted.add(key)
                post_key(key)

    client = FakeClient()
    shown = Shown()
    app, code = run_headless(client, "w-100,d-100", tmp_path, snapshot_every=1,
                             on_frame=lambda a, f: (shown(a, f), on_frame(a, f)))
    assert code == 0
    assert client.restores                                     # Backspace restored a snapshot
    back = next(i for i in range(1, len(shown.raws)) if shown.raws[i] <= shown.raws[i - 1])
    assert shown.raws[back] < 60 and shown.raws[back] % 24 == 1            # a chunk boundary, shown >= 1 s ago
    assert client.opened == [0, 1]                             # N: a new session with the next seed
    assert app.hud_mode == "hud" and app.speed_preset == 3     # H cycled off -> hud; 3 = x2 speed
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("walk.json", "walk-2.json"))
    assert first["seed"] == 0 and second["seed"] == 1 and first["complete"] and second["complete"]
    assert first["explorer"]["rewinds"] and first["explorer"]["rewinds"][0]["to_raw"] == shown.raws[back] - 1
    assert {c["speed"] for c in first["chunks"]} == {1.0, 2.0}
    # The sidecar describes the branch after the rewind: its poses are the integrator's for those speeds.
    c2w = np.asarray(first["c2w"])
    assert np.isfinite(c2w).all() and len(c2w) >= first["num_frames"]
    assert second["num_frames"] == 201 and second["explorer"]["record_start_raw"] == 0
    np.testing.assert_allclose(np.asarray(second["c2w"])[:201], actions_to_c2w("w-100,d-100", translation_speed=0.05,
                                                                               rotation_speed_deg=1.2))


def test_pause_holds_playback_and_generation(tmp_path):
    import pygame

    times = {}

    def on_frame(app, frame):
        times[frame.raw] = time.perf_counter()
        if frame.raw == 10 and not times.get("paused"):
            times["paused"] = True
            post_key(pygame.K_SPACE)
            threading.Timer(0.6, post_key, args=(pygame.K_SPACE,)).start()

    client = FakeClient()
    app, code = run_headless(client, "w-60", tmp_path, record=False, on_frame=on_frame)
    assert code == 0 and not app.paused
    assert times[11] - times[10] > 0.5


def test_render_loop_never_blocks_on_a_slow_model(tmp_path):
    from explorer.app import Explorer

    class Timed(Explorer):
        durations: typing.ClassVar[list[float]] = []
        stalled_seen = False

        def _iterate(self):
            t0 = time.perf_counter()
            super()._iterate()
            self.durations.append(time.perf_counter() - t0)
            if self.stalled:
                Timed.stalled_seen = True

    client = FakeClient(height=8, width=8, delay=0.6)
    _, code = run_headless(client, "w-40", tmp_path, record=False, size=(64, 36), hud="hud", app_cls=Timed)
    assert code == 0
    assert len(Timed.durations) > 100                 # the loop kept turning while each chunk took 0.6 s
    assert max(Timed.durations[5:]) < 0.25
    assert Timed.stalled_seen


def test_playback_slows_smoothly_when_generation_is_slow(tmp_path):
    from explorer.app import ExploreOptions, Explorer

    app = Explorer(ExploreOptions(), FakeClient())
    app.info = SessionInfo(72, 128, 16, "fake", 25, 24)

    class Stub:
        def __init__(self, fps, queued):
            self.stats = type("S", (), {"gen_fps": fps})()
            self.queue = [None] * queued

    app.worker = Stub(None, 0)
    assert app._play_interval() == pytest.approx(1 / 16)
    app.worker = Stub(40.0, 10)
    assert app._play_interval() == pytest.approx(1 / 16)
    app.worker = Stub(6.4, 24)                                    # x0.4 real time, a chunk buffered
    fast = 1 / app._play_interval()
    app.worker = Stub(6.4, 2)
    slow = 1 / app._play_interval()
    assert 16 > fast > 6.4 > slow > 3.0


# ---- HUD ------------------------------------------------------------------------------------------------------
def test_hud_text():
    from explorer.hud import HudInfo, banner, heading_pitch_deg, hud_lines, status_badges

    pose = actions_to_c2w("d-150")[-1]                         # yaw right 0.6 deg a frame
    heading, pitch = heading_pitch_deg(pose)
    assert 60 < heading < 90 and abs(pitch) < 1e-6
    assert heading_pitch_deg(actions_to_c2w("i-20")[-1])[1] > 5                   # i looks up
    info = HudInfo(model="m", gen_fps=6.4, chunk_ms=3750, key_latency_s=2.5, queue=7, queue_capacity=49,
                   held=frozenset("wd"), recording=True, record_s=65.2, paused=True, stalled=True)
    text = "\n".join(hud_lines(info))
    for part in ("gen 6.4 fps", "x0.40 real time", "chunk 3750 ms", "key-to-photon 2.50 s", "queue 7/49",
                 "keys W D", "heading"):
        assert part in text
    assert status_badges(info) == ["REC 1:05.2", "PAUSED"]
    assert banner(info) is None                                # paused: not "generating"
    info.paused = False
    assert banner(info) == "generating... x0.40 real time"
    assert status_badges(info)[-1] == "slow motion x0.40"


# ---- CLI --------------------------------------------------------------------------------------------------------
def test_cli_rejects_bad_explore_arguments(capsys, tmp_path):
    from runtime.cli import main

    assert main(["explore", "--headless"]) == 2
    assert "--headless needs --script" in capsys.readouterr().err
    assert main(["explore", "--headless", "--script", "w-3,x-2"]) == 2
    assert "segment 2" in capsys.readouterr().err
    assert main(["explore", "--headless", "--script", "w-3", "--record", str(tmp_path / "a.avi")]) == 2
    assert main(["explore", "--headless", "--script", "w-3", "--connect", "nohost"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    os.environ["SDL_VIDEODRIVER"] = "dummy"            # conftest's default: no screen for a window
    assert main(["explore"]) == 2
    assert "no display" in capsys.readouterr().err


def test_import_explorer_is_light():
    import subprocess
    import sys

    code = ("import sys, explorer, explorer.app, explorer.worker, explorer.recorder, explorer.hud, explorer.keys; "
            "print(sorted(m for m in ('torch', 'pygame', 'moderngl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.strip() == "[]"


# ---- the real model ----------------------------------------------------------------------------------------------
def _tiny_world_ready() -> str | None:
    """None when the tiny-world stack (model + autoencoder + weights) can run here, else why not."""
    try:
        import torch

        from runtime.decoder import load_autoencoder
    except ImportError as exc:
        return f"model stack not importable: {exc}"
    try:
        import runtime.tiny_vae  # noqa: F401   (registers "tiny-world")
    except ImportError:
        pass
    try:
        load_autoencoder("tiny-world", device="cpu", dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001  (unregistered, or its weights are not trained yet)
        return f"the tiny-world autoencoder cannot load yet: {str(exc).splitlines()[0][:200]}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_real_local_client_records_and_replays_identically(tmp_path, precision):
    """A live headless walk on the real local model, recorded, then replayed by `sana-wm render --replay` frame for
    frame; on the FP8 fast path too (the sidecar records it and the replay follows it)."""
    reason = _tiny_world_ready()
    if reason:
        pytest.skip(reason)
    from PIL import Image

    from runtime.cli import main
    from runtime.video import read_mp4

    image = tmp_path / "start.png"
    Image.fromarray(render_world(np.eye(4)[None], 144, 256)[0]).save(image)
    rec, replay = tmp_path / "live.mp4", tmp_path / "replay.mp4"
    script = "w-12,d-8,none-10"                               # 31 frames: two chunks, the second cut short
    assert main(["explore", "--headless", "--script", script, "--record", str(rec), "--image", str(image),
                 "--seed", "3", "--prompt", "a test walk", "--window", "256x144", "--precision", precision]) == 0
    live, _ = read_mp4(rec)
    assert len(live) == 31
    log = json.loads(rec.with_suffix(".json").read_text())
    assert log["fast_path"]["precision"] == precision
    assert log["softmax_attention"] == ["sdpa"]
    np.testing.assert_array_equal(np.asarray(log["c2w"])[:31], actions_to_c2w(script))
    assert main(["render", "--replay", str(rec.with_suffix(".json")), "--out", str(replay), "-q"]) == 0
    again, _ = read_mp4(replay)
    assert len(again) == 31
    np.testing.assert_array_equal(again, live)
