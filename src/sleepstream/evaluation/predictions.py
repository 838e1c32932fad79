"""Out-of-fold predictions of one predictor, and the thresholds chosen without the test night.

A ``cv`` run saves each predictor's predictions in each scenario (and seed) to
``<out>/predictions/<scenario>/<name>[_seed<k>].npz`` (:func:`save_predictions`), so the report
can be rebuilt, and every figure recomputed, from the saved files (:func:`load_predictions`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.evaluation.scenarios import SCENARIO_NAMES, SCENARIOS
from sleepstream.paths import atomic_file
from sleepstream.records import SLEEP_WAKE, Recording

SLEEP_CORRECT_TARGETS = (0.93, 0.95)
"""Sleep-correct fractions at which wake-correct is reported (WASA93, WASA95)."""


@dataclass(frozen=True, eq=False)
class HeldOutNight:
    """The epochs of one held-out night and their PSG labels: what the prediction of a night
    holds besides its scores (:class:`NightPrediction`, p(sleep); the stage predictions,
    class probabilities).

    Attributes
    ----------
    subject_id
        The held-out subject.
    epoch_times
        Start (s) of each 30 s epoch.
    labels
        Class index per epoch under the task's label map; -1 unscored.
    """

    subject_id: str
    epoch_times: NDArray[np.float64]
    labels: NDArray[np.int8]

    @property
    def scored(self) -> NDArray[np.bool_]:
        """The epochs with a PSG label."""
        return self.labels >= 0


@dataclass(frozen=True, eq=False)
class NightPrediction(HeldOutNight):
    """p(sleep) for every epoch of one held-out night, with thresholds fixed before seeing it.

    ``labels`` (:class:`HeldOutNight`) are 1 sleep, 0 wake, -1 unscored (``SLEEP_WAKE``
    applied to the PSG stages).

    Attributes
    ----------
    p_sleep
        Predicted probability of sleep per epoch, in [0, 1], never NaN.
    valid
        The published paper's "valid epochs" subset (scored, with heart rate and motion).
    thresholds
        Thresholds chosen on the *training* subjects only: keys ``"wasa93"``, ``"wasa95"``
        (the sleep-correct targets) and ``"operating"`` (maximises Cohen's kappa on training).
        An epoch is called sleep when ``p_sleep >= threshold``.
    """

    p_sleep: NDArray[np.float64]
    valid: NDArray[np.bool_]
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_recording(
        cls,
        recording: Recording,
        p_sleep: NDArray[np.float64],
        thresholds: dict[str, float],
        valid: NDArray[np.bool_] | None = None,
    ) -> NightPrediction:
        p = np.asarray(p_sleep, dtype=np.float64)
        if p.shape != (recording.n_epochs,):
            raise ValueError(
                f"Subject {recording.subject_id}: expected {recording.n_epochs} predictions, "
                f"got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError(f"Subject {recording.subject_id}: p_sleep must be finite in [0, 1]")
        labels = recording.labels(SLEEP_WAKE)
        if valid is None:
            valid = labels >= 0
        return cls(recording.subject_id, recording.epoch_times, labels, p, valid, thresholds)


@dataclass(frozen=True, eq=False)
class LosoResult:
    """All held-out nights of one predictor under leave-one-subject-out, in one start scenario.

    Attributes
    ----------
    scenario
        Name of the start scenario (:mod:`sleepstream.evaluation.scenarios`).
    threshold_source
        How the nights' deployable thresholds were chosen.
    """

    name: str
    causal: bool
    nights: list[NightPrediction]
    description: str = ""
    scenario: str = "psg_start"
    threshold_source: str = ""


Seeded = tuple[LosoResult, int | None]
"""One predictor's LOSO result in one scenario, with the seed it was trained with (``None``:
deterministic)."""

THRESHOLD_KEYS = ("operating", "wasa93", "wasa95")


def held_out_arrays(nights: Sequence[HeldOutNight]) -> dict[str, NDArray[Any]]:
    """What a saved predictions file holds of every night's :class:`HeldOutNight` part: per
    epoch ``subject_id``, ``epoch_times``, ``labels``; per night ``night_subject``."""
    return {
        "subject_id": np.array([n.subject_id for n in nights for _ in n.labels], dtype=str),
        "epoch_times": np.concatenate([n.epoch_times for n in nights] or [np.zeros(0)]),
        "labels": np.concatenate([n.labels for n in nights] or [np.zeros(0, np.int8)]),
        "night_subject": np.array([n.subject_id for n in nights], dtype=str),
    }


def saved_nights(
    data: Mapping[str, NDArray[Any]],
) -> Iterator[tuple[int, NDArray[np.bool_], dict[str, Any]]]:
    """Each night of a file holding :func:`held_out_arrays`: its index, its epochs (a mask of the
    file's rows) and its :class:`HeldOutNight` fields by name."""
    subject = data["subject_id"]
    for k, night_subject in enumerate(data["night_subject"].tolist()):
        rows = subject == night_subject
        yield (
            k,
            rows,
            {
                "subject_id": night_subject,
                "epoch_times": data["epoch_times"][rows],
                "labels": data["labels"][rows].astype(np.int8),
            },
        )


def save_result(result: LosoResult, path: Path, seed: int | None = None) -> Path:
    """Write every held-out night of ``result`` with its thresholds to ``path`` (``.npz``).

    Plain arrays only (read back with ``allow_pickle=False``): per epoch ``subject_id``,
    ``epoch_times``, ``labels``, ``p_sleep``, ``valid``; per night ``night_subject`` and
    ``threshold_<key>``; and ``meta``, a JSON string (name, causal, description, scenario,
    threshold source, seed). Anyone can recompute every figure from these files. The file is
    written whole or not at all (:func:`~sleepstream.paths.atomic_file`).
    """
    nights = result.nights
    meta = {
        "name": result.name,
        "causal": result.causal,
        "description": result.description,
        "scenario": result.scenario,
        "threshold_source": result.threshold_source,
        "seed": seed,
    }
    arrays: dict[str, Any] = {
        **held_out_arrays(nights),
        "p_sleep": np.concatenate([n.p_sleep for n in nights]),
        "valid": np.concatenate([n.valid for n in nights]),
        "meta": np.array(json.dumps(meta)),
    }
    for key in THRESHOLD_KEYS:
        arrays[f"threshold_{key}"] = np.array([n.thresholds.get(key, np.nan) for n in nights])
    with atomic_file(path) as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_result(path: Path) -> tuple[LosoResult, int | None]:
    """Read a file of :func:`save_result`: the result and its seed."""
    with np.load(path, allow_pickle=False) as data:
        try:
            meta = json.loads(str(data["meta"]))
            nights = []
            for k, rows, held_out in saved_nights(data):
                thresholds = {key: float(data[f"threshold_{key}"][k]) for key in THRESHOLD_KEYS}
                p_sleep = data["p_sleep"][rows].astype(np.float64)
                valid = data["valid"][rows].astype(bool)
                nights.append(
                    NightPrediction(**held_out, p_sleep=p_sleep, valid=valid, thresholds=thresholds)
                )
        except (KeyError, ValueError) as error:
            raise ValueError(f"{path}: not a sleepstream predictions file ({error})") from None
    result = LosoResult(
        meta["name"],
        bool(meta["causal"]),
        nights,
        meta.get("description", ""),
        scenario=meta.get("scenario", "psg_start"),
        threshold_source=meta.get("threshold_source", ""),
    )
    return result, meta.get("seed")


def prediction_path(out: Path, result: LosoResult, seed: int | None) -> Path:
    """Where :func:`save_predictions` writes one result under the report folder ``out``.

    Examples
    --------
    >>> result = LosoResult("sleep_wake", True, [], scenario="early_1h")
    >>> prediction_path(Path("reports/x"), result, seed=0).as_posix()
    'reports/x/predictions/early_1h/sleep_wake_seed0.npz'
    >>> prediction_path(Path("reports/x"), LosoResult("cole_kripke", False, []), None).name
    'cole_kripke.npz'
    """
    if "/" in result.name or "\\" in result.name:
        raise ValueError(f"Predictor name {result.name!r}: a file name cannot hold / or \\")
    stem = result.name if seed is None else f"{result.name}_seed{seed}"
    return out / "predictions" / result.scenario / f"{stem}.npz"


def save_predictions(results: Sequence[Seeded], out: Path) -> Path:
    """Every result's out-of-fold predictions and thresholds, one ``.npz`` each, under
    ``out/predictions``; returns that folder."""
    for result, seed in results:
        save_result(result, prediction_path(out, result, seed), seed)
    return out / "predictions"


def load_predictions(out: Path) -> list[Seeded]:
    """The results saved by :func:`save_predictions` under ``out``, in scenario order."""
    folder = out / "predictions"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: run `sleepstream cv --out {out}` first")
    results: list[Seeded] = []
    for scenario in SCENARIOS:
        for path in sorted((folder / scenario.name).glob("*.npz")):
            results.append(load_result(path))
    if not results:
        raise FileNotFoundError(f"{folder} holds no predictions of scenarios {SCENARIO_NAMES}")
    return results
