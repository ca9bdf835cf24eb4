"""Evaluation metrics on rendered ground truth: they measure what they claim (and one short end-to-end run of
`evaluate` with the embedded model)."""
import math

import numpy as np

from runtime.camera import actions_to_c2w, default_intrinsics
from runtime.evaluate import horizontal_shift, moves, psnr, ssim, turning_segments, yaw_rates
from runtime.world.render import render
from runtime.world.scene import Scene


def test_psnr_and_ssim_bounds():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert psnr(a, a) > 90 and abs(ssim(a, a) - 1.0) < 1e-9
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert 20 < psnr(a, b) < 40 and ssim(a, b) < 0.99


def test_turns_are_found_and_image_motion_has_the_right_sign():
    c2w = actions_to_c2w("w-10,a-24,none-10,d-24")
    segs = turning_segments(c2w, math.radians(0.25), 8)
    assert [s[2] for s in segs] == [-1, 1]                    # a turns left (-yaw), d turns right
    assert yaw_rates(c2w)[15] < 0
    scene = Scene.random(1_000_000_007, biome="meadow", time_of_day="day")
    frames = render(scene, actions_to_c2w("a-24")[:25], default_intrinsics((72, 128)), 72, 128, "cpu").numpy()
    shift = sum(horizontal_shift(frames[k], frames[k + 1]) for k in range(24))
    assert shift > 3.0                                        # turning left slides the content right


def test_static_walks_are_told_from_moving_ones():
    # Standing still (or a hair of motion) is not a trajectory with motion; walking or turning is.
    assert not moves(actions_to_c2w("none-32"))
    jitter = np.tile(np.eye(4), (33, 1, 1))
    jitter[1::2, 0, 3] = 0.05                    # a 5 cm wobble in place
    assert not moves(jitter)
    assert moves(actions_to_c2w("w-32"))
    assert moves(actions_to_c2w("a-32"))
    assert moves(actions_to_c2w("i-32"))


def test_evaluate_scores_a_held_out_walk_and_checks_its_estimator_on_the_truth():
    """One short held-out walk through the whole evaluation (embedded model, CPU): the report has the baseline, the
    turning segments, and the estimator's own agreement on the rendered truth."""
    from runtime.evaluate import EvalConfig, evaluate
    from runtime.pipeline import load_generator

    report = evaluate(load_generator("tiny-world"), EvalConfig(clips=1, seconds=2.0), progress=False)
    s = report["summary"]
    assert s["psnr_first_2s"] > 10 and s["baseline_psnr_first_2s"] > 10
    assert report["turns"], "the first held-out walk turns in its first 2 s"
    for turn in report["turns"]:
        assert turn["truth_ok"] and abs(turn["truth_shift_px"]) > 5     # the estimator reads the truth right
    assert s["yaw_sign_agreement_of_truth"] == 1.0
    assert math.isfinite(s["median_shift_ratio_to_truth"])
