"""PLC links of the gate: the PlcLink protocol, a JSON-lines log link and a Modbus/TCP link, chosen by
``gate.plc.kind`` through the plug-in registry (``linecam.plugins``); each link module is imported only when a
config names it (the log link never loads pymodbus)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from linecam.config import LogPlcConfig, ModbusPlcConfig
from linecam.plugins import Registry
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.plc.base import PlcLink, PlcResult

#: PLC link kinds (the config's ``gate.plc.kind``) -> a factory ``(config, metrics) -> PlcLink``.
PLC_LINKS: Registry[Callable[..., PlcLink]] = Registry("PLC link")
PLC_LINKS.add("log", "linecam.runtime.plc.log:LogLink.from_config")
PLC_LINKS.add("modbus", "linecam.runtime.plc.modbus:ModbusLink")


def create_plc_link(cfg: LogPlcConfig | ModbusPlcConfig, metrics: LineMetrics | None = None) -> PlcLink:
    """Build the link the config names."""
    factory: Any = PLC_LINKS.get(cfg.kind)
    link: PlcLink = factory(cfg, metrics)
    return link


__all__ = ["PLC_LINKS", "PlcLink", "PlcResult", "create_plc_link"]
