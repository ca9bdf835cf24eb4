"""Stage-2 LTX-2 refiner on a tiny random diffusers transformer (config written to a temp folder), a tiny random
Gemma-3 text model with a tokenizer trained here, and tiny connectors: the video-only forward against diffusers,
both refinement modes, their attention patterns against a dense per-token masked reference, the sink, the
scheduler's ordering, offload / FP8 paths, weight errors, the CLI and a refined render end to end."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from runtime.refiner import (
    BlockRefiner,
    LTX2Refiner,
    PipelineScheduler,
    RefineSettings,
    Stage,
    frame_attention,
    refine_blocks,
    refine_clip,
    token_attention_mask,
)
from runtime.refiner.model import LayerKV
from runtime.refiner.refine import predict_x0_dense, sink_kv, to_tokens
from runtime.refiner.schedule import InlineBackend
from runtime.weights import MissingWeightsError

H, W = 2, 3            # latent grid (64 x 96 pixels)
FPS = 16.0
TINY_TRANSFORMER = {
    "in_channels": 128, "out_channels": 128, "num_attention_heads": 2, "attention_head_dim": 16,
    "cross_attention_dim": 32, "num_layers": 2, "caption_channels": 32, "rope_type": "split",
    "audio_in_channels": 8, "audio_out_channels": 8, "audio_num_attention_heads": 2, "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 16}
TINY_CONNECTORS = {
    "caption_channels": 32, "text_proj_in_factor": 3, "video_connector_num_attention_heads": 2,
    "video_connector_attention_head_dim": 16, "video_connector_num_layers": 1,
    "video_connector_num_learnable_registers": 8, "audio_connector_num_attention_heads": 2,
    "audio_connector_attention_head_dim": 16, "audio_connector_num_layers": 1,
    "audio_connector_num_learnable_registers": 8, "rope_type": "split"}


def _tiny_transformer(seed=0):
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(seed)
    tr = LTX2VideoTransformer3DModel(**TINY_TRANSFORMER)
    with torch.no_grad():   # non-trivial modulation tables, so timesteps and gates matter
        for name, p in tr.named_parameters():
            if "scale_shift_table" in name:
                p.normal_(0.0, 0.3)
    return tr


@pytest.fixture(scope="module")
def refiner_root(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("refiner")
    _tiny_transformer().save_pretrained(root / "transformer")
    torch.manual_seed(1)
    LTX2TextConnectors(**TINY_CONNECTORS).save_pretrained(root / "connectors")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["a street at night in the rain", "a sunny meadow with trees"] * 5, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>", unk_token="<unk>")
    config = transformers.Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
        sliding_window=64, pad_token_id=tok.token_to_id("<pad>"), bos_token_id=tok.token_to_id("<bos>"),
        eos_token_id=tok.token_to_id("<eos>"))
    torch.manual_seed(2)
    transformers.Gemma3ForCausalLM(config).save_pretrained(root / "text_encoder")
    fast.save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def refiner(refiner_root):
    from runtime.weights import resolve_refiner_weights

    return LTX2Refiner.from_pretrained(resolve_refiner_weights(refiner_root), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def text(refiner):
    return refiner.encode_prompt("a street at night")


def _latents(t, seed=0):
    return torch.randn(1, 128, t, H, W, generator=torch.Generator().manual_seed(seed))


# The forward ----------------------------------------------------------------------------------------------------
def test_prompt_encoding_shapes_and_cache(refiner, text):
    assert text.hidden.shape == (1, 1024, 32) and torch.isfinite(text.hidden).all()
    assert refiner.encode_prompt("a street at night") is text     # cached per prompt


def test_video_forward_matches_diffusers(refiner):
    """Our video-only block walk = diffusers' forward with the audio <-> video cross-attention switched off."""
    tr = refiner.transformer
    emb = torch.randn(1, 8, 32)
    mask = torch.ones(1, 8)
    mask[0, :3] = 0
    z = _latents(4)
    tokens = to_tokens(z)
    with torch.no_grad():
        ref = tr(hidden_states=tokens, audio_hidden_states=torch.randn(1, 5, 8), encoder_hidden_states=emb,
                 audio_encoder_hidden_states=emb, timestep=torch.full((1, tokens.shape[1]), 600.0),
                 audio_timestep=torch.full((1, 5), 600.0), encoder_attention_mask=mask,
                 audio_encoder_attention_mask=mask, num_frames=4, height=H, width=W, fps=FPS, audio_num_frames=5,
                 isolate_modalities=True, return_dict=False)[0]
    ours, _ = refiner.forward(tokens, 0.6, refiner.prepare_text(emb, mask), refiner.rope(0, 4, H, W, FPS))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_absolute_rope_matches_diffusers_coords(refiner):
    tr = refiner.transformer
    coords = tr.rope.prepare_video_coords(1, 7, H, W, torch.device("cpu"), fps=FPS)
    cos, sin = tr.rope(coords)
    ours = refiner.rope(0, 7, H, W, FPS)
    assert torch.equal(cos, ours[0]) and torch.equal(sin, ours[1])
    # A window starting at frame 4 = frames 4..6 of the clip's table (split RoPE: [B, heads, tokens, r]).
    part = refiner.rope(4, 3, H, W, FPS)
    assert torch.equal(part[0], cos[:, :, 4 * H * W:])


