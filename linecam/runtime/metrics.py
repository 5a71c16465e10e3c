"""Prometheus metrics of the line: one definition, used by acquire, infer and gate.

Why a class and a private registry instead of module-level collectors: the latency buckets depend on the
configured gate deadline (one bucket bound sits exactly at it, so ``le=<deadline>`` reads the SLO
directly), and tests run several components inside one interpreter, where module-level collectors in the
default registry would collide. Each process builds one :class:`LineMetrics` and serves it on its own
port with :func:`start_metrics_server`. No metric carries a per-product label.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

#: latency bucket bounds in milliseconds; the deadline is inserted among them.
LATENCY_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
#: anomaly score bucket bounds (scores are probabilities in [0, 1]).
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def latency_buckets(deadline_s: float) -> tuple[float, ...]:
    """Latency bucket bounds in seconds, with one bound exactly at ``deadline_s``."""
    if not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    bounds = {round(ms / 1000.0, 6) for ms in LATENCY_BUCKETS_MS}
    bounds.add(float(deadline_s))
    return tuple(sorted(bounds))


@dataclass
class LineMetrics:
    """All collectors of one process, registered in ``registry`` (a fresh one unless given)."""

    deadline_s: float = 0.3
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self._servers: list[Any] = []
        buckets = latency_buckets(self.deadline_s)
        self.frames = Counter("linecam_frames", "Frames handled, by camera", ["camera"], registry=r)
        self.overload = Counter(
            "linecam_overload", "Frames the worker could not take (high-water mark)", ["camera"], registry=r
        )
        self.frame_gaps = Counter(
            "linecam_frame_gaps", "Frames lost between camera and acquire (frame-id gaps)", ["camera"], registry=r
        )
        self.verdicts = Counter(
            "linecam_verdicts", "Verdicts by decision and reason", ["decision", "reason"], registry=r
        )
        self.deadline_misses = Counter(
            "linecam_deadline_misses", "Frames rejected because no verdict arrived by the deadline", registry=r
        )
        self.late_verdicts = Counter(
            "linecam_late_verdicts", "Verdicts that arrived after the frame was already timed out", registry=r
        )
        self.duplicate_verdicts = Counter(
            "linecam_duplicate_verdicts", "Second or later verdicts for one frame (dropped)", registry=r
        )
        self.orphan_verdicts = Counter(
            "linecam_orphan_verdicts", "Verdicts never matched by an announcement within the hold time",
            registry=r,
        )
        self.bad_messages = Counter(
            "linecam_bad_messages", "Undecodable event messages (dropped)", ["socket"], registry=r
        )
        self.rejects_dropped = Counter(
            "linecam_reject_images_dropped", "Reject images not saved because the writer queue was full",
            registry=r,
        )
        self.stage_latency = Histogram(
            "linecam_stage_latency_seconds", "Latency of one pipeline stage", ["stage"], buckets=buckets,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "linecam_end_to_end_latency_seconds", "Capture to gate decision", buckets=buckets, registry=r
        )
        self.queue_depth = Gauge("linecam_queue_depth", "Items waiting in a queue", ["queue"], registry=r)
        self.anomaly_score = Histogram(
            "linecam_anomaly_score", "Anomaly score per inspected region", buckets=SCORE_BUCKETS, registry=r
        )
        self.model_info = Info("linecam_model", "Model version and backend in use", registry=r)
        self.plc_connected = Gauge("linecam_plc_connected", "1 while the PLC link is connected", registry=r)
        self.plc_writes = Counter("linecam_plc_writes", "Results written to the PLC", registry=r)
        self.plc_write_errors = Counter("linecam_plc_write_errors", "Results the PLC link failed to write",
                                        registry=r)
        self.camera_stalls = Counter("linecam_camera_stalls", "Times a camera sent no frame for several periods",
                                     ["camera"], registry=r)
        self.camera_stalled = Gauge("linecam_camera_stalled", "1 while a camera sends no frames", ["camera"],
                                    registry=r)
        self.plc_results_dropped = Counter(
            "linecam_plc_results_dropped", "Results never written to the PLC, by reason (late: its time had passed)",
            ["reason"], registry=r)

    def stop_servers(self) -> None:
        """Shut down the HTTP servers started for these metrics (a process exiting need not call this)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def set_model(self, version: str, backend: str) -> None:
        """Publish ``linecam_model_info{version, backend}``."""
        self.model_info.info({"version": version, "backend": backend})


class PortInUseError(ValueError):
    """A listening port cannot be bound; the message names the port, the config key and what to do."""


def port_in_use_message(process: str, port: int, key: str, source: str, why: str = "is already in use") -> str:
    """One line for a port that cannot be bound: which process, which port, the key that sets it, the remedy."""
    return (f"{process}: metrics port {port} {why} (set by {key} in {source}); stop the process holding it, e.g. "
            f"another line on this machine (`ss -ltnp 'sport = :{port}'` names it), or set {key} to a free port "
            "(0 picks one)")


def start_metrics_server(metrics: LineMetrics, port: int, addr: str = "127.0.0.1", *, process: str = "linecam",
                         key: str = "metrics port", source: str = "the config") -> int:
    """Serve ``/metrics`` over HTTP from a daemon thread; returns the bound port (``port=0`` picks a free one).

    A port that cannot be bound raises :class:`PortInUseError` naming ``process``, the port and the config
    ``key`` that sets it, instead of a socket traceback.
    """
    try:
        server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise PortInUseError(port_in_use_message(process, port, key, source, why)) from None
    metrics._servers.append(server)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return bound
