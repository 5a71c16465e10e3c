"""What the gate hands to a PLC link (the ``PlcLink`` protocol and ``PlcResult``).

Why a protocol: the gate decides; how the decision reaches the machine (Modbus registers, a log for a dry
run, later perhaps OPC UA) is a plug-in picked by ``gate.plc.kind``. A link never blocks the gate for
long and never invents results: when the PLC is unreachable it counts the failure and the PLC's own
heartbeat watchdog stops the line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class PlcResult:
    """The decision for one product, as the PLC needs it."""

    slot: int
    decision: str
    reason: str
    score: float
    camera: str
    camera_index: int
    seq: int
    #: wall-clock ns by which the result must be in the PLC (its product's deadline plus ``gate.plc_margin_ms``);
    #: a link never writes it later (a late reject ejects another product). None: no limit (tests, dry runs).
    write_by_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class PlcLink(Protocol):
    def send(self, result: PlcResult) -> None:
        """Hand one result to the PLC (non-blocking or bounded by the link's timeout)."""
        ...

    def heartbeat(self) -> None:
        """Called often from the gate loop; the link toggles its heartbeat when its period has passed."""
        ...

    def close(self) -> None:
        ...
