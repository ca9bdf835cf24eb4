"""The streaming invariant: chunks generated with carried state equal one chunk-causal forward."""
import numpy as np
import pytest
import torch

from runtime.cache import GDNBlockCache, SoftmaxBlockCache
from runtime.camera import actions_to_c2w
from runtime.model import build_model, chunk_ranges
from runtime.session import WorldSession
from tests.model_inputs import intrinsics_latent, random_inputs
from tests.tolerances import FP32_STREAM_REL, rel_err

T = 13  # chunks of 4, 3, 3, 3 latent frames: the sink and a full ring are both exercised


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny-world", init="random", seed=2)


def _drop_gdn_state(cache):
    for b in cache.blocks:
        if isinstance(b, GDNBlockCache):
            b.state.zero_()
            b.z.zero_()


def _drop_cam_state(cache):
    for b in cache.blocks:
        if isinstance(b, GDNBlockCache):
            b.cam_state.zero_()


def _drop_conv(cache):
    for b in cache.blocks:
        if isinstance(b, GDNBlockCache):
            b.conv_k.zero_()


def _drop_tconv(cache):
    for b in cache.blocks:
        b.tconv.zero_()


def _drop_kv(cache):
    for b in cache.blocks:
        if isinstance(b, SoftmaxBlockCache):
            b.sink_tokens = 0
            b.ring_tokens = [0] * len(b.ring_tokens)


def _stream_vs_teacher(model, drop=None):
    """For every chunk: a noisy query against the carried cache of the clean earlier chunks, compared with one
    chunk-causal forward over [clean earlier chunks (t = 0), noisy chunk (its t)]. Returns the worst error."""
    x, ts, text, cam, plk = random_inputs(model, T, seed=11)
    chunks = chunk_ranges(T, 4, 3)
    cache = model.new_cache()
    worst = 0.0
    with torch.no_grad():
        for c, (s, e) in enumerate(chunks):
            if drop is not None and c > 0:
                drop(cache)
            query_t = ts[:, s:e]
            streamed = model(x[:, :, s:e], query_t, text, cam[:, s:e], plk[:, :, s:e], cache=cache)
            teacher_t = torch.cat([torch.zeros(1, s), query_t], dim=1)
            teacher = model(x[:, :, :e], teacher_t, text, cam[:, :e], plk[:, :, :e], chunks=chunks[: c + 1])
            worst = max(worst, rel_err(streamed, teacher[:, :, s:e]))
            # The clean pass (t = 0) writes this chunk into the caches.
            model(x[:, :, s:e], torch.zeros(1, e - s), text, cam[:, s:e], plk[:, :, s:e], cache=cache,
                  write_cache=True)
    return worst


def test_streaming_equals_chunk_causal_forward(tiny):
    assert _stream_vs_teacher(tiny) < FP32_STREAM_REL


@pytest.mark.parametrize("drop", [_drop_gdn_state, _drop_cam_state, _drop_conv, _drop_tconv, _drop_kv],
                         ids=["gdn-state", "camera-state", "k-conv-context", "ffn-temporal", "softmax-kv"])
def test_each_cache_matters(tiny, drop):
    assert _stream_vs_teacher(tiny, drop) > 100 * FP32_STREAM_REL


def test_sink_and_window_hold_the_official_chunks(tiny):
    cache = tiny.new_cache()
    kv = next(b for b in cache.blocks if isinstance(b, SoftmaxBlockCache))
    S = tiny.cfg.tokens_per_frame
    assert kv.sink.shape[3] == 4 * S and kv.ring.shape[0] == 1   # sink + 1 recent chunk = 2 cached chunks


def _session(model, seed=5, timesteps=None):
    cfg = model.cfg
    first = torch.randn(1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width,
                        generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=torch.Generator().manual_seed(1))
    text = model.prepare_text(emb, torch.ones(1, cfg.text_max_length))
    return WorldSession(model, text, first_latent=first, intrinsics_latent=intrinsics_latent(cfg), seed=seed,
                        timesteps=timesteps)


def _walk(session, poses, chunks):
    out = []
    for _ in range(chunks):
        raw = session.next_raw_frames()
        out.append(session.step(poses[raw.start:raw.stop]).latents)
    return out


POSES = actions_to_c2w("w-60,d-40,wj-60,i-20,none-3000")


def test_same_seed_same_latents_and_snapshot_restore(tiny):
    a = _walk(_session(tiny), POSES, 3)
    b = _walk(_session(tiny), POSES, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    s = _session(tiny)
    _walk(s, POSES, 1)
    snap = s.snapshot()
    first = _walk(s, POSES, 2)
    s.restore(snap)
    again = _walk(s, POSES, 2)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert torch.equal(first[0], a[1])
    # A different seed gives a different world.
    other = _walk(_session(tiny, seed=6), POSES, 1)
    assert not torch.equal(other[0], a[0])


def test_first_image_frame_is_kept_clean(tiny):
    s = _session(tiny)
    out = _walk(s, POSES, 1)[0]
    assert torch.equal(out[:, :, 0], s.first_latent[:, :, 0])


def test_bad_pose_count_is_rejected(tiny):
    s = _session(tiny)
    with pytest.raises(ValueError, match="needs poses for 25 raw frames"):
        s.step(POSES[:10])
    bad = POSES[:25].copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        s.step(bad)


@pytest.mark.slow
def test_cache_memory_is_flat_over_100_chunks(tiny):
    s = _session(tiny, timesteps=(1000, 0))
    _walk(s, POSES, 3)
    size3 = s.cache_nbytes()
    ptrs3 = sorted(t.data_ptr() for b in s.cache.blocks for t in b.tensors().values())
    _walk(s, POSES, 97)
    assert s.chunk_index == 100
    assert s.cache_nbytes() == size3
    assert sorted(t.data_ptr() for b in s.cache.blocks for t in b.tensors().values()) == ptrs3
