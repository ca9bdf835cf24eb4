"""Camera control and camera conditioning (runtime.camera, runtime.camera_torch): CPU, fast."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import camera as cam
from runtime.camera import (
    CameraPath,
    PoseIntegrator,
    actions_to_c2w,
    camera_conditions,
    chunk_layout,
    chunk_plucker,
    default_intrinsics,
    format_actions,
    intrinsics_to_latent,
    latent_frame_count,
    load_camera,
    load_intrinsics,
    parse_actions,
    raw_frames_for_chunk,
    raw_frames_of_latent,
    relative_to_first,
    rot_x,
    rot_y,
    save_camera,
    snap_num_frames,
    ucpe_ray_matrices,
)

REPO = Path(__file__).resolve().parents[2]
STEP = 0.025
ROT = math.radians(0.6)
NORM = 1.0 + 1e-6  # the integrator divides heading vectors by (norm + 1e-6)
Q_COAST = math.exp(-1.0 / 16.0)  # velocity kept per frame while coasting (tau = 1 s, dt = 1/16 s)


def rel_err(a, b) -> float:
    """Max abs error over max(1, max |b|): the one tolerance metric of this file."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def random_rigid(rng: np.random.Generator, n: int, scale: float = 2.0) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = rng.normal(scale=scale, size=(n, 3))
    return out


# ---------------------------------------------------------------------------------------------------------
# Import hygiene
# ---------------------------------------------------------------------------------------------------------
def test_import_does_not_pull_torch():
    code = "import runtime.camera, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---------------------------------------------------------------------------------------------------------
# Action DSL
# ---------------------------------------------------------------------------------------------------------
def test_parse_actions_grammar():
    frames = parse_actions(" W-2 , wDd-1，NONE-2,ij-1 ")
    assert frames == [frozenset("w")] * 2 + [frozenset("wd")] + [frozenset()] * 2 + [frozenset("ij")]


@pytest.mark.parametrize("text, expected", [
    ("w-10,a-5,x-10", ["segment 3 'x-10'", "unknown key 'x'", "expected w a s d i j k l or none"]),
    ("", ["empty action string", "'<keys>-<frames>'"]),
    ("  ", ["empty action string"]),
    ("w-0", ["segment 1 'w-0'", "at least 1"]),
    ("a-4,w--3", ["segment 2 'w--3'", "'-3' is not a positive integer"]),
    ("w-1.5", ["segment 1", "not a positive integer"]),
    ("w-3,,a-2", ["segment 2 ''", "empty segment"]),
    ("w-3,", ["segment 2 ''", "empty segment"]),
    ("w10", ["segment 1 'w10'", "missing '-'", "'<keys>-<frames>'"]),
    ("-5", ["segment 1 '-5'", "no keys", "w a s d i j k l or none"]),
    ("nonew-5", ["segment 1", "unknown key 'n'"]),
    ("w-60000,a-50000", ["segment 2 'a-50000'", "110000", "limit of 100000"]),
])
def test_parse_actions_errors(text, expected):
    with pytest.raises(ValueError) as info:
        parse_actions(text)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_parse_actions_limit_is_inclusive():
    assert len(parse_actions("w-100000")) == 100_000


def test_format_actions_round_trip():
    frames = parse_actions("w-3,dw-2,none-1,ijkl-4,none-2,w-1")
    text = format_actions(frames)
    assert text == "w-3,wd-2,none-1,ijkl-4,none-2,w-1"
    assert parse_actions(text) == frames
    assert format_actions([]) == ""
    with pytest.raises(ValueError, match="unknown key 'q'"):
        format_actions([{"q"}])


