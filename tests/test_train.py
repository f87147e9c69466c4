"""`flowgraph train`: schedule, exact resume, atomic checkpoints, non-finite steps, outputs, CLI."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flowgraph.checkpoint import (
    MAX_SPEC_TEXT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from flowgraph.cli.main import main
from flowgraph.errors import FlowgraphError
from flowgraph.images import write_png
from flowgraph.train import (
    PRESETS,
    ConfigError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    find_nonfinite_node,
    load_train_config,
    lr_at,
    train,
)
from flowgraph.train.batches import BatchSource
from flowgraph.train.inputs import compile_for_training
from flowgraph.train.progress import COLUMNS

ROOT = Path(__file__).resolve().parents[1]

TINY = """
flowgraph: 1
name: tiny-train
args: {hidden: 8}
inputs:
  x: {shape: [1, 8, 8], bits: 8}
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: sq, op: squeeze, in: deq}
  - {id: an, op: actnorm, in: sq}
  - {id: conv, op: conv1x1, in: an}
  - {id: cp, op: affine_coupling, in: conv, params: {net: {kind: glow, hidden: "${hidden}"}}}
  - {id: sp, op: split, in: cp}
  - {id: aug, op: cross_unit_coupling, in: "sp:first", condition: [sq], params: {growth: 2}}
  - {id: an2, op: actnorm, in: aug}
outputs:
  z1: {from: "sp:second"}
  z: {from: an2, prior: {dist: channel_normal}}
