r"""Training: `TrainConfig`, the lr schedule, and the `Trainer` loop behind `flowgraph train`."""

from flowgraph.train.config import PRESETS, ConfigError, TrainConfig, load_train_config
from flowgraph.train.interrupt import TrainingInterrupted
from flowgraph.train.loop import Trainer, TrainResult, train
from flowgraph.train.nonfinite import find_nonfinite_node
from flowgraph.train.schedule import lr_at

__all__ = ["PRESETS", "ConfigError", "TrainConfig", "TrainResult", "Trainer",
           "TrainingInterrupted", "find_nonfinite_node", "load_train_config", "lr_at", "train"]
