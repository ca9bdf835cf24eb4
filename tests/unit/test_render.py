"""`sana-wm render` end to end on the embedded model: a real MP4 read back, and an exact replay."""
import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.pipeline import EMBEDDED_DIR
from runtime.video import read_mp4

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "model.safetensors").is_file(),
                                reason="the embedded weights are not in this checkout")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=600,
                          check=False)


def test_render_writes_mp4_and_replays_exactly(tmp_path):
    out = tmp_path / "walk.mp4"
    r = run_cli("render", "--actions", "w-20,a-12,wd-20", "--seed", "3", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    frames, fps = read_mp4(out)
    assert frames.shape == (49, 144, 256, 3) and fps == 16.0     # 53 poses snap to 8k+1 = 49 frames
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["complete"] and side["frames_written"] == 49 and side["seed"] == 3
    assert side["actions"] == "w-20,a-12,wd-20" and len(side["c2w"]) == 49
    again = tmp_path / "again.mp4"
    r = run_cli("render", "--replay", str(out.with_suffix(".json")), "--out", str(again), "-q")
    assert r.returncode == 0, r.stderr
    replayed, _ = read_mp4(again)
    assert np.array_equal(replayed, frames)


def test_render_records_the_attention_kernel_and_replays_it(tmp_path):
    """A render with SANA_WM_ATTENTION=int8_bf16v (the INT8-score attention, its PyTorch reference on the CPU)
    records it in the sidecar; its frames are close to the default's but not the same; a replay without the
    variable attends the logged way and reproduces them exactly."""
    import os

    base, int8 = tmp_path / "sdpa.mp4", tmp_path / "int8.mp4"
    assert run_cli("render", "--actions", "w-20,l-12", "--out", str(base), "-q").returncode == 0
    r = subprocess.run([sys.executable, "-m", "runtime.cli", "render", "--actions", "w-20,l-12", "--out", str(int8),
                        "-q"], capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "SANA_WM_ATTENTION": "int8_bf16v"})
    assert r.returncode == 0, r.stderr
    assert json.loads(base.with_suffix(".json").read_text())["softmax_attention"] == ["sdpa"]
    assert json.loads(int8.with_suffix(".json").read_text())["softmax_attention"] == ["int8_bf16v"]
    (a, _), (b, _) = read_mp4(base), read_mp4(int8)
    mse = float(((a[1:].astype(np.float64) - b[1:]) ** 2).mean())
    assert 0 < mse and 10 * np.log10(255 ** 2 / mse) > 30
    again = tmp_path / "again.mp4"
    r = run_cli("render", "--replay", str(int8.with_suffix(".json")), "--out", str(again), "-q")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_mp4(again)[0], b)


def test_render_camera_file(tmp_path):
    from runtime.camera import CameraPath, actions_to_c2w, save_camera

    cam = tmp_path / "path.npz"
    save_camera(cam, CameraPath(actions_to_c2w("w-30,l-10")))
    out = tmp_path / "cam.mp4"
    r = run_cli("render", "--camera", str(cam), "--frames", "33", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    frames, _ = read_mp4(out)
    assert frames.shape[0] == 33


def test_missing_official_weights_exit_2_offline(tmp_path, monkeypatch):
    env = {"SANA_WM_HOME": str(tmp_path / "empty-cache"), "SANA_WM_ALLOW_DOWNLOAD": "0"}
    r = subprocess.run([sys.executable, "-m", "runtime.cli", "render", "--model", "sana-wm-streaming", "--actions",
                        "w-10", "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, timeout=300,
                       check=False, env={**__import__("os").environ, **env})
    assert r.returncode == 2
    assert "sana-wm: error:" in r.stderr and "generator" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x.mp4").exists()


def test_render_on_the_fp8_fast_path_replays_it(tmp_path):
    """`--precision fp8` (static scales calibrated on a short walk first; an emulation on the CPU) renders the same
    world as the model as stored, within FP8 rounding; the sidecar records the fast path and a replay follows it
    exactly."""
    from runtime.evaluate import psnr

    args = ("--actions", "w-20,a-12,wd-20", "--seed", "3", "-q")
    base, fp8 = tmp_path / "bf.mp4", tmp_path / "fp8.mp4"
    for out, extra in ((base, ()), (fp8, ("--precision", "fp8"))):
        r = run_cli("render", *args, *extra, "--out", str(out))
        assert r.returncode == 0, r.stderr
    ref, _ = read_mp4(base)
    frames, _ = read_mp4(fp8)
    assert frames.shape == ref.shape and not np.array_equal(frames, ref)
    assert min(psnr(a, b) for a, b in zip(frames[1:], ref[1:])) > 28.0
    side = json.loads(fp8.with_suffix(".json").read_text())
    assert side["fast_path"] == {"precision": "fp8", "scope": "official", "compile": False, "cuda_graphs": False}
    assert json.loads(base.with_suffix(".json").read_text())["fast_path"]["precision"] == "bf16"
    again = tmp_path / "again.mp4"
    r = run_cli("render", "--replay", str(fp8.with_suffix(".json")), "--out", str(again), "-q")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_mp4(again)[0], frames)
