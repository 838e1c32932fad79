"""Core ML export of the whole pipeline step, and the parity check that runs without a Mac.

The step is traced with ``torch.jit.trace`` (coremltools 9 cannot convert the GRU from
``torch.export``), batch 1, and saved as an ML Program ``.mlpackage`` for iOS 16 / watchOS 9
(every watch from Series 4), so no legacy ``.mlmodel``. Core ML predicts only on macOS;
elsewhere :func:`check_coreml` evaluates the saved program in Python (:func:`_run_main`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import torch
from coremltools.converters.mil.frontend.milproto.load import load as load_mil_program
from coremltools.converters.mil.mil import Builder as mb  # noqa: N813 (coremltools convention)
from coremltools.converters.mil.mil import Function
from numpy.typing import NDArray

from sleepstream.live.backends import initial_state_from_layout
from sleepstream.models.card import IO_DESCRIPTIONS, METADATA_KEY, ModelMetadata
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import atomic_directory
from sleepstream.pipeline import (
    PROBABILITY_OUTPUTS,
    inference_step,
    max_abs_diff,
    scan,
    scan_torch,
)

STATE_INPUT = "prev_state"
"""Core ML name of the pipeline's ``state`` input (``state`` is reserved in Core ML)."""


def _conversion_warning_filters() -> None:
    """Silence warnings about the tools' internals, none about the model: ``torch.jit.trace``'s
    deprecation (coremltools 9's route for GRUs), ``TracerWarning`` about values constant for
    the fixed shapes, coremltools' temporary folder, and in float16 the overflow of ``1e9``
    stand-ins for "no value" and of ``clamp`` limits to infinities, which serve as well."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
    for module in (r"torch\.nn\.modules\.rnn", r"sleepstream\.step"):
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=module)
    warnings.filterwarnings("ignore", message=r"Implicitly cleaning up", category=ResourceWarning)
    warnings.filterwarnings(
        "ignore", message=r"overflow encountered in cast", module=r"coremltools"
    )


def _shapes(metadata: ModelMetadata) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Core ML name -> shape (batch 1) of every input and every output, in order."""

    def batch_1(shapes: Mapping[str, Sequence[Any]]) -> dict[str, list[int]]:
        return {
            STATE_INPUT if n == "state" else n: [1, *map(int, s[1:])] for n, s in shapes.items()
        }

    inputs = {str(i["name"]): i["shape"] for i in metadata.inputs}
    return batch_1(inputs), batch_1(metadata.outputs())


def export_coreml(
    net: SleepNet,
    path: str | Path,
    metadata: ModelMetadata,
    *,
    precision: str = "float32",
    stages: StageGRU | None = None,
) -> dict[str, str]:
    """Write the pipeline of ``net`` (and ``stages``) as ``path.mlpackage``, metadata inside;
    return its path under ``"mlpackage"``. Raises ``ValueError`` when ``metadata`` does not
    describe that pipeline.

    ``precision`` is the program's compute precision (inputs, outputs and state are float32):
    ``"float32"`` keeps parity with torch and ONNX (Core ML runs it on the CPU or GPU, ample
    for one step per 30 s); ``"float16"`` lets the Neural Engine run it, measured but not
    promised (``docs/export.md``: window sums near the float16 range).
    """
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16', got {precision!r}")
    metadata.check_matches(net, stages)
    step = inference_step(net, metadata.variant, stages)
    inputs, outputs = _shapes(metadata)
    example = step.example_inputs(1)
    if [[1, *x.shape[1:]] for x in example] != list(inputs.values()):
        raise ValueError(f"Metadata inputs {inputs} differ from the pipeline's")
    base = Path(path)
    package = base if base.suffix == ".mlpackage" else base.parent / f"{base.name}.mlpackage"
    package.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        _conversion_warning_filters()
        with torch.no_grad():
            traced = torch.jit.trace(step, example)
        model = ct.convert(
            traced,
            inputs=[
                ct.TensorType(name=n, shape=tuple(s), dtype=np.float32) for n, s in inputs.items()
            ],
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
            convert_to="mlprogram",
            compute_units=ct.ComputeUnit.ALL,
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=getattr(ct.precision, precision.upper()),
        )
        model.author, model.license = "sleepstream", metadata.model_license
        model.version, model.short_description = metadata.version, metadata.summary()
        stored = {METADATA_KEY: metadata.to_json(indent=None), **metadata.flat()}
        stored |= {"variant": metadata.variant, "precision": precision}
        model.user_defined_metadata.update(stored)
        for name in inputs:
            model.input_description[name] = IO_DESCRIPTIONS[name.replace(STATE_INPUT, "state")]
        for name in outputs:
            model.output_description[name] = IO_DESCRIPTIONS[name]
        with atomic_directory(package) as partial_package:
            model.save(str(partial_package))
    return {"mlpackage": str(package)}


