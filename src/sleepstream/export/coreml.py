"""Core ML export of the whole pipeline step, and the checks that can run without a Mac.

The converted graph is :func:`sleepstream.pipeline.pipeline_step` in the variant named by the
metadata (``"raw"`` or ``"counts"``), traced with ``torch.jit.trace`` (coremltools 9 cannot
convert the GRU from ``torch.export``), batch size 1. Every input and output is float32; NaN
marks missing data in the inputs and in the state:

==========  ===============  ==================================================================
name        shape            meaning
==========  ===============  ==================================================================
accel       (1, 1500)        raw variant only: z acceleration (g) on the 50 Hz grid from
                             ``start + counts_delay_seconds`` to ``start + 30 s +
                             counts_delay_seconds``, NaN where missing
counts      (1, 2)           the epoch's two 15 s activity counts, NaN where missing (raw
                             variant: where NaN, the counts computed from ``accel``)
hr          (1, 30)          the epoch's heart-rate samples (bpm) in time order, NaN padded
hr_offset   (1, 30)          their times in seconds after the epoch's start, NaN padded
prev_state  (1, state_size)  the previous epoch's ``new_state``; for a new stream, the state
                             built from ``metadata.state_layout``
p_sleep     (1,)             probability that the epoch is sleep
new_state   (1, state_size)  state to pass as ``prev_state`` with the next epoch
features    (1, 29)          the epoch's causal features in ``metadata.all_feature_names``
                             order (for debugging)
p_stage3    (1, 3)           files with a stage network only: wake / NREM / REM probabilities
p_stage4    (1, 4)           files with a stage network only: wake / light / deep / REM
==========  ===============  ==================================================================

The state input is ``prev_state``, not ``state`` as in ONNX: ``state`` is a reserved word in
Core ML's program format (stateful models) and the converter would rename it.

One file: an ML Program ``.mlpackage`` (iOS 16 / watchOS 9 and later, compute units ALL,
float32 by default; float16 has range limits, see :func:`export_coreml`). The legacy
neural-network ``.mlmodel`` is not written: every watch that runs watchOS 9 (Series 4 and
later) takes the ML Program. Core ML itself (predictions) exists only on macOS; on Linux :func:`check_coreml`
checks the saved spec and metadata, and evaluates the saved program numerically with
coremltools' own per-operation reference implementations (:func:`mil_scan`,
:func:`check_coreml_parity`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import coremltools as ct
import numpy as np
import torch
from coremltools.converters.mil.frontend.milproto.load import load as load_mil_program
from coremltools.converters.mil.mil import Builder as mb  # noqa: N813 (coremltools convention)
from coremltools.converters.mil.mil import Function
from numpy.typing import NDArray

from sleepstream.export.onnx import (
    PROBABILITY_OUTPUTS,
    inference_copy,
    scan_torch,
    stage_inference_copy,
)
from sleepstream.models.card import METADATA_KEY, ModelMetadata
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import atomic_directory
from sleepstream.pipeline import STAGE_OUTPUT_NAMES, PipelineStep, pipeline_step

log = logging.getLogger(__name__)

STATE_INPUT = "prev_state"
"""Core ML name of the pipeline's ``state`` input."""
OUTPUT_NAMES = ("p_sleep", "new_state", "features")
DEPLOYMENT_TARGET = "iOS16 / watchOS9 (Core ML specification 7)"

Precision = Literal["float32", "float16"]
Arrays = Mapping[str, NDArray[np.floating]]

