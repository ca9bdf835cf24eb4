"""The SANA-WM remote protocol: framing, message schema and validation, shared by server and client.

Wire format (docs/protocol.md is the reference for other clients): every message is one frame, a 4-byte
big-endian unsigned length followed by that many bytes of one msgpack map. Binary payloads (images, poses,
frames) travel as msgpack `bin`; strings are UTF-8 `str`. Numbers arrays are
`{"dtype": "f8" | "u1", "shape": [...], "data": bin}`, little-endian, C order.

Decoding is defensive because the bytes come from the network: a frame's length is checked before its body
is read, `msgpack.unpackb` runs with `raw=False, strict_map_key=True` and explicit size limits, extension
types are refused, and every field is checked for type, range and size. Anything wrong raises the one typed
exception `ProtocolError(code, message)`, which the server turns into an error reply. No pickle, no eval.

numpy and msgpack only: no torch, so a thin client can import it.
"""
from __future__ import annotations

import math
import socket
import struct
import time
from dataclasses import dataclass

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change of the schema below."""
SUPPORTED_VERSIONS = (1,)
DEFAULT_PORT = 7717
HEADER = struct.Struct(">I")
"""Frame header: body length in bytes, unsigned 32-bit big-endian."""

ERROR_CODES = ("bad_request", "too_large", "unknown_type", "busy", "unauthorized", "version", "internal")
REQUEST_TYPES = ("hello", "open", "step", "snapshot", "restore", "close")
REPLY_TYPES = ("welcome", "opened", "chunk", "snapshotted", "restored", "closed", "error")
FRAME_ENCODINGS = ("jpeg", "raw")
SCHEMES = ("unified", "legacy")
"""Key layouts for action steps (`runtime.camera.SCHEMES`; repeated here so the client needs no runtime)."""
MAX_SEED = 2**32 - 1
"""Seeds are 0 .. 2**32 - 1 (the session derives per-chunk generator seeds from them)."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class ProtocolError(Exception):
    """A message that breaks the protocol, or an error reply; `code` is one of `ERROR_CODES`."""

    def __init__(self, code: str, message: str):
        if code not in ERROR_CODES:
            code, message = "internal", f"unknown error code {code!r}: {message}"
        super().__init__(message)
        self.code = code
        self.message = message

    def to_message(self) -> dict:
        return error_message(self.code, self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ServerError(ProtocolError):
    """The server answered a request with an error reply."""


class ConnectionClosed(Exception):
    """The peer closed the connection cleanly between two frames."""


@dataclass(frozen=True)
class Limits:
    """What a server accepts; sent to clients in `welcome`."""

    max_message_bytes: int = 32 * 1024 * 1024
    """Largest request frame body (the length prefix is checked before the body is read)."""
    max_image_bytes: int = 16 * 1024 * 1024
    """Largest encoded first image."""
    max_image_pixels: int = 36_000_000
    """Largest first image, width * height (checked from the header, before decoding)."""
    max_pose_frames: int = 1024
    """Most poses in one step."""
    max_text_chars: int = 4096
    """Longest prompt, action string, token or snapshot id."""

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_image_bytes", "max_image_pixels", "max_pose_frames",
                     "max_text_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.max_message_bytes > 2**32 - 1:
            raise ValueError("Limits.max_message_bytes must fit the 32-bit frame header")
        if self.max_image_bytes >= self.max_message_bytes:
            raise ValueError("Limits.max_image_bytes must be below max_message_bytes")

    def unpack_limits(self) -> dict:
        # A request holds at most one big bin (the image: its own limit is checked by `parse_request`, which
        # can then answer too_large); strings are short; arrays are shapes.
        return {"max_bin_len": self.max_message_bytes, "max_str_len": max(4 * self.max_text_chars, 1024),
                "max_array_len": 64, "max_map_len": 64}

    def to_dict(self) -> dict:
        return {"max_message_bytes": self.max_message_bytes, "max_image_bytes": self.max_image_bytes,
                "max_image_pixels": self.max_image_pixels, "max_pose_frames": self.max_pose_frames,
                "max_text_chars": self.max_text_chars}


DEFAULT_MAX_REPLY_BYTES = 1024 * 1024 * 1024
"""Clients accept replies up to 1 GiB (25 raw 720p frames are 69 MB)."""


def reply_unpack_limits(max_reply_bytes: int) -> dict:
    return {"max_bin_len": max_reply_bytes, "max_str_len": 1024 * 1024, "max_array_len": 65536,
            "max_map_len": 1024}


# ------------------------------------------------------------------------------------------------------------
# Framing
# ------------------------------------------------------------------------------------------------------------
def _reject_ext(code, data):
    raise ValueError("msgpack extension types are not part of the protocol")


def pack(msg: dict) -> bytes:
    """One frame: header + msgpack body (bin type for bytes)."""
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > 2**32 - 1:
        raise ProtocolError("too_large", f"message of {len(body)} bytes does not fit a frame")
    return HEADER.pack(len(body)) + body


def unpack_body(body: bytes, *, max_bin_len: int, max_str_len: int, max_array_len: int,
                max_map_len: int) -> dict:
    """Decode one frame body into a map with a str "type"; anything else raises ProtocolError."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True, timestamp=0,
                              max_bin_len=max_bin_len, max_str_len=max_str_len, max_array_len=max_array_len,
                              max_map_len=max_map_len, max_ext_len=0, ext_hook=_reject_ext)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types (ValueError, StackError, UnicodeError ...)
        raise ProtocolError("bad_request", f"undecodable msgpack body ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", f"a message must be a msgpack map, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", 'a message needs a str field "type"')
    return msg


def _recv_exactly(sock: socket.socket, n: int, deadline: float | None, *, started: bool) -> bytes:
    """Read n bytes before the deadline (monotonic seconds, None = no limit)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("bad_request", "timed out reading a frame")
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            raise ProtocolError("bad_request", "timed out reading a frame") from None
        if k == 0:
            if not started and got == 0:
                raise ConnectionClosed("peer closed the connection")
            raise ProtocolError("bad_request", f"truncated frame: connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket, max_bytes: int, *, idle_timeout: float | None,
               frame_timeout: float | None) -> bytes:
    """Read one frame body.

    Args:
        max_bytes: largest body accepted; a bigger length prefix raises `too_large` before the body is read.
        idle_timeout: seconds to wait for the first byte of the frame (None: forever); on expiry
            `TimeoutError` (the caller decides whether an idle peer is an error).
        frame_timeout: seconds for the whole rest of the frame once its first byte arrived (slow-loris guard).

    Raises:
        ConnectionClosed: the peer closed before the first byte.
        ProtocolError: oversize, truncated, empty or too slow frame (the stream cannot be resynchronised).
    """
    sock.settimeout(idle_timeout)
    try:
        first = sock.recv(1)
    except TimeoutError:
        raise TimeoutError("no request within the idle timeout") from None
    if not first:
        raise ConnectionClosed("peer closed the connection")
    deadline = None if frame_timeout is None else time.monotonic() + frame_timeout
    (length,) = HEADER.unpack(first + _recv_exactly(sock, 3, deadline, started=True))
    if length == 0:
        raise ProtocolError("bad_request", "empty frame")
    if length > max_bytes:
        raise ProtocolError("too_large", f"message of {length} bytes exceeds the limit of {max_bytes} bytes")
    return _recv_exactly(sock, length, deadline, started=True)


def send_frame(sock: socket.socket, msg: dict, timeout: float | None) -> None:
    data = pack(msg)
    sock.settimeout(timeout)
    sock.sendall(data)


# ------------------------------------------------------------------------------------------------------------
# Field validation
# ------------------------------------------------------------------------------------------------------------
def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message)


