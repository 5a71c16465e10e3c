"""The operator page in a real browser (Debian's chromium, driven by Selenium) against a real running line.

A line runs under ``linecam run`` (gate, worker, two synthetic cameras, its own page on a free port). A second
``linecam ui`` process reads the same feed and outlives the line, so the page's final counts can be compared with
the audit log after the last product. A camera process is stopped with SIGSTOP to raise the stall alert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import line_dict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                   reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                          "chromium-driver; .ci/run installs them)")


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _ui(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "linecam", "ui", "--config", str(config)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _url(runtime: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    def ready() -> str | None:
        assert proc.poll() is None, log.read_text()
        try:
            return (runtime / "ui-url").read_text().strip() or None
        except OSError:
            return None

    url = _wait(ready, 60, "the page's URL")
    _wait(lambda: _status(url) in (200, 401), 30, "the page to answer")
    return str(url)


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _page_counts(driver: Any) -> dict[str, int]:
    """Each camera card's "decided" count, read in one go (the page re-renders its cards on every update)."""
    counts = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.cam')].map("
        "c => [c.dataset.camera, Number(c.querySelector('dd.decided').textContent)]))")
    return {str(k): int(v) for k, v in counts.items()}


def _texts(driver: Any, selector: str) -> list[str]:
    return list(driver.execute_script(
        f"return [...document.querySelectorAll('{selector}')].map(e => e.textContent)"))


@needs_browser
def test_the_page_shows_the_live_line_its_rejects_and_a_stalled_camera(
        browser: Any, tiny_model_dir: Path, short_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    line_rt, ui_rt = short_dir / "line", short_dir / "ui"
    line_rt.mkdir()
    ui_rt.mkdir()
    # threshold 0: every product is an anomaly reject with a saved image (the page's strip shows images)
    doc = line_dict(tiny_model_dir, line_rt, cameras=2,
                    regions=[{"name": "vial", "box": None, "model": "demo", "threshold": 0.0}])
    doc["transport"] = {"feed_endpoint": f"ipc://{short_dir}/feed.sock"}
    doc["gate"]["audit_log"] = str(tmp_path / "audit.jsonl")
    doc["infer"].update(reject_dir=str(tmp_path / "rejects"), save_rejects=True)
    doc["acquire"] = {"metrics_base_port": 0, "fit_synthetic_fps": False}
    doc["ui"] = {"port": 0}
    line_cfg = tmp_path / "line.yaml"
    line_cfg.write_text(yaml.safe_dump(doc))
    ui_cfg = tmp_path / "ui.yaml"
    ui_cfg.write_text(yaml.safe_dump({**doc, "runtime_dir": str(ui_rt)}))

    page = _ui(ui_cfg, tmp_path / "ui.log")
    run_log = tmp_path / "run.log"
    line = None
    try:
        url = _url(ui_rt, page, tmp_path / "ui.log")
        line = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(line_cfg), "--duration",
                                 "25"], stdout=run_log.open("wb"), stderr=subprocess.STDOUT)
        browser.get(url)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".reject img"), 90, "reject cards with images")
        _wait(lambda: browser.execute_script(
            "return [...document.querySelectorAll('.reject img')].some(i => i.complete && i.naturalWidth > 0)"),
            15, "a reject thumbnail (heatmap overlay) to load")
        assert "anomaly" in _texts(browser, ".reject .reason")
        assert re.search(r"operator page: http://127\.0\.0\.1:\d+/", run_log.read_text())  # run's own page
        pid = int(_wait(lambda: re.search(r"started acquire@cam1 pid (\d+)", run_log.read_text()), 30,
                        "acquire@cam1")[1])
        os.kill(pid, signal.SIGSTOP)
        try:
            alert = _wait(lambda: _texts(browser, '.alert[data-kind="stall"][data-camera="cam1"]'), 20,
                          "the stall alert")
            assert "cam1 stalled" in alert[0]
            assert "STALLED" in _texts(browser, '.cam[data-camera="cam1"]')[0]
        finally:
            os.kill(pid, signal.SIGCONT)
        _wait(lambda: not _texts(browser, '.alert[data-kind="stall"]'), 20, "the stall alert to clear")
        shots = os.environ.get("LINECAM_UI_SCREENSHOT")
        if shots:
            browser.save_screenshot(shots)
        assert line.wait(timeout=120) == 0, run_log.read_text()[-3000:]
        audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines() if x.strip()]
        expected = {c: sum(1 for r in audit if r["camera"] == c) for c in ("cam1", "cam2")}
        assert sum(expected.values()) > 50
        _wait(lambda: _page_counts(browser) == expected, 15, f"the page's counts to reach the audit log's {expected}")
        browser.execute_script("document.querySelector('.reject').click()")  # full image, heatmap, region outline
        _wait(lambda: browser.execute_script(
            "return document.getElementById('modal').className === 'open' && "
            "document.getElementById('img-overlay').naturalWidth > 0 && "
            "document.querySelectorAll('#fig-raw .box-outline').length > 0"), 10,
            "the reject view with its heatmap and region outline")
        last = audit[-1]
        form = browser.find_element(By.ID, "search")
        form.find_element(By.NAME, "camera").send_keys(last["camera"])
        form.find_element(By.NAME, "seq").send_keys(str(last["seq"]))
        browser.find_element(By.ID, "close").click()
        form.find_element(By.TAG_NAME, "button").click()
        found = _wait(lambda: browser.find_element(By.ID, "found").text, 10, "the search result")
        assert json.loads(found.splitlines()[0])["slot"] == last["slot"]
    finally:
        if line is not None and line.poll() is None:
            line.send_signal(signal.SIGINT)
            line.wait(timeout=60)
        page.send_signal(signal.SIGTERM)
        assert page.wait(timeout=30) == 0, (tmp_path / "ui.log").read_text()


def test_with_a_token_every_request_without_it_is_refused(tiny_model_dir: Path, short_dir: Path,
                                                          tmp_path: Path) -> None:
    token = "s3cret-token-for-the-operator-page"
    (tmp_path / "token").write_text(token + "\n")
    doc = line_dict(tiny_model_dir, short_dir, cameras=1)
    doc["ui"] = {"port": 0, "token_file": str(tmp_path / "token")}
    (tmp_path / "audit.jsonl").write_text(json.dumps({"camera": "cam1", "seq": 7, "slot": 70}) + "\n")
    doc["gate"]["audit_log"] = str(tmp_path / "audit.jsonl")
    cfg = tmp_path / "ui.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    proc = _ui(cfg, tmp_path / "ui.log")
    try:
        url = _url(short_dir, proc, tmp_path / "ui.log")
        for path in ("", "api/state", "api/events", "api/search?camera=cam1&seq=7", "img/cam1/x.png"):
            assert _status(url + path) == 401, path
            assert _status(url + path + ("&" if "?" in path else "?") + "token=wrong") == 401, path
        assert _status(url, {"Authorization": f"Bearer {token}"}) == 200
        assert _status(url + f"api/state?token={token}") == 200
        with urllib.request.urlopen(url + f"api/search?camera=cam1&seq=7&token={token}", timeout=5) as r:
            assert json.loads(r.read())["matches"][0]["slot"] == 70
        assert _status(url + f"img/..%2F..%2Fetc%2Fpasswd?token={token}") == 404  # only reject images, ever
        for method in ("POST", "PUT", "DELETE"):  # read-only: nothing changes the line
            request = urllib.request.Request(url + f"api/state?token={token}", method=method)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=5)
            assert err.value.code == 405
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "ui.log").read_text()
