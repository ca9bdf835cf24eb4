"""Tiny causal video autoencoder: shapes, causality, streaming == whole decode, snapshots, files, training."""
import json

import pytest
import torch

from runtime.decoder import DecoderStream, VideoAutoencoder
from runtime.tiny_vae import TinyVideoAutoencoder, groups_to_video, video_to_groups

H, W = 32, 48


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    model = TinyVideoAutoencoder().eval()
    with torch.no_grad():  # non-trivial statistics so normalisation is exercised
        model.latent_mean.uniform_(-0.2, 0.2)
        model.latent_std.uniform_(0.5, 1.5)
    return model


def test_interface_and_size(ae):
    assert isinstance(ae, VideoAutoencoder) and isinstance(ae.open_stream(), DecoderStream)
    assert ae.latent_channels == 32 and ae.stride == (8, 16, 16)
    from runtime.config import load_config

    cfg = load_config("tiny-world")                      # the DiT's view of the autoencoder
    assert (cfg.in_channels, tuple(cfg.vae_stride), cfg.vae) == (ae.latent_channels, ae.stride, "tiny-world")
    n = sum(p.numel() for p in ae.parameters())
    assert n * 2 < 4.0e6                 # < 4 MB of fp16 weights


def test_groups_round_trip():
    video = torch.randn(2, 3, 17, 16, 16)
    g = video_to_groups(video)
    assert g.shape == (2, 3, 24, 16, 16)
    assert torch.equal(groups_to_video(g), video)
    assert torch.equal(g[:, 0, :3], video[:, :, 0])            # group 0 = frame 0 repeated
    assert torch.equal(g[:, 0, 21:], video[:, :, 0])
    assert torch.equal(g[:, 1, 21:], video[:, :, 8])           # latent 1 = raw frames 1..8