INPUT_DESCRIPTIONS = {
    "accel": "z acceleration (g) on the 50 Hz grid from start + counts_delay_seconds to "
    "start + 30 s + counts_delay_seconds (1,500 samples); NaN where missing.",
    "counts": "The epoch's two 15 s activity counts; NaN where missing (raw variant: the "
    "counts computed from accel are used where NaN).",
    "hr": "The epoch's heart-rate samples (bpm) in time order; unused slots NaN.",
    "hr_offset": "Times of the hr samples in seconds after the epoch's start; unused slots NaN.",
    STATE_INPUT: "new_state of the previous epoch; for a new stream, the state built from the "
    "'state_layout' metadata entry (each part filled with its 'initial' value, NaN included).",
}
OUTPUT_DESCRIPTIONS = {
    "p_sleep": "Probability that the epoch is sleep; wake when below the chosen threshold.",
    "new_state": "State to pass as prev_state with the next epoch.",
    "features": "The epoch's causal features in the order of the 'all_feature_names' metadata "
    "entry; NaN where a feature cannot be computed (for debugging).",
    "p_stage3": "Probabilities of wake, NREM and REM for the epoch (sum 1).",
    "p_stage4": "Probabilities of wake, light (N1, N2), deep (N3) and REM sleep (sum 1).",
}


def coreml_name(name: str) -> str:
    """The Core ML name of a pipeline input (``state`` becomes ``prev_state``)."""
    return STATE_INPUT if name == "state" else name


def _conversion_warning_filters() -> None:
    """Silence warnings about the tools' own internals, none about the converted model.

    ``torch.jit.trace`` is deprecated in torch 2.13 but is the route coremltools 9 supports
    for GRUs; the GRU's input check and the baseline quantile's partial-sort length (a shape)
    emit ``TracerWarning`` about Python values that are constant for the fixed input and state
    shapes; coremltools leaves a temporary weights folder to the garbage collector
    (``ResourceWarning``). In a float16 conversion, NumPy reports the overflow of the graph's
    out-of-range constants, the ``1e9`` stand-ins for "no value" before a minimum, maximum or
    partial sort and the float32 limits of one-sided ``clamp``: they become infinities, which
    serve the same purpose.
    """
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
    warnings.filterwarnings(
        "ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn"
    )
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"sleepstream\.step")
    warnings.filterwarnings("ignore", message=r"Implicitly cleaning up", category=ResourceWarning)
    warnings.filterwarnings(
        "ignore",
        message=r"overflow encountered in cast",
        category=RuntimeWarning,
        module=r"coremltools\.converters\.mil",
    )


def _trace(step: PipelineStep) -> torch.jit.ScriptModule:
    with torch.no_grad():
        return torch.jit.trace(step, step.example_inputs(1))


def _input_shapes(metadata: ModelMetadata) -> dict[str, list[int]]:
    """Core ML name -> shape with batch 1 of every input, in order, from ``metadata.inputs``."""
    return {
        coreml_name(str(i["name"])): [1, *(int(d) for d in i["shape"][1:])] for i in metadata.inputs
    }


def _output_shapes(metadata: ModelMetadata) -> dict[str, list[int]]:
    shapes = {
        "p_sleep": [1],
        "new_state": [1, metadata.state_size],
        "features": [1, len(metadata.all_feature_names)],
    }
    for name, about in metadata.stages.get("outputs", {}).items():
        shapes[name] = [1, len(about["classes"])]
    return shapes


def _convert(
    traced: torch.jit.ScriptModule, metadata: ModelMetadata, precision: Precision
) -> ct.models.MLModel:
    # ct.convert mutates the TensorType objects it is given: build fresh ones for every call.
    return ct.convert(
        traced,
        inputs=[
            ct.TensorType(name=name, shape=tuple(shape), dtype=np.float32)
            for name, shape in _input_shapes(metadata).items()
        ],
        outputs=[ct.TensorType(name=n, dtype=np.float32) for n in _output_shapes(metadata)],
        convert_to="mlprogram",
        compute_units=ct.ComputeUnit.ALL,
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=(
            ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16
        ),
    )


