r"""`flowgraph ops [NAME]`: list the ops and conditioner networks a spec can use (built-in and
from installed plugins), or one op's or conditioner's parameters."""

from __future__ import annotations

import argparse
import json

from flowgraph.core.registry import nets, ops
from flowgraph.errors import FlowgraphError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="list the ops, priors and conditioner nets a spec can use")
    p.add_argument("name", nargs="?", help="show this op's (or net kind's) parameters")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    op_reg, net_reg = ops(), nets()
    if args.name:
        if args.name in op_reg:
            item = op_reg.get(args.name)
            print(f"{item.name}: {item.summary}  [{item.role}; from {op_reg.origin[item.name]}]")
        elif args.name in net_reg:
            item = net_reg.get(args.name)
            print(f"conditioner {item.kind}  [from {net_reg.origin[item.kind]}]")
        else:
            raise FlowgraphError(op_reg.unknown_message(args.name))
        print(json.dumps(item.Params.model_json_schema(by_alias=True), indent=1))
        return 0
    width = max(len(n) for n in op_reg.names())
    for op in op_reg:
        origin = "" if op_reg.origin[op.name] == "flowgraph" else f"  ({op_reg.origin[op.name]})"
        print(f"{op.name.ljust(width)}  {op.role.ljust(10)}  {op.summary}{origin}")
    kinds = [k if net_reg.origin[k] == "flowgraph" else f"{k} ({net_reg.origin[k]})"
             for k in net_reg.names()]
    print(f"\nconditioner nets (net: {{kind: ...}}): {', '.join(kinds)}")
    return 0
