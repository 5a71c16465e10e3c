"""The line configuration: one typed schema, unknown keys refused, each process reads only its slice.

Why strict: a misspelt key on a production line (``dealine_ms``) must stop the start-up with the file and
field named, not silently fall back to a default. All relative paths resolve against the config file's
own folder, so ``linecam run --config /etc/linecam/line.yaml`` works from any working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from linecam.config.base import ConfigError, Strict
from linecam.config.regions import RegionConfig, RegionError, load_regions
from linecam.config.sources import (
    FolderSourceConfig,
    GenicamSourceConfig,
    SourceConfig,
)
from linecam.yamlfile import read_yaml

#: the supervisor creates one temporary runtime dir and hands it to its children through this variable.
RUNTIME_DIR_ENV = "LINECAM_RUNTIME_DIR"


class LineInfo(Strict):
    name: str = Field(min_length=1)
    station: str = Field(min_length=1)


class ModelRef(Strict):
    """A model inspected regions refer to by name: a fixed model directory (``path``) or a registry folder
    ``model/<name>`` (``registry``) whose ``CURRENT`` pointer the worker follows and hot-swaps."""

    path: Path | None = None
    registry: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.path is None) == (self.registry is None):
            raise ValueError("give exactly one of 'path' (a model directory) or 'registry' (model/<name>)")
        return self

    def model_dir(self) -> Path:
        """The model directory to load now: ``path``, or the version the registry's CURRENT points at."""
        if self.path is not None:
            return self.path
        from linecam.modelstore.versions import RegistryError, current_dir

        assert self.registry is not None
        try:
            return current_dir(self.registry)
        except RegistryError as exc:
            raise ConfigError(f"models registry {self.registry}: {exc}") from None


class CameraConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    source: SourceConfig
    #: a calibration folder holding regions.yaml, or an inline list; always a list after load_config.
    regions: Path | list[RegionConfig]

    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of this camera's frames when the config fixes it, else None (device default, folder)."""
        width, height = getattr(self.source, "width", None), getattr(self.source, "height", None)
        return (int(height), int(width)) if width and height else None

    def region_list(self) -> list[RegionConfig]:
        """The resolved regions (load_config always resolves a calibration folder into the list)."""
        if not isinstance(self.regions, list):
            raise ConfigError(f"camera {self.name}: regions folder {self.regions} was not loaded")
        return self.regions


class CurveConfig(Strict):
    """CURVE key files (zmq.auth format). Binders need the server secret and the client public key,
    connectors the server public key and the client secret; a process reads only what its side needs."""

    server_public: Path | None = None
    server_secret: Path | None = None
    client_public: Path | None = None
    client_secret: Path | None = None


