"""The validation split, precise BatchNorm, and the sweep runner (`flowgraph sweep`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flowgraph.compile import compile_spec
from flowgraph.data.dataset import ArrayImageDataset
from flowgraph.errors import FlowgraphError
from flowgraph.train.config import TrainConfig
from flowgraph.train.inputs import ImageRange, load_splits, split_validation
from flowgraph.train.precise_bn import batchnorm_layers, precise_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def numbered(n: int, offset: int = 0) -> torch.Tensor:
    """uint8 [n, 1, 2, 2] images whose first two pixels spell their number (unique)."""
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    ids = torch.arange(offset, offset + n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = ids // 256, ids % 256
    return x


def ids(data) -> set[int]:
    return {int(data[i][0, 0, 0]) * 256 + int(data[i][0, 0, 1]) for i in range(len(data))}


# -- the split ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tensor", "one chunk", "two chunks"])
def test_validation_is_the_training_tail_and_overlaps_neither_train_nor_test(kind):
    images = numbered(100)
    data = {"tensor": images,
            "one chunk": ArrayImageDataset("t", "train", Path("."), [images.numpy()]),
            "two chunks": ArrayImageDataset("t", "train", Path("."),
                                            [images[:60].numpy(), images[60:].numpy()])}[kind]
    test = numbered(30, offset=1000)
    cfg = TrainConfig(val_images=25)

    class Flow:
        data_shape = (1, 2, 2)

    train, val, test_out = load_splits(cfg, Flow(), data, test)
    assert (len(train), len(val)) == (75, 25)
    assert ids(val) == set(range(75, 100)) and ids(train) == set(range(75))
    assert not ids(val) & ids(train) and not ids(val) & ids(test_out)
    assert test_out is test
    if kind != "tensor":  # read in place from the chunks, never concatenated
        assert isinstance(val, ImageRange) and val.data is data
        assert torch.equal(val.gather([0, 24]), images[[75, 99]])
        assert val.nbytes == 25 * 4


def test_an_explicit_validation_set_wins_and_zero_holds_out_nothing():
    data, val = numbered(10), numbered(4, offset=50)

    class Flow:
        data_shape = (1, 2, 2)

    train, v, _ = load_splits(TrainConfig(val_images=5), Flow(), data, None, val)
    assert train is data and v is val
    assert split_validation(data, 0) == (data, None)


def test_holding_out_the_whole_training_set_is_refused():
    with pytest.raises(FlowgraphError, match=r"val_images \(10\) must be smaller"):
        split_validation(numbered(10), 10)


# -- precise BatchNorm ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def bn_flow():
    torch.manual_seed(0)
    flow = compile_spec(ROOT / "specs" / "denseflow-fmnist.yaml",
                        {"units": [1, 1], "modules": [1, 1]})
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    flow.initialize(x.float())
    return flow


def test_precise_bn_changes_only_batchnorm_buffers_to_the_batch_average(bn_flow):
    flow = bn_flow
    layers = batchnorm_layers(flow)
    assert layers, "the fusion coupling network has BatchNorm"
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    batches = [torch.randint(0, 256, (8, 1, 28, 28)).float() for _ in range(3)]
    seen_means: dict[int, list[torch.Tensor]] = {id(m): [] for m in layers}
    hooks = [m.register_forward_pre_hook(
        lambda m, a: seen_means[id(m)].append(a[0].detach().mean((0, 2, 3))))
        for m in layers]
    g = torch.Generator().manual_seed(0)
    forward = lambda x: flow(x, None, flow.draw_noise(len(x), generator=g))
    flow.eval()
    try:
        assert precise_batchnorm(flow, batches, forward) == 24
    finally:
        for h in hooks:
            h.remove()
    assert not flow.training  # the mode is restored
    after = flow.state_dict()
    bn_names = {f"{name}.{b}" for name, m in flow.named_modules() if m in layers
                for b in ("running_mean", "running_var", "num_batches_tracked")}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= bn_names
    assert not any(k.endswith("num_batches_tracked") for k in changed)
    for m in layers:
        expected = torch.stack(seen_means[id(m)]).mean(0)
        torch.testing.assert_close(m.running_mean, expected, rtol=1e-4, atol=1e-5)
        assert m.momentum == 0.1  # restored after the cumulative pass
    flow.load_state_dict(before)


def test_precise_bn_is_skipped_without_batchnorm():
    flow = compile_spec(ROOT / "specs" / "realnvp-2d.yaml")
    calls = []
    assert precise_batchnorm(flow, [torch.zeros(4, 2)], calls.append) == 0
    assert calls == []


def test_no_batches_keep_the_old_statistics(bn_flow):
    before = {k: v.clone() for k, v in bn_flow.state_dict().items()}
    assert precise_batchnorm(bn_flow, [], lambda x: None) == 0
    after = bn_flow.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- the sweep runner ----------------------------------------------------------------------
TINY = """
flowgraph: 1
name: tiny-sweep
args: {hidden: 8}
inputs:
  x: {shape: [1, 4, 4], bits: 8}
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: sq, op: squeeze, in: deq}
  - {id: an, op: actnorm, in: sq}
  - {id: cp, op: affine_coupling, in: an, params: {net: {kind: glow, hidden: "${hidden}"}}}