# ---------------------------------------------------------------------------------------------------------
# Pose integration: hand-computed expectations
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, sign", [("d", 1.0), ("a", -1.0)])
def test_pure_yaw(key, sign):
    n = 25
    c2w = actions_to_c2w(f"{key}-{n}", smooth=False)
    assert c2w.shape == (n + 1, 4, 4) and c2w.dtype == np.float64
    np.testing.assert_array_equal(c2w[0], np.eye(4))
    np.testing.assert_allclose(c2w[-1, :3, :3], rot_y(sign * n * ROT), atol=1e-12)
    np.testing.assert_allclose(c2w[:, :3, 3], 0.0, atol=0)
    fwd = c2w[-1, :3, 2]
    assert math.copysign(1.0, fwd[0]) == sign  # "d" turns toward +X (right) in OpenCV axes
    assert math.isclose(math.atan2(fwd[0], fwd[2]), sign * n * ROT, abs_tol=1e-12)


@pytest.mark.parametrize("smooth", [False, True])
def test_forward_follows_new_heading(smooth):
    # With smoothing a fresh press snaps the velocity, so both modes give the same path here.
    c2w = actions_to_c2w("d-50,w-20", smooth=smooth)
    yaw = 50 * ROT
    np.testing.assert_allclose(c2w[50, :3, 3], 0.0, atol=1e-15)
    expected = 20 * STEP / NORM * np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    np.testing.assert_allclose(c2w[-1, :3, 3], expected, atol=1e-12)
    np.testing.assert_allclose(c2w[-1, :3, :3], rot_y(yaw), atol=1e-12)


def test_coasting_after_release():
    n_press, n_coast = 10, 30
    c2w = actions_to_c2w(f"w-{n_press},none-{n_coast}")
    z = c2w[:, 2, 3]
    np.testing.assert_allclose(np.diff(z[: n_press + 1]), STEP / NORM, atol=1e-15)
    coast = STEP / NORM * np.array([Q_COAST ** i for i in range(1, n_coast + 1)])
    np.testing.assert_allclose(np.diff(z[n_press:]), coast, atol=1e-15)


def test_yaw_coasts_while_walking_on():
    # Releasing d while w stays held is no fresh press: the yaw rate decays with tau = 1 s.
    c2w = actions_to_c2w("wd-8,w-12")
    yaws = np.unwrap(np.arctan2(c2w[:, 0, 2], c2w[:, 2, 2]))
    np.testing.assert_allclose(np.diff(yaws[:9]), ROT, atol=1e-12)
    np.testing.assert_allclose(np.diff(yaws[8:]), ROT * Q_COAST ** np.arange(1, 13), atol=1e-12)


def test_pitch_up_looks_toward_minus_y_and_walking_keeps_height():
    c2w = actions_to_c2w("i-30,w-10,l-10,s-4,j-3", smooth=False)
    assert c2w[30, 1, 2] < 0  # forward axis tilted toward -Y ("up" in OpenCV)
    np.testing.assert_allclose(c2w[:, 1, 3], 0.0, atol=1e-15)  # height never changes
    pitch = 30 * ROT
    np.testing.assert_allclose(c2w[40, :3, 3], [0.0, 0.0, 10 * STEP / NORM], atol=1e-12)
    np.testing.assert_allclose(c2w[50, :3, 3], [10 * STEP / NORM, 0.0, 10 * STEP / NORM], atol=1e-12)
    np.testing.assert_allclose(c2w[-1, :3, :3], rot_x(pitch), atol=1e-12)


def test_strafe_keeps_height_after_yaw_and_pitch():
    c2w = actions_to_c2w("d-40,k-25,l-30", smooth=False)
    yaw = 40 * ROT
    t = c2w[-1, :3, 3]
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    np.testing.assert_allclose(t, 30 * STEP / NORM * right, atol=1e-12)
    assert t[1] == 0.0


