"""LTX-2 autoencoder on a tiny random diffusers model: loading, first-image encode, streaming decode.

The streaming invariant: a causal stream fed N chunks equals diffusers' whole-video decode, and its caches
do not grow with N.
"""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKLLTX2Video
from PIL import Image

from runtime import weights
from runtime.decoder import (
    DecoderStream,
    VideoAutoencoder,
    load_autoencoder,
    register_autoencoder,
    registered_autoencoders,
)
from runtime.images import ImageLoadError, load_image
from runtime.ltx2_vae import LTX2Autoencoder, to_uint8_frames
from runtime.weights import IncompatibleWeightsError, MissingWeightsError
from tests.tolerances import BF16_REL, FP32_STREAM_REL, rel_err

C = 8
H, W = 64, 96          # a 2 x 3 latent grid at stride 32
TINY = {"latent_channels": C, "block_out_channels": (8, 16, 32, 32), "decoder_block_out_channels": (8, 16, 32),
        "layers_per_block": (1, 1, 1, 1, 1), "decoder_layers_per_block": (1, 1, 1, 1),
        "spatial_compression_ratio": 32, "temporal_compression_ratio": 8}


def tiny_vae(causal: bool, seed: int = 0) -> AutoencoderKLLTX2Video:
    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Video(**TINY, decoder_causal=causal)
    with torch.no_grad():  # non-trivial statistics so the normalisation is exercised
        vae.latents_mean.copy_(torch.randn(C) * 0.3)
        vae.latents_std.copy_(torch.rand(C) + 0.5)
    return vae


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ltx2_causal_vae")
    tiny_vae(True).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def causal_ae(causal_dir):
    return load_autoencoder(causal_dir)


@pytest.fixture(scope="module")
def bidir_ae(tmp_path_factory):
    d = tmp_path_factory.mktemp("ltx2_vae")
    tiny_vae(False, seed=1).save_pretrained(d)
    return load_autoencoder(d)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(weights.ENV_ALLOW_DOWNLOAD, raising=False)
    return tmp_path / "home"


