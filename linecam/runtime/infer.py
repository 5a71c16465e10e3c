"""The inference worker: frames in, exactly one verdict out per frame, whatever the frame or the backend does.

Why this shape: the worker batches across cameras (up to ``max_batch`` frames, waiting at most
``max_wait_ms`` after the first) and runs each model ONCE per batch on all region crops of all frames, which
is what makes a small CPU or one GPU keep up with several cameras. Every failure is turned into a verdict
instead of an exception: a frame that cannot be decoded or does not fit its regions gets ``bad_frame``, a
backend that throws (or returns a non-finite score) gets ``error`` (reject) for the frames of that batch,
and the loop serves the next batch. Reject images (``infer.reject_dir``) and the inspection archive
(``archive:``, rejects plus a sample of accepts, see :mod:`linecam.runtime.archive`) are written by
background writers with bounded queues, never on the hot path.

:meth:`InferWorker.process_batch` is the socket-free core (tests feed it messages directly);
:meth:`InferWorker.run` adds the frames socket, batching, the verdict socket, metrics and sd_notify.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from linecam.backends.base import Detector, create_detector
from linecam.config import ConfigError, LineConfig
from linecam.config.regions import RegionConfig
from linecam.decision import decide
from linecam.runtime import sdnotify
from linecam.runtime.archive import ArchiveError, ArchiveWriter
from linecam.runtime.capacity import Capacity, write_capacity
from linecam.runtime.hotswap import ModelWatcher, WatcherThread, swap_counter
from linecam.runtime.messages import (
    BadFrame,
    FrameHeader,
    Verdict,
    decode_frame,
    encode_event,
    encode_frame,
    now_ns,
)
from linecam.runtime.metrics import LineMetrics, start_metrics_server
from linecam.runtime.regions import crop, load_mask
from linecam.runtime.rejects import RejectImage, RejectWriter
from linecam.runtime.signals import stop_on_signals
from linecam.runtime.transport import event_push, frame_pull_bind, stop_authenticators

log = logging.getLogger(__name__)

__all__ = ["InferWorker", "card_version_threshold", "load_detectors", "main", "to_rgb8"]


def card_version_threshold(model_dir: Path) -> tuple[str, float | None]:
    """(version, calibrated threshold or None) from ``<model_dir>/card.json``."""
    from linecam.grdnet.modeldir import ModelDirError, read_card

    try:
        card = read_card(model_dir)
    except ModelDirError as exc:
        raise ConfigError(str(exc)) from None
    return card.version, card.threshold


def used_models(cfg: LineConfig) -> list[str]:
    """Names of the models some camera region uses."""
    return sorted({r.model for cam in cfg.cameras for r in cam.region_list()})


def load_detectors(cfg: LineConfig, factory: Callable[..., Detector] = create_detector,
                   model_dirs: Mapping[str, Path] | None = None) -> dict[str, Detector]:
    """Open every model the cameras' regions use, with the configured backend and thread count.

    ``model_dirs`` pins the folder per model (the worker resolves registry pointers once, so the detector
    and the thresholds it reads come from the same version); by default each reference is resolved here.
    """
    dirs = model_dirs or {name: cfg.models[name].model_dir() for name in used_models(cfg)}
    return {name: open_detector(cfg, dirs[name], factory) for name in used_models(cfg)}


def open_detector(cfg: LineConfig, path: Path, factory: Callable[..., Detector] = create_detector) -> Detector:
    """Open one model folder with the configured backend, thread count and ``infer.backend_options``.

    An option the backend does not take is reported as a configuration error naming the field, not as a
    bare ``TypeError`` from deep inside the backend.
    """
    options = cfg.infer.backend_options
    try:
        return factory(path, backend=cfg.infer.backend, threads=cfg.infer.threads, **options)
    except TypeError as exc:
        raise ValueError(f"infer.backend_options {options} do not fit backend {cfg.infer.backend!r} "
                         f"for {path}: {exc}") from exc


def to_rgb8(image: np.ndarray, pixel_format: str) -> np.ndarray:
    """Any accepted camera frame -> (H, W, 3) uint8 RGB, the one layout the models and overlays use."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if pixel_format in ("Mono8", "Mono16"):
        return np.repeat(image, 3, axis=2)
    if pixel_format == "RGB8":
        return image
    if pixel_format == "BGR8":
        return image[:, :, ::-1]
    if pixel_format == "RGBa8":
        return image[:, :, :3]
    if pixel_format == "BGRa8":
        return image[:, :, 2::-1]
    raise ValueError(f"pixel_format {pixel_format!r} is not supported by the worker")


