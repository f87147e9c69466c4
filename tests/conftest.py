"""Shared test helpers: the list of spec files (flow specs only, not training configs), and
the example plugin (tests/plugin_example), installed before collection so that the generic
contract tests run over its op like over the built-in ones."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_example"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; "
                            "benchmarks/gpu_check.sh runs them)")
    target = Path(tempfile.mkdtemp(prefix="flowgraph-plugin-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(target), str(PLUGIN)], check=True, cwd=target)
    sys.path.insert(0, str(target))
    # subprocesses (CLI tests) see the same installed plugin
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target),
                                                             os.environ.get("PYTHONPATH")]))
    from flowgraph.core import registry
    registry.refresh()


def _is_flow_spec(path: Path) -> bool:
    data = yaml.safe_load(path.read_text())
    return isinstance(data, dict) and ("flowgraph" in data or "extends" in data)


SPEC_FILES = sorted(p for p in (ROOT / "specs").rglob("*.yaml") if _is_flow_spec(p))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine OpenMP's spin-waiting makes two threads 10-20x slower than one
    (measured); restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
