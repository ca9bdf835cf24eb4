"""Procedural worlds: determinism, camera conventions, clear start, trajectories, clips."""
import math

import numpy as np
import pytest
import torch

from runtime.camera import actions_to_c2w, default_intrinsics, parse_actions
from runtime.world import (
    BIOMES,
    EVAL_SEED_BASE,
    TIMES_OF_DAY,
    TRAIN_SEED_LIMIT,
    ClipStream,
    Scene,
    eval_seed,
    generate_clip,
    key_trajectory,
    random_trajectory,
    render,
    train_seed,
)
from runtime.world.scene import CLEAR_RADIUS
from runtime.world.trajectories import SEGMENT_KEYS, TURN_SEGMENT_KEYS

H, W = 36, 64


def _scene_arrays_equal(a: Scene, b: Scene) -> bool:
    aa, bb = a.arrays(), b.arrays()
    return aa.keys() == bb.keys() and all(np.array_equal(aa[k], bb[k]) for k in aa)


def test_scene_is_deterministic_from_seed():
    a, b = Scene.random(1234), Scene.random(1234)
    assert _scene_arrays_equal(a, b)
    assert (a.caption, a.biome, a.time_of_day, a.sky, a.ground) == (b.caption, b.biome, b.time_of_day, b.sky, b.ground)
    K = default_intrinsics((H, W), 67.0)
    pose = np.eye(4)[None]
    assert torch.equal(render(a, pose, K, H, W), render(b, pose, K, H, W))


def test_different_seeds_differ():
    a, b = Scene.random(1), Scene.random(2)
    assert not _scene_arrays_equal(a, b)
    K = default_intrinsics((H, W), 67.0)
    assert not torch.equal(render(a, np.eye(4)[None], K, H, W), render(b, np.eye(4)[None], K, H, W))


@pytest.mark.parametrize("biome", BIOMES)
def test_every_biome_builds_with_objects_and_caption(biome):
    for tod in TIMES_OF_DAY:
        s = Scene.random(5, biome=biome, time_of_day=tod)
        assert s.biome == biome and s.time_of_day == tod
        assert 30 <= s.num_objects
        assert s.caption and len(s.caption.split()) <= 10
    # Forcing the biome leaves the rest of a seed's stream aligned (the time of day is the seed's own).
    assert Scene.random(5, biome=biome).time_of_day == Scene.random(5).time_of_day


def test_render_shape_dtype_and_depth():
    scene = Scene.random(3)
    poses = actions_to_c2w("w-3")
    rgb, depth = render(scene, poses, default_intrinsics((H, W), 67.0), H, W, return_depth=True)
    assert rgb.dtype == torch.uint8 and rgb.shape == (4, H, W, 3)
    assert depth.dtype == torch.float32 and depth.shape == (4, H, W)
    assert rgb.float().std() > 5.0
    ss = render(scene, poses[:1], default_intrinsics((H, W), 67.0), H, W, supersample=2)
    assert ss.shape == (1, H, W, 3)
    assert (ss.float() - rgb[:1].float()).abs().mean() < 12.0


def test_ground_is_at_positive_y_with_pinhole_depth():
    """Empty world: pixel row v below the principal point sees the plane y = g at z = fy * g / (v - cy)."""
    scene = Scene()
    scene.ground.y = 1.6
    K = default_intrinsics((H, W), 67.0)
    _, depth = render(scene, np.eye(4)[None], K, H, W, return_depth=True)
    fy, cy = K[1], K[3]
    for v in range(H):
        if v - cy > 0.5:
            expect = fy * 1.6 / (v - cy)
            assert torch.allclose(depth[0, v], torch.full((W,), expect), rtol=1e-4)
        elif v - cy < 0:
            assert torch.isinf(depth[0, v]).all()     # above the horizon: sky


