"""DenseFlow-74-10 on a GPU through the trainer's own step: training images/s, sampling latency,
peak memory and the fraction of the GPU's bf16 peak; writes one JSON. Run by gpu_check.sh.

    python benchmarks/gpu_bench.py --out result.json              # CUDA, < 4 min on an H200
    python benchmarks/gpu_bench.py --cpu-fallback --out r.json    # no GPU: tiny spec, same code

Training configurations, batch 64 (the authors' CIFAR-10 setting), random uint8 3×32×32 images
held on the GPU, Eta augmentation, Adamax, gradient norms, no host sync inside the timed steps
(`Trainer.train_step`):

- ``fp32``: fp32 eager, TF32 off (the authors' configuration);
- ``tf32``: fp32 eager with TF32 matmuls/convolutions (flowgraph's default on CUDA);
- ``bf16+channels_last``: the trainer's ``bf16: true`` (autocast), channels-last, eager;
- ``bf16+channels_last+compile``: the same with ``compile: true`` (torch.compile of the loss).

Each configuration runs in its own process (fresh CUDA state: peak memory is its own; a compile
that overruns its time is killed and reported, the others stand). Images/s is the timed steps'
images over their wall time (``torch.cuda.synchronize`` around them). Sampling: 128 images at
3×32×32, eval mode, no grad, fp32 with TF32 and under bf16 autocast. The model FLOPs of a
training step come from ``torch.utils.flop_counter`` (matmuls and convolutions, forward and
backward); the bf16 peak is measured with an 8192³ bf16 matmul in the same run, and
``fraction_of_bf16_peak`` = FLOPs/image × images/s ÷ that peak.

On a machine without CUDA (``--cpu-fallback``) the same functions run in-process on a tiny
override of the same spec (3×16×16, one module per block, batch 8, a few steps; torch.compile
with the eager backend), which shows the path works, not how fast anything is.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowgraph.train import TrainConfig, Trainer

SPEC = ROOT / "specs" / "denseflow-74-10.yaml"
CONFIGS = {
    "fp32": {"tf32": False},
    "tf32": {"tf32": True},
    "bf16+channels_last": {"tf32": True, "bf16": True, "channels_last": True},
    "bf16+channels_last+compile": {"tf32": True, "bf16": True, "channels_last": True,
                                   "compile": True},
}
TINY_NET = {"kind": "dense_attention", "width": 8, "depth": 1, "growth": 4,
            "attention": {"landmarks": 4, "layout": "official", "softmax": "official"}}
TINY = {"size": 16, "units": [1, 1, 1], "modules": [1, 1, 1], "growth": 2,
        "coupling_net": TINY_NET, "dequantization": "dequantize_uniform"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(name: str, cpu: bool, batch: int, steps: int) -> tuple[Trainer, torch.Tensor]:
    size = TINY["size"] if cpu else 32
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, ((steps + 3) * batch, 3, size, size), dtype=torch.uint8,
                         generator=g)
    cfg = TrainConfig(batch_size=batch, epochs=1, warmup_steps=100, samples=0, val_images=0,
                      tensorboard=False, log_every=10**6, checkpoint_every=0, seed=0,
                      augment="eta", device="cpu" if cpu else "cuda", **CONFIGS[name])
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    trainer = Trainer(SPEC, cfg, out, overrides=TINY if cpu else None, train_data=data,
                      stream=io.StringIO())
    trainer.initialize()
    trainer.wrap()
    return trainer, data


def flops_per_image(trainer: Trainer, x: torch.Tensor) -> float:
    """Model FLOPs (matmul/conv, forward + backward) of one training step, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    xs = trainer._inputs(x, 0)
    noise = trainer._noise(len(xs), "noise", 0)
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.loss(xs, noise).float().mean().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(xs)


def sample_latency(trainer: Trainer, n: int, bf16: bool) -> float:
    flow, device = trainer.flow, trainer.device
    flow.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        flow.sample(min(n, 8))  # warm-up (kernels, allocator)
        _sync(device)
        t0 = time.perf_counter()
        flow.sample(n)
        _sync(device)
        seconds = time.perf_counter() - t0
    flow.train()
    return seconds


