"""Shared test helpers: the list of spec files (flow specs only, not training configs)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _is_flow_spec(path: Path) -> bool:
    data = yaml.safe_load(path.read_text())
    return isinstance(data, dict) and ("flowgraph" in data or "extends" in data)


SPEC_FILES = sorted(p for p in (ROOT / "specs").rglob("*.yaml") if _is_flow_spec(p))
