r"""Helpers shared by subcommands: `--set` overrides and spec loading."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from flowgraph.errors import FlowgraphError

__all__ = ["add_spec_args", "parse_overrides"]


def add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ARG=VALUE",
                   help="override a spec argument (repeatable), e.g. --set size=64")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FlowgraphError(f"--set expects ARG=VALUE. Got {item!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise FlowgraphError(f"--set {key}: value is not valid YAML. Got {value!r}.") from None
    return out
