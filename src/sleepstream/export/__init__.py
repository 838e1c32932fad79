"""Export a trained network for apps: the whole pipeline as ONNX and Core ML, with test vectors.

:func:`export_all` writes ``model_<variant>.onnx`` (:mod:`~sleepstream.export.onnx`), its
metadata as ``model_<variant>.json``, ``SleepStream_<variant>.mlpackage``
(:mod:`~sleepstream.export.coreml`, imported only here: coremltools has no Windows build) and
``test_vectors.json`` (:mod:`~sleepstream.export.vectors`), each whole or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sleepstream.export.onnx import check_onnx_parity, export_onnx, read_onnx_metadata
from sleepstream.export.vectors import counts_night, write_test_vectors
from sleepstream.models.card import ModelMetadata, metadata_for
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import write_atomic
from sleepstream.pipeline import VARIANTS
from sleepstream.records import Recording
from sleepstream.signal.synthetic import generated_night

__all__ = ["ModelMetadata", "export_all", "export_onnx", "metadata_for", "read_onnx_metadata"]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = {"float32": 1e-5, "float16": 5e-2}
"""Largest accepted |p_exported - p_torch|, by Core ML precision (ONNX is always float32)."""

COREML_CHECK_EPOCHS = 40
"""Epochs of each Core ML program evaluated in Python (a fraction of a second each)."""


def export_all(
    net: SleepNet,
    thresholds: Mapping[str, float],
    out_dir: str | Path,
    recording: Recording | None = None,
    *,
    precision: str = "float32",
    metadata_extra: Mapping[str, Any] | None = None,
    coreml: bool = True,
    stages: StageGRU | None = None,
    stages_about: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every export artefact of ``net`` (with ``stages``, its outputs too) into ``out_dir``
    and check them against torch: each ONNX file over a whole night (``recording`` from 1 h
    before its start for the counts variant, else the generated night), each Core ML program
    over its first :data:`COREML_CHECK_EPOCHS` epochs. Returns a summary of files and figures;
    raises ``RuntimeError`` when a file disagrees by more than :data:`PARITY_TOLERANCE`.
    """
    if precision not in PARITY_TOLERANCE:
        raise ValueError(f"precision must be one of {sorted(PARITY_TOLERANCE)}, got {precision!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    summary: dict[str, Any] = {"out_dir": str(out), "files": files}
    nights = {"raw": (generated_night(), "generated night")}
    nights["counts"] = nights["raw"]
    if recording is not None:
        counts = counts_night(recording.switched_on_before(3600.0))
        nights["counts"] = (counts, f"night {recording.subject_id}")
    checks = []
    for variant in VARIANTS:
        extra = dict(metadata_extra or {})
        meta = metadata_for(net, thresholds, variant, stages, stages_about, **extra)
        write_atomic(out / f"model_{variant}.json", meta.to_json() + "\n")
        path = export_onnx(net, out / f"model_{variant}.onnx", meta, stages)
        files[f"onnx_{variant}"] = str(path)
        inputs, source = nights[variant]
        diff = check_onnx_parity(net, path, inputs, stages)
        summary[f"onnx_{variant}"] = {
            "input": source,
            "epochs": len(inputs["hr"]),
            "max_abs_diff": diff,
        }
        checks.append((f"ONNX {variant}", diff, PARITY_TOLERANCE["float32"], source))
        if coreml:
            summary[f"coreml_{variant}"] = report = _coreml(
                net, meta, out, precision, inputs, stages
            )
            if "path" in report:
                files[f"coreml_{variant}"] = report["path"]
                tolerance = PARITY_TOLERANCE[precision]
                checks.append((f"Core ML {variant}", report["mil_max_abs_diff"], tolerance, source))
    if recording is not None:
        onnx_files = {v: f"model_{v}.onnx" for v in VARIANTS}
        vectors = out / "test_vectors.json"
        write_test_vectors(net, vectors, [recording], model_files=onnx_files, stages=stages)
        files["test_vectors"] = str(vectors)
    for name, diff, tolerance, source in checks:
        log.info("%s parity on %s: max |dp| = %.3g", name, source, diff)
        if not diff <= tolerance:
            raise RuntimeError(
                f"{name} export disagrees with torch: max |probability difference| {diff:.3g} > "
                f"{tolerance:g} on {source}; files left in {out}"
            )
    return summary


def _coreml(
    net: SleepNet,
    meta: ModelMetadata,
    out: Path,
    precision: str,
    inputs: Mapping[str, Any],
    stages: StageGRU | None,
) -> dict[str, Any]:
    """Export and check one Core ML program; skipped with a warning without coremltools."""
    try:
        from sleepstream.export.coreml import check_coreml, export_coreml
    except ImportError as err:
        log.warning("Core ML export skipped: coremltools cannot be imported (%s)", err)
        return {"skipped": f"coremltools cannot be imported: {err}"}
    base = out / f"SleepStream_{meta.variant}"
    package = export_coreml(net, base, meta, precision=precision, stages=stages)["mlpackage"]
    stretch = {k: v[:COREML_CHECK_EPOCHS] for k, v in inputs.items()}
    report = check_coreml(package, meta, net=net, inputs=stretch, stages=stages)
    return {"precision": precision, **report}