def _annotate(model: ct.models.MLModel, metadata: ModelMetadata, precision: str) -> None:
    model.author = "sleepstream"
    model.license = metadata.model_license
    model.version = metadata.version
    model.short_description = (
        f"sleepstream {metadata.architecture} pipeline ({metadata.variant} variant, "
        f"{precision}): p(sleep) for one 30 s epoch of Apple Watch "
        f"{'acceleration, ' if metadata.variant == 'raw' else ''}activity counts and "
        f"heart-rate samples, with a recurrent state. Training data: {metadata.data_citation} "
        f"License {metadata.data_license}."
    )
    model.user_defined_metadata[METADATA_KEY] = metadata.to_json(indent=None)
    for key, value in metadata.flat().items():
        model.user_defined_metadata[key] = value
    model.user_defined_metadata["variant"] = metadata.variant
    model.user_defined_metadata["precision"] = precision
    for name in _input_shapes(metadata):
        model.input_description[name] = INPUT_DESCRIPTIONS[name]
    for name in _output_shapes(metadata):
        model.output_description[name] = OUTPUT_DESCRIPTIONS[name]


def export_coreml(
    net: SleepNet,
    path: str | Path,
    metadata: ModelMetadata,
    *,
    precision: Precision = "float32",
    stages: StageGRU | None = None,
) -> dict[str, str]:
    """Write the pipeline of ``net`` (``metadata.variant``) as ``path.mlpackage`` (ML Program,
    iOS 16 / watchOS 9 and later) with the metadata inside.

    ``path`` is given without extension. Returns the written path under ``"mlpackage"``.
    ``precision`` is the ML Program's compute precision; the inputs, outputs and the state are float32 either way.
    ``"float32"`` keeps parity with torch and ONNX (Core ML then runs it on the CPU or GPU,
    ample for one step per 30 s). ``"float16"`` lets the Neural Engine run it, but some of the
    features' window sums exceed the float16 range (65,504) under sustained activity or a high
    heart rate: the 5- and 15-minute sums of squared heart-rate deviations from 70 bpm, the
    30-minute count total. The features then become infinite, and p(sleep) and the network's
    state NaN from then on. With the stage network ``stages``, the program has its outputs
    ``p_stage3`` and ``p_stage4`` too. Raises ``ValueError`` when ``metadata`` does not
    describe the pipeline of ``net`` (and ``stages``).
    """
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16', got {precision!r}")
    metadata.check_matches(net, stages)
    step = pipeline_step(inference_copy(net), metadata.variant, stage_inference_copy(stages))
    if step.state_size != metadata.state_size:
        raise ValueError(
            f"Metadata state_size {metadata.state_size} differs from the pipeline's "
            f"{step.state_size}"
        )
    shapes = {
        coreml_name(n): [1, *x.shape[1:]]
        for n, x in zip(step.input_names, step.example_inputs(1), strict=True)
    }
    if list(shapes.items()) != list(_input_shapes(metadata).items()):
        raise ValueError(
            f"Metadata inputs {_input_shapes(metadata)} differ from the pipeline's {shapes}"
        )
    base = Path(path)
    if base.suffix == ".mlpackage":
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    with warnings.catch_warnings():
        _conversion_warning_filters()
        traced = _trace(step)
        program = _convert(traced, metadata, precision)
        _annotate(program, metadata, precision)
        package = base.parent / f"{base.name}.mlpackage"
        with atomic_directory(package) as partial:
            program.save(str(partial))
        written["mlpackage"] = str(package)
    return written


def read_coreml_metadata(path: str | Path) -> ModelMetadata:
    """The :class:`ModelMetadata` stored in an ``.mlpackage``."""
    spec = ct.utils.load_spec(str(path))
    stored = spec.description.metadata.userDefined
    if METADATA_KEY not in stored:
        raise ValueError(f"{path}: no {METADATA_KEY!r} entry in the Core ML user-defined metadata")
    return ModelMetadata.from_json(stored[METADATA_KEY])


def _feature_shapes(features: Any) -> dict[str, list[int]]:
    return {f.name: [int(d) for d in f.type.multiArrayType.shape] for f in features}