class TransportConfig(Strict):
    frames_endpoint: str | None = None
    events_endpoint: str | None = None
    #: where the gate publishes verdicts and health for the operator page (PUB; default ipc in the runtime dir).
    feed_endpoint: str | None = None
    sndhwm: int = Field(4, ge=1, le=10_000)
    rcvhwm: int = Field(4, ge=1, le=10_000)
    curve: CurveConfig | None = None
    #: the largest pixel buffer a frame may have (cameras without a configured size); a larger message is
    #: dropped by ZeroMQ before it reaches the worker (MAXMSGSIZE).
    max_frame_bytes: int = Field(256 * 2**20, ge=1024)

    @field_validator("max_frame_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class InferConfig(Strict):
    backend: str = "auto"
    #: extra options for the backend's factory, e.g. ``{precision: fp32}`` to run torch-cpu in exact fp32
    #: where the bf16 scores drift too far for a model; ``threads`` comes from ``threads`` below.
    backend_options: dict[str, Any] = Field(default_factory=dict)
    #: how often the worker reads the CURRENT pointer of registry models (hot swap).
    swap_poll_s: float = Field(1.0, gt=0, le=3600)
    #: frames a swapped-in version must serve without error before the previous one is released; an error
    #: before that rolls back to the previous version automatically.
    swap_probation_frames: int = Field(50, ge=0, le=10_000_000)
    #: public keys (PEM files from ``linecam keygen --signing``) whose Ed25519 signature a model version must carry
    #: to be loaded or swapped in; empty: signatures are not checked (the sha256 list of the card still is).
    trusted_keys: list[Path] = Field(default_factory=list, max_length=64)
    #: |score| tolerance of the golden-image check of a new version (None: the card's own tolerance).
    golden_tolerance: float | None = Field(None, gt=0, le=1)
    max_batch: int = Field(8, ge=1, le=1024)
    max_wait_ms: float = Field(4.0, ge=0, le=10_000)
    threads: int = Field(2, ge=1, le=256)
    #: answer ``timeout`` at once, without inferring, for frames whose deadline falls before the expected end
    #: of their batch (false: shed only frames already past it). Off only to measure what it gains
    #: (``bench/pipeline.py --shed-baseline``): a frame inferred too late is rejected by the gate anyway.
    shed_late: bool = True
    reject_dir: Path | None = None
    save_rejects: bool = True
    reject_queue: int = Field(16, ge=1, le=10_000)
    #: run each model on blank frames of the cameras' sizes before serving (JIT/graph builds happen then,
    #: not on the first live products).
    warmup: bool = True
    metrics_port: int = Field(9110, ge=0, le=65535)


#: reasons a rejected frame can carry when it reaches the worker (``overload`` never does).
ArchiveReason = Literal["anomaly", "error", "bad_frame", "timeout"]
ARCHIVE_REASONS: tuple[ArchiveReason, ...] = ("anomaly", "error", "bad_frame", "timeout")
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any) -> int:
    """Bytes from an int or a text like ``"20 GB"``, ``"500MiB"``, ``"1.5e9"`` (YAML reads ``20e9`` as text)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size in bytes or a text like '20 GB', got {value!r}")
    match = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)([a-z]*)", value.strip().lower().replace(" ", ""))
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"size {value!r}: expected a number with an optional unit {sorted(_SIZE_UNITS)[1:]}")
    try:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    except ValueError:
        raise ValueError(f"size {value!r}: {match.group(1)!r} is not a number") from None


class ArchiveConfig(Strict):
    """The inspection archive the worker keeps for review and retraining (``linecam.runtime.archive``).

    Rejects with a reason in ``reasons`` are always archived, accepted frames at ``accept_sample_rate``
    (chosen by a hash of camera and sequence number, so a run is reproducible and a carousel's period cannot
    alias with the sample). ``max_bytes`` caps the day folders (oldest pruned first, down to
    ``prune_to_fraction`` of the cap), ``max_age_days`` drops whole days; ``reviewed/`` is never pruned.
    """

    path: Path
    accept_sample_rate: float = Field(0.01, ge=0.0, le=1.0)
    reasons: list[ArchiveReason] = Field(
        default_factory=lambda: list(ARCHIVE_REASONS))
    max_bytes: int = Field(20 * 10**9, ge=1)
    max_age_days: int = Field(30, ge=1, le=36500)
    prune_to_fraction: float = Field(0.9, gt=0.0, le=1.0)
    prune_interval_s: float = Field(60.0, gt=0, le=86400)
    queue: int = Field(32, ge=1, le=10_000)
    #: also store each region's raw map as a 16-bit PNG (value * 65535), next to the heatmap overlay.
    save_maps: bool = True

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class LogPlcConfig(Strict):
    """Write every result as a JSON line (stdout, or ``path``): for the demo and for dry runs."""

    kind: Literal["log"] = "log"
    path: Path | None = None


class ModbusPlcConfig(Strict):
    """Modbus/TCP holding-register link; see docs/plc_registers.md for the register map."""

    kind: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    device_id: int = Field(1, ge=0, le=255)
    base_register: int = Field(100, ge=0, le=65535 - 8)
    heartbeat_register: int = Field(99, ge=0, le=65535)
    heartbeat_period_s: float = Field(1.0, gt=0, le=60)
    timeout_s: float = Field(0.5, gt=0, le=30)
    reconnect_min_s: float = Field(0.1, gt=0, le=60)
    reconnect_max_s: float = Field(5.0, gt=0, le=600)


PlcConfig = Annotated[LogPlcConfig | ModbusPlcConfig, Field(discriminator="kind")]


class GateConfig(Strict):
    deadline_ms: float = Field(300.0, gt=0, le=600_000)
    #: how long a verdict that arrives before its announcement is held for matching.
    hold_ms: float = Field(1000.0, gt=0, le=600_000)
    audit_log: Path | None = None
    plc: PlcConfig = Field(default_factory=lambda: LogPlcConfig.model_validate({}))
    #: how long after a product's deadline its result may still reach the PLC (the reject station's window; may be
    #: negative to leave the PLC time to act). A result that cannot be written by then is dropped and counted,
    #: never written late.
    plc_margin_ms: float = Field(0.0, ge=-600_000, le=600_000)
    metrics_port: int = Field(9111, ge=0, le=65535)
    sweep_ms: float = Field(2.0, gt=0, le=1000)
    #: a camera is stalled after this many of its frame periods without a frame (runtime.stalls).
    stall_periods: float = Field(5.0, gt=1, le=10_000)

    @property
    def deadline_s(self) -> float:
        """The deadline in seconds (metric buckets, drains)."""
        return self.deadline_ms / 1000.0

    @property
    def deadline_ns(self) -> int:
        return int(round(self.deadline_ms * 1e6))

    def due_ns(self, t_capture_ns: int) -> int:
        """When the verdict of a product captured at ``t_capture_ns`` is due: the one place capture + deadline
        is worked out (acquire stamps it into the announcement and the frame header)."""
        return t_capture_ns + self.deadline_ns


class UiConfig(Strict):
    """The operator web page (``linecam ui``): a read-only view of the live line."""

    #: loopback unless operators on other hosts must reach it (then this host's address, behind a firewall).
    address: str = Field("127.0.0.1", min_length=1)
    #: 0: any free port (``linecam run`` prints the URL; the process writes it to ``<runtime dir>/ui-url``).
    port: int = Field(8088, ge=0, le=65535)
    #: a file holding the access token; when set, every request without it is refused (401).
    token_file: Path | None = None
    #: recent verdicts kept in memory (the audit log stays the record).
    window: int = Field(500, ge=10, le=100_000)
    #: alert when a camera's share of products judged by the model in time falls below this (last 30 s).
    min_in_time_share: float = Field(0.95, ge=0, le=1)


class AcquireConfig(Strict):
    metrics_base_port: int = Field(9101, ge=0, le=65535)
    #: ``linecam run`` slows synthetic cameras to the rate the worker measured it can judge in time on this
    #: machine (``linecam.runtime.capacity``); false keeps the configured rate (to measure overload).
    fit_synthetic_fps: bool = True


class LineConfig(Strict):
    line: LineInfo
    runtime_dir: Path | None = None
    models: dict[str, ModelRef]
    cameras: list[CameraConfig] = Field(min_length=1)
    transport: TransportConfig = Field(default_factory=lambda: TransportConfig.model_validate({}))
    infer: InferConfig = Field(default_factory=lambda: InferConfig.model_validate({}))
    gate: GateConfig = Field(default_factory=lambda: GateConfig.model_validate({}))
    acquire: AcquireConfig = Field(default_factory=lambda: AcquireConfig.model_validate({}))
    #: rejects and sampled accepts with heatmaps and verdicts, for review and retraining (None: off).
    archive: ArchiveConfig | None = None
    #: the operator web page (None: not started by ``linecam run``).
    ui: UiConfig | None = None
    #: the address every process's /metrics endpoint listens on: loopback unless a Prometheus server on another
    #: host must scrape it (then this host's address on that network, or 0.0.0.0 behind a firewall).
    metrics_address: str = Field("127.0.0.1", min_length=1)
    #: the file this config came from (set by load_config; None for configs built in code).
    source_path: Path | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> LineConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate camera names {dupes}")
        for i, cam in enumerate(self.cameras):
            if isinstance(cam.regions, list):
                for j, region in enumerate(cam.regions):
                    if region.model not in self.models:
                        raise ValueError(
                            f"cameras[{i}] ({cam.name}).regions[{j}] ({region.name}): model {region.model!r} "
                            f"is not in models {sorted(self.models)}"
                        )
        return self

    def camera(self, name: str) -> CameraConfig:
        """The camera called ``name``; ConfigError listing the known cameras otherwise."""
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise ConfigError(f"{self.source_path or 'config'}: no camera {name!r}; cameras: "
                          f"{[c.name for c in self.cameras]}")

    def camera_index(self, name: str) -> int:
        return [c.name for c in self.cameras].index(self.camera(name).name)

    def runtime_path(self) -> Path:
        """The folder for ipc sockets and default logs.

        ``runtime_dir`` when set; else ``$LINECAM_RUNTIME_DIR`` (the supervisor creates a temporary folder and
        exports it to its children so they all meet at the same sockets). Without either, separate processes
        could never find each other, so that is an error rather than a private temp folder.
        """
        if self.runtime_dir is not None:
            return self.runtime_dir
        env = os.environ.get(RUNTIME_DIR_ENV)
        if env:
            return Path(env)
        raise ConfigError(
            f"{self.source_path or 'config'}: runtime_dir is null and ${RUNTIME_DIR_ENV} is not set; start the "
            "line with `linecam run` (which creates a temporary runtime dir) or set runtime_dir"
        )

    def frames_endpoint(self) -> str:
        return self.transport.frames_endpoint or f"ipc://{self.runtime_path() / 'frames.sock'}"

    def events_endpoint(self) -> str:
        return self.transport.events_endpoint or f"ipc://{self.runtime_path() / 'events.sock'}"

    def feed_endpoint(self) -> str:
        return self.transport.feed_endpoint or f"ipc://{self.runtime_path() / 'feed.sock'}"

    def audit_log_path(self) -> Path:
        """Where the gate appends its audit lines: ``gate.audit_log`` or ``<runtime dir>/audit.jsonl``."""
        return self.gate.audit_log or self.runtime_path() / "audit.jsonl"


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_paths(cfg: LineConfig, base: Path, source: str) -> LineConfig:
    models = {name: ModelRef(path=_resolve(ref.path, base), registry=_resolve(ref.registry, base))
              for name, ref in cfg.models.items()}
    for name, ref in models.items():
        if ref.registry is not None and not ref.registry.is_dir():
            raise ConfigError(f"{source}: models.{name}.registry: {ref.registry} is not a folder")
    cameras = []
    for i, cam in enumerate(cfg.cameras):
        src: Any = cam.source
        if isinstance(src, GenicamSourceConfig):
            src = src.model_copy(update={"cti": _resolve(src.cti, base)})
        elif isinstance(src, FolderSourceConfig):
            src = src.model_copy(update={"path": _resolve(src.path, base)})
        if isinstance(cam.regions, list):
            regions = [
                r.model_copy(update={"mask": _resolve(r.mask, base)}) if r.mask is not None else r
                for r in cam.regions
            ]
        else:
            folder = _resolve(cam.regions, base)
            assert folder is not None
            try:
                regions = load_regions(folder)
            except RegionError as exc:
                raise ConfigError(f"{source}: cameras[{i}] ({cam.name}).regions: {exc}") from None
            for j, region in enumerate(regions):
                if region.model not in cfg.models:
                    raise ConfigError(
                        f"{source}: cameras[{i}] ({cam.name}).regions[{j}] ({region.name}) from {folder}: "
                        f"model {region.model!r} is not in models {sorted(cfg.models)}"
                    )
        cameras.append(cam.model_copy(update={"source": src, "regions": regions}))
    transport = cfg.transport
    if transport.curve is not None:
        c = transport.curve
        curve = CurveConfig(
            server_public=_resolve(c.server_public, base),
            server_secret=_resolve(c.server_secret, base),
            client_public=_resolve(c.client_public, base),
            client_secret=_resolve(c.client_secret, base),
        )
        transport = transport.model_copy(update={"curve": curve})
    from linecam.modelstore.signing import SignatureError, load_public_key

    trusted_keys = [_resolve(p, base) for p in cfg.infer.trusted_keys]
    for i, key_path in enumerate(trusted_keys):
        try:
            load_public_key(key_path)  # type: ignore[arg-type]  # _resolve keeps a Path a Path
        except SignatureError as exc:
            raise ConfigError(f"{source}: infer.trusted_keys[{i}]: {exc}") from None
    infer = cfg.infer.model_copy(update={"reject_dir": _resolve(cfg.infer.reject_dir, base),
                                         "trusted_keys": trusted_keys})
    plc = cfg.gate.plc
    if isinstance(plc, LogPlcConfig) and plc.path is not None:
        plc = plc.model_copy(update={"path": _resolve(plc.path, base)})
    gate = cfg.gate.model_copy(update={"audit_log": _resolve(cfg.gate.audit_log, base), "plc": plc})
    archive = (cfg.archive.model_copy(update={"path": _resolve(cfg.archive.path, base)})
               if cfg.archive is not None else None)
    ui = cfg.ui.model_copy(update={"token_file": _resolve(cfg.ui.token_file, base)}) if cfg.ui is not None else None
    return cfg.model_copy(
        update={
            "runtime_dir": _resolve(cfg.runtime_dir, base),
            "models": models,
            "cameras": cameras,
            "transport": transport,
            "infer": infer,
            "gate": gate,
            "archive": archive,
            "ui": ui,
            "source_path": Path(source),
        }
    )


def parse_config(raw: Any, source: str = "<config>", base_dir: Path | None = None) -> LineConfig:
    """Validate an already-parsed YAML document; paths resolve against ``base_dir`` (default: cwd)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    if "source_path" in raw:
        raise ConfigError(f"{source}: source_path: extra inputs are not permitted")
    try:
        cfg = LineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation(exc)}") from None
    return _resolve_paths(cfg, (base_dir or Path.cwd()).resolve(), source)


def load_config(path: str | Path) -> LineConfig:
    """Read and validate a line config file; every error names ``path`` and the field."""
    path = Path(path)
    raw = read_yaml(path, ConfigError, "config file")
    return parse_config(raw, str(path), path.resolve().parent)

