"""The explorer in a real X window (Xvfb): xdotool presses keys, F12 takes a screenshot, Esc quits.

Needs the `Xvfb` and `xdotool` binaries (Debian / Ubuntu packages `xvfb` and `xdotool`); skipped without them.
The model is `FakeClient` (tests/unit/test_explorer.py), so the test checks the window, the events, the GL
drawing and the HUD, not the model.

Run as a script to refresh the documentation picture (a real screenshot of the window):

    python tests/unit/test_explorer_xvfb.py --docs docs/images/explorer.png [--real]

`--real` uses the embedded tiny-world model (`LocalClient`) instead of the fake world.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (640, 360)

RUNNER = """
import sys
from explorer.app import ExploreOptions, run_explorer
from explorer.client import LocalClient
from tests.unit.test_explorer import FakeClient
out, record, real, w, h, hud = sys.argv[1:7]
client = LocalClient("tiny-world", "cpu") if real == "1" else FakeClient(144, 256)
opts = ExploreOptions(size=(int(w), int(h)), out_dir=out, record=record or None, hud=hud,
                      prompt="a sunny meadow with trees and houses")
sys.exit(run_explorer(opts, client))
"""


def _missing_tools() -> str | None:
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (apt-get install xvfb xdotool)" if missing else None


@contextlib.contextmanager
def xvfb(size=(1280, 800)):
    """Start Xvfb on a free display; yields the DISPLAY string."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24",
                             "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


class ExplorerWindow:
    """The explorer as a subprocess on an X display, driven through xdotool."""

    def __init__(self, display: str, out: Path, *, record: Path | None = None, real: bool = False,
                 size=WINDOW, hud: str = "hud"):
        self.env = dict(os.environ, DISPLAY=display, SDL_VIDEODRIVER="x11", SDL_AUDIODRIVER="dummy",
                        OMP_NUM_THREADS="1", PYGAME_HIDE_SUPPORT_PROMPT="1", PYTHONPATH=str(ROOT))
        self.out = out
        self.log = open(out / "explorer.log", "w")  # noqa: SIM115  (the child writes it until quit / kill)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(out), str(record or ""), "1" if real else "0", str(size[0]),
             str(size[1]), hud], cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.window = self._wait_window()

    def xdotool(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30,
                              check=False).stdout

    def _wait_window(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"explorer exited early: {(self.out / 'explorer.log').read_text()}")
            ids = self.xdotool("search", "--pid", str(self.proc.pid)).split()
            if ids:
                self.xdotool("mousemove", "--window", ids[0], "20", "20")   # no WM: focus follows the pointer
                self.xdotool("windowfocus", ids[0])
                return ids[0]
            time.sleep(0.2)
        raise TimeoutError("no explorer window appeared")

    def title(self) -> str:
        return self.xdotool("getwindowname", self.window).strip()

    def key(self, *names: str) -> None:
        self.xdotool("key", *names)

    def hold(self, name: str, seconds: float) -> None:
        self.xdotool("keydown", name)
        time.sleep(seconds)
        self.xdotool("keyup", name)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise RuntimeError(f"explorer exited while waiting for {what}")
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def screenshot(self, timeout: float = 20.0) -> Path:
        before = set(self.out.glob("explorer-*.png"))
        self.key("F12")
        new = self.wait_for(lambda: sorted(set(self.out.glob("explorer-*.png")) - before), timeout, "the screenshot")
        path = new[0]
        self.wait_for(lambda: path.stat().st_size > 0, 5, "the screenshot file")
        time.sleep(0.2)
        return path

    def quit(self, timeout: float = 60.0) -> int:
        self.key("Escape")
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def _sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.slow
def test_window_keys_screenshot_and_hud(tmp_path):
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    from PIL import Image

    from explorer.display import letterbox
    from runtime.video import read_mp4

    record = tmp_path / "session.mp4"
    side = record.with_suffix(".json")
    with xvfb() as display:
        win = ExplorerWindow(display, tmp_path, record=record)
        try:
            # The X server may report the name a moment after the window appears.
            win.wait_for(lambda: win.title() == "SANA-WM explorer", 10, "the window's title")
            win.wait_for(lambda: (_sidecar(side) or {}).get("frames_written", 0) >= 20, 60, "the first frames")
            win.hold("w", 2.0)                                     # a real key, through the X server
            win.wait_for(lambda: "w" in ((_sidecar(side) or {}).get("actions") or ""), 60, "frames walked with W")
            shot = win.screenshot()
            code = win.quit()
        except BaseException:
            win.kill()
            raise
    assert code == 0, (tmp_path / "explorer.log").read_text()

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (WINDOW[1], WINDOW[0], 3)
    # The HUD: a darkened panel with light text at the top left, over the bright sky of the fake world.
    bright = pixels.max(-1).astype(int)
    panel, sky = bright[10:70, 10:200], bright[10:70, 440:630]
    assert np.median(panel) < np.median(sky) - 60
    assert (panel > np.median(sky)).mean() > 0.02                 # the text
    # The frame: the letterboxed picture matches a frame of the recording (below the HUD panel).
    log = json.loads(side.read_text())
    assert log["complete"] and log["explorer"]["key_to_photon_ms"]
    frames, _ = read_mp4(record)
    assert len(frames) == log["frames_written"]
    x, y, w, h = letterbox((256, 144), WINDOW)
    shown = np.asarray(Image.fromarray(pixels[y:y + h, x:x + w]).resize((256, 144), Image.BILINEAR))
    best = max(_psnr(shown[80:], f[80:]) for f in frames)
    assert best > 22


def take_docs_screenshot(dest: Path, real: bool) -> None:
    """A screenshot of the explorer window walking forward and turning, HUD and key help shown."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, xvfb() as display:
        out = Path(tmp)
        win = ExplorerWindow(display, out, real=real, size=(960, 540), hud="hud+help")
        try:
            win.wait_for(lambda: not (out / "explorer.log").read_text().count("error"), 5, "start")
            time.sleep(8 if real else 3)
            win.xdotool("keydown", "w")
            win.hold("d", 1.5)
            time.sleep(3.0 if not real else 6.0)
            shot = win.screenshot()
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, dest)
            win.xdotool("keyup", "w")
            print(f"wrote {dest} (exit {win.quit()})")
        except BaseException:
            win.kill()
            raise


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=Path, required=True, help="where to write the screenshot (.png)")
    ap.add_argument("--real", action="store_true", help="the tiny-world model instead of the fake world")
    args = ap.parse_args()
    take_docs_screenshot(args.docs, args.real)