"""


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random blobs, uint8 [n, 1, 8, 8] (learnable, unlike uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 2, 2, generator=g)
    up = torch.nn.functional.interpolate(base, size=(8, 8), mode="bilinear")
    noisy = up * 200 + 20 * torch.rand(n, 1, 8, 8, generator=g)
    return noisy.clamp(0, 255).to(torch.uint8)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def config(**kw: object) -> TrainConfig:
    base = {"batch_size": 8, "epochs": 2, "warmup_steps": 3, "samples": 0, "tensorboard": False,
            "log_every": 1, "checkpoint_every": 0, "seed": 3, "val_images": 0}
    return TrainConfig(**{**base, **kw})


def run(spec: Path, out: Path, cfg: TrainConfig, **kw: object):
    kw.setdefault("train_data", images(32))
    kw.setdefault("val_data", images(8, seed=2))
    kw.setdefault("test_data", images(12, seed=1))
    return train(spec, cfg, out, stream=io.StringIO(), **kw)


# ------------------------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_bad_values_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr_scheduel: paper\n")
    with pytest.raises(ConfigError, match="lr_scheduel"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="batch_size"):
        load_train_config({"batch_size": 0})
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_train_config(None, {"lr_schedule": "cosine"})


def test_presets_follow_the_paper_and_explicit_values_win():
    assert PRESETS["imagenet64"].batch_size == 32
    cifar = TrainConfig(dataset="cifar10").resolved()
    assert (cifar.batch_size, cifar.epochs, cifar.finetune_epochs, cifar.lr_decay) == (
        64, 580, 70, 0.9975)
    celeba = TrainConfig(dataset="celeba", epochs=3).resolved()
    assert (celeba.batch_size, celeba.epochs, celeba.finetune_epochs) == (32, 3, 5)
    assert TrainConfig().resolved().lr_decay == 0.95


@pytest.mark.parametrize("path", sorted((ROOT / "specs" / "train").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_train_configs_are_valid(path):
    cfg = load_train_config(path).resolved()
    assert cfg.dataset is not None and cfg.epochs >= 1
    assert "flowgraph train" in path.read_text()  # the header shows how to run it


# ----------------------------------------------------------------------------- schedule


def test_paper_schedule_warms_up_then_decays_per_epoch():
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, lr_decay=0.5, epochs=3, finetune_epochs=1,
                      finetune_lr=2e-5)
    assert lr_at(cfg, 0, 0, 0) == pytest.approx(2.5e-4)
    assert lr_at(cfg, 3, 0, 3) == pytest.approx(1e-3)
    assert lr_at(cfg, 5, 1, 0) == pytest.approx(5e-4)
    assert lr_at(cfg, 7, 1, 2) == pytest.approx(5e-4)
    assert lr_at(cfg, 11, 2, 1) == pytest.approx(2.5e-4)
    assert lr_at(cfg, 15, 3, 0) == lr_at(cfg, 17, 3, 2) == 2e-5  # fine-tune: constant


def test_official_schedule_matches_the_official_pair_of_torch_schedulers():
    """LinearWarmup (per iteration, from the base lr) + ExponentialLR (per epoch), simulated:
    after the warm-up only the first step of each epoch is decayed."""
    warmup, per_epoch, gamma = 6, 4, 0.5
    cfg = TrainConfig(lr=1e-3, warmup_steps=warmup, lr_decay=gamma, epochs=5,
                      lr_schedule="official")
    opt = torch.optim.Adamax([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: min(1.0, it / warmup))
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    step = 0
    for epoch in range(5):
        for i in range(per_epoch):
            if step >= warmup:  # the official warm-up starts at 0 (ours at 1/W)
                assert lr_at(cfg, step, epoch, i) == pytest.approx(opt.param_groups[0]["lr"])
            opt.step()
            warm.step()
            step += 1
        decay.step()
    assert lr_at(cfg, 12, 3, 0) == pytest.approx(5e-4)
    assert lr_at(cfg, 13, 3, 1) == pytest.approx(1e-3)
    paper = cfg.model_copy(update={"lr_schedule": "paper"})
    assert lr_at(paper, 13, 3, 1) == pytest.approx(1e-3 * gamma**3)


# ------------------------------------------------------------------------- data order


def test_ranks_take_disjoint_shards_of_the_same_seeded_permutation():
    data = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    shards = [BatchSource(data, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    whole = BatchSource(data, 8, seed=5)
    for b in range(len(whole)):
        parts = [s.indices(1, b) for s in shards]
        assert len(parts[0]) == len(parts[1]) == 4
        assert torch.equal(torch.cat(parts), whole.indices(1, b))
    assert not torch.equal(whole.indices(0, 0), whole.indices(1, 0))  # reshuffled per epoch


# ---------------------------------------------------------------------------- resume


def _state(path: Path) -> dict:
    return load_checkpoint(path)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for p in sa:
        for k in sa[p]:
            assert torch.equal(sa[p][k], sb[p][k]), (p, k)
    for k in ("step", "epoch", "batch", "skipped"):
        assert a[k] == b[k], k


def test_interrupted_and_resumed_run_ends_identical_to_an_uninterrupted_one(spec_file,
                                                                            tmp_path):
    cfg = config(epochs=2, checkpoint_every=4, augment="horizontal_flip", samples=4)
    data = images(48)  # 6 steps per epoch
    straight = run(spec_file, tmp_path / "a", cfg, train_data=data)
    assert straight.step == 12

    class Crash(Exception):
        pass

    flow = compile_for_training(str(spec_file), None, cfg.seed)
    calls = {"n": 0}

    def crash_in_step_5(module, args):
        calls["n"] += 1
        if calls["n"] == 1 + 5:  # the ActNorm init runs one forward first
            raise Crash

    handle = flow.get_submodule("cp").register_forward_pre_hook(crash_in_step_5)
    with pytest.raises(Crash):
        run(spec_file, tmp_path / "b", cfg, flow=flow, train_data=data)
    handle.remove()
    mid = _state(tmp_path / "b" / "checkpoint.pt")
    assert (mid["step"], mid["epoch"], mid["batch"]) == (4, 0, 4)  # mid-epoch
    resumed = run(spec_file, tmp_path / "b", cfg, train_data=data,
                  resume=tmp_path / "b" / "checkpoint.pt")
    assert resumed.step == 12 and resumed.test_bpd == straight.test_bpd
    _assert_same_training_state(_state(tmp_path / "a" / "final.pt"),
                                _state(tmp_path / "b" / "final.pt"))

    rows = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text()
             .splitlines()] for d in ("a", "b")]
    assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]]  # no duplicates
    assert [r["bpd"] for r in rows[1]] == [r["bpd"] for r in rows[0]]


WALL_CLOCK = ("images_per_s", "wall_time")  # differ between any two runs


def _log(out: Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl and metrics.csv rows without the wall-clock columns."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    strip = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in (*rows, *table)]
    return strip[: len(rows)], strip[len(rows):]


def test_kills_between_an_epoch_row_and_its_checkpoint_leave_the_log_as_if_uninterrupted(
        spec_file, tmp_path, monkeypatch):
    """The crash series of issue 14: killed after the epoch-end row, before the save, three
    times over. No duplicate rows, the scheduled lr on every row, and the interval row cut by
    each resume (step 3, log_every 3, checkpoint at 2) still averages all three steps."""
    cfg = config(epochs=2, checkpoint_every=2, log_every=3, warmup_steps=5, lr_decay=0.5)
    straight = run(spec_file, tmp_path / "a", cfg)  # 4 steps per epoch

    class Kill(BaseException):
        pass

    def killed(self, path):
        raise Kill  # `sample` runs between the epoch-end row and the checkpoint

    monkeypatch.setattr(Trainer, "sample", killed)
    out = tmp_path / "b"
    with pytest.raises(Kill):
        run(spec_file, out, cfg)
    for _ in range(2):
        with pytest.raises(Kill):
            run(spec_file, out, cfg, resume=out / "checkpoint.pt")
        assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    monkeypatch.undo()
    resumed = run(spec_file, out, cfg, resume=out / "checkpoint.pt")
    assert resumed.test_bpd == straight.test_bpd
    _assert_same_training_state(_state(tmp_path / "a" / "final.pt"), _state(out / "final.pt"))
    jsonl, table = _log(out)
    assert (jsonl, table) == _log(tmp_path / "a")
    # epoch ends (4, 8) evaluate the validation images; the final row alone the test split
    assert [(r["step"], r["val_bpd"] is not None, r["test_bpd"] is not None)
            for r in jsonl] == [(3, False, False), (4, True, False), (6, False, False),
                                (8, True, False), (8, True, True)]
    assert [r["lr"] for r in jsonl] == [lr_at(cfg, s - 1, (s - 1) // 4, (s - 1) % 4)
                                        for s in (3, 4, 6, 8, 8)]
    assert all(r["lr"] != cfg.lr for r in jsonl)


def test_a_checkpoint_without_log_sizes_resumes_by_step_and_a_short_log_is_reported(
        spec_file, tmp_path):
    cfg = config(epochs=2, log_every=1)
    out = tmp_path / "r"
    run(spec_file, out, config(epochs=2, log_every=1, max_steps=3))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["metrics"]["step"] == 3
    older = {k: v for k, v in state.items() if k not in ("metrics", "interval", "format")}
    save_checkpoint(out / "old.pt", older)  # as written before the log sizes were recorded
    with open(out / "metrics.jsonl", "a") as f:  # a killed run's row after the checkpoint
        f.write(json.dumps({"step": 4}) + "\n")
    with open(out / "metrics.csv", "a") as f:
        f.write("4,0\n")
    run(spec_file, out, cfg, resume=out / "old.pt")
    jsonl, table = _log(out)
    # 3: the first run's final row (kept: an old checkpoint can only cut after its step);
    # 4, 8: epoch ends; the last 8: the final row
    assert [r["step"] for r in jsonl] == [1, 2, 3, 3, 4, 4, 5, 6, 7, 8, 8, 8]
    assert [int(r["step"]) for r in table] == [r["step"] for r in jsonl]
    assert jsonl[4]["val_bpd"] is None and jsonl[5]["val_bpd"] is not None
    (out / "metrics.csv").write_text("")  # lost: rows up to the step are kept, with a note
    stream = io.StringIO()
    train(spec_file, config(epochs=3), out, resume=out / "checkpoint.pt",
          train_data=images(32), stream=stream)
    assert "shorter than when the checkpoint was written" in stream.getvalue()
    with open(out / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [9, 10, 11, 12, 12, 12]  # a header


def test_stale_temporary_checkpoint_files_are_removed_at_start_up(spec_file, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    stale = [out / ".checkpoint.pt.k9x2_a1b.tmp", out / ".final.pt.00000000.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 3 * 2**20)
    other = out / ".notes.txt.tmp"
    other.write_text("not ours")
    stream = io.StringIO()
    train(spec_file, config(epochs=1), out, train_data=images(32), stream=stream)
    assert not any(p.exists() for p in stale) and other.exists()
    assert "removed 2 temporary file(s) of killed checkpoint writes (6.0 MiB)" in (
        stream.getvalue())


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_after_the_current_step_and_the_run_resumes_exactly(
        spec_file, tmp_path, signum, code):
    cfg = config(epochs=2, log_every=3, checkpoint_every=0)
    run(spec_file, tmp_path / "a", cfg)
    flow = compile_for_training(str(spec_file), None, cfg.seed)
    calls = {"n": 0}

    def signal_in_step_6(module, args):
        calls["n"] += module.training  # not the evaluation's forwards
        if calls["n"] == 1 + 6:  # the ActNorm init runs one forward first
            os.kill(os.getpid(), signum)

    flow.get_submodule("cp").register_forward_pre_hook(signal_in_step_6)
    before = signal.getsignal(signum)
    out = tmp_path / "b"
    name = signal.Signals(signum).name
    with pytest.raises(TrainingInterrupted, match=f"{name} after step 6") as info:
        run(spec_file, out, cfg, flow=flow)
    assert info.value.exit_code == code and info.value.checkpoint == out / "checkpoint.pt"
    assert signal.getsignal(signum) is before  # handlers restored
    state = _state(out / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["batch"]) == (6, 1, 2)
    assert not (out / "final.pt").exists()
    run(spec_file, out, cfg, resume=out / "checkpoint.pt")
    _assert_same_training_state(_state(tmp_path / "a" / "final.pt"), _state(out / "final.pt"))
    assert _log(out) == _log(tmp_path / "a")


def test_resume_refuses_a_checkpoint_of_another_spec(spec_file, tmp_path):
    run(spec_file, tmp_path / "a", config(epochs=1))
    with pytest.raises(CheckpointError, match="different spec"):
        run(spec_file, tmp_path / "b", config(epochs=2), overrides={"hidden": 16},
            resume=tmp_path / "a" / "checkpoint.pt")


def test_actnorm_is_not_reinitialised_after_a_resume(spec_file, tmp_path, monkeypatch):
    run(spec_file, tmp_path / "a", config(epochs=1))
    saved = _state(tmp_path / "a" / "checkpoint.pt")["model"]
    trainer = Trainer(spec_file, config(epochs=2), tmp_path / "a",
                      resume=tmp_path / "a" / "checkpoint.pt", train_data=images(32),
                      stream=io.StringIO())
    from flowgraph.ops.actnorm import ActNorm

    def refuse(self, *args, **kwargs):
        raise AssertionError("ActNorm re-initialised after a resume")

    monkeypatch.setattr(ActNorm, "data_init", refuse)
    trainer.initialize()
    assert torch.equal(trainer.flow.get_submodule("an").shift.detach(), saved["an.shift"])
    trainer.wrap()
    assert trainer.fit().step == 8


def test_a_disk_full_while_saving_keeps_the_previous_checkpoint_and_names_path_and_error(
        spec_file, tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    class FillsUp:
        """The checkpoint file, refusing writes once 4 KB are in: the disk is full."""

        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def flaky_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        return real_save(obj, FillsUp(f) if calls["n"] == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as info:
        run(spec_file, out, config(epochs=3, checkpoint_every=2))
    message = str(info.value)
    assert str(out / "checkpoint.pt") in message and "No space left on device" in message
    assert "ENOSPC" in message and "previous checkpoint.pt is unchanged" in message
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2  # the first checkpoint, intact
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".pt", ".tmp")) == [
        "checkpoint.pt"]  # no half-written temporary file is left behind
    monkeypatch.setattr(torch, "save", real_save)
    assert run(spec_file, out, config(epochs=3), resume=out / "checkpoint.pt").step == 12


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]
    if os.geteuid() != 0 or subprocess.run(cmd, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_really_full_or_read_only_disk_keeps_the_previous_checkpoint(tiny_tmpfs):
    path = tiny_tmpfs / "checkpoint.pt"
    small = {"model": {"w": torch.zeros(1000)}, "spec_text": "", "spec_hash": ""}
    save_checkpoint(path, small)
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb") as f:  # leave ~64 KB free
        f.write(b"\0" * (2**20 - 64 * 2**10 - path.stat().st_size))
    with pytest.raises(CheckpointError, match=r"No space left on device \[ENOSPC\]; the prev"):
        save_checkpoint(path, {**small, "model": {"w": torch.zeros(100_000)}})
    assert load_checkpoint(path)["model"]["w"].shape == (1000,)
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["checkpoint.pt", "filler"]
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, small)
    assert f"cannot write checkpoint {str(path)!r}: Read-only file system [EROFS]" in str(
        info.value)


def test_load_checkpoint_refuses_an_oversized_embedded_spec(tmp_path):
    path = save_checkpoint(tmp_path / "big.pt", {
        "model": {}, "spec_text": "#" * (MAX_SPEC_TEXT + 1), "spec_hash": "x"})
    with pytest.raises(CheckpointError, match="embedded spec is 1,000,001 characters"):
        load_checkpoint(path)


class Payload:
    """Not a tensor or plain value: `weights_only=True` loading refuses it."""


def test_a_checkpoint_with_pickled_objects_is_refused_without_advising_weights_only_false(
        tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "spec_text": "", "spec_hash": "", "x": Payload()},
               path)
    with pytest.raises(CheckpointError, match="will not load it") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "weights_only" not in message and "likely succeed" not in message


# ---------------------------------------------------------------------- non-finite steps


def test_a_non_finite_step_is_skipped_counted_and_does_not_touch_the_model(spec_file,
                                                                         tmp_path):
    cfg = config(epochs=1)
    flow = compile_for_training(str(spec_file), None, cfg.seed)
    calls = {"n": 0}

    def poison_third_step(module, args, out):
        calls["n"] += 1
        if calls["n"] == 1 + 3:
            return out[0] * math.nan, out[1]
        return None

    flow.get_submodule("cp").register_forward_hook(poison_third_step)
    result = run(spec_file, tmp_path / "r", cfg, flow=flow)
    assert result.step == 4 and result.skipped == 1
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    state = _state(tmp_path / "r" / "final.pt")
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {3}
    with open(tmp_path / "r" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["skipped"] for r in rows[:4]] == ["0", "0", "1", "1"]
    assert rows[2]["bpd"] == ""  # the skipped step has no loss to report


@pytest.mark.parametrize("node", ["conv", "cp", "an2", "z"])
def test_repeated_non_finite_steps_stop_the_run_naming_the_first_bad_node(spec_file,
                                                                          tmp_path, node):
    trainer = Trainer(spec_file, config(max_nonfinite=3), tmp_path / "r",
                      train_data=images(32), stream=io.StringIO())
    trainer.initialize()
    with torch.no_grad():
        for p in trainer.flow.get_submodule(node).parameters():
            p.fill_(math.nan)
    before = {k: v.clone() for k, v in trainer.flow.state_dict().items()}
    trainer.wrap()
    with pytest.raises(FlowgraphError, match=f"3 consecutive non-finite.*node '{node}'"):
        trainer.fit()
    assert trainer.skipped == 3
    after = trainer.flow.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(node))


def test_find_nonfinite_node_reports_a_gradient_that_goes_bad(spec_file):
    flow = compile_for_training(str(spec_file), None, 0)
    x = images(8)
    flow.initialize(x)
    flow.get_submodule("cp").register_full_backward_hook(
        lambda m, gin, gout: tuple(g * math.nan if g is not None else g for g in gin))
    where = find_nonfinite_node(flow, x, flow.draw_noise(8))
    assert "'conv'" in where and "gradient" in where  # cp's input gradient feeds conv


# ------------------------------------------------------------------- outputs and options


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_metrics_files_and_a_sample_grid_per_epoch(spec_file, tmp_path):
    out = tmp_path / "r"
    result = run(spec_file, out, config(epochs=2, log_every=2, samples=16))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(tuple(r) == COLUMNS for r in rows)
    with open(out / "metrics.csv") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == 1 + len(rows)
    train_rows = [r for r in rows if r["val_bpd"] is None]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
    assert all(r["bpd"] > 0 and r["images_per_s"] > 0 and r["grad_norm"] > 0 for r in train_rows)
    epoch_rows = [r for r in rows if r["val_bpd"] is not None and r["test_bpd"] is None]
    assert [(r["step"], r["epoch"]) for r in epoch_rows] == [(4, 0), (8, 1)]
    final = rows[-1]  # the one row with the test split, written when the run ends
    assert (final["step"], final["bpd"]) == (8, None) and [r["test_bpd"] for r in rows[:-1]] == [
        None] * (len(rows) - 1)
    assert final["test_bpd"] == pytest.approx(result.test_bpd)
    assert final["val_bpd"] == epoch_rows[-1]["val_bpd"] == pytest.approx(result.val_bpd)
    assert _png_size(out / "curves.png") == (800, 450)
    for e in (0, 1):  # 16 images of 8×8 in a 4×4 grid, 2-pixel padding: 42 px, ×13 >= 512
        assert _png_size(out / "samples" / f"epoch_{e:03d}.png") == (546, 546)
    assert not (out / "samples" / "final.png").exists()  # it ended with an epoch
    state = load_checkpoint(out / "final.pt")
    for key in ("model", "optimizer", "schedule", "step", "epoch", "rng", "config",
                "spec_text", "spec_hash"):
        assert key in state
    assert state["config"]["batch_size"] == 8 and state["schedule"]["mode"] == "paper"


def test_metrics_go_to_tensorboard_when_it_imports(spec_file, tmp_path, monkeypatch):
    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, logdir: str, purge_step: int | None = None):
            self.logdir, self.purge_step = logdir, purge_step

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run(spec_file, tmp_path / "r", config(epochs=1, tensorboard=True, log_every=2))
    tags = {tag for tag, _, _ in scalars}
    assert {"train/bpd", "train/lr", "train/images_per_s", "test/bpd"} <= tags
    assert [step for tag, _, step in scalars if tag == "test/bpd"] == [4]


def test_max_steps_stops_inside_an_epoch_with_an_evaluation_and_a_final_grid(spec_file,
                                                                           tmp_path):
    out = tmp_path / "r"
    result = run(spec_file, out, config(epochs=2, max_steps=3, samples=4))
    assert (result.step, result.epoch) == (3, 0) and result.test_bpd is not None
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["final.png"]
    assert load_checkpoint(out / "final.pt")["batch"] == 3


def test_training_lowers_the_test_bits_per_dim(spec_file, tmp_path):
    cfg = config(epochs=6, lr=5e-3)
    trainer = Trainer(spec_file, cfg, tmp_path / "r", train_data=images(64),
                      test_data=images(32, seed=1), stream=io.StringIO())
    trainer.initialize()
    before = trainer.evaluate("test")
    trainer.wrap()
    after = trainer.fit().test_bpd
    assert after < before - 0.2


@pytest.mark.parametrize("option", [{"bf16": True}, {"channels_last": True},
                                    {"grad_clip": 1e-3}, {"optimizer": "adam"}])
def test_speed_and_stability_options_train(spec_file, tmp_path, option):
    result = run(spec_file, tmp_path / "r", config(epochs=1, **option))
    assert result.skipped == 0 and math.isfinite(result.train_bpd)
    if "grad_clip" in option:
        rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text()
                .splitlines()]
        assert all(r["grad_norm"] > 1e-3 for r in rows if r["grad_norm"])  # pre-clip norm


# ----------------------------------------------------------------------------------- CLI


def _folder_dataset(root: Path) -> Path:
    for split, n in (("train", 24), ("test", 8)):
        for i, img in enumerate(images(n, seed=len(split))):
            write_png(img[0].numpy().astype(np.uint8), root / split / f"{i:03d}.png")
    return root


def test_cli_trains_resumes_and_refuses_to_overwrite(spec_file, tmp_path, capsys):
    pytest.importorskip("PIL")
    data = _folder_dataset(tmp_path / "data")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "dataset": "folder", "data_dir": str(data), "dataset_options": {"channels": 1},
        "batch_size": 8, "epochs": 1, "warmup_steps": 2, "samples": 4, "tensorboard": False,
        "val_images": 8}))
    out = tmp_path / "run"
    argv = ["train", str(spec_file), "--config", str(cfg), "--out", str(out)]
    assert main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "final.pt").is_file() and (out / "samples" / "epoch_000.png").is_file()
    assert main(argv) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(spec_file), "--out", str(out), "--resume", "--epochs", "2",
                 "--lr-schedule", "official"]) == 0
    state = load_checkpoint(out / "final.pt")
    assert state["step"] == 4 and state["config"]["lr_schedule"] == "official"
    assert state["config"]["data_dir"] == str(data)  # the rest came from the checkpoint


def test_cli_reports_a_bad_config_key(spec_file, tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("dataset: fashion-mnist\nlearning_rate: 0.001\n")
    assert main(["train", str(spec_file), "--config", str(cfg), "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "unknown key" in err
    assert main(["train", str(spec_file), "--out", str(tmp_path / "r"),
                 "--batch-size", "zero"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_the_cli_exits_with_the_signal_status_after_a_stop(monkeypatch, capsys) -> None:
    import flowgraph.cli.main as cli

    def stopped(args):
        raise TrainingInterrupted(signal.SIGTERM, 6, Path("runs/x/checkpoint.pt"))

    monkeypatch.setattr(cli, "_run", stopped)
    assert cli.main(["ops"]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 6" in err and "--resume" in err
