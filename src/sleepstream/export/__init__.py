"""Export a trained network for apps: ONNX, Core ML, metadata, test vectors, parity checks.

:func:`export_all` writes everything into one folder::

    model.onnx              one-epoch step, dynamic batch (onnx.py)
    SleepStream.mlpackage   Core ML ML Program, iOS 16 / watchOS 9 (coreml.py)
    SleepStream.mlmodel     legacy Core ML neural network, when it converts
    metadata.json           ModelMetadata (metadata.py), also stored inside both model files
    test_vectors.json       a stretch of a real night to reproduce (vectors.py), with a recording

See ``docs/export.md`` for what is inside and how an app uses it. The Core ML functions live
in :mod:`sleepstream.export.coreml` and are not imported here: coremltools is missing on some
platforms (it has no Windows build), and ONNX export must work without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.export.metadata import ModelMetadata, metadata_for
from sleepstream.export.onnx import OnnxStep, check_onnx_parity, export_onnx, read_onnx_metadata
from sleepstream.export.vectors import counts_vectors, write_test_vectors
from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.models.net import SleepNet
from sleepstream.records import Recording

__all__ = [
    "ModelMetadata",
    "OnnxStep",
    "check_onnx_parity",
    "export_all",
    "export_onnx",
    "metadata_for",
    "read_onnx_metadata",
    "write_test_vectors",
]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = {"float32": 1e-5, "float16": 5e-3}
"""Largest accepted |p_exported - p_torch|, by Core ML precision (ONNX is always float32)."""

COREML_CHECK_EPOCHS = 120
"""Epochs of the Core ML program evaluated in Python (about 40 ms each)."""

VECTOR_EPOCHS = 60
"""Length of the test-vector stretch (30 minutes), taken from the middle of the night."""


def parity_features(
    net: SleepNet, recording: Recording | None, seed: int = 0
) -> tuple[NDArray[np.float64], str]:
    """Inputs for the parity checks: a real night's features, or synthetic ones without one.

    Synthetic rows are drawn around the network's normalisation (mean + std * N(0, 1)) with
    about 10 % NaN, 240 epochs.
    """
    if recording is not None:
        columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
        return np.asarray(night_features(recording)[:, columns]), f"night {recording.subject_id}"
    rng = np.random.default_rng(seed)
    mean = net.normalise.mean.detach().cpu().double().numpy()
    std = net.normalise.std.detach().cpu().double().numpy()
    x = mean + std * rng.standard_normal((240, net.n_features))
    x[rng.random(x.shape) < 0.1] = np.nan
    return x, "synthetic (no recording given)"


def export_all(
    net: SleepNet,
    thresholds: Mapping[str, float],
    out_dir: str | Path,
    recording: Recording | None = None,
    *,
    precision: str = "float32",
    metadata_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every export artefact of ``net`` into ``out_dir`` and check them against torch.

    ``thresholds`` are the decision thresholds stored in the metadata; ``precision`` is the
    Core ML compute precision (``"float32"`` or ``"float16"``). With a ``recording``,
    the parity checks run on that night's features (ONNX: every epoch; Core ML: the first
    :data:`COREML_CHECK_EPOCHS`) and ``test_vectors.json`` holds :data:`VECTOR_EPOCHS` epochs
    from its middle. Returns a summary of files and measured figures; raises ``RuntimeError``
    when an exported model disagrees with torch by more than :data:`PARITY_TOLERANCE`.
    """
    if precision not in PARITY_TOLERANCE:
        raise ValueError(f"precision must be one of {sorted(PARITY_TOLERANCE)}, got {precision!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = metadata_for(net, thresholds, **dict(metadata_extra or {}))
    (out / "metadata.json").write_text(meta.to_json() + "\n")
    files: dict[str, str] = {"metadata": str(out / "metadata.json")}
    files["onnx"] = str(export_onnx(net, out / "model.onnx", meta))
    features, source = parity_features(net, recording)
    onnx_diff = check_onnx_parity(net, out / "model.onnx", features)
    checks = [("ONNX", onnx_diff, PARITY_TOLERANCE["float32"])]
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "files": files,
        "parity_input": source,
        "onnx": {"epochs": len(features), "max_abs_diff": onnx_diff},
    }
    summary.update(_export_coreml(net, meta, out, precision, features, files))
    if "mil_max_abs_diff" in summary["coreml"]:
        diff = summary["coreml"]["mil_max_abs_diff"]
        checks.append(("Core ML (MIL evaluation)", diff, PARITY_TOLERANCE[precision]))
    if recording is not None:
        n = min(VECTOR_EPOCHS, recording.n_epochs)
        start = max(0, (recording.n_epochs - n) // 2)
        path = write_test_vectors(
            recording,
            net,
            out / "test_vectors.json",
            start,
            n,
            metadata=meta,
            sections={"counts_from_acceleration": counts_vectors()},
        )
        files["test_vectors"] = str(path)
        summary["test_vectors"] = {
            "subject_id": recording.subject_id,
            "start_epoch": start,
            "n_epochs": n,
        }

    for name, diff, tolerance in checks:
        log.info("%s parity on %s: max |dp| = %.3g", name, source, diff)
        if not diff <= tolerance:
            raise RuntimeError(
                f"{name} export disagrees with torch: max |p_sleep difference| {diff:.3g} > "
                f"{tolerance:g} on {source}; files left in {out}"
            )
    return summary


def _export_coreml(
    net: SleepNet,
    meta: ModelMetadata,
    out: Path,
    precision: str,
    features: NDArray[np.float64],
    files: dict[str, str],
) -> dict[str, Any]:
    """Core ML files and their checks; skipped with a warning when coremltools is missing."""
    try:
        from sleepstream.export.coreml import check_coreml, export_coreml
    except ImportError as err:
        log.warning("Core ML export skipped: coremltools cannot be imported (%s)", err)
        return {"coreml": {"skipped": f"coremltools cannot be imported: {err}"}}
    written = export_coreml(
        net, out / "SleepStream", meta, precision="float32" if precision == "float32" else "float16"
    )
    files.update({k: v for k, v in written.items() if not k.endswith("_error")})
    report: dict[str, Any] = {
        "coreml_precision": precision,
        "coreml": check_coreml(
            written["mlpackage"], meta, net=net, features=features[:COREML_CHECK_EPOCHS]
        ),
    }
    if "mlmodel" in written:
        report["coreml_mlmodel"] = check_coreml(written["mlmodel"], meta)
    else:
        report["coreml_mlmodel"] = {"error": written.get("mlmodel_error", "not written")}
    return report