# Both modes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["single", "blocks"])
def test_modes_run_and_never_touch_the_sink(refiner, text, mode):
    z = _latents(8).to(torch.bfloat16)       # 1 sink + blocks of 3, 3, 1 (a partial last block)
    settings = RefineSettings(block_size=None if mode == "single" else 3, fps=FPS)
    out = refine_clip(refiner, z, text, settings) if mode == "single" else refine_blocks(refiner, z, text, settings)
    assert out.shape == z.shape and out.dtype == z.dtype and torch.isfinite(out.float()).all()
    assert torch.equal(out[:, :, 0].view(torch.int16), z[:, :, 0].view(torch.int16))   # bit-identical sink
    assert (out[:, :, 1:].float() - z[:, :, 1:].float()).abs().mean() > 1e-3


def test_ar_with_one_block_equals_single_shot(refiner, text):
    """Sink + exactly one block: the two modes are the same computation (same noise, same attention)."""
    z = _latents(4)
    a = refine_clip(refiner, z, text, RefineSettings(block_size=None, fps=FPS))
    b = refine_blocks(refiner, z, text, RefineSettings(block_size=3, fps=FPS))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_frame_patterns_agree_where_they_should():
    T, B = 10, 3
    single = frame_attention(T)
    full = frame_attention(T, block_size=B)                       # window covering the whole clip
    windowed = frame_attention(T, block_size=B, kv_max_frames=4)  # sink + 3 recent frames
    for m in (single, full, windowed):
        assert m[0].tolist() == [True] + [False] * (T - 1)        # the sink attends only itself
        assert m[:, 0].all()                                      # everyone attends the sink
    block = (torch.arange(T) - 1).clamp(min=0) // B               # block index of each frame (sink: with block 0)
    past_or_own = block[None, :] <= block[:, None]
    # Full window: exactly the single-shot pattern minus the future blocks.
    assert torch.equal(full, single & past_or_own)
    assert torch.equal(single & ~full, single & ~past_or_own)
    # Within a block both are bidirectional.
    same = block[None, :] == block[:, None]
    assert torch.equal(full & same, single & same)
    # The window keeps only the last 3 frames before a block: frame 7 (block 2) sees 0, 4..9, not 1..3.
    assert windowed[7].tolist() == [True, False, False, False, True, True, True, True, True, True]
    mask = token_attention_mask(full, H * W)
    assert mask.shape == (T * H * W, T * H * W) and torch.equal(mask[:: H * W, :: H * W], full)


def test_single_shot_prefix_equals_dense_masked_pass(refiner, text):
    """The sink-K/V prefix implementation = one pass over [sink || current] with the per-token mask."""
    z = _latents(7)
    sigma = 0.725
    x = z.clone()
    x[:, :, 1:] = (1 - sigma) * z[:, :, 1:] + sigma * _latents(6, seed=5)
    dense = predict_x0_dense(refiner, x, [0.0] + [sigma] * 6, text, frame_attention(7), FPS)
    sk = sink_kv(refiner, x[:, :, :1], text, FPS)
    rope0 = refiner.rope(0, 1, H, W, FPS)
    prefix = [LayerKV(refiner.rotate(i, e.k, rope0), e.v) for i, e in enumerate(sk)]
    cur = to_tokens(x[:, :, 1:])
    v, _ = refiner.forward(cur, sigma, text, refiner.rope(1, 6, H, W, FPS), prefix=prefix)
    fast = (cur - sigma * v).transpose(1, 2).reshape(1, 128, 6, H, W)
    torch.testing.assert_close(fast, dense[:, :, 1:], rtol=1e-5, atol=1e-5)


