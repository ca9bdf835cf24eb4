"""`sana-wm serve`: world sessions over TCP for remote explorers (protocol: `explorer.protocol`, docs/protocol.md).

Threads, not asyncio: every model call (encode, denoise, decode) is a long blocking torch call, so an event
loop would hand each one to an executor anyway. One thread per connection reads a request, runs it, writes
the reply, so a connection has at most one request in flight (backpressure is TCP's: a client that pipelines
waits in its own socket buffer). Model work goes through `_Gate`, a FIFO of `model_slots` slots (1 by default:
two chunks interleaved on one GPU would both finish later, and a FIFO keeps clients fair); image decoding and
JPEG encoding run outside it. Sessions are capped by `max_sessions` (each holds its caches on the GPU),
connections by `max_connections`, the gate queue by `queue_timeout_s`; beyond any of them the reply is "busy".

A session belongs to its connection: when the client goes (cleanly, by reset, by timeout, mid-chunk), the
chunk in flight finishes (torch cannot be interrupted) or, if it had not started, is abandoned; then the
session is closed and its caches freed.
"""
from __future__ import annotations

import collections
import contextlib
import hmac
import io
import ipaddress
import itertools
import logging
import select
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import runtime
from explorer.protocol import (
    FRAME_ENCODINGS,
    PROTOCOL_VERSION,
    SCHEMES,
    SUPPORTED_VERSIONS,
    Close,
    ConnectionClosed,
    Hello,
    Limits,
    Open,
    ProtocolError,
    Restore,
    Snapshot,
    Step,
    encode_array,
    error_message,
    frames_message,
    parse_request,
    read_frame,
    send_frame,
    session_dict,
    unpack_body,
)
from runtime.camera import PoseIntegrator, parse_actions, validate_c2w

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


class ServerConfigError(ValueError):
    """The server cannot start with these settings (one line, shown to the user)."""


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def read_token_file(path: str | Path) -> str:
    """The shared secret of a token file (surrounding whitespace stripped; at least 16 characters)."""
    p = Path(path).expanduser()
    try:
        token = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"--token-file {p}: cannot read it ({exc})") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ServerConfigError(f"--token-file {p}: the token must be one word of at least {MIN_TOKEN_CHARS} "
                                "characters (e.g. `python -c 'import secrets; print(secrets.token_hex(24))'`)")
    if p.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", p)
    return token


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback requires `token`."""
    port: int = 0
    """TCP port (0: any free port, see `WorldServer.address`)."""
    max_sessions: int = 2
    """Open sessions at once on this GPU (each holds its caches); one more gets "busy"."""
    max_connections: int = 16
    """Connections at once (sessions or not); one more gets "busy" and is closed."""
    model_slots: int = 1
    """Model calls that run at once; the rest wait in FIFO order."""
    token: str | None = None
    """Shared secret clients must send in `hello` (None: no check; only allowed on loopback)."""
    limits: Limits = field(default_factory=Limits)
    """Message, image and pose limits."""
    handshake_timeout_s: float = 10.0
    """Seconds a new connection has to send `hello`."""
    idle_timeout_s: float | None = 900.0
    """Seconds a connection may wait between requests before it is dropped (None: forever)."""
    read_timeout_s: float = 60.0
    """Seconds to receive a whole request once its first byte arrived."""
    write_timeout_s: float = 120.0
    """Seconds to hand a reply to a client that does not read."""
    queue_timeout_s: float = 300.0
    """Seconds a request waits for the model before it gets "busy"."""
    max_snapshots: int = 8
    """Snapshots kept per session (oldest dropped first; each holds a copy of the caches)."""
    shutdown_grace_s: float = 60.0
    """Seconds `stop` waits for chunks in flight."""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ServerConfigError(f"port must be in [0, 65535], got {self.port!r}")
        for name in ("max_sessions", "max_connections", "model_slots", "max_snapshots"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ServerConfigError(f"{name} must be a positive int, got {value!r}")
        for name in ("handshake_timeout_s", "read_timeout_s", "write_timeout_s", "queue_timeout_s",
                     "shutdown_grace_s"):
            if not getattr(self, name) > 0:
                raise ServerConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ServerConfigError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
        if self.token is None and not is_loopback(self.host):
            raise ServerConfigError(f"refusing to listen on {self.host} without a token: pass --token-file "
                                    "(or listen on 127.0.0.1 and tunnel)")


class _Gate:
    """A FIFO semaphore: waiters get a slot in arrival order, or give up at a timeout or when closed."""

    def __init__(self, slots: int):
        self._cond = threading.Condition()
        self._free = slots
        self._queue: collections.deque = collections.deque()
        self._closed = False

    def acquire(self, timeout: float) -> bool:
        me = object()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._queue.append(me)
            try:
                while not self._closed and not (self._free > 0 and self._queue[0] is me):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                if self._closed:
                    return False
                self._free -= 1
                return True
            finally:
                self._queue.remove(me)
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter with a refusal (shutdown); slots already held stay held until released."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Abandoned(Exception):
    """The client left while its request waited for the model: the request is dropped."""


@dataclass
class _Live:
    """One open session and what the server keeps beside it."""

    id: int
    world: object
    """The runtime.session.WorldSession."""
    settings: Open
    integrator: dict
    """PoseIntegrator.state() for action steps."""
    mode: str | None = None
    """"poses" or "actions" once the first step fixed it."""
    snapshots: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    ids: itertools.count = field(default_factory=itertools.count)


class _Conn:
    def __init__(self, sock: socket.socket, addr, cid: int):
        self.sock = sock
        self.addr = addr
        self.id = cid
        self.lock = threading.Lock()
        self.idle = False
        self.session: _Live | None = None
        self.thread: threading.Thread | None = None


def _peer_gone(sock: socket.socket) -> bool:
    """True when the peer closed or reset its side (a pending request or nothing pending is not gone)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.settimeout(0)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True


