"""Training killed again and again (SIGKILL, SIGTERM) ends exactly as an uninterrupted run.

Each run is a process (`CHILD`, forked by `Launcher`) that trains a tiny spec and resumes from ``checkpoint.pt``
when there is one. Hooks in the child pause it at chosen events and print ``PAUSED``; the
test then sends a real signal from outside. Events (counted per process):

- ``step``: after an optimizer step, before its row and checkpoint;
- ``row``: after a metrics row went to ``metrics.jsonl``, before ``metrics.csv`` (half a row);
- ``epoch_end``: after an epoch-end row, before the epoch's checkpoint;
- ``save_mid``: half of a checkpoint written to its temporary file;
- ``save_replace``: a checkpoint fully written, before the rename.

Compared with the uninterrupted run: the final model and optimizer state bit for bit, and both
metrics files row for row except the wall-clock columns ``images_per_s`` and ``wall_time``
(they measure this machine's speed, which no two runs share).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flowgraph.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("images_per_s", "wall_time")

CHILD = r'''
import io, json, os, signal, sys, time
from pathlib import Path
import torch
import yaml
import flowgraph.train.progress as progress
from flowgraph.train import TrainConfig, Trainer, TrainingInterrupted, train

SPEC = """
flowgraph: 1
name: crash
inputs:
  x: {shape: [1, 4, 4], bits: 8}
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: sq, op: squeeze, in: deq}
  - {id: an, op: actnorm, in: sq}
  - {id: conv, op: conv1x1, in: an}
  - {id: cp, op: affine_coupling, in: conv, params: {net: {kind: glow, hidden: 8}}}
outputs:
  z: {from: cp}
