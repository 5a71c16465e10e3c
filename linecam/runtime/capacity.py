"""What the inference worker can judge per second on this machine, and what the line does when cameras send more.

Why: the demo's 3 cameras x 10 fps hold on a Xeon with bf16, but on an AVX2-only CPU the same line judged a
third of its products and rejected the rest by ``timeout``: fail-safe rejects for lack of time, which a newcomer
reads as a broken model. The worker measures its throughput at start-up, after the warm-up (full batches of
the cameras' frame sizes, every region, the configured backend), and writes it into the runtime folder before
READY. ``linecam run`` reads it before starting the cameras and then either

- slows the *synthetic* cameras (the demo's; their rate is ours to choose) to a rate the worker holds with
  headroom, saying so once (``acquire.fit_synthetic_fps``, default on), or
- for real cameras, whose rate the machine sets, keeps the rate and says once that this CPU is too slow for it,
  how many products it will judge in time, and what the ``timeout`` rejects mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from linecam.config import FolderSourceConfig, GenicamSourceConfig, LineConfig, SyntheticSourceConfig
from linecam.files import atomic_write

CAPACITY_FILE = "infer-capacity.json"
#: share of the measured throughput a fitted demo plans for: queueing at a busy worker pushes latency
#: towards the deadline long before 100%, and the cameras, gate and status share the cores with it. At 0.7 the
#: demo rehearsed on AVX2 (51 ms per frame) ran at p99 257 ms against its 300 ms deadline, 1% timeouts.
UTILISATION = 0.6

__all__ = ["CAPACITY_FILE", "UTILISATION", "Capacity", "RatePlan", "camera_fps", "plan_rate", "read_capacity",
           "write_capacity"]


@dataclass(frozen=True)
class Capacity:
    """The worker's measured throughput: frames (all their regions) per second at full batches."""

    frames_per_s: float
    ms_per_frame: float
    batch: int
    backends: str
    #: what ``backend: auto`` chose for each model and why (empty for a named backend).
    choice: str = ""

    def describe(self) -> str:
        return (f"about {self.frames_per_s:.1f} frames/s ({self.ms_per_frame:.1f} ms per frame at batch "
                f"{self.batch}, {self.backends})")


def write_capacity(folder: Path, capacity: Capacity) -> Path:
    """Write ``folder/infer-capacity.json`` (atomically: the supervisor may read it at any moment)."""
    path = folder / CAPACITY_FILE
    atomic_write(path, (json.dumps(asdict(capacity)) + "\n").encode())
    return path


def read_capacity(folder: Path) -> Capacity | None:
    """The capacity the worker wrote into ``folder``, or None (not measured: no warm-up, unknown frame sizes)."""
    try:
        raw = json.loads((folder / CAPACITY_FILE).read_text())
        cap = Capacity(float(raw["frames_per_s"]), float(raw["ms_per_frame"]), int(raw["batch"]),
                       str(raw["backends"]), str(raw.get("choice", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cap if math.isfinite(cap.frames_per_s) and cap.frames_per_s > 0 else None


def camera_fps(config: LineConfig, name: str) -> float | None:
    """The frame rate camera ``name`` is configured for (None: set by the device, e.g. hardware trigger)."""
    source = config.camera(name).source
    if isinstance(source, SyntheticSourceConfig | FolderSourceConfig):
        return float(source.fps)
    if isinstance(source, GenicamSourceConfig):
        return float(source.frame_rate) if source.frame_rate is not None else None
    return None


@dataclass(frozen=True)
class RatePlan:
    """What ``linecam run`` does about the cameras' rate: the config to start them with and what to say."""

    config: LineConfig
    message: str | None
    fitted: bool = False


def plan_rate(config: LineConfig, capacity: Capacity, utilisation: float = UTILISATION) -> RatePlan:
    """Fit the synthetic cameras to ``capacity`` or warn once; an unchanged config when the worker keeps up."""
    rates = {cam.name: camera_fps(config, cam.name) for cam in config.cameras}
    demand = sum(r for r in rates.values() if r is not None)
    deadline_ms = config.gate.deadline_ms
    slow_frame = capacity.ms_per_frame > deadline_ms
    if demand <= utilisation * capacity.frames_per_s and not slow_frame:
        return RatePlan(config, None)
    synthetic = all(isinstance(cam.source, SyntheticSourceConfig) for cam in config.cameras)
    if synthetic and config.acquire.fit_synthetic_fps and not slow_frame:
        factor = utilisation * capacity.frames_per_s / demand
        cameras, new_rates = [], []
        for cam in config.cameras:
            fps = max(0.1, math.floor(10.0 * (rates[cam.name] or 0.0) * factor + 1e-9) / 10.0)
            new_rates.append(fps)
            cameras.append(cam.model_copy(update={"source": cam.source.model_copy(update={"fps": fps})}))
        fitted = config.model_copy(update={"cameras": cameras})
        each = f"{new_rates[0]:g} fps each" if len(set(new_rates)) == 1 else "/".join(f"{r:g}" for r in new_rates)
        return RatePlan(fitted, (
            f"this CPU judges {capacity.describe()}; the {len(cameras)} synthetic cameras would send "
            f"{demand:.1f} frames/s, so they run at {each} ({sum(new_rates):.1f} frames/s), a rate the worker "
            f"can judge within the {deadline_ms:g} ms deadline (acquire.fit_synthetic_fps: false keeps the "
            "configured rate)"), fitted=True)
    in_time = min(1.0, capacity.frames_per_s / demand) if demand > 0 else 1.0
    if slow_frame:
        why = (f"one frame takes {capacity.ms_per_frame:.0f} ms, longer than the {deadline_ms:g} ms deadline "
               "(gate.deadline_ms)")
    else:
        why = (f"the cameras send {demand:.1f} frames/s: expect about {100 * (1 - in_time):.0f}% of the products "
               "to be rejected by timeout")
    return RatePlan(config, (
        f"warning: this CPU judges {capacity.describe()}; {why}. A timeout is a fail-safe reject for lack of "
        "time, not the model's verdict: lower the cameras' rate, choose a faster backend or precision, or run "
        "on a faster machine"))
