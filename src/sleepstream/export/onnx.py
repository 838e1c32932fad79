"""ONNX export of the whole pipeline step (:mod:`sleepstream.pipeline`), and its parity check.

The batch dimension is dynamic: the dynamo-based ``torch.onnx.export`` gets a batch-2 example
(a batch-1 example would let it specialise the batch to 1). The file is ONNX IR version
:data:`IR_VERSION` with opset :data:`OPSET`: onnxruntime :data:`MIN_ONNXRUNTIME` is the first
release that reads it (1.17 refuses IR version 10).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from sleepstream.models.card import IO_DESCRIPTIONS, METADATA_KEY, ModelMetadata
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import atomic_path
from sleepstream.pipeline import (
    PROBABILITY_OUTPUTS,
    inference_step,
    max_abs_diff,
    scan,
    scan_torch,
)

OPSET = 18
"""ONNX opset of the export (default domain)."""
IR_VERSION = 10
"""ONNX IR version the exporter writes; :func:`export_onnx` refuses to write another."""
MIN_ONNXRUNTIME = "1.18"
"""The first onnxruntime (and onnxruntime-mobile) release that reads IR version 10."""

_EXPORTER_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"_check_is_size will be removed",
    r"The tensor attributes .*_flat_weights.* were assigned during export",
    r"The \.grad attribute of a Tensor that is not a leaf Tensor",
    r"# The axis name: batch will not be used, since it shares the same",
)
"""Warnings about torch 2.13's exporter, none about the model (its ``.grad`` probe on the GRU's
loop is fatal to the export when warnings are errors, as under pytest)."""


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
    step = inference_step(net, metadata.variant, stages)
    with atomic_path(path) as partial:  # the exporter writes the file: only complete ones land
        with warnings.catch_warnings():
            for pattern in _EXPORTER_NOISE:
                warnings.filterwarnings("ignore", message=pattern)
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
        if model.ir_version != IR_VERSION:
            raise RuntimeError(
                f"The exporter wrote ONNX IR version {model.ir_version}, not {IR_VERSION}: "
                "check which onnxruntime reads it and update IR_VERSION and MIN_ONNXRUNTIME"
            )
        del model.metadata_props[:]
        for key, value in {METADATA_KEY: metadata.to_json(indent=None), **metadata.flat()}.items():
            model.metadata_props.add(key=key, value=value)
        for value in [*model.graph.input, *model.graph.output]:
            value.doc_string = IO_DESCRIPTIONS[value.name]
        model.doc_string = f"{metadata.summary()} {metadata.input_note}"
        model.producer_name, model.producer_version = "sleepstream", metadata.version
        onnx.checker.check_model(model)
        partial.write_bytes(model.SerializeToString())
    return path


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The :class:`ModelMetadata` stored in an exported ONNX file."""
    from sleepstream.live.backends import OnnxPipeline

    return ModelMetadata.from_dict(OnnxPipeline(path).metadata)


def check_onnx_parity(
    net: SleepNet,
    onnx_path: str | Path,
    inputs: Mapping[str, NDArray[np.floating]],
    stages: StageGRU | None = None,
) -> float:
    """:func:`max_abs_diff` of a night run epoch by epoch in onnxruntime and in torch (``inputs``
    as for :func:`~sleepstream.pipeline.scan_torch`). Raises ``ValueError`` when the file's
    stage outputs and ``stages`` do not go together."""
    from sleepstream.live.backends import OnnxPipeline

    model = OnnxPipeline(onnx_path)
    if bool(model.stage_outputs) != (stages is not None):
        raise ValueError(
            f"{onnx_path}: stage outputs {list(model.stage_outputs)}, but a stage network was "
            f"{'not ' if stages is None else ''}given to compare them with"
        )
    reference = scan_torch(net, model.metadata["variant"], inputs, stages)
    wanted = [n for n in PROBABILITY_OUTPUTS if n in reference]
    return max_abs_diff(scan(model.run_all, model.initial_state(), inputs, wanted), reference)
