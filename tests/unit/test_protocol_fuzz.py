"""Fuzz the protocol decoder: whatever arrives from the network, the only exception is ProtocolError.

Random bytes, random msgpack structures, near-valid requests with one field changed, and random byte streams
through the framing reader (over a real socketpair). Round trips check that valid messages survive intact.
"""
from __future__ import annotations

import socket
import threading

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.protocol import (
    HEADER,
    REQUEST_TYPES,
    ConnectionClosed,
    Hello,
    Limits,
    Open,
    ProtocolError,
    Restore,
    Step,
    frames_message,
    hello_message,
    open_message,
    pack,
    parse_reply,
    parse_request,
    read_frame,
    reply_unpack_limits,
    step_actions_message,
    step_poses_message,
    unpack_body,
)

LIMITS = Limits(max_message_bytes=1 << 16, max_image_bytes=1 << 12, max_pose_frames=64, max_text_chars=256)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# msgpack-representable values, including the awkward ones (bytes keys, huge ints, floats, nesting).
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=5)
                      | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), kids, max_size=5),
                      max_leaves=20)
field_names = st.sampled_from(["type", "version", "token", "client", "image", "prompt", "seed", "model", "settings",
                               "frames", "jpeg_quality", "scheme", "poses", "actions", "id", "dtype", "shape",
                               "data", "encoding", "code", "message"]) | st.text(max_size=6)


def _decode_and_parse(body: bytes):
    return parse_request(unpack_body(body, **LIMITS.unpack_limits()), LIMITS)


def _only_protocol_errors(fn, *args):
    try:
        fn(*args)
    except ProtocolError as exc:
        assert exc.code in ("bad_request", "too_large", "unknown_type", "version", "unauthorized", "busy",
                            "internal")
        assert isinstance(exc.message, str)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(body):
    _only_protocol_errors(_decode_and_parse, body)


@FUZZ
@given(values)
def test_random_structures_only_raise_protocol_error(value):
    _only_protocol_errors(_decode_and_parse, msgpack.packb(value, use_bin_type=True))
    _only_protocol_errors(parse_request, value, LIMITS)


@FUZZ
@given(st.sampled_from(REQUEST_TYPES), st.dictionaries(field_names, values, max_size=6))
def test_requests_with_random_fields_only_raise_protocol_error(kind, fields):
    msg = dict(fields, type=kind)
    _only_protocol_errors(_decode_and_parse, msgpack.packb(msg, use_bin_type=True))


def _valid_requests():
    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(5, 3))
    return [hello_message("t" * 20, "fuzz"), open_message(b"\x89PNG\r\n\x1a\n" + bytes(30), "p", 3, None),
            open_message(None, frames="raw"), step_poses_message(poses), step_actions_message("w-24"),
            {"type": "snapshot"}, {"type": "restore", "id": "s0"}, {"type": "close"}]


@FUZZ
@given(st.sampled_from(range(8)), st.data())
def test_near_valid_requests_only_raise_protocol_error(which, data):
    """A valid request with one field replaced, deleted or added, or its packed bytes cut or flipped."""
    msg = dict(_valid_requests()[which])
    action = data.draw(st.sampled_from(["replace", "delete", "add", "truncate", "flip"]))
    if action in ("replace", "delete", "add"):
        key = data.draw(st.sampled_from(sorted(msg)) if action != "add" else field_names)
        if action == "delete":
            msg.pop(key)
        else:
            msg[key] = data.draw(values)
        body = msgpack.packb(msg, use_bin_type=True)
    else:
        body = bytearray(msgpack.packb(msg, use_bin_type=True))
        i = data.draw(st.integers(0, len(body) - 1))
        if action == "truncate":
            body = body[:i]
        else:
            body[i] ^= data.draw(st.integers(1, 255))
        body = bytes(body)
    _only_protocol_errors(_decode_and_parse, body)