def check_coreml(
    path: str | Path,
    metadata: ModelMetadata,
    *,
    net: SleepNet | None = None,
    inputs: Arrays | None = None,
    stages: StageGRU | None = None,
) -> dict[str, Any]:
    """Check an exported Core ML file as far as this machine allows; return what was checked.

    Always: the spec loads, the input and output names, order and shapes match ``metadata``
    (``inputs``, ``state_size``), the stored metadata equals ``metadata``. With ``net`` and
    ``inputs`` (one stream's per-epoch arrays, see :func:`mil_scan`; a short stretch): for an
    ``.mlpackage``, p(sleep) (and the stage probabilities of a file with a stage network,
    ``stages``) of the saved program against the torch pipeline
    (:func:`check_coreml_parity`, reported as ``mil_max_abs_diff``); on macOS, for either
    format, the Core ML runtime's own predictions against torch (``runtime_max_abs_diff``).
    Raises ``ValueError`` naming the first mismatch.
    """
    path = Path(path)
    spec = ct.utils.load_spec(str(path))
    ct.models.MLModel(str(path), skip_model_load=True)
    got_inputs = _feature_shapes(spec.description.input)
    got_outputs = _feature_shapes(spec.description.output)
    want_inputs = _input_shapes(metadata)
    if want_inputs.get(STATE_INPUT) != [1, metadata.state_size]:
        raise ValueError(
            f"metadata inputs {want_inputs} lack {STATE_INPUT} of shape "
            f"[1, {metadata.state_size}] (state_size)"
        )
    if list(got_inputs.items()) != list(want_inputs.items()):
        raise ValueError(f"{path}: inputs {got_inputs}, expected {want_inputs}")
    want_outputs = _output_shapes(metadata)
    if got_outputs != want_outputs:
        raise ValueError(f"{path}: outputs {got_outputs}, expected {want_outputs}")
    stored = read_coreml_metadata(path)
    if stored != metadata:
        raise ValueError(f"{path}: stored metadata differs from the model's metadata")
    report: dict[str, Any] = {
        "path": str(path),
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "variant": metadata.variant,
        "inputs": got_inputs,
        "outputs": got_outputs,
        "metadata_round_trip": True,
    }
    if net is not None and inputs is not None:
        if path.suffix == ".mlpackage":
            report["mil_epochs"] = len(inputs["hr"])
            report["mil_max_abs_diff"] = check_coreml_parity(net, path, inputs, stages)
        if sys.platform == "darwin":
            report["runtime_max_abs_diff"] = _runtime_parity(net, path, metadata, inputs, stages)
    if "runtime_max_abs_diff" not in report:
        report["not_checked"] = (
            "Core ML runtime predictions (CPU, GPU, Neural Engine) need macOS; run "
            "check_coreml on a Mac to compare them with torch"
        )
    return report


def initial_state(metadata: ModelMetadata) -> NDArray[np.float32]:
    """The ``(1, state_size)`` state of a new stream, built from ``metadata.state_layout``."""
    parts = [
        np.full(int(p["length"]), math.nan if p["initial"] == "nan" else float(p["initial"]))
        for p in metadata.state_layout
    ]
    state = np.concatenate(parts).astype(np.float32)[None, :]
    if state.shape[1] != metadata.state_size:
        raise ValueError(
            f"metadata state_layout covers {state.shape[1]} values, state_size is "
            f"{metadata.state_size}"
        )
    return state


def _epoch_feeds(metadata: ModelMetadata, inputs: Arrays) -> list[dict[str, NDArray[np.float32]]]:
    """Per-epoch ``{input name: (1, ...) array}`` for every input but the state."""
    shapes = _input_shapes(metadata)
    del shapes[STATE_INPUT]
    missing = sorted(set(shapes) - set(inputs))
    if missing:
        raise ValueError(f"inputs lack {missing} ({metadata.variant} variant)")
    arrays = {name: np.asarray(inputs[name], dtype=np.float32) for name in shapes}
    n_epochs = len(arrays["hr"])
    for name, shape in shapes.items():
        if arrays[name].shape != (n_epochs, *shape[1:]):
            raise ValueError(
                f"inputs[{name!r}] has shape {arrays[name].shape}, expected "
                f"({n_epochs}, {', '.join(str(d) for d in shape[1:])})"
            )
    return [{name: a[t : t + 1] for name, a in arrays.items()} for t in range(n_epochs)]


