r"""`flowgraph schema`: print the JSON Schema of the spec format (for editors)."""

from __future__ import annotations

import argparse
import json

from flowgraph.core.registry import nets, ops
from flowgraph.spec.schema import spec_json_schema

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of the spec format")
    p.add_argument("-o", "--output", help="write to a file instead of stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    schema = spec_json_schema([(o.name, o.summary, o.is_prior, o.Params) for o in ops()],
                              [(n.kind, n.Params) for n in nets()])
    text = json.dumps(schema, indent=1)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0