def _int(msg: dict, name: str, lo: int, hi: int, where: str) -> int:
    v = msg[name]
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(f"{where}.{name} must be an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise _bad(f"{where}.{name} must be in [{lo}, {hi}], got {v}")
    return v


def _str(msg: dict, name: str, max_chars: int, where: str, *, choices: tuple[str, ...] | None = None) -> str:
    v = msg[name]
    if not isinstance(v, str):
        raise _bad(f"{where}.{name} must be a str, got {type(v).__name__}")
    if len(v) > max_chars:
        raise _bad(f"{where}.{name} is longer than {max_chars} characters")
    if choices is not None and v not in choices:
        raise _bad(f"{where}.{name} must be one of {', '.join(choices)}, got {v[:40]!r}")
    return v


def _opt_str(msg: dict, name: str, max_chars: int, where: str) -> str | None:
    return None if msg.get(name) is None else _str(msg, name, max_chars, where)


def _fields(msg: dict, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    unknown = [k for k in msg if k not in required and k not in optional]
    if unknown:
        names = ", ".join(repr(k)[:40] for k in unknown[:4])
        raise _bad(f"{where}: unknown field(s) {names}")
    missing = [k for k in required if k not in msg]
    if missing:
        raise _bad(f"{where}: missing field(s) {', '.join(missing)}")


def _map(msg: dict, name: str, where: str) -> dict:
    v = msg[name]
    if not isinstance(v, dict):
        raise _bad(f"{where}.{name} must be a map, got {type(v).__name__}")
    return v


_DTYPES = {"f8": np.dtype("<f8"), "u1": np.dtype("u1")}


def encode_array(a: np.ndarray, dtype: str) -> dict:
    """{"dtype", "shape", "data"} of an array, little-endian C order."""
    arr = np.ascontiguousarray(a, dtype=_DTYPES[dtype])
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def decode_array(spec, where: str, *, dtype: str, ndim: int, max_dims: tuple[int, ...],
                 fixed: dict[int, int] | None = None) -> np.ndarray:
    """Validate an array map and view it as numpy (read-only copy-free view of the bytes).

    Args:
        dtype: the one dtype accepted ("f8" or "u1").
        ndim: exact rank; max_dims: largest size per axis; fixed: {axis: exact size}.
    """
    if not isinstance(spec, dict):
        raise _bad(f"{where} must be an array map, got {type(spec).__name__}")
    _fields(spec, where, ("dtype", "shape", "data"))
    _str(spec, "dtype", 8, where, choices=(dtype,))
    shape = spec["shape"]
    if not isinstance(shape, list) or len(shape) != ndim:
        raise _bad(f"{where}.shape must be a list of {ndim} ints")
    for axis, n in enumerate(shape):
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_dims[axis]:
            raise _bad(f"{where}.shape[{axis}] must be an int in [1, {max_dims[axis]}], got {str(n)[:40]}")
        if fixed and axis in fixed and n != fixed[axis]:
            raise _bad(f"{where}.shape[{axis}] must be {fixed[axis]}, got {n}")
    data = spec["data"]
    if not isinstance(data, bytes):
        raise _bad(f"{where}.data must be bin, got {type(data).__name__}")
    want = math.prod(shape) * _DTYPES[dtype].itemsize
    if len(data) != want:
        raise _bad(f"{where}.data holds {len(data)} bytes, shape {shape} of {dtype} needs {want}")
    return np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)


# ------------------------------------------------------------------------------------------------------------
# Requests (client -> server)
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    version: int
    token: str | None
    client: str


@dataclass(frozen=True)
class Open:
    image: bytes | None
    """PNG or JPEG bytes (None: the server's built-in start image)."""
    prompt: str
    seed: int
    model: str | None
    frames: str
    """Reply frame encoding: "jpeg" or "raw"."""
    jpeg_quality: int
    scheme: str
    """Key layout for action steps."""


@dataclass(frozen=True)
class Step:
    poses: np.ndarray | None
    """[n, 4, 4] float64 c2w (OpenCV axes) of the chunk's raw frames, or None for an action step."""
    actions: str | None
    """Action string (`runtime.camera.parse_actions`) covering the chunk's moving frames, or None."""


@dataclass(frozen=True)
class Snapshot:
    pass


@dataclass(frozen=True)
class Restore:
    id: str


@dataclass(frozen=True)
class Close:
    pass


Request = Hello | Open | Step | Snapshot | Restore | Close


def hello_message(token: str | None = None, client: str = "", version: int = PROTOCOL_VERSION) -> dict:
    msg = {"type": "hello", "version": version, "client": client}
    if token is not None:
        msg["token"] = token
    return msg


def open_message(image: bytes | None = None, prompt: str = "", seed: int = 0, model: str | None = None, *,
                 frames: str = "jpeg", jpeg_quality: int = 90, scheme: str = "unified") -> dict:
    return {"type": "open", "image": image, "prompt": prompt, "seed": seed, "model": model,
            "settings": {"frames": frames, "jpeg_quality": jpeg_quality, "scheme": scheme}}


def step_poses_message(c2w: np.ndarray) -> dict:
    return {"type": "step", "poses": encode_array(np.asarray(c2w, dtype=np.float64), "f8")}


def step_actions_message(actions: str) -> dict:
    return {"type": "step", "actions": actions}


def parse_request(msg: dict, limits: Limits = Limits()) -> Request:
    """Validate a decoded request map into its typed form (raises ProtocolError)."""
    kind = msg.get("type") if isinstance(msg, dict) else None
    if not isinstance(kind, str):
        raise _bad('a message must be a map with a str field "type"')
    if kind not in REQUEST_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r} "
                            f"(expected one of {', '.join(REQUEST_TYPES)})")
    n_text = limits.max_text_chars
    if kind == "hello":
        _fields(msg, "hello", ("type", "version"), ("token", "client"))
        version = msg["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= 2**31:
            raise _bad("hello.version must be a non-negative int")
        return Hello(version, _opt_str(msg, "token", n_text, "hello"), _opt_str(msg, "client", 200, "hello") or "")
    if kind == "open":
        _fields(msg, "open", ("type",), ("image", "prompt", "seed", "model", "settings"))
        image = msg.get("image")
        if image is not None:
            if not isinstance(image, bytes):
                raise _bad(f"open.image must be bin (PNG or JPEG bytes) or nil, got {type(image).__name__}")
            if len(image) > limits.max_image_bytes:
                raise ProtocolError("too_large", f"open.image of {len(image)} bytes exceeds the limit of "
                                    f"{limits.max_image_bytes} bytes")
            if not image.startswith((PNG_MAGIC, JPEG_MAGIC)):
                raise _bad("open.image must be a PNG or JPEG file")
        prompt = _str(msg, "prompt", n_text, "open") if msg.get("prompt") is not None else ""
        seed = _int(msg, "seed", 0, MAX_SEED, "open") if msg.get("seed") is not None else 0
        settings = _map(msg, "settings", "open") if msg.get("settings") is not None else {}
        _fields(settings, "open.settings", (), ("frames", "jpeg_quality", "scheme"))
        frames = _str(settings, "frames", 8, "open.settings", choices=FRAME_ENCODINGS) \
            if "frames" in settings else "jpeg"
        quality = _int(settings, "jpeg_quality", 1, 100, "open.settings") if "jpeg_quality" in settings else 90
        scheme = _str(settings, "scheme", 16, "open.settings", choices=SCHEMES) if "scheme" in settings else "unified"
        return Open(image, prompt, seed, _opt_str(msg, "model", 1024, "open"), frames, quality, scheme)
    if kind == "step":
        _fields(msg, "step", ("type",), ("poses", "actions"))
        has_poses, has_actions = msg.get("poses") is not None, msg.get("actions") is not None
        if has_poses == has_actions:
            raise _bad("step needs exactly one of poses or actions")
        if has_actions:
            return Step(None, _str(msg, "actions", n_text, "step"))
        poses = decode_array(msg["poses"], "step.poses", dtype="f8", ndim=3,
                             max_dims=(limits.max_pose_frames, 4, 4), fixed={1: 4, 2: 4})
        if not np.isfinite(poses).all():
            raise _bad("step.poses contain NaN or Inf")
        return Step(poses, None)
    if kind == "restore":
        _fields(msg, "restore", ("type", "id"))
        return Restore(_str(msg, "id", 64, "restore"))
    _fields(msg, kind, ("type",))
    return Snapshot() if kind == "snapshot" else Close()


# ------------------------------------------------------------------------------------------------------------
# Replies (server -> client)
# ------------------------------------------------------------------------------------------------------------
def error_message(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message[:1000]}


def session_dict(height: int, width: int, fps: int, model: str, first_chunk_frames: int,
                 chunk_frames: int) -> dict:
    return {"height": height, "width": width, "fps": fps, "model": model,
            "first_chunk_frames": first_chunk_frames, "chunk_frames": chunk_frames}


_MAX_SIDE = 16384
_MAX_FRAMES = 4096


def _frames_needed_fields(msg: dict, where: str) -> tuple[int, int]:
    return (_int(msg, "frames_needed", 1, _MAX_FRAMES, where), _int(msg, "actions_needed", 0, _MAX_FRAMES, where))


def parse_reply(msg: dict, expect: str) -> dict:
    """Validate a decoded reply of type `expect` and return it with arrays decoded.

    Raises:
        ServerError: the reply is an error reply (its code and message).
        ProtocolError: the reply is malformed or of another type.
    """
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "error":
        _fields(msg, "error", ("type", "code", "message"))
        code = _str(msg, "code", 32, "error")
        raise ServerError(code if code in ERROR_CODES else "internal", _str(msg, "message", 100_000, "error"))
    if kind != expect:
        raise ProtocolError("bad_request", f"expected a {expect!r} reply, got {str(kind)[:40]!r}")
    out = dict(msg)
    if kind == "welcome":
        _fields(msg, kind, ("type", "version", "server", "model", "max_sessions", "limits"),
                ("server_version", "device", "sessions", "encodings", "schemes"))
        _int(msg, "version", 0, 2**31, kind)
        _map(msg, "limits", kind)
        return out
    if kind == "opened":
        _fields(msg, kind, ("type", "session", "frames_needed", "actions_needed"))
        s = _map(msg, "session", kind)
        _fields(s, "opened.session", ("height", "width", "fps", "model", "first_chunk_frames", "chunk_frames"))
        for name in ("height", "width"):
            _int(s, name, 1, _MAX_SIDE, "opened.session")
        for name in ("fps", "first_chunk_frames", "chunk_frames"):
            _int(s, name, 1, _MAX_FRAMES, "opened.session")
        _str(s, "model", 1024, "opened.session")
        _frames_needed_fields(msg, kind)
        return out
    if kind == "chunk":
        _fields(msg, kind, ("type", "chunk_index", "raw_start", "frames", "timings", "frames_needed",
                            "actions_needed"), ("poses",))
        _int(msg, "chunk_index", 0, 2**62, kind)
        _int(msg, "raw_start", 0, 2**62, kind)
        _frames_needed_fields(msg, kind)
        timings = _map(msg, "timings", kind)
        if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                   for k, v in timings.items()):
            raise _bad("chunk.timings must map str to numbers")
        out["timings"] = {k: float(v) for k, v in timings.items()}
        out["frames"] = _parse_frames(_map(msg, "frames", kind))
        if msg.get("poses") is not None:
            out["poses"] = decode_array(msg["poses"], "chunk.poses", dtype="f8", ndim=3,
                                        max_dims=(_MAX_FRAMES, 4, 4), fixed={1: 4, 2: 4})
        return out
    if kind == "snapshotted":
        _fields(msg, kind, ("type", "id"))
        _str(msg, "id", 64, kind)
        return out
    if kind == "restored":
        _fields(msg, kind, ("type", "chunk_index", "frames_needed", "actions_needed"))
        _int(msg, "chunk_index", 0, 2**62, kind)
        _frames_needed_fields(msg, kind)
        return out
    if kind == "closed":
        _fields(msg, kind, ("type",))
        return out
    raise ProtocolError("bad_request", f"unknown reply type {str(kind)[:40]!r}")


