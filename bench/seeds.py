"""Is the recipe robust? Train one recipe with several seeds and report the spread of the quality figures.

The recipe is the command stored in a model card (default: the shipped demo model's), with ``--seed``, ``--out``
and ``--name`` replaced per run and ``--add`` appended (e.g. ``--add "--shape-families perlin,soft,thin,cluster"``
to try a change). Each trained model is scored as ``bench/quality.py`` scores it (``backend: auto``, threshold
calibrated on ``val``, figures on ``test`` and ``test_unseen``, no mask), and checked against the bounds of a
robust recipe: good-vial FRR <= 2%, out-of-ROI FRR <= 2%, escapes <= 5% at the val threshold, image AUROC >= 0.99.

    .venv/bin/python bench/seeds.py --data data/bfs --seeds 1 2 3            # ~3 x 35-50 min on 2 cores
    .venv/bin/python bench/seeds.py --data data/bfs --seeds 3 --add "--shape-families perlin,soft,thin,cluster"

Trained models stay under ``--work`` (a finished one is reused, so an interrupted study resumes). Writes
``bench/results/seeds_<CPU kind>.json`` (``--json``) with the recipe, every seed's figures, the spread and the
verdict, and prints one table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from linecam.backends.evaluation import evaluate_detector
from linecam.commands.model import open_scoring_detector
from linecam.grdnet.evaluate import _jsonable
from linecam.grdnet.modeldir import read_card
from linecam.hardware import cpu_kind, cpu_summary

ROOT = Path(__file__).resolve().parent.parent
BOUNDS = {"good_frr": ("<=", 0.02), "outside_roi_frr": ("<=", 0.02), "escape_rate": ("<=", 0.05),
          "image_auroc": (">=", 0.99)}
"""What a robust recipe meets on every seed."""
FIGURES = ("image_auroc", "pixel_auroc", "good_frr", "outside_roi_frr", "escape_rate", "unseen_auroc",
           "unseen_caught")
_REPLACED = {"--seed": 1, "--out": 1, "--name": 1, "--data": 1, "--version": 1}


def recipe_args(command: str, add: str = "") -> list[str]:
    """The training arguments of a card's command without the per-run ones (seed, out, name, data, version)."""
    words = shlex.split(command)
    if words[:2] != ["linecam", "train"]:
        raise ValueError(f"not a linecam train command: {command!r}")
    out: list[str] = []
    i = 2
    while i < len(words):
        if words[i] in _REPLACED:
            i += 1 + _REPLACED[words[i]]
            continue
        out.append(words[i])
        i += 1
    return out + shlex.split(add)


def train_seed(args: list[str], data: Path, seed: int, out: Path) -> float:
    """Train one seed unless its model directory is complete; returns the training wall clock (0 if reused)."""
    if (out / "card.json").is_file():
        print(f"seed {seed}: reusing {out}", flush=True)
        return 0.0
    cmd = [sys.executable, "-m", "linecam", "train", "--data", str(data), "--out", str(out), "--seed", str(seed),
           "--name", f"seed{seed}", *args]
    print(f"seed {seed}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one evaluation (the README's and the bounds')."""
    unseen = metrics.get("unseen", {})
    return {"image_auroc": metrics["image_auroc"], "image_auroc_ci95": metrics.get("image_auroc_ci95"),
            "pixel_auroc": metrics.get("pixel_auroc"),
            "good_frr": metrics.get("per_kind", {}).get("good", {}).get("reject_rate"),
            "outside_roi_frr": metrics.get("outside_roi_false_reject_rate"),
            "escape_rate": metrics.get("escape_rate"), "unseen_auroc": unseen.get("image_auroc"),
            "unseen_caught": unseen.get("detection_rate"),
            "unseen_per_kind": {k: {"caught": v["detection_rate"], "auroc": v["image_auroc"], "n": v["n"]}
                                for k, v in unseen.get("per_kind", {}).items()},
            "seen_per_kind": {k: v["reject_rate"] for k, v in metrics.get("per_kind", {}).items()},
            "threshold": metrics["threshold"]}


def within_bounds(fig: dict[str, Any]) -> dict[str, bool]:
    out = {}
    for key, (op, bound) in BOUNDS.items():
        value = fig.get(key)
        out[key] = value is not None and (value <= bound if op == "<=" else value >= bound)
    return out


def spread(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in FIGURES:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"min": min(values), "max": max(values), "mean": statistics.fmean(values),
                        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bfs")
    ap.add_argument("--recipe", type=Path, default=ROOT / "model" / "demo", help="model dir whose card command")
    ap.add_argument("--add", default="", help="arguments appended to the recipe (quoted)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "seeds")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    card = read_card(args.recipe)
    recipe = recipe_args(card.command, args.add)
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']} ({cpu['kind']}); recipe of {card.name}/{card.version}: {' '.join(recipe)}",
          flush=True)
    rows = []
    for seed in args.seeds:
        out = args.work / f"seed{seed}"
        seconds = train_seed(recipe, args.data, seed, out)
        size = read_card(out).profile.image_size
        detector = open_scoring_detector(out, "auto", "auto", "cpu", args.threads)
        try:
            metrics, _ = evaluate_detector(detector, args.data, size)
        finally:
            detector.close()
        fig = {"seed": seed, "model": str(out), "train_s": seconds, **figures(metrics)}
        fig["within_bounds"] = within_bounds(fig)
        rows.append(fig)
        print(f"seed {seed}: AUROC {fig['image_auroc']:.4f} pixel {fig['pixel_auroc']:.4f} good FRR "
              f"{fig['good_frr']:.3f} out-of-ROI FRR {fig['outside_roi_frr']:.3f} escapes {fig['escape_rate']:.3f} "
              f"unseen AUROC {fig['unseen_auroc']:.4f} caught {fig['unseen_caught']:.3f} "
              f"{'OK' if all(fig['within_bounds'].values()) else 'OUT OF BOUNDS'}", flush=True)
    result = {"cpu": cpu, "date": time.strftime("%Y-%m-%d"), "recipe_from": f"{card.name}/{card.version}",
              "recipe": recipe, "data": str(args.data), "bounds": BOUNDS, "seeds": rows, "spread": spread(rows),
              "robust": all(all(r["within_bounds"].values()) for r in rows),
              "command": " ".join(["bench/seeds.py", *(argv if argv is not None else sys.argv[1:])])}
    for key, s in result["spread"].items():
        print(f"  {key:16s} min {s['min']:.4f}  max {s['max']:.4f}  mean {s['mean']:.4f}  sd {s['stdev']:.4f}")
    print(f"robust on {len(rows)} seed(s): {result['robust']}")
    path = args.json or ROOT / "bench" / "results" / f"seeds_{cpu_kind()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
