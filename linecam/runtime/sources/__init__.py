"""Camera sources for acquire: one ``FrameSource`` protocol, one module per kind (genicam, synthetic, folder).

``create_source`` maps a config's ``kind`` to its source class through the plug-in registry (``linecam.plugins``),
so adding a kind never touches acquire. Source modules are imported lazily: a synthetic camera process never
loads the GenTL libraries and a GenICam process never loads the renderer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from linecam.config.sources import (
    FolderSourceConfig,
    GenicamSourceConfig,
    SourceConfig,
    SyntheticSourceConfig,
    TriggerConfig,
)
from linecam.plugins import Registry
from linecam.runtime.sources.base import EndOfStream, FrameSource, GrabbedFrame, SourceError

#: source kinds (the config's ``kind``) -> the class implementing it, imported on first use.
SOURCES: Registry[Callable[[Any], FrameSource]] = Registry("camera source")
SOURCES.add("synthetic", "linecam.runtime.sources.synthetic:SyntheticSource")
SOURCES.add("genicam", "linecam.runtime.sources.genicam:GenicamSource")
SOURCES.add("folder", "linecam.runtime.sources.folder:FolderSource")


def create_source(config: SyntheticSourceConfig | GenicamSourceConfig | FolderSourceConfig) -> FrameSource:
    """Build (not open) the source for one camera's ``source:`` config."""
    kind = getattr(config, "kind", None)
    if kind not in SOURCES.names():
        raise ValueError(f"no camera source registered for config type {type(config).__name__}")
    return SOURCES.get(kind)(config)


__all__ = [
    "SOURCES",
    "EndOfStream",
    "FolderSourceConfig",
    "FrameSource",
    "GenicamSourceConfig",
    "GrabbedFrame",
    "SourceConfig",
    "SourceError",
    "SyntheticSourceConfig",
    "TriggerConfig",
    "create_source",
]
