"""The README's Python example runs as written, and its first lines give the two commands."""

from __future__ import annotations

import re

import torch
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_fresh_machine_commands():
    first = README.split("## ")[0]
    assert "make run" in first and "make test" in first
    makefile = (ROOT / "Makefile").read_text()
    assert "\nrun:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_python_example_runs(monkeypatch, capsys):
    block = re.search(r"## Python.*?```python\n(.*?)```", README, re.DOTALL).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["bpd"].shape == (16,) and torch.isfinite(scope["bpd"]).all()
    assert scope["samples"].shape == (8, 1, 28, 28)
    assert torch.equal(scope["x_again"], scope["x"])
    assert "def _forward_terms" in capsys.readouterr().out
