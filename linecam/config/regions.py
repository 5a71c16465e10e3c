"""Inspection regions of a camera, as configured: the crop box, the model that inspects it, an optional mask and
the thresholds per model version.

Why a module of its own: regions come either inline from the line config or from a calibration folder
(``calibration/<station>/<camera>/regions.yaml`` plus mask PNGs); both are validated here, and the worker
(:mod:`linecam.runtime.regions`) crops them the same way whatever their origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from linecam.config.base import Strict
from linecam.yamlfile import read_yaml

REGIONS_FILE = "regions.yaml"


class RegionConfig(Strict):
    """One inspection region. ``box`` is ``[x, y, w, h]`` in frame pixels, or None for the full frame.

    Thresholds belong to a model *version* (a retrained model scores on another scale), so the worker takes,
    for the version it runs: ``thresholds[version]`` (written by ``linecam calibrate threshold``), else the
    pinned ``threshold`` (a manual override for every version), else the model card's calibrated threshold.
    """

    name: str = Field(min_length=1)
    box: tuple[int, int, int, int] | None = None
    model: str = Field(min_length=1)
    mask: Path | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"per-version thresholds must lie in [0, 1], got {bad}")
        return value

    def threshold_for(self, version: str, card_threshold: float | None) -> tuple[float | None, str]:
        """The threshold this region uses under model ``version`` and where it came from."""
        if version in self.thresholds:
            return self.thresholds[version], f"regions thresholds[{version!r}]"
        if self.threshold is not None:
            return self.threshold, "regions threshold (pinned for every version)"
        return card_threshold, "model card"

    @field_validator("box")
    @classmethod
    def _box_positive(cls, box: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if box is not None:
            x, y, w, h = box
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"box [x, y, w, h] needs x, y >= 0 and w, h > 0, got {list(box)}")
        return box


class RegionError(ValueError):
    """A calibration folder or region definition that cannot be used; the message names the file/field."""


def _format_errors(exc: ValidationError) -> str:
    return "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors())


def parse_regions(raw: Any, source: str, base_dir: Path) -> list[RegionConfig]:
    """Validate a list of region dicts; relative mask paths resolve against ``base_dir``."""
    if not isinstance(raw, list) or not raw:
        raise RegionError(f"{source}: 'regions' must be a non-empty list, got {type(raw).__name__}")
    regions: list[RegionConfig] = []
    for i, item in enumerate(raw):
        try:
            region = RegionConfig.model_validate(item)
        except ValidationError as exc:
            raise RegionError(f"{source}: regions[{i}]: {_format_errors(exc)}") from None
        if region.mask is not None and not region.mask.is_absolute():
            region = region.model_copy(update={"mask": (base_dir / region.mask).resolve()})
        regions.append(region)
    names = [r.name for r in regions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RegionError(f"{source}: duplicate region names {dupes}")
    return regions


def load_regions(folder: str | Path) -> list[RegionConfig]:
    """Read ``<folder>/regions.yaml`` (``{regions: [...]}``); masks are file names relative to the folder."""
    folder = Path(folder)
    path = folder / REGIONS_FILE
    doc = read_yaml(path, RegionError, "calibration file")
    if not isinstance(doc, dict) or set(doc) - {"regions"}:
        extra = sorted(set(doc) - {"regions"}) if isinstance(doc, dict) else []
        raise RegionError(f"{path}: expected a mapping with only the key 'regions' (unknown keys: {extra})")
    return parse_regions(doc.get("regions"), str(path), folder)
