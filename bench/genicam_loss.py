"""Frames lost between the simulated GenICam devices and acquire at 200 fps: one camera alone, then three at once.

The test suite checks that every lost frame is counted and logged; how many are lost depends on the machine
(on two cores, three acquire processes at 200 fps each compete with the producer's threads). This prints the
loss share of each camera, one camera alone as the baseline measured in the same run, and the ratio of the
three-camera share to it. Results go to ``bench/results/genicam_loss.json`` with the CPU named.

    .venv/bin/python bench/genicam_loss.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package holds the acquire harness

from linecam.hardware import cpu_summary  # noqa: E402
from tests.runtime.test_genicam import VIKY, logged_gaps, run_acquire_processes  # noqa: E402


def measure(formats: tuple[str, ...], seconds: float) -> dict[str, dict[str, float]]:
    """Per camera: frames announced, frames lost (device frame-id gaps) and the lost share."""
    with tempfile.TemporaryDirectory(prefix="genicam-loss-") as tmp:
        run = run_acquire_processes(Path(tmp), formats, seconds)
    out = {}
    for name, stats in run.stats.items():
        if run.returncodes[name] != 0 or not stats:
            raise SystemExit(f"{name} failed (code {run.returncodes[name]}):\n{run.outputs[name][-2000:]}")
        lost = int(stats["frame_gaps"])
        assert lost == logged_gaps(run.outputs[name])
        seen = int(stats["announced"])
        out[name] = {"announced": seen, "lost": lost, "lost_share": lost / max(1, seen + lost)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default="bench/results/genicam_loss.json")
    args = ap.parse_args(argv)
    if not VIKY.is_file():
        raise SystemExit(f"{VIKY}: viky.cti is not shipped with this genicam wheel")
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}")  # type: ignore[arg-type]
    alone = measure(("Mono8",), args.seconds)
    three = measure(("Mono8", "Mono8", "RGBa8"), args.seconds)

    def share(run: dict[str, dict[str, float]]) -> float:
        lost = sum(r["lost"] for r in run.values())
        return lost / max(1.0, sum(r["announced"] + r["lost"] for r in run.values()))

    base, loaded = share(alone), share(three)
    for title, run in (("1 camera (baseline)", alone), ("3 cameras", three)):
        for name, r in run.items():
            print(f"{title:20s} {name}: {r['announced']:6.0f} frames, {r['lost']:4.0f} lost "
                  f"({100 * r['lost_share']:.2f}%)")
    ratio = f"ratio {loaded / base:.2f}" if base > 0 else "one camera alone lost none"
    print(f"lost share: 3 cameras {100 * loaded:.2f}% vs 1 camera {100 * base:.2f}% ({ratio})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu, "seconds": args.seconds, "fps": 200, "one_camera": alone,
                                          "three_cameras": three, "lost_share_one": base,
                                          "lost_share_three": loaded}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
