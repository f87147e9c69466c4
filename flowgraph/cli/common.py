r"""Helpers shared by subcommands: `--set` overrides and spec loading."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from flowgraph.errors import FlowgraphError

__all__ = ["CliUsageError", "add_spec_args", "parse_assignments", "parse_overrides"]


def add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ARG=VALUE",
                   help="override a spec argument (repeatable), e.g. --set size=64")


class CliUsageError(FlowgraphError):
    """Bad command-line input: `main` exits with status 2."""

    usage = True


def parse_assignments(items: list[str], option: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` items (values read as YAML) -> a dict; errors name the option."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliUsageError(f"{option} expects KEY=VALUE. Got {item!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CliUsageError(f"{option} {key}: value is not valid YAML. Got {value!r}."
                                ) from None
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set ARG=VALUE` spec-argument overrides."""
    return parse_assignments(items, "--set")