"""

out, pauses = Path(sys.argv[1]), [tuple(p) for p in json.loads(sys.argv[2])]
counts = {}


def event(name):
    counts[name] = counts.get(name, 0) + 1
    if (name, counts[name]) not in pauses:
        return
    before = signal.getsignal(signal.SIGTERM)
    print(f"PAUSED {name} {counts[name]}", flush=True)
    for _ in range(3000):  # until a signal: a fatal one ends us here, a handled one returns
        time.sleep(0.01)
        if signal.getsignal(signal.SIGTERM) != before:
            return
    sys.exit("never signalled")


real_step, real_sample = Trainer.train_step, Trainer.sample
Trainer.train_step = lambda self, *a: (real_step(self, *a), event("step"))[0]
Trainer.sample = lambda self, path: (event("epoch_end"), real_sample(self, path))[1]


def csv_open(path, mode="r", *args, **kwargs):
    if Path(path).name == "metrics.csv" and mode == "a":
        event("row")
    return open(path, mode, *args, **kwargs)


progress.open = csv_open
real_save, real_replace = torch.save, os.replace


def half_then_rest(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    event("save_mid")
    f.write(data[len(data) // 2:])


def replace(src, dst):
    if str(src).endswith(".tmp"):
        event("save_replace")
    return real_replace(src, dst)


torch.save, os.replace = half_then_rest, replace

g = torch.Generator().manual_seed(0)
data = (torch.rand(30, 1, 4, 4, generator=g) * 255).to(torch.uint8)  # 24 + 6 held out
test = (torch.rand(6, 1, 4, 4, generator=g) * 255).to(torch.uint8)
cfg = TrainConfig(val_images=6, batch_size=6, epochs=3, warmup_steps=5, lr_decay=0.5, samples=0,
                  tensorboard=False, log_every=3, checkpoint_every=2, seed=1, threads=1)
resume = out / "checkpoint.pt" if (out / "checkpoint.pt").exists() else None
try:
    train(yaml.safe_load(SPEC), cfg, out, resume=resume, train_data=data, test_data=test, stream=io.StringIO())
except TrainingInterrupted as e:  # what `flowgraph train` does with it
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
'''


# Forks each child from a process that has imported torch (and torch._dynamo, which the
# optimizer imports) but run no torch op: starting a fresh interpreter per run costs seconds.
ZYGOTE = r'''
import json, os, sys, threading, traceback
import torch, torch._dynamo, yaml
import flowgraph.train
assert threading.active_count() == 1  # safe to fork
source = compile(open(sys.argv[1]).read(), sys.argv[1], "exec")
for line in sys.stdin:
    out, pauses, err = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 2)
        sys.argv, code = ["child", out, pauses], 0
        try:
            exec(source, {"__name__": "__main__"})
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print("PID", pid, flush=True)
    print("EXIT", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
'''


class Launcher:
    """Runs `CHILD` in forked processes and signals them at their pauses."""

    def __init__(self, script: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(script)], env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, out: Path, pauses: list[tuple[str, int]], signals: list[int]
                 ) -> tuple[int, list[str]]:
        """Train into `out`; at the k-th pause send ``signals[k]``. Returns (exit status as
        `subprocess` reports it, the pauses seen)."""
        err = out.parent / f"{out.name}.stderr"
        self.zygote.stdin.write(json.dumps([str(out), json.dumps(pauses), str(err)]) + "\n")
        self.zygote.stdin.flush()
        watchdog = threading.Timer(120, self.zygote.kill)  # a hung child fails, not hangs
        watchdog.start()
        try:
            pid, seen = None, []
            for line in self.zygote.stdout:
                word, _, rest = line.strip().partition(" ")
                if word == "PID":
                    pid = int(rest)
                elif word == "PAUSED":
                    seen.append(rest)
                    os.kill(pid, signals[len(seen) - 1])
                elif word == "EXIT":
                    return int(rest), seen
            raise AssertionError(f"the fork server died (timeout?); child pid {pid}")
        finally:
            watchdog.cancel()

    def close(self) -> None:
        self.zygote.stdin.close()
        self.zygote.wait(timeout=60)


def metrics(out: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    drop = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in (*rows, *table)]
    return drop[: len(rows)], drop[len(rows):]


def assert_same_end(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "final.pt"), load_checkpoint(b / "final.pt")
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for p, state in sa["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["optimizer"]["state"][p][k]), (p, k)
    assert (sa["step"], sa["epoch"]) == (sb["step"], sb["epoch"]) == (12, 3)
    assert metrics(a) == metrics(b)
    assert not list(b.glob(".*.tmp"))  # killed writes' temporaries were cleaned up


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> Iterator[tuple[Launcher, Path]]:
    """The launcher, and the folder of an uninterrupted run."""
    root = tmp_path_factory.mktemp("crash")
    script = root / "child.py"
    script.write_text(CHILD)
    launch = Launcher(script)
    try:
        assert launch(root / "ref", [], []) == (0, []), (root / "ref.stderr").read_text()
        yield launch, root / "ref"
    finally:
        launch.close()


def test_repeated_sigkills_at_seeded_moments_change_nothing(child, tmp_path):
    launch, ref = child
    t0 = time.perf_counter()
    rng = random.Random(14)
    kinds = ["save_mid", "save_replace", "epoch_end", "row", "step", "save_mid", "save_replace",
             "row"]
    rng.shuffle(kinds)
    out, kills = tmp_path / "crashed", []
    for kind in kinds:
        pause = (kind, rng.randint(1, 2))
        code, seen = launch(out, [pause], [signal.SIGKILL])
        assert seen == [f"{pause[0]} {pause[1]}"], f"{pause} never came (exit {code})"
        assert code == -signal.SIGKILL
        step = load_checkpoint(out / "checkpoint.pt")["step"] if (
            out / "checkpoint.pt").exists() else None  # never unreadable
        kills.append((*pause, step))
    assert launch(out, [], []) == (0, [])
    assert_same_end(ref, out)
    in_write = sum(kind.startswith("save") for kind in kinds)
    print(f"\n{len(kills)} SIGKILLs, {in_write} inside checkpoint writes "
          f"(event, n, checkpoint step after): {kills}; {time.perf_counter() - t0:.1f} s")


def test_sigterm_stops_with_a_checkpoint_and_a_second_sigterm_kills_at_once(child, tmp_path):
    launch, ref = child
    out = tmp_path / "run"
    # SIGTERM after step 5 (the loop checkpoints at step 4 by itself): a checkpoint at step 5.
    code, _ = launch(out, [("step", 5)], [signal.SIGTERM])
    assert code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 5" in (tmp_path / "run.stderr").read_text()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5
    # Resumed, SIGTERM after its step 2 (step 7); a second one halfway through writing the
    # checkpoint it triggers (its second save: the first is step 6's) kills the process.
    code, seen = launch(out, [("step", 2), ("save_mid", 2)], [signal.SIGTERM] * 2)
    assert code == -signal.SIGTERM and seen == ["step 2", "save_mid 2"]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == 1  # the killed write's leftover
    assert launch(out, [], []) == (0, [])
    assert_same_end(ref, out)