def test_shapes_and_causal_encoder(ae):
    video = torch.rand(1, 3, 17, H, W) * 2 - 1
    lat = ae.encode_video(video)
    assert lat.shape == (1, 32, 3, H // 16, W // 16) and lat.dtype == torch.float32
    img = ae.encode_image(video[:, :, 0])
    assert img.shape == (1, 32, 1, H // 16, W // 16)
    torch.testing.assert_close(img[:, :, 0], lat[:, :, 0], rtol=1e-5, atol=1e-5)
    # Latent 1 depends on frames 1..8 (and 0), not on 9..16.
    v2 = video.clone()
    v2[:, :, 9:] = 0
    torch.testing.assert_close(ae.encode_video(v2)[:, :, :2], lat[:, :, :2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        ae.encode_video(torch.zeros(1, 3, 10, H, W))
    with pytest.raises(ValueError):
        ae.encode_image(torch.zeros(1, 3, 30, W))


def test_decode_frame_counts_and_causality(ae):
    z = torch.randn(1, ae.latent_channels, 4, 2, 3)
    with torch.no_grad():
        full = ae.decode_latents(z)
    assert full.shape == (1, 3, 25, H, W)
    z2 = z.clone()
    z2[:, :, 2:] = torch.randn_like(z2[:, :, 2:])
    with torch.no_grad():
        other = ae.decode_latents(z2)
    torch.testing.assert_close(other[:, :, :9], full[:, :, :9], rtol=0, atol=1e-6)   # latents 0, 1 -> frames 0..8
    assert not torch.allclose(other[:, :, 9:], full[:, :, 9:])
    s = ae.open_stream()
    assert s.decode(z[:, :, :1]).shape == (1, H, W, 3)
    out = s.decode(z[:, :, 1:3])
    assert out.shape == (16, H, W, 3) and out.dtype == torch.uint8 and out.device.type == "cpu"
    assert ae.num_frames(4) == 25


def test_streaming_chunks_equal_whole_decode(ae):
    z = torch.randn(1, ae.latent_channels, 10, 2, 3)
    whole = ae.decode_video(z)
    assert whole.shape == (1 + 8 * 9, H, W, 3)
    s = ae.open_stream()
    parts = [s.decode_float(z[:, :, a:b]) for a, b in ((0, 4), (4, 7), (7, 10))]
    with torch.no_grad():
        ref = ae.decode_latents(z)
    torch.testing.assert_close(torch.cat(parts, 2), ref, rtol=1e-5, atol=1e-5)
    s = ae.open_stream()
    chunks = torch.cat([s.decode(z[:, :, a:b]) for a, b in ((0, 4), (4, 7), (7, 10))])
    assert (chunks.int() - whole.int()).abs().max() <= 1      # uint8 rounding of ~1e-6 float differences
    assert s.cache_bytes() > 0
    s.close()
    with pytest.raises(RuntimeError):
        s.decode(z[:, :, :1])


def test_snapshot_restore_reproduces(ae):
    z = torch.randn(1, ae.latent_channels, 7, 2, 3)
    s = ae.open_stream()
    s.decode(z[:, :, :4])
    snap = s.snapshot()
    a = s.decode(z[:, :, 4:7])
    s.decode(torch.randn(1, ae.latent_channels, 3, 2, 3))             # move on with something else
    s.restore(snap)
    b = s.decode(z[:, :, 4:7])
    assert torch.equal(a, b)
    s.restore(snap)                                    # a snapshot can be restored again
    assert torch.equal(s.decode(z[:, :, 4:7]), a)
    fresh = ae.open_stream()
    with pytest.raises(ValueError):
        TinyVideoAutoencoder().open_stream().restore(snap)
    fresh.restore(ae.open_stream().snapshot())         # restoring a fresh snapshot = a fresh stream
    assert fresh.decode(z[:, :, :1]).shape[0] == 1


def test_encode_decode_round_trip_runs(ae):
    video = torch.rand(1, 3, 9, H, W) * 2 - 1
    lat = ae.encode_video(video)
    frames = ae.decode_video(lat)
    assert frames.shape == (9, H, W, 3) and frames.dtype == torch.uint8


def test_save_load_round_trip(ae, tmp_path):
    z = torch.randn(1, ae.latent_channels, 4, 2, 3)
    img = torch.rand(1, 3, H, W) * 2 - 1
    path = tmp_path / "vae32.safetensors"
    ae.save(path, dtype=torch.float32)
    loaded = TinyVideoAutoencoder.from_file(path)
    assert torch.equal(loaded.decode_video(z), ae.decode_video(z))
    assert torch.equal(loaded.encode_image(img), ae.encode_image(img))
    # fp16 storage: identical to the model with its weights rounded to fp16.
    path16 = tmp_path / "vae16.safetensors"
    ae.save(path16)
    assert path16.stat().st_size < 4_000_000
    rounded = TinyVideoAutoencoder().eval()
    rounded.load_state_dict({k: (v if k.startswith("latent_") else v.half().float()) for k, v in ae.state_dict().items()})
    loaded16 = TinyVideoAutoencoder.from_file(path16)
    assert torch.equal(loaded16.decode_video(z), rounded.decode_video(z))
    assert torch.equal(loaded16.latent_std, ae.latent_std)
    # Loading reports wrong files by name.
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not a tiny-vae file"):
        TinyVideoAutoencoder.from_file(bad)


def test_registry_factory(tmp_path, ae):
    from runtime.decoder import load_autoencoder
    from runtime.tiny_vae import load_tiny_world

    assert "tiny-world" in __import__("runtime.decoder", fromlist=["x"]).registered_autoencoders()
    path = tmp_path / "vae.safetensors"
    ae.save(path)
    m = load_tiny_world(device="cpu", dtype=torch.float32, path=path)
    assert isinstance(m, TinyVideoAutoencoder)
    from runtime.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError):
        load_tiny_world(path=tmp_path / "nothing.safetensors")
    del load_autoencoder


def test_training_smoke_runs_and_resumes(tmp_path):
    from runtime.train.train_vae import main

    common = ["--out", str(tmp_path), "--device", "cpu", "--height", "32", "--width", "32", "--frames", "9",
              "--batch", "2", "--buffer", "2", "--prefill", "1", "--refresh", "1", "--stats-batches", "1",
              "--eval-clips", "1", "--log-every", "1", "--no-shadows", "--finish-reserve-s", "0"]
    first = main(common + ["--max-steps", "2"])
    assert first["step"] == 2
    state = json.loads((tmp_path / "vae_train_state" / "state.json").read_text())
    assert state["step"] == 2 and state["stream"]["index"] > 0
    second = main(common + ["--max-steps", "3"])
    assert second["step"] == 3
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if not r.get("final")]
    assert steps == [1, 2, 3]
    assert all(r["psnr"] > 0 for r in records if not r.get("final"))
    model = TinyVideoAutoencoder.from_file(tmp_path / "vae.safetensors")
    assert (model.latent_std > 0).all()
    assert (tmp_path / "vae.safetensors").stat().st_size < 4_000_000
