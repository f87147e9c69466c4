r"""`TrainConfig`: every training option, validated, loaded from YAML with overrides.

Defaults follow the DenseFlow paper (Grcić et al., NeurIPS 2021, Appendix C): Adamax with
lr 1e-3, a linear warm-up over 5000 iterations, exponential decay per epoch (0.95; 0.9975 for
CIFAR-10), and an optional fine-tune phase at lr 2e-5. Fields left at ``None`` take the value
of the dataset's preset (`PRESETS`) when one exists:

============  ==========  ======  ========  =====
dataset       batch size  epochs  fine-tune  decay
============  ==========  ======  ========  =====
cifar10       64          580     70        0.9975   (the official README ran 400 + 20)
imagenet32    64          20      2         0.95
imagenet64    32          10      1         0.95
celeba        32          50      5         0.95
other         64          10      0         0.95
============  ==========  ======  ========  =====

**The official code does not decay.** Its per-iteration warm-up scheduler recomputes lr from
its base value on every iteration, while ``ExponentialLR`` multiplies the *current* lr once per
epoch, so after the warm-up every step runs at 1e-3 except the first step of each epoch
(1e-3·γ). ``lr_schedule: official`` reproduces that; ``paper`` (default) decays as written.

Example:
    >>> cfg = TrainConfig(dataset="cifar10").resolved()
    >>> cfg.batch_size, cfg.epochs, cfg.finetune_epochs, cfg.lr_decay
    (64, 580, 70, 0.9975)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowgraph.errors import FlowgraphError

__all__ = ["PRESETS", "ConfigError", "Preset", "TrainConfig", "load_train_config"]


class ConfigError(FlowgraphError):
    """A training config is invalid (unknown key, bad value); the message names the key."""

    usage = True  # the CLI exits with status 2, as for any invalid input


class Preset(BaseModel):
    """Per-dataset defaults from the paper's Appendix C."""

    model_config = ConfigDict(frozen=True)
    batch_size: int
    epochs: int
    finetune_epochs: int
    lr_decay: float


PRESETS: dict[str, Preset] = {
    "cifar10": Preset(batch_size=64, epochs=580, finetune_epochs=70, lr_decay=0.9975),
    "imagenet32": Preset(batch_size=64, epochs=20, finetune_epochs=2, lr_decay=0.95),
    "imagenet64": Preset(batch_size=32, epochs=10, finetune_epochs=1, lr_decay=0.95),
    "celeba": Preset(batch_size=32, epochs=50, finetune_epochs=5, lr_decay=0.95),
}
GENERIC = Preset(batch_size=64, epochs=10, finetune_epochs=0, lr_decay=0.95)


class TrainConfig(BaseModel):
    """All options of `flowgraph train`; unknown keys are errors. See the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # data
    dataset: str | None = Field(None, description="a name from flowgraph.data.DATASETS")
    data_dir: str | None = Field(None, description="dataset folder (default: the dataset's)")
    dataset_options: dict[str, Any] = Field(default_factory=dict,
                                            description="extra load_dataset options")
    augment: Literal["default", "none", "horizontal_flip", "eta"] = "default"
    workers: int = Field(0, ge=0, description="DataLoader workers for file-based datasets")
    # length and batch (None: the dataset preset)
    batch_size: int | None = Field(None, ge=1, description="global batch (all ranks together)")
    epochs: int | None = Field(None, ge=0, description="epochs of the main phase")
    finetune_epochs: int | None = Field(None, ge=0, description="extra epochs at finetune_lr")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    max_time: float | None = Field(None, gt=0, description="stop after this many seconds")
    # optimisation
    optimizer: Literal["adamax", "adam", "adamw"] = "adamax"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5000, ge=0, description="linear warm-up, in iterations")
    lr_schedule: Literal["paper", "official"] = "paper"
    lr_decay: float | None = Field(None, gt=0, le=1, description="γ per epoch")
    finetune_lr: float = Field(2e-5, gt=0)
    grad_clip: float | None = Field(None, gt=0, description="max total grad norm")
    max_nonfinite: int = Field(10, ge=1, description="consecutive bad steps before stopping")
    # speed
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads")
    bf16: bool = Field(False, description="bf16 conditioner networks (the data path, log-dets "
                       "and priors stay float32)")
    compile: bool = False
    channels_last: bool = False
    memory_saving: bool = Field(False, description="recompute the conditioner networks' "
                                "activations in the backward pass instead of storing them")
    tf32: bool = Field(True, description="TF32 for fp32 matmuls/convolutions on CUDA (no-op on "
                                         "CPU)")
    device_data_mb: float = Field(1024, ge=0, description="hold a uint8 split (train, test) "
                                  "on the GPU when it is at most this many MiB (0: never)")
    # distributed
    sync_batchnorm: bool | None = Field(None, description="BatchNorm over the global batch "
                                        "under DDP (None: on when there are several processes)")
    # evaluation (the test split is read only for the final report)
    val_images: int = Field(5000, ge=0, description="the last N training images are held out "
                            "for validation (0: none)")
    precise_bn: int = Field(2048, ge=0, description="training images to re-estimate BatchNorm "
                            "statistics on before each evaluation and final.pt (0: off)")
    curves: bool = Field(True, description="write curves.png (learning curves) at epoch ends")
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = Field(1000, ge=0, description="steps; 0: only at epoch ends")
    log_every: int = Field(50, ge=1, description="steps per metrics row / non-TTY line")
    eval_batches: int | None = Field(None, ge=0,
                                     description="validation batches per evaluation (None: all)")
    eval_batch_size: int | None = Field(None, ge=1)
    samples: int = Field(64, ge=0, description="images in each epoch's sample grid")
    sample_temperature: float = Field(1.0, gt=0)
    tensorboard: bool = True

    def preset(self) -> Preset:
        return PRESETS.get(self.dataset or "", GENERIC)

    def resolved(self) -> TrainConfig:
        """This config with every ``None`` that has a preset filled in."""
        p = self.preset()
        fill = {k: getattr(p, k) for k in ("batch_size", "epochs", "finetune_epochs", "lr_decay")
                if getattr(self, k) is None}
        return self.model_copy(update=fill)


def _describe(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<config>"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(TrainConfig.model_fields)
            lines.append(f"unknown key {key!r} (allowed: {allowed})")
        else:
            lines.append(f"{key}: {err['msg']}. Got {err.get('input')!r}.")
    return f"train config {source}: " + "; ".join(lines)


def load_train_config(path: str | Path | Mapping[str, Any] | None = None,
                      overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A `TrainConfig` from a YAML file (or a mapping), with `overrides` applied on top.

    Raises `ConfigError` naming the offending key for unknown keys and bad values.
    """
    source = "<defaults>"
    data: dict[str, Any] = {}
    if isinstance(path, Mapping):
        data, source = dict(path), "<mapping>"
    elif path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"train config {source!r} cannot be read: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"train config {source}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"train config {source}: the top level must be a mapping of "
                              f"options. Got {type(loaded).__name__}.")
        data = loaded or {}
    data.update(overrides or {})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None
