"""`sana-wm serve` on localhost: real sockets, a real server thread, the tiny model on the CPU.

The tiny autoencoder (`runtime.tiny_vae`) may not be registered yet, so the generator is assembled here from
`build_model("tiny-world")`, the "tiny-hash" text encoder and `StandInAE`, a parameter-free autoencoder with
the tiny model's 8x16x16 compression. Most tests use a smaller frame (64x96) and 2 denoising steps so a chunk
costs ~0.3 s; the equality test uses the tiny-world config as is.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.protocol import (
    HEADER,
    ConnectionClosed,
    Limits,
    ServerError,
    hello_message,
    open_message,
    pack,
    read_frame,
    reply_unpack_limits,
    step_actions_message,
    step_poses_message,
    unpack_body,
)
from explorer.remote import RemoteClient, parse_address
from runtime.camera import actions_to_c2w
from runtime.config import load_config
from runtime.decoder import DecoderStream, VideoAutoencoder
from runtime.model import build_model
from runtime.pipeline import Generator, open_session
from runtime.server import ServerConfig, ServerConfigError, WorldServer, read_token_file
from runtime.text_encoder import load_text_encoder

REPO = Path(__file__).resolve().parents[2]
WALK = actions_to_c2w("w-30,wd-30,a-30,i-20,none-40")      # 151 raw frames: chunks of 25, 24, 24, ...
TOKEN = "s3cret-token-for-the-tests-0123456789"
IO_TIMEOUT = 30.0


# ------------------------------------------------------------------------------------------------------------
# A stand-in autoencoder and the generators
# ------------------------------------------------------------------------------------------------------------
class _StandInStream(DecoderStream):
    def __init__(self, proj: torch.Tensor, stride: tuple[int, int, int]):
        self.proj, self.stride, self.first = proj, stride, True

    def decode(self, latents):
        rgb = torch.einsum("bctij,cd->btdij", latents.float().cpu(), self.proj)[0]        # [T, 3, h, w]
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=self.stride[1:], mode="nearest")
        frames = ((torch.tanh(rgb) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        frames = torch.repeat_interleave(frames, self.stride[0], dim=0)
        if self.first:                          # causal: the first latent frame is one video frame
            frames, self.first = frames[self.stride[0] - 1:], False
        return frames.contiguous()

    def snapshot(self):
        return self.first

    def restore(self, snap):
        self.first = snap

    def close(self):
        self.proj = None


class StandInAE(VideoAutoencoder):
    """Fixed random projections: pixels -> 16x16 average pool -> C channels, and back with nearest upsampling."""

    stride = (8, 16, 16)

    def __init__(self, channels: int = 16):
        g = torch.Generator().manual_seed(0)
        self.latent_channels = channels
        self.enc = torch.randn(3, channels, generator=g)
        self.dec = torch.randn(channels, 3, generator=g) * 0.3

    def encode_image(self, image):
        x = torch.nn.functional.avg_pool2d(image.float(), self.stride[1])
        return torch.einsum("bchw,cd->bdhw", x, self.enc)[:, :, None]

    def open_stream(self):
        return _StandInStream(self.dec, self.stride)


def make_generator(small: bool) -> Generator:
    cfg = load_config("tiny-world")
    if small:
        cfg = dataclasses.replace(cfg, height=64, width=96, denoising_timesteps=(1000, 727, 0))
    model = build_model(cfg, init="random", seed=3).eval()
    te = load_text_encoder(cfg.text_encoder, caption_channels=cfg.caption_channels, max_length=cfg.text_max_length)
    return Generator(model, StandInAE(cfg.in_channels), te, "random weights (tests)")


@pytest.fixture(scope="module")
def small_gen():
    return make_generator(small=True)


def png_bytes(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


TEST_LIMITS = Limits(max_message_bytes=1 << 20, max_image_bytes=256 << 10, max_image_pixels=120_000)


@contextlib.contextmanager
def serving(gen, **overrides):
    cfg = {"port": 0, "limits": TEST_LIMITS, "handshake_timeout_s": 2.0, "read_timeout_s": 1.0,
           "queue_timeout_s": 60.0, "shutdown_grace_s": 20.0}
    cfg.update(overrides)
    server = WorldServer(gen, ServerConfig(**cfg))
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=20.0)


def client(server, **kw) -> RemoteClient:
    host, port = server.address
    kw.setdefault("frames", "raw")
    return RemoteClient(host, port, timeout=IO_TIMEOUT, **kw)


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Raw:
    """A bare protocol speaker for sending what RemoteClient never would."""

    def __init__(self, server, hello: bool = True, token: str | None = None):
        self.sock = socket.create_connection(server.address, timeout=IO_TIMEOUT)
        if hello:
            self.send(hello_message(token))
            assert self.recv()["type"] == "welcome"

    def send(self, msg: dict) -> None:
        self.sock.sendall(pack(msg))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, body: bytes) -> None:
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def recv(self) -> dict:
        body = read_frame(self.sock, 1 << 30, idle_timeout=IO_TIMEOUT, frame_timeout=IO_TIMEOUT)
        return unpack_body(body, **reply_unpack_limits(1 << 30))

    def expect_error(self, code: str) -> dict:
        reply = self.recv()
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert isinstance(reply["message"], str) and reply["message"]
        return reply

    def expect_closed(self) -> None:
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            self.recv()

    def close(self) -> None:
        self.sock.close()


def poses_for(chunk_start: int, n: int) -> np.ndarray:
    return WALK[chunk_start: chunk_start + n]


def step_walk(c: RemoteClient):
    start = 0 if c.chunk_index == 0 else c.info.first_chunk_frames + (c.chunk_index - 1) * c.info.chunk_frames
    return c.step(poses_for(start, c.frames_needed()))


def torch_tensor_count() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


# ------------------------------------------------------------------------------------------------------------
# Equality with an in-process session
# ------------------------------------------------------------------------------------------------------------
def test_remote_session_equals_local_session():
    gen = make_generator(small=False)
    image, prompt, seed = png_bytes(180, 300, seed=1), "a sunny meadow", 7
    local = open_session(gen, Image.open(io.BytesIO(image)), prompt, seed=seed)      # what LocalClient does
    expected = []
    for _ in range(2):
        raw = local.next_raw_frames()
        expected.append(local.step(WALK[raw.start: raw.stop]))
    local.close()

    with serving(gen, limits=Limits()) as server, client(server) as c:
        info = c.open_session(image=image, prompt=prompt, seed=seed, model="tiny-world")
        assert (info.height, info.width, info.first_chunk_frames, info.chunk_frames) == (144, 256, 25, 24)
        for want in expected:
            got = step_walk(c)
            assert got.frames.dtype == np.uint8 and got.frames.shape == want.frames.shape
            assert np.array_equal(got.frames, want.frames)
            assert (got.chunk_index, got.raw_start) == (want.chunk_index, want.raw_frames.start)
            assert {"generate_ms", "decode_ms", "total_ms", "queue_ms", "round_trip_ms"} <= set(got.timings)
        assert c.chunk_index == 2 and c.frames_needed() == 24


def test_local_client_equals_remote_client_by_model_name():
    from explorer.client import LocalClient
    from runtime.decoder import load_autoencoder
    from runtime.weights import MissingWeightsError

    with contextlib.suppress(ImportError):
        import runtime.tiny_vae  # noqa: F401  (registers "tiny-world" until runtime.decoder does)
    try:
        load_autoencoder("tiny-world")
    except (ValueError, ImportError, MissingWeightsError) as exc:
        pytest.skip(f"no tiny-world autoencoder here yet ({str(exc)[:80]})")

    image = png_bytes(144, 256, seed=4)
    local = LocalClient("tiny-world")
    local.open_session(image=image, prompt="p", seed=3)
    want = [local.step(WALK[:25]), local.step(WALK[25:49])]
    local.close()
    server = WorldServer("tiny-world", ServerConfig(port=0))
    with server, client(server) as c:
        c.open_session(image=image, prompt="p", seed=3)
        for w in want:
            assert np.array_equal(step_walk(c).frames, w.frames)


def test_actions_snapshot_restore_and_jpeg(small_gen):
    with serving(small_gen, max_sessions=3) as server, client(server) as by_pose, client(server) as by_keys, \
            client(server, frames="jpeg", jpeg_quality=95) as by_jpeg:
        image = png_bytes(64, 96, seed=2)
        for c in (by_pose, by_keys, by_jpeg):
            c.open_session(image=image, prompt="x", seed=5)
        keys = "w-24,wd-24"
        poses = actions_to_c2w(keys)
        assert by_keys.actions_needed() == 24 and by_keys.frames_needed() == 25
        a0, k0, j0 = by_pose.step(poses[:25]), by_keys.step_actions("w-24"), by_jpeg.step(poses[:25])
        np.testing.assert_array_equal(by_keys.last_poses, poses[:25])
        assert np.array_equal(a0.frames, k0.frames)
        assert j0.frames.shape == a0.frames.shape and np.abs(j0.frames.astype(int) - a0.frames).mean() < 6
        snap_pose, snap_keys = by_pose.snapshot(), by_keys.snapshot()
        a1, k1 = by_pose.step(poses[25:49]), by_keys.step_actions("wd-24")
        assert by_keys.actions_needed() == 24
        np.testing.assert_array_equal(by_keys.last_poses, poses[25:49])
        assert np.array_equal(a1.frames, k1.frames)
        by_pose.restore(snap_pose)
        by_keys.restore(snap_keys)
        assert by_pose.chunk_index == 1 and by_keys.chunk_index == 1
        assert np.array_equal(by_pose.step(poses[25:49]).frames, a1.frames)          # a rewound walk replays
        assert np.array_equal(by_keys.step_actions("wd-24").frames, a1.frames)       # the integrator rewinds too
        with pytest.raises(ServerError) as err:
            by_keys.step(WALK[:24])                                               # a session cannot mix modes
        assert err.value.code == "bad_request"
        with pytest.raises(ServerError) as err:
            by_pose.restore("nope")
        assert err.value.code == "bad_request"
        assert server.session_count() == 3
    assert server.session_count() == 0


# ------------------------------------------------------------------------------------------------------------
# Abuse: typed errors or clean drops, while another session keeps working
# ------------------------------------------------------------------------------------------------------------
def test_bad_input_gets_typed_errors_and_other_session_keeps_working(small_gen):
    with serving(small_gen, token=TOKEN) as server, client(server, token=TOKEN) as good:
        good.open_session(image=png_bytes(64, 96), seed=1)
        step_walk(good)

        def still_good():
            assert step_walk(good).frames.shape[1:] == (64, 96, 3)

        # Handshake: wrong token, missing token, wrong version, no hello first, silence.
        for token in ("wrong-token-wrong-token-wrong", None):
            r = Raw(server, hello=False)
            r.send(hello_message(token))
            r.expect_error("unauthorized")
            r.expect_closed()
        with pytest.raises(ServerError) as err:
            client(server, token="x" * 30)
        assert err.value.code == "unauthorized"
        r = Raw(server, hello=False)
        r.send(hello_message(TOKEN, version=99))
        r.expect_error("version")
        r.expect_closed()
        r = Raw(server, hello=False)
        r.send({"type": "step", "actions": "w-1"})
        r.expect_error("bad_request")
        r.expect_closed()
        r = Raw(server, hello=False)                 # says nothing: dropped after handshake_timeout_s
        r.expect_error("bad_request")
        r.expect_closed()

        # After the handshake, body-level errors keep the connection.
        r = Raw(server, token=TOKEN)
        for body in (b"\xc1", b"\x93\x01\x02", b"\x81\xa4type\x07", b"\x82\xa4type\xa4step\xa4type", b"\xc7\x01\x05x",
                     b"\x81\xa4type\xa4open\x00extra", b"\x81\x01\xa4open"):
            r.send_body(body)
            r.expect_error("bad_request")
        r.send({"type": "teleport"})
        r.expect_error("unknown_type")
        r.send({"type": "hello", "version": 1})
        r.expect_error("bad_request")
        r.send(step_actions_message("w-24"))
        r.expect_error("bad_request")                                   # no session yet
        for bad_open in ({"type": "open", "seed": "7"}, {"type": "open", "seed": -1}, {"type": "open", "seed": True},
                         {"type": "open", "prompt": b"bytes"}, {"type": "open", "image": "not-bin"},
                         {"type": "open", "image": b"GIF89a...."}, {"type": "open", "image": b"\x89PNG\r\n\x1a\ngarbage"},
                         {"type": "open", "model": "another-model", "image": png_bytes(8, 8)},
                         {"type": "open", "settings": {"frames": "webp"}},
                         {"type": "open", "settings": {"jpeg_quality": 101}}, {"type": "open", "colour": 1}):
            r.send(bad_open)
            r.expect_error("bad_request")
        r.send(open_message(png_bytes(400, 400)))                       # 160k pixels > 120k
        r.expect_error("too_large")
        r.send(open_message(b"\x89PNG\r\n\x1a\n" + bytes(300 << 10)))    # 300 KiB > 256 KiB
        r.expect_error("too_large")
        r.send(open_message(png_bytes(64, 96), frames="raw"))
        assert r.recv()["type"] == "opened"
        nan = WALK[:25].copy()
        nan[3, 0, 0] = np.nan
        skew = WALK[:25].copy()
        skew[5, :3, :3] *= 2.0
        for bad_step in (step_poses_message(WALK[:24]), step_poses_message(nan), step_poses_message(skew),
                         step_poses_message(np.zeros((25, 4, 4))), step_actions_message("w-25"),
                         step_actions_message("q-24"), {"type": "step"},
                         {"type": "step", "poses": {"dtype": "f4", "shape": [25, 4, 4], "data": b""}},
                         {"type": "step", "poses": {"dtype": "f8", "shape": [25, 4, 4], "data": b"\0" * 7}},
                         {"type": "step", "poses": {"dtype": "f8", "shape": [25, 4, 3], "data": b"\0" * 2400}},
                         {"type": "step", "poses": step_poses_message(WALK[:25])["poses"], "actions": "w-24"}):
            r.send(bad_step)
            r.expect_error("bad_request")
        r.send(step_poses_message(WALK[:25]))
        assert r.recv()["type"] == "chunk"                              # still a working connection
        r.close()
        still_good()

        # Framing errors cannot be resynchronised: a typed error, then the server closes.
        r = Raw(server, token=TOKEN)
        r.send_bytes(HEADER.pack(TEST_LIMITS.max_message_bytes + 1))    # rejected before any body byte
        r.expect_error("too_large")
        r.expect_closed()
        r = Raw(server, token=TOKEN)
        r.send_bytes(HEADER.pack(0))
        r.expect_error("bad_request")
        r.expect_closed()
        r = Raw(server, token=TOKEN)
        r.send_bytes(HEADER.pack(100) + b"\x81" * 10)
        r.sock.shutdown(socket.SHUT_WR)                                 # truncated frame
        r.expect_error("bad_request")
        r.expect_closed()
        r = Raw(server, token=TOKEN)
        r.send_bytes(HEADER.pack(100) + b"\x81" * 10)                   # then stalls: read_timeout_s
        r.expect_error("bad_request")
        r.expect_closed()
        r = Raw(server, token=TOKEN)
        r.send_bytes(b"\x00\x00")                                       # half a header, then goes
        r.close()

        still_good()
        wait_for(lambda: server.connection_count() == 1, what="abusive connections to be dropped")
        assert server.session_count() == 1
        assert server.stats["error:internal"] == 0


def test_disconnect_mid_chunk_frees_the_session(small_gen):
    with serving(small_gen, max_sessions=4) as server, client(server) as keeper:
        keeper.open_session(image=png_bytes(64, 96), prompt="p", seed=1)
        with client(server) as warm:                       # one-time caches (prompt embedding, ...) settle
            warm.open_session(image=png_bytes(64, 96), prompt="p", seed=2)
            step_walk(warm)
        # a connection leaves the table only after its session's close() returned (the session leaves first)
        wait_for(lambda: server.connection_count() == 1, what="the warm-up connection to finish closing")
        tensors_before = torch_tensor_count()

        # 1) gone while its chunk computes: the chunk finishes, the reply fails, the session is closed.
        r = Raw(server)
        r.send(open_message(png_bytes(64, 96), "p", 3, frames="raw"))
        assert r.recv()["type"] == "opened"
        world = weakref.ref(server._sessions[max(server._sessions)].world)
        r.send(step_poses_message(WALK[:25]))
        time.sleep(0.1)
        r.close()
        wait_for(lambda: server.connection_count() == 1, what="the dropped connection to finish closing")
        gc.collect()
        assert world() is None, "the WorldSession of a dropped client is still referenced"

        # 2) gone while its request waits for the model (another client's chunk holds it): abandoned unrun.
        busy = Raw(server)
        busy.send(open_message(png_bytes(64, 96), "p", 4, frames="raw"))
        assert busy.recv()["type"] == "opened"
        r = Raw(server)
        r.send(open_message(png_bytes(64, 96), "p", 5, frames="raw"))
        assert r.recv()["type"] == "opened"
        steps = server.stats["steps"]
        busy.send(step_poses_message(WALK[:25]))
        wait_for(lambda: server._gate._free == 0, what="busy's chunk to start")
        r.send(step_poses_message(WALK[:25]))
        r.close()
        assert busy.recv()["type"] == "chunk"
        busy.close()
        wait_for(lambda: server.connection_count() == 1, what="the connections to finish closing")
        assert server.stats["abandoned"] == 1 and server.stats["steps"] == steps + 1

        # A serving thread may hold its last reply a moment after leaving the table; a leak stays for good.
        wait_for(lambda: torch_tensor_count() <= tensors_before, timeout=10.0,
                 what=f"the tensors of dropped sessions to be freed (more than {tensors_before} live)")
        step_walk(keeper)                                                    # the other session kept working
        assert server.stats["error:internal"] == 0


def test_max_sessions_and_connections_reply_busy(small_gen):
    with serving(small_gen, max_sessions=2, max_connections=3) as server:
        a, b, c = client(server), client(server), client(server)
        a.open_session(image=png_bytes(64, 96))
        b.open_session(image=png_bytes(64, 96))
        with pytest.raises(ServerError) as err:
            c.open_session(image=png_bytes(64, 96))
        assert err.value.code == "busy" and "2 sessions" in err.value.message
        with pytest.raises(ServerError) as err:
            client(server)                                                  # a 4th connection
        assert err.value.code == "busy"
        a.close()
        wait_for(lambda: server.session_count() == 1)
        c.open_session(image=png_bytes(64, 96))                             # the same connection retries
        assert step_walk(c).chunk_index == 0
        for x in (b, c):
            x.close()
        wait_for(lambda: server.session_count() == 0 and server.connection_count() == 0)


def test_soak_concurrent_clients(small_gen):
    duration, n_clients = 8.0, 4
    errors: list[BaseException] = []
    steps = [0] * n_clients

    def run(server, i: int) -> None:
        try:
            deadline = time.monotonic() + duration
            with client(server, frames="jpeg" if i % 2 else "raw") as c:
                while time.monotonic() < deadline:
                    c.open_session(image=png_bytes(64, 96, seed=i), prompt=f"client {i}", seed=i)
                    for k in range(3):
                        if time.monotonic() >= deadline and k:
                            break
                        result = step_walk(c)
                        assert result.frames.shape[1:] == (64, 96, 3) and result.chunk_index == k
                        steps[i] += 1
                        if k == 1 and i % 2:
                            sid = c.snapshot()
                            step_walk(c)
                            c.restore(sid)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    with serving(small_gen, max_sessions=n_clients) as server:
        threads = [threading.Thread(target=run, args=(server, i), daemon=True) for i in range(n_clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 60)
        assert not any(t.is_alive() for t in threads), "a soak client hung"
        assert not errors, errors
        assert all(n >= 1 for n in steps), steps                             # the FIFO gate is fair
        wait_for(lambda: server.session_count() == 0 and server.connection_count() == 0)
        assert not [k for k in server.stats if k.startswith("error:")], server.stats
        print(f"soak: {sum(steps)} chunks by {n_clients} clients in {time.monotonic() - t0:.1f} s: {steps}")


# ------------------------------------------------------------------------------------------------------------
# Shutdown, configuration, CLI
# ------------------------------------------------------------------------------------------------------------
def test_stop_finishes_the_chunk_in_flight_and_refuses_queued_ones(small_gen):
    server = WorldServer(small_gen, ServerConfig(port=0, max_sessions=4))
    server.start()
    a, b, idle = Raw(server), Raw(server), Raw(server)
    for i, r in enumerate((a, b)):
        r.send(open_message(png_bytes(64, 96), "p", i, frames="raw"))
        assert r.recv()["type"] == "opened"
    a.send(step_poses_message(WALK[:25]))
    wait_for(lambda: server._gate._free == 0, what="a's chunk to start")
    b.send(step_poses_message(WALK[:25]))
    wait_for(lambda: len(server._gate._queue) == 1, what="b's chunk to queue")
    stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 20.0})
    stopper.start()
    assert a.recv()["type"] == "chunk"                      # finished
    b.expect_error("busy")                                  # queued: refused, "shutting down"
    for r in (a, b, idle):
        r.expect_closed()
    stopper.join(30)
    assert not stopper.is_alive()
    assert server.session_count() == 0 and server.connection_count() == 0
    with pytest.raises(ConnectionRefusedError):                            # no longer listening
        socket.create_connection(server.address, timeout=2).close()


_SERVE_SCRIPT = """
import logging, sys
from runtime.server import ServerConfig, WorldServer, run_until_signal
from tests.unit.test_server import make_generator
server = WorldServer(make_generator(small=True), ServerConfig(port=0, token=sys.argv[1]))
run_until_signal(server, announce=lambda line: print(line, flush=True))
print("stopped", server.session_count(), flush=True)
"""


def test_sigterm_stops_gracefully():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_SCRIPT, TOKEN], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()                      # bounded by the process' own start-up
        assert "serving" in line, line + proc.stderr.read()
        host, port = parse_address(line.split(" on ")[1].split(" ")[0])
        with RemoteClient(host, port, token=TOKEN, frames="raw", timeout=IO_TIMEOUT) as c:
            c.open_session(image=png_bytes(64, 96))
            c._sock.sendall(pack(step_poses_message(WALK[:25])))   # a chunk in flight ...
            time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)                         # ... when the signal comes
            body = read_frame(c._sock, 1 << 30, idle_timeout=IO_TIMEOUT, frame_timeout=IO_TIMEOUT)
            assert unpack_body(body, **reply_unpack_limits(1 << 30))["type"] == "chunk"
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped 0" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_config_and_token_checks(tmp_path):
    with pytest.raises(ServerConfigError, match="without a token"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", token=TOKEN).token == TOKEN
    ServerConfig(host="localhost")
    ServerConfig(host="::1")
    with pytest.raises(ServerConfigError):
        ServerConfig(token="short")
    with pytest.raises(ServerConfigError):
        ServerConfig(max_sessions=0)
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n")
    f.chmod(0o600)
    assert read_token_file(f) == TOKEN
    f.write_text("two words here and there")
    with pytest.raises(ServerConfigError):
        read_token_file(f)
    with pytest.raises(ServerConfigError):
        read_token_file(tmp_path / "missing")


def test_cli_serve_refuses_public_host_without_token(capsys):
    from runtime.cli import build_parser, main

    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without a token" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--max-sessions", "3", "--token-file", "t"])
    assert (args.host, args.port, args.max_sessions, args.token_file) == ("127.0.0.1", 7717, 3, "t")


def test_parse_address():
    assert parse_address("gpu-box:9000") == ("gpu-box", 9000)
    assert parse_address("10.0.0.2") == ("10.0.0.2", 7717)
    assert parse_address("[::1]:81") == ("::1", 81)
    for bad in ("host:0", "host:x", ":80", "[::1", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_thin_client_imports_no_torch():
    code = "import sys, explorer.remote, explorer.protocol; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=60, check=False).returncode == 0
