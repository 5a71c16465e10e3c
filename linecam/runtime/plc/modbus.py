"""Modbus/TCP PLC link: result block + "result valid" toggle + heartbeat (docs/plc_registers.md).

Why a writer thread: the gate's decision loop must keep its few-millisecond sweep even when the PLC is
slow or gone, so :meth:`ModbusLink.send` only queues and a thread does the network I/O, reconnecting with
exponential backoff. A result reaches the PLC by its ``write_by_ns`` or never: it is checked before its block
is written and again before its valid toggle, and one whose time has passed is dropped and counted
(``linecam_plc_results_dropped_total{reason="late"}``). On a carousel a late reject ejects another product, so a
PLC that hangs and comes back never gets the results queued meanwhile. Every request is bounded by
``timeout_s``; a write that times out closes the connection with a reset, so the requests still in flight are
discarded by the PLC's network stack instead of being executed when it resumes. ``plc_connected`` is 1 only
after a write succeeded on the current connection (a hung PLC still accepts TCP connections). The heartbeat is
toggled only while the gate's main loop keeps calling :meth:`heartbeat` and no result was dropped in the last
two heartbeat periods, so a wedged gate or a link that is dropping results stops it and the PLC, programmed per
the register document, rejects by default.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import socket
import struct
import threading
import time
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from linecam.config import ModbusPlcConfig
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.plc import registers as R
from linecam.runtime.plc.base import PlcResult

log = logging.getLogger(__name__)

#: how many recent round trips the late check plans for (their maximum).
RTT_WINDOW = 16


class PlcWriteError(RuntimeError):
    """A Modbus request failed or the PLC answered with an exception code."""


class ModbusLink:
    """Writes each result to the holding-register block at ``cfg.base_register``."""

    def __init__(self, cfg: ModbusPlcConfig, metrics: LineMetrics | None = None, queue_size: int = 1024) -> None:
        self.cfg = cfg
        self._metrics = metrics
        self._queue: queue.Queue[PlcResult] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._client: ModbusTcpClient | None = None
        self._connected = False
        self._toggle = 0
        self._counter = 0
        self._heartbeat_value = 0
        self._main_alive = time.monotonic()
        self.writes = 0
        self.errors = 0
        self.connects = 0
        self.dropped_late = 0
        self._hold_heartbeat_until = 0.0
        #: the last round trips (ns): a result is sent only when the slowest of them still lands in time.
        self._rtts: collections.deque[int] = collections.deque(maxlen=RTT_WINDOW)
        self._set_connected(False)
        self._thread = threading.Thread(target=self._run, name="plc-modbus", daemon=True)
        self._thread.start()

    # -- gate side -------------------------------------------------------------------------------------
    def send(self, result: PlcResult) -> None:
        """Queue one result for the writer thread; a full queue (PLC stalled) counts as a failed write."""
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self._failed(f"queue full, result camera={result.camera} seq={result.seq} dropped", reason="queue_full")

    def heartbeat(self) -> None:
        """Mark the gate loop alive; the writer thread toggles the register while this keeps coming."""
        self._main_alive = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued result was written or dropped (tests, clean shutdown)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    def close(self) -> None:
        self.wait_idle(min(2.0, self.cfg.timeout_s * 4))
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._disconnect()

    # -- writer thread ---------------------------------------------------------------------------------
    def _set_connected(self, value: bool) -> None:
        self._connected = value
        if self._metrics is not None:
            self._metrics.plc_connected.set(1 if value else 0)

    def _failed(self, why: str, reason: str = "unwritten") -> None:
        self.errors += 1
        if self._metrics is not None:
            self._metrics.plc_write_errors.inc()
            self._metrics.plc_results_dropped.labels(reason=reason).inc()
        log.warning("PLC write failed: %s", why)

    def _late(self, result: PlcResult, requests: int = 1) -> bool:
        """True (and the result dropped, counted, the heartbeat held) when ``requests`` more round trips would
        not reach the PLC by the result's time: a result that cannot arrive in time is not sent.

        Why the slowest of the recent round trips and not their average: under CPU load the PLC took a toggle
        sent within the average after its time (the fault suite's overload row); one slow answer among the
        last RTT_WINDOW is the one a next request must be planned for."""
        expected_ns = max(self._rtts, default=0)
        if result.write_by_ns is None or time.time_ns() + requests * expected_ns <= result.write_by_ns:
            return False
        self.dropped_late += 1
        self._hold_heartbeat_until = time.monotonic() + 2.0 * self.cfg.heartbeat_period_s
        late_ms = (time.time_ns() - result.write_by_ns) / 1e6
        self._failed(f"camera={result.camera} seq={result.seq} slot={result.slot}: {late_ms:.0f} ms past its time, "
                     "dropped (never written late)", reason="late")
        return True

    def _disconnect(self, reset: bool = False) -> None:
        """Close the connection; ``reset`` aborts it (RST), so requests the PLC has not read yet are discarded."""
        if self._client is not None:
            sock = getattr(self._client, "socket", None)
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._client.close()
            self._client = None
        if self._connected:
            log.warning("PLC %s:%d disconnected", self.cfg.host, self.cfg.port)
        self._set_connected(False)

    def _connect(self) -> bool:
        client = ModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0)
        try:
            ok = bool(client.connect())
        except (ModbusException, OSError):
            ok = False
        if not ok:
            client.close()
            return False
        self._client = client
        try:  # a hung PLC still accepts TCP connections (its kernel does): connected means it answers
            response: Any = client.read_holding_registers(self.cfg.heartbeat_register, count=1,
                                                          device_id=self.cfg.device_id)
            answered = not response.isError()
        except (ModbusException, OSError):
            answered = False
        if not answered:
            self._disconnect(reset=True)
            return False
        self.connects += 1
        self._set_connected(True)
        log.info("PLC %s:%d connected", self.cfg.host, self.cfg.port)
        return True

    def _write(self, address: int, values: list[int]) -> None:
        if self._client is None:
            raise PlcWriteError("not connected")
        t0 = time.time_ns()
        try:
            response: Any = self._client.write_registers(address, values, device_id=self.cfg.device_id)
        except (ModbusException, OSError) as exc:
            raise PlcWriteError(f"write {address}: {exc}") from exc
        if response.isError():
            raise PlcWriteError(f"write {address}: PLC answered {response}")
        rtt = time.time_ns() - t0
        if rtt <= self.cfg.timeout_s * 1e9:  # a request that spanned a stopped process says nothing about the next
            self._rtts.append(rtt)
        if not self._connected:
            log.info("PLC %s:%d answering", self.cfg.host, self.cfg.port)
            self._set_connected(True)

    def _write_result(self, result: PlcResult) -> None:
        if self._late(result, requests=2):  # the block and its toggle
            return
        counter = (self._counter + 1) & 0xFFFF
        data = R.result_registers(result.slot, result.decision, result.reason, result.score,
                                  result.camera_index, counter)
        self._write(self.cfg.base_register, data)
        if self._late(result):  # the block took too long: the PLC never sees it as valid
            return
        toggle = 1 - self._toggle
        self._write(self.cfg.base_register + R.VALID_TOGGLE, [toggle])
        self._toggle = toggle
        self._counter = counter
        self.writes += 1
        if self._metrics is not None:
            self._metrics.plc_writes.inc()

    def _drop_queued(self, why: str) -> None:
        while True:
            try:
                result = self._queue.get_nowait()
            except queue.Empty:
                return
            if not self._late(result):
                self._failed(f"{why}; camera={result.camera} seq={result.seq} slot={result.slot} not written",
                             reason="unreachable")
            self._queue.task_done()

    def _run(self) -> None:
        backoff = self.cfg.reconnect_min_s
        next_beat = 0.0
        while not self._stop.is_set():
            if self._client is None:
                if self._connect():
                    backoff = self.cfg.reconnect_min_s
                else:
                    self._drop_queued(f"PLC {self.cfg.host}:{self.cfg.port} unreachable")
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2.0, self.cfg.reconnect_max_s)
                    continue
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self.cfg.heartbeat_period_s
                    gate_alive = now - self._main_alive <= 2.0 * self.cfg.heartbeat_period_s
                    if gate_alive and now >= self._hold_heartbeat_until:
                        value = 1 - self._heartbeat_value
                        self._write(self.cfg.heartbeat_register, [value])
                        self._heartbeat_value = value
                try:
                    result = self._queue.get(timeout=max(0.0, min(0.05, next_beat - time.monotonic())))
                except queue.Empty:
                    continue
                try:
                    self._write_result(result)
                except PlcWriteError as exc:
                    self._failed(f"camera={result.camera} seq={result.seq}: {exc}")
                    self._disconnect(reset=True)
                finally:
                    self._queue.task_done()
            except PlcWriteError as exc:
                log.warning("PLC heartbeat failed: %s", exc)
                self._disconnect(reset=True)
