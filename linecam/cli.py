"""The `linecam` command: one entry point whose subcommands are contributed by each area of the package.

Each area's commands live in one module of ``linecam.commands`` with its own `register(subparsers)`; this module
only assembles them. Registration modules import nothing heavy (torch, zmq) at import
time, so `linecam gate` starts as fast as a process restarted by systemd needs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from linecam import __version__

#: Modules that contribute subcommands, in the order they appear in `linecam --help`.
COMMAND_MODULES = (
    "linecam.commands.data",
    "linecam.commands.model",
    "linecam.commands.engine",
    "linecam.commands.line",
    "linecam.commands.lifecycle",
)


def build_parser() -> argparse.ArgumentParser:
    """Assemble the parser from every area's `register` function."""
    parser = argparse.ArgumentParser(prog="linecam", description="Real-time camera line inspection with GRD-Net.")
    parser.add_argument("--version", action="version", version=f"linecam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue
        module.register(subparsers)
    return parser


#: Libraries that log their internals at INFO: ``linecam export`` printed ~30 lines of ONNX optimiser passes and a
#: warning per torchvision operator it does not need. ``--verbose`` shows them again.
QUIET_LOGGERS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