class WorldServer:
    """Serves world sessions of one generator to TCP clients.

    Args:
        generator: a ready `runtime.pipeline.Generator`, or a model name for `load_generator`.
        config: listening address, limits and timeouts.
        device: where a named model is loaded.
        model_name: the name clients may ask for (default: the name given, or the generator's config name).
        fast: the fast path (`runtime.pipeline.FastPath`) a named model is loaded on.
    """

    def __init__(self, generator, config: ServerConfig | None = None, *, device: str = "cpu",
                 model_name: str | None = None, fast=None):
        from runtime.pipeline import load_generator

        config = config or ServerConfig()
        fast_path = fast if isinstance(generator, str) else getattr(generator, "fast", None)
        if fast_path is not None and fast_path.cuda_graphs and config.model_slots > 1:
            # a CUDA-graph capture must not overlap another thread's chunk on the device
            raise ValueError(f"CUDA graphs need model_slots = 1 (chunks one at a time), got {config.model_slots}")
        if isinstance(generator, str):
            model_name = model_name or generator
            generator = load_generator(generator, device=device, fast=fast)
        self.gen = generator
        self.config = config
        self.model_name = model_name or generator.config.name
        self.device = str(next(generator.model.parameters()).device)
        self._token = None if self.config.token is None else self.config.token.encode("utf-8")
        self._gate = _Gate(self.config.model_slots)
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        self._sessions: dict[int, _Live] = {}
        self._reserved = 0
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._accept_thread: threading.Thread | None = None
        self.stats: collections.Counter = collections.Counter()
        """connections, steps, abandoned, and error:<code> counts (for logs and tests)."""

    # ------------------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Bind, listen and accept in a background thread; returns (host, port)."""
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.create_server((host, port), family=family, backlog=64)
        except OSError as exc:
            raise ServerConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._listener.settimeout(0.2)
        self._address = self._listener.getsockname()[:2]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="sana-wm-accept", daemon=True)
        self._accept_thread.start()
        log.info("listening on %s:%d", *self.address)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on (the real port when started with port 0)."""
        return self._address

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: stop accepting, refuse queued requests, let chunks in flight finish (up to
        `grace_s`), then close every session. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        deadline = time.monotonic() + (self.config.shutdown_grace_s if grace_s is None else grace_s)
        self._gate.close()                 # first: nothing queued may start from now on
        if self._accept_thread is not None:
            self._accept_thread.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            with conn.lock:
                if conn.idle:
                    # SHUT_RD wakes the blocked recv but still lets a request that just arrived be answered.
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RD)
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))
        late = [c for c in conns if c.thread is not None and c.thread.is_alive()]
        for conn in late:
            log.warning("connection %s still busy after the grace period; dropping it", conn.addr)
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        log.info("stopped (%d sessions left to close by their threads)", self.session_count())

    def __enter__(self):
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------------------------------------------
    # Connections
    # ------------------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)     # e.g. EMFILE: back off instead of spinning
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                full = len(self._conns) >= self.config.max_connections
                if not full:
                    conn = _Conn(sock, addr, next(self._ids))
                    self._conns[conn.id] = conn
                    self.stats["connections"] += 1
            if full:
                self._count("busy")
                threading.Thread(target=self._refuse, args=(sock,), daemon=True).start()
                continue
            conn.thread = threading.Thread(target=self._serve, args=(conn,), name=f"sana-wm-conn-{conn.id}",
                                           daemon=True)
            conn.thread.start()

    def _refuse(self, sock: socket.socket) -> None:
        self._send_fatal(sock, error_message("busy", f"this server takes at most {self.config.max_connections} "
                                             "connections; try again later"))

    def _count(self, code: str) -> None:
        with self._lock:
            self.stats[f"error:{code}"] += 1

    def _send_fatal(self, sock: socket.socket, msg: dict) -> None:
        """Send a last error reply and close, draining a little of what the peer still sends so the close is
        not a reset that could destroy the reply before the peer reads it."""
        try:
            send_frame(sock, msg, timeout=2.0)
            sock.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + 0.5, 0
            while drained < 1 << 20 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        finally:
            sock.close()

    def _serve(self, conn: _Conn) -> None:
        cfg, limits = self.config, self.config.limits
        fatal: dict | None = None
        try:
            fatal = self._handshake(conn)
            if fatal is not None:
                return
            while True:
                try:
                    body = self._read(conn, limits.max_message_bytes, cfg.idle_timeout_s, cfg.read_timeout_s)
                except (ConnectionClosed, TimeoutError):
                    break
                except ProtocolError as exc:       # the stream cannot be resynchronised: answer and close
                    self._count(exc.code)
                    fatal = exc.to_message()
                    break
                try:
                    request = parse_request(unpack_body(body, **limits.unpack_limits()), limits)
                    reply = self._dispatch(conn, request)
                except ProtocolError as exc:
                    self._count(exc.code)
                    reply = exc.to_message()
                except _Abandoned:
                    with self._lock:
                        self.stats["abandoned"] += 1
                    break
                except Exception as exc:
                    log.exception("internal error serving %s", conn.addr)
                    self._count("internal")
                    reply = error_message("internal", f"{type(exc).__name__}: {str(exc)[:300]}")
                send_frame(conn.sock, reply, cfg.write_timeout_s)
        except OSError as exc:
            log.debug("connection %s dropped: %s", conn.addr, exc)
        finally:
            self._drop(conn)
            if fatal is not None:
                self._send_fatal(conn.sock, fatal)
            else:
                with contextlib.suppress(OSError):
                    conn.sock.close()

    def _handshake(self, conn: _Conn) -> dict | None:
        """Read `hello`, check version and token, send `welcome`; returns the fatal error reply instead."""
        cfg, limits = self.config, self.config.limits
        try:
            body = self._read(conn, min(limits.max_message_bytes, 65536), cfg.handshake_timeout_s,
                              cfg.handshake_timeout_s)
            hello = parse_request(unpack_body(body, **limits.unpack_limits()), limits)
            if not isinstance(hello, Hello):
                raise ProtocolError("bad_request", "the first message must be hello")
            if hello.version not in SUPPORTED_VERSIONS:
                raise ProtocolError("version", f"protocol version {hello.version} is not supported (this server "
                                    f"speaks {', '.join(map(str, SUPPORTED_VERSIONS))})")
            if self._token is not None:
                given = (hello.token or "").encode("utf-8")
                if not hmac.compare_digest(given, self._token):
                    raise ProtocolError("unauthorized", "wrong or missing token")
        except ConnectionClosed:
            return None
        except TimeoutError:
            self._count("bad_request")
            return error_message("bad_request", f"no hello within {cfg.handshake_timeout_s:g} s")
        except ProtocolError as exc:
            self._count(exc.code)
            if exc.code == "unauthorized":
                log.warning("refused %s: %s", conn.addr, exc.message)
            return exc.to_message()
        send_frame(conn.sock, self._welcome(), cfg.write_timeout_s)
        log.info("client %s connected (%r)", conn.addr, hello.client)
        return None

    def _read(self, conn: _Conn, max_bytes: int, idle_timeout: float | None, frame_timeout: float) -> bytes:
        """Read one request frame while marked idle, so that `stop` may wake the read (as a clean close)."""
        with conn.lock:
            if self._stopping.is_set():
                raise ConnectionClosed("the server is stopping")
            conn.idle = True
        try:
            return read_frame(conn.sock, max_bytes, idle_timeout=idle_timeout, frame_timeout=frame_timeout)
        finally:
            with conn.lock:
                conn.idle = False

    def _welcome(self) -> dict:
        return {"type": "welcome", "version": PROTOCOL_VERSION, "server": "sana-wm",
                "server_version": runtime.__version__, "model": self.model_name, "device": self.device,
                "max_sessions": self.config.max_sessions, "sessions": self.session_count(),
                "limits": self.config.limits.to_dict(), "encodings": list(FRAME_ENCODINGS),
                "schemes": list(SCHEMES)}

    def _drop(self, conn: _Conn) -> None:
        self._close_session(conn)
        with self._lock:
            self._conns.pop(conn.id, None)

    # ------------------------------------------------------------------------------------------------------
    # Requests
    # ------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _model_slot(self, conn: _Conn):
        """Hold one model slot; "busy" when the queue times out or the server stops, `_Abandoned` when the
        client left while waiting (its request would be computed for nobody)."""
        t0 = time.perf_counter()
        if not self._gate.acquire(self.config.queue_timeout_s):
            if self._stopping.is_set():
                raise ProtocolError("busy", "the server is shutting down")
            raise ProtocolError("busy", f"the model stayed busy for {self.config.queue_timeout_s:g} s; try again")
        try:
            if _peer_gone(conn.sock):
                raise _Abandoned
            yield 1e3 * (time.perf_counter() - t0)
        finally:
            self._gate.release()

    def _dispatch(self, conn: _Conn, req) -> dict:
        if isinstance(req, Hello):
            raise ProtocolError("bad_request", "hello was already received on this connection")
        if isinstance(req, Open):
            return self._open(conn, req)
        live = conn.session
        if live is None:
            raise ProtocolError("bad_request", "no open session: send open first")
        if isinstance(req, Step):
            return self._step(conn, live, req)
        if isinstance(req, Snapshot):
            return self._snapshot(conn, live)
        if isinstance(req, Restore):
            return self._restore(conn, live, req)
        if isinstance(req, Close):
            self._close_session(conn)
            return {"type": "closed"}
        raise ProtocolError("unknown_type", f"unhandled request {type(req).__name__}")

    def _needed(self, live: _Live) -> dict:
        n = len(live.world.next_raw_frames())
        # Frame 0 of the walk is the start image at the identity pose: only the frames after it move.
        return {"frames_needed": n, "actions_needed": n - 1 if live.world.chunk_index == 0 else n}

    def _decode_image(self, data: bytes | None):
        from PIL import Image

        if data is None:
            from runtime.cli import DEFAULT_IMAGE

            if not DEFAULT_IMAGE.is_file():
                raise ProtocolError("bad_request", "send open.image: this server has no built-in start image")
            data = DEFAULT_IMAGE.read_bytes()
        limit = self.config.limits.max_image_pixels
        try:
            image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
        except Exception:  # noqa: BLE001 - Pillow raises many types on bad input
            raise ProtocolError("bad_request", "open.image is not a readable PNG or JPEG") from None
        width, height = image.size
        if width * height > limit:
            raise ProtocolError("too_large", f"open.image is {width}x{height} pixels; the limit is {limit} pixels")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad input
            raise ProtocolError("bad_request", f"cannot decode open.image ({type(exc).__name__})") from None
        return image

    def _open(self, conn: _Conn, req: Open) -> dict:
        from runtime.pipeline import open_session

        if req.model is not None and req.model != self.model_name:
            raise ProtocolError("bad_request", f"this server serves {self.model_name!r}, not {req.model[:200]!r}")
        image = self._decode_image(req.image)
        self._close_session(conn)          # re-open replaces the connection's session, as LocalClient does
        with self._lock:
            if len(self._sessions) + self._reserved >= self.config.max_sessions:
                raise ProtocolError("busy", f"all {self.config.max_sessions} sessions of this server are in use; "
                                    "try again later")
            self._reserved += 1
        try:
            with self._model_slot(conn), torch.no_grad():
                world = open_session(self.gen, image, req.prompt, seed=req.seed)
            cfg = self.gen.config
            live = _Live(conn.id, world, req, PoseIntegrator(scheme=req.scheme, fps=cfg.fps).state())
            with self._lock:
                self._sessions[conn.id] = live
            conn.session = live
        finally:
            with self._lock:
                self._reserved -= 1
        info = session_dict(cfg.height, cfg.width, cfg.fps, self.model_name, len(world.next_raw_frames()),
                            cfg.chunk_size * cfg.frames_per_latent)
        log.info("session opened for %s (seed %d, %d live)", conn.addr, req.seed, self.session_count())
        return {"type": "opened", "session": info, **self._needed(live)}

    def _step(self, conn: _Conn, live: _Live, req: Step) -> dict:
        world = live.world
        needed = self._needed(live)
        integrator = live.integrator
        if req.poses is not None:
            mode = "poses"
            if req.poses.shape[0] != needed["frames_needed"]:
                raise ProtocolError("bad_request", f"chunk {world.chunk_index} needs poses for "
                                    f"{needed['frames_needed']} raw frames, got {req.poses.shape[0]}")
            try:
                c2w = validate_c2w(req.poses, source="step.poses", min_frames=1)
            except ValueError as exc:
                raise ProtocolError("bad_request", str(exc)) from None
        else:
            mode = "actions"
            try:
                keys = parse_actions(req.actions)
            except ValueError as exc:
                raise ProtocolError("bad_request", f"step.actions: {exc}") from None
            if len(keys) != needed["actions_needed"]:
                raise ProtocolError("bad_request", f"chunk {world.chunk_index} needs actions for "
                                    f"{needed['actions_needed']} frames, got {len(keys)}")
            integ = PoseIntegrator.from_state(live.integrator)
            poses = [integ.pose] if world.chunk_index == 0 else []
            poses += [integ.step(k) for k in keys]
            c2w, integrator = np.stack(poses), integ.state()
        if live.mode not in (None, mode):
            raise ProtocolError("bad_request", f"this session is driven by {live.mode}; a session cannot mix "
                                "poses and actions")
        t0 = time.perf_counter()
        with self._model_slot(conn) as queue_ms:
            try:
                with torch.no_grad():
                    result = world.step(c2w)
            except Exception:
                # The session's caches may be half written: close it rather than serve a corrupt walk.
                log.exception("step failed for %s; closing its session", conn.addr)
                self._close_session(conn)
                raise ProtocolError("internal", "the chunk failed and the session was closed") from None
        live.mode, live.integrator = mode, integrator
        t1 = time.perf_counter()
        frames = self._encode_frames(np.ascontiguousarray(result.frames), live.settings)
        timings = dict(result.timings, queue_ms=queue_ms, encode_ms=1e3 * (time.perf_counter() - t1),
                       server_ms=1e3 * (time.perf_counter() - t0))
        with self._lock:
            self.stats["steps"] += 1
        reply = {"type": "chunk", "chunk_index": result.chunk_index, "raw_start": result.raw_frames.start,
                 "frames": frames, "timings": timings, **self._needed(live)}
        if mode == "actions":
            reply["poses"] = encode_array(c2w, "f8")
        return reply

    @staticmethod
    def _encode_frames(frames: np.ndarray, settings: Open) -> dict:
        if settings.frames == "raw":
            return frames_message(frames=frames)
        from PIL import Image

        jpegs = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=settings.jpeg_quality)
            jpegs.append(buf.getvalue())
        return frames_message(jpegs=jpegs, shape=frames.shape)

    def _snapshot(self, conn: _Conn, live: _Live) -> dict:
        with self._model_slot(conn):
            snap = live.world.snapshot()
        sid = f"s{next(live.ids)}"
        live.snapshots[sid] = (snap, live.integrator, live.mode)
        while len(live.snapshots) > self.config.max_snapshots:       # bound the memory snapshots hold
            live.snapshots.popitem(last=False)
        return {"type": "snapshotted", "id": sid}

    def _restore(self, conn: _Conn, live: _Live, req: Restore) -> dict:
        if req.id not in live.snapshots:
            raise ProtocolError("bad_request", f"unknown snapshot {req.id[:64]!r} (at most "
                                f"{self.config.max_snapshots} are kept)")
        snap, integrator, mode = live.snapshots[req.id]
        with self._model_slot(conn):
            live.world.restore(snap)
        live.integrator, live.mode = integrator, mode
        return {"type": "restored", "chunk_index": live.world.chunk_index, **self._needed(live)}

    def _close_session(self, conn: _Conn) -> None:
        live, conn.session = conn.session, None
        if live is None:
            return
        with self._lock:
            self._sessions.pop(conn.id, None)
        live.snapshots.clear()
        try:
            live.world.close()
        except Exception:
            log.exception("closing the session of %s failed", conn.addr)
        log.info("session of %s closed (%d live)", conn.addr, self.session_count())


# ------------------------------------------------------------------------------------------------------------
def run_until_signal(server: WorldServer, *, announce=print) -> None:
    """Start `server` (if needed), serve until SIGINT / SIGTERM, then stop gracefully (main thread only).

    A second signal during the graceful stop gets the default behaviour (Ctrl-C twice quits at once)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        log.warning("signal %d: shutting down", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if server._listener is None:
            server.start()
        host, port = server.address
        announce(f"sana-wm: serving {server.model_name} on {host}:{port} ({server.device}, at most "
                 f"{server.config.max_sessions} sessions); Ctrl-C stops")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()


def serve_command(*, host: str, port: int, model: str, device: str, max_sessions: int,
                  token_file: str | None, fast=None) -> int:
    """`sana-wm serve`: check the settings, load the model (on the fast path `fast`, a
    runtime.pipeline.FastPath), serve until a signal."""
    token = read_token_file(token_file) if token_file else None
    config = ServerConfig(host=host, port=port, max_sessions=max_sessions, token=token)   # checks host/token
    server = WorldServer(model, config, device=device, fast=fast)
    run_until_signal(server)
    return 0