def mil_scan(package: str | Path, inputs: Arrays) -> dict[str, NDArray[np.float32]]:
    """The saved program of ``package`` run over one stream's epochs, evaluated in Python.

    ``inputs`` holds the pipeline's inputs per epoch: ``counts (T, 2)``, ``hr`` and
    ``hr_offset (T, 30)``, and for the raw variant ``accel (T, 1500)``; NaN where missing. The
    stream starts from the metadata's initial state. Returns ``p_sleep (T,)``,
    ``features (T, 29)``, the state after each epoch ``(T, state_size)`` and any stage outputs
    (``p_stage3 (T, 3)``, ``p_stage4 (T, 4)``), as :func:`sleepstream.export.onnx.scan_torch`.

    The ``.mlpackage`` is read back (program and weight file) with coremltools' MIL loader and
    run op by op with the numpy reference implementation coremltools keeps for each operation
    (its constant-folding code), in the program's own precision. This checks the conversion
    and the saved weights on any platform; it is not the Core ML runtime, whose kernels (and
    the Neural Engine's float16 arithmetic) only a Mac can run. Slow (a fraction of a second
    per epoch): pass a stretch, not a whole night.
    """
    package = Path(package)
    metadata = read_coreml_metadata(package)
    program = _MilProgram(package)
    state = initial_state(metadata)
    shapes = _output_shapes(metadata)
    stage_names = [n for n in shapes if n in STAGE_OUTPUT_NAMES.values()]
    out: dict[str, list[NDArray[np.float32]]] = {
        name: [] for name in ("p_sleep", "features", "state", *stage_names)
    }
    for feed in _epoch_feeds(metadata, inputs):
        result = program.run({**feed, STATE_INPUT: state})
        state = np.asarray(result["new_state"], dtype=np.float32).reshape(1, -1)
        out["p_sleep"].append(np.asarray(result["p_sleep"], dtype=np.float32).reshape(-1))
        out["features"].append(np.asarray(result["features"], dtype=np.float32).reshape(-1))
        out["state"].append(state[0])
        for name in stage_names:
            out[name].append(np.asarray(result[name], dtype=np.float32).reshape(-1))
    n_features = len(metadata.all_feature_names)
    scanned = {
        "p_sleep": np.concatenate(out["p_sleep"]) if out["p_sleep"] else np.zeros(0, np.float32),
        "features": np.asarray(out["features"], dtype=np.float32).reshape(-1, n_features),
        "state": np.asarray(out["state"], dtype=np.float32).reshape(-1, metadata.state_size),
    }
    for name in stage_names:
        scanned[name] = np.asarray(out[name], dtype=np.float32).reshape(-1, shapes[name][1])
    return scanned


def check_coreml_parity(
    net: SleepNet, package: str | Path, inputs: Arrays, stages: StageGRU | None = None
) -> float:
    """Max |p_coreml - p_torch| over one stream's epochs (``inputs`` as for :func:`mil_scan`),
    over p(sleep) and, with ``stages``, every stage probability.

    The saved program is evaluated in Python (:func:`mil_scan`), the torch pipeline of ``net``
    in the package's variant with :func:`sleepstream.export.onnx.scan_torch`.
    """
    variant = read_coreml_metadata(package).variant
    mil = mil_scan(package, inputs)
    torch_out = scan_torch(net, variant, dict(inputs), stages)
    if set(mil) != set(torch_out):
        raise ValueError(
            f"{package}: outputs {sorted(mil)}, the torch pipeline's {sorted(torch_out)} "
            "(a stage network given for a file without stage outputs, or the reverse)"
        )
    return max(
        _max_abs_diff(mil[n].astype(np.float64), torch_out[n].astype(np.float64))
        for n in PROBABILITY_OUTPUTS
        if n in mil
    )


