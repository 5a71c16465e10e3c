"""A Modbus/TCP PLC simulator: a holding-register table served on a TCP port, for tests and the demo.

Why: the Modbus link must be tested against a real server over a real socket, and read back by an
independent client (mbpoll). Run: ``python -m linecam.runtime.plc.sim_server --port 5020``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartTcpServer


def build_context(registers: int = 1024, journal: Path | None = None) -> ModbusServerContext:
    """One device (any unit id) with ``registers`` zeroed holding registers starting at PDU address 0.

    With ``journal``, every write is appended as a JSON line (server time, address, values): how tests see
    *when* each result reached the PLC, e.g. after the PLC was stopped and continued."""
    device = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, [0] * registers))
    if journal is not None:
        sink = journal.open("a", buffering=1)

        async def record(function_code: int, start_address: int, address: int, count: int,
                         current_registers: list[int], set_values: Any) -> None:
            if set_values is not None:
                values = [int(v) for v in set_values]
                sink.write(json.dumps({"t_ns": time.time_ns(), "address": address, "values": values}) + "\n")

        device.simdevice.action = record
    return ModbusServerContext(devices=device, single=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--registers", type=int, default=1024)
    parser.add_argument("--journal", type=Path, default=None, help="append a JSON line per write (time, address)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"plc-sim listening on {args.host}:{args.port}", flush=True)
    StartTcpServer(context=build_context(args.registers, args.journal), address=(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
