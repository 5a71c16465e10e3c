"""ZeroMQ socket factory of the line: the only place socket options are chosen.

Why one factory: the safety of the line depends on socket options that are easy to forget at one call
site — a small high-water mark on frame sockets (the ZeroMQ default of 1000 would queue gigabytes of
frames and hide overload), ``LINGER=0`` (a dead peer must not hang shutdown), and CURVE on every TCP
endpoint (a worker on another host must not accept frames from, or send verdicts to, anybody).

Roles: the infer worker binds the frames PULL, each acquire connects a frames PUSH; the gate binds the
events PULL, acquires and the worker connect event PUSH sockets. The binder is the CURVE server and only
accepts clients whose public key is in the configured client public key file (ZAP authentication).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from linecam.config import CurveConfig, TransportConfig

log = logging.getLogger(__name__)

__all__ = [
    "CurveKeyError",
    "TransportError",
    "event_pull_bind",
    "feed_pub_bind",
    "feed_sub_connect",
    "event_push",
    "frame_pull_bind",
    "frame_push",
    "load_public_key",
    "load_secret_key",
    "stop_authenticators",
]


class TransportError(RuntimeError):
    """An endpoint that cannot be used as configured (e.g. tcp without CURVE)."""


class CurveKeyError(TransportError):
    """A CURVE key file that is missing, unreadable, or readable by others; the message names the file."""


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CurveKeyError(
            f"{path}: secret key file has mode {stat.S_IMODE(mode):04o}; it must be readable by its owner only "
            f"(chmod 600 {path})"
        )


def load_public_key(path: Path | None, what: str) -> bytes:
    """Read a zmq.auth certificate's public key (z85); ``what`` names the config field in errors."""
    if path is None:
        raise CurveKeyError(f"transport.curve.{what} is required for this endpoint")
    if not path.is_file():
        raise CurveKeyError(f"transport.curve.{what}: {path}: key file not found")
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"transport.curve.{what}: {path}: not a CURVE certificate ({exc})") from None
    return public


def load_secret_key(path: Path | None, what: str) -> tuple[bytes, bytes]:
    """Read (public, secret) from a zmq.auth secret certificate, refusing group/world-readable files."""
    if path is None:
        raise CurveKeyError(f"transport.curve.{what} is required for this endpoint")
    if not path.is_file():
        raise CurveKeyError(f"transport.curve.{what}: {path}: key file not found")
    _check_private(path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"transport.curve.{what}: {path}: not a CURVE certificate ({exc})") from None
    if not secret:
        raise CurveKeyError(f"transport.curve.{what}: {path}: holds no secret key (is it the public file?)")
    return public, secret


def _needs_curve(endpoint: str) -> bool:
    return endpoint.startswith(("tcp://", "ws://", "wss://"))


def _check_endpoint(endpoint: str, cfg: TransportConfig) -> CurveConfig | None:
    if not endpoint or "://" not in endpoint:
        raise TransportError(f"endpoint {endpoint!r} is not a ZeroMQ endpoint (ipc://PATH or tcp://HOST:PORT)")
    if _needs_curve(endpoint):
        if cfg.curve is None:
            raise TransportError(
                f"endpoint {endpoint} is network-reachable and needs transport.curve (see `linecam keygen`)"
            )
        return cfg.curve
    return None


