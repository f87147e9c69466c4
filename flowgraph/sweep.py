r"""`flowgraph sweep PLAN.yaml`: train a list of specs/overrides at an equal budget and several
seeds, evaluate each, and write a table (Markdown + CSV) and a learning-curve plot.

A plan (YAML; relative paths are relative to the plan file)::

    name: table4-fmnist
    config: ../train/fmnist-cpu.yaml        # the training config every run starts from
    train: {max_steps: 1000, threads: 1}    # config fields set for every run
    seeds: [0, 1, 2]
    eval: {iw_k: 64, iw_images: 500}        # test K=1 on all images; IW bound on a subset
    rows:
      - {name: "row 1", spec: row1.yaml}
      - {name: "row 6", spec: row6.yaml, set: {growth: 4}, train: {lr: 5.0e-3}}

Each (row, seed) trains in its own process into ``OUT/<row>/seed<k>/`` and, when done, writes
``result.json`` there (atomically). Rerunning the command skips finished runs, resumes
interrupted ones from their ``checkpoint.pt``, and rebuilds the table from every
``result.json``: a half-finished sweep is never retrained from scratch. The test split is read
only by the final evaluation of each run; choices belong on the validation columns.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowgraph.errors import FlowgraphError

__all__ = ["EvalPlan", "Row", "SweepError", "SweepPlan", "load_plan", "run_sweep",
           "write_report"]


class SweepError(FlowgraphError):
    """A sweep plan is invalid or a run failed; the message names the plan key or the run."""

    usage = True


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    spec: str
    set: dict[str, Any] = Field(default_factory=dict, description="spec argument overrides")
    train: dict[str, Any] = Field(default_factory=dict, description="config overrides")


class EvalPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    k1_images: int | None = Field(None, ge=1, description="test images for K=1 (None: all)")
    iw_k: int = Field(64, ge=1)
    iw_images: int = Field(500, ge=0, description="test images for the IW bound (0: skip)")
    batch_size: int = Field(100, ge=1)


class SweepPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "sweep"
    config: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    eval: EvalPlan = Field(default_factory=EvalPlan)
    rows: list[Row] = Field(min_length=1)
    base_dir: str = "."  # the plan file's folder (set by load_plan)

    def path(self, p: str) -> Path:
        return (Path(self.base_dir) / p).resolve()

    def slugs(self) -> list[str]:
        out = []
        for i, row in enumerate(self.rows):
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", row.name).strip("-")[:60]
            out.append(f"{i + 1:02d}-{slug or 'row'}")
        return out


def load_plan(path: str | Path) -> SweepPlan:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SweepError(f"sweep plan {str(path)!r} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SweepError(f"sweep plan {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep plan {path}: the top level must be a mapping. "
                         f"Got {type(data).__name__}.")
    try:
        plan = SweepPlan.model_validate({**data, "base_dir": str(path.parent)})
    except ValidationError as e:
        msgs = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise SweepError(f"sweep plan {path}: " + "; ".join(msgs)) from None
    names = [r.name for r in plan.rows]
    if len(set(names)) != len(names):
        raise SweepError(f"sweep plan {path}: row names must be unique. Got {names}.")
    for row in plan.rows:
        if not plan.path(row.spec).is_file():
            raise SweepError(f"sweep plan {path}: row {row.name!r}: spec file "
                             f"{str(plan.path(row.spec))!r} does not exist.")
    return plan


def run_config(plan: SweepPlan, row: Row, seed: int) -> dict[str, Any]:
    """The training config (as a mapping) of one run: file, then plan, row and seed."""
    from flowgraph.train.config import load_train_config

    base = {} if plan.config is None else yaml.safe_load(plan.path(plan.config).read_text())
    merged = {**(base or {}), **plan.train, **row.train, "seed": seed}
    return load_train_config(merged).model_dump(mode="json")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# -- one run (in its own process) -----------------------------------------------------------
def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it; returns and writes ``result.json``."""
    import torch

    from flowgraph.checkpoint import load_flow
    from flowgraph.data import load_dataset
    from flowgraph.evaluate import evaluate_bpd
    from flowgraph.train import train
    from flowgraph.train.config import TrainConfig
    from flowgraph.train.curves import read_metrics

    out, cfg = Path(job["out"]), TrainConfig.model_validate(job["config"])
    if not (out / "final.pt").exists():
        resume = out / "checkpoint.pt" if (out / "checkpoint.pt").exists() else None
        train(job["spec"], cfg, out, overrides=job["set"] or None, resume=resume)
    flow, state = load_flow(out / "final.pt")
    steps, wall = int(state["step"]), float(state["wall_time"])
    rows = read_metrics(out)
    val = next((r["val_bpd"] for r in reversed(rows) if r.get("val_bpd") is not None), None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.dataset_options)
    ev = job["eval"]
    k1 = evaluate_bpd(flow, test, k=1, batch_size=ev["batch_size"],
                      max_images=ev["k1_images"], seed=0)
    iw = None
    if ev["iw_images"]:
        iw = evaluate_bpd(flow, test, k=ev["iw_k"], kbs=ev["iw_k"],
                          batch_size=max(1, ev["batch_size"] // ev["iw_k"]),
                          max_images=ev["iw_images"], seed=0)
    record = {
        "row": job["row"], "seed": job["seed"], "spec": job["spec"], "set": job["set"],
        "parameters": sum(p.numel() for p in flow.parameters()), "steps": steps,
        "train_seconds": wall, "val_bpd": val,
        "test_bpd": k1.bpd, "test_stderr": k1.stderr, "test_images": k1.n_images,
        "iw_bpd": None if iw is None else iw.bpd, "iw_k": ev["iw_k"],
        "iw_images": 0 if iw is None else iw.n_images,
        "test_bpd_same_images": None if iw is None else float(
            k1.per_image[:iw.n_images].mean()),
    }
    _write_json(out / "result.json", record)
    return record


# -- the sweep --------------------------------------------------------------------------------
def _jobs(plan: SweepPlan, out: Path) -> list[dict[str, Any]]:
    jobs = []
    for row, slug in zip(plan.rows, plan.slugs(), strict=True):
        for seed in plan.seeds:
            jobs.append({"row": row.name, "slug": slug, "seed": seed,
                         "spec": str(plan.path(row.spec)), "set": row.set,
                         "config": run_config(plan, row, seed),
                         "eval": plan.eval.model_dump(), "out": str(out / slug / f"seed{seed}")})
    return jobs


def _launch(job: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "job.json", job)
    with open(out / "run.log", "a") as f:
        proc = subprocess.run([sys.executable, "-m", "flowgraph.sweep", str(out / "job.json")],
                              stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SweepError(f"run {job['row']!r} seed {job['seed']} failed (exit "
                         f"{proc.returncode}); see {out / 'run.log'}")
    record = json.loads((out / "result.json").read_text())
    log(f"done: {job['row']} seed {job['seed']}: val {record['val_bpd']:.4f}, "
        f"test {record['test_bpd']:.4f} ({record['steps']} steps)")
    return record


def run_sweep(plan: SweepPlan, out: str | Path, *, jobs: int = 1,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every unfinished (row, seed) (`jobs` at a time), then write the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo, records = [], []
    for job in _jobs(plan, out):
        done = Path(job["out"]) / "result.json"
        if done.exists():
            records.append(json.loads(done.read_text()))
        else:
            todo.append(job)
    log(f"{plan.name}: {len(records)} run(s) finished, {len(todo)} to run, {jobs} at a time")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        records += list(pool.map(lambda j: _launch(j, log), todo))
    write_report(plan, out, records)
    return records


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def write_report(plan: SweepPlan, out: Path, records: list[dict[str, Any]]) -> Path:
    """``OUT/results.md``, ``results.csv`` and ``curves.png`` (training bits/dim against step,
    mean ± std over seeds) from the runs' records."""
    import csv

    from flowgraph.train.curves import plot_ablation, read_metrics

    names = [row.name for row in plan.rows]
    records = [r for r in records if r["row"] in names]  # (a plan may have dropped rows)
    by_row = {name: [r for r in records if r["row"] == name] for name in names}
    lines = [f"# {plan.name}", "",
             "mean ± std over seeds (sample standard deviation); bits/dim, lower is better", "",
             ("| row | parameters | steps | seeds | val bpd (K=1) | test bpd (K=1) | "
              f"test bpd (IW, K={plan.eval.iw_k}, subset) |"),
             "|---|---|---|---|---|---|---|"]
    for name, rs in by_row.items():
        if not rs:
            lines.append(f"| {name} | | | 0 | | | |")
            continue
        steps = sorted({r["steps"] for r in rs})
        lines.append(
            f"| {name} | {rs[0]['parameters']:,} | {'/'.join(map(str, steps))} | {len(rs)} | "
            f"{_mean_std([r['val_bpd'] for r in rs if r['val_bpd'] is not None])} | "
            f"{_mean_std([r['test_bpd'] for r in rs])} | "
            f"{_mean_std([r['iw_bpd'] for r in rs if r['iw_bpd'] is not None])} |")
    sample = next(iter(records), None)
    if sample is not None:
        lines += ["", (f"K=1 on {sample['test_images']:,} test images; the IW bound on the "
                       f"first {sample['iw_images']:,} (their K=1 mean is in results.csv).")]
    md = out / "results.md"
    md.write_text("\n".join(lines) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        keys = ["row", "seed", "parameters", "steps", "train_seconds", "val_bpd", "test_bpd",
                "test_stderr", "test_images", "iw_bpd", "iw_k", "iw_images",
                "test_bpd_same_images"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in sorted(records, key=lambda r: (names.index(r["row"]), r["seed"])):
            w.writerow(r)
    curves = {row.name: [read_metrics(out / slug / f"seed{r['seed']}") for r in by_row[row.name]]
              for row, slug in zip(plan.rows, plan.slugs(), strict=True) if by_row[row.name]}
    if curves:  # training bits/dim per logging interval: a curve even for sub-epoch runs
        plot_ablation(curves, out / "curves.png", metric="bpd", title=plan.name)
    return md


if __name__ == "__main__":  # the worker of one run: python -m flowgraph.sweep JOB.json
    run_one(json.loads(Path(sys.argv[1]).read_text()))
