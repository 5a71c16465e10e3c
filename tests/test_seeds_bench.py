"""bench/seeds.py: the recipe is taken from a card and varied only by seed; the bounds decide robustness."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_seeds", ROOT / "bench" / "seeds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_recipe_is_the_cards_command_without_the_per_run_arguments(seeds: ModuleType) -> None:
    cmd = ("linecam train --data data/bfs --profile fast --epochs 32 --seed 2 --perlin-scales 2 7 "
           "--out runs/x --name expU16 --profile-set 'unet_widths=[16,32,64,128]'")
    args = seeds.recipe_args(cmd, "--shape-families perlin,thin --epochs 4")
    assert args == ["--profile", "fast", "--epochs", "32", "--perlin-scales", "2", "7", "--profile-set",
                    "unet_widths=[16,32,64,128]", "--shape-families", "perlin,thin", "--epochs", "4"]
    with pytest.raises(ValueError, match="not a linecam train command"):
        seeds.recipe_args("linecam eval --model m")


def test_bounds_and_spread(seeds: ModuleType) -> None:
    good = {"image_auroc": 0.995, "good_frr": 0.015, "outside_roi_frr": 0.02, "escape_rate": 0.05}
    bad = {**good, "outside_roi_frr": 0.09}
    assert all(seeds.within_bounds(good).values())
    assert seeds.within_bounds(bad) == {"good_frr": True, "outside_roi_frr": False, "escape_rate": True,
                                        "image_auroc": True}
    assert not seeds.within_bounds({**good, "image_auroc": None})["image_auroc"]
    s = seeds.spread([{"image_auroc": 0.99}, {"image_auroc": 0.97}])
    assert s["image_auroc"]["min"] == 0.97 and s["image_auroc"]["max"] == 0.99
    assert s["image_auroc"]["stdev"] == pytest.approx(0.01414, abs=1e-4)


@pytest.mark.slow
def test_two_seeds_train_score_and_report(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "linecam", "synth", "--out", str(data), "--seed", "4", "--size", "64",
                    "--counts", "train=16,val=6,val/*=3,test=6,test/*=3,test_unseen=2", "--workers", "1"],
                   check=True, capture_output=True)
    out = tmp_path / "seeds.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "seeds.py"), "--data", str(data), "--seeds", "5",
                           "6", "--work", str(tmp_path / "work"), "--json", str(out), "--add",
                           "--epochs 1 --max-steps-per-epoch 2 --batch-size 4 --image-size 64 --precision fp32 "
                           "--shape-families perlin,soft,thin,cluster"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [r["seed"] for r in res["seeds"]] == [5, 6]
    for r in res["seeds"]:
        card = json.loads((Path(r["model"]) / "card.json").read_text())
        assert card["training"]["seed"] == r["seed"] and card["training"]["epochs"] == 1
        assert card["training"]["shape_families"] == ["perlin", "soft", "thin", "cluster"]
        assert 0 <= r["image_auroc"] <= 1 and set(r["unseen_per_kind"]) == {"inclusion", "deformation",
                                                                           "die_lines", "flake"}
    assert res["robust"] == all(all(r["within_bounds"].values()) for r in res["seeds"])
    assert set(res["spread"]) >= {"image_auroc", "good_frr", "outside_roi_frr", "escape_rate"}

    # the diagnosis takes the same trained models apart, and their ensemble, without training anything
    diag_json = tmp_path / "diag.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "seed_diagnosis.py"),
                           *[r["model"] for r in res["seeds"]], "--data", str(data), "--ensemble", "--kernels", "21",
                           "7", "--json", str(diag_json)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    diag = json.loads(diag_json.read_text())
    for row, seed_row in zip(diag["models"], res["seeds"], strict=True):
        assert row["repool_check_max_abs_diff"] < 1e-5  # re-pooling at 21 reproduces the head
        assert set(row["pooling"]) == {"21", "7"} and "last_epoch" in row
        assert row["val_auroc_curve"] and row["seed"] == seed_row["seed"]
    ens = diag["ensemble"]
    assert len(ens["members"]) == 2 and 0 <= ens["image_auroc"] <= 1
    assert ens["cost"]["ratio"] > 1.0  # two members cost more than one
