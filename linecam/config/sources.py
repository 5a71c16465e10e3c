"""Typed configuration of camera sources, one model per kind, chosen by ``kind``.

A discriminated union (rather than one loose dict) means a typo in a GenICam option is refused when the
config is loaded, naming the field, instead of being silently ignored on the production line.
Paths are kept as given; :mod:`linecam.config.line` resolves relative paths against the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from linecam.config.base import Strict


class SyntheticSourceConfig(Strict):
    """The project's own BFS-vial renderer, paced to ``fps``; carries ground truth for demo statistics."""

    kind: Literal["synthetic"] = "synthetic"
    fps: float = Field(20.0, gt=0, le=10_000)
    width: int = Field(256, ge=16, le=16384)
    height: int = Field(256, ge=16, le=16384)
    defect_rate: float = Field(0.1, ge=0.0, le=1.0)
    outside_roi_rate: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = 0
    area: str = "meniscus"
    channels: Literal[1, 3] = 3
    #: render this many frames at start-up and replay them in a loop (0: render every frame live). Rendering
    #: a 256 px frame costs ~40 ms of CPU; on a small demo machine that CPU is better spent on inference.
    prerender: int = Field(0, ge=0, le=10_000)


class TriggerConfig(Strict):
    """GenICam SFNC trigger settings; applied only when the device's node map has the features."""

    mode: Literal["Off", "On"] = "Off"
    source: str = "Line1"
    activation: str = "RisingEdge"


class GenicamSourceConfig(Strict):
    """A GenICam camera behind a GenTL producer (``.cti``) driven through harvesters.

    The device is chosen by ``serial``, else ``user_name``, else ``device_index`` (default 0). ``None`` for a
    setting means "leave the device's value as it is".
    """

    kind: Literal["genicam"] = "genicam"
    cti: Path
    serial: str | None = None
    user_name: str | None = None
    device_index: int | None = Field(None, ge=0)
    pixel_format: str = "Mono8"
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    exposure_us: float | None = Field(None, gt=0)
    frame_rate: float | None = Field(None, gt=0)
    trigger: TriggerConfig | None = None
    fetch_timeout_s: float = Field(1.0, gt=0, le=60)
    num_buffers: int = Field(8, ge=2, le=256)


class FolderSourceConfig(Strict):
    """Replays recorded PNG/JPEG files from a folder in name order (truth from ``labels.jsonl`` if present)."""

    kind: Literal["folder"] = "folder"
    path: Path
    fps: float = Field(10.0, gt=0, le=10_000)
    loop: bool = True


SourceConfig = Annotated[
    SyntheticSourceConfig | GenicamSourceConfig | FolderSourceConfig,
    Field(discriminator="kind"),
]
