r"""`flowgraph export CKPT|SPEC --format F -o PATH`: deployable files, checked after writing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowgraph.cli.common import CliUsageError, parse_overrides

__all__ = ["add_parser", "load_source", "run"]

SPEC_SUFFIXES = (".yaml", ".yml")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint or spec as TorchScript, ONNX or torch.export (.pt2)",
        description=(
            "Export a trained checkpoint (or a freshly initialised spec) in eval mode, frozen, "
            "for density evaluation (x, noise -> log_prob, bits/dim) and/or sampling (eps, "
            "temperature -> uint8 images, float samples), with a dynamic batch. The spec "
            "text, spec hash, data shape and bits are stored inside each file. After writing, "
            "the file is loaded back (torch.jit.load in a fresh process, onnxruntime, or "
            "torch.export's loader) and compared with eager PyTorch on fresh inputs; the "
            "command fails beyond 1e-4 relative on log-likelihoods or 1e-4 absolute on "
            "samples. Note: TorchScript is deprecated upstream (PyTorch recommends "
            "torch.export); --format export is the forward-looking path, torchscript remains "
            "for libtorch's torch::jit::load (exporters/cpp)."))
    p.add_argument("source", help="checkpoint (.pt) written by flowgraph train, or a spec YAML")
    p.add_argument("--format", "-f", dest="fmt", required=True,
                   choices=("torchscript", "onnx", "export"),
                   help="torchscript (.pt), onnx (<stem>.<direction>.onnx per direction) or "
                        "export (torch.export .pt2 archive)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="output file")
    p.add_argument("--direction", choices=("density", "sample", "both"), default="both",
                   help="what to export (default both)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ARG=VALUE",
                   help="spec source only: override a spec argument (repeatable)")
    p.add_argument("--seed", type=int, default=0,
                   help="spec source only: seed of the initial weights (default 0)")
    p.add_argument("--aoti", action="store_true",
                   help="--format export: also compile with AOTInductor into the archive "
                        "(slow: tens of seconds per direction; needs a C++ compiler)")
    p.add_argument("--onnx-exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="ONNX exporter (default dynamo, the torch.export-based one)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip loading the files back and comparing with eager PyTorch")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(run=run)


def load_source(source: str, overrides: list[str], seed: int):
    """A checkpoint's flow (`flowgraph.checkpoint.load_flow`) or a spec's fresh one."""
    if Path(source).suffix in SPEC_SUFFIXES:
        from flowgraph.compile import compile_spec

        return compile_spec(source, parse_overrides(overrides), seed=seed)
    if overrides:
        raise CliUsageError("--set applies to a spec source; a checkpoint carries its spec. "
                            f"Got --set with {source!r}.")
    from flowgraph.checkpoint import load_flow

    return load_flow(source)[0]


def run(args: argparse.Namespace) -> int:
    from flowgraph.export import export_flow

    if args.aoti and args.fmt != "export":
        raise CliUsageError(f"--aoti needs --format export. Got --format {args.fmt}.")
    if args.fmt == "export" and Path(args.output).suffix != ".pt2":
        raise CliUsageError(f"--format export writes a .pt2 archive, so -o must end in .pt2. "
                            f"Got {args.output!r}.")
    flow = load_source(args.source, args.overrides, args.seed)
    directions = ["density", "sample"] if args.direction == "both" else [args.direction]
    report = export_flow(flow, args.output, args.fmt, directions, verify=args.verify,
                         aoti=args.aoti, onnx_exporter=args.onnx_exporter, source=args.source)
    if args.json:
        print(json.dumps({"ok": True, **report.to_dict()}, indent=1))
    else:
        print(report.summary())
    return 0
