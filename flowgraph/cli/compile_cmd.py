r"""`flowgraph compile SPEC`: validate a spec and print its node table and totals."""

from __future__ import annotations

import argparse
import json

from flowgraph.cli.common import add_spec_args, parse_overrides
from flowgraph.graph import analyze
from flowgraph.report import render_report, report_dict
from flowgraph.spec.io import dump_spec, read_spec

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="validate a spec; print shapes and parameter counts")
    add_spec_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--depth", type=_positive, default=None,
                   help="group nodes by the first DEPTH id segments (default: every node)")
    p.add_argument("--print-spec", action="store_true", help="print the normalised spec")
    p.add_argument("--emit-code", action="store_true", help="print the generated module code")
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        value = int(text) if len(text) < 10 else 0
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Got {text[:20]!r}.")
    return value


def run(args: argparse.Namespace) -> int:
    spec, smap = read_spec(args.spec, parse_overrides(args.overrides))
    analysis = analyze(spec, smap)
    if args.print_spec:
        print(dump_spec(spec), end="")
    elif args.emit_code:
        from flowgraph.compile.codegen import generate_source
        print(generate_source(analysis.graph).source)
    elif args.json:
        print(json.dumps(report_dict(analysis), indent=1))
    else:
        print(render_report(analysis, args.depth))
    return 0
