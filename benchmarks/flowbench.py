#!/usr/bin/env python3
r"""Benchmark a flowgraph spec on the CPU, side by side with the authors' DenseFlow or another
flowgraph checkout, in one invocation; writes JSON + a Markdown table.

    python benchmarks/flowbench.py --quick                                  # smoke run
    python benchmarks/flowbench.py specs/denseflow-74-10.yaml \
        --reference /tmp/denseflow-official --batches 8,16 --rounds 2 --threads 2
    python benchmarks/flowbench.py --reference /tmp/denseflow-official \
        --batches 8,32 --sizes 32,64 --rounds 1                           # scaling
    python benchmarks/flowbench.py specs/denseflow-fmnist.yaml --batches 64 --rounds 3 \
        --tasks train --baseline-worktree /work/wt-base                 # against an older commit

Measurements (each job in its own process, this script re-invoked with ``--worker JSON``, so
peak RSS, VmHWM, is that job's): the training step (zero_grad + loss forward + backward +
Adamax step; median after warm-up; images/s; peak memory), sampling latency (``--sample-n``
images, eval, no_grad) and likelihood throughput (eval-mode bits/dim of a batch, no_grad).
Our modes (``--modes``): ``eager``, ``script`` (``torch.jit.script`` of the flow), ``compile``
(``torch.compile``, slow to compile on a CPU, so opt-in), each optionally ``+bf16`` (bf16
conditioners), ``+cl`` (channels-last) or ``+ms`` (memory-saving training). Ours samples and evaluates after ``freeze()`` (``--no-freeze``).

With ``--reference PATH`` (a checkout of github.com/matejgrcic/DenseFlow, GPL-2.0, imported
from that path at run time and never copied) the authors' DenseFlow-74-10 runs in its default
form and with ``checkpointing=True`` (training only). ``--baseline-worktree PATH`` adds another
flowgraph checkout (its own copy of the spec), run with PYTHONPATH=PATH.

The machine is shared and throttles, so only same-run ratios count: in every round each
measurement runs every system back to back, in ABBA order across rounds. Ratios are given per
round and as the median over rounds: speedup = reference time / our time, memory = our peak
RSS / the reference's. Each round also measures the machine's fp32 and bf16 convolution rate
(F.conv2d forward) on the model's largest-FLOP convolution shapes, and each result's FLOP/s
(FLOPs counted once per model with torch.utils.flop_counter) is given as a fraction of it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SPEC = "specs/denseflow-74-10.yaml"
TRAIN_FLAGS = {"bf16": "bf16", "channels_last": "cl", "memory_saving": "ms"}  # -> modifier


# -- the plan ----------------------------------------------------------------------------------
def _ints(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",") if v] if text else []


def _spec_in(checkout: Path, spec: Path) -> Path:
    """The same spec file in another checkout (its own version), when the spec lies in ours."""
    try:
        return checkout / spec.resolve().relative_to(ROOT)
    except ValueError:
        return spec


def _config_mode(checkout: Path, config: str | None) -> str | None:
    """The mode a training config selects (``eager``, ``compile``, ``+bf16``, ``+cl``)."""
    if not config:
        return None
    import yaml

    path = Path(config) if Path(config).is_absolute() else checkout / config
    cfg = yaml.safe_load(path.read_text()) or {}
    mode = "compile" if cfg.get("compile") else "eager"
    return "+".join([mode] + [m for f, m in TRAIN_FLAGS.items() if cfg.get(f)])


def _systems(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (system, variant) of the run, in the order of a forward round."""
    spec = Path(a.spec)
    ours = Path(a.ours_worktree).resolve() if a.ours_worktree else ROOT
    ours_modes = a.modes.split(",") if a.modes else [_config_mode(ours, a.train_config)
                                                      or "eager"]
    out = [{"system": "ours", "variant": m, "root": str(ours), "spec": str(_spec_in(ours, spec))}
           for m in ours_modes]
    if a.baseline_worktree:
        base = Path(a.baseline_worktree).resolve()
        modes = (a.baseline_modes.split(",") if a.baseline_modes
                 else [_config_mode(base, a.train_config) or "eager"])
        out += [{"system": "base", "variant": m, "root": str(base),
                 "spec": str(_spec_in(base, spec))} for m in modes]
    if a.reference:
        out += [{"system": "official", "variant": v, "root": str(ROOT),
                 "reference": str(Path(a.reference).resolve())}
                for v in a.reference_variants.split(",")]
    for s in out:
        s["label"] = f"{s['system']}:{s['variant']}"
    return out


