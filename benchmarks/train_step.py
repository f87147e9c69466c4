"""Training-step and sampling speed of a compiled spec (CPU or CUDA); prints one JSON line.

    python benchmarks/train_step.py specs/denseflow-74-10.yaml --batch 8 --steps 7
    python benchmarks/train_step.py specs/denseflow-fmnist.yaml --batch 64 --threads 2

Wall-clock medians after warm-up steps, with the CPU time of each step: on this 2-core host
a timing is trustworthy only when CPU time is close to threads × wall time (the host
throttles). Reference, authors' code on this machine (2 threads): 6.77 s per step at batch 8,
12.5 s at batch 16, sampling 16 images 3.29 s (shared/reference/denseflow-official.md §13).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowgraph.compile import compile_spec
from flowgraph.cli.common import parse_overrides


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("spec")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sample", type=int, default=16, help="images to sample (0: skip)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flow = compile_spec(args.spec, parse_overrides(args.overrides), seed=0).to(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, *flow.data_shape)
    high = 2 ** flow.bits if flow.bits else None
    x = (torch.randint(0, high, shape, generator=g).float() if high
         else torch.randn(shape, generator=g)).to(args.device)
    flow.initialize(x)
    opt = torch.optim.Adamax(flow.parameters(), lr=1e-3)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    walls, cpus, losses = [], [], []
    for i in range(args.warmup + args.steps):
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        loss = flow.bits_per_dim(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= args.warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            losses.append(loss.item())
    out = {
        "spec": args.spec, "device": args.device, "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in flow.parameters()), "batch": args.batch,
        "step_s_median": statistics.median(walls), "step_s_min": min(walls),
        "step_cpu_s_median": statistics.median(cpus),
        "images_per_s": args.batch / statistics.median(walls), "bpd_last": losses[-1],
    }
    if args.sample:
        flow.eval()
        with torch.no_grad():
            flow.sample(2)
            sync()
            w0 = time.perf_counter()
            flow.sample(args.sample)
            sync()
        out["sample_s"] = time.perf_counter() - w0
        out["sample_n"] = args.sample
    print(json.dumps(out))


if __name__ == "__main__":
    main()
