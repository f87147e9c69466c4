r"""The learning rate as a pure function of the position in training (so it needs no state).

With base lr η, warm-up W iterations, decay γ per epoch, `step` s (0-based, global) and `epoch`
e (0-based):

- warm-up factor ``w(s) = min(1, (s + 1) / W)`` (1 when W = 0);
- ``paper`` (App. C as written): ``η · w(s) · γ^e``;
- ``official`` (what the official schedulers do, see `flowgraph.train.config`):
  ``η · w(s)``, times γ on the first step of every epoch e ≥ 1 only;
- the fine-tune phase (epochs ≥ `epochs`): the constant ``finetune_lr``.

Example:
    >>> from flowgraph.train.config import TrainConfig
    >>> cfg = TrainConfig(lr=1e-3, warmup_steps=10, lr_decay=0.5, epochs=2, finetune_epochs=1)
    >>> [round(lr_at(cfg, s, e, i), 6) for s, e, i in [(0, 0, 0), (9, 0, 9), (20, 1, 0)]]
    [0.0001, 0.001, 0.0005]
    >>> lr_at(cfg.model_copy(update={"lr_schedule": "official"}), 21, 1, 1)
    0.001
    >>> lr_at(cfg, 40, 2, 0)
    2e-05
"""

from __future__ import annotations

from flowgraph.train.config import TrainConfig

__all__ = ["lr_at", "warmup_factor"]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``min(1, (step + 1) / warmup_steps)``."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def lr_at(cfg: TrainConfig, step: int, epoch: int, step_in_epoch: int) -> float:
    """The learning rate of global `step`, which is batch `step_in_epoch` of `epoch`."""
    cfg = cfg.resolved()
    if epoch >= cfg.epochs:
        return cfg.finetune_lr
    lr = cfg.lr * warmup_factor(step, cfg.warmup_steps)
    if cfg.lr_schedule == "paper":
        return lr * cfg.lr_decay ** epoch
    return lr * cfg.lr_decay if (epoch > 0 and step_in_epoch == 0) else lr
