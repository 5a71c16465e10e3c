"""A tiny synthetic dataset written once per test session (real files, real PNGs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linecam.synth.dataset import parse_counts, write_dataset

SMALL_COUNTS = "train=6,val=2,val/*=1,test=3,test/*=2,test_unseen=2"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(root, seed=5, size=96, counts=parse_counts(SMALL_COUNTS), workers=1)
    return root