class _AllowedClients:
    """ZAP credentials callback: accept exactly the configured client public keys."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        if not ok:
            log.warning("CURVE client refused (unknown public key %s)", key.decode(errors="replace"))
        return ok


_auth_lock = threading.Lock()
_authenticators: dict[int, tuple[ThreadAuthenticator, _AllowedClients]] = {}


def _authorize(ctx: zmq.Context[Any], client_public: bytes) -> None:
    """Start (once per context) a ZAP handler that accepts ``client_public``."""
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is None:
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("linecam.zap"))
            auth.start()
            allowed = _AllowedClients()
            auth.configure_curve_callback(domain="*", credentials_provider=allowed)
            entry = (auth, allowed)
            _authenticators[id(ctx)] = entry
        entry[1].keys.add(client_public)


def stop_authenticators(ctx: zmq.Context[Any] | None = None) -> None:
    """Stop the ZAP handler thread of ``ctx`` (or of every context); call before ``ctx.term()``."""
    with _auth_lock:
        ids = [id(ctx)] if ctx is not None else list(_authenticators)
        for key in ids:
            entry = _authenticators.pop(key, None)
            if entry is not None:
                entry[0].stop()


def _make_ipc_dir(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        parent = Path(endpoint[len("ipc://"):]).parent
        if str(parent) and not parent.exists():
            os.makedirs(parent, mode=0o750, exist_ok=True)


def _new_socket(ctx: zmq.Context[Any], kind: int, options: dict[int, int]) -> zmq.Socket[Any]:
    """A socket with LINGER 0 and ``options`` set before connect/bind (HWMs apply only to later pipes)."""
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in options.items():
            sock.setsockopt(opt, value)
    except BaseException:
        sock.close(0)
        raise
    return sock


def _server_socket(
    ctx: zmq.Context[Any], kind: int, endpoint: str, cfg: TransportConfig, options: dict[int, int]
) -> zmq.Socket[Any]:
    curve = _check_endpoint(endpoint, cfg)
    sock = _new_socket(ctx, kind, options)
    try:
        if curve is not None:
            public, secret = load_secret_key(curve.server_secret, "server_secret")
            client_public = load_public_key(curve.client_public, "client_public")
            _authorize(ctx, client_public)
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_server = True
        _make_ipc_dir(endpoint)
        sock.bind(endpoint)
    except BaseException:
        sock.close(0)
        raise
    return sock


def _client_socket(
    ctx: zmq.Context[Any], kind: int, endpoint: str, cfg: TransportConfig, options: dict[int, int]
) -> zmq.Socket[Any]:
    curve = _check_endpoint(endpoint, cfg)
    sock = _new_socket(ctx, kind, options)
    try:
        if curve is not None:
            server_public = load_public_key(curve.server_public, "server_public")
            public, secret = load_secret_key(curve.client_secret, "client_secret")
            sock.curve_serverkey = server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(endpoint)
    except BaseException:
        sock.close(0)
        raise
    return sock


def frame_push(ctx: zmq.Context[Any], endpoint: str, cfg: TransportConfig) -> zmq.Socket[Any]:
    """Acquire's frame sender: PUSH, small SNDHWM, LINGER 0, connects. Send with ``zmq.NOBLOCK``;
    ``zmq.Again`` means the worker is full (overload), never queue further."""
    # IMMEDIATE: no queueing towards a worker that is not connected yet (that is overload too).
    return _client_socket(ctx, zmq.PUSH, endpoint, cfg, {zmq.SNDHWM: cfg.sndhwm, zmq.IMMEDIATE: 1})


def frame_pull_bind(ctx: zmq.Context[Any], endpoint: str, cfg: TransportConfig,
                    max_message_bytes: int | None = None) -> zmq.Socket[Any]:
    """The worker's frame receiver: PULL, small RCVHWM, LINGER 0, binds.

    ``max_message_bytes`` sets ZeroMQ's ``MAXMSGSIZE``: a peer that sends a larger message part is disconnected
    before the message is allocated in Python (it reconnects; an honest acquire never sends one)."""
    options: dict[int, int] = {zmq.RCVHWM: cfg.rcvhwm}
    if max_message_bytes is not None:
        options[zmq.MAXMSGSIZE] = int(max_message_bytes)
    return _server_socket(ctx, zmq.PULL, endpoint, cfg, options)


def event_push(ctx: zmq.Context[Any], endpoint: str, cfg: TransportConfig) -> zmq.Socket[Any]:
    """Announcement/overload/verdict sender towards the gate: PUSH, connects.

    Events are small and each one matters (a lost announcement is a product without verdict), so the
    event HWM is generous; ``LINGER`` stays 0 so a process never hangs on exit when the gate is gone.
    """
    return _client_socket(ctx, zmq.PUSH, endpoint, cfg, {zmq.SNDHWM: 10_000})


def feed_pub_bind(ctx: zmq.Context[Any], endpoint: str, cfg: TransportConfig) -> zmq.Socket[Any]:
    """The gate's live feed for the operator page: PUB, binds. A PUB socket drops what a slow subscriber cannot
    take (high-water mark) instead of blocking the sender."""
    return _server_socket(ctx, zmq.PUB, endpoint, cfg, {zmq.SNDHWM: 2000})


def feed_sub_connect(ctx: zmq.Context[Any], endpoint: str, cfg: TransportConfig) -> zmq.Socket[Any]:
    """The operator page's side of the feed: SUB to everything, connects."""
    sock = _client_socket(ctx, zmq.SUB, endpoint, cfg, {zmq.RCVHWM: 10_000})
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


def event_pull_bind(ctx: zmq.Context[Any], endpoint: str, cfg: TransportConfig) -> zmq.Socket[Any]:
    """The gate's event receiver: PULL, binds."""
    return _server_socket(ctx, zmq.PULL, endpoint, cfg, {zmq.RCVHWM: 100_000})
