"""ModbusLink against a real Modbus/TCP server in another process (the PLC simulator), read back with
pymodbus and with the independent ``mbpoll`` client; heartbeat toggling; reconnect after a server restart."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

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

    def __init__(self, port: int, journal: Path | None = None) -> None:
        self.port = port
        self.journal = journal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        extra = ["--journal", str(self.journal)] if self.journal is not None else []
        self.proc = subprocess.Popen([sys.executable, "-m", "linecam.runtime.plc.sim_server", "--port",
                                      str(self.port), *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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


def _journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _GateLoop:
    """Plays the gate's main loop: heartbeats every 20 ms and samples plc_connected."""

    def __init__(self, link: ModbusLink, metrics: LineMetrics) -> None:
        self.link, self.metrics = link, metrics
        self.connected_samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.link.heartbeat()
            self.connected_samples.append(self.metrics.plc_connected._value.get())
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("fault", ["hung", "killed"])
def test_no_result_reaches_the_plc_after_its_time(rt, tmp_path: Path, fault: str) -> None:
    """The PLC process is stopped (SIGSTOP) for 3 s and continued, or killed and restarted, while results keep
    coming at 50 per second, each due 200 ms after it is sent. Every write the PLC executed (its own journal,
    with its own clock) lies before that result's time; the results of the outage are dropped and counted."""
    journal = tmp_path / "plc.jsonl"
    sim = Sim(rt.free_port(), journal)
    sim.start()
    metrics = LineMetrics()
    link = _link(sim.port, metrics)
    loop = _GateLoop(link, metrics)
    write_by: dict[int, int] = {}
    try:
        rt.wait_for(lambda: link.connected, what="link connected")
        t0 = time.monotonic()
        seq = 0
        outage = (1.0, 4.0)
        state = "up"
        hang_ns = 0
        while time.monotonic() - t0 < 6.0:
            now = time.monotonic() - t0
            if state == "up" and now >= outage[0]:
                assert sim.proc is not None
                if fault == "hung":
                    sim.proc.send_signal(signal.SIGSTOP)
                else:
                    sim.stop()
                hang_ns = time.time_ns()
                state = "down"
            elif state == "down" and now >= outage[1]:
                if fault == "hung":
                    assert sim.proc is not None
                    sim.proc.send_signal(signal.SIGCONT)
                else:
                    sim.start()
                state = "back"
            result = replace(_result(seq), write_by_ns=time.time_ns() + 200_000_000)
            write_by[result.slot] = result.write_by_ns  # type: ignore[assignment]
            link.send(result)
            seq += 1
            time.sleep(0.02)
        rt.wait_for(lambda: link.connected, timeout_s=20, what="link back after the outage")
        assert link.wait_idle(10)
    finally:
        loop.stop()
        link.close()
        if sim.proc is not None and fault == "hung":
            sim.proc.send_signal(signal.SIGCONT)
        sim.stop()
    writes = _journal(journal)
    blocks = [w for w in writes if w["address"] == BASE]
    toggles = [w for w in writes if w["address"] == BASE + R.VALID_TOGGLE]
    assert blocks and len(toggles) <= len(blocks)
    late = []
    last_slot = None
    ordered = sorted(blocks + toggles, key=lambda w: w["t_ns"])
    for i, w in enumerate(ordered):
        if w["address"] == BASE:
            last_slot = (w["values"][R.SLOT_HI] << 16) | w["values"][R.SLOT_LO]
        due = write_by[last_slot]  # a toggle makes the block before it valid
        if w["t_ns"] > due:
            late.append((i, last_slot, (w["t_ns"] - due) / 1e6))
    # The link never sends a result after its time. What TCP cannot take back is the one request already in the
    # hung PLC's receive buffer: the PLC executes it when it resumes (and, per docs/plc_registers.md, discards a
    # slot that left its tracking window). So: at most that one, executed first after the outage, and none at
    # all after a restart (the dead connection's buffer died with the process).
    if fault == "killed":
        assert late == [], f"writes after their result's time (index, slot, ms late): {late[:5]}"
    else:
        assert len(late) <= 1, f"writes after their result's time (index, slot, ms late): {late[:5]}"
        if late:
            first_after_hang = next(i for i, w in enumerate(ordered) if w["t_ns"] > hang_ns)
            assert late[0][0] == first_after_hang  # the first request the PLC executed on resuming
    dropped = metrics.plc_results_dropped.labels(reason="late")._value.get()
    assert link.dropped_late == dropped >= 50  # the outage's results: ~150 at 50/s, never written
    assert len({(w["values"][R.SLOT_HI] << 16) | w["values"][R.SLOT_LO] for w in blocks}) < seq - 50
    assert 0.0 in loop.connected_samples and loop.connected_samples[-1] == 1.0  # 0 while the PLC did not answer


