r"""`flowgraph sweep PLAN.yaml --out DIR`: an ablation/seed sweep (see `flowgraph.sweep`)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train rows of specs x seeds at an equal budget, "
                       "evaluate, and tabulate", description=(
                           "Train every (row, seed) of a sweep plan, evaluate each on the test "
                           "split, and write results.md, results.csv and curves.png. Rerun "
                           "to resume: finished runs are kept, interrupted ones resume."))
    p.add_argument("plan", help="sweep plan YAML (see specs/sweeps/)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time (each in its own process; mind `threads`)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the table and plot from finished runs; train nothing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from flowgraph.sweep import load_plan, run_sweep, write_report

    plan = load_plan(args.plan)
    if args.report_only:
        out = Path(args.out)
        records = [json.loads(p.read_text()) for p in sorted(out.glob("*/seed*/result.json"))]
        print(write_report(plan, out, records).read_text())
        return 0
    run_sweep(plan, args.out, jobs=args.jobs, log=lambda m: print(m, flush=True))
    print((Path(args.out) / "results.md").read_text())
    return 0
