r"""Entry point: `flowgraph <command> ...`. Exit status 0 ok, 1 failure, 2 invalid input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from flowgraph.errors import FlowgraphError, SpecError
from flowgraph.spec.limits import active_limits, use_limits
from flowgraph.version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from flowgraph.cli import compile_cmd, ops_cmd, schema_cmd

    parser = argparse.ArgumentParser(prog="flowgraph", description=(
        "Declarative normalizing flows: compile, train, evaluate, sample, draw and export "
        "flows written as YAML specs."))
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    parser.add_argument("--limit", dest="limits", action="append", default=[],
                        metavar="NAME=N", help="raise (or lower) a spec input limit, e.g. "
                        "--limit max_nodes=500000 (see docs/limits.md)")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in (compile_cmd, ops_cmd, schema_cmd):
        module.add_parser(sub)
    _add_optional(sub)
    return parser


def _add_optional(sub: argparse._SubParsersAction) -> None:
    """Subcommands whose modules may be absent in a partial checkout are added if present."""
    import importlib

    for name in ("train_cmd", "eval_cmd", "sample_cmd", "draw_cmd", "export_cmd", "import_cmd",
                 "sweep_cmd"):
        try:
            module = importlib.import_module(f"flowgraph.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"flowgraph.cli.{name}":
                raise
            continue
        module.add_parser(sub)


def _run(args: argparse.Namespace) -> int:
    if not args.limits:
        return int(args.run(args) or 0)
    limits = active_limits().parse(",".join(args.limits), "--limit")
    with use_limits(limits):
        return int(args.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except SpecError as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "issues": [i.to_dict() for i in e.issues]}, indent=1))
        else:
            print(str(e), file=sys.stderr)
        return 2
    except FlowgraphError as e:
        code = getattr(e, "exit_code", None)  # e.g. 143 after a SIGTERM that saved a checkpoint
        print(str(e) if code is not None else f"error: {e}", file=sys.stderr)
        return code if code is not None else 2 if getattr(e, "usage", False) else 1
    except BrokenPipeError:  # e.g. `flowgraph compile ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: a message, not a traceback
        if args.debug:
            traceback.print_exc()
        else:
            print(f"internal error: {type(e).__name__}: {e}\n(run with --debug for the "
                  "traceback; please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