@pytest.mark.parametrize("smooth", [False, True])
def test_pitch_stops_at_clamp(smooth):
    c2w = actions_to_c2w("i-150", smooth=smooth)  # 0.6 deg/frame reaches 60 deg at frame 100
    elevation = np.degrees(np.arcsin(-c2w[:, 1, 2]))
    np.testing.assert_allclose(elevation[100:], 60.0, atol=1e-9)
    assert np.all(np.diff(elevation[:101]) > 0)
    c2w_down = actions_to_c2w("k-150,i-1", smooth=smooth)
    np.testing.assert_allclose(np.degrees(np.arcsin(-c2w_down[150, 1, 2])), -60.0, atol=1e-9)
    np.testing.assert_allclose(np.degrees(np.arcsin(-c2w_down[151, 1, 2])), -59.4, atol=1e-9)


def test_legacy_pitch_step_past_limit_is_dropped():
    c2w = actions_to_c2w("i-80", scheme="legacy")  # 1.2 deg/frame: 84 deg after 70 frames, 85.2 is refused
    elevation = np.degrees(np.arcsin(-c2w[:, 1, 2]))
    np.testing.assert_allclose(elevation[70:], 84.0, atol=1e-9)
    integ = PoseIntegrator(scheme="legacy", pitch_limit_deg=1.0, rotation_speed_deg=0.75)
    integ.step("i")
    integ.step("i")  # 1.5 > 1.0: dropped, not clamped
    assert math.isclose(integ.pitch_deg, 0.75)


def test_legacy_and_unified_differ_by_key_swap():
    legacy = "w-5,a-10,j-7,ia-4,l-3,dk-6,none-2,wsadijkl-2"
    swap = str.maketrans("adjl", "jlad")
    unified = legacy.translate(swap)
    kw = {"translation_speed": 0.05, "rotation_speed_deg": 1.2, "pitch_limit_deg": 85.0, "smooth": False}
    a = actions_to_c2w(legacy, scheme="legacy", **kw)
    b = actions_to_c2w(unified, scheme="unified", **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(actions_to_c2w(legacy, scheme="legacy"), a)  # legacy defaults


def test_scheme_errors_and_key_aliases():
    with pytest.raises(ValueError, match="unknown control scheme"):
        PoseIntegrator(scheme="fps")
    integ = PoseIntegrator()
    with pytest.raises(ValueError, match="unknown key 'x'"):
        integ.step(["x"])
    arrows = actions_to_c2w([["UP", "right"]] * 5)
    letters = actions_to_c2w("il-5")
    np.testing.assert_array_equal(arrows, letters)


def test_integrator_reset_and_pose_copy():
    integ = PoseIntegrator()
    for _ in range(5):
        integ.step("wd")
    pose = integ.pose
    pose[:] = 0
    assert integ.pose[3, 3] == 1.0 and integ.frame == 5
    integ.reset()
    np.testing.assert_array_equal(integ.pose, np.eye(4))
    assert integ.frame == 0 and integ.velocity == (0.0, 0.0, 0.0, 0.0)


segments = st.lists(st.tuples(st.sets(st.sampled_from(list("wasdijkl")), max_size=4), st.integers(1, 12)),
                    min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(segs=segments, scheme=st.sampled_from(["unified", "legacy"]), smooth=st.booleans(),
       split=st.floats(0.0, 1.0))
def test_integrator_matches_actions_to_c2w(segs, scheme, smooth, split):
    import msgpack

    frames = [frozenset(keys) for keys, n in segs for _ in range(n)]
    text = format_actions(frames)
    expected = actions_to_c2w(text, scheme=scheme, smooth=smooth)
    cut = int(split * len(frames))
    integ = PoseIntegrator(scheme=scheme, smooth=smooth)
    got = [integ.pose]
    for keys in frames[:cut]:
        got.append(integ.step(sorted(keys)))
    # Snapshot through msgpack mid-way (the explorer's rewind path), then carry on.
    integ = PoseIntegrator.from_state(msgpack.unpackb(msgpack.packb(integ.state())))
    for keys in frames[cut:]:
        got.append(integ.step(keys))
    np.testing.assert_array_equal(np.stack(got), expected)
    assert integ.frame == len(frames)


# ---------------------------------------------------------------------------------------------------------
# Camera files
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def traj() -> np.ndarray:
    return actions_to_c2w("wd-6,i-4,l-5")  # 16 poses


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".json"])
def test_camera_file_round_trip(tmp_path, traj, suffix):
    if suffix == ".npy":
        cp = CameraPath(traj)
    else:
        intr = np.stack([np.linspace(900, 950, len(traj)), np.full(len(traj), 905.5),
                         np.full(len(traj), 640.25), np.full(len(traj), 360.0)], axis=1)
        cp = CameraPath(traj, intrinsics=intr, image_size=(720, 1280), fps=24.0)
    path = tmp_path / f"cam{suffix}"
    save_camera(path, cp)
    back = load_camera(path)
    np.testing.assert_array_equal(back.c2w, cp.c2w)
    assert back.c2w.dtype == np.float64 and back.image_size == cp.image_size and back.fps == cp.fps
    if cp.intrinsics is None:
        assert back.intrinsics is None
    else:
        np.testing.assert_array_equal(back.intrinsics, cp.intrinsics)


