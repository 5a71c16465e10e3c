"""Reading a YAML file for a validator: one place that turns "missing" and "not YAML" into a named error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, error: type[Exception], what: str = "file") -> Any:
    """Parsed content of ``path``; raises ``error`` naming the path when it is missing or not valid YAML."""
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
