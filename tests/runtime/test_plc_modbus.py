"""ModbusLink against a real Modbus/TCP server in another process (the PLC simulator), read back with
pymodbus and with the independent ``mbpoll`` client; heartbeat toggling; reconnect after a server restart."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pymodbus.client import ModbusTcpClient

from linecam.config import ModbusPlcConfig
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.plc import registers as R
from linecam.runtime.plc.base import PlcResult
from linecam.runtime.plc.log import LogLink
from linecam.runtime.plc.modbus import ModbusLink

BASE = 100
HEARTBEAT = 99


class Sim:
    """The PLC simulator process on a fixed port (so it can be restarted on the same address)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "linecam.runtime.plc.sim_server", "--port",
                                      str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "plc-sim listening on ..."
        end = time.monotonic() + 20
        while time.monotonic() < end:  # the line is printed just before the server binds
            client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=0.5, retries=0)
            ok = client.connect()
            client.close()
            if ok:
                return
            time.sleep(0.05)
        raise AssertionError("PLC simulator did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def sim(rt) -> Iterator[Sim]:
    server = Sim(rt.free_port())
    server.start()
    yield server
    server.stop()


def _read(port: int, address: int, count: int) -> list[int]:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
    assert client.connect()
    try:
        return list(client.read_holding_registers(address, count=count, device_id=1).registers)
    finally:
        client.close()


def _link(port: int, metrics: LineMetrics | None = None, period: float = 0.1) -> ModbusLink:
    cfg = ModbusPlcConfig(port=port, base_register=BASE, heartbeat_register=HEARTBEAT, heartbeat_period_s=period,
                          timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.4)
    return ModbusLink(cfg, metrics)


def _result(seq: int, decision: str = "reject", reason: str = "anomaly", score: float = 0.7312) -> PlcResult:
    return PlcResult(slot=70_000 + seq, decision=decision, reason=reason, score=score, camera="cam2",
                     camera_index=1, seq=seq)


def test_result_block_read_back_with_pymodbus_and_mbpoll(sim: Sim, rt) -> None:
    metrics = LineMetrics()
    link = _link(sim.port, metrics)
    rt.wait_for(lambda: link.connected, what="link connected")
    link.send(_result(1, "accept", "ok", 0.01))
    link.send(_result(2))
    assert link.wait_idle()
    regs = _read(sim.port, BASE, R.BLOCK_SIZE)
    assert regs == [1, 70_002 & 0xFFFF, 2, 1, 7312, 1, 2, 0]  # slot hi/lo, reject, anomaly, score, cam, n, toggle
    assert link.writes == 2 and link.errors == 0
    assert metrics.plc_writes._value.get() == 2 and metrics.plc_connected._value.get() == 1

    mbpoll = shutil.which("mbpoll")
    if mbpoll is None:
        link.close()
        pytest.skip("mbpoll not installed (apt-get install mbpoll) — pymodbus read-back checked above")
    out = subprocess.run([mbpoll, "-m", "tcp", "-p", str(sim.port), "-0", "-1", "-r", str(BASE), "-c", "8",
                          "127.0.0.1"], capture_output=True, text=True, timeout=20, check=True).stdout
    values = {int(k.strip("[]:")): int(v) for k, v in (ln.split() for ln in out.splitlines()
                                                      if ln.startswith("[") and len(ln.split()) == 2)}
    assert [values[BASE + i] for i in range(8)] == regs
    out32 = subprocess.run([mbpoll, "-m", "tcp", "-p", str(sim.port), "-0", "-1", "-B", "-t", "4:int", "-r",
                            str(BASE), "-c", "1", "127.0.0.1"], capture_output=True, text=True, timeout=20,
                           check=True).stdout
    assert f"[{BASE}]: \t70002" in out32  # the 32-bit slot id, big-endian word order
    link.close()


def test_heartbeat_toggles_only_while_the_gate_loop_is_alive(sim: Sim, rt) -> None:
    link = _link(sim.port, period=0.05)
    seen: set[int] = set()

    def beat_and_read() -> bool:
        link.heartbeat()
        seen.add(_read(sim.port, HEARTBEAT, 1)[0])
        return seen == {0, 1}

    rt.wait_for(beat_and_read, what="heartbeat register to take both 0 and 1")
    time.sleep(0.3)  # no heartbeat() calls: a wedged gate loop
    frozen = _read(sim.port, HEARTBEAT, 1)[0]
    time.sleep(0.3)
    assert _read(sim.port, HEARTBEAT, 1)[0] == frozen
    link.close()


def test_reconnects_after_the_plc_restarts(sim: Sim, rt) -> None:
    metrics = LineMetrics()
    link = _link(sim.port, metrics)
    rt.wait_for(lambda: link.connected, what="link connected")
    link.send(_result(1))
    assert link.wait_idle()
    sim.stop()
    link.send(_result(2))  # written into a dead connection: counted, dropped, never replayed later
    rt.wait_for(lambda: not link.connected and link.errors >= 1, what="link to notice the PLC is gone")
    assert metrics.plc_connected._value.get() == 0
    sim.start()  # a fresh PLC: registers zeroed
    rt.wait_for(lambda: link.connected, what="reconnect")
    assert link.connects == 2
    link.send(_result(3, "accept", "ok", 0.0))
    assert link.wait_idle()
    regs = _read(sim.port, BASE, R.BLOCK_SIZE)
    assert regs[R.SLOT_LO] == (70_003 & 0xFFFF) and regs[R.DECISION] == R.DECISION_CODES["accept"]
    assert regs[R.COUNTER] == 2  # result 2 was never written
    link.close()


def test_unreachable_plc_counts_failures_without_blocking(rt) -> None:
    link = _link(rt.free_port())
    for seq in range(50):
        link.send(_result(seq))  # only queues: the writer thread meets the dead PLC
    rt.wait_for(lambda: link.errors == 50, what="all 50 results to be counted as failed")
    assert not link.connected and link.writes == 0
    link.close()


def test_register_codes_and_log_link() -> None:
    assert R.result_registers(0x12345678, "reject", "timeout", 1.5, 3, 65537) == [0x1234, 0x5678, 2, 2, 15000, 3, 1]
    assert R.encode_score(float("nan")) == 0xFFFF and R.encode_score(-1) == 0
    with pytest.raises(ValueError, match="reason 'maybe'"):
        R.result_registers(1, "reject", "maybe", 0.0, 0, 0)
    stream = io.StringIO()
    link = LogLink(stream)
    link.send(_result(4))
    assert json.loads(stream.getvalue())["plc"]["seq"] == 4


def test_register_document_matches_the_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "plc_registers.md").read_text()
    assert ", ".join(f"{v} = {k}" for k, v in R.DECISION_CODES.items()) in doc
    assert ", ".join(f"{v} = {k}" for k, v in R.REASON_CODES.items()) in doc
    assert f"× {R.SCORE_SCALE}" in doc.replace("10000", str(R.SCORE_SCALE))
    assert "base+7 | 7 | result valid toggle" in doc and R.VALID_TOGGLE == 7 and R.COUNTER == 6