def test_npy_save_refuses_to_drop_intrinsics(tmp_path, traj):
    with pytest.raises(ValueError, match=r"\.npy holds only c2w"):
        save_camera(tmp_path / "c.npy", CameraPath(traj, intrinsics=np.array([900.0, 900, 640, 360])))


def test_benchmark_npz_layout(tmp_path, traj):
    K = np.tile(np.array([[1000.0, 0, 640], [0, 1001, 352], [0, 0, 1]]), (len(traj), 1, 1))
    path = tmp_path / "bench.npz"
    np.savez(path, c2w=traj.astype(np.float32), intrinsics=K, fps=np.array(16), num_frames=np.array(9),
             prompt=np.array("a street"))
    cp = load_camera(path)
    assert cp.num_frames == 9 and cp.fps == 16.0 and cp.image_size is None
    np.testing.assert_allclose(cp.c2w, traj[:9], atol=1e-6)
    np.testing.assert_array_equal(cp.intrinsics, np.tile([1000.0, 1001, 640, 352], (9, 1)))


def _bad(traj, kind):
    a = traj.copy()
    if kind == "shape":
        return a[:, :3]
    if kind == "nan":
        a[3, 0, 3] = np.nan
    elif kind == "ortho":
        a[2, :3, :3] *= 1.01
    elif kind == "reflection":
        a[2, :3, 0] *= -1
    elif kind == "last_row":
        a[4, 3] = [0, 0, 0, 2]
    elif kind == "few":
        return a[:1]
    return a


