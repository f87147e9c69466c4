r"""`flowgraph import official CKPT --spec SPEC -o OUT`: the DenseFlow authors' weights.

    flowgraph import official cifar10.pt --spec specs/denseflow-74-10.yaml --dataset cifar10 \
        -o denseflow-cifar10.pt
    flowgraph import official imagenet64.pt --spec specs/denseflow-74-10.yaml --set size=64 \
        --dataset imagenet64 -o denseflow-imagenet64.pt

The mapping is read from ``<spec>.official.yaml`` next to the spec (``--mapping`` overrides).
Exit status 2 when the file, the spec or the weights do not fit; every problem is listed.
"""

from __future__ import annotations

import argparse
import json

from flowgraph.cli.common import parse_overrides

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import weights trained by another implementation",
                       description="Import weights trained by another implementation into a "
                                   "flowgraph checkpoint.")
    kinds = p.add_subparsers(dest="source_format", required=True, metavar="format")
    o = kinds.add_parser(
        "official", help="a checkpoint of the DenseFlow authors' code (matejgrcic/DenseFlow)",
        description="Import a checkpoint written by the DenseFlow authors' code "
                    "(github.com/matejgrcic/DenseFlow) into a flowgraph checkpoint that eval, "
                    "sample, train --resume and export accept. Every tensor is mapped by the "
                    "rules in <spec>.official.yaml; the file is read without unpickling code.")
    o.add_argument("checkpoint", help="the authors' checkpoint file (checkpoint.pt)")
    o.add_argument("--spec", required=True, help="the flowgraph spec the weights belong to, "
                   "e.g. specs/denseflow-74-10.yaml")
    o.add_argument("--set", dest="overrides", action="append", default=[], metavar="ARG=VALUE",
                   help="override a spec argument (repeatable), e.g. --set size=64")
    o.add_argument("-o", "--out", help="flowgraph checkpoint to write (omit with --dry-run)")
    o.add_argument("--mapping", default=None,
                   help="mapping file (default: <spec>.official.yaml next to the spec)")
    o.add_argument("--dataset", default=None, help="record this dataset in the checkpoint's "
                   "config, so eval/train default to it (cifar10, imagenet32, imagenet64, "
                   "celeba)")
    o.add_argument("--dequant-clamp", choices=("margin", "none"), default="margin",
                   help="margin (default): flowgraph keeps the dequantization noise in "
                        "[2^-10, 1-2^-10]; none: as the authors' code (bit-faithful "
                        "likelihoods; the checkpoint then has its own spec hash)")
    o.add_argument("--weights-only", action="store_true",
                   help="write only weights, no fresh training state for train --resume")
    o.add_argument("--dry-run", action="store_true", help="check the mapping, write nothing")
    o.add_argument("--json", action="store_true", help="print a JSON report")
    o.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from flowgraph.cli.common import CliUsageError
    from flowgraph.interop import import_official

    if not args.dry_run and not args.out:
        raise CliUsageError("import official needs -o/--out FILE (or --dry-run).")
    _, report = import_official(
        args.checkpoint, args.spec, None if args.dry_run else args.out,
        overrides=parse_overrides(args.overrides), mapping_path=args.mapping,
        dataset=args.dataset, dequant_clamp=args.dequant_clamp,
        training_state=not args.weights_only)
    if args.json:
        print(json.dumps({"ok": True, **report.to_dict()}, indent=1))
        return 0
    print(f"mapped {report.copied} tensors ({report.parameter_tensors} parameter tensors, "
          f"{report.parameters:,} parameters); {report.constants_checked} source constants "
          f"checked, {report.derived} flowgraph buffers fixed by the spec")
    meta = report.provenance
    if "epoch" in meta:
        print(f"source: epoch {meta['epoch']}"
              + (f", last eval metrics {meta['eval_metrics_last']}"
                 if "eval_metrics_last" in meta else ""))
    print(f"wrote {report.out} (spec hash {report.spec_hash})" if report.out else
          "dry run: nothing written")
    return 0

