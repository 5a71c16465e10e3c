"""A metrics port that is already taken: every process and `linecam run` say so in one line, naming the key.

Real sockets and real processes: a listening socket holds the port, as a second line on the machine would.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from linecam.config import parse_config
from linecam.runtime.ports import busy_port_messages, metrics_port_claims


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other process listens on (bound on all addresses, as the metrics servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _config(tmp_path: Path, model_dir: Path, rt: Any, **sections: dict[str, Any]) -> Path:
    doc = rt.line_dict(model_dir, tmp_path / "run", cameras=2)
    doc["acquire"] = {"metrics_base_port": 0}
    for key, values in sections.items():
        doc.setdefault(key, {}).update(values)
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _one_clear_line(stderr: str, port: int, key: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert f"metrics port {port} is already in use" in lines[0] and key in lines[0], lines[0]
    assert "free port" in lines[0]  # what to do
    return lines[0]


def test_gate_with_a_busy_metrics_port_exits_with_one_line(tmp_path: Path, tiny_model_dir: Path, rt: Any,
                                                           held_port: int) -> None:
    config = _config(tmp_path, tiny_model_dir, rt, gate={"metrics_port": held_port})
    done = subprocess.run([sys.executable, "-m", "linecam", "gate", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env=rt.child_env())
    assert done.returncode == 2
    line = _one_clear_line(done.stderr, held_port, "gate.metrics_port")
    assert line.startswith("error: gate:") and str(config) in line


def test_acquire_with_a_busy_metrics_port_exits_with_one_line(tmp_path: Path, tiny_model_dir: Path, rt: Any,
                                                              held_port: int) -> None:
    config = _config(tmp_path, tiny_model_dir, rt, acquire={"metrics_base_port": held_port - 1})
    done = subprocess.run([sys.executable, "-m", "linecam", "acquire", "--config", str(config), "--camera", "cam2"],
                          capture_output=True, text=True, timeout=60, env=rt.child_env())
    assert done.returncode == 2
    _one_clear_line(done.stderr, held_port, "acquire.metrics_base_port (+1 for camera cam2)")


def test_run_checks_every_port_before_starting_any_child(tmp_path: Path, tiny_model_dir: Path, rt: Any,
                                                         held_port: int) -> None:
    config = _config(tmp_path, tiny_model_dir, rt, infer={"metrics_port": held_port})
    done = subprocess.run([sys.executable, "-m", "linecam", "run", "--config", str(config), "--duration", "5"],
                          capture_output=True, text=True, timeout=120, env=rt.child_env())
    assert done.returncode == 2
    assert "started " not in done.stdout, done.stdout  # no child was started
    line = _one_clear_line(done.stderr, held_port, "infer.metrics_port")
    assert line.startswith("error: infer:")


def test_port_claims_and_ports_shared_inside_one_config(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    doc = rt.line_dict(tiny_model_dir, tmp_path / "run", cameras=2)
    free = rt.free_port()
    doc["gate"]["metrics_port"] = free
    doc["infer"]["metrics_port"] = 0  # any free port: nothing to check
    doc["acquire"] = {"metrics_base_port": free - 1}  # cam2 lands on the gate's port
    cfg = parse_config(doc, "line.yaml", tmp_path)
    claims = metrics_port_claims(cfg)
    assert [(c.process, c.port) for c in claims] == [("gate", free), ("acquire@cam1", free - 1),
                                                     ("acquire@cam2", free)]
    messages = busy_port_messages(cfg)
    shared = [m for m in messages if "is also gate's" in m]
    assert len(shared) == 1 and shared[0].startswith(f"acquire@cam2: metrics port {free}")


def _outside_address() -> str | None:
    """This host's address on its network (not loopback), or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _reachable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == 0


@pytest.mark.parametrize("exposed", [False, True])
def test_metrics_listen_on_loopback_unless_the_config_says_otherwise(tmp_path: Path, exposed: bool) -> None:
    from linecam.config import parse_config
    from linecam.runtime.gate import GateService

    outside = _outside_address()
    if outside is None:
        pytest.skip("this host has no non-loopback IPv4 address to test from")
    doc = {"line": {"name": "t", "station": "s"}, "runtime_dir": str(tmp_path), "models": {"m": {"path": "x"}},
           "cameras": [{"name": "c", "source": {"kind": "synthetic"}, "regions": [{"name": "r", "model": "m"}]}],
           "gate": {"metrics_port": 0, "audit_log": str(tmp_path / "audit.jsonl")}}
    if exposed:
        doc["metrics_address"] = "0.0.0.0"
    gate = GateService(parse_config(doc, "line.yaml", tmp_path))
    try:
        assert _reachable("127.0.0.1", gate.metrics_port)
        assert _reachable(outside, gate.metrics_port) is exposed
    finally:
        gate.close()
