"""Core ML export of one model step, and the checks that can run without a Mac.

The converted graph is :class:`~sleepstream.export.onnx.StepModule` traced with
``torch.jit.trace`` (coremltools 9 cannot convert the GRU from ``torch.export``), batch size 1:

==========  ===============  =======  ==============================================
name        shape            dtype    meaning
==========  ===============  =======  ==============================================
features    (1, n_features)  float32  raw features in ``metadata.feature_names`` order
prev_state  (1, state_size)  float32  state from the previous epoch (zeros at night start)
p_sleep     (1,)             float32  p(sleep)
new_state   (1, state_size)  float32  state to pass to the next epoch
==========  ===============  =======  ==============================================

The state input is ``prev_state``, not ``state`` as in ONNX: ``state`` is a reserved word in
Core ML's program format (stateful models) and the converter would rename it.

Two files: an ML Program ``.mlpackage`` (iOS 16 / watchOS 9, compute units ALL, float32 by
default) and, when the converter manages it, a legacy neural-network ``.mlmodel`` for older OS
versions. Core ML itself (predictions) exists only on macOS; on Linux :func:`check_coreml`
checks the saved spec and metadata, and evaluates the saved program numerically with
coremltools' own per-operation reference implementations (:func:`check_coreml_parity`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import coremltools as ct
import numpy as np
import torch
from coremltools.converters.mil.frontend.milproto.load import load as load_mil_program
from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
from coremltools.converters.mil.mil import Builder as mb  # noqa: N813 (coremltools convention)
from coremltools.converters.mil.mil import Function
from numpy.typing import NDArray

from sleepstream.export.metadata import METADATA_KEY, ModelMetadata
from sleepstream.export.onnx import StepModule, inference_copy, torch_step_probabilities
from sleepstream.models.net import SleepNet

log = logging.getLogger(__name__)

INPUT_NAMES = ("features", "prev_state")
OUTPUT_NAMES = ("p_sleep", "new_state")
DEPLOYMENT_TARGET = "iOS16 / watchOS9 (Core ML specification 7)"

Precision = Literal["float32", "float16"]

INPUT_DESCRIPTIONS = {
    "features": "Raw features of the 30 s epoch that just closed, in the order of the "
    "'feature_names' metadata entry; NaN where a feature could not be computed.",
    "prev_state": "new_state of the previous epoch; zeros at the start of a night.",
}
OUTPUT_DESCRIPTIONS = {
    "p_sleep": "Probability that the epoch is sleep; wake when below the chosen threshold.",
    "new_state": "Recurrent state to pass as prev_state with the next epoch.",
}


@contextlib.contextmanager
def _int_cast_fix() -> Iterator[None]:
    """Work around coremltools 9.0 failing on ``aten::Int`` of a shape with NumPy >= 2.4.

    Its converter calls ``int()`` on a one-element array, which NumPy 2.4 turned from a
    deprecation into ``TypeError`` (apple/coremltools#2633, fixed after 9.0). The GRU's
    ``reshape(batch, ...)`` traces into such a node. The fixed converter is installed only for
    the duration of a conversion.
    """
    registry = _TORCH_OPS_REGISTRY.name_to_func_mapping
    original = registry.get("int")
    if original is None:
        yield
        return

    def fixed_int(context: Any, node: Any) -> None:
        x = context[node.inputs[0]]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=int(np.asarray(x.val).item()), name=node.name), node.name)
        else:
            original(context, node)

    registry["int"] = fixed_int
    try:
        yield
    finally:
        registry["int"] = original


def _conversion_warning_filters() -> None:
    """Silence warnings about the tools' own internals, none about the converted model.

    ``torch.jit.trace`` is deprecated in torch 2.13 but is the route coremltools 9 supports
    for GRUs; the GRU's input check emits a ``TracerWarning`` about a Python boolean that is
    constant for our fixed shapes; coremltools leaves a temporary weights folder to the
    garbage collector (``ResourceWarning``).
    """
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
    warnings.filterwarnings(
        "ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn"
    )
    warnings.filterwarnings("ignore", message=r"Implicitly cleaning up", category=ResourceWarning)


def _trace(net: SleepNet) -> torch.jit.ScriptModule:
    step = StepModule(inference_copy(net)).eval()
    example = (torch.zeros(1, net.n_features), torch.zeros(1, net.state_size))
    with torch.no_grad():
        return torch.jit.trace(step, example)


def _convert(
    traced: torch.jit.ScriptModule,
    metadata: ModelMetadata,
    convert_to: Literal["mlprogram", "neuralnetwork"],
    precision: Precision,
) -> ct.models.MLModel:
    # ct.convert mutates the TensorType objects it is given: build fresh ones for every call.
    inputs = [
        ct.TensorType(name="features", shape=(1, metadata.n_features), dtype=np.float32),
        ct.TensorType(name="prev_state", shape=(1, metadata.state_size), dtype=np.float32),
    ]
    if convert_to == "mlprogram":
        outputs = [ct.TensorType(name=n, dtype=np.float32) for n in OUTPUT_NAMES]
        options: dict[str, Any] = {
            "minimum_deployment_target": ct.target.iOS16,
            "compute_precision": (
                ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16
            ),
        }
    else:
        outputs = [ct.TensorType(name=n) for n in OUTPUT_NAMES]
        options = {}
    with _int_cast_fix():
        return ct.convert(
            traced,
            inputs=inputs,
            outputs=outputs,
            convert_to=convert_to,
            compute_units=ct.ComputeUnit.ALL,
            **options,
        )


def _annotate(model: ct.models.MLModel, metadata: ModelMetadata, precision: str) -> None:
    model.author = "sleepstream"
    model.license = metadata.model_license
    model.version = metadata.version
    model.short_description = (
        f"sleepstream {metadata.architecture}: p(sleep) for one 30 s epoch of Apple Watch "
        f"heart-rate and activity features, with a recurrent state ({precision}). "
        f"Training data: {metadata.data_citation} License {metadata.data_license}."
    )
    model.user_defined_metadata[METADATA_KEY] = metadata.to_json(indent=None)
    for key, value in metadata.flat().items():
        model.user_defined_metadata[key] = value
    model.user_defined_metadata["precision"] = precision
    for name, text in INPUT_DESCRIPTIONS.items():
        model.input_description[name] = text
    for name, text in OUTPUT_DESCRIPTIONS.items():
        model.output_description[name] = text


def export_coreml(
    net: SleepNet,
    path: str | Path,
    metadata: ModelMetadata,
    *,
    precision: Precision = "float32",
    neuralnetwork: bool = True,
) -> dict[str, str]:
    """Write ``path.mlpackage`` (ML Program) and, if it converts, ``path.mlmodel``.

    ``path`` is given without extension. Returns the written paths under ``"mlpackage"`` and
    ``"mlmodel"``; when the neural-network conversion fails the error is logged and returned
    under ``"mlmodel_error"`` instead. ``precision="float16"`` lets the
    Neural Engine run the model, at about 4e-4 deviation in p(sleep); float32 keeps parity
    with torch and ONNX (Core ML then runs it on the CPU or GPU, ample for one step per 30 s).
    """
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16', got {precision!r}")
    metadata.check_matches(net)
    base = Path(path)
    if base.suffix in (".mlpackage", ".mlmodel"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    with warnings.catch_warnings():
        _conversion_warning_filters()
        traced = _trace(net)
        program = _convert(traced, metadata, "mlprogram", precision)
        _annotate(program, metadata, precision)
        package = base.parent / f"{base.name}.mlpackage"
        program.save(str(package))
        written["mlpackage"] = str(package)
        if neuralnetwork:
            try:
                legacy = _convert(traced, metadata, "neuralnetwork", "float32")
                _annotate(legacy, metadata, "float32")
                mlmodel = base.parent / f"{base.name}.mlmodel"
                legacy.save(str(mlmodel))
                written["mlmodel"] = str(mlmodel)
            except Exception as err:  # the legacy format is optional: report, do not fail
                log.warning("Core ML neural-network (.mlmodel) conversion failed: %r", err)
                written["mlmodel_error"] = f"{type(err).__name__}: {err}"
    return written


def read_coreml_metadata(path: str | Path) -> ModelMetadata:
    """The :class:`ModelMetadata` stored in an ``.mlpackage`` or ``.mlmodel``."""
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
    features: NDArray[np.floating] | None = None,
) -> dict[str, Any]:
    """Check an exported Core ML file as far as this machine allows; return what was checked.

    Always: the spec loads, input/output names and shapes, stored metadata equals
    ``metadata``. With ``net`` and ``features`` (``(T, n_features)`` in the net's order):
    for an ``.mlpackage``, p(sleep) of the saved program against ``net.step`` (see
    :func:`check_coreml_parity`); on macOS, for either format, the Core ML runtime's own
    predictions against ``net.step``. Raises ``ValueError`` naming the first mismatch.
    """
    path = Path(path)
    spec = ct.utils.load_spec(str(path))
    ct.models.MLModel(str(path), skip_model_load=True)
    inputs = _feature_shapes(spec.description.input)
    outputs = _feature_shapes(spec.description.output)
    want_inputs = {"features": [1, metadata.n_features], "prev_state": [1, metadata.state_size]}
    if inputs != want_inputs:
        raise ValueError(f"{path}: inputs {inputs}, expected {want_inputs}")
    want_outputs = {"p_sleep": [1], "new_state": [1, metadata.state_size]}
    # The neural-network format leaves output shapes unspecified (empty): check names only.
    shapes_ok = all(outputs.get(n) in (want, []) for n, want in want_outputs.items())
    if list(outputs) != list(OUTPUT_NAMES) or not shapes_ok:
        raise ValueError(f"{path}: outputs {outputs}, expected {want_outputs}")
    stored = read_coreml_metadata(path)
    if stored != metadata:
        raise ValueError(f"{path}: stored metadata differs from the model's metadata")
    report: dict[str, Any] = {
        "path": str(path),
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "inputs": inputs,
        "outputs": outputs,
        "metadata_round_trip": True,
    }
    if net is not None and features is not None:
        if path.suffix == ".mlpackage":
            report["mil_epochs"] = len(features)
            report["mil_max_abs_diff"] = check_coreml_parity(net, path, features)
        if sys.platform == "darwin":
            report["runtime_max_abs_diff"] = _runtime_parity(net, path, features)
    if "runtime_max_abs_diff" not in report:
        report["not_checked"] = (
            "Core ML runtime predictions (CPU, GPU, Neural Engine) need macOS; run "
            "check_coreml on a Mac to compare them with torch"
        )
    return report


def check_coreml_parity(
    net: SleepNet, package: str | Path, features: NDArray[np.floating]
) -> float:
    """Max |p_coreml - p_torch| over ``features (T, F)``, evaluating the saved program in Python.

    The ``.mlpackage`` is read back (program and weight file) with coremltools' MIL loader and
    run step by step with the numpy reference implementation coremltools keeps for each
    operation (its constant-folding code). This checks the conversion and the saved weights on
    any platform; it is not the Core ML runtime, whose kernels (and the Neural Engine's float16
    arithmetic) only a Mac can run. About 40 ms per epoch: pass a stretch, not a whole night.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != net.n_features:
        raise ValueError(
            f"features of shape {features.shape}: expected (epochs, {net.n_features}) in the "
            "order of net.feature_names"
        )
    program = _MilProgram(Path(package))
    state = np.zeros((1, net.state_size), dtype=np.float32)
    p_mil = np.empty(len(features), dtype=np.float64)
    for t, row in enumerate(features):
        p, state = program.step(row[None, :], state)
        p_mil[t] = float(np.asarray(p).reshape(-1)[0])
    return float(np.max(np.abs(p_mil - torch_step_probabilities(net, features)), initial=0.0))


def _runtime_parity(net: SleepNet, package: Path, features: NDArray[np.floating]) -> float:
    """Max |p_coreml - p_torch| with predictions by the Core ML framework (macOS only)."""
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.ALL)
    state = np.zeros((1, net.state_size), dtype=np.float32)
    p_runtime = np.empty(len(features), dtype=np.float64)
    for t, row in enumerate(np.asarray(features, dtype=np.float32)):
        out = model.predict({"features": row[None, :], "prev_state": state})
        p_runtime[t] = float(np.asarray(out["p_sleep"]).reshape(-1)[0])
        state = np.asarray(out["new_state"], dtype=np.float32).reshape(1, -1)
    return float(np.max(np.abs(p_runtime - torch_step_probabilities(net, features)), initial=0.0))


class _MilProgram:
    """A saved ML Program evaluated op by op with coremltools' per-op value inference.

    Each operation is rebuilt with constant inputs, which makes coremltools compute its value
    with the same code it uses for constant folding. ``while_loop`` (the converter lowers a GRU
    to one) and ``scatter`` have no such code and are evaluated here.
    """

    def __init__(self, package: Path):
        spec = ct.utils.load_spec(str(package))
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{package}: not an ML Program (.mlpackage)")
        weights = package / "Data" / "com.apple.CoreML" / "weights"
        program = load_mil_program(spec, spec.specificationVersion, str(weights))
        self.main = program.functions["main"]
        self.opset = self.main.opset_version

    def step(
        self, features: NDArray[np.float32], state: NDArray[np.float32]
    ) -> tuple[NDArray[Any], NDArray[np.float32]]:
        env: dict[Any, Any] = dict(zip(self.main.inputs.values(), (features, state), strict=True))
        with Function({}, opset_version=self.opset):
            self._run(self.main, env)
        p, new_state = (env[v] for v in self.main.outputs)
        return p, np.asarray(new_state, dtype=np.float32)

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
                values = [_scatter(**args)] if op.op_type == "scatter" else _infer(op.op_type, args)
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
        else value
        for name, value in args.items()
    }
    result = getattr(mb, op_type)(**consts)
    results = list(result) if isinstance(result, list | tuple) else [result]
    values = [r.val for r in results]
    if any(v is None for v in values):
        raise NotImplementedError(f"coremltools has no reference evaluation of MIL op {op_type!r}")
    return [np.asarray(v) for v in values]


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
