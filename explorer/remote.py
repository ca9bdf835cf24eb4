"""`RemoteClient`: a `WorldClient` that drives a session on a `sana-wm serve` server over TCP.

numpy, msgpack and (for JPEG frames) Pillow only: no torch, so a laptop can explore a world generated on a
remote GPU. One request is in flight at a time (the protocol is strictly request / reply per connection).
"""
from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np

from explorer.client import SessionInfo, StepResult, WorldClient
from explorer.protocol import (
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_PORT,
    FRAME_ENCODINGS,
    SCHEMES,
    ConnectionClosed,
    ProtocolError,
    hello_message,
    open_message,
    pack,
    parse_reply,
    read_frame,
    reply_unpack_limits,
    step_actions_message,
    step_poses_message,
    unpack_body,
)

CLIENT_NAME = "sana-wm-remote/1"


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """"HOST:PORT", "HOST", "[v6]:PORT" or "[v6]" -> (host, port)."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {address!r} (expected [IPv6]:PORT)")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad address {address!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad address {address!r}: port must be 1..65535")
    return host, int(port_text)


def connect(address: str, *, token: str | None = None, token_file: str | Path | None = None,
            **kwargs) -> RemoteClient:
    """A RemoteClient for "HOST:PORT" (what `sana-wm explore --connect` takes); the token comes from
    `token` or the first word of `token_file`."""
    if token is None and token_file is not None:
        token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
    host, port = parse_address(address)
    return RemoteClient(host, port, token=token, **kwargs)


class RemoteClient(WorldClient):
    """Drive one world session on a remote server.

    Args:
        host, port: the server's address.
        token: the server's shared secret (required when it listens beyond loopback).
        timeout: seconds to wait for a reply (a first chunk on a cold GPU can take a while).
        connect_timeout: seconds to connect and complete the handshake.
        frames: "jpeg" (small, lossy; the default for a network) or "raw" (exact uint8 frames).
        jpeg_quality: 1..100 when frames == "jpeg".
        scheme: key layout for `step_actions` ("unified" or "legacy").
        max_reply_bytes: largest reply accepted.

    Errors the server reports raise `explorer.protocol.ServerError` (a ProtocolError with `.code`:
    "busy", "bad_request", ...); a broken connection raises ConnectionError and the next call reconnects.
    """

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 300.0, *,
                 connect_timeout: float = 10.0, frames: str = "jpeg", jpeg_quality: int = 90,
                 scheme: str = "unified", max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES):
        if frames not in FRAME_ENCODINGS:
            raise ValueError(f"frames must be one of {', '.join(FRAME_ENCODINGS)}, got {frames!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        self.host, self.port, self.token = host, int(port), token
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.frames, self.jpeg_quality, self.scheme = frames, jpeg_quality, scheme
        self.max_reply_bytes = max_reply_bytes
        self.server_info: dict | None = None
        """The server's `welcome` (model, device, limits, ...)."""
        self.info: SessionInfo | None = None
        self.chunk_index = 0
        self._actions_needed = 0
        self.last_poses: np.ndarray | None = None
        """Poses the server integrated for the last `step_actions` chunk (None after a pose step)."""
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._connect()

    # ------------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        try:
            self.server_info = self._exchange(hello_message(self.token, CLIENT_NAME), "welcome",
                                              timeout=self.connect_timeout)
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        self.info = None

    def _exchange(self, msg: dict, expect: str, timeout: float | None = None) -> dict:
        """Send one request and read its reply; a transport failure drops the connection (its session is
        then closed by the server) and raises ConnectionError."""
        timeout = self.timeout if timeout is None else timeout
        sock = self._sock
        try:
            sock.settimeout(timeout)
            sock.sendall(pack(msg))
            body = read_frame(sock, self.max_reply_bytes, idle_timeout=timeout, frame_timeout=timeout)
        except (OSError, ConnectionClosed) as exc:
            self._disconnect()
            raise ConnectionError(f"lost the connection to {self.host}:{self.port}: {exc}") from exc
        except ProtocolError:
            self._disconnect()
            raise
        reply = unpack_body(body, **reply_unpack_limits(self.max_reply_bytes))
        try:
            return parse_reply(reply, expect)
        except ProtocolError as exc:
            if exc.code in ("unauthorized", "version") or type(exc) is ProtocolError:
                self._disconnect()      # the server closes after these; a malformed reply desynchronises
            raise

    def _request(self, msg: dict, expect: str) -> dict:
        with self._lock:
            if self._sock is None:
                self._connect()
            return self._exchange(msg, expect)

    def _need(self, reply: dict) -> None:
        self._actions_needed = reply["actions_needed"]

    # ------------------------------------------------------------------------------------------------------
    def open_session(self, *, image: bytes | None = None, prompt: str = "", seed: int = 0,
                     model: str | None = None) -> SessionInfo:
        limit = (self.server_info or {}).get("limits", {}).get("max_image_bytes")
        if image is not None and isinstance(limit, int) and len(image) > limit:
            raise ValueError(f"the image has {len(image)} bytes; this server takes at most {limit}")
        reply = self._request(open_message(image, prompt, seed, model, frames=self.frames,
                                           jpeg_quality=self.jpeg_quality, scheme=self.scheme), "opened")
        s = reply["session"]
        self.info = SessionInfo(s["height"], s["width"], s["fps"], s["model"], s["first_chunk_frames"],
                                s["chunk_frames"])
        self.chunk_index = 0
        self._need(reply)
        return self.info

    def actions_needed(self) -> int:
        """Frames of keys the next `step_actions` takes (the first chunk's frame 0 is the start pose)."""
        if self.info is None:
            raise RuntimeError("no open session")
        return self._actions_needed

    def step(self, c2w: np.ndarray) -> StepResult:
        if self.info is None:
            raise RuntimeError("no open session")
        return self._step(step_poses_message(c2w))

    def step_actions(self, actions: str) -> StepResult:
        """Generate the next chunk from held keys, e.g. "w-20,wd-4" covering `actions_needed()` frames; the
        server integrates the poses (`runtime.camera.PoseIntegrator`, the session's scheme) and sends them
        back: `last_poses` holds them ([n, 4, 4] float64 c2w of the chunk's raw frames)."""
        if self.info is None:
            raise RuntimeError("no open session")
        return self._step(step_actions_message(actions))

    def _step(self, msg: dict) -> StepResult:
        t0 = time.perf_counter()
        reply = self._request(msg, "chunk")
        frames = self._frames(reply["frames"])
        self.chunk_index = reply["chunk_index"] + 1
        self._need(reply)
        timings = dict(reply["timings"], round_trip_ms=1e3 * (time.perf_counter() - t0))
        self.last_poses = np.array(reply["poses"]) if "poses" in reply else None
        return StepResult(frames, reply["chunk_index"], reply["raw_start"], timings)

    def _frames(self, spec: dict) -> np.ndarray:
        shape = spec["shape"]
        if self.info is not None and tuple(shape[1:3]) != (self.info.height, self.info.width):
            raise ProtocolError("bad_request", f"frames of shape {shape} do not match the session's "
                                f"{self.info.height}x{self.info.width}")
        if spec["encoding"] == "raw":
            return np.array(spec["array"])          # own, writable copy
        from PIL import Image

        out = np.empty(shape, dtype=np.uint8)
        for i, data in enumerate(spec["jpegs"]):
            try:
                with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                    if img.size != (shape[2], shape[1]):
                        raise ProtocolError("bad_request", f"JPEG frame {i} is {img.size[0]}x{img.size[1]}")
                    out[i] = np.asarray(img.convert("RGB"))
            except ProtocolError:
                raise
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad input
                raise ProtocolError("bad_request", f"undecodable JPEG frame {i} ({type(exc).__name__})") from None
        return out

    def snapshot(self) -> str:
        if self.info is None:
            raise RuntimeError("no open session")
        return self._request({"type": "snapshot"}, "snapshotted")["id"]

    def restore(self, snapshot_id: str) -> None:
        if self.info is None:
            raise RuntimeError("no open session")
        reply = self._request({"type": "restore", "id": snapshot_id}, "restored")
        self.chunk_index = reply["chunk_index"]
        self._need(reply)

    def close(self) -> None:
        """End the session (the server frees its memory) and the connection; a later `open_session`
        reconnects."""
        with self._lock:
            if self._sock is not None and self.info is not None:
                try:
                    self._exchange({"type": "close"}, "closed", timeout=min(self.timeout, 30.0))
                except (ConnectionError, ProtocolError):
                    pass
            self._disconnect()
