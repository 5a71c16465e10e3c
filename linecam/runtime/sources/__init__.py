"""Camera sources for acquire: one ``FrameSource`` protocol, one module per kind (genicam, synthetic, folder).

``create_source`` maps a config model to its source class through a registry keyed by the config type, so
adding a kind never touches acquire. Source modules are imported lazily: a synthetic camera process never
loads the GenTL libraries and a GenICam process never loads the renderer.
"""

from __future__ import annotations

import importlib

from linecam.config.sources import (
    FolderSourceConfig,
    GenicamSourceConfig,
    SourceConfig,
    SyntheticSourceConfig,
    TriggerConfig,
)
from linecam.runtime.sources.base import EndOfStream, FrameSource, GrabbedFrame, SourceError

#: config type -> (module, class) implementing it.
SOURCE_CLASSES: dict[type, tuple[str, str]] = {
    SyntheticSourceConfig: ("linecam.runtime.sources.synthetic", "SyntheticSource"),
    GenicamSourceConfig: ("linecam.runtime.sources.genicam", "GenicamSource"),
    FolderSourceConfig: ("linecam.runtime.sources.folder", "FolderSource"),
}


def create_source(config: SyntheticSourceConfig | GenicamSourceConfig | FolderSourceConfig) -> FrameSource:
    """Build (not open) the source for one camera's ``source:`` config."""
    try:
        module_name, class_name = SOURCE_CLASSES[type(config)]
    except KeyError:
        raise ValueError(f"no camera source registered for config type {type(config).__name__}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    source: FrameSource = cls(config)
    return source


__all__ = [
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
