r"""`flowgraph train SPEC`: train a flow; every `TrainConfig` field is also a CLI option.

    flowgraph train specs/denseflow-fmnist.yaml --config specs/train/fmnist-cpu.yaml
    flowgraph train SPEC --config CFG --out runs/x --resume          # continue runs/x
    flowgraph train SPEC --dataset cifar10 --data-dir DATA --batch-size 32 --bf16
    torchrun --nproc_per_node=4 -m flowgraph.cli.main train SPEC --config CFG   # DDP

Precedence: ``--option`` > ``--config`` file > (on ``--resume`` without ``--config``: the
config stored in the checkpoint) > defaults. Values are read as YAML (``--grad-clip null``,
``--betas [0.9,0.99]``).
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from flowgraph.cli.common import add_spec_args, parse_overrides
from flowgraph.errors import FlowgraphError
from flowgraph.train.config import ConfigError, TrainConfig, load_train_config

__all__ = ["add_parser", "run"]


def _is_text(annotation: Any) -> bool:
    """`str` or `str | None` (kept verbatim, not read as YAML)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return annotation is str or (union and str in typing.get_args(annotation))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a flow on an image dataset", description=(
        "Train a flow on an image dataset. Every training-config field is also an option "
        "(precedence: option > --config > the resumed checkpoint's config > defaults)."))
    add_spec_args(p)
    p.add_argument("--config", metavar="TRAIN.yaml", help="training config (specs/train/*.yaml)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<spec name>)")
    p.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue from CKPT (default: DIR/checkpoint.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if DIR already holds a run")
    group = p.add_argument_group("config fields (override the --config file)")
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        text = f"{field.description or name} (default: {default})"
        if field.annotation is bool:
            group.add_argument(flag, dest=f"cfg_{name}", nargs="?", const="true",
                               metavar="BOOL", help=text)
        else:
            group.add_argument(flag, dest=f"cfg_{name}", metavar="VALUE", help=text)
    p.set_defaults(run=run)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in TrainConfig.model_fields.items():
        raw = getattr(args, f"cfg_{name}")
        if raw is None:
            continue
        if _is_text(field.annotation) and raw != "null":
            out[name] = raw
            continue
        try:
            out[name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--{name.replace('_', '-')}: not a valid value. Got {raw!r}."
                              ) from None
    return out


def run(args: argparse.Namespace) -> int:
    from flowgraph.checkpoint import load_checkpoint
    from flowgraph.train import train
    from flowgraph.train.inputs import out_dir_default

    out = Path(args.out) if args.out else out_dir_default(args.spec)
    resume = None if args.resume is None else (
        out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume))
    base: Any = args.config
    if resume is not None and base is None:
        base = load_checkpoint(resume)["config"]
    elif resume is None and (out / "checkpoint.pt").exists() and not args.overwrite:
        raise FlowgraphError(f"{out} already holds a training run (checkpoint.pt); pass "
                             "--resume to continue it, --overwrite to start afresh, or "
                             "another --out.")
    config = load_train_config(base, _config_overrides(args))
    result = train(args.spec, config, out, overrides=parse_overrides(args.overrides),
                   resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return 0
    val, test = ("n/a" if v is None else f"{v:.4f}" for v in (result.val_bpd, result.test_bpd))
    print(f"trained {result.step} steps ({result.epoch} epochs, {result.skipped} skipped); "
          f"validation bits/dim {val}; test bits/dim {test}; checkpoint {result.checkpoint}")
    return 0
