"""A short run of bench/faults.py, as CI's slow step runs it: under each fault, no product is lost, no id is
duplicated and no result reaches the PLC after its time. (The figures themselves stay in the bench.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "faults.py"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-infer", "stop-gate", "plc-hung", "hostile-frames"])
def test_the_line_keeps_its_promise_under_the_fault(fault: str) -> None:
    spec = importlib.util.spec_from_file_location("faults_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults_bench"] = module
    spec.loader.exec_module(module)
    row = module.run_fault(fault, seconds=10.0, settle_s=3.0)
    assert row["exit_code"] == 0, row["problems"]
    assert row["announced"] > 0 and row["audit_lines"] == row["announced"]
    assert row["lost"] == 0 and row["duplicated_ids"] == 0
    # a hung PLC executes, on resuming, the one request already in its receive buffer (docs/plc_registers.md)
    assert row["late_plc_writes"] <= (1 if fault == "plc-hung" else 0), row
    assert row["reasons"].get("ok", 0) + row["reasons"].get("anomaly", 0) > 0  # the model judged products
