"""Real ZeroMQ sockets from the factory: ipc and tcp+CURVE round trips, refused keys, refused key files,
and the frame socket's bounded queue (NOBLOCK send raises zmq.Again instead of queueing without bound)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from linecam.config import CurveConfig, TransportConfig
from linecam.runtime.messages import FrameHeader, decode_frame, encode_frame
from linecam.runtime.transport import (
    CurveKeyError,
    TransportError,
    event_pull_bind,
    event_push,
    frame_pull_bind,
    frame_push,
    stop_authenticators,
)


def _frame(seq: int, size: int = 32) -> list:
    image = np.full((size, size, 3), seq % 256, np.uint8)
    header = FrameHeader(camera="cam1", seq=seq, slot=seq, t_capture_ns=1, shape=image.shape, dtype="uint8",
                         pixel_format="RGB8")
    return encode_frame(header, image)


def _keys(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    stop_authenticators(context)
    context.destroy(linger=0)  # closes sockets a failed test left open; term() alone would wait forever


def test_ipc_frame_round_trip_with_small_hwm(ctx: zmq.Context, short_dir: Path) -> None:
    cfg = TransportConfig(sndhwm=3, rcvhwm=2)
    endpoint = f"ipc://{short_dir / 'sub' / 'frames.sock'}"
    pull = frame_pull_bind(ctx, endpoint, cfg)
    push = frame_push(ctx, endpoint, cfg)
    assert push.getsockopt(zmq.SNDHWM) == 3 and pull.getsockopt(zmq.RCVHWM) == 2
    assert push.getsockopt(zmq.LINGER) == 0 and pull.getsockopt(zmq.LINGER) == 0
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    push.send_multipart(_frame(7), copy=False)
    header, image = decode_frame(pull.recv_multipart(copy=False))
    assert (header.camera, header.seq) == ("cam1", 7) and int(image[5, 5, 1]) == 7
    push.close()
    pull.close()


def test_frame_push_raises_again_instead_of_queueing(ctx: zmq.Context, short_dir: Path) -> None:
    cfg = TransportConfig(sndhwm=2, rcvhwm=2)
    endpoint = f"ipc://{short_dir / 'frames.sock'}"
    pull = frame_pull_bind(ctx, endpoint, cfg)  # never reads: a stuck worker
    push = frame_push(ctx, endpoint, cfg)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    push.send_multipart(_frame(0, size=512), copy=False)  # blocking once: waits for the connection
    sent = 1
    with pytest.raises(zmq.Again):
        for seq in range(1, 500):
            push.send_multipart(_frame(seq, size=512), flags=zmq.NOBLOCK, copy=False)  # 768 KiB each
            sent += 1
    assert 2 <= sent < 100  # bounded: HWMs plus kernel socket buffers, not 500 frames
    push.close()
    pull.close()


def test_tcp_without_curve_is_refused(ctx: zmq.Context) -> None:
    with pytest.raises(TransportError, match="needs transport.curve"):
        frame_pull_bind(ctx, "tcp://127.0.0.1:*", TransportConfig())


def _curve_pair(ctx: zmq.Context, tmp_path: Path, client_dir: str = "client") -> tuple[zmq.Socket, zmq.Socket]:
    server_pub, server_sec = _keys(tmp_path / "server", "server")
    client_pub, client_sec = _keys(tmp_path / "client", "client")
    other_pub, other_sec = _keys(tmp_path / "other", "client")
    server_cfg = TransportConfig(curve=CurveConfig(server_secret=server_sec, client_public=client_pub))
    pull = event_pull_bind(ctx, "tcp://127.0.0.1:*", server_cfg)
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    secret = client_sec if client_dir == "client" else other_sec
    client_cfg = TransportConfig(curve=CurveConfig(server_public=server_pub, client_secret=secret))
    push = event_push(ctx, endpoint, client_cfg)
    return pull, push


def test_tcp_curve_round_trip(ctx: zmq.Context, tmp_path: Path) -> None:
    pull, push = _curve_pair(ctx, tmp_path)
    push.send(b'{"hello": 1}')
    assert pull.poll(5000) and pull.recv() == b'{"hello": 1}'
    push.close()
    pull.close()


def test_tcp_curve_unknown_client_key_gets_nothing_through(ctx: zmq.Context, tmp_path: Path) -> None:
    pull, push = _curve_pair(ctx, tmp_path, client_dir="other")
    push.send(b"intruder")
    assert pull.poll(1500) == 0  # the ZAP handler refused the handshake: no message arrives
    push.close()
    pull.close()


def test_tcp_curve_wrong_server_key_gets_nothing_through(ctx: zmq.Context, tmp_path: Path) -> None:
    server_pub, server_sec = _keys(tmp_path / "server", "server")
    client_pub, client_sec = _keys(tmp_path / "client", "client")
    fake_pub, _ = _keys(tmp_path / "fake", "server")
    pull = frame_pull_bind(ctx, "tcp://127.0.0.1:*",
                           TransportConfig(curve=CurveConfig(server_secret=server_sec, client_public=client_pub)))
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    push = frame_push(ctx, endpoint, TransportConfig(curve=CurveConfig(server_public=fake_pub,
                                                                       client_secret=client_sec)))
    with pytest.raises(zmq.Again):  # IMMEDIATE: no completed connection, so nothing is even queued
        push.send_multipart(_frame(1), flags=zmq.NOBLOCK)
    assert pull.poll(1000) == 0
    push.close()
    pull.close()


def test_secret_key_with_loose_permissions_is_refused(ctx: zmq.Context, tmp_path: Path) -> None:
    server_pub, server_sec = _keys(tmp_path / "server", "server")
    client_pub, _ = _keys(tmp_path / "client", "client")
    server_sec.chmod(0o644)
    cfg = TransportConfig(curve=CurveConfig(server_secret=server_sec, client_public=client_pub))
    with pytest.raises(CurveKeyError, match="0644") as err:
        event_pull_bind(ctx, "tcp://127.0.0.1:*", cfg)
    assert str(server_sec) in str(err.value)


def test_missing_or_public_only_key_file_is_named(ctx: zmq.Context, tmp_path: Path) -> None:
    server_pub, _ = _keys(tmp_path / "server", "server")
    client_pub, _ = _keys(tmp_path / "client", "client")
    server_pub.chmod(0o600)
    cfg = TransportConfig(curve=CurveConfig(server_secret=server_pub, client_public=client_pub))
    with pytest.raises(CurveKeyError, match="holds no secret key"):
        event_pull_bind(ctx, "tcp://127.0.0.1:*", cfg)
    cfg = TransportConfig(curve=CurveConfig(server_secret=tmp_path / "nope", client_public=client_pub))
    with pytest.raises(CurveKeyError, match="server_secret.*key file not found"):
        event_pull_bind(ctx, "tcp://127.0.0.1:*", cfg)
