"""The streaming invariant: chunks generated with carried state equal one chunk-causal forward."""
import numpy as np
import pytest
import torch

from runtime.cache import GDNBlockCache, SoftmaxBlockCache
from runtime.camera import actions_to_c2w
from runtime.model import build_model, chunk_ranges
from runtime.session import ChunkResult, WorldSession
from runtime.tiny_vae import DEFAULT_WEIGHTS as TINY_VAE_WEIGHTS
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


def _session(model, seed=5, timesteps=None, **kwargs):
    cfg = model.cfg
    first = torch.randn(1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width,
                        generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=torch.Generator().manual_seed(1))
    text = model.prepare_text(emb, torch.ones(1, cfg.text_max_length))
    return WorldSession(model, text, first_latent=first, intrinsics_latent=intrinsics_latent(cfg), seed=seed,
                        timesteps=timesteps, **kwargs)


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


# Overlapped decode ----------------------------------------------------------------------------------------------
# On the CPU `overlap_decode=True` decodes in line; the CUDA side stream is covered by tests/gpu. The session's
# pending-decode bookkeeping is checked here with a stand-in side stream that really defers each decode until
# something waits for it, in launch order (as one CUDA stream would).
FAST = (1000, 727, 0)


@pytest.fixture(scope="module")
def tiny_ae():
    if not TINY_VAE_WEIGHTS.is_file():
        pytest.skip("the embedded tiny-world autoencoder is not in this checkout")
    from runtime.decoder import load_autoencoder

    return load_autoencoder("tiny-world")


class _CountingPending:
    def __init__(self, frames):
        self._frames, self.waits, self.timings = frames, 0, {}

    def ready(self):
        return self.waits > 0

    def wait(self):
        self.waits += 1
        self.timings = {"decode_ms": 2.0, "total_ms": 3.0}
        return self._frames


class _DeferredPending:
    def __init__(self, side, run):
        self.side, self.run, self.frames, self.done, self.timings = side, run, None, False, {}

    def ready(self):
        return self.done

    def wait(self):
        self.side.drain(until=self)
        return self.frames


class _DeferredSide:
    """Stand-in for the session's side stream: decodes run in launch order, only once someone waits."""

    def __init__(self):
        self.queue, self.calls = [], []

    def launch(self, decoder, x0, chunk_timings):
        pending = _DeferredPending(self, lambda: decoder.decode_device(x0).numpy())
        self.queue.append(pending)
        return pending

    def drain(self, until=None):
        while self.queue and not (until is not None and until.done):
            p = self.queue.pop(0)
            p.frames, p.done = p.run(), True
            p.timings = {"decode_ms": 0.0, "total_ms": 0.0}

    def call(self, fn, *args):
        self.calls.append(getattr(fn, "__name__", str(fn)))
        self.drain()
        return fn(*args)


def _frames_walk(session, chunks):
    return [session.step(session.next_poses(POSES)) for _ in range(chunks)]


def test_chunk_result_frames_array_or_pending():
    latents = torch.zeros(1, 2, 3, 4, 5)
    arr = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
    done = ChunkResult(0, range(1), arr, latents, {"generate_ms": 1.0})
    assert done.ready and done.frames is arr and done.wait() is arr
    assert ChunkResult(1, range(1, 9), None, latents).frames is None   # no decoder
    pending = _CountingPending(arr)
    r = ChunkResult(2, range(9, 17), pending, latents, {"generate_ms": 1.0})
    assert not r.ready and pending.waits == 0 and "decode_ms" not in r.timings
    assert r.frames is arr and r.frames is arr and r.wait() is arr
    assert pending.waits == 1                                               # waited once, on first access
    assert r.ready and r.timings == {"generate_ms": 1.0, "decode_ms": 2.0, "total_ms": 3.0}
    r.frames = arr[:, :1]                                                   # still assignable
    assert r.frames.shape == (1, 1, 4, 3)
    assert "decoding" in repr(ChunkResult(3, range(17, 25), _CountingPending(arr), latents))