def test_the_heartbeat_stops_while_results_are_dropped(rt, tmp_path: Path) -> None:
    journal = tmp_path / "plc.jsonl"
    sim = Sim(rt.free_port(), journal)
    sim.start()
    metrics = LineMetrics()
    link = _link(sim.port, metrics, period=0.1)
    loop = _GateLoop(link, metrics)
    try:
        rt.wait_for(lambda: link.connected, what="link connected")
        time.sleep(0.5)  # the heartbeat runs
        start_dropping = time.time_ns()
        t0 = time.monotonic()
        seq = 0
        while time.monotonic() - t0 < 1.5:  # results that are already late: all dropped
            link.send(replace(_result(seq), write_by_ns=time.time_ns() - 1))
            seq += 1
            time.sleep(0.02)
        stop_dropping = time.time_ns()
        time.sleep(0.6)  # and it resumes
    finally:
        loop.stop()
        link.close()
        sim.stop()
    beats = [w["t_ns"] for w in _journal(journal) if w["address"] == HEARTBEAT]
    before = [t for t in beats if t < start_dropping]
    during = [t for t in beats if start_dropping + 50_000_000 < t < stop_dropping]  # the first may be in flight
    after = [t for t in beats if t > stop_dropping + 200_000_000]
    assert len(before) >= 3 and during == [] and len(after) >= 2, (len(before), during, len(after))
    assert link.writes == 0 and link.dropped_late == seq


class _Answer:
    def isError(self) -> bool:  # noqa: N802 - pymodbus's name
        return False


class _DelayedClient:
    """Stands in for the Modbus client where only the round-trip time matters: each write answers after ``delay``."""

    delay = 0.0

    def write_registers(self, *args: Any, **kwargs: Any) -> _Answer:
        time.sleep(self.delay)
        return _Answer()


def _link_with_slow_client(port: int) -> tuple[ModbusLink, _DelayedClient]:
    """A link without its writer thread (the requests are issued directly) and a client with a settable delay."""
    link = _link(port)
    link._stop.set()
    link._thread.join(timeout=5)
    client = _DelayedClient()
    link._client = client  # type: ignore[assignment]
    return link, client


def test_a_request_that_spanned_a_stopped_process_does_not_teach_the_link_a_slow_plc(rt) -> None:
    """A gate stopped for 3 s (SIGSTOP) mid-request measured a 3 s round trip; predicting from it, the link dropped
    every later result as late and the PLC got none until the end of the run (fault suite, stop-gate row)."""
    link, client = _link_with_slow_client(rt.free_port())
    link._write(BASE, [1])
    fast = max(link._rtts)
    assert 0 < fast < 50_000_000
    client.delay = 0.8  # longer than timeout_s (0.5): the process was stopped, not the PLC slow
    link._write(BASE, [1])
    assert max(link._rtts) == fast
    due_soon = replace(_result(1), write_by_ns=time.time_ns() + 200_000_000)
    assert not link._late(due_soon, requests=2)  # still sent
    link._client = None


def test_one_slow_answer_among_fast_ones_is_what_the_late_check_plans_for(rt) -> None:
    """Under CPU load the PLC took a toggle after its time although the moving average of the round trips said it
    would arrive (fault suite, overload row): the slowest recent round trip is the one a next request can take."""
    link, client = _link_with_slow_client(rt.free_port())
    client.delay = 0.12  # slow, but an answer (timeout_s is 0.5)
    link._write(BASE, [1])
    client.delay = 0.0
    for _ in range(8):  # eight fast answers after it: an average would forget the slow one
        link._write(BASE, [1])
    due = replace(_result(1), write_by_ns=time.time_ns() + 150_000_000)  # one slow round trip fits, two do not
    assert link._late(due, requests=2)
    assert link.dropped_late == 1
    assert not link._late(replace(_result(2), write_by_ns=time.time_ns() + 150_000_000), requests=1)
    link._client = None
