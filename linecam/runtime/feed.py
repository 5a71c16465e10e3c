"""The gate's live feed: every verdict, and once a second the line's health, for the operator page.

Why a PUB socket the gate never waits on: the page is for people, the verdict is for the PLC. A PUB socket sends
without blocking and drops what a slow or absent subscriber cannot take (its high-water mark, silently: ZeroMQ
does not tell the sender), so a frozen browser, a stopped ``linecam ui`` or none at all never delay a verdict.
Sends that fail outright are counted (``dropped``). The audit log, not the feed, is the record. Messages are JSON
objects with a ``type``: ``verdict`` or ``health``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import zmq

from linecam.config import LineConfig
from linecam.runtime.transport import feed_pub_bind

log = logging.getLogger(__name__)

#: reasons the worker saves a reject image for (``infer.reject_dir``); timeouts and overloads never had a frame.
IMAGED_REASONS = frozenset({"anomaly", "error", "bad_frame"})

__all__ = ["FeedPublisher", "IMAGED_REASONS", "reject_image_name"]


def reject_image_name(camera: str, seq: int, slot: int) -> str:
    """The overlay file the worker's reject writer names for a product, relative to ``infer.reject_dir``."""
    return f"{camera}/{seq:09d}_{slot}_overlay.png"


class FeedPublisher:
    """Publishes verdict records and health snapshots; never blocks, never raises into the gate."""

    def __init__(self, ctx: zmq.Context[Any], cfg: LineConfig) -> None:
        self.endpoint = cfg.feed_endpoint()
        self.sock = feed_pub_bind(ctx, self.endpoint, cfg.transport)
        self.reject_dir: Path | None = cfg.infer.reject_dir if cfg.infer.save_rejects else None
        self.sent = 0
        self.dropped = 0

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(json.dumps(message, separators=(",", ":")).encode(), zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        except zmq.ZMQError as exc:  # the page must never stop the gate
            self.dropped += 1
            log.debug("feed: %s", exc)

    def verdict(self, record: dict[str, Any]) -> None:
        """One audit record, trimmed to what the page shows, with the reject image it will find (if any)."""
        scores = record.get("scores") or {}
        thresholds = record.get("thresholds") or {}
        region = max(scores, key=lambda k: scores[k]) if scores else None
        image = None
        if (self.reject_dir is not None and record["decision"] == "reject"
                and record["reason"] in IMAGED_REASONS):
            image = reject_image_name(record["camera"], record["seq"], record["slot"])
        self._send({"type": "verdict", "camera": record["camera"], "seq": record["seq"], "slot": record["slot"],
                    "decision": record["decision"], "reason": record["reason"],
                    "score": scores.get(region) if region else None,
                    "threshold": thresholds.get(region) if region else None, "region": region,
                    "latency_ms": record["latency_ms"], "model_version": record.get("model_version", ""),
                    "t_ns": record["t_decided_ns"], "image": image})

    def health(self, snapshot: dict[str, Any]) -> None:
        self._send({"type": "health", **snapshot})

    def close(self) -> None:
        self.sock.close(0)