def test_ar_full_window_equals_dense_recomputation(refiner, text):
    """K/V cache path = recomputing every block's steps as one masked pass over [sink, refined blocks, block]."""
    z = _latents(7)
    s = RefineSettings(block_size=3, kv_max_frames=64, fps=FPS)
    cached = refine_blocks(refiner, z, text, s)
    gen = torch.Generator().manual_seed(s.seed)
    done = z[:, :, :1]
    for start in (1, 4):
        clean = z[:, :, start:start + 3]
        x = (1 - s.sigmas[0]) * clean + s.sigmas[0] * torch.randn(clean.shape, generator=gen)
        for sigma, nxt in zip(s.sigmas[:-1], s.sigmas[1:]):
            seq = torch.cat([done, x], dim=2)
            mask = frame_attention(seq.shape[2], block_size=3)
            x0 = predict_x0_dense(refiner, seq, [0.0] * done.shape[2] + [sigma] * 3, text, mask, FPS)[:, :, -3:]
            x = (nxt / sigma) * x + (1 - nxt / sigma) * x0
        done = torch.cat([done, x], dim=2)
    torch.testing.assert_close(cached, done, rtol=1e-4, atol=1e-4)


def test_window_trims_cache_and_only_changes_what_it_hides(refiner, text):
    z = _latents(10)
    full = refine_blocks(refiner, z, text, RefineSettings(block_size=3, kv_max_frames=64, fps=FPS))
    runner = BlockRefiner(refiner, text, RefineSettings(block_size=3, kv_max_frames=4, fps=FPS))
    runner.start(z[:, :, :1])
    out = runner.push(z[:, :, 1:], final=True)
    assert runner.cache_frames() == 3 and runner.history[0].tokens == 3 * H * W
    # Blocks 0 and 1 see every earlier frame either way; block 2 (frames 7..9) loses frames 1..3.
    torch.testing.assert_close(out[:, :, :6], full[:, :, 1:7], rtol=1e-5, atol=1e-5)
    assert (out[:, :, 6:] - full[:, :, 7:]).abs().max() > 1e-4


def test_pushing_frames_one_at_a_time_equals_one_push(refiner, text):
    z = _latents(8)
    s = RefineSettings(block_size=3, kv_max_frames=5, fps=FPS)
    whole = refine_blocks(refiner, z, text, s)[:, :, 1:]
    runner = BlockRefiner(refiner, text, s)
    runner.start(z[:, :, :1])
    parts = [runner.push(z[:, :, t:t + 1], final=t == 7) for t in range(1, 8)]
    assert [p.shape[2] for p in parts] == [0, 0, 3, 0, 0, 3, 1]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, rtol=0, atol=0)


# Placement and precision ---------------------------------------------------------------------------------------------
def test_block_offload_and_fp8_paths(refiner_root, text):
    from runtime.refiner.model import swap_fp8_linears
    from runtime.weights import resolve_refiner_weights

    folders = resolve_refiner_weights(refiner_root)
    z = _latents(5)
    s = RefineSettings(block_size=3, fps=FPS)
    base = LTX2Refiner.from_pretrained(folders, dtype=torch.float32)
    ref = refine_blocks(base, z, text, s)
    streamed = LTX2Refiner.from_pretrained(folders, dtype=torch.float32, offload="blocks")
    torch.testing.assert_close(refine_blocks(streamed, z, text, s), ref, rtol=0, atol=0)
    assert streamed._streamer is not None and streamed.transformer.transformer_blocks[0].attn1.to_q.weight.is_cpu
    q = LTX2Refiner.from_pretrained(folders, dtype=torch.float32)
    assert swap_fp8_linears(q.transformer) == 2 * (4 + 4 + 2)     # per block: attn1, attn2 (q k v out), ff (2)
    assert type(q.transformer.proj_in).__name__ == "Linear"       # embedders / head stay high precision
    out = refine_blocks(q, z, text, s)
    err = (out - ref).norm() / (ref - z).norm()
    assert torch.isfinite(out).all() and err < 0.2


# Weights and CLI ---------------------------------------------------------------------------------------------------
def test_missing_refiner_weights_name_the_folders(tmp_path, refiner_root):
    from runtime.weights import resolve_refiner_weights

    with pytest.raises(MissingWeightsError) as exc:
        resolve_refiner_weights(tmp_path / "nothing")
    msg = str(exc.value)
    for name in ("transformer", "connectors", "text_encoder", "gemma3_12b"):
        assert f"{tmp_path / 'nothing'}" in msg and name in msg
    partial = tmp_path / "partial"
    (partial / "transformer").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match="connectors: .*partial/connectors") as exc:
        resolve_refiner_weights(partial)
    assert "transformer:" not in str(exc.value).split("missing folders:")[1]


