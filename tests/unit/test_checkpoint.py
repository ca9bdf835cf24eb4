"""Official checkpoint loading on real files: every wrapper, and a clear error for each kind of bad file."""
import pytest
import torch
from safetensors.torch import save_file

from runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from runtime.model import build_model
from tests.model_inputs import random_inputs
from tests.tolerances import rel_err


@pytest.fixture(scope="module")
def source():
    return build_model("tiny-world", init="random", seed=7)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _out(model):
    x, ts, text, cam, plk = random_inputs(model, 4, seed=3)
    with torch.no_grad():
        return model(x, ts, text, cam, plk)


def _write(tmp_path, variant, state):
    with_pos = {**state, "pos_embed": torch.zeros(1, 3, 8)}   # the Sana base buffer, dropped at load
    if variant == "safetensors":
        path = tmp_path / "dit.safetensors"
        save_file(with_pos, str(path))
    elif variant == "safetensors-model-prefix":
        path = tmp_path / "dit_prefixed.safetensors"
        save_file({f"model.{k}": v for k, v in with_pos.items()}, str(path))
    elif variant == "pt-generator":
        path = tmp_path / "model.pt"
        torch.save({"generator": {f"model.{k}": v for k, v in with_pos.items()}, "step": 3}, path)
    elif variant == "pt-state-dict":
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": with_pos, "epoch": 1}, path)
    else:
        path = tmp_path / "plain.pt"
        torch.save(with_pos, path)
    return path


@pytest.mark.parametrize("variant", ["safetensors", "safetensors-model-prefix", "pt-generator", "pt-state-dict",
                                     "pt-plain"])
def test_each_wrapper_loads_and_reproduces_outputs(tmp_path, source, variant):
    path = _write(tmp_path, variant, _state(source))
    target = build_model("tiny-world", init="random", seed=99)
    assert rel_err(_out(target), _out(source)) > 1e-3
    report = load_checkpoint(target, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["loaded"] == len(source.state_dict())
    assert torch.equal(_out(target), _out(source))


def test_save_checkpoint_round_trip(tmp_path, source):
    path = save_checkpoint(source, tmp_path / "out" / "tiny.safetensors", {"config": "tiny-world"})
    target = build_model("tiny-world", init="random", seed=5)
    load_checkpoint(target, path)
    assert torch.equal(_out(target), _out(source))


def _expect_error(tmp_path, path, *fragments):
    target = build_model("tiny-world", init="random", seed=5)
    before = _state(target)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    message = str(info.value)
    for frag in fragments:
        assert frag in message, message
    # Nothing from deep inside torch: one line, our own error, no chained traceback.
    assert "\n" not in message and info.value.__cause__ is None
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_key(tmp_path, source):
    state = _state(source)
    del state["blocks.1.attn.conv_k.weight"]
    path = tmp_path / "missing.safetensors"
    save_file(state, str(path))
    _expect_error(tmp_path, path, "missing 1 keys", "blocks.1.attn.conv_k.weight")


def test_unexpected_key(tmp_path, source):
    state = _state(source)
    state["blocks.1.attn.extra_thing"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    _expect_error(tmp_path, path, "unexpected 1 keys", "blocks.1.attn.extra_thing")


def test_wrong_shape(tmp_path, source):
    state = _state(source)
    state["final_layer.linear.weight"] = torch.zeros(3, 3)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    _expect_error(tmp_path, path, "wrong shape", "final_layer.linear.weight", "[3, 3]")


def test_truncated_safetensors(tmp_path, source):
    path = tmp_path / "trunc.safetensors"
    save_file(_state(source), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path, path, "truncated")


def test_truncated_pt(tmp_path, source):
    path = tmp_path / "trunc.pt"
    torch.save(_state(source), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path, path, "not a readable PyTorch checkpoint")


def test_non_checkpoint_files(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, I am not a checkpoint at all" * 10)
    _expect_error(tmp_path, text, "not a safetensors file")
    pt = tmp_path / "list.pt"
    torch.save([1, 2, 3], pt)
    _expect_error(tmp_path, pt, "does not hold a state dict")
    _expect_error(tmp_path, tmp_path / "absent.safetensors", "no such checkpoint file")
    odd = tmp_path / "weights.onnx"
    odd.write_bytes(b"\x00" * 64)
    _expect_error(tmp_path, odd, "unknown checkpoint format")
