r"""Training: `TrainConfig`, the lr schedule, and the `Trainer` loop behind `flowgraph train`.

The package itself is callable — ``flowgraph.train(...)`` runs `train` — so that the public API
has a `train` function while ``import flowgraph.train.progress`` keeps working.
"""

import sys
import types

from flowgraph.train.config import PRESETS, ConfigError, TrainConfig, load_train_config
from flowgraph.train.interrupt import TrainingInterrupted
from flowgraph.train.loop import Trainer, TrainResult, train
from flowgraph.train.nonfinite import find_nonfinite_node
from flowgraph.train.schedule import lr_at

__all__ = ["PRESETS", "ConfigError", "TrainConfig", "TrainResult", "Trainer",
           "TrainingInterrupted", "find_nonfinite_node", "load_train_config", "lr_at", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
