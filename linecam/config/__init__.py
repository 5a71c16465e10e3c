"""The line configuration, one package: the strict base, the camera sources, the inspection regions and the line.

Everything a process reads from a config file is validated here, with the file and field named on error;
each process then reads only its slice. Import the names from ``linecam.config``.
"""

from linecam.config.base import ConfigError, Strict
from linecam.config.line import (
    ARCHIVE_REASONS,
    RUNTIME_DIR_ENV,
    AcquireConfig,
    ArchiveConfig,
    ArchiveReason,
    CameraConfig,
    CurveConfig,
    GateConfig,
    InferConfig,
    LineConfig,
    LineInfo,
    LogPlcConfig,
    ModbusPlcConfig,
    ModelRef,
    PlcConfig,
    TransportConfig,
    UiConfig,
    load_config,
    parse_config,
    parse_size,
)
from linecam.config.regions import REGIONS_FILE, RegionConfig, RegionError, load_regions, parse_regions
from linecam.config.sources import (
    FolderSourceConfig,
    GenicamSourceConfig,
    SourceConfig,
    SyntheticSourceConfig,
    TriggerConfig,
)

__all__ = [
    "ARCHIVE_REASONS",
    "REGIONS_FILE",
    "RUNTIME_DIR_ENV",
    "AcquireConfig",
    "ArchiveConfig",
    "ArchiveReason",
    "CameraConfig",
    "ConfigError",
    "CurveConfig",
    "FolderSourceConfig",
    "GateConfig",
    "GenicamSourceConfig",
    "InferConfig",
    "LineConfig",
    "LineInfo",
    "LogPlcConfig",
    "ModbusPlcConfig",
    "ModelRef",
    "PlcConfig",
    "RegionConfig",
    "RegionError",
    "SourceConfig",
    "Strict",
    "SyntheticSourceConfig",
    "TransportConfig",
    "UiConfig",
    "TriggerConfig",
    "load_config",
    "load_regions",
    "parse_config",
    "parse_regions",
    "parse_size",
]
