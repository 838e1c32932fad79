"""Networks behind the detector: NumPy or PyTorch (a checkpoint or the shipped model), or ONNX.

Each backend takes the full causal feature vector (:data:`sleepstream.features.FEATURE_NAMES`
order), picks its network's inputs, and runs one epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

from sleepstream.features import FEATURE_NAMES
from sleepstream.models.card import DEFAULT_NAME, Weights, read_model, shipped_folder, weights_id

if TYPE_CHECKING:
    from sleepstream.models.net import SleepNet


def _arrays(net: SleepNet) -> Weights:
    return {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}


class TorchStep:
    """A :class:`~sleepstream.models.net.SleepNet` stepped one epoch at a time, on the CPU."""

    def __init__(self, net: SleepNet, thresholds: dict[str, float] | None = None):
        import torch

        # One epoch is far too little work to share between threads; with several threads,
        # a busy machine makes each step wait for the others (milliseconds instead of
        # microseconds).
        torch.set_num_threads(1)
        self.net = net.cpu().eval()
        self.model_id = weights_id(type(net).__name__, _arrays(self.net))
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
        import torch

        x = torch.as_tensor(features[self._columns], dtype=torch.float32).unsqueeze(0)
        with torch.no_grad():
            logit, new_state = self.net.step(x, torch.as_tensor(state))
        return float(torch.sigmoid(logit)[0]), new_state.numpy()


class NumpyStep:
    """The same network stepped in NumPy: no framework overhead for one epoch at a time.

    Computes exactly what :meth:`SleepNet.step` computes (normalisation, input layer, GRU or
    MLP, read-out) from the network's float32 weights; :class:`TorchStep` is the reference and
    the tests hold them to 1e-6.
    """

    def __init__(self, net: SleepNet, thresholds: dict[str, float] | None = None):
        self._setup(type(net).__name__, net.init_args, _arrays(net), thresholds)

    @classmethod
    def from_weights(
        cls,
        architecture: str,
        init_args: dict[str, Any],
        weights: Weights,
        thresholds: dict[str, float] | None = None,
    ) -> NumpyStep:
        """A saved network (:func:`sleepstream.models.card.read_model`), without torch."""
        step = cls.__new__(cls)
        step._setup(architecture, init_args, weights, thresholds)
        return step

    def _setup(
        self,
        architecture: str,
        init_args: dict[str, Any],
        weights: Weights,
        thresholds: dict[str, float] | None,
    ) -> None:
        if architecture not in ("SleepGRU", "SleepMLP"):
            raise ValueError(f"NumpyStep does not know {architecture}; use TorchStep")
        self.architecture = architecture
        self.model_id = weights_id(architecture, weights)
        self.feature_names: Sequence[str] = list(init_args["feature_names"])
        self.thresholds = dict(thresholds or {})
        self._columns = np.array([FEATURE_NAMES.index(n) for n in self.feature_names])
        self._w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self._layers = int(init_args.get("num_layers", 1)) if architecture == "SleepGRU" else 0
        hidden = int(init_args.get("hidden_size", 0))
        self._state_size = hidden * self._layers if architecture == "SleepGRU" else 1

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> NumpyStep:
        """The network of a Lightning checkpoint written by ``sleepstream fit``."""
        from sleepstream.models.module import net_from_checkpoint

        return cls(net_from_checkpoint(path))

    @classmethod
    def shipped(cls, name: str = DEFAULT_NAME) -> NumpyStep:
        """The model shipped inside the package, with its LOSO thresholds (no torch needed)."""
        card, weights = read_model(shipped_folder(), name)
        return cls.from_weights(card.architecture, card.init_args, weights, card.thresholds)

    def initial_state(self) -> NDArray[np.float32]:
        return np.zeros((1, self._state_size), dtype=np.float32)

    def _linear(self, name: str, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return x @ self._w[f"{name}.weight"].T + self._w[f"{name}.bias"]

    def step(
        self, features: NDArray[np.float64], state: NDArray[np.float32]
    ) -> tuple[float, NDArray[np.float32]]:
        w = self._w
        x = features[self._columns].astype(np.float32)
        z = (x - w["normalise.mean"]) / w["normalise.std"]
        z = np.where(np.isnan(z), np.float32(0), z).astype(np.float32)
        if self.architecture == "SleepMLP":
            h = _gelu(self._linear("mlp.0", z))
            h = _gelu(self._linear("mlp.3", h))
            logit = self._linear("mlp.5", h)[0]
            return _sigmoid(logit), state
        inp = _gelu(self._linear("embed.0", z))
        hidden = state.reshape(self._layers, -1)
        new = np.empty_like(hidden)
        for layer in range(self._layers):
            gi = inp @ w[f"gru.weight_ih_l{layer}"].T + w[f"gru.bias_ih_l{layer}"]
            gh = hidden[layer] @ w[f"gru.weight_hh_l{layer}"].T + w[f"gru.bias_hh_l{layer}"]
            i_r, i_z, i_n = np.split(gi, 3)
            h_r, h_z, h_n = np.split(gh, 3)
            r = _sigmoid_array(i_r + h_r)
            u = _sigmoid_array(i_z + h_z)
            n = np.tanh(i_n + r * h_n)
            new[layer] = (1 - u) * n + u * hidden[layer]
            inp = new[layer]
        logit = self._linear("head", inp)[0]
        return _sigmoid(logit), new.reshape(1, -1)


def _gelu(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return (0.5 * x * (1.0 + special.erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)


def _sigmoid_array(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _sigmoid(x: np.floating) -> float:
    return float(1.0 / (1.0 + np.exp(-float(x))))


class OnnxBackend:
    """An exported ONNX model (``sleepstream export``) behind the detector, via onnxruntime."""

    def __init__(self, path: str | Path):
        from sleepstream.export.onnx import OnnxStep

        self.onnx = OnnxStep(path)
        self.model_id = (
            "onnx-" + hashlib.blake2b(Path(path).read_bytes(), digest_size=12).hexdigest()
        )
        self.feature_names: Sequence[str] = list(self.onnx.metadata.feature_names)
        self.thresholds = dict(self.onnx.metadata.thresholds)
        self._columns = np.array([FEATURE_NAMES.index(n) for n in self.feature_names])

    def initial_state(self) -> NDArray[np.float32]:
        return self.onnx.initial_state()

    def step(
        self, features: NDArray[np.float64], state: NDArray[np.float32]
    ) -> tuple[float, NDArray[np.float32]]:
        p, new_state = self.onnx.step(features[self._columns], state)
        return float(p), new_state
