"""A PLC link that writes each result as one JSON line: the demo's "PLC" and a dry-run aid."""

from __future__ import annotations

import json
import sys
from typing import IO

from linecam.config import LogPlcConfig
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.plc.base import PlcResult


class LogLink:
    """JSON lines to a stream (stdout by default) or an append-only file."""

    def __init__(self, stream: IO[str] | None = None, metrics: LineMetrics | None = None,
                 owns_stream: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._owns = owns_stream
        self._metrics = metrics
        if metrics is not None:
            metrics.plc_connected.set(1)

    @classmethod
    def from_config(cls, cfg: LogPlcConfig, metrics: LineMetrics | None = None) -> LogLink:
        if cfg.path is None:
            return cls(None, metrics)
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        return cls(open(cfg.path, "a", buffering=1), metrics, owns_stream=True)  # noqa: SIM115

    def send(self, result: PlcResult) -> None:
        self._stream.write(json.dumps({"plc": result.to_dict()}) + "\n")
        self._stream.flush()
        if self._metrics is not None:
            self._metrics.plc_writes.inc()

    def heartbeat(self) -> None:
        """Nothing to signal: a log has no watchdog."""

    def close(self) -> None:
        if self._owns:
            self._stream.close()
