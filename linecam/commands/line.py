"""Subcommands of the line: ``acquire``, ``run``, ``keygen``, ``infer`` and ``gate``; thin argument parsing over
the runtime modules. Each process exits 2 on bad input (config, ports), naming the file, field or port.

Imports are deferred into the handlers so ``linecam --help`` and the other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


def _load(path: str) -> Any:
    from linecam.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _acquire(args: argparse.Namespace) -> int:
    from linecam.config import ConfigError
    from linecam.runtime.acquire import main
    from linecam.runtime.metrics import PortInUseError

    config = _load(args.config)
    if config is None:
        return 2
    try:
        config.camera(args.camera)
        return main(config, args.camera, Path(args.stats) if args.stats else None)
    except (ConfigError, PortInUseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from linecam.config import ConfigError
    from linecam.runtime.metrics import PortInUseError
    from linecam.runtime.supervisor import main

    try:
        return main(args.config, args.duration, args.rejects, keep_runtime=args.keep_runtime,
                    watchdog_s=args.watchdog, grace_s=args.grace, summary_path=args.summary)
    except (ConfigError, PortInUseError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2


def _keygen(args: argparse.Namespace) -> int:
    if args.signing:
        from linecam.lifecycle.signing import generate_signing_key
        from linecam.modelstore.signing import load_public_key

        try:
            private, public = generate_signing_key(Path(args.out), args.name, force=args.force)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"private key {private.resolve()} (mode 0600: keep it on the machine that publishes models)")
        print(f"public key  {public.resolve()} (id {load_public_key(public).key_id})")
        print(f"infer:\n  trusted_keys: [{public.resolve()}]")
        return 0
    from linecam.runtime.keys import generate_keys

    try:
        paths = generate_keys(Path(args.out), force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("transport:\n  curve:")
    for field, path in paths.items():
        print(f"    {field}: {path.resolve()}")
    print("# the worker host needs server_secret + client_public; each acquire/gate host needs server_public + "
          "client_secret (see docs).", file=sys.stderr)
    return 0


def _service(args: argparse.Namespace, which: str) -> int:
    from linecam.config import ConfigError, load_config
    from linecam.config.regions import RegionError
    from linecam.runtime.metrics import PortInUseError
    from linecam.runtime.transport import TransportError

    try:
        config = load_config(args.config)
        if which == "infer":
            from linecam.runtime.infer import main as infer_main

            return infer_main(config)
        if which == "ui":
            from linecam.runtime.ui.server import main as ui_main

            return ui_main(config)
        from linecam.runtime.gate import main as gate_main

        return gate_main(config)
    except (ConfigError, RegionError, TransportError, PortInUseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def register(subparsers: Any) -> None:
    """Add ``acquire``, ``run``, ``keygen``, ``infer``, ``gate`` and ``ui`` to the ``linecam`` command."""
    p = subparsers.add_parser("acquire", help="run acquire for one camera (one process per camera)")
    p.add_argument("--config", required=True, help="line config YAML")
    p.add_argument("--camera", required=True, help="camera name from the config")
    p.add_argument("--stats", default=None, help="write frame counters as JSON here on exit")
    p.set_defaults(func=_acquire)

    p = subparsers.add_parser("run", help="start the whole line (gate, infer, acquire per camera) as children")
    p.add_argument("--config", required=True, help="line config YAML, e.g. config/demo.yaml")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--rejects", default=None, help="save reject images with heatmap overlays into DIR")
    p.add_argument("--summary", default=None, help="also write the final summary as JSON to FILE")
    p.add_argument("--keep-runtime", action="store_true", help="keep the temporary runtime dir (logs, sockets)")
    p.add_argument("--watchdog", type=float, default=30.0, help="declare a child hung after S s without a ping")
    p.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL on shutdown")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("keygen", help="write CURVE key pairs for tcp endpoints (remote worker), or with "
                                             "--signing an Ed25519 pair that signs model versions")
    p.add_argument("--out", required=True, help="folder for server.key(_secret) and client.key(_secret), or for "
                                                "NAME.key and NAME.pub with --signing")
    p.add_argument("--signing", action="store_true", help="an Ed25519 model-signing pair instead of CURVE keys")
    p.add_argument("--name", default="model-signing", help="file name stem of the signing pair")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=_keygen)
    p = subparsers.add_parser("infer", help="run the inference worker (frames in, verdicts to the gate)")
    p.add_argument("--config", required=True, help="line config YAML")
    p.set_defaults(func=lambda a: _service(a, "infer"))
    p = subparsers.add_parser("gate", help="run the gate (one verdict per product, in time; PLC; audit log)")
    p.add_argument("--config", required=True, help="line config YAML")
    p.set_defaults(func=lambda a: _service(a, "gate"))
    p = subparsers.add_parser("ui", help="serve the operator page (read-only live view; config section ui)")
    p.add_argument("--config", required=True, help="line config YAML")
    p.set_defaults(func=lambda a: _service(a, "ui"))
