"""DDP on CPU (gloo): two processes stay bit-identical, from ActNorm's init to the last step,
and stop together on a signal only one of them received."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowgraph.checkpoint import load_checkpoint
from flowgraph.train import TrainConfig, Trainer, TrainingInterrupted

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, images

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    spec = Path(tmp) / "tiny.yaml"
    cfg = TrainConfig(val_images=8, batch_size=8, epochs=2, warmup_steps=2, samples=4, tensorboard=False,
                      log_every=1, checkpoint_every=3, seed=1, device="cpu")
    trainer = Trainer(spec, cfg, Path(tmp) / "run", train_data=images(40),
                      test_data=images(10, seed=1), stream=io.StringIO())
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    first = trainer.source.get(0, 0)
    trainer.initialize()
    after_init = {k: v.clone() for k, v in trainer.flow.state_dict().items()}
    trainer.wrap()
    result = trainer.fit()
    # SIGTERM reaches rank 0 alone, inside step 3: both ranks stop after that step.
    again = Trainer(spec, cfg, Path(tmp) / "signalled", train_data=images(40),
                    stream=io.StringIO())
    calls = {"n": 0}

    def sigterm_in_step_3(module, args):
        calls["n"] += module.training
        if rank == 0 and calls["n"] == 1 + 3:  # after ActNorm's init forward
            os.kill(os.getpid(), signal.SIGTERM)

    again.flow.get_submodule("cp").register_forward_pre_hook(sigterm_in_step_3)
    again.initialize()
    again.wrap()
    try:
        again.fit()
        stopped = None
    except TrainingInterrupted as e:
        stopped = (e.step, e.exit_code, None if e.checkpoint is None else str(e.checkpoint))
    torch.save({"first": first, "init": after_init, "final": trainer.flow.state_dict(),
                "test_bpd": result.test_bpd, "step": result.step, "stopped": stopped},
               Path(tmp) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_keep_identical_parameters(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["first"].shape == (4, 1, 8, 8)  # each rank gets half of the global batch
    assert not torch.equal(r0["first"], r1["first"])  # ... a different half
    for key in r0["init"]:  # ActNorm's statistics were all-reduced: identical inits
        assert torch.equal(r0["init"][key], r1["init"][key]), key
    assert r0["init"]["an.initialized"].item() == 1
    for key in r0["final"]:
        assert torch.equal(r0["final"][key], r1["final"][key]), key
    assert not torch.equal(r0["final"]["an.shift"], r0["init"]["an.shift"])  # it trained
    assert r0["step"] == r1["step"] == 8 and r0["test_bpd"] == r1["test_bpd"]
    state = load_checkpoint(tmp_path / "run" / "final.pt")  # written by rank 0 alone
    assert state["world_size"] == 2 and state["step"] == 8
    assert all(torch.equal(state["model"][k], r0["final"][k]) for k in r0["final"])
    assert [p.name for p in (tmp_path / "run" / "samples").iterdir()] != []
    # The signal: rank 0 saved a checkpoint after step 3, and rank 1 stopped there too.
    path = tmp_path / "signalled" / "checkpoint.pt"
    assert r0["stopped"] == (3, 143, str(path)) and r1["stopped"] == (3, 143, None)
    assert load_checkpoint(path)["step"] == 3


def test_torchrun_runs_the_cli_with_two_processes(tmp_path):
    pytest.importorskip("PIL")
    from test_train import _folder_dataset

    (tmp_path / "tiny.yaml").write_text(TINY)
    data = _folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "flowgraph.cli.main", "train", str(tmp_path / "tiny.yaml"), "--out", str(out),
           "--dataset", "folder", "--data-dir", str(data), "--dataset-options", "{channels: 1}",
           "--batch-size", "8", "--epochs", "1", "--warmup-steps", "1", "--samples", "4",
           "--tensorboard", "false", "--device", "cpu", "--val-images", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 2 steps") == 1  # rank 0 alone reports
    state = load_checkpoint(out / "final.pt")
    assert state["world_size"] == 2 and state["step"] == 2
