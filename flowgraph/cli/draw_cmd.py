r"""`flowgraph draw SPEC -o FILE`: a diagram of the spec's graph (svg, png, pdf) via graphviz."""

from __future__ import annotations

import argparse
import sys

from flowgraph.cli.common import add_spec_args, parse_overrides
from flowgraph.draw import FORMATS, SOURCE_FORMATS, VIEWS, DrawError, render, to_dot
from flowgraph.graph import analyze
from flowgraph.spec.io import read_spec

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "draw", help="draw the spec's graph with graphviz (svg, png, pdf)",
        description="Draw a spec's flow graph from the spec alone (no model is built). The "
                    "blocks view reads like DenseFlow's Fig. 3 for any spec: a cluster per "
                    "top-level template use or group that holds others, gray unit boxes, "
                    "blue dots for augmentations with dashed skip connections, dotted squares "
                    "for reshape-only parts, latents with their prior; the detailed view "
                    "shows every op node. Needs graphviz's `dot` program (apt-get install "
                    "graphviz) except for the dot/gv formats.")
    add_spec_args(p)
    formats = FORMATS + SOURCE_FORMATS
    p.add_argument("-o", "--output", metavar="FILE",
                   help=f"output file; the format comes from its suffix ({', '.join(formats)})")
    p.add_argument("--format", dest="fmt", choices=formats, default=None,
                   help="output format (default: from the suffix of FILE)")
    p.add_argument("--view", choices=VIEWS, default="blocks",
                   help="blocks: blocks, units and transitions (default); detailed: every op")
    p.add_argument("--rankdir", choices=("LR", "TB"), default="LR",
                   help="layout direction: LR left to right (default) or TB top to bottom")
    p.add_argument("--dot", action="store_true", help="print the DOT source to stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.output and not args.dot:
        raise DrawError("draw needs -o FILE (or --dot to print the DOT source)", usage=True)
    spec, smap = read_spec(args.spec, parse_overrides(args.overrides))
    source = to_dot(analyze(spec, smap), args.view, rankdir=args.rankdir)
    if args.dot:
        sys.stdout.write(source)
    if args.output:
        path = render(source, args.output, args.fmt)
        print(f"wrote {path}", file=sys.stderr if args.dot else sys.stdout)
    return 0
