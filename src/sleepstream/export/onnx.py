"""ONNX export of the whole pipeline step, an onnxruntime runner, and the parity check.

The exported graph is :func:`sleepstream.pipeline.pipeline_step`: one 30 s epoch of raw
inputs (acceleration or counts, heart-rate samples) and the state in; p(sleep), the new state
and the feature vector out (the table in :mod:`sleepstream.pipeline`), and with a stage
network the stage probabilities ``p_stage3 (batch, 3)`` and ``p_stage4 (batch, 4)``. The batch dimension is
dynamic. Export uses the dynamo-based ``torch.onnx.export`` (opset :data:`OPSET`) with a
batch-2 example and a named dynamic batch dimension: a batch-1 example would let the exporter
specialise the batch to 1.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from sleepstream.models.card import METADATA_KEY, ModelMetadata
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import atomic_path
from sleepstream.pipeline import STAGE_OUTPUT_NAMES, pipeline_step

OPSET = 18
"""ONNX opset of the export: supported by onnxruntime >= 1.14 and onnxruntime-mobile builds."""

OUTPUT_NAMES = ("p_sleep", "new_state", "features")
"""The outputs of every exported step; a step with a stage network adds
:data:`~sleepstream.pipeline.STAGE_OUTPUT_NAMES`."""

PROBABILITY_OUTPUTS = ("p_sleep", *STAGE_OUTPUT_NAMES.values())
"""The outputs the parity checks compare (those present in a file)."""


def inference_copy(net: SleepNet) -> SleepNet:
    """A float32 CPU copy in eval mode, so exporting never changes the caller's network."""
    return copy.deepcopy(net).cpu().float().eval()


def stage_inference_copy(stages: StageGRU | None) -> StageGRU | None:
    """:func:`inference_copy` of a stage network (None stays None)."""
    return None if stages is None else copy.deepcopy(stages).cpu().float().eval()


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


def export_onnx(
    net: SleepNet,
    path: str | Path,
    metadata: ModelMetadata,
    stages: StageGRU | None = None,
) -> Path:
    """Write the pipeline of ``net`` (``metadata.variant``) as one ONNX file, metadata inside;
    with the stage network ``stages``, its outputs ``p_stage3`` and ``p_stage4`` too.

    Raises ``ValueError`` when ``metadata`` does not describe ``net`` and ``stages``.
    """
    metadata.check_matches(net, stages)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = pipeline_step(inference_copy(net), metadata.variant, stage_inference_copy(stages))
    with atomic_path(path) as partial:  # the exporter writes the file: only complete ones land
        with warnings.catch_warnings():
            _exporter_warning_filters()
            torch.onnx.export(
                step,
                step.example_inputs(2),
                str(partial),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=list(step.input_names),
                output_names=list(step.output_names),
                dynamic_shapes={name: {0: "batch"} for name in step.input_names},
                verbose=False,
            )
        model = onnx.load(str(partial))
        _set_metadata(model, metadata)
        onnx.checker.check_model(model)
        partial.write_bytes(model.SerializeToString())
    return path


def _set_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    props = {METADATA_KEY: metadata.to_json(indent=None), **metadata.flat()}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (
        f"sleepstream {metadata.architecture} pipeline ({metadata.variant} variant): one 30 s "
        "epoch of watch samples and the state in, p(sleep), the next state and the features "
        "out. " + metadata.input_note
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


def scan_torch(
    net: SleepNet,
    variant: str,
    inputs: Mapping[str, NDArray[np.floating]],
    stages: StageGRU | None = None,
) -> dict[str, NDArray[np.float32]]:
    """The pipeline in torch over ``(epochs, ...)`` inputs of one stream, one epoch per call:
    ``p_sleep (T,)``, ``features (T, 29)`` and the state after each epoch ``(T, S)``; with
    ``stages``, ``p_stage3 (T, 3)`` and ``p_stage4 (T, 4)`` too."""
    step = pipeline_step(inference_copy(net), variant, stage_inference_copy(stages))
    state = step.initial_state(1)
    names = ("p_sleep", "state", "features", *step.output_names[3:])
    out: dict[str, list[NDArray[np.float32]]] = {name: [] for name in names}
    with torch.no_grad():
        for t in range(len(inputs["hr"])):
            args = [
                torch.as_tensor(np.asarray(inputs[n][t : t + 1]), dtype=torch.float32)
                for n in step.input_names[:-1]
            ]
            outputs = step(*args, state)
            state = outputs[1]
            for name, value in zip(names, outputs, strict=True):
                out[name].append(value.numpy()[0])
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def check_onnx_parity(
    net: SleepNet,
    onnx_path: str | Path,
    inputs: Mapping[str, NDArray[np.floating]],
    stages: StageGRU | None = None,
) -> float:
    """Max |p_onnx - p_torch| over a night run epoch by epoch in onnxruntime and in torch, over
    p(sleep) and, for a file with stage outputs, every stage probability.

    ``inputs`` holds the step's inputs per epoch (``counts (T, 2)``, ``hr``, ``hr_offset``
    ``(T, 30)``, and ``accel (T, 1500)`` for the raw variant). Raises ``ValueError`` when the
    file's stage outputs and ``stages`` do not go together.
    """
    from sleepstream.live.backends import OnnxPipeline

    model = OnnxPipeline(onnx_path)
    if bool(model.stage_outputs) != (stages is not None):
        raise ValueError(
            f"{onnx_path}: stage outputs {list(model.stage_outputs)}, but a stage network was "
            f"{'not ' if stages is None else ''}given to compare them with"
        )
    reference = scan_torch(net, model.metadata["variant"], inputs, stages)
    state = model.initial_state()
    wanted = [n for n in PROBABILITY_OUTPUTS if n in reference]
    got: dict[str, list[NDArray[np.float32]]] = {n: [] for n in wanted}
    for t in range(len(inputs["hr"])):
        feed = {
            n: np.asarray(inputs[n][t : t + 1], dtype=np.float32) for n in model.input_names[:-1]
        }
        out = model.run_all(feed, state)
        state = out["new_state"]
        for name in wanted:
            got[name].append(out[name][0])
    return max(
        (
            float(np.max(np.abs(np.asarray(got[n], np.float64) - reference[n]), initial=0.0))
            for n in wanted
        ),
        default=0.0,
    )
