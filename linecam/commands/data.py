"""``linecam synth`` and ``linecam data check|preview`` subcommands (wired in by linecam.cli)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from linecam.synth.geometry import AREAS


def _size(text: str) -> int | tuple[int, int]:
    try:
        if "x" in text:
            h, w = (int(p) for p in text.lower().split("x", 1))
            return (h, w)
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--size: {text!r} is not N or HxW") from exc


def _synth(args: argparse.Namespace) -> int:
    from linecam.synth.dataset import parse_counts, write_dataset
    from linecam.synth.defects import parse_sizes

    try:
        counts = parse_counts(args.counts or "")
        specs = parse_sizes(args.sizes) if args.sizes else None
        t0 = time.perf_counter()
        res = write_dataset(
            args.out, seed=args.seed, size=args.size, counts=counts, area=args.area, workers=args.workers,
            specs=specs, overwrite=args.overwrite, progress=True,
        )
    except (ValueError, FileExistsError, OSError, RuntimeError) as exc:
        print(f"linecam synth: {exc}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"wrote {res.images} images to {res.root} in {dt:.1f} s ({res.images / max(dt, 1e-9):.1f} img/s)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from linecam.dataset import DatasetError, check_dataset

    try:
        report = check_dataset(args.dir)
    except DatasetError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _preview(args: argparse.Namespace) -> int:
    from linecam.dataset import DatasetError
    from linecam.synth.preview import make_contact_sheet

    try:
        out = make_contact_sheet(args.dir, args.out, per_kind=args.per_kind, good=args.good, tile=args.tile)
    except (DatasetError, OSError) as exc:
        print(f"linecam data preview: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and ``data`` (check, preview) to the top-level parser."""
    p = subparsers.add_parser("synth", help="render a synthetic BFS vial dataset in the linecam layout")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size, default=256, help="image size N or HxW (>= 64)")
    p.add_argument(
        "--counts", default="",
        help="e.g. train=600,val=60,val/*=15,test=100,test/*=25,test_unseen=25 (split=N good; split/*=N each defect "
        "kind; split/kind=N one folder)",
    )
    p.add_argument("--sizes", default="", help="defect sizes in um, e.g. particle=100:1000,fibre=1000:4000")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--area", choices=AREAS, default="meniscus")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_synth)

    d = subparsers.add_parser("data", help="check or preview a linecam dataset")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate every image, mask and ROI; exit 1 listing all problems")
    c.add_argument("dir")
    c.set_defaults(func=_check)
    v = dsub.add_parser("preview", help="write a contact sheet PNG (mask red, ROI green)")
    v.add_argument("dir")
    v.add_argument("--out", required=True)
    v.add_argument("--per-kind", type=int, default=4)
    v.add_argument("--good", type=int, default=6)
    v.add_argument("--tile", type=int, default=192)
    v.set_defaults(func=_preview)