@pytest.mark.parametrize("kind, message", [
    ("shape", "wrong c2w shape (16, 3, 4)"),
    ("nan", "non-finite values in c2w at frame 3"),
    ("ortho", "rotation of c2w frame 2 is not orthonormal"),
    ("reflection", "frame 2 is a reflection"),
    ("last_row", "last row of c2w frame 4"),
    ("few", "too few frames (1; need at least 2)"),
])
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".json"])
def test_camera_file_validation(tmp_path, traj, kind, message, suffix):
    a = _bad(traj, kind)
    path = tmp_path / f"bad_{kind}{suffix}"
    if suffix == ".npy":
        np.save(path, a)
    elif suffix == ".npz":
        np.savez(path, c2w=a)
    else:
        path.write_text(json.dumps({"c2w": a.tolist()}).replace("NaN", "NaN"))
    with pytest.raises(ValueError) as info:
        load_camera(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


@pytest.mark.parametrize("intr, message", [
    (np.array([0.0, 900, 640, 360]), "non-positive focal length at frame 0"),
    (np.tile([900.0, -1, 640, 360], (16, 1)), "non-positive focal length at frame 0"),
    (np.array([[900.0, 0, 640], [0, np.inf, 360], [0, 0, 1]]), "non-finite intrinsics"),
    (np.zeros((2, 2)), "wrong intrinsics shape (2, 2)"),
])
def test_intrinsics_validation_in_files(tmp_path, traj, intr, message):
    path = tmp_path / "bad_intr.npz"
    np.savez(path, c2w=traj, intrinsics=intr)
    with pytest.raises(ValueError) as info:
        load_camera(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_other_file_errors(tmp_path, traj):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"c2w": traj.tolist(), "intrinsic": [1, 1, 1, 1]}))
    with pytest.raises(ValueError, match="unknown key 'intrinsic'"):
        load_camera(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_camera(p)
    p2 = tmp_path / "x.npz"
    np.savez(p2, poses=traj)
    with pytest.raises(ValueError, match="missing array 'c2w'"):
        load_camera(p2)
    with pytest.raises(ValueError, match="unsupported camera file type '.txt'"):
        load_camera(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_camera(tmp_path / "missing.npy")
    p3 = tmp_path / "y.json"
    p3.write_text(json.dumps({"c2w": traj.tolist(), "image_size": [720, -3]}))
    with pytest.raises(ValueError, match="image_size"):
        load_camera(p3)


def test_load_intrinsics_layouts(tmp_path):
    K = np.array([[900.0, 0, 640], [0, 910, 360], [0, 0, 1]])
    np.testing.assert_array_equal(load_intrinsics(K, 3), np.tile([900.0, 910, 640, 360], (3, 1)))
    np.testing.assert_array_equal(load_intrinsics(np.array([1.0, 2, 3, 4]), 2), [[1, 2, 3, 4]] * 2)
    Ks = np.tile(K, (10, 1, 1))
    Ks[:, 0, 0] = np.arange(10) + 900
    np.testing.assert_array_equal(load_intrinsics(Ks, 4)[:, 0], [900, 901, 902, 903])  # truncated
    short = np.array([[100.0, 100, 50, 40], [200.0, 300, 70, 40]])
    res = load_intrinsics(short, 5)  # resampled linearly over the trajectory
    np.testing.assert_allclose(res[:, 0], [100, 125, 150, 175, 200])
    np.testing.assert_allclose(res[:, 1], [100, 150, 200, 250, 300])
    path = tmp_path / "k.npy"
    np.save(path, Ks)
    np.testing.assert_array_equal(load_intrinsics(path, 10), load_intrinsics(Ks, 10))
    np.save(path, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"k\.npy: wrong intrinsics shape \(5, 3\)"):
        load_intrinsics(path, 5)


# ---------------------------------------------------------------------------------------------------------
# Intrinsics conversion
# ---------------------------------------------------------------------------------------------------------
def test_intrinsics_to_latent_hand_computed():
    # 720x1280 -> 704x1280: no scaling, crop 8 rows off the top; then 22x40 latent grid (1/32).
    out = intrinsics_to_latent(np.array([1000.0, 1000, 640, 360]), (720, 1280), (704, 1280), (22, 40))
    np.testing.assert_allclose(out, [1000 / 32, 1000 / 32, 640 / 32, (360 - 8) / 32])
    # 1080x1440 (4:3) -> 704x1280: scale 8/9 (width binds), resized 960x1280, crop 128 rows.
    out = intrinsics_to_latent(np.array([[1200.0, 1200, 720, 540]] * 2), (1080, 1440), (704, 1280), (22, 40))
    s = 1280 / 1440
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [1200 * s / 32, 1200 * s / 32, 720 * s / 32, (540 * s - 128) / 32])
    assert cam.cover_resize_crop((1080, 1440), (704, 1280)) == ((960, 1280), (128, 0))


def test_default_intrinsics():
    K = default_intrinsics((704, 1280))
    f = 640 / math.tan(math.radians(cam.DEFAULT_HFOV_DEG / 2))
    np.testing.assert_allclose(K, [f, f, 640, 352])
    assert math.isclose(cam.fov_deg(K, (704, 1280))[0], cam.DEFAULT_HFOV_DEG)
    assert math.isclose(cam.fov_deg(default_intrinsics((704, 1280), fov_deg=90.0), (704, 1280))[0], 90.0)


# ---------------------------------------------------------------------------------------------------------
# Frame bookkeeping
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, max_frames, expected", [
    (961, None, 961), (10, None, 9), (12, None, 9), (13, None, 17), (14, None, 17),
    (13, 16, 9), (13, 17, 17), (200, 100, 97), (1, None, 1), (5, None, 9), (5, 8, 1),
])
def test_snap_num_frames(n, max_frames, expected):
    assert snap_num_frames(n, max_frames) == expected


