"""The whole line, measured: end-to-end latency p50/p99, sustained frames/s, and the transport ratio.

Runs ``linecam run`` (the real process tree: gate, infer, one acquire per camera) for N seconds on the demo
config and reads the gate's audit log. Baselines measured in the same run: the offered frame rate (sum of
the cameras' fps, so "sustained / offered" is 1.0 when the line keeps up) and, for the transport, a plain
memcpy of one camera frame against the line's ipc PUSH/PULL path (see bench/transport.py).

    .venv/bin/python bench/pipeline.py --seconds 20                       # config/demo.yaml, model/demo
    .venv/bin/python bench/pipeline.py --seconds 20 --random-model 128    # no trained model needed
    .venv/bin/python bench/pipeline.py --fps 10 --shed-baseline           # overload: shedding off, then on

With ``--shed-baseline`` the line runs twice, first with ``infer.shed_late: false`` (the baseline: only frames
already past their deadline are shed), then as configured, and prints the ratio of frames judged in time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transport import memcpy_rate, zmq_rate  # noqa: E402  (bench/transport.py, a sibling script)

from linecam.config import LineConfig, TransportConfig, load_config  # noqa: E402
from linecam.config.sources import SyntheticSourceConfig  # noqa: E402
from linecam.hardware import cpu_summary  # noqa: E402
from linecam.runtime.supervisor import config_document  # noqa: E402


def _random_model(folder: Path, size: int) -> Path:
    import torch

    from linecam.grdnet.model import build_grdnet
    from linecam.grdnet.modeldir import ModelCard, save_model_dir
    from linecam.grdnet.profiles import get_profile

    torch.manual_seed(0)
    profile = get_profile("fast", image_size=size)
    card = ModelCard(name="bench", version="random", profile=profile, input_size=(size, size),
                     roi_variant="learned_silence", threshold=0.5)
    save_model_dir(folder, build_grdnet(profile).eval(), card)
    return folder


def _bench_config(config: LineConfig, tmp: Path, random_model: int | None, fps: float | None = None,
                  shed_late: bool | None = None, backend: str | None = None, ui: bool | None = None) -> Path:
    doc = config_document(config)
    if ui is False:
        doc["ui"] = None
    elif ui:
        doc["ui"] = {**(doc.get("ui") or {}), "port": 0}
    if backend is not None:  # e.g. "torch-cpu:fp32": a named backend and precision instead of the config's
        name, _, precision = backend.partition(":")
        doc["infer"]["backend"] = name
        if precision:
            doc["infer"]["backend_options"] = {"precision": precision}
    if shed_late is not None:
        doc["infer"]["shed_late"] = shed_late
    if random_model:
        model = _random_model(tmp / "model", random_model)
        doc["models"] = {name: {"path": str(model)} for name in doc["models"]}
    doc["gate"]["audit_log"] = str(tmp / "audit.jsonl")
    for key in ("infer", "gate"):
        doc[key]["metrics_port"] = 0
    doc["acquire"] = {"metrics_base_port": 0}
    doc["runtime_dir"] = None
    for cam in doc["cameras"]:
        # The cameras run as configured (config/demo.yaml replays pre-rendered frames): the bench measures
        # exactly the line that `linecam run` starts. It used to switch pre-rendering on here, which hid that the
        # demo config rendered every frame live (~40 ms of CPU each) and timed out a third of them.
        if cam["source"]["kind"] == "synthetic" and fps is not None:
            cam["source"]["fps"] = fps
    if fps is not None:  # an explicit rate (an overload run) is measured as given, not fitted to the machine
        doc["acquire"]["fit_synthetic_fps"] = False
    path = tmp / "line.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _line_figures(audit: Path, offered_fps: float) -> dict[str, Any]:
    records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    if len(records) < 2:
        raise SystemExit(f"{audit}: fewer than 2 verdicts; see the run output above")
    decided = np.array(sorted(r["t_decided_ns"] for r in records), dtype=np.float64)
    lat = np.array([r["latency_ms"] for r in records])
    by_reason: dict[str, int] = {}
    for r in records:
        key = f"{r['decision']}/{r['reason']}"
        by_reason[key] = by_reason.get(key, 0) + 1
    span_s = (decided[-1] - decided[0]) / 1e9
    sustained = (len(decided) - 1) / span_s
    inspected = sum(r["reason"] in ("ok", "anomaly") for r in records)  # decided by the model, in time
    return {"verdicts": len(records), "sustained_fps": sustained, "offered_fps": offered_fps,
            "inspected_fps": inspected / span_s, "inspected_share": inspected / len(records),
            "sustained_over_offered": sustained / offered_fps if offered_fps else None,
            "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
            "by_reason": by_reason}


def _browser(url: str) -> Any:
    """A headless Debian chromium (Selenium) with the operator page open: what an operator's screen costs."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    driver.get(url)
    return driver