def test_overlap_decode_on_cpu_decodes_in_line(tiny, tiny_ae):
    plain = _frames_walk(_session(tiny, timesteps=FAST, autoencoder=tiny_ae), 3)
    s = _session(tiny, timesteps=FAST, autoencoder=tiny_ae, overlap_decode=True)
    assert not s.overlap_decode and s._side is None          # CUDA only: the CPU keeps the synchronous decode
    over = _frames_walk(s, 3)
    for a, b in zip(plain, over):
        assert b.ready and {"generate_ms", "decode_ms", "total_ms"} <= set(b.timings)
        assert b.frames.dtype == np.uint8 and b.frames.shape == (len(b.raw_frames), 144, 256, 3)
        assert np.array_equal(a.frames, b.frames)
    snap = s.snapshot()
    again = _frames_walk(s, 1)[0]
    s.restore(snap)
    assert np.array_equal(_frames_walk(s, 1)[0].frames, again.frames)
    s.close()


def test_deferred_decodes_keep_order_across_snapshot_restore_and_close(tiny, tiny_ae):
    plain = [r.frames for r in _frames_walk(_session(tiny, timesteps=FAST, autoencoder=tiny_ae), 4)]
    s = _session(tiny, timesteps=FAST, autoencoder=tiny_ae)
    s._side = side = _DeferredSide()                         # the session's overlapped path, run on the CPU
    first = _frames_walk(s, 2)
    assert not any(r.ready for r in first) and len(side.queue) == 2 and "decode_ms" not in first[0].timings
    snap = s.snapshot()                                      # must decode the queued chunks before cloning
    assert not side.queue and all(r.ready for r in first) and side.calls == ["snapshot"]
    branch = _frames_walk(s, 2)
    assert not any(r.ready for r in branch)
    s.restore(snap)                                          # the branch's decodes finish first, unharmed
    assert all(r.ready for r in branch)
    replay = _frames_walk(s, 2)
    s.close()                                                # waits for the queued decodes too
    assert all(r.ready for r in replay) and s._side is None
    got = [r.frames for r in first + branch]
    assert all(np.array_equal(a, b) for a, b in zip(got, plain))
    assert all(np.array_equal(a.frames, b) for a, b in zip(replay, plain[2:]))
    assert {"generate_ms", "decode_ms", "total_ms"} <= set(replay[1].timings)


def test_full_softmax_cache_is_attended_in_place(tiny):
    """Once the sink and the ring are full, a softmax block attends one slice of its packed K/V buffer: the
    current chunk's K/V are written behind the cached ones and nothing cached is copied (the concatenation of the
    filling phase copied all of it every pass). test_streaming_equals_chunk_causal_forward checks the results."""
    block = _full_softmax_cache(tiny)
    assert block.full
    cached = torch.cat([block.sink[:, :, :, :block.sink_tokens], block.ring[0]], dim=3).clone()
    B, H, D = cached.shape[1], cached.shape[2], cached.shape[4]
    current = [torch.randn(B, H, 3 * block.tokens_per_frame, D) for _ in range(4)]
    context = block.context(*current)                  # (main K, main V, camera K, camera V)
    n = cached.shape[3]
    stored = [0, 2, 1, 3]                              # their places in the buffer (KV_STREAMS)
    for t, i, new in zip(context, stored, current):
        assert t.data_ptr() == block.packed[i].data_ptr()
        assert torch.equal(t[:, :, :n], cached[i]) and torch.equal(t[:, :, n:], new)
    # Both branches' keys (values) as one [2, B, H, tokens, D] view: one attention call over a batch of two.
    keys, values = block.pair_context(*current)
    assert keys.data_ptr() == block.packed.data_ptr() and values.data_ptr() == block.packed[2].data_ptr()
    assert keys.flatten(0, 1).data_ptr() == keys.data_ptr()     # a view, no copy
    assert torch.equal(keys[1], context[2]) and torch.equal(values[0], context[1])


def _full_softmax_cache(tiny) -> SoftmaxBlockCache:
    x, _, text, cam, plk = random_inputs(tiny, 7, seed=3)
    cache = tiny.new_cache()
    with torch.no_grad():
        for s, e in chunk_ranges(7, 4, 3):
            tiny(x[:, :, s:e], torch.zeros(1, e - s), text, cam[:, s:e], plk[:, :, s:e], cache=cache,
                 write_cache=True)
    return next(b for b in cache.blocks if isinstance(b, SoftmaxBlockCache))


