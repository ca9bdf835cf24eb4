"""bench.fastest_launch: the launch the GPU round scripts hand to the next run, checked on the recorded sweeps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fastest_launch import fastest, main

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _rows(name: str) -> list[dict]:
    return json.loads((RESULTS / name).read_text())["rows"]


def test_recorded_sweeps_give_the_launches_their_rounds_ran():
    # what the round logs say the scripts picked (rounds 29, 36, 38)
    assert fastest(_rows("2026-12-02_h200_round29_kernels_attention.json"), "attention_int8_sweep") == \
        "64,64,4,3,1,1"
    assert fastest(_rows("2026-12-02_h200_round36_kernels_depthwise_strips.json"), "depthwise_glu_sweep") == \
        "rows_w8,22,64,4,1"
    assert fastest(_rows("2026-12-02_h200_round38_kernels_ln_modulate.json"), "ln_modulate_sweep",
                   both_calls=True) == "1,4"


def test_both_calls_sums_over_the_call_prefixes_and_skips_rows_over_budget(tmp_path, capsys):
    rows = [{"op": "s", "shape": "attn-1-4", "ms": 0.020, "ok": True},
            {"op": "s", "shape": "ffn-1-4", "ms": 0.030, "ok": True},      # 1-4: 0.050 over both
            {"op": "s", "shape": "attn-2-8", "ms": 0.024, "ok": True},
            {"op": "s", "shape": "ffn-2-8", "ms": 0.024, "ok": True},      # 2-8: 0.048, the fastest
            {"op": "s", "shape": "attn-4-8", "ms": 0.001, "ok": False},    # over its error budget
            {"op": "other", "shape": "attn-8-16", "ms": 0.0001, "ok": True}]
    assert fastest(rows, "s", both_calls=True) == "2,8"
    assert fastest(rows, "s") == "attn,1,4"
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"rows": rows}))
    assert main([str(path), "s", "--both-calls"]) == 0
    assert capsys.readouterr().out.strip() == "2,8"
    with pytest.raises(SystemExit, match="no missing row"):
        fastest(rows, "missing")