def _valid_replies():
    frames = np.zeros((2, 3, 4, 3), dtype=np.uint8)
    chunk = {"type": "chunk", "chunk_index": 0, "raw_start": 0, "frames": frames_message(frames=frames),
             "timings": {"total_ms": 1.0}, "frames_needed": 24, "actions_needed": 24}
    return {
        "welcome": {"type": "welcome", "version": 1, "server": "sana-wm", "model": "m", "max_sessions": 2,
                    "limits": Limits().to_dict(), "device": "cpu"},
        "opened": {"type": "opened", "session": {"height": 3, "width": 4, "fps": 16, "model": "m",
                                                 "first_chunk_frames": 25, "chunk_frames": 24},
                   "frames_needed": 25, "actions_needed": 24},
        "chunk": chunk,
        "chunk-jpeg": dict(chunk, frames=frames_message(jpegs=[b"\xff\xd8", b""], shape=(2, 3, 4, 3))),
        "snapshotted": {"type": "snapshotted", "id": "s0"},
        "restored": {"type": "restored", "chunk_index": 1, "frames_needed": 24, "actions_needed": 24},
        "closed": {"type": "closed"},
        "error": {"type": "error", "code": "busy", "message": "later"},
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_valid_replies())), st.data())
def test_replies_random_or_near_valid_only_raise_protocol_error(which, data):
    """Clients decode server replies just as carefully: random maps, and valid replies with one field (or one
    field of a nested map) replaced, deleted or added."""
    msg = _valid_replies()[which]
    expect = msg["type"] if which != "error" else "closed"
    action = data.draw(st.sampled_from(["random", "replace", "delete", "add", "nested"]))
    if action == "random":
        msg = dict(data.draw(st.dictionaries(field_names, values, max_size=8)), type=expect)
    elif action == "nested" and any(isinstance(v, dict) for v in msg.values()):
        key = data.draw(st.sampled_from(sorted(k for k, v in msg.items() if isinstance(v, dict))))
        inner = dict(msg[key])
        inner[data.draw(st.sampled_from(sorted(inner)) | field_names)] = data.draw(values)
        msg = dict(msg, **{key: inner})
    elif action in ("replace", "delete") or action == "nested":
        key = data.draw(st.sampled_from(sorted(msg)))
        msg = dict(msg)
        if action == "delete":
            msg.pop(key)
        else:
            msg[key] = data.draw(values)
    else:
        msg = dict(msg, **{data.draw(field_names): data.draw(values)})
    body = msgpack.packb(msg, use_bin_type=True)

    def decode():
        return parse_reply(unpack_body(body, **reply_unpack_limits(1 << 20)), expect)

    _only_protocol_errors(decode)


def _feed(data: bytes, max_bytes: int = 256):
    """read_frame over a real socketpair fed `data` then closed."""
    a, b = socket.socketpair()
    try:
        writer = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)))
        writer.start()
        frames = []
        try:
            while True:
                frames.append(read_frame(b, max_bytes, idle_timeout=5.0, frame_timeout=5.0))
        except ConnectionClosed:
            pass
        finally:
            writer.join(5)
        return frames
    finally:
        a.close()
        b.close()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_random_streams_through_the_frame_reader(data):
    _only_protocol_errors(_feed, data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=100), max_size=5))
def test_frame_reader_splits_valid_streams(bodies):
    stream = b"".join(HEADER.pack(len(x)) + x for x in bodies)
    assert _feed(stream) == bodies


def test_oversized_length_is_rejected_before_the_body():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(HEADER.pack(1 << 20))                     # no body follows: the reader must not wait for it
        with pytest.raises(ProtocolError) as err:
            read_frame(b, 1024, idle_timeout=5.0, frame_timeout=5.0)
        assert err.value.code == "too_large"


def test_unpack_limits_hold():
    big = msgpack.packb({"type": "open", "prompt": "x" * 5000}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        unpack_body(big, **LIMITS.unpack_limits())
    deep = b"\x91" * 5000 + b"\x00"
    with pytest.raises(ProtocolError):
        unpack_body(deep, **LIMITS.unpack_limits())
    ext = msgpack.packb(msgpack.ExtType(1, b"abc"))
    with pytest.raises(ProtocolError):
        unpack_body(ext, **LIMITS.unpack_limits())


@FUZZ
@given(st.integers(1, 64), st.integers(0, 2**32 - 1), st.text(max_size=50), st.binary(max_size=100),
       st.sampled_from(["jpeg", "raw"]), st.integers(1, 100), st.sampled_from(["unified", "legacy"]))
def test_valid_requests_round_trip(n, seed, prompt, tail, frames, quality, scheme):
    rng = np.random.default_rng(n)
    poses = rng.normal(size=(n, 4, 4))
    step = _decode_and_parse(pack(step_poses_message(poses))[4:])
    assert isinstance(step, Step) and step.actions is None and np.array_equal(step.poses, poses)
    image = b"\xff\xd8\xff" + tail
    o = _decode_and_parse(pack(open_message(image, prompt, seed, "m", frames=frames, jpeg_quality=quality,
                                            scheme=scheme))[4:])
    assert o == Open(image, prompt, seed, "m", frames, quality, scheme)
    assert _decode_and_parse(pack(hello_message(prompt or None))[4:]) == Hello(1, prompt or None, "")
    assert _decode_and_parse(pack({"type": "restore", "id": "s1"})[4:]) == Restore("s1")


def test_reply_round_trip():
    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    msg = {"type": "chunk", "chunk_index": 1, "raw_start": 25, "frames": frames_message(frames=frames),
           "timings": {"total_ms": 1.5}, "frames_needed": 24, "actions_needed": 24}
    reply = parse_reply(unpack_body(pack(msg)[4:], **reply_unpack_limits(1 << 20)), "chunk")
    assert np.array_equal(reply["frames"]["array"], frames) and reply["timings"] == {"total_ms": 1.5}