def _horizontal_shift(a: torch.Tensor, b: torch.Tensor, max_shift: int = 20) -> int:
    """s minimising |b(u) - a(u - s)| over the overlap: content moved right by s pixels from a to b."""
    a, b = a.float().mean(-1), b.float().mean(-1)
    best, best_s = float("inf"), 0
    for s in range(-max_shift, max_shift + 1):
        if s >= 0:
            err = (b[:, s:] - a[:, : a.shape[1] - s]).abs().mean()
        else:
            err = (b[:, :s] - a[:, -s:]).abs().mean()
        if err < best:
            best, best_s = float(err), s
    return best_s


def test_yaw_left_moves_content_right():
    scene = Scene.random(11, biome="city", time_of_day="day")
    Hs, Ws = 48, 128
    K = default_intrinsics((Hs, Ws), 67.0)
    poses = actions_to_c2w("a-10")                       # 10 frames of yaw left, 0.6 deg each (snaps on press)
    yaw = math.degrees(math.atan2(poses[-1][0, 2], poses[-1][2, 2]))
    assert yaw < -5.0                                    # turned toward -X (left)
    rgb = render(scene, poses[[0, -1]], K, Hs, Ws, shadows=False)
    shift = _horizontal_shift(rgb[0], rgb[1])
    expect = K[0] * math.tan(math.radians(-yaw))
    assert shift > 0 and abs(shift - expect) <= 2.5, (shift, expect)
    # And yaw right moves it left.
    right = render(scene, actions_to_c2w("d-10")[[0, -1]], K, Hs, Ws, shadows=False)
    assert _horizontal_shift(right[0], right[1]) < 0


def test_moving_forward_makes_objects_grow():
    scene = Scene()
    g = scene.ground.y
    scene.add_box((-0.5, g - 3.0, 6.0), (0.5, g, 7.0), (0.8, 0.2, 0.2))   # 3 units tall: crosses the horizon
    K = default_intrinsics((H, W), 67.0)
    poses = actions_to_c2w("w-80")                       # 80 frames x 0.025 = 2 units forward
    assert poses[-1][2, 3] == pytest.approx(2.0, abs=1e-3)
    rgb, depth = render(scene, poses[[0, -1]], K, H, W, return_depth=True, shadows=False)
    above = torch.arange(H) < K[3]                       # above the horizon only the box is at finite depth
    n0, n1 = (int(torch.isfinite(depth[i][above]).sum()) for i in (0, 1))
    assert n1 > 1.8 * n0 > 0                             # 1.5x closer: ~2.25x the area
    c = (int(K[3]) - 2, W // 2)
    assert float(depth[0][c] - depth[1][c]) == pytest.approx(2.0, abs=0.01)   # its front face is 2 units closer
    # The ground texture grows too: the walk moves ground detail down and outward (frames differ).
    assert (rgb[0].float() - rgb[1].float()).abs().mean() > 2.0


def test_start_position_is_clear():
    for seed in range(40):
        scene = Scene.random(seed)
        # Footprints of all primitives, whatever their height, stay CLEAR_RADIUS away from the origin.
        clear = scene.clearance(np.zeros((1, 3)), height_margin=1e9)[0]
        assert clear >= CLEAR_RADIUS - 1e-6, (seed, scene.biome, clear)


def test_trajectories_stay_above_ground_clear_and_inside():
    for seed in range(12):
        scene = Scene.random(seed)
        for n in (25, 161):
            traj = random_trajectory(scene, seed * 31 + n, n)
            assert traj.c2w.shape == (n, 4, 4) and traj.c2w.dtype == np.float32
            np.testing.assert_array_equal(traj.c2w[0], np.eye(4, dtype=np.float32))
            assert (traj.c2w[:, 1, 3] < scene.ground.y - 0.5).all()        # above the ground (+Y is down)
            assert scene.clearance(traj.c2w[:, :3, 3]).min() >= 0.45
            assert np.hypot(traj.c2w[:, 0, 3], traj.c2w[:, 2, 3]).max() <= scene.region_radius
            if traj.kind == "keys":
                np.testing.assert_array_equal(actions_to_c2w(traj.actions).astype(np.float32), traj.c2w)
            # Orthonormal rotations, no roll (the camera's X axis stays horizontal).
            R = traj.c2w[:, :3, :3].astype(np.float64)
            np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
            np.testing.assert_allclose(R[:, 1, 0], 0.0, atol=1e-5)
    kinds = {random_trajectory(Scene.random(0), s, 9).kind for s in range(20)}
    assert kinds == {"keys", "smooth"}


def test_clip_is_reproducible_and_seeds_are_disjoint():
    a = generate_clip(77, 9, 32, 48)
    b = generate_clip(77, 9, 32, 48)
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["c2w"], b["c2w"])
    assert (a["caption"], a["actions"]) == (b["caption"], b["actions"])
    assert a["frames"].shape == (9, 32, 48, 3) and a["c2w"].shape == (9, 4, 4) and a["intrinsics"].shape == (4,)
    fx, fy, cx, cy = a["intrinsics"].tolist()
    hfov = math.degrees(2 * math.atan(48 / 2 / fx))
    assert 65.0 <= hfov <= 70.0 and fx == fy and (cx, cy) == (24.0, 16.0)
    c = generate_clip(78, 9, 32, 48)
    assert not torch.equal(a["frames"], c["frames"])
    assert all(0 <= train_seed(i, s) < TRAIN_SEED_LIMIT for i in range(100) for s in range(3))
    assert eval_seed(0) == EVAL_SEED_BASE > TRAIN_SEED_LIMIT


