"""Metrics over real HTTP from another process: names, labels, counter values, histogram buckets with one
bound exactly at the gate deadline; and, when a Prometheus server is installed, scraped and queried by it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from linecam.runtime.metrics import LineMetrics, latency_buckets

EXPORTER = textwrap.dedent("""
    import sys
    from linecam.runtime.metrics import LineMetrics, start_metrics_server
    m = LineMetrics(deadline_s=0.25)
    port = start_metrics_server(m, 0, addr="127.0.0.1")
    m.frames.labels(camera="cam1").inc(3)
    m.frames.labels(camera="cam2").inc()
    m.verdicts.labels(decision="reject", reason="timeout").inc(2)
    m.deadline_misses.inc(2)
    for ms in (3, 40, 240, 260, 900):
        m.end_to_end_latency.observe(ms / 1000)
    m.stage_latency.labels(stage="infer").observe(0.012)
    m.anomaly_score.observe(0.42)
    m.queue_depth.labels(queue="gate_pending").set(5)
    m.set_model("demo/v3", "torch_cpu")
    m.plc_connected.set(1)
    print(port, flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
""")


@pytest.fixture
def exporter() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", EXPORTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())
    yield port
    proc.stdin.close()
    proc.wait(timeout=10)


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_buckets_hold_the_deadline() -> None:
    assert 0.3 in latency_buckets(0.3) and 0.25 in latency_buckets(0.25)
    assert latency_buckets(0.3) == tuple(sorted(set(latency_buckets(0.3))))
    with pytest.raises(ValueError, match="deadline_s"):
        latency_buckets(0)
    LineMetrics()
    LineMetrics()  # two in one interpreter: private registries do not collide


def test_scrape_over_http(exporter: int) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{exporter}/metrics", timeout=10).read().decode()
    s = _samples(text)
    assert s['linecam_frames_total{camera="cam1"}'] == 3 and s['linecam_frames_total{camera="cam2"}'] == 1
    assert s['linecam_verdicts_total{decision="reject",reason="timeout"}'] == 2
    assert s["linecam_deadline_misses_total"] == 2
    # cumulative buckets; le="0.25" is the deadline: 3 of 5 products were decided within it
    assert s['linecam_end_to_end_latency_seconds_bucket{le="0.2"}'] == 2
    assert s['linecam_end_to_end_latency_seconds_bucket{le="0.25"}'] == 3
    assert s['linecam_end_to_end_latency_seconds_bucket{le="0.5"}'] == 4
    assert s['linecam_end_to_end_latency_seconds_bucket{le="+Inf"}'] == 5
    assert s["linecam_end_to_end_latency_seconds_count"] == 5
    assert s['linecam_stage_latency_seconds_bucket{le="0.02",stage="infer"}'] == 1
    assert s['linecam_anomaly_score_bucket{le="0.5"}'] == 1 and s['linecam_anomaly_score_bucket{le="0.4"}'] == 0
    assert s['linecam_queue_depth{queue="gate_pending"}'] == 5
    assert s['linecam_model_info{backend="torch_cpu",version="demo/v3"}'] == 1
    assert s["linecam_plc_connected"] == 1
    assert "# TYPE linecam_end_to_end_latency_seconds histogram" in text


PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus server binary installed")
def test_prometheus_scrapes_and_queries(exporter: int, tmp_path: Path, rt) -> None:
    web_port = rt.free_port()
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: linecam
            static_configs: [{{targets: ["127.0.0.1:{exporter}"]}}]
    """))
    assert PROMETHEUS is not None
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w"))  # noqa: SIM115

    def query(expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        except OSError:
            return []
        return body["data"]["result"] if body.get("status") == "success" else []

    try:
        rt.wait_for(lambda: bool(query('linecam_frames_total{camera="cam1"}')), timeout_s=60,
                    what="prometheus to scrape the exporter")
        [frames] = query('linecam_frames_total{camera="cam1"}')
        assert float(frames["value"][1]) == 3
        [p50] = query("histogram_quantile(0.5, linecam_end_to_end_latency_seconds_bucket)")
        assert 0.2 < float(p50["value"][1]) <= 0.25  # 3rd of 5 observations lies in the (0.2, 0.25] bucket
        [within] = query('linecam_end_to_end_latency_seconds_bucket{le="0.25"}')
        assert float(within["value"][1]) == 3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
