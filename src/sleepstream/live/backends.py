"""Networks behind the detector: PyTorch (a checkpoint or the shipped model) or ONNX Runtime.

Each backend takes the full causal feature vector (:data:`sleepstream.features.FEATURE_NAMES`
order), picks its network's inputs, and runs one epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from sleepstream.features import FEATURE_NAMES
from sleepstream.models.net import SleepNet


class TorchStep:
    """A :class:`~sleepstream.models.net.SleepNet` stepped one epoch at a time, on the CPU."""

    def __init__(self, net: SleepNet, thresholds: dict[str, float] | None = None):
        # One epoch is far too little work to share between threads; with several threads,
        # a busy machine makes each step wait for the others (milliseconds instead of
        # microseconds).
        torch.set_num_threads(1)
        self.net = net.cpu().eval()
        self.feature_names: Sequence[str] = net.feature_names
        self.thresholds = dict(thresholds or {})
        self._columns = np.array([FEATURE_NAMES.index(n) for n in net.feature_names])

    @classmethod
    def shipped(cls, name: str = "sleep_wake") -> TorchStep:
        """The model shipped inside the package, with its LOSO thresholds."""
        from sleepstream.models.shipped import load_shipped

        model = load_shipped(name)
        return cls(model.net, model.card.thresholds)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TorchStep:
        """The network of a Lightning checkpoint written by ``sleepstream fit``."""
        from sleepstream.models.module import net_from_checkpoint

        return cls(net_from_checkpoint(path))

    def initial_state(self) -> NDArray[np.float32]:
        return self.net.initial_state(1).numpy()

    def step(
        self, features: NDArray[np.float64], state: NDArray[np.float32]
    ) -> tuple[float, NDArray[np.float32]]:
        x = torch.as_tensor(features[self._columns], dtype=torch.float32).unsqueeze(0)
        with torch.no_grad():
            logit, new_state = self.net.step(x, torch.as_tensor(state))
        return float(torch.sigmoid(logit)[0]), new_state.numpy()