@dataclass
class _Region:
    config: RegionConfig
    threshold: float
    mask: np.ndarray | None  # uint8 (h, w), 0 = ignore


@dataclass
class _Probation:
    """A freshly swapped-in version and the previous one, kept loaded until the new one proves itself."""

    detector: Detector  # the PREVIOUS version's detector
    model_dir: Path
    version: str  # the new version on probation
    previous_version: str
    remaining: int  # frames (crops) the new version must still serve without error


@dataclass
class _Item:
    """One received frame on its way to a verdict."""

    camera: str
    seq: int
    slot: int
    received_ns: int
    header: FrameHeader | None = None
    rgb: np.ndarray | None = None
    reason: str = ""  # "" while inspectable; "bad_frame" / "error" once failed
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)


class InferWorker:
    """Pulls frames, batches them, runs the detectors, pushes verdicts to the gate."""

    def __init__(
        self,
        cfg: LineConfig,
        detectors: Mapping[str, Detector] | None = None,
        metrics: LineMetrics | None = None,
        metrics_port: int | None = None,
        ctx: zmq.Context[Any] | None = None,
        bind: bool = True,
        detector_factory: Callable[..., Detector] = create_detector,
    ) -> None:
        self.cfg = cfg
        if bind:  # config errors (no runtime dir) before models load and servers start
            self.frames_endpoint = cfg.frames_endpoint()
            cfg.events_endpoint()
        self.metrics = metrics or LineMetrics(deadline_s=cfg.gate.deadline_s)
        self._factory = detector_factory
        #: the folder each model was loaded from (for registry models: the version CURRENT pointed at).
        self.model_dirs: dict[str, Path] = {name: cfg.models[name].model_dir() for name in used_models(cfg)}
        self.detectors: dict[str, Detector] = (dict(detectors) if detectors is not None
                                               else load_detectors(cfg, detector_factory, self.model_dirs))
        # (version, card threshold) per model FOLDER: a published folder never changes, so entries stay valid
        # across swaps and rollbacks and need no saving or restoring.
        self._card_thresholds: dict[Path, tuple[str, float | None]] = {}
        self.regions = self._resolve_regions()
        self._probation: dict[str, _Probation] = {}
        self.swap_counter = swap_counter(self.metrics.registry)
        self.watchers = {
            name: ModelWatcher(name, ref.registry, self.model_dirs[name].name, self._open_detector,
                               self.swap_counter, warm=self._make_warmer(name),
                               tolerance=cfg.infer.golden_tolerance)
            for name, ref in cfg.models.items() if ref.registry is not None and name in self.model_dirs
        }
        self._watcher_thread = WatcherThread(list(self.watchers.values()), cfg.infer.swap_poll_s)
        #: detector time per region crop (ns, moving average of the live batches; None until the first one).
        #: Frames that would finish after their deadline are shed before inference (see ``_shed``).
        self.crop_cost_ns: float | None = None
        #: throughput measured after the warm-up (None without one); ``run`` hands it to the supervisor.
        self.capacity: Capacity | None = None
        self.rejects: RejectWriter | None = None
        self.archive: ArchiveWriter | None = None
        #: maps are fetched from the detector only when a writer will use them (decided before the warm-up,
        #: so the warm-up runs the same graph as the live batches).
        self.want_maps = (cfg.infer.reject_dir is not None and cfg.infer.save_rejects) or cfg.archive is not None
        if cfg.infer.warmup:
            self.warm_up()
        versions = sorted({d.model_version for d in self.detectors.values()})
        backends = sorted({d.backend for d in self.detectors.values()})
        self.model_version = ",".join(versions)
        self.metrics.set_model(self.model_version, ",".join(backends))
        port = cfg.infer.metrics_port if metrics_port is None else metrics_port
        self.metrics_port = start_metrics_server(
            self.metrics, port, process="infer", key="infer.metrics_port", source=str(cfg.source_path or "the config")
        ) if port >= 0 else -1
        if cfg.infer.reject_dir is not None and cfg.infer.save_rejects:
            self.rejects = RejectWriter(cfg.infer.reject_dir, cfg.infer.reject_queue, self.metrics)
        if cfg.archive is not None:
            try:
                self.archive = ArchiveWriter(cfg.archive, self.metrics.registry)
            except ArchiveError as exc:
                raise ConfigError(f"{cfg.source_path or 'config'}: {exc.problems[0]}") from None
        self._stop = threading.Event()
        self.watchdog = sdnotify.Watchdog()
        self.verdicts_sent = 0
        self.verdicts_dropped = 0
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.frames_sock: zmq.Socket[Any] | None = None
        self.events_sock: zmq.Socket[Any] | None = None
        if bind:
            self.frames_sock = frame_pull_bind(self.ctx, self.frames_endpoint, cfg.transport)
            self.events_sock = event_push(self.ctx, cfg.events_endpoint(), cfg.transport)
            log.info("infer: frames on %s, verdicts to %s, models %s", self.frames_endpoint,
                     cfg.events_endpoint(), self.model_version)

    def _resolve_regions(self) -> dict[str, list[_Region]]:
        card_cache = self._card_thresholds
        out: dict[str, list[_Region]] = {}
        for cam in self.cfg.cameras:
            regions = []
            for region in cam.region_list():
                if region.model not in self.detectors:
                    raise ConfigError(f"camera {cam.name} region {region.name}: no detector for model "
                                      f"{region.model!r}")
                folder = self.model_dirs[region.model]
                if folder not in card_cache:
                    card_cache[folder] = card_version_threshold(folder)
                version, from_card = card_cache[folder]
                threshold, origin = region.threshold_for(version, from_card)
                if threshold is None:
                    raise ConfigError(f"camera {cam.name} region {region.name}: no threshold for model "
                                      f"{region.model!r} version {version!r} (regions.yaml has none for it and the "
                                      f"card has no calibrated threshold)")
                log.info("camera %s region %s: threshold %.5g for %s/%s from %s", cam.name, region.name,
                         threshold, region.model, version, origin)
                mask = load_mask(region.mask) if region.mask is not None else None
                regions.append(_Region(region, float(threshold), mask))
            out[cam.name] = regions
        return out

    def warm_up(self) -> None:
        """Run full batches of blank frames (each camera's configured size) through the whole path, twice.

        Backends compile per input shape on first use (seconds on a CPU); doing it here, before READY, keeps
        those seconds off the first live products. Uses throw-away metrics so the counters stay honest.
        """
        frames = []
        for cam in self.cfg.cameras:
            width = getattr(cam.source, "width", None)
            height = getattr(cam.source, "height", None)
            if width is None or height is None:
                continue  # size known only from the first real frame
            image = np.zeros((height, width, 3), np.uint8)
            header = FrameHeader(camera=cam.name, seq=0, slot=0, t_capture_ns=now_ns() + 3_600_000_000_000,
                                 shape=image.shape, dtype="uint8", pixel_format="RGB8")  # never stale
            frames.append(encode_frame(header, image))
        if not frames:
            return
        live_metrics, self.metrics = self.metrics, LineMetrics(self.metrics.deadline_s)
        try:
            t0 = time.monotonic()
            # Every small batch size occurs with a few cameras (jit backends specialise per shape); larger
            # ones only under load, so beyond 8 only the maximum is warmed.
            max_batch = self.cfg.infer.max_batch
            sizes = sorted(set(range(1, min(max_batch, 8) + 1)) | {max_batch})
            for n in sizes:
                batch = [(frames[i % len(frames)], now_ns()) for i in range(n)]
                for _ in range(2):
                    failed = [v.detail for v in self.process_batch(batch) if v.reason not in ("ok", "anomaly")]
                    if failed:
                        log.warning("warm-up batch of %d failed: %s", n, failed[0])
                        return
            log.info("warm-up done in %.1f s (batch sizes %s)", time.monotonic() - t0, sizes)
            self.capacity = self._measure_capacity(frames, max_batch)
            log.info("throughput: %s", self.capacity.describe())
        finally:
            self.metrics = live_metrics
            self.crop_cost_ns = None  # compile time is not the cost of a live batch

    def _measure_capacity(self, frames: Sequence[Any], batch_size: int, repeats: int = 5) -> Capacity:
        """Frames per second at full batches of the cameras' frames, compiled and warm (see runtime.capacity).

        The median of ``repeats`` timed batches after one untimed one: jit backends still specialise on the
        first calls after the warm-up, and one slow outlier must not slow the demo for the whole run."""
        batch = [(frames[i % len(frames)], now_ns()) for i in range(batch_size)]
        self.process_batch(batch)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            self.process_batch(batch)
            times.append(time.perf_counter_ns() - t0)
        per_frame_ns = max(1.0, float(np.median(times)) / batch_size)
        backends = ", ".join(sorted({f"{d.backend} {getattr(d, 'precision', '')}".strip()
                                     for d in self.detectors.values()}))
        return Capacity(frames_per_s=1e9 / per_frame_ns, ms_per_frame=per_frame_ns / 1e6, batch=batch_size,
                        backends=backends)

    # -- the core --------------------------------------------------------------------------------------
    def _decode(self, parts: Sequence[Any], received_ns: int) -> _Item:
        try:
            header, image = decode_frame(parts)
        except BadFrame as exc:
            self.metrics.frames.labels(camera=exc.camera).inc()
            return _Item(exc.camera, exc.seq, exc.slot, received_ns, reason="bad_frame", detail=exc.reason)
        item = _Item(header.camera, header.seq, header.slot, received_ns, header=header)
        self.metrics.frames.labels(camera=header.camera).inc()
        if header.t_sent_ns:
            self.metrics.stage_latency.labels(stage="transport").observe(max(0, received_ns - header.t_sent_ns) / 1e9)
        regions = self.regions.get(header.camera)
        if regions is None:
            item.reason, item.detail = "bad_frame", f"camera {header.camera!r} is not in the line config"
            return item
        try:
            item.rgb = to_rgb8(image, header.pixel_format)
            for region in regions:
                crop(item.rgb, region.config)  # checks the box fits this frame
        except ValueError as exc:
            item.reason, item.detail = "bad_frame", str(exc)
        return item

    def _run_model(self, model: str, entries: list[tuple[_Item, _Region, np.ndarray]], want_maps: bool) -> None:
        probation = self._probation.get(model)
        if probation is None:
            self._run_detector(model, entries, want_maps)
            return
        failure = self._run_detector(model, entries, want_maps, fail_fast=True)
        if failure is None:
            probation.remaining -= len(entries)
            if probation.remaining <= 0:
                self._commit(model)
            return
        self._roll_back(model, failure)
        for item, _, _ in entries:  # the previous version redoes the whole batch: no frame is lost
            item.scores.clear()
            item.maps.clear()
            item.models.discard(model)
        self._run_detector(model, entries, want_maps)

    def _run_detector(self, model: str, entries: list[tuple[_Item, _Region, np.ndarray]], want_maps: bool,
                      fail_fast: bool = False) -> str | None:
        """Score ``entries`` with the model's detector. With ``fail_fast`` (a version on probation) an
        exception or a non-finite score is returned as the failure text and no item is touched."""
        detector = self.detectors[model]
        shapes = {c.shape for _, _, c in entries}
        if len(shapes) == 1:
            stack = np.stack([c for _, _, c in entries])
        else:  # regions of different sizes share the model: bring them to its input size here
            h, w = detector.input_size
            stack = np.stack([cv2.resize(np.ascontiguousarray(c), (w, h), interpolation=cv2.INTER_AREA)
                              for _, _, c in entries])
        masks = None
        if any(r.mask is not None for _, r, _ in entries):
            h, w = detector.input_size
            masks = np.stack([
                cv2.resize(r.mask, (w, h), interpolation=cv2.INTER_NEAREST) if r.mask is not None
                else np.full((h, w), 255, np.uint8)
                for _, r, _ in entries
            ])
        try:
            detection = detector.detect(stack, masks=masks, return_maps=want_maps)
            scores = np.asarray(detection.scores, dtype=np.float64).reshape(-1)
            if scores.shape[0] != len(entries):
                raise RuntimeError(f"detector returned {scores.shape[0]} scores for {len(entries)} crops")
        except Exception as exc:
            log.exception("model %s failed on a batch of %d crops", model, len(entries))
            if fail_fast:
                return f"{type(exc).__name__}: {exc}"
            for item, region, _ in entries:
                if not item.reason:
                    item.reason = "error"
                    item.detail = f"model {model} region {region.config.name}: {type(exc).__name__}: {exc}"
            return None
        if fail_fast and not np.all(np.isfinite(scores)):
            return f"non-finite scores {scores[~np.isfinite(scores)][:3].tolist()}"
        for i, (item, region, _) in enumerate(entries):
            value = float(scores[i])
            item.scores[region.config.name] = value
            item.models.add(model)
            if not math.isfinite(value):
                if not item.reason:
                    item.reason, item.detail = "error", f"region {region.config.name}: non-finite score {value}"
                continue
            self.metrics.anomaly_score.observe(value)
            if detection.maps is not None:
                item.maps[region.config.name] = np.asarray(detection.maps[i])
        return None

    # -- hot swap ----------------------------------------------------------------------------------------
    def _open_detector(self, path: Path) -> Detector:
        return open_detector(self.cfg, path, self._factory)

    def _make_warmer(self, model: str) -> Callable[[Detector], None]:
        """A function that runs a candidate on blank crops of every shape this model sees here, at batch
        sizes 1 and max_batch, twice (the torch backends trace and specialise on the first calls)."""

        def warm(detector: Detector) -> None:
            shapes: set[tuple[int, int, bool]] = set()
            for cam in self.cfg.cameras:
                width = getattr(cam.source, "width", None)
                height = getattr(cam.source, "height", None)
                for region in self.regions.get(cam.name, []):
                    if region.config.model != model:
                        continue
                    if region.config.box is not None:
                        shapes.add((region.config.box[3], region.config.box[2], region.mask is not None))
                    elif width is not None and height is not None:
                        shapes.add((height, width, region.mask is not None))
            h_in, w_in = detector.input_size
            for h, w, masked in sorted(shapes):
                for n in sorted({1, self.cfg.infer.max_batch}):
                    crops = np.zeros((n, h, w, 3), np.uint8)
                    masks = np.full((n, h_in, w_in), 255, np.uint8) if masked else None
                    for _ in range(2):
                        detector.detect(crops, masks=masks, return_maps=self.want_maps)

        return warm

    def apply_swaps(self) -> list[str]:
        """Swap in every ready candidate (called between batches); returns the models swapped."""
        swapped = []
        for name, watcher in self.watchers.items():
            candidate = watcher.take()
            if candidate is None:
                continue
            if name in self._probation:  # a newer version arrived while one is on probation: settle that first
                self._commit(name)
            old_detector, old_dir = self.detectors[name], self.model_dirs[name]
            self.detectors[name], self.model_dirs[name] = candidate.detector, candidate.path
            self._card_thresholds[candidate.path] = (candidate.version, candidate.threshold)  # the checked card
            try:
                self.regions = self._resolve_regions()
            except (ConfigError, ValueError) as exc:
                self.detectors[name], self.model_dirs[name] = old_detector, old_dir
                log.error("model %s: version %s REFUSED: %s", name, candidate.version, exc)
                watcher.count("load_error")
                candidate.detector.close()
                continue
            watcher.active_version = candidate.version
            self._probation[name] = _Probation(old_detector, old_dir, watcher.active_version,
                                               old_dir.name, self.cfg.infer.swap_probation_frames)
            watcher.count("swapped")
            self._publish_model_info()
            log.info("model %s: swapped %s -> %s; previous kept until %d frames pass", name, old_dir.name,
                     candidate.version, self.cfg.infer.swap_probation_frames)
            swapped.append(name)
            if self.cfg.infer.swap_probation_frames == 0:
                self._commit(name)
        return swapped

    def _commit(self, model: str) -> None:
        probation = self._probation.pop(model)
        log.info("model %s: version %s served its probation; releasing %s", model, probation.version,
                 probation.previous_version)
        self.watchers[model].count("committed")
        try:
            probation.detector.close()
        except Exception:
            log.exception("closing the previous detector of %s failed", model)

    def _roll_back(self, model: str, failure: str) -> None:
        probation = self._probation.pop(model)
        failed = self.detectors[model]
        self.detectors[model], self.model_dirs[model] = probation.detector, probation.model_dir
        self.regions = self._resolve_regions()
        watcher = self.watchers[model]
        watcher.active_version = probation.previous_version
        watcher.count("rolled_back")
        self._publish_model_info()
        log.error("model %s: version %s FAILED in service (%s); rolled back to %s (the CURRENT pointer is not "
                  "changed; fix or move it)", model, probation.version, failure, probation.previous_version)
        try:
            failed.close()
        except Exception:
            log.exception("closing the failed detector of %s failed", model)

    def _publish_model_info(self) -> None:
        versions = sorted({d.model_version for d in self.detectors.values()})
        self.model_version = ",".join(versions)
        self.metrics.set_model(self.model_version, ",".join(sorted({d.backend for d in self.detectors.values()})))

    def process_batch(self, messages: Sequence[tuple[Sequence[Any], int]]) -> list[Verdict]:
        """One verdict per message, in order. ``messages``: (multipart frame, received wall-clock ns)."""
        items = [self._decode(parts, received_ns) for parts, received_ns in messages]
        batch_start = now_ns()
        self._shed(items, batch_start)
        for item in items:
            self.metrics.stage_latency.labels(stage="queue").observe(max(0, batch_start - item.received_ns) / 1e9)
        self.metrics.queue_depth.labels(queue="infer_batch").set(len(items))
        groups: dict[str, list[tuple[_Item, _Region, np.ndarray]]] = {}
        for item in items:
            if item.reason or item.rgb is None:
                continue
            for region in self.regions[item.camera]:
                groups.setdefault(region.config.model, []).append((item, region, crop(item.rgb, region.config)))
        for model, entries in groups.items():
            self._run_model(model, entries, self.want_maps)
        infer_done = now_ns()
        if groups:
            self.metrics.stage_latency.labels(stage="infer").observe((infer_done - batch_start) / 1e9)
            cost = (infer_done - batch_start) / sum(len(entries) for entries in groups.values())
            self.crop_cost_ns = cost if self.crop_cost_ns is None else 0.8 * self.crop_cost_ns + 0.2 * cost
        return [self._verdict(item, batch_start, infer_done) for item in items]

    def _shed(self, items: Sequence[_Item], batch_start: int) -> None:
        """Load shedding: answer ``timeout`` at once for frames that cannot get a verdict in time.

        Why predict, not only check: a frame past its deadline is rejected by the gate anyway, but when the
        worker falls behind, the frames at the head of its queue are *almost* due, and inferring them only
        produces verdicts a few ms late; every frame is then late and the line inspects nothing (measured on
        the demo line at 3 x 10 fps on two cores: 4 of 614 frames in time). So a frame is shed when its
        deadline falls before the expected end of this batch (the batch's crops times ``crop_cost_ns``);
        the earliest-due frame goes first, and the batch's expected end is recomputed without it. The
        compute then goes to frames that can still make it. Until a live batch has been timed, only
        frames already past their deadline are shed.

        The prediction never sheds the last live frame of a batch (the latest due): only inferred batches
        update ``crop_cost_ns``, so a worker that shed whole batches on one slow estimate would never measure
        again. That happened: on the demo line at 3 x 20 fps, start-up contention timed three batches at
        100-116 ms per crop, the estimate reached 350 ms, and from then on every frame was shed for the rest
        of the run (0 frames judged in 12 s). With one frame inferred per batch the estimate follows the
        real cost back down, at the price of at most one late verdict per batch while it does.
        """
        live: list[tuple[int, int, _Item]] = []  # (due, region crops, item)
        for item in items:
            if item.reason or item.header is None:
                continue
            due = item.header.deadline_ns
            if due is None:  # a producer that does not stamp it: worked out the way acquire does
                due = self.cfg.gate.due_ns(item.header.t_capture_ns)
            if due < batch_start:
                item.reason, item.detail = "timeout", "stale: capture + deadline passed before inference"
            else:
                live.append((due, len(self.regions.get(item.camera, ())), item))
        if self.crop_cost_ns is None or not self.cfg.infer.shed_late:
            return
        live.sort(key=lambda entry: entry[0])
        crops = sum(n for _, n, _ in live)
        for due, n, item in live[:-1]:  # the latest-due frame is always inferred (see above)
            expected_end = batch_start + self.crop_cost_ns * crops
            if due >= expected_end:
                break
            item.reason = "timeout"
            item.detail = (f"shed: inference would end {(expected_end - due) / 1e6:.1f} ms after the deadline "
                           f"({self.crop_cost_ns / 1e6:.1f} ms per crop)")
            crops -= n

    def _verdict(self, item: _Item, batch_start: int, infer_done: int) -> Verdict:
        regions = self.regions.get(item.camera, [])
        thresholds = {r.config.name: r.threshold for r in regions}
        if item.reason:
            decision, reason = "reject", item.reason
        elif any(decide(item.scores[r.config.name], r.threshold) == "reject" for r in regions):
            decision, reason = "reject", "anomaly"
        else:
            decision, reason = "accept", "ok"
        timestamps = {"received": item.received_ns, "batch_start": batch_start, "infer_done": infer_done}
        if item.header is not None:
            timestamps["capture"] = item.header.t_capture_ns
            if item.header.t_sent_ns:
                timestamps["acquire_sent"] = item.header.t_sent_ns
        versions = sorted({self.detectors[m].model_version for m in item.models})
        verdict = Verdict(
            camera=item.camera, seq=item.seq, slot=item.slot, decision=decision, reason=reason,  # type: ignore[arg-type]
            scores=item.scores, thresholds=thresholds if item.header is not None else {},
            model_version=",".join(versions) or self.model_version, timestamps=timestamps, detail=item.detail,
        )
        truth = item.header.truth.model_dump() if item.header is not None and item.header.truth else None
        if decision == "reject" and self.rejects is not None and item.rgb is not None:
            self.rejects.submit(RejectImage(item.camera, item.seq, item.slot, reason, np.array(item.rgb),
                                            self._region_maps(item, regions), dict(item.scores),
                                            dict(verdict.thresholds), verdict.model_version, truth))
        if self.archive is not None:  # decides itself (reason, accept sample) and copies only what it keeps
            self.archive.offer(verdict, item.rgb, self._region_maps(item, regions) if item.rgb is not None else None,
                               truth)
        return verdict

    @staticmethod
    def _region_maps(item: _Item, regions: list[_Region]
                     ) -> dict[str, tuple[tuple[int, int, int, int], np.ndarray | None]]:
        """Per region: its box in frame pixels (full frame when it has none) and its map, if one was made."""
        assert item.rgb is not None
        h, w = item.rgb.shape[:2]
        return {r.config.name: (r.config.box or (0, 0, w, h), item.maps.get(r.config.name)) for r in regions}

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
        max_batch = self.cfg.infer.max_batch
        wait_s = self.cfg.infer.max_wait_ms / 1000.0
        first = time.monotonic()
        while len(batch) < max_batch:
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
        sdnotify.ready(f"infer on {self.frames_endpoint}, models {self.model_version}")
        self._watcher_thread.start()
        try:
            while not self._stop.is_set():
                self.watchdog.tick()
                if self.watchers:
                    self.apply_swaps()
                if not poller.poll(50):
                    continue
                batch = self._collect(poller)
                if not batch:
                    continue
                for verdict in self.process_batch(batch):
                    self._send(verdict)
        finally:
            sdnotify.stopping()
            self.close()

    def close(self) -> None:
        self._watcher_thread.stop()
        for probation in self._probation.values():
            try:
                probation.detector.close()
            except Exception:
                log.exception("closing a previous detector failed")
        self._probation.clear()
        if self.rejects is not None:
            self.rejects.close()
        if self.archive is not None:
            self.archive.close()
        for sock in (self.frames_sock, self.events_sock):
            if sock is not None:
                sock.close(0)
        for det in self.detectors.values():
            try:
                det.close()
            except Exception:
                log.exception("closing detector failed")
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
