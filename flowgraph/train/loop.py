r"""`Trainer`: the training loop of `flowgraph train` (single process or DDP).

One step: augment this rank's uint8 batch and draw the model noise (generators seeded by
(seed, step, rank)), set the lr (`lr_at`), loss = mean single-sample bits/dim, backward, clip
(optionally), Adamax step. A step whose loss or gradient is non-finite is skipped (no optimizer
step, gradients dropped, BatchNorm statistics restored) and counted; `max_nonfinite` in a row
stop the run with the first bad node named (`flowgraph.train.nonfinite`). ActNorm is
initialised from the first batch before DDP wraps the model, and never after a resume.

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
    >>> cfg = TrainConfig(epochs=1, batch_size=8, samples=0, warmup_steps=2)
    >>> data = torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8)
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
    resolve_device,
    setup_distributed,
    teardown_distributed,
)
from flowgraph.train.inputs import augment_for, compile_for_training, load_splits
from flowgraph.train.interrupt import StopSignals, TrainingInterrupted
from flowgraph.train.nonfinite import find_nonfinite_node
from flowgraph.train.progress import MetricsLog, ProgressBar
from flowgraph.train.schedule import lr_at
from flowgraph.train.state import capture_rng, restore_rng

__all__ = ["TrainResult", "Trainer", "TrainingInterrupted", "train"]


@dataclass(frozen=True)
class TrainResult:
    step: int
    epoch: int
    skipped: int
    train_bpd: float | None
    test_bpd: float | None
    checkpoint: Path | None


class Trainer:
    """Set up (`__init__`), `initialize` ActNorm, `wrap` for DDP/compile, then `fit`."""

    def __init__(self, spec: Any, config: TrainConfig, out_dir: str | Path, *,
                 overrides: dict[str, Any] | None = None, resume: str | Path | None = None,
                 flow: nn.Module | None = None, train_data: Any = None, test_data: Any = None,
                 stream: IO[str] | None = None):
        self.cfg = cfg = config.resolved()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = setup_distributed(self.device)
        self.out = Path(out_dir)
        self.flow = flow if flow is not None else compile_for_training(
            spec, overrides, cfg.seed)
        self.step = self.epoch = self.batch = self.skipped = self.streak = 0
        self.wall0, self.epoch_sum, self.train_bpd = 0.0, [0.0, 0], None
        self.interval: list[float] = [0.0, 0, 0.0, 0]  # bpd sum, count, grad-norm sum, count
        self.saved: tuple[int, int, int] | None = None  # position of the last checkpoint.pt
        self.signals = StopSignals()
        self.last_test: tuple[int, float | None] = (-1, None)
        ckpt = self._load(Path(resume)) if resume is not None else None
        train_data, test_data = load_splits(cfg, self.flow, train_data, test_data)
        r, w = self.dist.rank, self.dist.world_size
        self.source = BatchSource(train_data, cfg.batch_size, seed=cfg.seed, rank=r,
                                  world_size=w, workers=cfg.workers)
        if len(self.source) == 0:
            raise FlowgraphError(f"the training set has {self.source.n} images, fewer than one "
                                 f"batch (batch_size {cfg.batch_size}).")
        self.test = None if test_data is None else BatchSource(
            test_data, cfg.eval_batch_size or cfg.batch_size, seed=cfg.seed, rank=r,
            world_size=w, workers=cfg.workers, shuffle=False, drop_last=False)
        self.augment = augment_for(cfg)
        self.flow.to(self.device)
        if cfg.channels_last:
            self.flow.to(memory_format=torch.channels_last)
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
        """ActNorm's data-dependent init from this rank's share of the first batch."""
        if self.flow.is_initialized():
            return
        x = self.source.get(0, 0)
        x = self.augment(x, generator=generator(self.cfg.seed, "augment", 0, self.dist.rank))
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(derive_seed(self.cfg.seed, "init", self.dist.rank))
            reduce = all_reduce_sum if self.dist.enabled else None
            self.flow.initialize(self._to_device(x), None, all_reduce=reduce)

    def wrap(self) -> None:
        """Wrap the loss module in DDP (after `initialize`) and/or torch.compile."""
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss = nn.parallel.DistributedDataParallel(self.loss, device_ids=ids)
        if self.cfg.compile:
            self.loss = torch.compile(self.loss)

    # -- one step -------------------------------------------------------------------------
    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _autocast(self) -> Any:
        """`bf16`: the conditioner networks only, through the flow's own switch (restored on
        exit); no global autocast, so the bijection, log-dets and the loss stay float32."""
        return self.flow.set_conditioner_dtype(torch.bfloat16 if self.cfg.bf16 else None)

    def train_step(self, x_u8: Tensor, lr: float, time_up: bool = False) -> dict[str, Any]:
        """One optimizer step (or a skipped one); returns the global loss and flags."""
        cfg, rank = self.cfg, self.dist.rank
        x = self._to_device(self.augment(x_u8, generator=generator(cfg.seed, "augment",
                                                                    self.step, rank)))
        g = generator(cfg.seed, "noise", self.step, rank, device=self.device)
        noise = self.flow.draw_noise(len(x), generator=g)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        buffers = [b.clone() for b in self.flow.buffers()]
        with self._autocast():
            loss = self.loss(x, noise).float().mean()
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
        bad = ~torch.isfinite(loss) | ~torch.isfinite(norm)
        # A stop signal seen by any process by now stops all of them after this step.
        signalled = self.signals.signum is not None
        stats = torch.stack([torch.nan_to_num(loss.detach()) * len(x), loss.new_tensor(len(x)),
                             bad.float(), loss.new_tensor(float(time_up)),
                             loss.new_tensor(float(signalled))])
        total, count, n_bad, n_up, n_sig = all_reduce_sum(stats).tolist()
        self.step, self.batch = self.step + 1, self.batch + 1
        if n_bad:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_copy_(list(self.flow.buffers()), buffers)
            self.skipped, self.streak = self.skipped + 1, self.streak + 1
            if self.streak >= cfg.max_nonfinite:
                where = find_nonfinite_node(self.flow, x, noise)
                raise FlowgraphError(
                    f"training stopped: {self.streak} consecutive non-finite steps (step "
                    f"{self.step}, {self.skipped} skipped in all); first non-finite: {where}")
            return {"bpd": None, "grad_norm": None, "stop": bool(n_up), "signal": bool(n_sig)}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.streak = 0
        return {"bpd": total / count, "grad_norm": float(norm), "stop": bool(n_up),
                "signal": bool(n_sig)}

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        with self.signals:
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, per_epoch = self.cfg, len(self.source)
        epochs = cfg.epochs + cfg.finetune_epochs
        start, images, t_int = time.perf_counter(), 0, time.perf_counter()
        acc = self.interval
        rate, stop, signalled = 0.0, False, False
        self.flow.train()
        while self.epoch < epochs and not stop:
            for b, x in self.source.epoch(self.epoch, self.batch):
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    stop = True
                    break
                if self.signals.signum is not None and not self.dist.enabled:
                    stop = signalled = True  # (with DDP the next step's all-reduce agrees)
                    break
                lr = lr_at(cfg, self.step, self.epoch, b)
                wall = self.wall0 + time.perf_counter() - start
                out = self.train_step(x, lr, cfg.max_time is not None and wall >= cfg.max_time)
                images += cfg.batch_size
                if out["bpd"] is not None:
                    acc[0] += out["bpd"]
                    acc[1] += 1
                    acc[2] += out["grad_norm"]
                    acc[3] += 1
                    self.epoch_sum = [self.epoch_sum[0] + out["bpd"], self.epoch_sum[1] + 1]
                now = time.perf_counter()
                rate = images / max(now - t_int, 1e-9)
                eta = (self.total_steps - self.step) * cfg.batch_size / rate if rate else None
                bpd = acc[0] / acc[1] if acc[1] else math.nan
                self.log.update(self.step, self.epoch, epochs, b + 1, per_epoch, bpd, rate, lr,
                                eta)
                if self.step % cfg.log_every == 0:
                    self._row(lr, bpd, rate, acc[2] / acc[3] if acc[3] else None,
                              self.wall0 + now - start)
                    acc[:] = [0.0, 0, 0.0, 0]  # in place: `acc` is self.interval
                    images, t_int = 0, now
                # At an epoch's end `_end_epoch` saves anyway (after its row).
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                        and self.batch < per_epoch):
                    self.save("checkpoint.pt", self.wall0 + now - start)
                if out["signal"]:
                    stop = signalled = True
                    break
                if out["stop"]:
                    stop = True
                    self.log.message(f"max_time {cfg.max_time} s reached at step {self.step}")
                    break
            if signalled:
                self._interrupted(self.wall0 + time.perf_counter() - start)
            if self.batch >= per_epoch:  # the epoch is complete
                self._end_epoch(self.wall0 + time.perf_counter() - start)
                images, t_int = 0, time.perf_counter()  # keep evaluation out of images/s
        wall = self.wall0 + time.perf_counter() - start
        if self.last_test[0] != self.step:
            self.evaluate()
        if self.batch:  # stopped inside an epoch: the last grid is older than the model
            self.sample(self.out / "samples" / "final.png")
        self.save("checkpoint.pt", wall)
        path = self.save("final.pt", wall)
        test = self.last_test[1]
        self.log.message(f"done: step {self.step}, epoch {self.epoch}, {self.skipped} skipped, "
                         f"test bpd {'n/a' if test is None else f'{test:.4f}'}, {wall:.0f} s")
        if self.metrics is not None:
            self.metrics.close()
        if self.epoch_sum[1]:  # stopped inside an epoch
            self.train_bpd = self.epoch_sum[0] / self.epoch_sum[1]
        return TrainResult(self.step, self.epoch, self.skipped, self.train_bpd, test, path)

    def _interrupted(self, wall: float) -> NoReturn:
        signum = self.signals.signum or signal.SIGTERM  # another process got it
        self.log.message(f"{signal.Signals(signum).name}: saving a checkpoint at step "
                         f"{self.step} and stopping (a second signal aborts at once)")
        path = self.save("checkpoint.pt", wall)
        if self.metrics is not None:
            self.metrics.close()
        raise TrainingInterrupted(signum, self.step, path)

    def _row(self, lr: float, bpd: float, rate: float | None, grad_norm: float | None, wall: float,
             test_bpd: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.write(step=self.step, epoch=self.epoch, lr=lr,
                               bpd=None if math.isnan(bpd) else bpd, images_per_s=rate,
                               grad_norm=grad_norm, skipped=self.skipped, wall_time=wall,
                               test_bpd=test_bpd)

    def _end_epoch(self, wall: float) -> None:
        test = self.evaluate()
        # The lr of the epoch's last step, also when a resume starts right at the epoch's end.
        lr = lr_at(self.cfg, self.step - 1, self.epoch, self.batch - 1)
        mean = self.epoch_sum[0] / self.epoch_sum[1] if self.epoch_sum[1] else math.nan
        self.train_bpd = None if math.isnan(mean) else mean
        self._row(lr, mean, None, None, wall, test)
        epochs = self.cfg.epochs + self.cfg.finetune_epochs
        self.log.message(f"epoch {self.epoch + 1}/{epochs} done: train bpd {mean:.4f}"
                         + ("" if test is None else f", test bpd {test:.4f}"))
        self.sample(self.out / "samples" / f"epoch_{self.epoch:03d}.png")
        self.epoch, self.batch, self.epoch_sum = self.epoch + 1, 0, [0.0, 0]
        self.save("checkpoint.pt", wall)

    # -- evaluation, samples, checkpoints ---------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Test-split single-sample bits/dim over `eval_batches` batches (all ranks)."""
        if self.test is None or self.cfg.eval_batches == 0:
            return None
        self.flow.eval()
        loss, acc = BitsPerDim(self.flow), torch.zeros(2, dtype=torch.float64,
                                                       device=self.device)
        for b, x in self.test.epoch(0):
            if self.cfg.eval_batches is not None and b >= self.cfg.eval_batches:
                break
            g = generator(self.cfg.seed, "eval", b, self.dist.rank, device=self.device)
            x = self._to_device(x)
            with self._autocast():
                bpd = loss(x, self.flow.draw_noise(len(x), generator=g))
            acc += torch.stack([bpd.double().sum(), acc.new_tensor(len(x))])
        self.flow.train()
        total, count = all_reduce_sum(acc).tolist()
        value = total / count if count else None
        self.last_test = (self.step, value)
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