def _run_line(config: LineConfig, args: argparse.Namespace, offered: float,
              shed_late: bool | None, backend: str | None = None, ui: bool | None = None,
              browser: bool = False) -> tuple[dict[str, Any], int]:
    """One timed ``linecam run`` of the bench config -> (figures from its audit log, exit code). ``ui``: with
    (True) or without (False) the operator page; ``browser``: a headless browser keeps the page open."""
    with tempfile.TemporaryDirectory(prefix="linecam-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        bench_config = _bench_config(config, tmp, args.random_model, args.fps, shed_late, backend, ui)
        cmd = [sys.executable, "-m", "linecam", "run", "--config", str(bench_config), "--duration",
               str(args.seconds), "--summary", str(tmp / "summary.json")]
        proc = subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines: list[str] = []
        driver = None
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if browser and driver is None and line.startswith("operator page: http"):
                driver = _browser(line.split(": ", 1)[1].strip())
        stderr = proc.stderr.read() if proc.stderr is not None else ""
        returncode = proc.wait()
        if driver is not None:
            driver.quit()
        elif browser:
            print("no operator page was started: nothing to connect a browser to", file=sys.stderr)
        print("".join(lines)[-3000:], end="")
        if returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
            print(f"linecam run exited {returncode}", file=sys.stderr)
        try:  # the rate the cameras ran at: `linecam run` fits synthetic cameras to this machine's throughput
            rates = json.loads((tmp / "summary.json").read_text())["camera_fps"]
            offered = float(sum(r for r in rates.values() if r is not None))
        except (OSError, ValueError, KeyError):
            pass
        return _line_figures(tmp / "audit.jsonl", offered), returncode


def _print_line(figures: dict[str, Any]) -> None:
    print(f"end-to-end latency  p50 {figures['latency_ms_p50']:.1f} ms   p99 {figures['latency_ms_p99']:.1f} ms")
    print(f"sustained           {figures['sustained_fps']:.1f} frames/s of {figures['offered_fps']:.1f} offered "
          f"(ratio {figures['sustained_over_offered']:.3f})")
    print(f"inspected in time   {figures['inspected_fps']:.1f} frames/s (share {figures['inspected_share']:.3f}; "
          f"the rest are timeout/overload rejects)")
    print(f"verdicts by reason  {figures['by_reason']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--random-model", type=int, default=None, metavar="SIZE",
                        help="use a random-weight 'fast' model of SIZE px instead of the config's models")
    parser.add_argument("--fps", type=float, default=None, help="override every synthetic camera's fps")
    parser.add_argument("--shed-baseline", action="store_true",
                        help="first run the line with infer.shed_late false, as the baseline")
    parser.add_argument("--backend-baseline", default=None, metavar="BACKEND[:PRECISION]",
                        help="first run the line with this backend (e.g. torch-cpu:fp32), as the baseline of the "
                             "configured one (auto)")
    parser.add_argument("--ui-cost", action="store_true",
                        help="run the line without the operator page (the baseline), with the page, and with the "
                             "page and a headless chromium showing it, alternated --repeat times")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the --ui-cost comparison")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    config = load_config(args.config)
    offered = sum(args.fps or c.source.fps for c in config.cameras if isinstance(c.source, SyntheticSourceConfig))
    baseline = None
    if args.shed_baseline:
        baseline, _ = _run_line(config, args, offered, shed_late=False)
        print("-- baseline: infer.shed_late false")
        _print_line(baseline)
        print("-- as configured")
    backend_baseline = None
    if args.backend_baseline:
        backend_baseline, _ = _run_line(config, args, offered, shed_late=None, backend=args.backend_baseline)
        print(f"-- baseline: backend {args.backend_baseline}")
        _print_line(backend_baseline)
        print("-- as configured")
    ui_runs: dict[str, list[dict[str, Any]]] = {"no page": [], "page": [], "page + browser": []}
    if args.ui_cost:  # alternated, so the machine's drift hits every variant alike; the last page+browser run
        for i in range(args.repeat):  # below is the one reported as "figures"
            for name, ui, browser in (("no page", False, False), ("page", True, False),
                                      ("page + browser", True, True)):
                if name == "page + browser" and i == args.repeat - 1:
                    continue
                run, _ = _run_line(config, args, offered, shed_late=None, ui=ui, browser=browser)
                print(f"-- {name} (run {i + 1}): judged in time {run['inspected_share']:.3f}, "
                      f"p99 {run['latency_ms_p99']:.0f} ms")
                ui_runs[name].append(run)
    figures, code = _run_line(config, args, offered, shed_late=None, ui=True if args.ui_cost else None,
                              browser=args.ui_cost)
    _print_line(figures)
    if args.ui_cost:
        ui_runs["page + browser"].append(figures)
        summary = {}
        for name, runs in ui_runs.items():
            shares = [r["inspected_share"] for r in runs]
            p99 = [r["latency_ms_p99"] for r in runs]
            summary[name] = {"runs": len(runs), "inspected_share": shares, "latency_ms_p99": p99,
                             "median_inspected_share": float(np.median(shares)),
                             "median_latency_ms_p99": float(np.median(p99))}
            print(f"{name:15s} judged in time (median of {len(runs)}) {np.median(shares):.3f} {shares}; "
                  f"p99 {np.median(p99):.0f} ms")
        figures["ui_cost"] = summary
    if backend_baseline is not None:
        figures["baseline_backend"] = {"backend": args.backend_baseline, **backend_baseline}
        print(f"judged by the model in time: share {figures['inspected_share']:.3f} vs "
              f"{backend_baseline['inspected_share']:.3f} with {args.backend_baseline}; p99 "
              f"{figures['latency_ms_p99']:.0f} vs {backend_baseline['latency_ms_p99']:.0f} ms")
    if baseline is not None:
        figures["baseline_shed_late_false"] = baseline
        ratio = figures["inspected_fps"] / baseline["inspected_fps"] if baseline["inspected_fps"] else float("inf")
        figures["inspected_fps_vs_baseline"] = ratio
        print(f"judged in time: {figures['inspected_fps']:.1f} frames/s vs {baseline['inspected_fps']:.1f} with "
              f"shed_late false (ratio {ratio:.2f})")
    cam = config.cameras[0].source
    shape = (cam.height, cam.width, cam.channels) if isinstance(cam, SyntheticSourceConfig) else (2048, 2448)
    frame = np.random.default_rng(0).integers(0, 256, shape if shape[-1] != 1 else shape[:2], dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="lc-") as sock_dir:
        ipc = zmq_rate(frame, f"ipc://{sock_dir}/f.sock", TransportConfig.model_validate({}), 1.0)
    base = memcpy_rate(frame, 1.0)
    figures["transport"] = {"frame_shape": list(frame.shape), "ipc_gb_per_s": ipc["gb_per_s"],
                            "memcpy_gb_per_s": base["gb_per_s"], "ratio_vs_memcpy": ipc["gb_per_s"] / base["gb_per_s"],
                            "ipc_frames_per_s": ipc["frames_per_s"]}
    t = figures["transport"]
    print(f"transport {tuple(t['frame_shape'])}: ipc {t['ipc_gb_per_s']:.2f} GB/s vs memcpy "
          f"{t['memcpy_gb_per_s']:.2f} GB/s (ratio {t['ratio_vs_memcpy']:.3f}; {t['ipc_frames_per_s']:.0f} frames/s)")
    figures["cpu"] = cpu_summary()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
