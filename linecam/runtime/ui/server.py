"""``linecam ui --config FILE``: the operator page, served by Starlette on uvicorn.

Why this shape: one small static page with a little JavaScript, no front-end build. The page gets one JSON
snapshot of the line per change over server-sent events (at most one a second). A thread reads the gate's PUB
feed into :class:`~linecam.runtime.ui.state.LiveState`. Every route is a GET. Nothing here writes to the line,
the model or the PLC: the page reads the feed, the reject images and the audit log. With ``ui.token_file`` set,
every request must carry the token (``Authorization: Bearer`` or ``?token=``), or it gets 401.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import zmq

from linecam.config import ConfigError, LineConfig
from linecam.runtime import sdnotify
from linecam.runtime.feed import IMAGED_REASONS
from linecam.runtime.signals import stop_on_signals
from linecam.runtime.transport import feed_sub_connect
from linecam.runtime.ui.address import write_ui_url
from linecam.runtime.ui.state import LiveState

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: the search reads at most this many bytes from the end of the audit log (a shift's log can be large).
SEARCH_TAIL_BYTES = 64 * 2**20
SSE_PERIOD_S = 1.0

__all__ = ["build_app", "main", "read_token", "search_audit"]


def read_token(path: Path | None) -> str | None:
    """The access token from ``ui.token_file`` (stripped), None when not configured; ConfigError when unusable."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"ui.token_file {path}: cannot read it ({exc.strerror or exc})") from None
    if len(token) < 16:
        raise ConfigError(f"ui.token_file {path}: the token must have at least 16 characters")
    return token


def search_audit(path: Path, camera: str | None = None, seq: int | None = None, slot: int | None = None,
                 limit: int = 20, tail_bytes: int = SEARCH_TAIL_BYTES) -> dict[str, Any]:
    """Audit records of one product (camera and seq, or slot), newest first, from the end of the audit log."""
    if seq is None and slot is None:
        raise ValueError("give camera and seq, or slot")
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            start = max(0, size - tail_bytes)
            f.seek(start)
            data = f.read()
    except OSError as exc:
        return {"matches": [], "error": f"{path}: {exc.strerror or exc}"}
    lines = data.splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line may be cut
    matches = []
    for raw in reversed(lines):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if slot is not None and int(record.get("slot", -1)) & 0xFFFFFFFF != slot & 0xFFFFFFFF:
            continue
        if seq is not None and (record.get("seq") != seq or (camera and record.get("camera") != camera)):
            continue
        matches.append(record)
        if len(matches) >= limit:
            break
    return {"matches": matches, "searched_bytes": size - start, "whole_log": start == 0}


def build_app(cfg: LineConfig, state: LiveState, token: str | None) -> Any:
    """The Starlette application: the page, its live stream, the search, and the reject images."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    reject_dir = cfg.infer.reject_dir.resolve() if cfg.infer.reject_dir is not None else None
    audit_path = cfg.audit_log_path()

    class TokenCheck(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            if token is not None:
                given = request.query_params.get("token", "")
                header = request.headers.get("authorization", "")
                if header.lower().startswith("bearer "):
                    given = header[7:].strip()
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return PlainTextResponse("401: this page needs its access token", status_code=401)
            response: Response = await call_next(request)
            return response

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def config(request: Request) -> Response:
        return JSONResponse({"line": cfg.line.name, "station": cfg.line.station,
                             "cameras": [c.name for c in cfg.cameras], "deadline_ms": cfg.gate.deadline_ms,
                             "imaged_reasons": sorted(IMAGED_REASONS), "images": reject_dir is not None})

    async def snapshot(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            sent = -1
            last = 0.0
            while not await request.is_disconnected():
                now = time.monotonic()
                if state.version != sent or now - last > 1.0:
                    sent = state.version
                    last = now
                    yield b"data: " + json.dumps(state.snapshot()).encode() + b"\n\n"
                await asyncio.sleep(SSE_PERIOD_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def search(request: Request) -> Response:
        q = request.query_params
        try:
            seq = int(q["seq"]) if q.get("seq") else None
            slot = int(q["slot"]) if q.get("slot") else None
            result = await asyncio.to_thread(search_audit, audit_path, q.get("camera") or None, seq, slot)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result)

    async def image(request: Request) -> Response:
        if reject_dir is None:
            return PlainTextResponse("no reject images are saved on this line (infer.reject_dir)", status_code=404)
        target = (reject_dir / request.path_params["path"]).resolve()
        if not target.is_relative_to(reject_dir) or target.suffix not in (".png", ".json") or not target.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(target)

    routes = [Route("/", page), Route("/api/config", config), Route("/api/state", snapshot),
              Route("/api/events", events), Route("/api/search", search), Route("/img/{path:path}", image)]
    return Starlette(routes=routes, middleware=[Middleware(TokenCheck)])


def _feed_loop(cfg: LineConfig, state: LiveState, stop: threading.Event, started: Any) -> None:
    """Read the gate's feed into ``state``; say READY once the server listens; ping the watchdog."""
    ctx = zmq.Context()
    sock = feed_sub_connect(ctx, cfg.feed_endpoint(), cfg.transport)
    watchdog = sdnotify.Watchdog()
    ready = False
    try:
        while not stop.is_set():
            if not ready and started():
                sdnotify.ready("operator page up")
                ready = True
            if sock.poll(200):
                while True:
                    try:
                        data = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        message = json.loads(data)
                    except ValueError:
                        log.warning("feed: a message that is not JSON (%d bytes) ignored", len(data))
                        continue
                    if isinstance(message, dict):
                        state.apply(message)
            watchdog.tick()
    finally:
        sock.close(0)
        ctx.term()


def main(cfg: LineConfig) -> int:
    """``linecam ui --config FILE``: serve the page until SIGTERM/SIGINT."""
    import uvicorn

    if cfg.ui is None:
        raise ConfigError(f"{cfg.source_path or 'config'}: no ui section; add `ui: {{}}` to serve the operator page")
    ui = cfg.ui
    token = read_token(ui.token_file)
    state = LiveState([c.name for c in cfg.cameras], ui.window, ui.min_in_time_share)
    family = socket.AF_INET6 if ":" in ui.address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((ui.address, ui.port))
    except OSError as exc:
        listener.close()
        raise ConfigError(f"ui.port {ui.port} on {ui.address}: cannot listen ({exc.strerror or exc})") from None
    listener.listen(64)
    host, port = listener.getsockname()[:2]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{port}/"
    try:
        write_ui_url(cfg.runtime_path(), url)
    except (OSError, ConfigError) as exc:
        log.debug("ui url not written: %s", exc)
    server = uvicorn.Server(uvicorn.Config(build_app(cfg, state, token), log_level="warning",
                                           timeout_graceful_shutdown=2, lifespan="off"))
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_loop, args=(cfg, state, stop, lambda: server.started), name="ui-feed",
                              daemon=True)
    # uvicorn serves from a thread: in the main thread it would take over SIGTERM and re-raise it after its
    # shutdown, so a clean stop would end with -15. Here SIGTERM/SIGINT only ask it to finish.
    serving = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="ui-http")
    stop_on_signals("ui", lambda: setattr(server, "should_exit", True))
    feeder.start()
    serving.start()
    log.info("operator page on %s (token %s), feed %s", url, "required" if token else "not set", cfg.feed_endpoint())
    try:
        while serving.is_alive():
            serving.join(timeout=0.5)
    finally:
        stop.set()
        sdnotify.stopping()
        feeder.join(timeout=2)
    return 0