def test_clip_stream_batches_and_resumes():
    stream = ClipStream(2, 9, 16, 32, "cpu", seed=3, shadows=False)
    batch = next(stream)
    assert batch["frames"].shape == (2, 9, 16, 32, 3) and batch["frames"].dtype == torch.uint8
    assert batch["c2w"].shape == (2, 9, 4, 4) and batch["intrinsics"].shape == (2, 4)
    assert len(batch["captions"]) == len(batch["actions"]) == len(batch["seeds"]) == 2
    state = stream.state_dict()
    nxt = next(stream)
    again = ClipStream(2, 9, 16, 32, "cpu", seed=3, shadows=False)
    again.load_state_dict(state)
    assert again.seed_at(state["index"]) == stream.seed_at(state["index"])
    assert next(again)["seeds"] == nxt["seeds"]
    ev = ClipStream(1, 1, 16, 32, "cpu", split="eval")
    assert next(ev)["seeds"] == [EVAL_SEED_BASE]


def _yaw_fraction(actions: str) -> float:
    """Fraction of frames that hold a yaw key (a or d)."""
    frames = parse_actions(actions)
    return sum(bool(keys & {"a", "d"}) for keys in frames) / len(frames)


def test_default_segment_table_is_unchanged():
    # Golden action strings recorded before `segment_keys` existed: evaluation clips must not move.
    assert key_trajectory(Scene.random(5), 5, 161).actions == "w-85,wd-36,i-26,wl-13"
    golden = {10: "a-10,l-26,d-27,j-18,l-15", 11: "k-40,wi-23,w-10,wj-23", 12: "none-20,s-46,wd-30"}
    for seed, actions in golden.items():
        scene = Scene.random(seed)
        default = key_trajectory(scene, seed, 97)
        explicit = key_trajectory(scene, seed, 97, segment_keys=None)
        same_table = key_trajectory(scene, seed, 97, segment_keys=SEGMENT_KEYS)
        assert default.actions == explicit.actions == same_table.actions == actions
        np.testing.assert_array_equal(default.c2w, explicit.c2w)
    golden = {0: ("keys", "j-44,w-11,d-9"), 1: ("smooth", ""), 2: ("keys", "w-64"), 3: ("keys", "w-38,wd-26")}
    for seed, (kind, actions) in golden.items():
        traj = random_trajectory(Scene.random(seed), seed, 65)
        assert (traj.kind, traj.actions) == (kind, actions)
        np.testing.assert_array_equal(traj.c2w, random_trajectory(Scene.random(seed), seed, 65, segment_keys=None).c2w)
    # The held-out clips exactly as `sana-wm eval` draws them (kind from the seed, or forced "keys").
    golden_eval = {0: ("keys", "w-32"), 1: ("keys", "wd-8,l-24"), 2: ("smooth", ""), 3: ("keys", "j-32")}
    for i, (kind, actions) in golden_eval.items():
        clip = generate_clip(eval_seed(i), 33, 16, 32, shadows=False)
        assert (clip["trajectory"], clip["actions"]) == (kind, actions)
    golden_keys = {0: "none-28,w-4", 1: "d-26,wd-6", 2: "as-29,wa-3"}
    for i, actions in golden_keys.items():
        a = generate_clip(eval_seed(i), 33, 16, 32, trajectory="keys", shadows=False)
        b = generate_clip(eval_seed(i), 33, 16, 32, trajectory="keys", shadows=False, segment_keys=None)
        assert a["actions"] == b["actions"] == actions
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["c2w"], b["c2w"])


