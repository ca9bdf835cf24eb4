"""The sana-wm command line: info, quantize, and exit code 2 with one line for bad input."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.cli import main
from runtime.model import build_model
from tests.model_inputs import random_inputs
from tests.tolerances import rel_err


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and "sana-wm 0.1.0" in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "render" in r.stdout and "info" in r.stdout


def test_info_full_config(capsys):
    assert main(["info", "sana-wm-streaming"]) == 0
    out = capsys.readouterr().out
    assert "softmax blocks [3, 7, 11, 15, 19]" in out
    assert "2662.49 M" in out or "2661.80 M" in out or "total" in out


def test_info_checkpoint(tmp_path, capsys):
    path = save_checkpoint(build_model("tiny-world", init="random"), tmp_path / "t.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "blocks: 4 (3 GDN, 1 softmax: [3])" in out


@pytest.mark.parametrize("fmt,scope,floor_db", [("fp8", "official", 20.0), ("nvfp4", "official", 10.0),
                                                ("nvfp4", "compact", 10.0)])
def test_quantize_command_writes_a_loadable_checkpoint(tmp_path, capsys, fmt, scope, floor_db):
    # Velocity SQNR of the whole random-weight model (error compounds over the blocks); frame PSNR of the
    # trained embedded model is measured in the model card.

    ref = build_model("tiny-world", init="random", seed=4)
    src = save_checkpoint(ref, tmp_path / "bf.safetensors")
    dst = tmp_path / f"{fmt}.safetensors"
    assert main(["quantize", "--in", str(src), "--out", str(dst), "--format", fmt, "--scope", scope]) == 0
    assert dst.stat().st_size < src.stat().st_size
    model = build_model("tiny-world", init="random", seed=99)
    load_checkpoint(model, dst)
    # The compact scope also packs the FFN's temporal conv; the official one keeps it in high precision.
    assert hasattr(model.blocks[0].mlp.t_conv, "weight_scale") == (scope == "compact")
    x, ts, _, cam, plk = random_inputs(ref, 4)
    with torch.no_grad():
        want = ref(x, ts, ref.prepare_text(*_text(ref)), cam, plk)
        got = model(x, ts, model.prepare_text(*_text(model)), cam, plk)
    sqnr = -20 * torch.log10(torch.tensor(rel_err(got, want)))
    assert sqnr > floor_db


def _text(model):
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=g), torch.ones(1, cfg.text_max_length)


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    out = tmp_path / "walk.mp4"
    r = run_cli("render", "--actions", "w-10,x-10", "--out", str(out))
    assert r.returncode == 2 and "segment 2 'x-10'" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("render", "--actions", "w-10", "--image", str(tmp_path / "nope.png"), "--out", str(out))
    assert r.returncode == 2 and "no such file" in r.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = run_cli("render", "--actions", "w-10", "--image", str(bad), "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("sana-wm: error:")
    r = run_cli("render", "--camera", str(tmp_path / "none.npy"), "--out", str(out))
    assert r.returncode == 2
    r = run_cli("info", "no-such-config")
    assert r.returncode == 2 and "no config preset" in r.stderr
    # fast-path options where they cannot apply: an exported engine's precision is fixed; a remote model's is the
    # server's
    r = run_cli("render", "--actions", "w-10", "--backend", "onnxruntime", "--engines", str(tmp_path),
                "--precision", "fp8", "--out", str(out))
    assert r.returncode == 2 and "torch-backend options" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("explore", "--connect", "127.0.0.1:7717", "--compile", "--headless", "--script", "w-8")
    assert r.returncode == 2 and "sana-wm serve" in r.stderr
    r = run_cli("render", "--actions", "w-10", "--frames", "0", "--out", str(out))
    assert r.returncode == 2 and "must be >= 1, got 0" in r.stderr           # 0 is not "all of the path"
    r = run_cli("explore", "--headless", "--script", "w-8", "--window", "0x0")
    assert r.returncode == 2 and "--window: each side" in r.stderr
    # a device this machine does not have: one line, before anything loads or a window opens
    r = run_cli("render", "--actions", "w-10", "--device", "gpu", "--out", str(out))
    assert r.returncode == 2 and "unknown device 'gpu'" in r.stderr and r.stderr.count("\n") == 1
    if not torch.cuda.is_available():
        for cmd in (("render", "--actions", "w-10", "--out", str(out)), ("explore", "--headless", "--script", "w-8"),
                    ("serve", "--port", "0")):
            r = run_cli(*cmd, "--device", "cuda")
            assert r.returncode == 2 and "use --device cpu" in r.stderr and r.stderr.count("\n") == 1, cmd
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_fast_path_options_and_generator(caplog):
    """FastPath checks its fields; `load_generator(fast=)` quantizes to FP8 with calibrated static scales (none
    left at the uncalibrated 1.0 but the layers no step calls), stacks and compiles the blocks when asked, and its sessions take the CUDA-graph
    flag; a quantized generator is not quantized again. The server and the explorer's local client pass it on."""
    from explorer.client import LocalClient
    from quant.calibrate import fp8_per_tensor_layers
    from runtime.pipeline import FastPath, GeneratorError, accelerate, load_generator, open_session
    from runtime.server import WorldServer

    with pytest.raises(ValueError, match="precision"):
        FastPath(precision="int8")
    with pytest.raises(ValueError, match="scope"):
        FastPath(scope="all")
    fast = FastPath(precision="fp8", compile=True, calib_chunks=1)
    gen = load_generator("tiny-world", fast=fast)
    assert gen.fast is fast and fast.to_dict()["scope"] == "official"
    unused = {f"blocks.{i}.attn.{g}" for i in gen.config.softmax_blocks for g in ("beta_proj", "gate_proj")}
    layers = fp8_per_tensor_layers(gen.model)            # (softmax blocks carry GDN gates they never call)
    assert layers and all((float(m.input_scale) == 1.0) == (n in unused) for n, m in layers.items())
    for blk in gen.model.blocks:                     # compile_blocks ran (the compile itself happens on first use)
        assert blk.attn._input_stack is not None and "forward" in vars(blk)
    assert "fp8 on the CPU is an fp32 emulation" in caplog.text
    with pytest.raises(GeneratorError, match="already quantized"):
        accelerate(gen, FastPath(precision="nvfp4"))
    gen = load_generator("tiny-world", fast=FastPath(cuda_graphs=True))
    assert all("forward" not in vars(blk) for blk in gen.model.blocks)
    session = open_session(gen, np.zeros((144, 256, 3), np.uint8))
    assert session.cuda_graphs is False                     # requested, but this is the CPU
    server = WorldServer("tiny-world", fast=FastPath(precision="nvfp4"))
    assert server.gen.fast.precision == "nvfp4"
    from runtime.server import ServerConfig

    with pytest.raises(ValueError, match="model_slots = 1"):
        WorldServer("tiny-world", ServerConfig(model_slots=2), fast=FastPath(cuda_graphs=True))
    client = LocalClient("tiny-world", fast=FastPath(precision="nvfp4"))
    client.open_session(seed=1)
    assert client._gen.fast.precision == "nvfp4"
    client.close()
