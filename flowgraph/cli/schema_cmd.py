r"""`flowgraph schema`: print the JSON Schema of the spec format (for editors)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flowgraph.core.registry import nets, ops
from flowgraph.spec.schema import spec_json_schema

__all__ = ["add_parser", "full_schema", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of the spec format")
    p.add_argument("-o", "--output", help="write to a file instead of stdout")
    p.set_defaults(run=run)


def full_schema() -> dict[str, Any]:
    """The spec format's schema with every registered op's and conditioner's parameters."""
    return spec_json_schema([(o.name, o.summary, o.is_prior, o.Params) for o in ops()],
                            [(n.kind, n.Params) for n in nets()])


def run(args: argparse.Namespace) -> int:
    text = json.dumps(full_schema(), indent=1)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0
