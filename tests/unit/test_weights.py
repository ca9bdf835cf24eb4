"""Weight resolution: local paths, the offline cache, opt-in downloads (faked, never the network), errors."""
import pickle

import pytest

from runtime import weights
from runtime.config import load_config
from runtime.weights import MissingWeightsError, component_status, resolve_weights


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv(weights.ENV_HOME, str(root))
    monkeypatch.delenv(weights.ENV_ALLOW_DOWNLOAD, raising=False)
    return root


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace huggingface_hub.snapshot_download with a stub writing files locally; records the calls."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []
    repo_files = {"vae/config.json": "{}", "vae/diffusion_pytorch_model.safetensors": "w",
                  "dit/model.pt": "m", "config.yaml": "c"}

    def snapshot_download(repo_id, *, local_dir, allow_patterns=None, **kwargs):
        import fnmatch
        from pathlib import Path

        calls.append((repo_id, allow_patterns))
        for name, text in repo_files.items():
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / name).write_text(text)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_local_paths_are_returned_offline(tmp_path, home):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    assert resolve_weights(str(f), what="generator") == f.resolve()
    assert resolve_weights(tmp_path, what="generator") == tmp_path.resolve()


def test_missing_local_path_names_component(tmp_path, home):
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights(str(tmp_path / "nope"), what="text encoder (gemma-2-2b-it)")
    msg = str(info.value)
    assert "text encoder (gemma-2-2b-it)" in msg and "nope" in msg and "\n" not in msg


def test_hub_ref_found_in_cache(home, fake_hub):
    target = home / "Org" / "Repo" / "vae"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert resolve_weights("hf://Org/Repo/vae", what="video autoencoder") == target
    assert fake_hub == []


def test_hub_ref_missing_offline_has_one_line_message(home, fake_hub):
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights("hf://Efficient-Large-Model/SANA-WM_streaming/ltx2_causal_vae",
                        what="video autoencoder (ltx2-causal)")
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    assert "video autoencoder (ltx2-causal)" in msg
    assert "hf://Efficient-Large-Model/SANA-WM_streaming/ltx2_causal_vae" in msg
    assert str(home / "Efficient-Large-Model" / "SANA-WM_streaming" / "ltx2_causal_vae") in msg
    assert weights.ENV_ALLOW_DOWNLOAD in msg
    assert err.where.endswith("ltx2_causal_vae") and fake_hub == []
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == msg


def test_download_by_argument_and_by_environment(home, fake_hub, monkeypatch):
    path = resolve_weights("hf://Org/Repo/vae", what="vae", allow_download=True)
    assert path == home / "Org" / "Repo" / "vae" and (path / "config.json").is_file()
    assert fake_hub == [("Org/Repo", ["vae", "vae/*"])]
    monkeypatch.setenv(weights.ENV_ALLOW_DOWNLOAD, "1")
    path = resolve_weights("hf://Org/Repo/dit/model.pt", what="generator")
    assert path.is_file() and path.read_text() == "m"
    assert not list(home.rglob("*.sana-wm-downloading"))


def test_explicit_false_beats_environment(home, fake_hub, monkeypatch):
    monkeypatch.setenv(weights.ENV_ALLOW_DOWNLOAD, "1")
    with pytest.raises(MissingWeightsError):
        resolve_weights("hf://Org/Repo/vae", what="vae", allow_download=False)
    assert fake_hub == []


def test_interrupted_download_is_not_present(home, fake_hub):
    target = home / "Org" / "Repo" / "vae"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (home / "Org" / "Repo" / "vae.sana-wm-downloading").touch()
    with pytest.raises(MissingWeightsError):
        resolve_weights("hf://Org/Repo/vae", what="vae")
    assert resolve_weights("hf://Org/Repo/vae", what="vae", allow_download=True) == target


def test_missing_path_in_repo_and_failed_download(home, fake_hub, monkeypatch):
    with pytest.raises(MissingWeightsError, match="has no 'nothing'"):
        resolve_weights("hf://Org/Repo/nothing", what="vae", allow_download=True)

    def boom(*args, **kwargs):
        raise ConnectionError("offline")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(MissingWeightsError, match="download failed: ConnectionError: offline"):
        resolve_weights("hf://Org/Other/vae", what="vae", allow_download=True)


@pytest.mark.parametrize("ref", ["hf://", "hf://org", "hf://org/../x"])
def test_bad_hub_refs(ref, home):
    with pytest.raises(ValueError):
        resolve_weights(ref, what="x")


def test_component_status(home):
    tiny = component_status(load_config("tiny-world"))
    assert [r.component for r in tiny] == ["text encoder", "video autoencoder"]
    assert all(r.present for r in tiny)
    full = component_status(load_config("sana-wm-streaming"))
    assert [r.component for r in full] == ["generator", "text encoder", "video autoencoder"]
    assert not any(r.present for r in full)
    assert full[2].ref == weights.OFFICIAL_WEIGHTS["ltx2-causal"]
    assert full[2].where == str(home / "Efficient-Large-Model" / "SANA-WM_streaming" / "ltx2_causal_vae")
    vae = home / "Efficient-Large-Model" / "SANA-WM_streaming" / "ltx2_causal_vae"
    vae.mkdir(parents=True)
    (vae / "config.json").write_text("{}")
    assert [r.present for r in component_status(load_config("sana-wm-streaming"))] == [False, False, True]