def _measurements(a: argparse.Namespace, sizes: list[int | None]) -> list[dict[str, Any]]:
    tasks = a.tasks.split(",")
    batches = _ints(a.batches)
    cells = ([(b, s) for s in sizes for b in batches] if a.grid else
             [(b, sizes[0]) for b in batches] + [(batches[0], s) for s in sizes[1:]])
    out = [{"task": "train", "batch": b, "size": s} for b, s in cells] if "train" in tasks else []
    if "sample" in tasks:
        out.append({"task": "sample", "batch": a.sample_n, "size": sizes[0]})
    if "loglik" in tasks:
        out.append({"task": "loglik", "batch": a.loglik_batch, "size": sizes[0]})
    return out


# -- running workers ---------------------------------------------------------------------------
def _run(job: dict[str, Any], root: str, a: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=root)
    env.update(kv.split("=", 1) for kv in a.env)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {a.timeout} s", "wall_s": a.timeout}
    wall = time.perf_counter() - t0
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        return {"error": f"worker exited with status {p.returncode}",
                "stderr_tail": p.stderr[-3000:], "wall_s": wall}
    out = json.loads(lines[-1])
    out["wall_s"] = wall
    return out


def _job(a: argparse.Namespace, sysd: dict[str, Any], m: dict[str, Any],
         data_shape: list[int] | None) -> dict[str, Any]:
    job = {"task": m["task"], "system": sysd["system"], "variant": sysd["variant"],
           "seed": a.seed, "threads": a.threads, "warmup": a.warmup, "steps": a.steps,
           "repeats": a.repeats, "sample_n": a.sample_n, "loglik_batch": a.loglik_batch,
           "freeze": not a.no_freeze}
    if m.get("batch") is not None:
        job["batch"] = m["batch"]
    if sysd["label"] == "official:ckpt" and a.ckpt_steps:
        job["warmup"], job["steps"] = 1, a.ckpt_steps
    if sysd["system"] == "official":
        job["reference"] = sysd["reference"]
        job["data_shape"] = data_shape
    else:
        job["spec"] = sysd["spec"]
        job["overrides"] = dict(a.overrides, **({"size": m["size"]} if m["size"] else {}))
    return job


def _overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"flowbench: --set expects ARG=VALUE. Got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


