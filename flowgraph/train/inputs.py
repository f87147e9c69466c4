r"""What the trainer reads: the spec (file, text mapping or `FlowSpec`) and the datasets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from flowgraph.data import DATASETS, DatasetError, load_dataset, make_augment
from flowgraph.errors import FlowgraphError
from flowgraph.train.config import TrainConfig

__all__ = ["ImageRange", "augment_for", "compile_for_training", "load_splits",
           "split_validation"]


def compile_for_training(spec: Any, overrides: Mapping[str, Any] | None, seed: int) -> Any:
    """Compile a spec given as a path, a `FlowSpec` or a plain mapping (``--set`` applied)."""
    from flowgraph.compile import compile_spec
    from flowgraph.spec.io import parse_spec

    if isinstance(spec, Mapping):
        data = dict(spec)
        if overrides:
            data["args"] = {**(data.get("args") or {}), **overrides}
        spec, smap = parse_spec(yaml.safe_dump(data, sort_keys=False), "<spec mapping>")
        return compile_spec(spec, smap=smap, seed=seed)
    return compile_spec(spec, overrides, seed=seed)


def _shape(data: Any) -> tuple[int, ...]:
    if isinstance(data, Tensor):
        return tuple(data.shape[1:])
    return tuple(getattr(data, "shape", None) or data[0].shape)


def load_splits(cfg: TrainConfig, flow: Any, train: Any = None, test: Any = None,
                val: Any = None) -> tuple[Any, Any, Any]:
    """The train, validation and test data: given in memory, or loaded from `cfg.dataset`.

    Validation images are `val` when given, else the last ``cfg.val_images`` training images
    (`split_validation`). A dataset without a test split gives ``test = None`` (no test
    bits/dim is reported). The images must have the spec's data shape.
    """
    if train is None:
        if cfg.dataset is None:
            raise FlowgraphError("no training data: set `dataset` in the config or pass "
                                 f"--dataset (one of {list(DATASETS)}).")
        options = dict(cfg.dataset_options)
        train = load_dataset(cfg.dataset, "train", cfg.data_dir, **options)
        try:
            test = load_dataset(cfg.dataset, "test", cfg.data_dir, **options)
        except DatasetError:
            test = None
    if val is None:
        train, val = split_validation(train, cfg.val_images)
    expected = tuple(flow.data_shape)
    for name, data in (("train", train), ("validation", val), ("test", test)):
        if data is not None and _shape(data) != expected:
            raise FlowgraphError(
                f"{name} images have shape {list(_shape(data))} but the spec's input is "
                f"{list(expected)}; choose the matching dataset or spec arguments (--set).")
    return train, val, test


class ImageRange(Dataset):
    """Images ``start … stop - 1`` of a dataset, indexed in place (no copy)."""

    def __init__(self, data: Any, start: int, stop: int):
        if not 0 <= start <= stop <= len(data):
            raise ValueError(f"range [{start}, {stop}) is outside [0, {len(data)}).")
        self.data, self.start, self.stop = data, start, stop
        self.shape = _shape(data)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getattr__(self, name: str) -> Any:
        # `gather` and `nbytes` exist exactly when the underlying dataset has them, so
        # `BatchSource` reads a range of an in-memory or mapped dataset in place too.
        if name in ("gather", "nbytes") and "data" in self.__dict__ and hasattr(self.data, name):
            return getattr(self, f"_{name}")()
        raise AttributeError(name)

    def _gather(self) -> Any:
        def gather(indices: Any, out: Tensor | None = None) -> Tensor:
            idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
                raise IndexError(f"index outside [0, {len(self)}).")
            return self.data.gather(idx + self.start, out=out)
        return gather

    def _nbytes(self) -> int:
        return self.data.nbytes * len(self) // max(len(self.data), 1)

    def __getitem__(self, index: int) -> Tensor:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is outside [0, {len(self)}).")
        return self.data[self.start + i]


def split_validation(train: Any, n: int) -> tuple[Any, Any]:
    """(training images, validation images): the last `n` training images are held out.

    A fixed tail rather than a random subset, so the split is the same for every seed, run
    and resume, and never depends on the data order of an epoch.
    """
    if n == 0:
        return train, None
    total = len(train)
    if n >= total:
        raise FlowgraphError(f"val_images ({n}) must be smaller than the training set "
                             f"({total} images); lower val_images or set it to 0.")
    if isinstance(train, Tensor):  # views: no copy
        return train[:total - n], train[total - n:]
    return ImageRange(train, 0, total - n), ImageRange(train, total - n, total)


def augment_for(cfg: TrainConfig) -> Any:
    """The configured augmentation; ``default`` is the dataset's official one (or none)."""
    name = cfg.augment
    if name == "default":
        info = DATASETS.get(cfg.dataset or "")
        name = info.augment if info is not None else "none"
    return make_augment(name)


def out_dir_default(spec: Any) -> Path:
    """``runs/<spec file stem>`` for a spec path, else ``runs/flow``."""
    return Path("runs") / (Path(spec).stem if isinstance(spec, (str, Path)) else "flow")