def test_turn_table_turns_much_more():
    default, turn = [], []
    for seed in range(8):
        scene = Scene.random(seed)
        default.append(_yaw_fraction(key_trajectory(scene, seed, 161).actions))
        traj = key_trajectory(scene, seed, 161, segment_keys=TURN_SEGMENT_KEYS)
        turn.append(_yaw_fraction(traj.actions))
        # Still a valid key walk: the actions reproduce the poses, which stay clear of objects.
        np.testing.assert_array_equal(actions_to_c2w(traj.actions).astype(np.float32), traj.c2w)
        assert scene.clearance(traj.c2w[:, :3, 3]).min() >= 0.45
    mean_default, mean_turn = np.mean(default), np.mean(turn)
    assert mean_default < 0.5 and mean_turn > 0.65 and mean_turn > mean_default + 0.3, (default, turn)
    # The turn table passes through random_trajectory and generate_clip too.
    traj = random_trajectory(Scene.random(3), 3, 161, kind="keys", segment_keys=TURN_SEGMENT_KEYS)
    assert traj.actions == key_trajectory(Scene.random(3), 3, 161, segment_keys=TURN_SEGMENT_KEYS).actions
    clip = generate_clip(7, 33, 16, 32, trajectory="keys", shadows=False, segment_keys=TURN_SEGMENT_KEYS)
    assert clip["actions"] != generate_clip(7, 33, 16, 32, trajectory="keys", shadows=False)["actions"]


def test_segment_keys_rejects_a_bad_table():
    for table in ((), (("a", -1.0), ("d", 2.0)), (("a", 0.0),)):
        with pytest.raises(ValueError, match="segment_keys"):
            key_trajectory(Scene.random(0), 0, 9, segment_keys=table)


def test_clip_stream_turn_mix_is_per_seed_and_off_by_default():
    plain = next(ClipStream(3, 17, 16, 32, "cpu", seed=11, shadows=False))
    zero = next(ClipStream(3, 17, 16, 32, "cpu", seed=11, shadows=False, turn_mix=0.0))
    assert zero["actions"] == plain["actions"] == ["wd-16", "w-16", "d-13,wd-3"]   # golden, recorded before
    assert torch.equal(zero["frames"], plain["frames"])
    full = ClipStream(3, 17, 16, 32, "cpu", seed=11, shadows=False, turn_mix=1.0)
    batch = next(full)
    assert batch["seeds"] == plain["seeds"]
    for seed, actions in zip(batch["seeds"], batch["actions"]):
        ref = generate_clip(seed, 17, 16, 32, trajectory="keys", shadows=False, segment_keys=TURN_SEGMENT_KEYS)
        assert actions == ref["actions"]
    # The choice hangs on the clip seed alone: about P of the seeds, the same in every stream.
    half = ClipStream(1, 9, 16, 32, "cpu", turn_mix=0.5)
    picks = [half.is_turn_clip(train_seed(i)) for i in range(2000)]
    assert 0.45 < np.mean(picks) < 0.55
    assert picks == [ClipStream(1, 9, turn_mix=0.5).is_turn_clip(train_seed(i)) for i in range(2000)]
    assert not any(ClipStream(1, 9).is_turn_clip(train_seed(i)) for i in range(200))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="turn_mix"):
            ClipStream(1, 9, turn_mix=bad)