def check_coreml(
    path: str | Path,
    metadata: ModelMetadata,
    *,
    net: SleepNet | None = None,
    inputs: Mapping[str, NDArray[np.floating]] | None = None,
    stages: StageGRU | None = None,
) -> dict[str, Any]:
    """Check an exported ``.mlpackage`` as far as this machine allows; return what was checked:
    the inputs, outputs and stored metadata against ``metadata`` (else ``ValueError``); with
    ``net`` (and ``stages``) and a short stretch of ``inputs``, :func:`coreml_parity` in Python
    (``mil_max_abs_diff``) and on macOS with Core ML (``runtime_max_abs_diff``)."""
    spec = ct.utils.load_spec(str(path))
    got = tuple(
        {f.name: [int(d) for d in f.type.multiArrayType.shape] for f in features}
        for features in (spec.description.input, spec.description.output)
    )
    for kind, g, w in zip(("inputs", "outputs"), got, _shapes(metadata), strict=True):
        if list(g.items()) != list(w.items()):
            raise ValueError(f"{path}: {kind} {g}, expected {w}")
    stored = spec.description.metadata.userDefined.get(METADATA_KEY)
    if stored is None or ModelMetadata.from_json(stored) != metadata:
        raise ValueError(f"{path}: stored metadata differs from the model's metadata")
    report: dict[str, Any] = {
        "path": str(path),
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "inputs": got[0],
        "outputs": got[1],
        "not_checked": "Core ML runtime predictions need macOS",
    }
    if net is not None and inputs is not None:
        report["mil_epochs"] = len(inputs["hr"])
        report["mil_max_abs_diff"] = coreml_parity(net, path, metadata, inputs, stages)
        if sys.platform == "darwin":
            del report["not_checked"]
            report["runtime_max_abs_diff"] = coreml_parity(
                net, path, metadata, inputs, stages, runtime=True
            )
    return report


def coreml_parity(
    net: SleepNet,
    package: str | Path,
    metadata: ModelMetadata,
    inputs: Mapping[str, NDArray[np.floating]],
    stages: StageGRU | None = None,
    *,
    runtime: bool = False,
) -> float:
    """:func:`~sleepstream.pipeline.max_abs_diff` of one stream run through the package
    (described by ``metadata``) and through the torch pipeline of ``net`` (and ``stages``):
    the saved program evaluated in Python, or with ``runtime`` Core ML's predictions (macOS)."""
    reference = scan_torch(net, metadata.variant, inputs, stages)
    wanted = [n for n in metadata.outputs() if n in PROBABILITY_OUTPUTS]
    if set(wanted) != set(PROBABILITY_OUTPUTS) & set(reference):
        raise ValueError(f"{package}: outputs {wanted}, the torch pipeline's {sorted(reference)}")
    if runtime:
        model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.ALL)
        names, predict = [n for n in _shapes(metadata)[0] if n != STATE_INPUT], model.predict
    else:
        spec = ct.utils.load_spec(str(package))
        weights = Path(package) / "Data" / "com.apple.CoreML" / "weights"
        main = load_mil_program(spec, spec.specificationVersion, str(weights)).functions["main"]
        names, predict = list(main.inputs), partial(_run_main, main)

    def run(feed: dict[str, NDArray[np.float32]], state: NDArray[np.float32]) -> Any:
        return predict({**{n: feed[n] for n in names if n in feed}, STATE_INPUT: state})

    state = initial_state_from_layout(metadata.state_layout)
    return max_abs_diff(scan(run, state, inputs, wanted), reference)


