"""The line config: the shipped files load, unknown keys and bad references are refused naming file and field,
relative paths resolve against the config file's folder whatever the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from linecam.config import RUNTIME_DIR_ENV, ConfigError, load_config, parse_config
from linecam.config.regions import RegionError, load_regions

ROOT = Path(__file__).resolve().parents[2]


def test_demo_config_loads_regions_from_calibration_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # cwd-independent
    cfg = load_config(ROOT / "config" / "demo.yaml")
    assert [c.name for c in cfg.cameras] == ["cam1", "cam2", "cam3"]
    assert cfg.models["demo"].path == ROOT / "model" / "demo"
    for cam in cfg.cameras:
        regions = cam.region_list()
        assert [(r.name, r.box, r.model, r.threshold) for r in regions] == [("vial", None, "demo", None)]
    assert cfg.gate.deadline_ms == 300 and cfg.infer.max_batch == 2 and cfg.acquire.metrics_base_port == 9101


def test_example_line_config_is_valid_apart_from_host_paths(tmp_path: Path) -> None:
    text = (ROOT / "config" / "example-line.yaml").read_text()
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "regions.yaml").write_text("regions:\n  - {name: a, box: [0, 0, 100, 100], model: vial}\n")
    (tmp_path / "line.yaml").write_text(text.replace("/etc/linecam/calibration/station1/cam1", str(calib)))
    cfg = load_config(tmp_path / "line.yaml")
    assert cfg.gate.plc.kind == "modbus" and cfg.gate.plc.base_register == 100
    cam2 = cfg.camera("cam2").region_list()
    assert [r.name for r in cam2] == ["shoulder", "meniscus"] and cam2[0].threshold == 0.42
    assert cfg.camera("cam1").source.kind == "genicam"


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _doc() -> dict:
    return {
        "line": {"name": "l", "station": "s"},
        "models": {"m": {"path": "model/m"}},
        "cameras": [{"name": "cam1", "source": {"kind": "synthetic"},
                     "regions": [{"name": "r", "box": [0, 0, 10, 10], "model": "m", "mask": "masks/r.png"}]}],
    }


def test_unknown_key_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    doc = _doc()
    doc["gate"] = {"dealine_ms": 100}
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "gate.dealine_ms" in str(err.value)


def test_unknown_source_key_and_kind_are_refused(tmp_path: Path) -> None:
    doc = _doc()
    doc["cameras"][0]["source"] = {"kind": "synthetic", "fsp": 3}
    with pytest.raises(ConfigError, match=r"cameras\.0\.source\.synthetic\.fsp"):
        load_config(_write(tmp_path, doc))
    doc["cameras"][0]["source"] = {"kind": "webcam"}
    with pytest.raises(ConfigError, match="cameras.0.source"):
        load_config(_write(tmp_path, doc))


def test_region_with_unknown_model_is_refused(tmp_path: Path) -> None:
    doc = _doc()
    doc["cameras"][0]["regions"][0]["model"] = "nope"
    with pytest.raises(ConfigError, match="model 'nope' is not in models"):
        load_config(_write(tmp_path, doc))


def test_bad_box_and_duplicate_cameras_are_refused(tmp_path: Path) -> None:
    doc = _doc()
    doc["cameras"][0]["regions"][0]["box"] = [0, 0, 0, 10]
    with pytest.raises(ConfigError, match=r"cameras\.0\.regions.*box"):
        load_config(_write(tmp_path, doc))
    doc = _doc()
    doc["cameras"].append(dict(doc["cameras"][0]))
    with pytest.raises(ConfigError, match="duplicate camera names"):
        load_config(_write(tmp_path, doc))


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    doc = _doc()
    doc["gate"] = {"audit_log": "logs/audit.jsonl"}
    doc["runtime_dir"] = "run"
    path = sub / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("etc/line.yaml"))
    assert cfg.models["m"].path == sub / "model" / "m"
    assert cfg.cameras[0].region_list()[0].mask == sub / "masks" / "r.png"
    assert cfg.audit_log_path() == sub / "logs" / "audit.jsonl"
    assert cfg.frames_endpoint() == f"ipc://{sub / 'run' / 'frames.sock'}"


def test_runtime_dir_comes_from_the_supervisor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(_doc(), "inline")
    monkeypatch.delenv(RUNTIME_DIR_ENV, raising=False)
    with pytest.raises(ConfigError, match="runtime_dir is null"):
        cfg.frames_endpoint()
    monkeypatch.setenv(RUNTIME_DIR_ENV, "/tmp/lc-x")
    assert cfg.events_endpoint() == "ipc:///tmp/lc-x/events.sock"
    assert cfg.audit_log_path() == Path("/tmp/lc-x/audit.jsonl")


def test_calibration_folder_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "regions.yaml").write_text("regions:\n  - {name: a, model: m, colour: red}\n")
    with pytest.raises(RegionError) as err:
        load_regions(tmp_path)
    assert str(tmp_path / "regions.yaml") in str(err.value) and "regions[0]" in str(err.value)
    assert "colour" in str(err.value)
    (tmp_path / "regions.yaml").write_text("regions:\n  - {name: a, model: m, mask: r.png}\n")
    assert load_regions(tmp_path)[0].mask == tmp_path / "r.png"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "none.yaml")):
        load_config(tmp_path / "none.yaml")
    assert os.path.exists(ROOT / "calibration" / "station1" / "cam3" / "regions.yaml")
