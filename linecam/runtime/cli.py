"""Subcommands ``infer`` and ``gate``: load the config, run the process, exit 2 on bad input.

Imports of zmq/torch are deferred into the handlers so ``linecam --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_INPUT = 2


def _run(args: argparse.Namespace, which: str) -> int:
    from linecam.config import ConfigError, load_config
    from linecam.config.regions import RegionError
    from linecam.runtime.metrics import PortInUseError
    from linecam.runtime.transport import TransportError

    try:
        config = load_config(args.config)
        if which == "infer":
            from linecam.runtime.infer import main as infer_main

            return infer_main(config)
        from linecam.runtime.gate import main as gate_main

        return gate_main(config)
    except (ConfigError, RegionError, TransportError, PortInUseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def register(subparsers: Any) -> None:
    """Add ``infer`` and ``gate`` to the ``linecam`` command."""
    p = subparsers.add_parser("infer", help="run the inference worker (frames in, verdicts to the gate)")
    p.add_argument("--config", required=True, help="line config YAML")
    p.set_defaults(func=lambda a: _run(a, "infer"))
    p = subparsers.add_parser("gate", help="run the gate (one verdict per product, in time; PLC; audit log)")
    p.add_argument("--config", required=True, help="line config YAML")
    p.set_defaults(func=lambda a: _run(a, "gate"))
