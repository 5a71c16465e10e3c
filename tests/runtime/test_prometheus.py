"""A real Prometheus server scraping a running line: the metrics are usable as the dashboard uses them."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).is_file(), reason="prometheus not installed "
                                "(apt-get install -y prometheus)")


def _query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _wait_query(port: int, expr: str, ok: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Poll a query until ``ok(result)`` (a hang guard, not a timing assertion)."""
    end = time.monotonic() + timeout_s
    result: list[dict[str, Any]] = []
    while time.monotonic() < end:
        try:
            result = _query(port, expr)
        except OSError:
            result = []
        if result and ok(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"query {expr!r} never satisfied; last result {result}")


DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
#: panels that must show data on a running line (others, e.g. PLC, may legitimately be empty)
MUST_HAVE_DATA = {
    "Frames per second by camera",
    "Verdicts per second by decision and reason",
    "End-to-end latency (capture to gate decision)",
    "Share of products decided within the deadline (SLO)",
}


def _dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def test_dashboard_names_only_metrics_the_line_defines() -> None:
    import re

    from linecam.runtime.metrics import LineMetrics

    metrics = LineMetrics(deadline_s=0.3)
    metrics.set_model("v", "b")
    exported = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",),
                "gauge": ("",)}
    for family in metrics.registry.collect():  # labelled collectors have no samples yet: use the type
        exported.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    for title, expr in _dashboard_exprs():
        for name in re.findall(r"linecam_[a-z_]+", expr):
            assert name in exported, f"panel {title!r}: {name} is not a linecam metric"


def _check_dashboard(prom_port: int) -> None:
    """Every panel query of the shipped dashboard is valid PromQL on the real server, with data where due."""
    for title, expr in _dashboard_exprs():
        concrete = (expr.replace("$__rate_interval", "10s").replace("$deadline", "0.3")
                    .replace('"$camera"', '".*"').replace('"$job"', '".*"'))
        if title in MUST_HAVE_DATA:  # a rate needs two scrapes in its window: poll (hang guard 60 s)
            _wait_query(prom_port, concrete, lambda r: True)
        else:
            _query(prom_port, concrete)  # valid PromQL (status success), data optional


def test_prometheus_scrapes_the_line(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    ports = {"gate": rt.free_port(), "infer": rt.free_port(), "acq": rt.free_port()}
    while len({ports["acq"], ports["acq"] + 1, ports["gate"], ports["infer"]}) < 4:
        ports["acq"] = rt.free_port()
    doc = rt.line_dict(tiny_model_dir, tmp_path / "unused", cameras=2)
    doc["runtime_dir"] = None
    doc["gate"].update(metrics_port=ports["gate"], audit_log=str(tmp_path / "audit.jsonl"))
    doc["infer"]["metrics_port"] = ports["infer"]
    doc["acquire"] = {"metrics_base_port": ports["acq"]}
    for cam in doc["cameras"]:
        cam["source"].update(fps=10, defect_rate=0.3, prerender=8)
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump(doc))
    targets = [f"127.0.0.1:{p}" for p in (ports["gate"], ports["infer"], ports["acq"], ports["acq"] + 1)]
    scrape = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "linecam", "static_configs": [{"targets": targets}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    prom_port = rt.free_port()
    line = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rt.child_env())
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        frames = _wait_query(prom_port, "linecam_frames_total", lambda r: len(
            {s["metric"].get("camera") for s in r if float(s["value"][1]) > 0}) >= 2)
        assert {"cam1", "cam2"} <= {s["metric"]["camera"] for s in frames}
        p99 = _wait_query(prom_port, "histogram_quantile(0.99, sum by (le) "
                          "(rate(linecam_end_to_end_latency_seconds_bucket[5s])))",
                          lambda r: r[0]["value"][1] not in ("NaN", "+Inf"))
        value = float(p99[0]["value"][1])
        assert 0.0 < value <= 2.0, value  # seconds: base units, bounded by the largest finite bucket
        buckets = _query(prom_port, "linecam_end_to_end_latency_seconds_bucket")
        assert "0.3" in {s["metric"]["le"] for s in buckets}  # one bound exactly at the 300 ms deadline
        verdicts = _query(prom_port, "sum(linecam_verdicts_total)")
        assert float(verdicts[0]["value"][1]) > 0
        up = _query(prom_port, "up")
        assert len(up) == 4 and all(s["value"][1] == "1" for s in up), up
        print(f"p99 end-to-end latency from Prometheus: {value * 1000:.1f} ms")
        _check_dashboard(prom_port)
    finally:
        prom.terminate()
        line.send_signal(signal.SIGINT)
        try:
            out, _ = line.communicate(timeout=60)
        finally:
            if line.poll() is None:
                line.kill()
            try:
                prom.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom.kill()
    assert line.returncode == 0, out
