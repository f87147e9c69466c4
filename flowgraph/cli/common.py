r"""Helpers shared by subcommands: `--set` overrides and spec loading."""

from __future__ import annotations

import argparse
from typing import Any

from flowgraph.errors import FlowgraphError
from flowgraph.spec.io import parse_value_text

__all__ = ["CliUsageError", "add_spec_args", "parse_assignments", "parse_overrides"]


def add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ARG=VALUE",
                   help="override a spec argument (repeatable), e.g. --set size=64")


class CliUsageError(FlowgraphError):
    """Bad command-line input: `main` exits with status 2."""

    usage = True


def parse_assignments(items: list[str], option: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` items (values read as YAML, under the spec limits) -> a dict.

    A bad value is a `SpecError` located at ``--set KEY``, so `main` exits with status 2.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            shown = item if len(item) <= 80 else item[:77] + "..."
            raise CliUsageError(f"{option} expects KEY=VALUE. Got {shown!r}.")
        out[key.strip()] = parse_value_text(value, f"{option} {key.strip()[:80]}")
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set ARG=VALUE` spec-argument overrides."""
    return parse_assignments(items, "--set")