def test_latent_frame_bookkeeping():
    assert latent_frame_count(961) == 121 and latent_frame_count(1) == 1
    with pytest.raises(ValueError, match="8k\\+1"):
        latent_frame_count(960)
    assert raw_frames_of_latent(0) == range(1)
    assert raw_frames_of_latent(1) == range(1, 9)
    assert raw_frames_of_latent(3) == range(17, 25)
    assert raw_frames_of_latent(2, stride=4) == range(5, 9)


def test_chunks():
    assert chunk_layout(31) == [(0, 4)] + [(4 + 3 * i, 7 + 3 * i) for i in range(9)]
    assert chunk_layout(9) == [(0, 4), (4, 7), (7, 9)]
    assert chunk_layout(2) == [(0, 2)]
    assert raw_frames_for_chunk(0) == range(25)
    assert raw_frames_for_chunk(1) == range(25, 49)
    assert raw_frames_for_chunk(5) == range(121, 145)
    for c, (s, e) in enumerate(chunk_layout(40)):
        raw = raw_frames_for_chunk(c)
        assert raw.start == raw_frames_of_latent(s).start and raw.stop == raw_frames_of_latent(e - 1).stop


# ---------------------------------------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------------------------------------
LAT_HW = (5, 7)
INTR = np.array([6.0, 5.5, 3.0, 2.0])  # latent pixels; principal point on grid node (u=3, v=2)


def test_relative_to_first():
    rng = np.random.default_rng(0)
    P = random_rigid(rng, 6)
    rel = relative_to_first(P)
    np.testing.assert_array_equal(rel[0], np.eye(4))
    for i in range(6):  # relative motion between any two frames is unchanged
        np.testing.assert_allclose(np.linalg.inv(rel[1]) @ rel[i], np.linalg.inv(P[1]) @ P[i], atol=1e-12)


