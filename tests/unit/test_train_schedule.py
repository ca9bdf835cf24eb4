"""The world-model training schedule: warm-up, constant rate, cosine decay, the warm-up restart of
`--init-from` (a fresh optimizer on trained weights), and the turn-heavy clip mix of `--turn-mix`."""
import math
import types

import pytest
import torch

from runtime.train.train_world import LatentPool, lr_at, main


def _args(**kw):
    import argparse

    base = {"lr": 4e-4, "warmup": 200, "decay_start": 0, "decay_steps": 0, "lr_final": 0.05, "warmup_start": 0}
    return argparse.Namespace(**(base | kw))


def test_warmup_then_constant_without_decay():
    a = _args()
    assert lr_at(0, a) == pytest.approx(4e-4 / 200)
    assert lr_at(99, a) == pytest.approx(4e-4 * 100 / 200)
    assert lr_at(199, a) == lr_at(5000, a) == pytest.approx(4e-4)


def test_cosine_decay_from_start_to_final_fraction():
    a = _args(decay_start=1000, decay_steps=500)
    assert lr_at(999, a) == pytest.approx(4e-4)
    assert lr_at(1000, a) == pytest.approx(4e-4)
    assert lr_at(1250, a) == pytest.approx(4e-4 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert lr_at(1500, a) == lr_at(9000, a) == pytest.approx(4e-4 * 0.05)
    assert all(lr_at(s, a) >= lr_at(s + 1, a) for s in range(1000, 1600))


def test_init_from_restarts_the_warmup_at_the_loaded_step():
    a = _args(warmup_start=1998)
    assert lr_at(1998, a) == pytest.approx(4e-4 / 200)
    assert lr_at(2197, a) == pytest.approx(4e-4)


def test_init_from_a_missing_file_fails_clearly(tmp_path):
    from runtime.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        main(["--out", str(tmp_path), "--device", "cpu", "--init-from", str(tmp_path / "none.safetensors"),
              "--minutes", "0"])


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_turn_mix_outside_unit_interval_is_rejected(tmp_path, capsys, value):
    # Rejected while parsing, before any model or pool is built.
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--device", "cpu", "--turn-mix", value, "--minutes", "0"])
    assert exc.value.code == 2
    assert "--turn-mix must be in [0, 1]" in capsys.readouterr().err


class _ZeroVAE:
    """Stands in for the tiny autoencoder: latents of the right shape (8x time, 8x space) without weights."""

    def encode_video(self, video):
        B, _, F, H, W = video.shape
        return torch.zeros(B, 4, (F - 1) // 8 + 1, H // 8, W // 8)


@pytest.mark.parametrize("turn_mix", [0.0, 0.5, 1.0])
def test_latent_pool_renders_turn_clips_at_the_turn_mix(monkeypatch, turn_mix):
    from runtime.world import dataset
    from runtime.world.trajectories import TURN_SEGMENT_KEYS

    calls = []
    real = dataset.generate_clip

    def spy(seed, *args, **kwargs):
        calls.append((seed, kwargs))
        return real(seed, *args, **kwargs)

    monkeypatch.setattr(dataset, "generate_clip", spy)
    cfg = types.SimpleNamespace(height=16, width=32, latent_height=2, latent_width=4)
    pool = LatentPool(_ZeroVAE(), cfg, 6, 2, "cpu", seed=5, render_batch=2, turn_mix=turn_mix)
    pool.refresh(2)
    assert pool.latents.shape[0] == 6 and len(calls) == 8
    turned = [kw.get("segment_keys") is TURN_SEGMENT_KEYS for _, kw in calls]
    # Turn clips are exactly the seeds the stream picks, always key walks; the others are untouched.
    assert turned == [pool.stream.is_turn_clip(seed) for seed, _ in calls]
    assert all(kw["trajectory"] == "keys" for (_, kw), t in zip(calls, turned) if t)
    assert all(kw == {} for (_, kw), t in zip(calls, turned) if not t)
    if turn_mix == 0.0:
        assert not any(turned)
    elif turn_mix == 1.0:
        assert all(turned)
    else:
        assert 0 < sum(turned) < len(turned)