def run_config(name: str, cpu: bool, batch: int, warmup: int, steps: int,
               extras: bool) -> dict:
    """Train `warmup` + `steps` steps of configuration `name`; time the last `steps`."""
    if cpu and CONFIGS[name].get("compile"):
        import functools
        torch.compile = functools.partial(torch.compile, backend="eager")  # no inductor build
    trainer, _ = _setup(name, cpu, batch, warmup + steps)
    device = trainer.device
    batches = [x for _, x in trainer.source.epoch(0)]
    t_warm = time.perf_counter()
    for x in batches[:warmup]:
        trainer.train_step(x, 1e-4)
    _sync(device)
    warm_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for x in batches[warmup:warmup + steps]:
        out = trainer.train_step(x, 1e-4)
    _sync(device)
    seconds = time.perf_counter() - t0
    result = {
        "config": name, **CONFIGS[name], "batch": batch, "steps": steps,
        "warmup_s": round(warm_s, 3), "seconds": round(seconds, 4),
        "step_ms": round(1e3 * seconds / steps, 2),
        "images_per_s": round(batch * steps / seconds, 1),
        "bpd_last": float(out["bpd"]), "skipped": int(trainer._acc[6].item()),
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                            if device.type == "cuda" else None),
        "params": sum(p.numel() for p in trainer.flow.parameters()),
    }
    if extras:  # once, in the default (tf32) configuration
        result["flops_per_image"] = flops_per_image(trainer, batches[0])
        n = 16 if cpu else 128
        result["sample"] = {"n": n, "seconds": round(sample_latency(trainer, n, False), 4),
                            "bf16_seconds": round(sample_latency(trainer, n, True), 4)}
    return result


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def _child(args: argparse.Namespace) -> None:
    result = run_config(args.child, args.cpu_fallback, args.batch, args.warmup, args.steps,
                        args.child == "tf32")
    print("RESULT " + json.dumps(result), flush=True)


def _in_subprocess(name: str, args: argparse.Namespace, timeout: float) -> dict:
    warmup = args.warmup + (2 if CONFIGS[name].get("compile") else 0)
    cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch),
           "--warmup", str(warmup), "--steps", str(args.steps)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1),
                              check=False)
    except subprocess.TimeoutExpired:
        return {"config": name, "error": f"did not finish within {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"config": name, "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the JSON here (also printed)")
    p.add_argument("--cpu-fallback", action="store_true")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--deadline", type=float, default=230.0, help="seconds for all configs")
    p.add_argument("--tests", default=None, help="the CUDA tests' summary line, recorded")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    cpu = args.cpu_fallback or not torch.cuda.is_available()
    args.cpu_fallback = cpu
    args.batch = args.batch or (8 if cpu else 64)
    args.steps = args.steps or (2 if cpu else 10)
    if args.child:
        return _child(args)
    if cpu:
        torch.set_num_threads(1)  # small ops: more threads only spin (shared CPUs)
    start = time.perf_counter()
    device = torch.device("cpu" if cpu else "cuda")
    result = {
        "cpu_fallback": cpu, "device": device.type,
        "gpu": torch.cuda.get_device_name(0) if not cpu else None,
        "torch": torch.__version__, "spec": str(SPEC.relative_to(ROOT)),
        "overrides": TINY if cpu else {}, "batch": args.batch, "tests": args.tests,
        "bf16_peak_tflops": None, "train": [],
    }
    peak = bf16_peak_tflops(device)
    result["bf16_peak_tflops"] = None if peak is None else round(peak, 1)
    for name in CONFIGS:
        left = args.deadline - (time.perf_counter() - start)
        if cpu:
            run = run_config(name, True, args.batch, 1, args.steps, name == "tf32")
        else:
            run = _in_subprocess(name, args, left)
        if "flops_per_image" in run:
            result["flops_per_image"] = run.pop("flops_per_image")
            result["sample"] = run.pop("sample")
        result["train"].append(run)
        print(json.dumps(run), flush=True)
    flops = result.get("flops_per_image")
    for run in result["train"]:
        ips = run.get("images_per_s")
        if ips and flops and peak:
            run["fraction_of_bf16_peak"] = round(flops * ips / (peak * 1e12), 4)
        if ips:
            run["cifar10_epoch_s"] = round(50_000 / ips, 1)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