def test_camera_conditions_layout():
    rng = np.random.default_rng(1)
    P = relative_to_first(random_rigid(rng, 25))
    intr = np.abs(rng.normal(size=(25, 4))) + 1
    cond = camera_conditions(P, intr, [0, 1, 3])
    assert cond.shape == (3, 20) and cond.dtype == np.float32
    for row, raw in zip(cond, [0, 8, 24]):
        np.testing.assert_allclose(row[:16], P[raw].reshape(-1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(row[16:], intr[raw], rtol=1e-6)
    np.testing.assert_allclose(camera_conditions(P, INTR, [2])[0, 16:], INTR)
    with pytest.raises(ValueError, match="latent frame 4 needs raw frame 32"):
        camera_conditions(P, INTR, [4])


def _plucker(P, intr, ks, hw=LAT_HW):
    out = chunk_plucker(P, intr, ks, hw)
    S, T, h, w = out.shape[0] // 6, out.shape[1], hw[0], hw[1]
    return out.reshape(S, 6, T, h, w).astype(np.float64)


def test_plucker_properties():
    rng = np.random.default_rng(2)
    P = relative_to_first(random_rigid(rng, 33))
    out = chunk_plucker(P, INTR, [0, 1, 4], LAT_HW)
    assert out.shape == (48, 3, *LAT_HW) and out.dtype == np.float32
    pl = _plucker(P, INTR, [0, 1, 4])
    d, m = pl[:, :3], pl[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    assert np.abs((d * m).sum(axis=1)).max() < 1e-5


def test_plucker_layout_and_padding():
    # Pure translation along x by raw index: the moment identifies which raw frame fills each slot.
    F = 17
    P = np.tile(np.eye(4), (F, 1, 1))
    P[:, 0, 3] = np.arange(F)
    pl = _plucker(P, INTR, [0, 1, 2])
    centre = pl[:, :, :, 2, 3]  # principal-point ray d = (0, 0, 1): moment = (0, -x, 0)
    np.testing.assert_allclose(centre[:, :3], np.array([0.0, 0, 1])[None, :, None] * np.ones((8, 1, 3)), atol=1e-7)
    np.testing.assert_allclose(-centre[:, 4, 0], np.arange(8))  # k = 0 -> raw frames 0..7
    np.testing.assert_allclose(-centre[:, 4, 1], np.arange(1, 9))  # k = 1 -> raw frames 1..8
    np.testing.assert_allclose(-centre[:, 4, 2], np.arange(9, 17))  # k = 2 -> raw frames 9..16
    # Directions do not depend on translation.
    ident = _plucker(np.tile(np.eye(4), (F, 1, 1)), INTR, [0, 1, 2])
    np.testing.assert_allclose(pl[:, :3], ident[:, :3], atol=0)
    # A trajectory shorter than a latent frame repeats its last pose.
    short = _plucker(P[:3], INTR, [0])
    np.testing.assert_allclose(-short[:, 4, 0, 2, 3], [0, 1, 2, 2, 2, 2, 2, 2])


def test_plucker_per_frame_intrinsics():
    P = np.tile(np.eye(4), (9, 1, 1))
    intr = np.tile(INTR, (9, 1))
    intr[5, 2] = 4.0  # raw frame 5 (slot 4 of latent frame 1): principal point moves one column right
    pl = _plucker(P, intr, [1])
    np.testing.assert_allclose(pl[4, :3, 0, 2, 4], [0, 0, 1], atol=1e-7)
    np.testing.assert_allclose(pl[3, :3, 0, 2, 3], [0, 0, 1], atol=1e-7)


def test_ucpe_ray_matrices_rigid_and_principal_ray():
    rng = np.random.default_rng(3)
    P = relative_to_first(random_rigid(rng, 17))
    cond = camera_conditions(P, INTR, [0, 1, 2])
    mats = ucpe_ray_matrices(cond, LAT_HW).astype(np.float64)
    h, w = LAT_HW
    assert mats.shape == (3, h * w, 4, 4)
    R = mats[..., :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-6)
    np.testing.assert_allclose(mats @ np.linalg.inv(mats), np.broadcast_to(np.eye(4), mats.shape), atol=1e-5)
    np.testing.assert_array_equal(mats[..., 3, :], np.broadcast_to([0, 0, 0, 1], mats.shape[:-2] + (4,)))
    s = 2 * w + 3  # token of the principal point (v = 2, u = 3)
    for t, raw in enumerate([0, 8, 16]):
        c2w = cond[t, :16].reshape(4, 4).astype(np.float64)
        d_world = np.append(c2w[:3, 2], 0.0)  # principal ray direction (homogeneous, w = 0)
        np.testing.assert_allclose(mats[t, s] @ d_world, [0, 0, 1, 0], atol=1e-6)
        # There the ray frame is the camera frame, so P is world-to-camera.
        np.testing.assert_allclose(mats[t, s], np.linalg.inv(c2w), atol=1e-5)
        # Every ray's camera centre maps to the ray-local origin.
        centre = np.append(c2w[:3, 3], 1.0)
        np.testing.assert_allclose(mats[t] @ centre, np.broadcast_to([0, 0, 0, 1], (h * w, 4)), atol=1e-5)


def test_ucpe_nan_rays_get_identity():
    cond = camera_conditions(np.tile(np.eye(4), (9, 1, 1)), INTR, [0, 1]).copy()
    cond[1, 0] = np.nan
    mats = ucpe_ray_matrices(cond, LAT_HW)
    np.testing.assert_array_equal(mats[1], np.broadcast_to(np.eye(4), mats[1].shape))
    assert np.isfinite(mats[0]).all()


def test_camera_tensors_convenience():
    c2w = actions_to_c2w("wd-16")  # 17 raw frames -> 3 latent frames
    out = cam.camera_tensors(c2w, INTR, LAT_HW)
    assert out["camera_conditions"].shape == (3, 20) and out["chunk_plucker"].shape == (48, 3, *LAT_HW)


# ---------------------------------------------------------------------------------------------------------
# Torch twins
# ---------------------------------------------------------------------------------------------------------
def test_torch_twins_match_numpy():
    torch = pytest.importorskip("torch")
    from runtime.camera_torch import (
        camera_conditions_to_ray_matrices,
        camera_conditions_torch,
        chunk_plucker_torch,
    )

    rng = np.random.default_rng(4)
    hw = (6, 11)  # odd sizes
    P = relative_to_first(random_rigid(rng, 41))
    intr = np.stack([rng.uniform(5, 12, 41), rng.uniform(5, 12, 41), rng.uniform(2, 9, 41),
                     rng.uniform(1, 5, 41)], axis=1)
    ks = [0, 1, 2, 4, 5]
    cond = camera_conditions(P, intr, ks)
    np.testing.assert_array_equal(camera_conditions_torch(torch.from_numpy(P), torch.from_numpy(intr), ks)
                                  .numpy(), cond)

    ref = ucpe_ray_matrices(cond, hw)
    batch = torch.from_numpy(np.stack([cond, cond[::-1].copy()]))
    got = camera_conditions_to_ray_matrices(batch, hw)
    assert got.shape == (2, len(ks), hw[0] * hw[1], 4, 4) and got.dtype == torch.float32
    assert rel_err(got[0].numpy(), ref) < 1e-5
    assert rel_err(got[1].numpy(), ref[::-1]) < 1e-5
    got64 = camera_conditions_to_ray_matrices(batch, hw, compute_dtype=torch.float64)
    assert rel_err(got64[0].numpy(), ref) < 1e-6

    ref_pl = chunk_plucker(P, intr, ks, hw)
    got_pl = chunk_plucker_torch(torch.from_numpy(P), torch.from_numpy(intr), ks, hw)
    assert got_pl.shape == ref_pl.shape and got_pl.dtype == torch.float32
    assert rel_err(got_pl.numpy(), ref_pl) < 1e-5
    # Tensor indices (graph-safe path), shared intrinsics and a batch dimension.
    got_b = chunk_plucker_torch(torch.from_numpy(np.stack([P, P])), torch.from_numpy(INTR),
                                torch.tensor(ks), hw)
    ref_shared = chunk_plucker(P, INTR, ks, hw)
    assert got_b.shape == (2, *ref_shared.shape)
    assert rel_err(got_b[1].numpy(), ref_shared) < 1e-5
    # Padding past the end matches too.
    assert rel_err(chunk_plucker_torch(torch.from_numpy(P[:3]), torch.from_numpy(INTR), [0], hw).numpy(),
                   chunk_plucker(P[:3], INTR, [0], hw)) < 1e-5


def test_torch_nan_rays_get_identity():
    torch = pytest.importorskip("torch")
    from runtime.camera_torch import camera_conditions_to_ray_matrices

    cond = camera_conditions(np.tile(np.eye(4), (9, 1, 1)), INTR, [0, 1]).copy()
    cond[1, 0] = np.nan
    got = camera_conditions_to_ray_matrices(torch.from_numpy(cond)[None], LAT_HW)[0].numpy()
    np.testing.assert_array_equal(got[1], np.broadcast_to(np.eye(4), got[1].shape))
    assert rel_err(got[0], ucpe_ray_matrices(cond, LAT_HW)[0]) < 1e-5
