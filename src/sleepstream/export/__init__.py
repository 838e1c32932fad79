"""Export a trained network for apps: the whole pipeline as ONNX and Core ML, with test vectors.

:func:`export_all` writes everything into one folder::

    model_raw.onnx              the pipeline step, raw acceleration in (onnx.py)
    model_counts.onnx           the same step taking ready-made 15 s counts
    model_raw.json, model_counts.json     ModelMetadata (metadata.py), also inside the files
    SleepStream_raw.mlpackage, SleepStream_counts.mlpackage     Core ML ML Programs (coreml.py)
    test_vectors.json           whole nights of inputs and expected outputs (vectors.py)

Every file and package is written through :mod:`sleepstream.paths` (a temporary file or folder
renamed into place), so an interrupted export leaves complete files or none. See
``docs/on-device.md`` for what an app collects and runs. The Core ML functions live in
:mod:`sleepstream.export.coreml` and are not imported here: coremltools is missing on some
platforms (it has no Windows build), and ONNX export must work without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.export.onnx import check_onnx_parity, export_onnx, read_onnx_metadata
from sleepstream.export.vectors import counts_night, generated_night, write_test_vectors
from sleepstream.models.card import ModelMetadata, metadata_for
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import write_atomic
from sleepstream.pipeline import VARIANTS
from sleepstream.records import Recording

__all__ = [
    "ModelMetadata",
    "check_onnx_parity",
    "export_all",
    "export_onnx",
    "metadata_for",
    "read_onnx_metadata",
    "write_test_vectors",
]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = {"float32": 1e-5, "float16": 5e-2}
"""Largest accepted |p_exported - p_torch|, by Core ML precision (ONNX is always float32)."""

COREML_CHECK_EPOCHS = 40
"""Epochs of each Core ML program evaluated in Python (coremltools' reference kernels are slow)."""


def parity_inputs(
    recording: Recording | None,
) -> dict[str, tuple[dict[str, NDArray[np.float64]], str]]:
    """Per variant, the whole night its parity check runs on: a real night (from 1 h before its
    start) for the counts variant when one is given, else the generated night's inputs; the
    generated night for the raw variant."""
    generated = generated_night()
    raw = (generated, "generated night")
    if recording is None:
        counts = ({k: generated[k] for k in ("counts", "hr", "hr_offset")}, "generated night")
    else:
        counts = (
            counts_night(recording.switched_on_before(3600.0)),
            f"night {recording.subject_id}",
        )
    return {"raw": raw, "counts": counts}


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
    """Write every export artefact of ``net`` into ``out_dir`` and check them against torch.

    With the stage network ``stages``, every file carries its outputs ``p_stage3`` and
    ``p_stage4`` (metadata ``stages``, with ``stages_about`` added), and the parity checks and
    test vectors cover them; p(sleep) is the same as without it.

    ONNX files are checked epoch by epoch on whole nights (:func:`parity_inputs`), Core ML
    programs on their first :data:`COREML_CHECK_EPOCHS` epochs with coremltools' reference
    kernels. Returns a summary of files and measured figures; raises ``RuntimeError`` when an
    exported file disagrees with torch by more than :data:`PARITY_TOLERANCE`.
    """
    if precision not in PARITY_TOLERANCE:
        raise ValueError(f"precision must be one of {sorted(PARITY_TOLERANCE)}, got {precision!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    summary: dict[str, Any] = {"out_dir": str(out), "files": files}
    checks = []
    nights = parity_inputs(recording)
    for variant in VARIANTS:
        meta = metadata_for(
            net, thresholds, variant, stages, stages_about, **dict(metadata_extra or {})
        )
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
            report = _export_coreml(
                net, meta, out / f"SleepStream_{variant}", precision, inputs, stages
            )
            summary[f"coreml_{variant}"] = report
            if "mil_max_abs_diff" in report:
                checks.append(
                    (
                        f"Core ML {variant} (reference kernels)",
                        report["mil_max_abs_diff"],
                        PARITY_TOLERANCE[precision],
                        source,
                    )
                )
            if "path" in report:
                files[f"coreml_{variant}"] = report["path"]
    if recording is not None:
        files["test_vectors"] = str(
            write_test_vectors(
                net,
                out / "test_vectors.json",
                [recording],
                model_files={v: f"model_{v}.onnx" for v in VARIANTS},
                stages=stages,
            )
        )
    for name, diff, tolerance, source in checks:
        log.info("%s parity on %s: max |dp| = %.3g", name, source, diff)
        if not diff <= tolerance:
            raise RuntimeError(
                f"{name} export disagrees with torch: max |probability difference| {diff:.3g} > "
                f"{tolerance:g} on {source}; files left in {out}"
            )
    return summary


def _export_coreml(
    net: SleepNet,
    meta: ModelMetadata,
    base: Path,
    precision: str,
    inputs: dict[str, NDArray[np.float64]],
    stages: StageGRU | None = None,
) -> dict[str, Any]:
    """A Core ML program and its checks; skipped with a warning when coremltools is missing."""
    try:
        from sleepstream.export.coreml import check_coreml, export_coreml
    except ImportError as err:
        log.warning("Core ML export skipped: coremltools cannot be imported (%s)", err)
        return {"skipped": f"coremltools cannot be imported: {err}"}
    written = export_coreml(
        net,
        base,
        meta,
        precision="float32" if precision == "float32" else "float16",
        stages=stages,
    )
    stretch = {k: v[:COREML_CHECK_EPOCHS] for k, v in inputs.items()}
    report = check_coreml(written["mlpackage"], meta, net=net, inputs=stretch, stages=stages)
    return {"precision": precision, "path": written["mlpackage"], **report}
