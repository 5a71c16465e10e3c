"""A Modbus/TCP PLC simulator: a holding-register table served on a TCP port, for tests and the demo.

Why: the Modbus link must be tested against a real server over a real socket, and read back by an
independent client (mbpoll). Run: ``python -m linecam.runtime.plc.sim_server --port 5020``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartTcpServer


def build_context(registers: int = 1024) -> ModbusServerContext:
    """One device (any unit id) with ``registers`` zeroed holding registers starting at PDU address 0."""
    device = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, [0] * registers))
    return ModbusServerContext(devices=device, single=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--registers", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"plc-sim listening on {args.host}:{args.port}", flush=True)
    StartTcpServer(context=build_context(args.registers), address=(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
