"""`sana-wm bench` off the GPU: the tiny model on the CPU (a functional run, not a speed claim), the quantization
scope in the record, and one clear line where CUDA is asked for but absent."""
import json

import pytest
import torch

from runtime.cli import main


def test_bench_cpu_tiny_world_records_precision_and_scope(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--device", "cpu", "--model", "tiny-world", "--precision", "fp8", "--scope", "compact",
                 "--act-scales", "dynamic", "--chunks", "2", "--warmup", "1", "--no-decode", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "tiny-world / fp8 (compact scope)" in table
    r = json.loads(out.read_text())
    assert r["precision"] == "fp8" and r["quant_scope"] == "compact"
    assert r["fp8_activation_scales"] == "dynamic per token"
    assert r["chunks_timed"] == 2 and r["generator_ms_per_chunk_p50"] > 0
    assert r["with_decoder_ms_per_chunk_p50"] is None           # --no-decode
    assert r["frames_per_chunk"] == 24 and r["generator_x_realtime"] > 0


def test_bench_static_fp8_activation_scales(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # over the official+tconv scope: the FFN temporal convs' FP8 GEMMs get calibrated static scales too
    assert main(["bench", "--device", "cpu", "--model", "tiny-world", "--precision", "fp8", "--act-scales", "static",
                 "--scope", "official+tconv", "--calib-chunks", "1", "--chunks", "1", "--warmup", "1", "--no-decode",
                 "--json", str(out)]) == 0
    assert "activations static per tensor (max calibration, 1 chunks)" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["fp8_activation_scales"].startswith("static per tensor") and r["generator_ms_per_chunk_p50"] > 0
    assert r["quant_scope"] == "official+tconv"
    assert main(["bench", "--device", "cpu", "--model", "tiny-world", "--act-scales", "static"]) == 2
    assert "fp8 option" in capsys.readouterr().err


def test_bench_fp8_defaults_to_the_static_scales_the_product_runs(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--model", "tiny-world", "--precision", "fp8", "--calib-chunks", "1",
                 "--chunks", "1", "--warmup", "1", "--no-decode", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["fp8_activation_scales"] == "static per tensor (max calibration, 1 chunks)"
    assert r["quant_scope"] == "official"


def test_bench_bf16_has_no_scope(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--model", "tiny-world", "--chunks", "1", "--warmup", "1",
                 "--no-decode", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["quant_scope"] is None
    assert "stacked_input_projections" not in r and "depthwise_glu_launch" not in r    # no compile, no CUDA


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_without_cuda_says_so(capsys):
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU here" in err and "--device cpu" in err


def test_kernel_table_sums_kernels_per_chunk_and_skips_graph_annotations():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from runtime.bench import kernel_table

    def event(name, us, device=DeviceType.CUDA):
        return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("gemm", 300.0), event("gemm", 500.0), event("norm", 40.0), event("norm", 60.0),
              event("## Call CompiledFxGraph abc ##", 5000.0), event("aten::mm", 900.0, DeviceType.CPU)]
    lines = kernel_table(events, chunks=2).splitlines()
    assert lines[0] == "0.45 ms of kernels per chunk, 2 launches per chunk"
    assert lines[2].split() == ["0.400", "1.0", "400.0", "gemm"]
    assert lines[3].split() == ["0.050", "1.0", "50.0", "norm"]
    assert len(lines) == 4


def test_launch_sources_counts_memsets_by_the_ops_that_launch_them():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from runtime.bench import launch_sources

    def op(name, kernels=(), parent=None):
        return SimpleNamespace(name=name, device_type=DeviceType.CPU, cpu_parent=parent,
                               kernels=[SimpleNamespace(name=k) for k in kernels])

    block = op("block")
    attn = op("aten::sdpa", parent=block)
    zeros = op("aten::zero_", ["Memset (Device)"], parent=op("aten::zeros", parent=attn))
    events = [block, attn, zeros, zeros, op("aten::mm", ["gemm", "Memset (Device)"], parent=block),
              SimpleNamespace(name="Memset (Device)", device_type=DeviceType.CUDA, kernels=[]), op("aten::add", ["add"])]
    lines = launch_sources(events, chunks=2, kernel_prefix="Memset").splitlines()
    assert [line.split(None, 1) for line in lines] == [["1.0", "aten::zero_ < aten::zeros < aten::sdpa"],
                                                       ["0.5", "aten::mm < block"]]
    assert "no Memset" in launch_sources([block], chunks=1, kernel_prefix="Memset")


def test_records_name_the_commit_and_say_when_the_code_differs_from_it(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))   # no enclosing checkout is looked up

    from runtime.bench import git_commit

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert git_commit(tmp_path) == "unknown"          # not a git checkout
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    head = git("rev-parse", "--short=7", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}-dirty"