def _max_abs_diff(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Max |a - b|; infinite where exactly one of the two is NaN or they differ by NaN."""
    diff = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))
    return float(np.max(diff, initial=0.0))


def _runtime_parity(
    net: SleepNet,
    path: Path,
    metadata: ModelMetadata,
    inputs: Arrays,
    stages: StageGRU | None = None,
) -> float:
    """Max |p_coreml - p_torch| with predictions by the Core ML framework (macOS only), over
    p(sleep) and any stage probabilities."""
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
    state = initial_state(metadata)
    feeds = _epoch_feeds(metadata, inputs)
    reference = scan_torch(net, metadata.variant, dict(inputs), stages)
    names = [n for n in PROBABILITY_OUTPUTS if n in reference]
    got: dict[str, list[NDArray[np.float64]]] = {n: [] for n in names}
    for feed in feeds:
        out = model.predict({**feed, STATE_INPUT: state})
        for name in names:
            got[name].append(np.asarray(out[name], dtype=np.float64).reshape(-1))
        state = np.asarray(out["new_state"], dtype=np.float32).reshape(1, -1)
    return max(
        _max_abs_diff(
            np.asarray(got[n]).reshape(reference[n].shape), reference[n].astype(np.float64)
        )
        for n in names
    )


class _IntNarrowingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving value type of int64 into a builtin")


@contextlib.contextmanager
def _without_int_narrowing_notices() -> Iterator[None]:
    """Drop coremltools' notice that an int64 value is stored as int32.

    The reference evaluation of ``topk`` computes its indices (below the state size) as int64
    and stores them as the op's int32 output, logging each time.
    """
    logger = logging.getLogger("coremltools")
    notices = _IntNarrowingFilter()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


class _MilProgram:
    """A saved ML Program evaluated op by op with coremltools' per-op value inference.

    Each operation is rebuilt with constant inputs, which makes coremltools compute its value
    with the same code it uses for constant folding. ``while_loop`` (the converter lowers a GRU
    to one), ``scatter`` and ``conv`` (the counts filter) have no such code and are evaluated
    here. NaN passes through as in NumPy; NumPy's floating-point warnings are silenced.
    """

    def __init__(self, package: Path):
        spec = ct.utils.load_spec(str(package))
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{package}: not an ML Program (.mlpackage)")
        weights = package / "Data" / "com.apple.CoreML" / "weights"
        program = load_mil_program(spec, spec.specificationVersion, str(weights))
        self.main = program.functions["main"]
        self.opset = self.main.opset_version
        self.input_names = tuple(self.main.inputs)
        self.output_names = tuple(v.name for v in self.main.outputs)

    def run(self, feeds: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Output name -> value for input name -> value (every input, with its batch axis)."""
        missing = sorted(set(self.input_names) - set(feeds))
        if missing:
            raise ValueError(f"MIL program inputs {missing} not given")
        env: dict[Any, Any] = {
            var: np.asarray(feeds[name], dtype=np.float32) for name, var in self.main.inputs.items()
        }
        with (
            Function({}, opset_version=self.opset),
            np.errstate(all="ignore"),
            _without_int_narrowing_notices(),
        ):
            self._run(self.main, env)
        return {v.name: np.asarray(env[v]) for v in self.main.outputs}

    @staticmethod
    def _value(env: dict[Any, Any], var: Any) -> Any:
        if isinstance(var, list | tuple):
            return [_MilProgram._value(env, v) for v in var]
        if var in env:
            return env[var]
        if var.val is not None:
            return var.val
        raise ValueError(f"MIL variable {var.name!r} has no value")

    def _run(self, block: Any, env: dict[Any, Any]) -> None:
        for op in block.operations:
            if op.op_type == "const":
                env[op.outputs[0]] = op.outputs[0].val
            elif op.op_type == "while_loop":
                env.update(zip(op.outputs, self._while_loop(op, env), strict=True))
            else:
                args = {name: self._value(env, v) for name, v in op.inputs.items()}
                if op.op_type in _OWN_EVALUATION:
                    values = [_OWN_EVALUATION[op.op_type](**args)]
                else:
                    values = _infer(op.op_type, args)
                env.update(zip(op.outputs, values, strict=True))

    def _while_loop(self, op: Any, env: dict[Any, Any]) -> list[Any]:
        loop = [self._value(env, v) for v in op.inputs["loop_vars"]]
        cond, body = op.blocks
        while True:
            scope = {**env, **dict(zip(cond.inputs, loop, strict=True))}
            self._run(cond, scope)
            if not np.all(scope[cond.outputs[0]]):
                return loop
            scope = {**env, **dict(zip(body.inputs, loop, strict=True))}
            self._run(body, scope)
            loop = [scope[v] for v in body.outputs]


def _infer(op_type: str, args: dict[str, Any]) -> list[Any]:
    consts = {
        name: tuple(mb.const(val=np.asarray(v)) for v in value)
        if isinstance(value, list)
        else _python_bool(value)
        for name, value in args.items()
    }
    result = getattr(mb, op_type)(**consts)
    results = list(result) if isinstance(result, list | tuple) else [result]
    values = [r.val for r in results]
    if any(v is None for v in values):
        raise NotImplementedError(f"coremltools has no reference evaluation of MIL op {op_type!r}")
    return [np.asarray(v) for v in values]


def _python_bool(value: Any) -> Any:
    """A NumPy boolean scalar as ``bool``: NumPy 2.4 rejects ``keepdims=np.True_`` in reductions."""
    if isinstance(value, np.ndarray | np.generic) and value.ndim == 0 and value.dtype == np.bool_:
        return bool(value)
    return value


def _scatter(
    data: NDArray[Any], indices: NDArray[Any], updates: NDArray[Any], axis: int, mode: str, **_: Any
) -> NDArray[Any]:
    out = np.array(data, copy=True)
    index: list[Any] = [slice(None)] * out.ndim
    for k, i in enumerate(np.atleast_1d(indices)):
        index[int(axis)] = int(i)
        update = np.take(updates, k, axis=int(axis))
        if mode == "add":
            out[tuple(index)] += update
        elif mode == "update":
            out[tuple(index)] = update
        else:
            raise NotImplementedError(f"MIL scatter mode {mode!r}")
    return out


def _conv(
    x: NDArray[Any],
    weight: NDArray[Any],
    strides: Any,
    pad_type: Any,
    pad: Any,
    dilations: Any,
    groups: Any,
    bias: NDArray[Any] | None = None,
    **_: Any,
) -> NDArray[Any]:
    """MIL ``conv`` in one dimension, ``x (batch, C_in, length)``, accumulated in float32."""
    x = np.asarray(x)
    weight = np.asarray(weight)
    if x.ndim != 3:
        raise NotImplementedError(f"MIL conv of a {x.ndim - 2}-D input (1-D only)")
    kind = str(np.asarray(pad_type).reshape(-1)[0])
    if kind not in ("valid", "custom"):
        raise NotImplementedError(f"MIL conv pad_type {kind!r}")
    left, right = (int(v) for v in np.asarray(pad).reshape(-1)) if kind == "custom" else (0, 0)
    stride = int(np.asarray(strides).reshape(-1)[0])
    dilation = int(np.asarray(dilations).reshape(-1)[0])
    n_groups = int(np.asarray(groups).reshape(-1)[0])
    c_out, c_in_group, width = weight.shape
    padded = np.pad(x.astype(np.float32), ((0, 0), (0, 0), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (width - 1) * dilation + 1, axis=2)
    windows = windows[:, :, ::stride, ::dilation]  # (batch, C_in, length_out, width)
    w = weight.astype(np.float32)
    c_out_group = c_out // n_groups
    out = np.concatenate(
        [
            np.einsum(
                "bclk,ock->bol",
                windows[:, g * c_in_group : (g + 1) * c_in_group],
                w[g * c_out_group : (g + 1) * c_out_group],
            )
            for g in range(n_groups)
        ],
        axis=1,
    )
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float32)[None, :, None]
    return out.astype(x.dtype)


_OWN_EVALUATION: dict[str, Callable[..., NDArray[Any]]] = {"scatter": _scatter, "conv": _conv}
"""MIL operations without a value inference in coremltools, evaluated here."""
