r"""`flowgraph eval CKPT`: bits/dim on a dataset split (importance-weighted bound over K)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import torch

from flowgraph.checkpoint import load_flow
from flowgraph.cli.common import CliUsageError, parse_assignments
from flowgraph.train.distributed import resolve_device

__all__ = ["CliUsageError", "add_parser", "load_for_inference", "resolve_data", "resolve_device",
           "run"]

DEFAULT_DATASET = "fashion-mnist"


def load_for_inference(path: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """Rebuild a checkpoint's flow on `device` in fp32 (errors name the file)."""
    flow, state = load_flow(path, map_location=device)
    return flow.float(), state


def _config(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `TrainConfig` (as a dict) recorded in a checkpoint; {} when there is none."""
    cfg = state.get("config")
    return cfg if isinstance(cfg, Mapping) else {}


def resolve_data(args: argparse.Namespace, state: Mapping[str, Any]
                 ) -> tuple[str, str | None, dict[str, Any]]:
    """Dataset name, folder and options: the command line first, then the checkpoint's config
    (keys ``dataset``, ``data_dir``, ``dataset_options``), then Fashion-MNIST's defaults."""
    cfg = _config(state)
    name = args.dataset or cfg.get("dataset") or DEFAULT_DATASET
    same = args.dataset is None or args.dataset == cfg.get("dataset")
    data_dir = args.data_dir or (cfg.get("data_dir") if same else None)
    options = dict(cfg.get("dataset_options") or {}) if same else {}
    options.update(parse_assignments(args.data_options, "--data-option"))
    return str(name), None if data_dir is None else str(data_dir), options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="bits/dim of a checkpoint on a dataset split (IW bound over K samples)",
        description="Bits/dim of a trained flow on a dataset split, with the importance-"
                    "weighted bound over K noise samples (the DenseFlow paper: K=1000 for "
                    "CIFAR-10, 200 otherwise; K=1 is the single-sample bound training "
                    "reports), BatchNorm in eval mode, and the standard error over images. "
                    "The dataset defaults to the one recorded in the checkpoint.")
    p.add_argument("checkpoint", help="checkpoint file (.pt) written by flowgraph train")
    p.add_argument("--dataset", default=None,
                   help="dataset name (default: the checkpoint's, else fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the checkpoint's)")
    p.add_argument("--data-option", dest="data_options", action="append", default=[],
                   metavar="KEY=VALUE", help="dataset option, e.g. size=64 (repeatable)")
    p.add_argument("--split", choices=("test", "validation", "train"), default="test",
                   help="split to evaluate (default: test); validation: the training images "
                   "the run held out (its val_images); train: the rest")
    p.add_argument("--k", type=int, default=1,
                   help="importance samples per image (default 1: the single-sample bound)")
    p.add_argument("--kbs", type=int, default=0,
                   help="samples per forward pass (default 0: all K at once)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--max-images", type=int, default=None,
                   help="evaluate only the first N images")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=run)


def _fmt_err(stderr: float) -> str:
    if math.isnan(stderr):  # one image
        return "n/a"
    return f"{stderr:.3f}" if stderr >= 5e-4 else f"{stderr:.1e}"


def _progress(done: int, total: int) -> None:
    print(f"\r{done}/{total} images", end="" if done < total else "\n", file=sys.stderr,
          flush=True)


def run(args: argparse.Namespace) -> int:
    from flowgraph.data import load_dataset
    from flowgraph.evaluate import EvalError, evaluate_bpd

    device = resolve_device(args.device)
    flow, state = load_for_inference(args.checkpoint, device)
    name, data_dir, options = resolve_data(args, state)
    data = load_dataset(name, "test" if args.split == "test" else "train", data_dir, **options)
    if list(data.shape) != list(flow.data_shape):
        raise EvalError(f"{name} {args.split} images are {list(data.shape)} but the "
                        f"checkpoint's spec takes {list(flow.data_shape)}; choose the "
                        "dataset it was trained on with --dataset/--data-dir. "
                        f"Got --dataset {name}.")
    if args.split in ("train", "validation"):  # the checkpoint's held-out tail (val_images)
        from flowgraph.train.inputs import split_validation

        held_out = int(_config(state).get("val_images") or 0)
        if args.split == "validation" and held_out == 0:
            raise EvalError(f"{args.checkpoint} was trained without a validation split "
                            "(val_images: 0); evaluate --split train or test.")
        train, val = split_validation(data, held_out)
        data = val if args.split == "validation" else train
    show = not args.json and sys.stderr.isatty()
    result = evaluate_bpd(flow, data, k=args.k, kbs=args.kbs, batch_size=args.batch_size,
                          device=device, max_images=args.max_images, seed=args.seed,
                          progress=_progress if show else None)
    if args.json:
        print(json.dumps({"ok": True, "checkpoint": str(args.checkpoint), "dataset": name,
                          "split": args.split, "device": str(device), **result.to_dict()},
                         indent=1))
        return 0
    print(f"{args.split} bits/dim (K={result.k}, {result.bound}): {result.bpd:.3f} ± "
          f"{_fmt_err(result.stderr)} (n={result.n_images})")
    print(f"{name}, {result.n_images} images in {result.seconds:.1f} s "
          f"({result.images_per_s:.1f} images/s), seed {result.seed}, {device}")
    return 0
