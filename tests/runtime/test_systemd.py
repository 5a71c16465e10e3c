"""The systemd units: checked by systemd's own verifier on real unit files, plus the contract they carry."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICES = ("linecam-gate.service", "linecam-infer.service", "linecam-acquire@.service", "linecam-ui.service")
INSTALLED_BIN = "/opt/linecam/venv/bin/linecam"


def _parse(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> ordered (key, value) pairs; systemd allows repeated keys, so no dict per section."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: malformed line {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def _values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


@pytest.mark.parametrize("name", SERVICES)
def test_service_contract(name: str) -> None:
    unit = _parse(UNITS / name)
    one = {k: v for k, v in unit["Service"]}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main" and float(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure" and float(one["RestartSec"]) > 0
    assert _values(unit, "Unit", "StartLimitBurst"), "restart storms must be bounded"
    assert one["User"] == "linecam" and "DynamicUser" not in one  # DynamicUser breaks the shared ipc sockets
    assert one["RuntimeDirectory"] == "linecam" and one["RuntimeDirectoryPreserve"] == "yes"
    assert one["ExecStart"].startswith(INSTALLED_BIN + " ") and "--config /etc/linecam/line.yaml" in one["ExecStart"]
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("NoNewPrivileges", "yes")):
        assert one[key] == value, key
    assert "@system-service" in _values(unit, "Service", "SystemCallFilter")
    assert one["RestrictAddressFamilies"] and one["MemoryMax"]
    assert _values(unit, "Unit", "PartOf") == ["linecam.target"]
    assert _values(unit, "Install", "WantedBy") == ["linecam.target"]
    gpu = _values(unit, "Service", "DeviceAllow")
    if name == "linecam-infer.service":  # the GPU for infer only, and PrivateDevices would hide it
        assert one["DevicePolicy"] == "closed" and "PrivateDevices" not in one
        assert {g.split()[0] for g in gpu} == {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0"}
    else:
        assert one["PrivateDevices"] == "yes" and not gpu
    if name.startswith("linecam-acquire@"):
        assert re.search(r"acquire .*--camera %i\b", one["ExecStart"])


def test_target_pulls_in_gate_and_infer() -> None:
    target = _parse(UNITS / "linecam.target")
    wants = " ".join(_values(target, "Unit", "Wants")).split()
    assert {"linecam-gate.service", "linecam-infer.service"} <= set(wants)


@pytest.fixture()
def unit_copy(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at a real executable (verify checks that it exists)."""
    fake = tmp_path / "linecam"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    for path in UNITS.iterdir():
        text = path.read_text().replace(INSTALLED_BIN, str(fake))
        (tmp_path / path.name).write_text(text)
    return tmp_path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(unit_copy: Path) -> None:
    names = ["linecam-gate.service", "linecam-infer.service", "linecam-acquire@cam1.service", "linecam-ui.service",
             "linecam.target"]
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(unit_copy / n) for n in names]],
                          capture_output=True, text=True, timeout=120,
                          env={"SYSTEMD_UNIT_PATH": f"{unit_copy}:", "PATH": "/usr/bin:/bin"})
    output = done.stdout + done.stderr
    ours = [line for line in output.splitlines() if "linecam" in line]
    assert done.returncode == 0 and not ours, output
    # the verifier does look at our files: a broken copy is reported
    broken = unit_copy / "linecam-acquire@.service"
    broken.write_text(broken.read_text().replace("Type=notify", "Type=notifyy"))
    bad = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_copy / "linecam-acquire@cam1.service")],
                         capture_output=True, text=True, timeout=120,
                         env={"SYSTEMD_UNIT_PATH": f"{unit_copy}:", "PATH": "/usr/bin:/bin"})
    assert "notifyy" in bad.stdout + bad.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_security_exposure_is_reported(unit_copy: Path) -> None:
    """Reported, not asserted against a number: the score depends on the systemd version."""
    for name in ("linecam-gate.service", "linecam-infer.service", "linecam-acquire@cam1.service",
                 "linecam-ui.service"):
        done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_copy / name)],
                              capture_output=True, text=True, timeout=120,
                              env={"SYSTEMD_UNIT_PATH": f"{unit_copy}:", "PATH": "/usr/bin:/bin"})
        if "offline" in done.stderr and done.returncode != 0:
            pytest.skip(f"this systemd-analyze has no --offline: {done.stderr.strip()}")
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
        assert match, done.stdout + done.stderr
        print(f"{name}: exposure {match.group(1)}")