def latents(T: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, C, T, H // 32, W // 32, generator=torch.Generator().manual_seed(seed))


def test_loaded_model_is_what_was_saved(causal_ae):
    assert isinstance(causal_ae, LTX2Autoencoder) and isinstance(causal_ae, VideoAutoencoder)
    assert causal_ae.causal and causal_ae.latent_channels == C and causal_ae.stride == (8, 32, 32)
    ref = tiny_vae(True)
    for k, v in ref.state_dict().items():
        assert torch.equal(causal_ae.vae.state_dict()[k], v), k


def test_encode_image_is_normalised_posterior_mode(causal_ae):
    image = torch.rand(1, 3, H, W) * 2 - 1
    z = causal_ae.encode_image(image)
    assert z.shape == (1, C, 1, H // 32, W // 32) and z.dtype == torch.float32
    with torch.no_grad():
        raw = causal_ae.vae.encode(image.unsqueeze(2)).latent_dist.mode()
    vae = causal_ae.vae
    want = (raw - vae.latents_mean.view(1, C, 1, 1, 1)) * vae.config.scaling_factor / vae.latents_std.view(1, C, 1, 1, 1)
    assert rel_err(z, want) < 1e-6
    assert rel_err(causal_ae.denormalize(z), raw) < 1e-6
    with pytest.raises(ValueError, match="multiple"):
        causal_ae.encode_image(torch.zeros(1, 3, 40, 96))


@pytest.mark.parametrize("chunks", [[1, 3, 3], [4, 3], [2, 1, 2, 1]])
def test_streaming_equals_whole_video_decode(causal_ae, chunks):
    z = latents(sum(chunks))
    whole = causal_ae.decode_reference(z)
    assert whole.shape[2] == 1 + 8 * (sum(chunks) - 1)
    stream = causal_ae.open_stream()
    parts, start = [], 0
    for n in chunks:
        parts.append(stream.decode_float(z[:, :, start:start + n]))
        start += n
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape
    assert rel_err(streamed, whole) < FP32_STREAM_REL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streaming_equals_whole_video_decode_bf16_cuda():
    ae = LTX2Autoencoder(tiny_vae(True), device="cuda", dtype=torch.bfloat16)
    z = latents(7, seed=4).cuda()
    whole = ae.decode_reference(z)
    stream = ae.open_stream()
    streamed = torch.cat([stream.decode_float(z[:, :, :1]), stream.decode_float(z[:, :, 1:4]),
                          stream.decode_float(z[:, :, 4:7])], dim=2)
    assert streamed.dtype == torch.bfloat16 and rel_err(streamed, whole) < BF16_REL


def test_uint8_frames_and_counts(causal_ae):
    z = latents(5, seed=3)
    whole = to_uint8_frames(causal_ae.decode_reference(z)).int()
    stream = causal_ae.open_stream()
    first = stream.decode(z[:, :, :1])
    assert first.shape == (1, H, W, 3) and first.dtype == torch.uint8 and first.device.type == "cpu"
    rest = [stream.decode(z[:, :, 1:4]), stream.decode(z[:, :, 4:5])]
    assert [r.shape[0] for r in rest] == [24, 8]
    frames = torch.cat([first, *rest]).int()
    assert frames.shape == whole.shape
    assert (frames - whole).abs().max() <= 1  # rounding of values within fp32 noise of .5
    assert causal_ae.num_frames(5) == frames.shape[0]
    assert (causal_ae.decode_video(z).int() - whole).abs().max() <= 1


def test_caches_do_not_grow_with_chunks(causal_ae):
    z = latents(1 + 8, seed=5)
    stream = causal_ae.open_stream()
    sizes, shapes = [], []
    stream.decode_float(z[:, :, :1])
    for k in range(8):
        stream.decode_float(z[:, :, 1 + k: 2 + k])
        sizes.append(stream.cache_bytes())
        shapes.append(sorted(tuple(t.shape) for t in stream._caches.values()))
    assert sizes[1] == sizes[7] > 0 and shapes[1] == shapes[7]
    assert len(stream._caches) == len(causal_ae._convs)
    assert all(t.shape[2] == 2 for t in stream._caches.values())  # kernel 3 - 1 frames per conv
    stream.close()
    assert stream.cache_bytes() == 0


def test_snapshot_restore_rewinds(causal_ae):
    z = latents(6, seed=7)
    alt = latents(2, seed=8)
    stream = causal_ae.open_stream()
    stream.decode_float(z[:, :, :2])
    snap = stream.snapshot()
    a = stream.decode_float(z[:, :, 2:4])
    b = stream.decode_float(z[:, :, 4:6])
    stream.restore(snap)
    assert torch.equal(stream.decode_float(z[:, :, 2:4]), a)
    stream.decode_float(alt)             # branch somewhere else ...
    stream.restore(snap)                 # ... and come back: a snapshot restores any number of times
    assert torch.equal(stream.decode_float(z[:, :, 2:4]), a)
    assert torch.equal(stream.decode_float(z[:, :, 4:6]), b)
    other = LTX2Autoencoder(tiny_vae(True)).open_stream()
    with pytest.raises(ValueError, match="not a snapshot"):
        other.restore(snap)


def test_stream_input_errors(causal_ae):
    stream = causal_ae.open_stream()
    with pytest.raises(ValueError, match="expected latents"):
        stream.decode(torch.zeros(1, C + 1, 1, 2, 3))
    stream.decode(latents(1))
    with pytest.raises(ValueError, match="grid changed"):
        stream.decode(torch.zeros(1, C, 1, 3, 3))
    with stream:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        stream.decode(latents(1))


def test_non_causal_decoder_streams_with_overlap(bidir_ae):
    assert not bidir_ae.causal
    z = latents(6, seed=11)
    stream = bidir_ae.open_stream()
    first = stream.decode_float(z[:, :, :2])
    # The first chunk has no left context: identical to a whole decode of those 2 latent frames.
    assert rel_err(first, bidir_ae.decode_reference(z[:, :, :2])) < FP32_STREAM_REL
    sizes = []
    for k in range(2):
        out = stream.decode_float(z[:, :, 2 + 2 * k: 4 + 2 * k])
        assert out.shape[2] == 16
        sizes.append(stream.cache_bytes())
    assert sizes[0] == sizes[1] > 0
    snap = stream.snapshot()
    a = stream.decode(latents(2, seed=12))
    stream.restore(snap)
    assert torch.equal(stream.decode(latents(2, seed=12)), a)


def test_official_names_resolve_through_the_cache(causal_dir, home):
    with pytest.raises(MissingWeightsError) as info:
        load_autoencoder("ltx2-causal")
    assert "video autoencoder (ltx2-causal)" in str(info.value) and "\n" not in str(info.value)
    target = home / "Efficient-Large-Model" / "SANA-WM_streaming" / "ltx2_causal_vae"
    target.parent.mkdir(parents=True)
    target.symlink_to(causal_dir, target_is_directory=True)
    ae = load_autoencoder("ltx2-causal")
    assert ae.causal and ae.stride == (8, 32, 32)
    assert isinstance(load_autoencoder("hf://Efficient-Large-Model/SANA-WM_streaming/ltx2_causal_vae"),
                      LTX2Autoencoder)
    with pytest.raises(MissingWeightsError, match=r"video autoencoder \(ltx2\)"):
        load_autoencoder("ltx2")


def test_nvlabs_causal_config_and_vae_subfolder(causal_dir, causal_ae, tmp_path):
    root = tmp_path / "bundle"
    (root / "vae").mkdir(parents=True)
    cfg = json.loads((causal_dir / "config.json").read_text())
    cfg["_class_name"] = "AutoencoderKLCausalLTX2Video"
    cfg.pop("upsample_type")
    cfg["decoder_upsample_type"] = ["spatiotemporal"] * 3
    cfg["gradient_checkpointing"] = False
    (root / "vae" / "config.json").write_text(json.dumps(cfg))
    for f in causal_dir.glob("*.safetensors"):
        (root / "vae" / f.name).write_bytes(f.read_bytes())
    ae = load_autoencoder(root)
    z = latents(4, seed=2)
    assert torch.equal(ae.decode_reference(z), causal_ae.decode_reference(z))


def test_bad_weights_fail_loudly(causal_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(causal_dir / "diffusion_pytorch_model.safetensors"))
    cfg = (causal_dir / "config.json").read_text()
    for name, change in [("missing", lambda s: s.pop("decoder.conv_out.conv.weight")),
                         ("shape", lambda s: s.__setitem__("decoder.conv_in.conv.bias", torch.zeros(3)))]:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(cfg)
        broken = dict(state)
        change(broken)
        save_file(broken, str(d / "diffusion_pytorch_model.safetensors"))
        with pytest.raises(IncompatibleWeightsError, match="decoder.conv_(out.conv.weight|in.conv.bias)"):
            load_autoencoder(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(cfg)
    with pytest.raises(MissingWeightsError, match="no \\*.safetensors"):
        load_autoencoder(empty)
    with pytest.raises(ValueError, match="unknown autoencoder"):
        load_autoencoder("no-such-autoencoder")
    with pytest.raises(MissingWeightsError, match="no file or folder"):
        load_autoencoder(tmp_path / "no-such-folder")


def test_registry():
    class Dummy(VideoAutoencoder):
        latent_channels, stride = 4, (8, 16, 16)

        def __init__(self, device, dtype):
            self.args = (device, dtype)

        def encode_image(self, image):
            raise NotImplementedError

        def open_stream(self) -> DecoderStream:
            raise NotImplementedError

    register_autoencoder("test-dummy", lambda *, device, dtype: Dummy(device, dtype), overwrite=True)
    assert {"ltx2", "ltx2-causal", "test-dummy"} <= set(registered_autoencoders())
    ae = load_autoencoder("test-dummy", device="cpu", dtype=torch.float16)
    assert isinstance(ae, Dummy) and ae.args == ("cpu", torch.float16)
    with pytest.raises(ValueError, match="already registered"):
        register_autoencoder("test-dummy", lambda *, device, dtype: None)
    register_autoencoder("test-lazy", "tests.unit.test_decoder:_lazy_factory", overwrite=True)
    assert load_autoencoder("test-lazy") == "lazy"


def _lazy_factory(*, device, dtype):
    return "lazy"


def test_image_loading_and_first_frame_encode(causal_ae, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "frame.png"
    Image.fromarray(rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)).save(src)   # wider than 96:64
    x, crop = load_image(src, H, W, return_crop=True)
    assert x.shape == (1, 3, H, W) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert crop.src_size == (120, 50) and crop.resized_size == (154, 64) and crop.offset == (29, 0)
    fx, fy, cx, cy = crop.map_intrinsics(100.0, 100.0, 60.0, 25.0)
    assert (fx, fy) == pytest.approx((100 * 154 / 120, 100 * 64 / 50))
    assert cx == pytest.approx(60 * 154 / 120 - 29) and cy == pytest.approx(25 * 64 / 50)
    u8 = load_image(src, H, W, as_uint8=True)
    assert u8.dtype == torch.uint8 and torch.allclose(u8.float() / 127.5 - 1, x)
    rgba = tmp_path / "alpha.png"
    Image.fromarray(rng.integers(0, 256, (64, 96, 4), dtype=np.uint8), "RGBA").save(rgba)
    assert load_image(rgba, H, W).shape == (1, 3, H, W)
    assert causal_ae.encode_image(x).shape == (1, C, 1, 2, 3)

    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png", H, W)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="cannot read image"):
        load_image(bad, H, W)
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path, H, W)


@pytest.mark.parametrize("ph,pw", [(1, 1), (2, 1), (1, 3)])
def test_reflect_padded_cat_equals_cat_then_reflection_pad(ph, pw):
    from kernels.decoder_prep import reflect_padded_cat

    g = torch.Generator().manual_seed(ph * 10 + pw)
    x = torch.randn(2, 3, 4, 5, 7, generator=g)
    for left in (torch.randn(2, 3, 2, 5, 7, generator=g), x[:, :, :1].expand(-1, -1, 2, -1, -1)):
        want = torch.nn.functional.pad(torch.cat([left, x], dim=2), (pw, pw, ph, ph, 0, 0), mode="reflect")
        assert torch.equal(reflect_padded_cat(left, x, ph, pw), want)
    with pytest.raises(ValueError, match="reflection padding"):
        reflect_padded_cat(x, x, 5, 1)


def _spy_conv_inputs(monkeypatch, impl: str = "auto") -> list:
    """Record (ph, pw, normalised?) of every conv input the stream builds, running `conv_input` with `impl`."""
    import runtime.ltx2_vae as ltx2
    from kernels.decoder_prep import conv_input

    calls = []

    def spy(x, left, **kw):
        calls.append((kw["ph"], kw["pw"], kw["norm_eps"] is not None))
        return conv_input(x, left, impl=impl, **kw)

    monkeypatch.setattr(ltx2, "conv_input", spy)
    return calls


def test_streaming_decode_fuses_norms_and_padding_into_conv_inputs(causal_ae, monkeypatch):
    """Every temporal conv of the tiny decoder reflect-pads, so each gets its input from one `conv_input` call
    with the padding inside; the ResNet blocks' two norms + SiLU and the output norm + SiLU go in there too."""
    calls = _spy_conv_inputs(monkeypatch)
    causal_ae.open_stream().decode_float(latents(2, seed=5))
    resnets = len(causal_ae._fused_resnets)
    assert resnets > 0 and causal_ae._fused_output
    assert len(calls) == len(causal_ae._convs) and {c[:2] for c in calls} == {(1, 1)}
    assert sum(c[2] for c in calls) == 2 * resnets + 1


def test_fused_conv_inputs_decode_like_diffusers_modules(causal_dir, monkeypatch):
    """SANA_WM_DECODER_FUSED_INPUT=0 leaves the norms and SiLUs to diffusers' modules: the same frames to fp32
    rounding, and nothing is normalised inside the conv inputs."""
    z = latents(4, seed=7)
    fused = load_autoencoder(causal_dir).open_stream().decode_float(z)
    monkeypatch.setenv("SANA_WM_DECODER_FUSED_INPUT", "0")
    ae = load_autoencoder(causal_dir)
    assert not ae._fused_resnets and not ae._fused_output
    calls = _spy_conv_inputs(monkeypatch)
    plain = ae.open_stream().decode_float(z)
    assert calls and not any(c[2] for c in calls)
    assert rel_err(fused, plain) < FP32_STREAM_REL


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU model under the Triton interpreter; on a GPU every "
                    "LTX-2 decode runs the kernel (tests/gpu/test_decoder_prep_gpu.py)")
def test_streaming_decode_through_the_triton_conv_inputs(causal_ae, monkeypatch):
    """The whole stream with the Triton kernel (the interpreter on CPU) still equals diffusers' whole-video
    decode, chunk boundaries and first-chunk padding included."""
    calls = _spy_conv_inputs(monkeypatch, impl="triton")
    z = latents(4, seed=8)
    whole = causal_ae.decode_reference(z)
    stream = causal_ae.open_stream()
    streamed = torch.cat([stream.decode_float(z[:, :, :1]), stream.decode_float(z[:, :, 1:4])], dim=2)
    assert calls and rel_err(streamed, whole) < FP32_STREAM_REL


def test_channels_last_decoder_experiment_decodes_the_same(causal_dir, monkeypatch):
    """SANA_WM_DECODER_CHANNELS_LAST=1 (the default on CUDA) changes memory layouts only: the stream decodes
    the same frames (to fp32 rounding: the convs may sum in another order) and the padded buffers follow the
    activations' channels-last layout."""
    from kernels import decoder_prep

    z = latents(4, seed=6)
    ae = load_autoencoder(causal_dir)
    assert ae.vae.decoder.conv_in.conv.weight.is_contiguous() or torch.cuda.is_available()  # "auto": CUDA only
    plain = ae.open_stream().decode_float(z)
    monkeypatch.setenv("SANA_WM_DECODER_CHANNELS_LAST", "1")
    ae = load_autoencoder(causal_dir)
    assert ae.vae.decoder.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    layouts = []
    real = decoder_prep.reflect_padded_cat

    def spy(left, x, ph, pw, memory_format):
        out = real(left, x, ph, pw, memory_format)
        layouts.append(out.is_contiguous(memory_format=torch.channels_last_3d))
        return out

    monkeypatch.setattr(decoder_prep, "reflect_padded_cat", spy)
    cl = ae.open_stream().decode_float(z)
    assert any(layouts)
    assert rel_err(cl, plain) < FP32_STREAM_REL
