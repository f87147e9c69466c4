r"""`flowgraph ops [NAME]`: list the ops a spec can use, or one op's parameters."""

from __future__ import annotations

import argparse
import json

from flowgraph.errors import FlowgraphError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="list the ops (and priors) a spec can use")
    p.add_argument("name", nargs="?", help="show this op's parameters (JSON Schema)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from flowgraph.nn import DEFAULT_NETS
    from flowgraph.ops import DEFAULT_REGISTRY

    if args.name:
        if args.name not in DEFAULT_REGISTRY:
            raise FlowgraphError(DEFAULT_REGISTRY.unknown_message(args.name))
        op = DEFAULT_REGISTRY.get(args.name)
        print(f"{op.name}: {op.summary}")
        print(json.dumps(op.Params.model_json_schema(by_alias=True), indent=1))
        return 0
    width = max(len(n) for n in DEFAULT_REGISTRY.names())
    for op in DEFAULT_REGISTRY:
        kind = "prior" if op.is_prior else ("stochastic" if op.stochastic else "bijective"
                                            if op.bijective else "")
        print(f"{op.name.ljust(width)}  {kind.ljust(10)}  {op.summary}")
    print(f"\nconditioner nets (net: {{kind: ...}}): {', '.join(DEFAULT_NETS.kinds())}")
    return 0
