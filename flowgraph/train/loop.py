r"""`Trainer`: the training loop of `flowgraph train` (single process or DDP).

One step: copy this rank's uint8 batch to the device (asynchronously from pinned memory, or
already there: `flowgraph.train.batches`), augment it and draw the model noise there
(generators seeded by (seed, step); each rank draws the global batch's randomness and takes its
slice, so the data of a step does not depend on the number of processes), set the lr
(`lr_at`), loss = mean single-sample bits/dim, backward, clip (optionally), Adamax step. A step
whose loss or gradient is non-finite is skipped (parameters, optimizer state and BatchNorm
statistics exactly as before) and counted; `max_nonfinite` in a row stop the run with the first
bad node named (`flowgraph.train.nonfinite`). ActNorm is initialised from the first batch before
DDP wraps the model, and never after a resume.

No host synchronisation inside a step: the skip is decided on the device
(`flowgraph.train.masked`), and the step statistics (bits/dim and gradient-norm sums, counts,
skipped steps, the non-finite streak, DDP's stop flags) are accumulated in a device tensor that
is read once (`_pull`) at the sync points: every `log_every` steps, checkpoints, epoch ends and
the end of the run. So the `max_nonfinite` stop, and under DDP the SIGTERM/SIGINT and `max_time`
stops, take effect at the next sync point (steps after a reached `max_nonfinite` are skipped
until then); a single process stops at once on a signal or `max_time`. The progress bar is
redrawn at sync points too.

Crash safety: checkpoints are written atomically and record the metrics files' sizes and the
running sums of the current logging interval, so a run resumed after SIGKILL continues the
log exactly as an uninterrupted run writes it (`flowgraph.train.progress`); temporary files of
killed checkpoint writes are removed at start-up. SIGTERM/SIGINT save a checkpoint at the next
step boundary (with DDP: after the step that all processes learn of it in) and raise
`TrainingInterrupted` (exit code 128 + signal number, see `flowgraph.train.interrupt`); a
second signal kills at once.

Example:
    >>> import io, tempfile
    >>> spec = {"flowgraph": 1, "name": "t", "inputs": {"x": {"shape": [1, 4, 4], "bits": 8}},
    ...         "nodes": [{"id": "deq", "op": "dequantize_uniform", "in": "x"},
    ...                   {"id": "an", "op": "actnorm", "in": "deq"}],
    ...         "outputs": {"z": {"from": "an"}}}
    >>> cfg = TrainConfig(epochs=1, batch_size=8, samples=0, warmup_steps=2, val_images=8)
    >>> data = torch.randint(0, 256, (24, 1, 4, 4), dtype=torch.uint8)
    >>> with tempfile.TemporaryDirectory() as out:
    ...     result = train(spec, cfg, out, train_data=data, stream=io.StringIO())
    >>> result.step, result.epoch
    (2, 1)
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import torch
from torch import Tensor, nn

from flowgraph.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from flowgraph.errors import FlowgraphError
from flowgraph.images import save_grid
from flowgraph.train.batches import BatchSource, derive_seed, generator
from flowgraph.train.config import TrainConfig
from flowgraph.train.distributed import (
    BitsPerDim,
    all_reduce_sum,
    convert_sync_batchnorm,
    resolve_device,
    set_tf32,
    setup_distributed,
    teardown_distributed,
)
from flowgraph.train.inputs import augment_for, compile_for_training, load_splits
from flowgraph.train.interrupt import StopSignals, TrainingInterrupted
from flowgraph.train.masked import BufferGuard, MaskedOptimizer, zero_unless
from flowgraph.train.nonfinite import find_nonfinite_node
from flowgraph.train.precise_bn import precise_batchnorm
from flowgraph.train.progress import MetricsLog, ProgressBar
from flowgraph.train.schedule import lr_at
from flowgraph.train.state import capture_rng, restore_rng

__all__ = ["TrainResult", "Trainer", "TrainingInterrupted", "train"]

# The device statistics (`Trainer._acc`, float64): interval bits/dim sum, count, grad-norm sum,
# count; epoch bits/dim sum, count; skipped steps; then:
_STREAK = 7  # non-finite steps in a row
_HIT = 8  # the step at which the streak reached max_nonfinite (0: not reached)
# 9, 10: max_time reached, signalled (DDP: summed over processes)


@dataclass(frozen=True)
class TrainResult:
    step: int
    epoch: int
    skipped: int
    train_bpd: float | None
    test_bpd: float | None
    checkpoint: Path | None
    val_bpd: float | None = None


class Trainer:
    """Set up (`__init__`), `initialize` ActNorm, `wrap` for DDP/compile, then `fit`."""

    def __init__(self, spec: Any, config: TrainConfig, out_dir: str | Path, *,
                 overrides: dict[str, Any] | None = None, resume: str | Path | None = None,
                 flow: nn.Module | None = None, train_data: Any = None, test_data: Any = None,
                 val_data: Any = None, stream: IO[str] | None = None):
        self.cfg = cfg = config.resolved()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = setup_distributed(self.device)
        set_tf32(self.device, cfg.tf32)
        self.out = Path(out_dir)
        self.flow = flow if flow is not None else compile_for_training(
            spec, overrides, cfg.seed)
        self.step = self.epoch = self.batch = self.skipped = self.streak = 0
        self.wall0, self.epoch_sum, self.train_bpd = 0.0, [0.0, 0], None
        self.interval: list[float] = [0.0, 0, 0.0, 0]  # bpd sum, count, grad-norm sum, count
        self.saved: tuple[int, int, int] | None = None  # position of the last checkpoint.pt
        self.signals = StopSignals()
        self.evaluated: dict[str, tuple[int, float | None]] = {}  # split: (step, bpd)
        self.bn_step = -1  # the step at which BatchNorm statistics were last re-estimated
        self._acc: Tensor | None = None  # the device statistics (`_push`, `_tally`, `_pull`)
        self._masked: MaskedOptimizer | None = None
        self._guard: BufferGuard | None = None
        self._last: tuple[Tensor, Tensor] | None = None  # the last step's input, for replays
        ckpt = self._load(Path(resume)) if resume is not None else None
        train_data, val_data, test_data = load_splits(cfg, self.flow, train_data, test_data,
                                                      val_data)
        r, w = self.dist.rank, self.dist.world_size
        budget = int(cfg.device_data_mb * 2**20)
        self.source = BatchSource(train_data, cfg.batch_size, seed=cfg.seed, rank=r,
                                  world_size=w, workers=cfg.workers, device=self.device,
                                  device_budget=budget)
        if len(self.source) == 0:
            raise FlowgraphError(f"the training set has {self.source.n} images, fewer than one "
                                 f"batch (batch_size {cfg.batch_size}).")
        eval_bs = cfg.eval_batch_size or cfg.batch_size
        self.val, self.test = (None if data is None else BatchSource(
            data, eval_bs, seed=cfg.seed, rank=r, world_size=w, workers=cfg.workers,
            shuffle=False, drop_last=False, device=self.device, device_budget=budget)
            for data in (val_data, test_data))
        # Precise BN reads the same fixed random training images every time; full batches
        # only, so that every rank runs the same number of forwards (SyncBatchNorm). A few
        # batches: copied from the host (no second device copy of the training set).
        self.bn_images = BatchSource(train_data, min(eval_bs, cfg.precise_bn or eval_bs),
                                     seed=derive_seed(cfg.seed, "precise_bn"), rank=r,
                                     world_size=w, workers=cfg.workers, device=self.device,
                                     device_budget=0)
        self.augment = augment_for(cfg)
        self.flow.to(self.device)
        if cfg.channels_last:
            self.flow.to(memory_format=torch.channels_last)
        if cfg.memory_saving:
            self.flow.set_conditioner_recompute(True)
        params = [p for p in self.flow.parameters() if p.requires_grad]
        opt_cls = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam,
                   "adamw": torch.optim.AdamW}[cfg.optimizer]
        self.optimizer = opt_cls(params, lr=cfg.lr, betas=cfg.betas,
                                 weight_decay=cfg.weight_decay)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.main = self.dist.is_main
        self.log = ProgressBar(self.total_steps, cfg.log_every, stream, enabled=self.main)
        self.metrics = None
        if self.main:
            self._remove_stale_temporaries()
            at = None if ckpt is None else ckpt.get("metrics") or {"step": self.step}
            self.metrics = MetricsLog(self.out, at, cfg.tensorboard)
            if self.metrics.note:
                self.log.message(self.metrics.note)
        self.loss: nn.Module = BitsPerDim(self.flow)

    # -- setup phases ---------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        n = (self.cfg.epochs + self.cfg.finetune_epochs) * len(self.source)
        return min(n, self.cfg.max_steps or n)

    def _remove_stale_temporaries(self) -> None:
        removed = remove_stale_temporaries(self.out)
        if removed:
            size = sum(n for _, n in removed)
            self.log.message(f"removed {len(removed)} temporary file(s) of killed checkpoint "
                             f"writes ({size / 2**20:,.1f} MiB) from {self.out}")

    def _load(self, path: Path) -> dict[str, Any]:
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt["spec_hash"] != self.flow.spec_hash:
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: it was trained with a different spec "
                f"(checkpoint spec_hash {ckpt['spec_hash']}, the spec being trained has "
                f"{self.flow.spec_hash}); train into a new --out folder or use the same spec "
                "and --set arguments.")
        if "optimizer" not in ckpt:
            raise CheckpointError(f"{str(path)!r} holds weights only, not a training state.")
        self.flow.load_state_dict(ckpt["model"])
        for k in ("step", "epoch", "batch", "skipped"):
            setattr(self, k, int(ckpt[k]))
        self.streak, self.wall0 = int(ckpt["nonfinite_streak"]), float(ckpt["wall_time"])
        self.epoch_sum = [float(ckpt["epoch_bpd"][0]), int(ckpt["epoch_bpd"][1])]
        if "interval" in ckpt:  # older checkpoints restart the interval
            a, b, c, d = ckpt["interval"]
            self.interval = [float(a), int(b), float(c), int(d)]
        restore_rng(ckpt["rng"])
        if int(ckpt.get("world_size", 1)) != self.dist.world_size:
            print(f"warning: {path} was written by {ckpt['world_size']} processes and is "
                  f"resumed by {self.dist.world_size}; the run continues but is not "
                  "bit-identical to an uninterrupted one", flush=True)
        return ckpt

    def initialize(self) -> None:
        """ActNorm's data-dependent init from this rank's share of the first batch (after
        the BatchNorm conversion, so that it sees the global batch's statistics too)."""
        self._sync_batchnorm()
        if self.flow.is_initialized():
            return
        x = self._inputs(self.source.get(0, 0), 0)
        noise = self._noise(len(x), "init", 0)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(derive_seed(self.cfg.seed, "init", self.dist.rank))
            reduce = all_reduce_sum if self.dist.enabled else None
            self.flow.initialize(x, None, all_reduce=reduce, noise=noise)

    def wrap(self) -> None:
        """Under DDP: BatchNorm over the global batch (`sync_batchnorm`) and the DDP wrapper
        (after `initialize`); then torch.compile when asked."""
        self._sync_batchnorm()
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss = nn.parallel.DistributedDataParallel(self.loss, device_ids=ids)
        if self.cfg.compile:
            self.loss = torch.compile(self.loss)
        self._prepare_skipping()

    def _sync_batchnorm(self) -> None:
        if self.dist.enabled and self.cfg.sync_batchnorm is not False:
            n = convert_sync_batchnorm(self.flow, self.device)  # 0 the second time
            if n:
                self.log.message(f"{n} BatchNorm layer(s) normalise over the global batch "
                                 "(sync_batchnorm)")

    def _prepare_skipping(self) -> None:
        self._masked = MaskedOptimizer(self.optimizer)
        self._guard = BufferGuard(list(self.flow.buffers()))

    # -- one step -------------------------------------------------------------------------
    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _inputs(self, x_u8: Tensor, step: int) -> Tensor:
        """This rank's batch of `step` on the device, augmented there. The augmentation is
        drawn for the global batch (rank 0's stream of old) and sliced, as the noise is."""
        n, rank = len(x_u8), self.dist.rank
        x = x_u8.to(self.device, non_blocking=True)
        g = generator(self.cfg.seed, "augment", step, 0, device=self.device)
        x = self.augment(x, generator=g, total=n * self.dist.world_size, offset=rank * n)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _noise(self, n: int, stream: str, step: int) -> Tensor:
        """This rank's `n` rows of the model noise drawn for the global batch."""
        g = generator(self.cfg.seed, stream, step, 0, device=self.device)
        noise = self.flow.draw_noise(n * self.dist.world_size, generator=g)
        return noise[self.dist.rank * n:(self.dist.rank + 1) * n]

    def _autocast(self) -> Any:
        """`bf16`: the conditioner networks only, through the flow's own switch (restored on
        exit); no global autocast, so the bijection, log-dets and the loss stay float32."""
        return self.flow.set_conditioner_dtype(torch.bfloat16 if self.cfg.bf16 else None)

    def train_step(self, x_u8: Tensor, lr: float, time_up: bool = False) -> dict[str, Tensor]:
        """One optimizer step, kept or skipped on the device. Returns the step's global
        bits/dim, gradient norm (before clipping) and skipped flag as device tensors; nothing
        here waits for the device (see the module docstring)."""
        cfg, world = self.cfg, self.dist.world_size
        if self._masked is None:
            self._prepare_skipping()
        if self._acc is None:
            self._push()
        x = self._inputs(x_u8, self.step)
        noise = self._noise(len(x), "noise", self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._guard.save()
        with self._autocast():
            loss = self.loss(x, noise).float().mean()
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads)
        bpd, flags = loss.detach(), None
        if self.dist.enabled:  # A stop seen by any process stops all at the next sync point.
            signalled = self.signals.signum is not None
            stats = all_reduce_sum(torch.stack([bpd, torch.full_like(bpd, float(time_up)),
                                                torch.full_like(bpd, float(signalled))]))
            bpd, flags = stats[0] / world, stats[1:]
        bad = ~torch.isfinite(bpd) | ~torch.isfinite(norm) | (
            self._acc[_STREAK] >= cfg.max_nonfinite)  # reached: skip until the sync point
        keep = ~bad
        if cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, norm)
        zero_unless(grads, keep)
        self._masked.step(keep)
        self._guard.restore_unless(keep)
        self.optimizer.zero_grad(set_to_none=True)
        self.step, self.batch = self.step + 1, self.batch + 1
        self._tally(bpd, norm, bad, flags)
        self._last = (x, noise)
        return {"bpd": bpd, "grad_norm": norm, "skipped": bad}

    # -- the device statistics ----------------------------------------------------------------
    def _tally(self, bpd: Tensor, norm: Tensor, bad: Tensor, flags: Tensor | None) -> None:
        acc, keep = self._acc, (~bad).double()
        b = torch.nan_to_num(bpd.double()) * keep
        acc[:_STREAK] += torch.stack([b, keep, torch.nan_to_num(norm.double()) * keep, keep,
                                      b, keep, bad.double()])
        acc[_STREAK] = (acc[_STREAK] + 1) * bad
        reached = (acc[_HIT] == 0) & (acc[_STREAK] >= self.cfg.max_nonfinite)
        acc[_HIT] = torch.where(reached, float(self.step), acc[_HIT])
        if flags is not None:
            acc[_HIT + 1:] += flags.double()

    def _push(self) -> None:
        """Host fields → device statistics (at the start, and after the host changed them)."""
        values = torch.tensor([*self.interval, *self.epoch_sum, self.skipped, self.streak,
                               0, 0, 0], dtype=torch.float64,
                              pin_memory=self.device.type == "cuda")  # an asynchronous copy
        if self._acc is None:
            self._acc = values.to(self.device, non_blocking=True)
        else:
            self._acc.copy_(values, non_blocking=True)

    def _pull(self) -> tuple[bool, bool]:
        """Device statistics → host fields: the one host sync (sync points only). Raises on
        `max_nonfinite` non-finite steps in a row; returns (max_time reached, signalled) as
        any process saw them under DDP."""
        if self._acc is None:
            return False, False
        v = self._acc.tolist()
        self.interval = [v[0], int(v[1]), v[2], int(v[3])]
        self.epoch_sum = [v[4], int(v[5])]
        self.skipped, self.streak = int(v[6]), int(v[_STREAK])
        if v[_HIT]:
            where = find_nonfinite_node(self.flow, *self._last)
            raise FlowgraphError(
                f"training stopped: {self.cfg.max_nonfinite} consecutive non-finite steps "
                f"(step {int(v[_HIT])}, {self.skipped} skipped in all); first non-finite: "
                f"{where}")
        return bool(v[_HIT + 1]), bool(v[_HIT + 2])

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        with self.signals:
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, per_epoch = self.cfg, len(self.source)
        epochs = cfg.epochs + cfg.finetune_epochs
        start, images, t_int = time.perf_counter(), 0, time.perf_counter()
        rate, stop, signalled = 0.0, False, False
        self.flow.train()
        self._push()
        while self.epoch < epochs and not stop:
            for b, x in self.source.epoch(self.epoch, self.batch):
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    stop = True
                    break
                if self.signals.signum is not None and not self.dist.enabled:
                    stop = signalled = True  # (with DDP the step's all-reduce spreads it)
                    break
                lr = lr_at(cfg, self.step, self.epoch, b)
                wall = self.wall0 + time.perf_counter() - start
                time_up = cfg.max_time is not None and wall >= cfg.max_time
                self.train_step(x, lr, time_up)
                images += cfg.batch_size
                row = self.step % cfg.log_every == 0
                # At an epoch's end `_end_epoch` saves anyway (after its row).
                save = bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                            and self.batch < per_epoch)
                time_up = time_up and not self.dist.enabled  # DDP: agreed at a sync point
                if not (row or save or time_up or self.batch >= per_epoch
                        or self.step == cfg.max_steps):
                    continue  # not a sync point: the statistics stay on the device
                any_time_up, any_signal = self._pull()
                now = time.perf_counter()
                rate = images / max(now - t_int, 1e-9)
                eta = (self.total_steps - self.step) * cfg.batch_size / rate if rate else None
                acc = self.interval
                bpd = acc[0] / acc[1] if acc[1] else math.nan
                self.log.update(self.step, self.epoch, epochs, b + 1, per_epoch, bpd, rate, lr,
                                eta)
                if row:
                    self._row(lr, bpd, rate, acc[2] / acc[3] if acc[3] else None,
                              self.wall0 + now - start)
                    self.interval = [0.0, 0, 0.0, 0]
                    images, t_int = 0, now
                if save:
                    self.save("checkpoint.pt", self.wall0 + now - start)
                self._push()
                if any_signal:
                    stop = signalled = True
                    break
                if time_up or any_time_up:
                    stop = True
                    self.log.message(f"max_time {cfg.max_time} s reached at step {self.step}")
                    break
            if signalled:
                self._pull()
                self._interrupted(self.wall0 + time.perf_counter() - start)
            if self.batch >= per_epoch:  # the epoch is complete
                self._pull()
                self._end_epoch(self.wall0 + time.perf_counter() - start)
                self._push()
                images, t_int = 0, time.perf_counter()  # keep evaluation out of images/s
        self._pull()
        wall = self.wall0 + time.perf_counter() - start
        self.refresh_batchnorm()  # final.pt keeps the re-estimated statistics
        val = self.evaluate("val")  # (no-ops when already done at this step)
        test = self.evaluate("test")  # the only time the test split is read
        if self.batch:  # stopped inside an epoch: the last grid is older than the model
            self.sample(self.out / "samples" / "final.png")
        lr = (lr_at(cfg, self.step - 1, self.epoch, self.batch - 1) if self.batch else
              lr_at(cfg, max(self.step - 1, 0), max(self.epoch - 1, 0), per_epoch - 1))
        self.save("checkpoint.pt", wall)
        # After checkpoint.pt, so that resuming a finished run (more epochs) drops this row.
        self._row(lr, math.nan, None, None, wall, val, test)
        path = self.save("final.pt", wall)
        self.log.message(f"done: step {self.step}, epoch {self.epoch}, {self.skipped} skipped, "
                         f"val bpd {_fmt(val)}, test bpd {_fmt(test)}, {wall:.0f} s")
        self._curves()
        if self.metrics is not None:
            self.metrics.close()
        if self.epoch_sum[1]:  # stopped inside an epoch
            self.train_bpd = self.epoch_sum[0] / self.epoch_sum[1]
        return TrainResult(self.step, self.epoch, self.skipped, self.train_bpd, test, path, val)

    def _interrupted(self, wall: float) -> NoReturn:
        signum = self.signals.signum or signal.SIGTERM  # another process got it
        self.log.message(f"{signal.Signals(signum).name}: saving a checkpoint at step "
                         f"{self.step} and stopping (a second signal aborts at once)")
        path = self.save("checkpoint.pt", wall)
        if self.metrics is not None:
            self.metrics.close()
        raise TrainingInterrupted(signum, self.step, path)

    def _row(self, lr: float, bpd: float, rate: float | None, grad_norm: float | None, wall: float,
             val_bpd: float | None = None, test_bpd: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.write(step=self.step, epoch=self.epoch, lr=lr,
                               bpd=None if math.isnan(bpd) else bpd, images_per_s=rate,
                               grad_norm=grad_norm, skipped=self.skipped, wall_time=wall,
                               val_bpd=val_bpd, test_bpd=test_bpd)

    def _curves(self) -> None:
        if self.metrics is None or not self.cfg.curves:
            return
        from flowgraph.train.curves import plot_learning_curves, read_metrics

        plot_learning_curves(read_metrics(self.out), self.out / "curves.png",
                             title=self.out.name)

    def _end_epoch(self, wall: float) -> None:
        val = self.evaluate("val")
        # The lr of the epoch's last step, also when a resume starts right at the epoch's end.
        lr = lr_at(self.cfg, self.step - 1, self.epoch, self.batch - 1)
        mean = self.epoch_sum[0] / self.epoch_sum[1] if self.epoch_sum[1] else math.nan
        self.train_bpd = None if math.isnan(mean) else mean
        self._row(lr, mean, None, None, wall, val)
        epochs = self.cfg.epochs + self.cfg.finetune_epochs
        self.log.message(f"epoch {self.epoch + 1}/{epochs} done: train bpd {mean:.4f}"
                         + ("" if val is None else f", val bpd {val:.4f}"))
        self._curves()
        self.sample(self.out / "samples" / f"epoch_{self.epoch:03d}.png")
        self.epoch, self.batch, self.epoch_sum = self.epoch + 1, 0, [0.0, 0]
        self.save("checkpoint.pt", wall)

    # -- evaluation, samples, checkpoints ---------------------------------------------------
    @torch.no_grad()
    def refresh_batchnorm(self) -> None:
        """Precise BN: re-estimate BatchNorm statistics at the current weights (once a step)."""
        if self.cfg.precise_bn == 0 or self.bn_step == self.step:
            return
        self.bn_step = self.step
        loss = BitsPerDim(self.flow)

        def batches() -> Any:
            seen = 0
            for _, x in self.bn_images.epoch(0):
                if seen >= self.cfg.precise_bn:
                    return
                seen += len(x) * self.dist.world_size
                yield self._to_device(x)

        calls = iter(range(1 << 62))

        def forward(x: Tensor) -> None:
            noise = self._noise(len(x), "precise_bn", next(calls))
            with self._autocast():
                loss(x, noise)

        reduce = all_reduce_sum if self.dist.enabled else None
        precise_batchnorm(self.flow, batches(), forward, reduce, self.dist.world_size)

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> float | None:
        """Single-sample bits/dim on the validation (`eval_batches` batches) or test split
        (all of it), after precise BN; every rank takes part. Once per split and step."""
        source = self.val if split == "val" else self.test
        if source is None or (split == "val" and self.cfg.eval_batches == 0):
            return None
        if self.evaluated.get(split, (-1, None))[0] == self.step:
            return self.evaluated[split][1]
        self.refresh_batchnorm()
        limit = self.cfg.eval_batches if split == "val" else None
        self.flow.eval()
        loss, acc = BitsPerDim(self.flow), torch.zeros(2, dtype=torch.float64,
                                                       device=self.device)
        for b, x in source.epoch(0):
            if limit is not None and b >= limit:
                break
            x = self._to_device(x)
            noise = self._noise(len(x), f"eval-{split}", b)
            with self._autocast():
                bpd = loss(x, noise)
            acc += torch.stack([bpd.double().sum(), acc.new_tensor(len(x))])
        self.flow.train()
        total, count = all_reduce_sum(acc).tolist()
        value = total / count if count else None
        self.evaluated[split] = (self.step, value)
        return value

    @torch.no_grad()
    def sample(self, path: Path) -> Path | None:
        if not self.main or self.cfg.samples == 0:
            return None
        self.flow.eval()
        eps = torch.randn(self.cfg.samples, self.flow.latent_dim,
                          generator=generator(self.cfg.seed, "samples"))
        x = self.flow.sample_from_noise(eps.to(self.device) * self.cfg.sample_temperature)
        self.flow.train()
        return save_grid(torch.nan_to_num(x.float()), path)

    def save(self, name: str, wall: float) -> Path | None:
        if not self.main:
            return None
        where = (self.step, self.epoch, self.batch)
        if name == "checkpoint.pt" and self.saved == where:  # nothing new to write
            return self.out / name
        lr = lr_at(self.cfg, self.step, self.epoch, self.batch)
        metrics = None if self.metrics is None else self.metrics.position(self.step)
        path = save_checkpoint(self.out / name, {
            "model": self.flow.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": {"mode": self.cfg.lr_schedule, "lr": lr, "epoch": self.epoch,
                         "step": self.step},
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "skipped": self.skipped, "nonfinite_streak": self.streak, "wall_time": wall,
            "epoch_bpd": list(self.epoch_sum), "interval": list(self.interval),
            "metrics": metrics, "world_size": self.dist.world_size,
            "rng": capture_rng(), "config": self.cfg.model_dump(mode="json"),
            "spec_text": self.flow.spec_text, "spec_hash": self.flow.spec_hash})
        if name == "checkpoint.pt":
            self.saved = where
        return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def train(spec: Any, config: TrainConfig, out_dir: str | Path, **kwargs: Any) -> TrainResult:
    """Train `spec` (a path, a `FlowSpec` or a dict) with `config`; see `Trainer`."""
    trainer = Trainer(spec, config, out_dir, **kwargs)
    ok = False
    try:
        trainer.initialize()
        trainer.wrap()
        result = trainer.fit()
        ok = True
        return result
    finally:
        teardown_distributed(trainer.dist, ok)
