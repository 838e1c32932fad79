"""Test vectors an app runs unchanged against its copy of the model file.

``test_vectors.json`` holds whole nights of the file's inputs, epoch by epoch, with what the
file must answer: p(sleep), the features, a checksum of the new state, and ``p_stage3`` and
``p_stage4`` for a file with a stage network. JSON has no NaN: a missing value is ``null``, an
epoch without acceleration has ``"accel": null``. Numbers are float32 values written with 9
significant digits, which give back the same float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.features import epoch_inputs
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import atomic_file
from sleepstream.pipeline import STAGE_OUTPUT_NAMES, scan_torch
from sleepstream.records import Recording
from sleepstream.signal.synthetic import GENERATED_SEGMENTS, generated_night
from sleepstream.step import ACCEL_SAMPLES

FORMAT = "sleepstream-test-vectors"
VERSION = 1
TOLERANCE = {
    "p_sleep_float32": 1e-5,
    "features_relative_float32": 1e-5,
    "state_sum_relative_float32": 1e-5,
}
"""What an exact float32 port must meet: |p - expected| <= 1e-5; each feature and the state's
sum within 1e-5 of the sum of absolute values (plus 1e-4); the same number of NaN in the state.
Float16 is measured, not promised (``docs/on-device.md``)."""

INPUTS = {"raw": ("accel", "counts", "hr", "hr_offset"), "counts": ("counts", "hr", "hr_offset")}


def _numbers(values: Any) -> list[float | None]:
    floats = np.asarray(values, dtype=np.float32).reshape(-1).tolist()
    return [None if math.isnan(v) else float(f"{v:.9g}") for v in floats]


def checksum(state: NDArray[np.floating]) -> dict[str, float | int]:
    """``sum`` and ``abs_sum`` of the state's numbers (float64), and how many are NaN."""
    s = np.asarray(state, dtype=np.float64)
    finite = s[~np.isnan(s)]
    return {
        "sum": float(finite.sum()),
        "abs_sum": float(np.abs(finite).sum()),
        "nan": int(np.isnan(s).sum()),
    }


def with_gap(recording: Recording, start: float, seconds: float = 3600.0) -> Recording:
    """``recording`` with every sample in ``[start, start + seconds)`` removed."""

    def keep(times: NDArray[np.float64]) -> NDArray[np.bool_]:
        return (times < start) | (times >= start + seconds)

    hr, counts = keep(recording.hr_times), keep(recording.count_times)
    return dataclasses.replace(
        recording,
        subject_id=f"{recording.subject_id}-gap",
        hr_times=recording.hr_times[hr],
        hr_bpm=recording.hr_bpm[hr],
        count_times=recording.count_times[counts],
        counts=recording.counts[counts],
    )


def counts_night(recording: Recording) -> dict[str, NDArray[np.float64]]:
    """The counts variant's inputs of a night, per epoch."""
    counts, hr, hr_offset = epoch_inputs(recording)
    return {"counts": counts, "hr": hr, "hr_offset": hr_offset}


def expected(
    net: SleepNet,
    variant: str,
    inputs: dict[str, NDArray[np.float64]],
    stages: StageGRU | None = None,
) -> list[dict[str, Any]]:
    """Per epoch: the inputs (JSON-ready) and what the pipeline in torch answers."""
    answers = scan_torch(net, variant, inputs, stages)
    stage_names = [n for n in STAGE_OUTPUT_NAMES.values() if n in answers]
    epochs = []
    for t in range(len(inputs["hr"])):
        row: dict[str, Any] = {name: _numbers(inputs[name][t]) for name in INPUTS[variant]}
        if variant == "raw" and np.isnan(inputs["accel"][t]).all():
            row["accel"] = None
        row["p_sleep"] = _numbers(answers["p_sleep"][t])[0]
        row["features"] = _numbers(answers["features"][t])
        row["state"] = checksum(answers["state"][t])
        row.update({name: _numbers(answers[name][t]) for name in stage_names})
        epochs.append(row)
    return epochs


def write_test_vectors(
    net: SleepNet,
    path: str | Path,
    recordings: list[Recording],
    *,
    model_files: dict[str, str],
    seed: int = 0,
    stages: StageGRU | None = None,
) -> Path:
    """Write ``test_vectors.json``: the counts variant on ``recordings`` (each from 1 h before
    its PSG start, and again with an hour-long gap), the raw variant on a generated night;
    with the stage network ``stages``, the expected stage probabilities too."""

    def night(name: str, variant: str, source: str, inputs: Any) -> dict[str, Any]:
        head = {"name": name, "variant": variant, "model_file": model_files[variant]}
        return {**head, "source": source, "epochs": expected(net, variant, inputs, stages)}

    nights = []
    for recording in recordings:
        fed = recording.switched_on_before(3600.0)
        gap = with_gap(fed, float(recording.epoch_times[recording.n_epochs // 2]))
        about = f"real night {recording.subject_id} (sleep-accel), from 1 h before the PSG start"
        nights.append(night(fed.subject_id, "counts", about, counts_night(fed)))
        about += ", one hour of every stream removed"
        nights.append(night(gap.subject_id, "counts", about, counts_night(gap)))
    segments = ", ".join(f"{what} ({n} epochs)" for what, n in GENERATED_SEGMENTS)
    about = f"generated acceleration and heart rate: {segments}"
    nights.append(night("generated", "raw", about, generated_night(seed)))
    document = {
        "format": FORMAT,
        "version": VERSION,
        "tolerance": TOLERANCE,
        "how": (
            "For each night, start from the initial state of the model file's state_layout and "
            "feed the epochs in order (null = NaN; accel null = 1500 NaN); compare p_sleep, "
            "features and the checksum of new_state (sum and abs_sum of its non-NaN numbers, "
            "count of NaN) with the expected ones, and p_stage3 / p_stage4 where the epochs "
            "carry them (within the p_sleep tolerance)."
        ),
        "nights": nights,
    }
    path = Path(path)
    with atomic_file(path) as handle:
        handle.write(json.dumps(document, allow_nan=False, separators=(",", ":")).encode())
    return path


def read_test_vectors(path: str | Path) -> dict[str, Any]:
    """The JSON of :func:`write_test_vectors`, with its format checked."""
    document: dict[str, Any] = json.loads(Path(path).read_text())
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        raise ValueError(f"{path}: not {FORMAT} version {VERSION}")
    return document


def night_arrays(night: dict[str, Any]) -> dict[str, NDArray[np.float32]]:
    """A night's inputs from the JSON as float32 arrays (null -> NaN)."""
    return {
        name: np.asarray(
            [[math.nan] * ACCEL_SAMPLES if e[name] is None else e[name] for e in night["epochs"]],
            dtype=np.float32,
        )
        for name in INPUTS[night["variant"]]
    }
