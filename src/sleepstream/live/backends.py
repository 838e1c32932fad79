"""What runs the pipeline step behind the detector: the model file in ONNX Runtime, or torch.

Both run the same step (:mod:`sleepstream.pipeline`, raw variant): one epoch's acceleration
grid, counts and heart-rate samples and the state in; p(sleep), the new state and the features
out, batched over streams (``run``); ``run_all`` gives every output by name, the stage
probabilities ``p_stage3`` / ``p_stage4`` too when the model has them (``stage_outputs``). :class:`OnnxPipeline` needs only NumPy and onnxruntime, so
``import sleepstream.live`` stays free of torch; :class:`TorchPipeline` runs a network that
was never exported (a checkpoint, a network in memory).
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from sleepstream.models.net import SleepNet, StageGRU

DEFAULT_NAME = "sleep_wake"
METADATA_KEY = "sleepstream"
INPUT_NAMES = ("accel", "counts", "hr", "hr_offset", "state")
Arrays = dict[str, NDArray[np.float32]]


class PipelineModel(Protocol):
    """One epoch of the raw-variant pipeline for a batch of streams."""

    model_id: str
    thresholds: dict[str, float]
    metadata: dict[str, Any]

    def initial_state(self, batch: int = 1) -> NDArray[np.float32]: ...

    def run(
        self, inputs: Arrays, state: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]: ...


def initial_state_from_layout(layout: Any, batch: int = 1) -> NDArray[np.float32]:
    """The state of a new stream from a metadata ``state_layout`` (parts and initial values)."""
    parts = [
        np.full(int(p["length"]), math.nan if p["initial"] == "nan" else float(p["initial"]))
        for p in layout
    ]
    return np.tile(np.concatenate(parts).astype(np.float32), (batch, 1))


def shipped_path(name: str = DEFAULT_NAME) -> Path:
    """The model file shipped inside the package."""
    return Path(str(resources.files("sleepstream") / "shipped" / f"{name}.onnx"))


class _Backend:
    """What both backends share: ``run`` picks the detector's three outputs from ``run_all``,
    which each backend runs its own way."""

    output_names: tuple[str, ...]

    @property
    def stage_outputs(self) -> tuple[str, ...]:
        """The stage probabilities among the outputs (``p_stage3``, ``p_stage4``), if any."""
        return tuple(n for n in self.output_names if n.startswith("p_stage"))

    def run(
        self, inputs: Arrays, state: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """p(sleep), the new state and the features of one epoch of a batch of streams."""
        out = self.run_all(inputs, state)
        return out["p_sleep"], out["new_state"], out["features"]

    def run_all(self, inputs: Arrays, state: NDArray[np.float32]) -> Arrays:
        raise NotImplementedError


class OnnxPipeline(_Backend):
    """An exported pipeline file (raw variant) run by onnxruntime on the CPU, one thread.

    Examples
    --------
    ::

        model = OnnxPipeline.shipped()
        state = model.initial_state()
        p, state, features = model.run({"accel": .., "counts": .., "hr": .., "hr_offset": ..}, state)
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        data = self.path.read_bytes()
        self.model_id = "onnx-" + hashlib.blake2b(data, digest_size=12).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(f"{self.path}: not a sleepstream model file (no metadata)")
        self.metadata: dict[str, Any] = json.loads(props[METADATA_KEY])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.thresholds = {str(k): float(v) for k, v in self.metadata["thresholds"].items()}
        self._initial = initial_state_from_layout(self.metadata["state_layout"])

    @classmethod
    def shipped(cls, name: str = DEFAULT_NAME) -> OnnxPipeline:
        """The model file shipped inside the package, with its LOSO thresholds."""
        return cls(shipped_path(name))

    def initial_state(self, batch: int = 1) -> NDArray[np.float32]:
        return np.repeat(self._initial, batch, axis=0)

    def run_all(self, inputs: Arrays, state: NDArray[np.float32]) -> Arrays:
        """Every output of the step by name (``p_sleep``, ``new_state``, ``features``, and
        :attr:`stage_outputs`)."""
        feed = {n: inputs[n] for n in self.input_names if n != "state"}
        feed["state"] = state
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))


class TorchPipeline(_Backend):
    """The pipeline of a network in torch (CPU, one thread): no export needed."""

    def __init__(
        self,
        net: SleepNet,
        thresholds: dict[str, float] | None = None,
        stages: StageGRU | None = None,
    ):
        import torch

        from sleepstream.pipeline import pipeline_step

        torch.set_num_threads(1)  # one epoch is too little work to share between threads
        self.step = pipeline_step(net, "raw", stages)
        self.output_names = self.step.output_names
        weights = b"".join(
            v.detach().cpu().float().numpy().tobytes() for v in self.step.state_dict().values()
        )
        self.model_id = "torch-" + hashlib.blake2b(weights, digest_size=12).hexdigest()
        from sleepstream.models.card import state_layout_with_initial

        self.thresholds = dict(thresholds or {})
        self.metadata = {
            "thresholds": self.thresholds,
            "state_layout": state_layout_with_initial(self.step),
        }
        if stages is not None:
            from sleepstream.models.card import stage_metadata

            self.metadata["stages"] = stage_metadata(stages)
        self.input_names = self.step.input_names

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TorchPipeline:
        """The network of a Lightning checkpoint written by ``sleepstream fit``."""
        from sleepstream.models.module import net_from_checkpoint

        return cls(net_from_checkpoint(path))

    def initial_state(self, batch: int = 1) -> NDArray[np.float32]:
        state: NDArray[np.float32] = self.step.initial_state(batch).numpy()
        return state

    def run_all(self, inputs: Arrays, state: NDArray[np.float32]) -> Arrays:
        """Every output of the step by name, as :meth:`OnnxPipeline.run_all`."""
        import torch

        args = [torch.from_numpy(np.asarray(inputs[n], dtype=np.float32)) for n in INPUT_NAMES[:-1]]
        with torch.no_grad():
            outputs = self.step(*args, torch.from_numpy(state))
        return {n: o.numpy() for n, o in zip(self.output_names, outputs, strict=True)}


__all__ = ["OnnxPipeline", "PipelineModel", "TorchPipeline", "initial_state_from_layout"]
