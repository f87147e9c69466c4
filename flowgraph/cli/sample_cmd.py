r"""`flowgraph sample CKPT -o grid.png`: draw samples; save a PNG grid and/or the raw array."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowgraph.cli.eval_cmd import CliUsageError, load_for_inference, resolve_device
from flowgraph.images import DEFAULT_MIN_SIDE

__all__ = ["add_parser", "run", "save_raw"]

RAW_SUFFIXES = (".npy", ".pt")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="draw samples from a checkpoint; write a PNG grid and/or raw arrays",
        description="Draw samples from a trained flow (BatchNorm in eval mode) with the noise "
                    "of every latent scaled by --temperature (the DenseFlow paper shows CelebA "
                    "at T=0.8; the official code has no temperature, i.e. T=1).")
    p.add_argument("checkpoint", help="checkpoint file (.pt) written by flowgraph train")
    p.add_argument("-n", "--num", dest="n", type=int, default=64,
                   help="number of samples (default 64)")
    p.add_argument("--temperature", "-t", type=float, default=1.0,
                   help="scale of the latent noise (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("-o", "--output", metavar="FILE.png", default=None,
                   help="write the samples as one PNG grid (image data only)")
    p.add_argument("--nrow", type=int, default=None,
                   help="images per grid row (default: about sqrt(n))")
    p.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, metavar="PIXELS",
                   help="upscale the grid (nearest neighbour, integer factor) until its "
                        "longer side is at least PIXELS (default %(default)s); 0 writes "
                        "the raw size, one pixel per image pixel")
    p.add_argument("--save-raw", metavar="FILE", default=None,
                   help="write the samples as an array: .npy (numpy) or .pt (torch tensor)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per inverse pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(run=run)


def save_raw(samples: Tensor, path: str | Path) -> Path:
    """``.npy`` via `numpy.save` (no pickle) or ``.pt`` via `torch.save` of the tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, samples.numpy(), allow_pickle=False)
    else:
        torch.save(samples.clone(), path)
    return path


def _check_outputs(args: argparse.Namespace) -> None:
    if args.output is None and args.save_raw is None:
        raise CliUsageError("sample needs -o FILE.png and/or --save-raw FILE.npy|.pt")
    if args.output is not None and Path(args.output).suffix.lower() != ".png":
        raise CliUsageError(f"-o writes a PNG grid, so FILE must end in .png. "
                            f"Got {args.output!r}.")
    if args.save_raw is not None and Path(args.save_raw).suffix not in RAW_SUFFIXES:
        raise CliUsageError(f"--save-raw FILE must end in {' or '.join(RAW_SUFFIXES)}. "
                            f"Got {args.save_raw!r}.")
    if args.nrow is not None and args.nrow < 1:
        raise CliUsageError(f"--nrow must be at least 1. Got {args.nrow}.")
    if args.min_side < 0:
        raise CliUsageError(f"--min-side must be 0 (raw size) or more pixels. "
                            f"Got {args.min_side}.")


def _check_image(flow: object, output: str) -> None:
    shape, bits = list(flow.data_shape), int(flow.bits)
    if len(shape) != 3 or shape[0] not in (1, 3) or bits <= 0:
        kind = f"{bits}-bit" if bits > 0 else "continuous (no bits)"
        raise CliUsageError(f"-o {output}: a PNG grid needs discrete image data [1 or 3, H, W] "
                            f"with bits set; this model's input is {kind} {shape}. Use "
                            "--save-raw FILE.npy instead.")


def run(args: argparse.Namespace) -> int:
    from flowgraph.evaluate import sample_images, to_display
    from flowgraph.images import save_grid

    _check_outputs(args)
    device = resolve_device(args.device)
    flow, _ = load_for_inference(args.checkpoint, device)
    if args.output is not None:
        _check_image(flow, args.output)
    samples = sample_images(flow, args.n, temperature=args.temperature, seed=args.seed,
                            batch_size=args.batch_size, device=device)
    if args.output is not None:
        path = save_grid(to_display(samples, flow.bits), args.output, args.nrow,
                         min_side=args.min_side)
        print(f"wrote {path} ({args.n} samples, T={args.temperature:g}, seed {args.seed})")
    if args.save_raw is not None:
        path = save_raw(samples, args.save_raw)
        print(f"wrote {path} ({samples.dtype}, shape {list(samples.shape)})")
    return 0
