"""One plug-in pattern for backends, camera sources and PLC links: named, imported on first use, never replaced."""

from __future__ import annotations

import subprocess
import sys

import pytest

from linecam.plugins import Registry


def test_registry_imports_on_first_use_and_refuses_a_second_target() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("path", "pathlib:PurePosixPath")
    reg.add("path", "pathlib:PurePosixPath")  # the same reference again is fine
    with pytest.raises(ValueError, match="widget 'path' is already registered"):
        reg.add("path", "pathlib:PureWindowsPath")
    import pathlib

    assert reg.get("path") is pathlib.PurePosixPath
    reg.add("join", "os.path:join")
    assert reg.names() == ["path", "join"] and set(reg.load_all()) == {"path", "join"}
    with pytest.raises(ValueError, match="unknown widget 'nope'; registered: join, path"):
        reg.get("nope")


def test_the_three_kinds_of_plugins_load_only_what_a_process_needs() -> None:
    code = """
import sys
from linecam.backends.base import BACKENDS
from linecam.config import LogPlcConfig, SyntheticSourceConfig
from linecam.runtime.plc import PLC_LINKS, create_plc_link
from linecam.runtime.sources import SOURCES, create_source

source = create_source(SyntheticSourceConfig())
link = create_plc_link(LogPlcConfig())
assert type(source).__name__ == "SyntheticSource" and type(link).__name__ == "LogLink"
assert BACKENDS.names() == ["torch-cpu", "onnxruntime", "openvino", "torch-cuda", "tensorrt"]
assert SOURCES.names() == ["synthetic", "genicam", "folder"] and PLC_LINKS.names() == ["log", "modbus"]
loaded = [m for m in ("harvesters", "genicam", "pymodbus", "torch", "linecam.backends.torch_cpu") if m in sys.modules]
assert not loaded, loaded
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
