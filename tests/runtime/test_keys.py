"""linecam keygen: real key files, permissions, refusal of open secrets, and a real CURVE handshake."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from linecam.config import CurveConfig, TransportConfig
from linecam.runtime.keys import CurveKeyError, check_key_dir, generate_keys, load_keypair
from linecam.runtime.transport import frame_pull_bind, frame_push


def test_keygen_cli_writes_modes_and_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    old = os.umask(0o000)  # a permissive umask must not leak into the secret files
    try:
        done = subprocess.run([sys.executable, "-m", "linecam", "keygen", "--out", str(out)],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert "server_secret:" in done.stdout and "client_public:" in done.stdout
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"server.key": 0o644, "server.key_secret": 0o600, "client.key": 0o644,
                     "client.key_secret": 0o600}
    assert check_key_dir(out) == []
    public, secret = load_keypair(out / "server.key_secret")
    assert len(public) == 40 and len(secret) == 40 and zmq.curve_public(secret) == public
    again = subprocess.run([sys.executable, "-m", "linecam", "keygen", "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_loader_refuses_secret_readable_by_others(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path)
    os.chmod(paths["client_secret"], 0o640)
    with pytest.raises(CurveKeyError, match="client.key_secret.*0640"):
        load_keypair(paths["client_secret"])
    assert any("0640" in p for p in check_key_dir(tmp_path))
    with pytest.raises(CurveKeyError, match="no secret key"):
        os.chmod(paths["server_public"], 0o600)
        load_keypair(paths["server_public"])


def test_generated_keys_authenticate_a_tcp_frame_link(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "good")
    curve = CurveConfig(**paths)
    ctx = zmq.Context()
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        cfg = TransportConfig(curve=curve)
        pull = frame_pull_bind(ctx, endpoint, cfg)
        push = frame_push(ctx, endpoint, cfg)
        pull.setsockopt(zmq.RCVTIMEO, 5000)
        push.send(b"hello")
        assert pull.recv() == b"hello"
        # a client with keys from another keygen run is refused by the server
        stranger = generate_keys(tmp_path / "other")
        bad = frame_push(ctx, endpoint, TransportConfig(curve=CurveConfig(
            server_public=paths["server_public"], client_secret=stranger["client_secret"])))
        # frame_push sets IMMEDIATE: with the handshake refused there is never a peer to send to
        time.sleep(0.5)
        with pytest.raises(zmq.Again):
            bad.send(b"intruder", zmq.NOBLOCK)
        pull.setsockopt(zmq.RCVTIMEO, 300)
        with pytest.raises(zmq.Again):
            pull.recv()
        for sock in (pull, push, bad):
            sock.close(0)
    finally:
        from linecam.runtime.transport import stop_authenticators

        stop_authenticators(ctx)
        ctx.term()
