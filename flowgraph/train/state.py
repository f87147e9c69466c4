r"""What a training checkpoint holds, and the random-number-generator states it restores.

A training checkpoint (written with `flowgraph.checkpoint.save_checkpoint`, so atomically) is a
dict of plain values and tensors, loadable with ``weights_only=True``:

- ``model``: the flow's state dict (ActNorm's ``initialized`` flags included);
- ``optimizer``: the optimizer's state dict;
- ``schedule``: ``{"mode", "lr", "epoch", "step"}`` (the lr is a function of the position,
  see `flowgraph.train.schedule`, so this is informative);
- ``step`` (optimizer steps attempted), ``epoch``, ``batch`` (batches of `epoch` consumed),
  ``skipped`` (non-finite steps), ``nonfinite_streak``, ``wall_time``, ``epoch_bpd``
  (running sum and count of this epoch's bits/dim), ``world_size``;
- ``interval``: running sums and counts (bits/dim, gradient norm) of the logging interval in
  progress; ``metrics``: ``{"step", "jsonl", "csv"}``, the metrics files' byte sizes when the
  checkpoint was written (`flowgraph.train.progress.MetricsLog.position`; None on other
  ranks than 0);
- ``rng``: CPU and CUDA torch generator states (the data order and noise do not depend on them:
  they come from seeded generators, but other global randomness resumes too);
- ``config``: the `TrainConfig` as a dict; ``spec_text`` and ``spec_hash`` of the flow.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