def test_plucker_projections_run_once_per_chunk(tiny):
    """The ray-map terms do not change across the denoising passes of a chunk: each block's plucker_proj runs
    once per chunk, not once per pass (issue #10's per-chunk precomputation)."""
    calls = []
    hooks = [blk.plucker_proj.register_forward_hook(lambda *a: calls.append(1)) for blk in tiny.blocks]
    try:
        cfg = tiny.cfg
        x, _, text, _, _ = random_inputs(tiny, 4, seed=4)
        session = WorldSession(tiny, text, first_latent=x[:, :, :1], intrinsics_latent=intrinsics_latent(cfg),
                               seed=0)
        poses = actions_to_c2w("w-80")
        for _ in range(2):
            raw = session.next_raw_frames()
            session.step(poses[raw.start:raw.stop])
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 2 * cfg.depth


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_session_builds_the_ray_maps_on_the_gpu_like_numpy():
    from runtime.camera import chunk_plucker

    net = build_model("tiny-world", device="cuda", init="random", seed=2)
    cfg = net.cfg
    g = torch.Generator().manual_seed(5)
    text = net.prepare_text(torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=g).cuda(),
                            torch.ones(1, cfg.text_max_length, device="cuda"))
    first = torch.randn(1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width, generator=g).cuda()
    session = WorldSession(net, text, first_latent=first, intrinsics_latent=intrinsics_latent(cfg), seed=0)
    poses = actions_to_c2w("wd-40,l-40")
    for _ in range(2):
        latents = session._latent_range()
        raw = session.next_raw_frames()
        session.step(poses[raw.start:raw.stop])
    _, plk = session._camera_inputs(latents)        # the last chunk's, from the poses the session holds
    want = chunk_plucker(np.stack(session.poses), session.intrinsics, list(latents),
                         (cfg.latent_height, cfg.latent_width), session.stride)
    assert plk.is_cuda and rel_err(plk[0].float().cpu(), torch.from_numpy(want)) < 1e-5


def test_frame_tables_are_built_once_per_chunk(tiny, monkeypatch):
    """denoise_chunk builds the chunk's RoPE / ray tables once and hands them to its 5 passes (they only depend on
    the frames' positions and cameras, which the cache pass commits after it has run): the same latents, bit for
    bit, as every pass building its own, over chunks that fill the sink and the ring."""
    real = type(tiny).frame_tables
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("positions"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "frame_tables", counted)
    once = _walk(_session(tiny), POSES, 4)
    assert len(calls) == 4                                  # one per chunk: the passes took the chunk's tables
    # every pass building its own (the model ignores what the sampler hands it)
    real_forward = type(tiny).forward
    monkeypatch.setattr(type(tiny), "forward", lambda self, *a, frame_tables=None, **k: real_forward(self, *a, **k))
    per_pass = _walk(_session(tiny), POSES, 4)
    assert len(calls) == 4 + 4 * (1 + 5)                   # the sampler's, then each of the 5 passes' own
    assert all(torch.equal(a, b) for a, b in zip(once, per_pass))


@pytest.mark.parametrize("per_frame_intrinsics", [False, True])
def test_the_graph_steps_camera_inputs_from_the_pose_window_equal_those_from_every_pose(tiny, per_frame_intrinsics):
    """The captured step builds its camera inputs from the chunk's pose window (the raw frame before its first
    latent frame on): the same UCPE conditions and Plucker maps as the eager step builds from every pose so far."""
    session = _session(tiny)
    chunks = 4
    if per_frame_intrinsics:   # per raw frame intrinsics (here drifting), the window takes its own rows
        session.intrinsics = session.intrinsics * (1 + 0.01 * np.arange(500)[:, None])
    for _ in range(chunks):
        latents = session._latent_range()
        raw = session.next_raw_frames()
        session.poses.extend(POSES[raw.start:raw.stop])   # what step() records, without generating
        session.chunk_index += 1
        if latents[0] == 0:
            with pytest.raises(ValueError, match="no pose window"):
                session._pose_window(latents)
            continue
        if per_frame_intrinsics:   # the eager path reads the rows of the poses so far
            full = session.intrinsics
            session.intrinsics = full[:len(session.poses)]
        window = session._pose_window(latents)
        assert window.shape == (session.stride * len(latents) + 1, 20)
        cam, plk = session._window_camera(torch.from_numpy(window), torch.arange(1, len(latents) + 1))
        want_cam, want_plk = session._camera_inputs(latents)
        if per_frame_intrinsics:
            session.intrinsics = full
        assert torch.equal(cam, want_cam)
        assert plk.shape == want_plk.shape and rel_err(plk, want_plk) < 1e-6
