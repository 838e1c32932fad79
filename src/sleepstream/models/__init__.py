"""Sleep/wake and sleep-stage networks, their Lightning modules and the subject-split data module.

Everything is imported on first use, so code that only reads a saved model (the live detector's
NumPy backend, :mod:`sleepstream.models.card`) pays for neither torch nor Lightning.
"""

from importlib import import_module
from typing import Any

__all__ = [
    "SleepDataModule",
    "SleepGRU",
    "SleepMLP",
    "SleepNet",
    "SleepWakeModule",
    "StageGRU",
    "StageModule",
]

_HOMES = {
    "SleepDataModule": "sleepstream.models.datamodule",
    "SleepWakeModule": "sleepstream.models.module",
    "SleepGRU": "sleepstream.models.net",
    "SleepMLP": "sleepstream.models.net",
    "SleepNet": "sleepstream.models.net",
    "StageGRU": "sleepstream.models.net",
    "StageModule": "sleepstream.models.stage_module",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sleepstream.models' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
