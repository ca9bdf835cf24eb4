"""The world-model training schedule: warm-up, constant rate, cosine decay, and the warm-up restart of
`--init-from` (a fresh optimizer on trained weights)."""
import math

import pytest

from runtime.train.train_world import lr_at, main


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