def _run_main(main: Any, feeds: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Output name -> value of a saved program's ``main`` function for input name -> value,
    evaluated op by op: each op by the code coremltools constant-folds it with (:func:`_fold`),
    but for the three ops without such code, evaluated here only in the forms the converter
    emits (others raise): ``while_loop`` (the GRU), ``scatter`` and ``conv`` (the counts)."""
    env = {v: np.asarray(feeds[n], np.float32) for n, v in main.inputs.items()}
    coreml_log = logging.getLogger("coremltools")
    level = coreml_log.level
    coreml_log.setLevel(logging.ERROR)  # topk's int64 indices stored as int32, each time
    try:
        with Function({}, opset_version=main.opset_version), np.errstate(all="ignore"):
            values = _run_block(main, env, [])
    finally:
        coreml_log.setLevel(level)
    return {v.name: np.asarray(x) for v, x in zip(main.outputs, values, strict=True)}


def _run_block(block: Any, outer: dict[Any, Any], loop: list[Any]) -> list[Any]:
    """The values of ``block``'s outputs, its inputs bound to ``loop`` within ``outer``."""
    env = {**outer, **dict(zip(block.inputs if loop else (), loop, strict=True))}

    def value(var: Any) -> Any:
        if isinstance(var, list | tuple):
            return [value(v) for v in var]
        if var not in env and var.val is None:
            raise ValueError(f"MIL variable {var.name!r} has no value")
        return env.get(var, var.val)

    for op in block.operations:
        if op.op_type == "const":
            env[op.outputs[0]] = op.outputs[0].val
            continue
        args = {name: value(v) for name, v in op.inputs.items()}
        if op.op_type == "while_loop":
            cond, body = op.blocks
            values = args["loop_vars"]
            while np.all(_run_block(cond, env, values)[0]):
                values = _run_block(body, env, values)
        elif op.op_type in ("scatter", "conv"):
            values = [_scatter(**args) if op.op_type == "scatter" else _conv(**args)]
        else:
            values = _fold(op.op_type, args)
        env.update(zip(op.outputs, values, strict=True))
    return [env[v] for v in block.outputs]


def _fold(op_type: str, args: dict[str, Any]) -> list[Any]:
    """The value of a MIL op of constant ``args``, computed by coremltools."""

    def const(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(mb.const(val=np.asarray(x)) for x in v)
        if np.ndim(v) == 0 and np.asarray(v).dtype == np.bool_:
            return bool(v)  # NumPy 2.4 rejects keepdims=np.True_ in reductions
        return v

    result = getattr(mb, op_type)(**{k: const(v) for k, v in args.items()})
    values = [r.val for r in (result if isinstance(result, list | tuple) else [result])]
    if any(v is None for v in values):
        raise NotImplementedError(f"coremltools has no reference evaluation of MIL op {op_type!r}")
    return [np.asarray(v) for v in values]


def _scatter(data: Any, indices: Any, updates: Any, axis: Any, mode: Any, **_: Any) -> Any:
    """MIL ``scatter`` in ``add`` or ``update`` mode."""
    out = np.array(data, copy=True)
    view, rows = np.moveaxis(out, int(axis), 0), np.moveaxis(updates, int(axis), 0)
    if str(mode) == "add":
        np.add.at(view, np.atleast_1d(indices), rows)
    elif str(mode) == "update":
        view[np.atleast_1d(indices)] = rows
    else:
        raise NotImplementedError(f"MIL scatter mode {mode!r}")
    return out


def _conv(
    x: Any, weight: Any, strides: Any, pad_type: Any, dilations: Any, groups: Any, **kw: Any
) -> Any:
    """MIL ``conv``, 1-D, one group, stride and dilation 1, ``valid`` padding, no bias."""
    form = (x.ndim, int(groups), *np.ravel(strides), *np.ravel(dilations), str(pad_type))
    if form != (3, 1, 1, 1, "valid") or kw.get("bias") is not None:
        raise NotImplementedError(f"MIL conv of this form: {form}, bias {kw.get('bias')}")
    windows = np.lib.stride_tricks.sliding_window_view(x, weight.shape[2], axis=2)
    out = np.einsum("bclk,ock->bol", windows.astype(np.float32), weight.astype(np.float32))
    return out.astype(x.dtype)  # accumulated in float32, stored in the program's precision
