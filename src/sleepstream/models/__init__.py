"""Sleep/wake networks, their Lightning training module and the subject-split data module."""

from sleepstream.models.datamodule import SleepDataModule
from sleepstream.models.module import SleepWakeModule
from sleepstream.models.net import SleepGRU, SleepMLP, SleepNet

__all__ = ["SleepDataModule", "SleepGRU", "SleepMLP", "SleepNet", "SleepWakeModule"]