def test_cli_refine_errors(tmp_path, capsys, monkeypatch):
    from runtime.cli import main

    out = tmp_path / "x.mp4"
    assert main(["render", "--actions", "w-10", "--refine", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--refine needs a model whose latents are LTX-2 latents" in err and "tiny-world" in err
    monkeypatch.setenv("SANA_WM_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("SANA_WM_ALLOW_DOWNLOAD", "0")
    assert main(["render", "--model", "sana-wm-streaming", "--actions", "w-10", "--refine", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "LTX-2 refiner" in err and "refiner_diffusers/connectors" in err and "gemma3_12b" in err
    assert err.count("\n") == 1 and not out.exists()


# Scheduler -----------------------------------------------------------------------------------------------------------
class _Recording(InlineBackend):
    def __init__(self):
        self.log = []

    def record(self, stage, item):
        self.log.append(("record", stage, item))
        return (stage, item)

    def wait(self, stage, event):
        self.log.append(("wait", stage, event))


@pytest.mark.parametrize("pipelined", [False, True])
def test_scheduler_order_and_dependencies(pipelined):
    seen = []

    def stage(name, f):
        def fn(k, value):
            seen.append((name, k))
            return f(k, value)
        return Stage(name, fn)

    stages = [stage("gen", lambda k, _: [k]), stage("ref", lambda k, v: v + ["r"]), stage("dec", lambda k, v: v + ["d"])]
    backend = _Recording()
    out = []
    stats = PipelineScheduler(stages, pipelined=pipelined, backend=backend).run(4, lambda k, v: out.append((k, v)))
    assert out == [(k, [k, "r", "d"]) for k in range(4)]
    if pipelined:   # tick t: decode t-2, refine t-1, generate t (deepest first)
        assert [(t, n, k) for t, n, k in stats.order][:6] == [
            (0, "gen", 0), (1, "ref", 0), (1, "gen", 1), (2, "dec", 0), (2, "ref", 1), (2, "gen", 2)]
    else:
        assert [n for _, n, _ in stats.order][:3] == ["gen", "ref", "dec"]
    # Every wait is on the previous stage's event for the same item, recorded earlier.
    for i, entry in enumerate(backend.log):
        if entry[0] == "wait":
            _, stage_j, (prev_j, item) = entry
            assert prev_j == stage_j - 1 and ("record", prev_j, item) in backend.log[:i]
    assert len(stats.stage_ms["ref"]) == 4 and stats.sum_of_stages_ms >= 0


# Render end to end ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ltx_generator():
    """A tiny stage-1 model on LTX-2 latents (128 channels, stride 8 x 32 x 32) + a tiny random LTX-2 VAE."""
    from diffusers import AutoencoderKLLTX2Video

    from runtime.config import load_config
    from runtime.ltx2_vae import LTX2Autoencoder
    from runtime.model import build_model
    from runtime.pipeline import Generator
    from runtime.text_encoder import TinyTextEncoder

    cfg = dataclasses.replace(load_config("tiny-world"), name="tiny-ltx", in_channels=128, vae="ltx2-causal",
                              vae_stride=(8, 32, 32), height=64, width=96)
    model = build_model(cfg, init="random", seed=0)
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(latent_channels=128, block_out_channels=(8, 16, 32, 32),
                                 decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
                                 decoder_layers_per_block=(1, 1, 1, 1), decoder_causal=True)
    te = TinyTextEncoder(caption_channels=cfg.caption_channels, max_length=cfg.text_max_length)
    return Generator(model, LTX2Autoencoder(vae), te, "random weights")


@pytest.mark.parametrize("block_size", [3, 0])
def test_refined_render_end_to_end(tmp_path, ltx_generator, refiner, text, block_size):
    from runtime.refiner.render import RefineJob, RefineOptions
    from runtime.render import plan_from_actions, render_walk
    from runtime.video import read_mp4

    plan = plan_from_actions("w-40", 49)                  # 49 frames = 7 latent frames = chunks of 4 + 3
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    job = RefineJob(refiner, text, RefineOptions(block_size=block_size))
    out = tmp_path / "walk.mp4"
    side = render_walk(ltx_generator, image, "a street", plan, out, seed=1, image_ref=None, model_name="tiny-ltx",
                       progress=False, refine=job)
    frames, fps = read_mp4(out)
    assert frames.shape == (48, 64, 96, 3) and fps == 16.0       # the image frame is dropped
    assert side["complete"] and side["frames_written"] == 48 and [c["frames"] for c in side["chunks"]] == [24, 24]
    logged = json.loads(out.with_suffix(".json").read_text())["refiner"]
    assert logged["block_size"] == block_size and logged["first_frame_dropped"]
    if block_size:
        assert logged["pipeline"]["stage_ms"].keys() == {"generate", "refine", "decode"}
    assert np.isfinite(frames).all()
