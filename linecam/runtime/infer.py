"""The inference worker: frames in, exactly one verdict out per frame, whatever the frame or the backend does.

Why this shape: the worker batches across cameras (up to ``max_batch`` frames, waiting at most
``max_wait_ms`` after the first) and runs each model ONCE per batch on all region crops of all frames, which
is what makes a small CPU or one GPU keep up with several cameras. Every failure is turned into a verdict
instead of an exception: a frame that cannot be decoded or does not fit its regions gets ``bad_frame``, a
backend that throws (or returns a non-finite score) gets ``error`` (reject) for the frames of that batch,
and the loop serves the next batch.

The worker only orchestrates; each job has its part: :mod:`~linecam.runtime.frames` decodes a frame,
:mod:`~linecam.runtime.shedding` decides which frames cannot make their deadline, :mod:`~linecam.runtime.modelset`
scores crops with the serving versions (and swaps, probation, rollback), :mod:`~linecam.runtime.outputs` makes
the verdict and feeds the image writers. :meth:`InferWorker.process_batch` is the socket-free core (tests feed
it messages directly); :meth:`InferWorker.run` adds the frames socket, batching, the verdict socket and sd_notify.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import zmq

from linecam.backends.base import Detector, create_detector
from linecam.config import ConfigError, LineConfig
from linecam.runtime import sdnotify
from linecam.runtime.capacity import Capacity, write_capacity
from linecam.runtime.frames import BadFrameLog, FrameItem, decode_item, frame_limits
from linecam.runtime.messages import Verdict, encode_event, now_ns
from linecam.runtime.metrics import LineMetrics, start_metrics_server
from linecam.runtime.modelset import Entry, ModelSet
from linecam.runtime.outputs import ImageOutputs, make_verdict
from linecam.runtime.regions import crop
from linecam.runtime.shedding import LiveFrame, plan_shedding, update_crop_cost
from linecam.runtime.signals import stop_on_signals
from linecam.runtime.transport import event_push, frame_pull_bind, stop_authenticators
from linecam.runtime.warmup import blank_frames, measure_capacity, warm_up

log = logging.getLogger(__name__)

__all__ = ["InferWorker", "main"]


class InferWorker:
    """Pulls frames, batches them, has the model set score them, pushes verdicts to the gate."""

    def __init__(self, cfg: LineConfig, detectors: Mapping[str, Detector] | None = None,
                 metrics: LineMetrics | None = None, metrics_port: int | None = None,
                 ctx: zmq.Context[Any] | None = None, bind: bool = True,
                 detector_factory: Callable[..., Detector] = create_detector) -> None:
        self.cfg = cfg
        if bind:  # config errors (no runtime dir) before models load and servers start
            self.frames_endpoint = cfg.frames_endpoint()
            cfg.events_endpoint()
        self.metrics = metrics or LineMetrics(deadline_s=cfg.gate.deadline_s)
        self.models = ModelSet(cfg, self.metrics, detectors, detector_factory, want_maps=ImageOutputs.wanted(cfg))
        self.limits = frame_limits(cfg)  # what a frame may claim, checked before it is parsed or allocated
        self.bad_frames = BadFrameLog()
        #: detector time per region crop (ns, moving average of live batches; None until the first one).
        self.crop_cost_ns: float | None = None
        #: throughput measured after the warm-up (None without one); ``run`` hands it to the supervisor.
        self.capacity: Capacity | None = None
        self.outputs: ImageOutputs | None = None  # after the warm-up: its blank frames are never written
        if cfg.infer.warmup:
            self.warm_up()
        port = cfg.infer.metrics_port if metrics_port is None else metrics_port
        self.metrics_port = start_metrics_server(
            self.metrics, port, cfg.metrics_address, process="infer", key="infer.metrics_port",
            source=str(cfg.source_path or "the config")
        ) if port >= 0 else -1
        self.outputs = ImageOutputs(cfg, self.metrics)
        self._stop = threading.Event()
        self.watchdog = sdnotify.Watchdog()
        self.verdicts_sent = self.verdicts_dropped = 0
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.frames_sock: zmq.Socket[Any] | None = None
        self.events_sock: zmq.Socket[Any] | None = None
        if bind:
            # 4x the largest frame: a misconfigured camera's frames still reach the decoder and get a bad_frame
            # verdict naming the problem; only a message far beyond any frame is cut at the socket, unread.
            self.frames_sock = frame_pull_bind(self.ctx, self.frames_endpoint, cfg.transport,
                                               max_message_bytes=max(4 * self.limits.max_frame_bytes, 2**20))
            self.events_sock = event_push(self.ctx, cfg.events_endpoint(), cfg.transport)
            log.info("infer: frames on %s, verdicts to %s, models %s", self.frames_endpoint,
                     cfg.events_endpoint(), self.models.model_version)

    def warm_up(self) -> None:
        """Compile every batch shape on blank frames, then measure the throughput (:mod:`runtime.warmup`), with
        throw-away metrics so the counters stay honest."""
        frames = blank_frames(self.cfg)
        if not frames:
            return
        live_metrics = self.metrics
        self.metrics = self.models.metrics = LineMetrics(live_metrics.deadline_s)
        try:
            t0 = time.monotonic()
            failure = warm_up(self.process_batch, frames, self.cfg.infer.max_batch)
            if failure is not None:
                log.warning("%s", failure)
                return
            log.info("warm-up done in %.1f s", time.monotonic() - t0)
            backends = ", ".join(sorted({f"{d.backend} {getattr(d, 'precision', '')}".strip()
                                         for d in self.models.detectors.values()}))
            self.capacity = measure_capacity(self.process_batch, frames, self.cfg.infer.max_batch, backends)
            choices = [f"{name}: {d.auto_choice.line()}"
                       for name, d in sorted(self.models.detectors.items()) if hasattr(d, "auto_choice")]
            if choices:
                self.capacity = replace(self.capacity, choice="; ".join(choices))
            log.info("throughput: %s", self.capacity.describe())
        finally:
            self.metrics = self.models.metrics = live_metrics
            self.crop_cost_ns = None  # compile time is not the cost of a live batch

    # -- the core --------------------------------------------------------------------------------------
    def _decode(self, parts: Sequence[Any], received_ns: int) -> FrameItem:
        item = decode_item(parts, received_ns, self.models.regions, self.limits)
        if item.reason == "bad_frame":
            self.bad_frames.add(item)
        # one series per configured camera: a hostile header must not create a Prometheus series per name
        self.metrics.frames.labels(camera=item.camera if item.camera in self.models.regions else "unknown").inc()
        if item.header is not None and item.header.t_sent_ns:
            self.metrics.stage_latency.labels(stage="transport").observe(
                max(0, received_ns - item.header.t_sent_ns) / 1e9)
        return item

    def process_batch(self, messages: Sequence[tuple[Sequence[Any], int]]) -> list[Verdict]:
        """One verdict per message, in order. ``messages``: (multipart frame, received wall-clock ns)."""
        items = [self._decode(parts, received_ns) for parts, received_ns in messages]
        batch_start = now_ns()
        self._shed(items, batch_start)
        for item in items:
            self.metrics.stage_latency.labels(stage="queue").observe(max(0, batch_start - item.received_ns) / 1e9)
        self.metrics.queue_depth.labels(queue="infer_batch").set(len(items))
        groups: dict[str, list[Entry]] = {}
        for item in items:
            if item.reason or item.rgb is None:
                continue
            for region in self.models.regions[item.camera]:
                groups.setdefault(region.config.model, []).append((item, region, crop(item.rgb, region.config)))
        for model, entries in groups.items():
            self.models.score(model, entries)
        infer_done = now_ns()
        if groups:
            self.metrics.stage_latency.labels(stage="infer").observe((infer_done - batch_start) / 1e9)
            self.crop_cost_ns = update_crop_cost(self.crop_cost_ns, infer_done - batch_start,
                                                 sum(len(entries) for entries in groups.values()))
        verdicts = []
        for item in items:
            regions = self.models.regions.get(item.camera, [])
            versions = {self.models.detectors[m].model_version for m in item.models}
            verdict = make_verdict(item, regions, sorted(versions), self.models.model_version, batch_start,
                                   infer_done)
            if self.outputs is not None:
                self.outputs.offer(verdict, item, regions)
            verdicts.append(verdict)
        return verdicts

    def _shed(self, items: Sequence[FrameItem], batch_start: int) -> None:
        """Answer ``timeout`` at once for the frames that cannot get a verdict in time (runtime.shedding)."""
        live = []
        for i, item in enumerate(items):
            if item.reason or item.header is None:
                continue
            due = item.header.deadline_ns
            if due is None:  # a producer that does not stamp it: worked out the way acquire does
                due = self.cfg.gate.due_ns(item.header.t_capture_ns)
            live.append(LiveFrame(i, due, len(self.models.regions.get(item.camera, ()))))
        for i, why in plan_shedding(live, batch_start, self.crop_cost_ns, self.cfg.infer.shed_late).items():
            items[i].reason, items[i].detail = "timeout", why

    # -- the loop --------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def _send(self, verdict: Verdict) -> None:
        assert self.events_sock is not None
        stamped = verdict.model_copy(update={"timestamps": {**verdict.timestamps, "sent": now_ns()}})
        try:
            self.events_sock.send(encode_event(stamped), zmq.NOBLOCK)
        except zmq.Again:  # gate gone or stalled: it times these frames out itself
            self.verdicts_dropped += 1
            log.warning("verdict camera=%s seq=%d not sent: gate not taking events", verdict.camera, verdict.seq)
            return
        self.verdicts_sent += 1
        self.metrics.verdicts.labels(decision=verdict.decision, reason=verdict.reason).inc()
        received = verdict.timestamps.get("received")
        if received is not None:
            self.metrics.stage_latency.labels(stage="worker").observe(max(0, stamped.timestamps["sent"] - received)
                                                                      / 1e9)

    def _collect(self, poller: zmq.Poller) -> list[tuple[Sequence[Any], int]]:
        assert self.frames_sock is not None
        batch: list[tuple[Sequence[Any], int]] = []
        wait_s = self.cfg.infer.max_wait_ms / 1000.0
        first = time.monotonic()
        while len(batch) < self.cfg.infer.max_batch:
            try:
                parts = self.frames_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                remaining = wait_s - (time.monotonic() - first)
                if remaining <= 0 or not poller.poll(max(1, math.ceil(remaining * 1000.0))):
                    break
                continue
            batch.append((parts, now_ns()))
        return batch

    def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT via :func:`main`)."""
        if self.frames_sock is None:
            raise RuntimeError("worker was created with bind=False; it has no sockets to serve")
        poller = zmq.Poller()
        poller.register(self.frames_sock, zmq.POLLIN)
        if self.capacity is not None:
            try:
                write_capacity(self.cfg.runtime_path(), self.capacity)
            except (OSError, ConfigError) as exc:
                log.warning("cannot write the measured throughput: %s", exc)
        sdnotify.ready(f"infer on {self.frames_endpoint}, models {self.models.model_version}")
        self.models.watcher_thread.start()
        try:
            while not self._stop.is_set():
                self.watchdog.tick()
                if self.models.watchers:
                    self.models.apply_swaps()
                if not poller.poll(50):
                    continue
                batch = self._collect(poller)
                if batch:
                    for verdict in self.process_batch(batch):
                        self._send(verdict)
        finally:
            sdnotify.stopping()
            self.close()

    def close(self) -> None:
        if self.outputs is not None:
            self.outputs.close()
        for sock in (self.frames_sock, self.events_sock):
            if sock is not None:
                sock.close(0)
        self.models.close()
        self.metrics.stop_servers()
        if self._own_ctx:
            stop_authenticators(self.ctx)
            self.ctx.term()


def main(config: LineConfig) -> int:
    """``linecam infer --config FILE``: load the models and serve until SIGTERM/SIGINT."""
    worker = InferWorker(config)
    stop_on_signals("infer", worker.stop)
    worker.run()
    log.info("infer: %d verdicts sent, %d dropped", worker.verdicts_sent, worker.verdicts_dropped)
    return 0