def frames_message(frames: np.ndarray | None = None, jpegs: list[bytes] | None = None,
                   shape: tuple[int, ...] | None = None) -> dict:
    """The `frames` field of a chunk reply: raw uint8 [F, H, W, 3], or one JPEG per frame plus the shape."""
    if frames is not None:
        return {"encoding": "raw", **encode_array(frames, "u1")}
    return {"encoding": "jpeg", "shape": list(shape), "data": list(jpegs)}


def _parse_frames(spec: dict) -> dict:
    where = "chunk.frames"
    encoding = spec.get("encoding")
    if encoding == "raw":
        raw = {k: v for k, v in spec.items() if k != "encoding"}
        arr = decode_array(raw, where, dtype="u1", ndim=4, max_dims=(_MAX_FRAMES, _MAX_SIDE, _MAX_SIDE, 3),
                           fixed={3: 3})
        return {"encoding": "raw", "shape": tuple(arr.shape), "array": arr}
    if encoding == "jpeg":
        _fields(spec, where, ("encoding", "shape", "data"))
        shape = spec["shape"]
        limits = (_MAX_FRAMES, _MAX_SIDE, _MAX_SIDE, 3)
        if (not isinstance(shape, list) or len(shape) != 4 or shape[3] != 3
                or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= hi
                           for n, hi in zip(shape, limits))):
            raise _bad(f"{where}.shape must be [F, H, W, 3]")
        data = spec["data"]
        if not isinstance(data, list) or len(data) != shape[0] or not all(isinstance(b, bytes) for b in data):
            raise _bad(f"{where}.data must be a list of {shape[0]} JPEG bins")
        return {"encoding": "jpeg", "shape": tuple(shape), "jpegs": data}
    raise _bad(f"{where}.encoding must be one of {', '.join(FRAME_ENCODINGS)}")