# -- machine and provenance --------------------------------------------------------------------
def _git(path: str) -> dict[str, Any]:
    def run(*args: str) -> str:
        r = subprocess.run(["git", "-C", path, *args], capture_output=True, text=True,
                           check=False)
        return r.stdout.strip()
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def _tree_hash(path: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*.py")):
        h.update(str(p.relative_to(path)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _machine(threads: int) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "threads": threads, "hostname": platform.node()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "cpu_model" not in info:
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
                info["avx512"] = "avx512f" in flags
                info["avx512_bf16"] = "avx512_bf16" in flags
                info["amx"] = "amx_bf16" in flags
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["mem_total_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    par = torch.__config__.parallel_info()
    info["parallel_info"] = [ln.strip() for ln in par.splitlines() if ln.strip()][:12]
    return info


# -- results -----------------------------------------------------------------------------------
def _flops(result: dict[str, Any], sysd: dict[str, Any], m: dict[str, Any]) -> float | None:
    """FLOPs of one measured call, from the info job (counted at a small batch, linear in it)."""
    key = "official:default" if sysd["system"] == "official" else f"{sysd['system']}:eager"
    info = result["info"].get(f"{key}@{m['size']}", {})
    per_image = info.get(f"{m['task']}_flops_per_image")
    return None if per_image is None else per_image * m["batch"]


def _cpu_s(res: dict[str, Any]) -> float | None:
    """Median CPU seconds (user + system, all threads) of the timed calls."""
    if "user_s_all" not in res:
        return None
    return statistics.median(u + s for u, s in zip(res["user_s_all"], res["sys_s_all"],
                                                   strict=True))


def summarize(result: dict[str, Any]) -> None:
    """Fill ``result['summary']`` (median over rounds per cell) and ``result['ratios']``."""
    peaks = {p["round"]: p for p in result["peak"] if "fp32" in p}
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        key = (r["task"], r["batch"], r["size"], r["label"])
        cells.setdefault(key, []).append(r)
        res = r["result"]
        if "s_median" in res and r.get("flops") and r["round"] in peaks:
            res["gflops"] = r["flops"] / res["s_median"] / 1e9
            res["fraction_fp32_peak"] = r["flops"] / res["s_median"] / peaks[r["round"]]["fp32"]
            res["fraction_bf16_peak"] = r["flops"] / res["s_median"] / peaks[r["round"]]["bf16"]
            cpu = _cpu_s(res)
            if cpu and "fp32_cpu" in peaks[r["round"]]:  # FLOP per CPU second, both sides
                res["fraction_fp32_peak_cpu"] = r["flops"] / cpu / peaks[r["round"]]["fp32_cpu"]
    summary = []
    for (task, batch, size, label), runs in cells.items():
        ok = [r["result"] for r in runs if "s_median" in r["result"]]
        row: dict[str, Any] = {"task": task, "batch": batch, "size": size, "label": label,
                               "rounds": len(runs), "ok": len(ok)}
        if not ok:
            bad = runs[0]["result"]
            row["note"] = bad.get("skipped") or bad.get("error", "?")
        else:
            def med(f: Any, ok: list[dict[str, Any]] = ok) -> float:
                return statistics.median(f(r) for r in ok)
            row.update(
                s_per_round=[r["s_median"] for r in ok], s=med(lambda r: r["s_median"]),
                images_per_s=med(lambda r: r["images_per_s"]),
                peak_mib=med(lambda r: r["process"]["hwm_mib"]),
                cpu_per_wall=med(lambda r: r["cpu_per_wall"]),
                cpu_s=med(lambda r: _cpu_s(r) or 0.0),
                sys_fraction=med(lambda r: r["sys_fraction"]))
            if all("fraction_fp32_peak" in r for r in ok):
                row.update(gflops=med(lambda r: r["gflops"]),
                           fraction_fp32_peak=med(lambda r: r["fraction_fp32_peak"]),
                           fraction_bf16_peak=med(lambda r: r["fraction_bf16_peak"]))
            if all("fraction_fp32_peak_cpu" in r for r in ok):
                row["fraction_fp32_peak_cpu"] = med(lambda r: r["fraction_fp32_peak_cpu"])
        summary.append(row)
    result["summary"] = summary
    ratios = []
    subjects = [s for s in result["systems"] if s["system"] == "ours"]
    refs = [s for s in result["systems"] if s["system"] != "ours"]
    for task, batch, size in dict.fromkeys((k[0], k[1], k[2]) for k in cells):
        for s in subjects:
            for ref in refs:
                mine = {r["round"]: r["result"] for r in cells.get((task, batch, size, s["label"]), [])}
                theirs = {r["round"]: r["result"]
                          for r in cells.get((task, batch, size, ref["label"]), [])}
                rounds = sorted(k for k in mine if k in theirs and "s_median" in mine[k]
                                and "s_median" in theirs[k])
                if not rounds:
                    continue
                speed = [theirs[k]["s_median"] / mine[k]["s_median"] for k in rounds]
                memory = [mine[k]["process"]["hwm_mib"] / theirs[k]["process"]["hwm_mib"]
                          for k in rounds]
                row = {"task": task, "batch": batch, "size": size, "subject": s["label"],
                       "reference": ref["label"], "rounds": rounds, "speedup": speed,
                       "speedup_median": statistics.median(speed),
                       "memory": memory, "memory_median": statistics.median(memory)}
                cpu = [(_cpu_s(theirs[k]), _cpu_s(mine[k])) for k in rounds]
                if all(t and m for t, m in cpu):  # CPU time: less sensitive to a busy host
                    row["cpu_speedup"] = [t / m for t, m in cpu]
                    row["cpu_speedup_median"] = statistics.median(row["cpu_speedup"])
                ratios.append(row)
    result["ratios"] = ratios


def _write(result: dict[str, Any], path: Path) -> None:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from flowbench_report import markdown

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    path.with_suffix(".md").write_text(markdown(result))


def _log(msg: str) -> None:
    print(f"[flowbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _brief(res: dict[str, Any]) -> str:
    if "error" in res or "skipped" in res:
        return (res.get("error") or "skipped: " + res["skipped"]).splitlines()[0][:200]
    if "s_median" in res:
        return (f"{res['s_median']:.3f} s (all {', '.join(f'{t:.2f}' for t in res['s_all'])}),"
                f" {res['images_per_s']:.1f} img/s, peak {res['process']['hwm_mib']:.0f} MiB,"
                f" cpu/wall {res['cpu_per_wall']:.2f}, sys {100 * res['sys_fraction']:.0f}%")
    if "fp32" in res:
        return f"conv fp32 {res['fp32'] / 1e9:.1f} GFLOP/s, bf16 {res['bf16'] / 1e9:.1f} GFLOP/s"
    return ", ".join(f"{k}={v}" for k, v in res.items()
                     if k in ("params", "train_flops_per_image", "build_s"))


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", default=DEFAULT_SPEC, help=f"default {DEFAULT_SPEC}")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="ARG=VALUE",
                   help="spec-argument override for our model (repeatable)")
    p.add_argument("--reference", metavar="PATH", help="checkout of the authors' DenseFlow")
    p.add_argument("--reference-variants", default="default,ckpt",
                   help="the authors' variants: default, ckpt (checkpointing=True; training)")
    p.add_argument("--baseline-worktree", metavar="PATH",
                   help="another flowgraph checkout to compare against")
    p.add_argument("--ours-worktree", metavar="PATH", help="measure the flowgraph of this "
                   "checkout as ours (default: the one holding this script)")
    p.add_argument("--modes", help="our modes, comma-separated: eager, script, compile, each "
                   "with optional +bf16 / +cl / +ms (default eager, or what --train-config "
                   "selects)")
    p.add_argument("--baseline-modes", help="the baseline's modes (default as --modes' default)")
    p.add_argument("--train-config", metavar="YAML", help="take the mode from this training "
                   "config (bf16, channels_last, compile), read in each checkout")
    p.add_argument("--tasks", default="train,sample,loglik")
    p.add_argument("--batches", default="8,16", help="training batch sizes (default 8,16)")
    p.add_argument("--sizes", default="", help="image sizes (--set size=S), e.g. 32,64; "
                   "default: the spec's; scaling runs the other sizes at the first batch")
    p.add_argument("--grid", action="store_true", help="every batch at every size")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps/calls first")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--ckpt-steps", type=int, default=0, help="timed steps of the authors' "
                   "checkpointing variant after 1 warm-up step (its point is memory; default "
                   "as --steps)")
    p.add_argument("--repeats", type=int, default=3, help="timed sampling/likelihood calls")
    p.add_argument("--sample-n", type=int, default=16)
    p.add_argument("--loglik-batch", type=int, default=16)
    p.add_argument("--info-batch", type=int, default=1,
                   help="batch at which FLOPs are counted (scaled linearly)")
    p.add_argument("--no-freeze", action="store_true", help="sample/evaluate ours unfrozen")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting and the peak")
    p.add_argument("--peak-seconds", type=float, default=0.5,
                   help="timing budget of each peak-rate measurement")
    p.add_argument("--reuse-info", metavar="JSON", help="take parameters, FLOPs and conv "
                   "shapes from an earlier result of the same spec instead of counting again")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of every worker (e.g. OMP_WAIT_POLICY=passive)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600, help="per worker, seconds")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 8, 1 round, 1 warm-up + 2 steps, 1 repeat")
    p.add_argument("--json", metavar="PATH", help="default benchmarks/results/flowbench-<spec>.json")
    p.add_argument("--report", metavar="JSON", help="only rewrite the Markdown of a result")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:  # only where the option was left at its default
        for name, value in (("batches", "8"), ("rounds", 1), ("warmup", 1), ("steps", 2),
                            ("repeats", 1)):
            if getattr(a, name) == p.get_default(name):
                setattr(a, name, value)
    a.overrides = _overrides(a.set)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker:
        sys.path.insert(0, str(HERE))
        from flowbench_workers import run_job

        print(json.dumps(run_job(json.loads(a.worker))), flush=True)
        return 0
    if a.report:
        path = Path(a.report)
        result = json.loads(path.read_text())
        summarize(result)
        _write(result, path)
        print(path.with_suffix(".md").read_text())
        return 0
    if a.reference and not (Path(a.reference) / "experiments" / "image").is_dir():
        raise SystemExit(f"flowbench: --reference {a.reference!r} is not a DenseFlow checkout "
                         "(no experiments/image)")
    spec_name = Path(a.spec).stem
    out = Path(a.json) if a.json else HERE / "results" / f"flowbench-{spec_name}.json"
    sizes: list[int | None] = [int(s) for s in a.sizes.split(",") if s] or [None]
    systems = _systems(a)
    result: dict[str, Any] = {
        "tool": "benchmarks/flowbench.py", "argv": sys.argv[1:] if argv is None else argv,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(), "machine": _machine(a.threads),
        "config": {k: v for k, v in vars(a).items() if k not in ("worker", "report")},
        "spec": spec_name, "systems": systems, "info": {}, "peak": [], "runs": []}
    for s in systems:
        if s["system"] == "official":
            s["tree_sha256"] = _tree_hash(s["reference"])
        else:
            s["git"] = _git(s["root"])
    t_start = time.perf_counter()
    info_batch = a.info_batch

    # once per model and size: parameters, FLOPs, our convolution shapes
    data_shapes: dict[Any, list[int]] = {}
    if a.reuse_info:
        result["info"].update(json.loads(Path(a.reuse_info).read_text())["info"])
        result["info_reused_from"] = a.reuse_info
    firsts = {}
    for s in systems:
        key = "official:default" if s["system"] == "official" else f"{s['system']}:eager"
        firsts.setdefault(key, s)
    for size in sizes:
        for key, s in sorted(firsts.items(), key=lambda kv: kv[1]["system"] == "official"):
            old = result["info"].get(f"{key}@{size}", {})
            if "params" in old:  # --reuse-info
                if s["system"] == "ours":
                    data_shapes[size] = old["data_shape"]
                continue
            if s["system"] == "official" and data_shapes.get(size, [0])[0] != 3:
                result["info"][f"{key}@{size}"] = {"skipped": "the authors' DenseFlow-74-10 "
                                                   "is benchmarked on 3-channel images only"}
                continue
            sysd = dict(s, variant="default" if s["system"] == "official" else "eager")
            job = _job(a, sysd, {"task": "info", "batch": info_batch, "size": size},
                       data_shapes.get(size))
            job["flops"] = not a.no_flops
            _log(f"info {key} size {size or 'spec'} ...")
            res = _run(job, s["root"], a)
            _log(f"  {_brief(res)}")
            if s["system"] == "ours" and "data_shape" in res:
                data_shapes[size] = res["data_shape"]
            result["info"][f"{key}@{size}"] = res
            _write(result, out)
    if any(s["system"] == "official" for s in systems) and sizes[0] not in data_shapes:
        _log("warning: our model did not build; the reference has no data shape")

    measurements = _measurements(a, sizes)
    ours_info = result["info"].get(f"ours:eager@{sizes[0]}", {})
    b0 = _ints(a.batches)[0]
    convs = [dict(c, x=[b0, *c["x"][1:]], flops_per_call=c["flops_per_call"] * b0 // c["x"][0])
             for c in ours_info.get("conv_shapes", [])[:3]]
    for rnd in range(a.rounds):
        order = systems if rnd % 2 == 0 else systems[::-1]
        if not a.no_flops:
            _log(f"round {rnd + 1}/{a.rounds}: machine peak ...")
            peak = _run({"task": "peak", "threads": a.threads, "conv_shapes": convs,
                         "seconds": a.peak_seconds},
                        str(ROOT), a)
            peak["round"] = rnd
            _log(f"  {_brief(peak)}")
            result["peak"].append(peak)
        for m in measurements:
            for s in order:
                if m["task"] != "train" and (s["variant"] == "ckpt" or "+ms" in s["variant"]):
                    continue  # checkpointing / recomputation change the backward pass only
                if s["system"] == "official" and data_shapes.get(m["size"], [0])[0] != 3:
                    continue
                job = _job(a, s, m, data_shapes.get(m["size"]))
                _log(f"round {rnd + 1} {m['task']} b{m['batch']} size {m['size'] or 'spec'} "
                     f"{s['label']} ...")
                load = os.getloadavg()[0]
                res = _run(job, s["root"], a)
                _log(f"  {_brief(res)}")
                run = {"round": rnd, **m, "system": s["system"], "variant": s["variant"],
                       "label": s["label"], "flops": _flops(result, s, m), "loadavg": load,
                       "result": res}
                result["runs"].append(run)
                summarize(result)
                _write(result, out)
    result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    result["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - t_start
    summarize(result)
    _write(result, out)
    print(out.with_suffix(".md").read_text())
    _log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
