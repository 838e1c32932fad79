"""Test vectors an app runs unchanged against its copy of the model file.

``test_vectors.json`` holds whole nights of the model file's inputs, epoch by epoch, with what
the file must answer: p(sleep), the features and a checksum of the new state, and for a file
with a stage network the stage probabilities ``p_stage3`` and ``p_stage4`` (same tolerance as
p(sleep)). An app feeds
each night's epochs in order, starting from the initial state of the metadata's
``state_layout``, and compares. Nights:

- the **counts variant** on real nights: a PSG night from 1 h before its start, and the same
  night with one hour of every stream removed in its middle (an hour-long gap);
- the **raw variant** on a generated night (:mod:`sleepstream.signal.synthetic`): walking
  (wake), a night in bed with twitches and turns, an epoch stretch without heart rate, one
  without motion, an hour with nothing, acceleration with missing samples (NaN), and wake.

JSON has no NaN: a missing value is ``null``, and an epoch whose acceleration is missing
altogether has ``"accel": null`` (1,500 NaN). Numbers are float32 values written with 9
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

from sleepstream.features import HR_SLOTS, epoch_inputs
from sleepstream.models.net import SleepNet, StageGRU
from sleepstream.paths import atomic_file
from sleepstream.records import EPOCH_SECONDS, Recording

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


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(f"{value:.9g}")


def _numbers(values: NDArray[np.floating]) -> list[float | None]:
    return [_number(v) for v in np.asarray(values, dtype=np.float32).tolist()]


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


GENERATED_SEGMENTS: tuple[tuple[str, int], ...] = (
    ("walking", 30),
    ("asleep", 40),
    ("asleep, no heart rate", 10),
    ("asleep, no motion", 10),
    ("gap: nothing for an hour", 120),
    ("asleep, acceleration with missing samples", 30),
    ("turning over, awake", 10),
)
"""The generated raw night, in order: what each stretch holds and its length in epochs."""


def generated_night(seed: int = 0) -> dict[str, NDArray[np.float64]]:
    """The raw variant's inputs of :data:`GENERATED_SEGMENTS`, per epoch."""
    from sleepstream.signal import synthetic
    from sleepstream.step import ACCEL_SAMPLES, COUNTS_DELAY_SECONDS

    rng = np.random.default_rng(seed)
    n = sum(length for _, length in GENERATED_SEGMENTS)
    accel = np.full((n, ACCEL_SAMPLES), np.nan)
    counts = np.full((n, 2), np.nan)
    hr = np.full((n, HR_SLOTS), np.nan)
    hr_offset = np.full((n, HR_SLOTS), np.nan)
    at = 0
    for what, length in GENERATED_SEGMENTS:
        epochs = slice(at, at + length)
        at += length
        if what.startswith("gap"):
            continue
        kind = "walking" if what == "walking" else "turning over" if "turning" in what else "night"
        times = COUNTS_DELAY_SECONDS + np.arange(length * ACCEL_SAMPLES) / 50.0
        z = synthetic.SIGNALS[kind](times, seed + at)
        if "missing samples" in what:
            for start in rng.integers(0, len(z) - 200, size=length // 3):
                z[start : start + rng.integers(5, 200)] = np.nan
        if "no motion" not in what:
            accel[epochs] = z.reshape(length, ACCEL_SAMPLES)
        if "no heart rate" not in what:
            level = 90.0 if kind != "night" else 57.0
            k = 5
            offsets = np.sort(rng.uniform(0, EPOCH_SECONDS, (length, k)), axis=1)
            hr[epochs, :k] = level + rng.normal(0, 2, (length, k))
            hr_offset[epochs, :k] = offsets
    return {"accel": accel, "counts": counts, "hr": hr, "hr_offset": hr_offset}


def expected(
    net: SleepNet,
    variant: str,
    inputs: dict[str, NDArray[np.float64]],
    stages: StageGRU | None = None,
) -> list[dict[str, Any]]:
    """Per epoch: the inputs (JSON-ready) and what the pipeline in torch answers."""
    from sleepstream.export.onnx import scan_torch
    from sleepstream.pipeline import STAGE_OUTPUT_NAMES

    answers = scan_torch(net, variant, inputs, stages)
    stage_names = [n for n in STAGE_OUTPUT_NAMES.values() if n in answers]
    names = (
        ("accel", "counts", "hr", "hr_offset")
        if variant == "raw"
        else ("counts", "hr", "hr_offset")
    )
    epochs = []
    for t in range(len(inputs["hr"])):
        row: dict[str, Any] = {}
        for name in names:
            values = inputs[name][t]
            row[name] = None if name == "accel" and np.isnan(values).all() else _numbers(values)
        row["p_sleep"] = _number(float(answers["p_sleep"][t]))
        row["features"] = _numbers(answers["features"][t])
        row["state"] = checksum(answers["state"][t])
        for name in stage_names:
            row[name] = _numbers(answers[name][t])
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
    nights: list[dict[str, Any]] = []
    for recording in recordings:
        fed = recording.switched_on_before(3600.0)
        middle = float(recording.epoch_times[recording.n_epochs // 2])
        for night, note in (
            (fed, "from 1 h before the PSG start"),
            (
                with_gap(fed, middle),
                "from 1 h before the PSG start, one hour of every stream removed",
            ),
        ):
            nights.append(
                {
                    "name": night.subject_id,
                    "variant": "counts",
                    "model_file": model_files["counts"],
                    "source": f"real night {recording.subject_id} (sleep-accel), {note}",
                    "epochs": expected(net, "counts", counts_night(night), stages),
                }
            )
    nights.append(
        {
            "name": "generated",
            "variant": "raw",
            "model_file": model_files["raw"],
            "source": "generated acceleration and heart rate: "
            + ", ".join(f"{what} ({n} epochs)" for what, n in GENERATED_SEGMENTS),
            "epochs": expected(net, "raw", generated_night(seed), stages),
        }
    )
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
    from sleepstream.step import ACCEL_SAMPLES

    names = (
        ("accel", "counts", "hr", "hr_offset")
        if night["variant"] == "raw"
        else ("counts", "hr", "hr_offset")
    )
    out = {}
    for name in names:
        rows = [
            [math.nan] * ACCEL_SAMPLES
            if e[name] is None
            else [math.nan if v is None else v for v in e[name]]
            for e in night["epochs"]
        ]
        out[name] = np.asarray(rows, dtype=np.float32)
    return out


__all__ = [
    "TOLERANCE",
    "checksum",
    "generated_night",
    "night_arrays",
    "read_test_vectors",
    "write_test_vectors",
]
