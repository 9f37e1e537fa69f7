"""Training: config, one-step gradients (with GradCache), checkpoints, the loop."""

from btoks.train.config import DataSource, TrainConfig
from btoks.train.trainer import Trainer, train

__all__ = ["DataSource", "TrainConfig", "Trainer", "train"]
