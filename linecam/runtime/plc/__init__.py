"""PLC links of the gate: the PlcLink protocol, a JSON-lines log link and a Modbus/TCP link."""

from linecam.runtime.plc.base import PlcLink, PlcResult, create_plc_link

__all__ = ["PlcLink", "PlcResult", "create_plc_link"]