outputs:
  z: {from: cp}
"""


def _plan(root: Path, rows: list[dict]) -> Path:
    from flowgraph.images import write_png

    data = root / "data"
    g = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 6)):
        for i in range(n):
            path = data / split / f"{i:02d}.png"
            if not path.exists():
                write_png(g.integers(0, 256, (4, 4), dtype=np.uint8), path)
    (root / "tiny.yaml").write_text(TINY)
    plan = {"name": "tiny", "seeds": [0, 1],
            "train": {"dataset": "folder", "data_dir": str(data),
                      "dataset_options": {"channels": 1}, "batch_size": 4, "epochs": 1,
                      "max_steps": 3, "warmup_steps": 1, "val_images": 8, "samples": 0,
                      "tensorboard": False, "threads": 1, "precise_bn": 0,
                      "log_every": 1},
            "eval": {"iw_k": 3, "iw_images": 2, "batch_size": 3},
            "rows": rows}
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_sweep_resumes_a_half_finished_table_without_retraining_finished_runs(tmp_path):
    pytest.importorskip("PIL")
    from flowgraph.sweep import load_plan, run_sweep

    row_a = {"name": "A", "spec": "tiny.yaml"}
    row_b = {"name": "B wide", "spec": "tiny.yaml", "set": {"hidden": 16},
             "train": {"lr": 2.0e-3}}
    out = tmp_path / "out"
    first = run_sweep(load_plan(_plan(tmp_path, [row_a])), out, log=lambda m: None)
    assert sorted((r["row"], r["seed"]) for r in first) == [("A", 0), ("A", 1)]
    done = out / "01-A" / "seed0"
    stamp = {p: p.stat().st_mtime_ns for p in (done / "final.pt", done / "result.json")}
    # Row B seed 0 was interrupted after its first checkpoint: it resumes, not restarts.
    from flowgraph.train import train
    from flowgraph.train.config import TrainConfig

    plan = load_plan(_plan(tmp_path, [row_a, row_b]))
    b0 = out / "02-B-wide" / "seed0"
    cfg = {**plan.train, **row_b["train"], "seed": 0, "max_steps": 2}
    train(str(tmp_path / "tiny.yaml"), TrainConfig(**cfg), b0, overrides={"hidden": 16})
    os.remove(b0 / "final.pt")
    partial = (b0 / "metrics.jsonl").read_text().splitlines()[:2]
    records = run_sweep(plan, out, log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # A was not retrained
    assert sorted((r["row"], r["seed"]) for r in records) == [
        ("A", 0), ("A", 1), ("B wide", 0), ("B wide", 1)]
    b_rows = [json.loads(line) for line in (b0 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b_rows] == [1, 2, 3, 3]  # the last: the final row
    assert (b0 / "metrics.jsonl").read_text().splitlines()[:2] == partial  # resumed at 2
    by = {(r["row"], r["seed"]): r for r in records}
    assert by[("B wide", 0)]["parameters"] > by[("A", 0)]["parameters"]
    assert by[("A", 0)]["steps"] == 3 and by[("A", 0)]["iw_images"] == 2
    table = (out / "results.md").read_text()
    assert "| A |" in table and "| B wide |" in table and " ± " in table
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 4


def test_a_bad_plan_names_the_key(tmp_path):
    from flowgraph.sweep import SweepError, load_plan

    path = tmp_path / "plan.yaml"
    path.write_text("rows: [{name: a, spec: missing.yaml}]\nseeds: []\n")
    with pytest.raises(SweepError, match="seeds"):
        load_plan(path)
    path.write_text("rows: [{name: a, spec: missing.yaml}]\n")
    with pytest.raises(SweepError, match="missing.yaml"):
        load_plan(path)
