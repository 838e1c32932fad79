"""ONNX export of one model step, an onnxruntime runner, and the parity check against torch.

The exported graph is :class:`StepModule`: one 30 s epoch in, one probability out.

=========  ========================  =======  ==============================================
name       shape                     dtype    meaning
=========  ========================  =======  ==============================================
features   (batch, n_features)       float32  raw features in ``metadata.feature_names`` order
state      (batch, state_size)       float32  state from the previous epoch (zeros at night start)
p_sleep    (batch,)                  float32  p(sleep) = sigmoid(logit)
new_state  (batch, state_size)       float32  state to pass to the next epoch
=========  ========================  =======  ==============================================

The batch dimension is dynamic. Export uses the dynamo-based ``torch.onnx.export`` (opset
:data:`OPSET`) with a batch-2 example and a named dynamic batch dimension: a batch-1 example
would let the exporter specialise the batch to 1.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from sleepstream.export.metadata import METADATA_KEY, ModelMetadata
from sleepstream.models.net import SleepNet

OPSET = 18
"""ONNX opset of the export: supported by onnxruntime >= 1.14 and onnxruntime-mobile builds."""

INPUT_NAMES = ("features", "state")
OUTPUT_NAMES = ("p_sleep", "new_state")


class StepModule(nn.Module):
    """One epoch of a :class:`SleepNet` as exported: ``(features, state) -> (p_sleep, new_state)``.

    Shared by the ONNX and Core ML exporters, so both files hold the same computation: the
    network's own ``step`` (normalisation included) followed by a sigmoid.
    """

    def __init__(self, net: SleepNet):
        super().__init__()
        self.net = net

    def forward(self, features: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        logit, new_state = self.net.step(features, state)
        if new_state is state:
            # Memoryless networks hand the state back unchanged; converters reject a graph
            # output that is the graph input itself, so give it a node of its own.
            new_state = state + 0.0
        return torch.sigmoid(logit), new_state


def inference_copy(net: SleepNet) -> SleepNet:
    """A float32 CPU copy in eval mode, so exporting never changes the caller's network."""
    return copy.deepcopy(net).cpu().float().eval()


def _exporter_warning_filters() -> None:
    """Silence warnings the torch exporter raises about its own internals (torch 2.13).

    None concerns the exported model: pytree and ``_check_is_size`` deprecations inside
    torch.export; the GRU's ``_flat_weights`` list, which torch re-assigns while tracing; a
    ``.grad`` probe by dynamo on the GRU's loop (fatal to the export when warnings are errors,
    as under pytest); a notice that the two inputs' batch axes, one and the same dimension,
    are named once.
    """
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore", message=r"_check_is_size will be removed", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore", message=r"The tensor attributes .*_flat_weights.* were assigned during export"
    )
    warnings.filterwarnings(
        "ignore", message=r"The \.grad attribute of a Tensor that is not a leaf Tensor"
    )
    warnings.filterwarnings(
        "ignore", message=r"# The axis name: batch will not be used, since it shares the same"
    )


def export_onnx(net: SleepNet, path: str | Path, metadata: ModelMetadata) -> Path:
    """Write ``net``'s one-epoch step as a self-contained ONNX file with ``metadata`` inside.

    Raises ``ValueError`` when ``metadata`` does not describe ``net`` (inputs, state size).
    """
    metadata.check_matches(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = StepModule(inference_copy(net)).eval()
    example = (torch.zeros(2, net.n_features), torch.zeros(2, net.state_size))
    with warnings.catch_warnings():
        _exporter_warning_filters()
        torch.onnx.export(
            step,
            example,
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"features": {0: "batch"}, "state": {0: "batch"}},
            verbose=False,
        )
    model = onnx.load(str(path))
    _set_metadata(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _set_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    props = {METADATA_KEY: metadata.to_json(indent=None), **metadata.flat()}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (
        f"sleepstream {metadata.architecture}: one 30 s epoch of features and the recurrent "
        "state in, p(sleep) and the next state out. " + metadata.input_note
    )
    model.producer_name = "sleepstream"
    model.producer_version = metadata.version


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The :class:`ModelMetadata` stored in an exported ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: no {METADATA_KEY!r} entry in the ONNX metadata_props")
    return ModelMetadata.from_json(props[METADATA_KEY])


class OnnxStep:
    """An exported model run by onnxruntime (CPU), one epoch at a time.

    Examples
    --------
    ::

        model = OnnxStep("model.onnx")
        state = model.initial_state()
        for x in epoch_features:               # (n_features,) raw, NaN allowed
            p, state = model.step(x, state)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def initial_state(self, batch: int | None = None) -> NDArray[np.float32]:
        """Zeros: ``(state_size,)``, or ``(batch, state_size)`` when ``batch`` is given."""
        shape = (self.metadata.state_size,) if batch is None else (batch, self.metadata.state_size)
        return np.zeros(shape, dtype=np.float32)

    def step(
        self, features: NDArray[np.floating], state: NDArray[np.floating]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One epoch: features ``(F,)`` or ``(B, F)`` and state ``(S,)`` or ``(B, S)``.

        Returns ``(p_sleep, new_state)`` with the batch dimension of the input: a scalar array
        and ``(S,)`` for unbatched input.
        """
        x = np.asarray(features, dtype=np.float32)
        s = np.asarray(state, dtype=np.float32)
        single = x.ndim == 1
        x, s = np.atleast_2d(x), np.atleast_2d(s)
        meta = self.metadata
        if x.ndim != 2 or x.shape[1] != meta.n_features:
            raise ValueError(
                f"features of shape {np.shape(features)}: expected ({meta.n_features},) or "
                f"(batch, {meta.n_features}) in the order {list(meta.feature_names)}"
            )
        if s.shape != (x.shape[0], meta.state_size):
            raise ValueError(
                f"state of shape {np.shape(state)}: expected ({x.shape[0]}, {meta.state_size})"
            )
        p, new_state = self.session.run(list(OUTPUT_NAMES), {"features": x, "state": s})
        if single:
            return p[0], new_state[0]
        return p, new_state


def torch_step_probabilities(net: SleepNet, features: NDArray[np.floating]) -> NDArray[np.float64]:
    """p(sleep) per epoch from ``net.step`` called once per row of ``features (T, F)``."""
    net = inference_copy(net)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    state = net.initial_state(1)
    out = np.empty(len(x), dtype=np.float64)
    with torch.no_grad():
        for t in range(len(x)):
            logit, state = net.step(x[t : t + 1], state)
            out[t] = torch.sigmoid(logit).item()
    return out


def check_onnx_parity(
    net: SleepNet, onnx_path: str | Path, features: NDArray[np.floating]
) -> float:
    """Max |p_onnx - p_torch| over a night run step by step in onnxruntime and in torch.

    ``features`` is ``(T, n_features)`` in ``net.feature_names`` order (raw, NaN allowed).
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != net.n_features:
        raise ValueError(
            f"features of shape {features.shape}: expected (epochs, {net.n_features}) in the "
            "order of net.feature_names"
        )
    model = OnnxStep(onnx_path)
    state = model.initial_state()
    p_onnx = np.empty(len(features), dtype=np.float64)
    for t, row in enumerate(features):
        p, state = model.step(row, state)
        p_onnx[t] = float(p)
    return float(np.max(np.abs(p_onnx - torch_step_probabilities(net, features)), initial=0.0))
