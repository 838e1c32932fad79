"""Agreement of predicted sleep stages with PSG: epoch metrics, night-level stage minutes and REM
latency, subject-bootstrap intervals, and the summary of one stage result.

Epoch metrics (:func:`stage_epoch_metrics`, scikit-learn's implementations) are computed on
scored epochs (label >= 0): Cohen's kappa, accuracy, macro F1 (classes without a label or a
prediction in the epochs are left out of the mean), per class recall and F1, and the confusion
counts ``[PSG class, predicted class]``.

Night level (:func:`night_stage_values`), on a night's scored epochs in time order (unscored
epochs dropped, as in :mod:`~sleepstream.evaluation.nightly`): minutes of each class, and REM
latency, the minutes from sleep onset (the first epoch not wake) to the first REM epoch (NaN
without sleep or without REM). Predicted and PSG values are compared with the Bland-Altman
:func:`~sleepstream.evaluation.nightly.agreement` (bias, 95 % limits of agreement).

Examples
--------
>>> stage_epoch_metrics([0, 1, 1, 2, -1], [0, 1, 2, 2, 0], ("wake", "nrem", "rem"))["accuracy"]
0.75
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    recall_score,
)

from sleepstream.evaluation.metrics import mean_sd, to_jsonable
from sleepstream.evaluation.nightly import agreement
from sleepstream.evaluation.seeds import bootstrap_interval, same_subjects
from sleepstream.evaluation.stages import RULES, StageNight, StageResult, confusion_counts
from sleepstream.records import EPOCH_SECONDS

HEADLINE_FIGURES = ("kappa", "accuracy", "macro_f1")
"""The figures that get a subject-bootstrap interval."""

WAKE = "wake"
REM = "rem"


def _scored(
    labels: ArrayLike, predicted: ArrayLike, n_classes: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    if y.ndim != 1 or y.shape != pred.shape:
        raise ValueError(
            f"labels and predictions must be 1-D of equal length, got {y.shape} and {pred.shape}"
        )
    for name, values, low in (("label", y, -1), ("predicted class", pred, 0)):
        bad = (values < low) | (values >= n_classes)
        if bad.any():
            raise ValueError(
                f"Invalid {name} {values[bad][0].item()!r}: expected {low} to {n_classes - 1}"
            )
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"No scored epochs among {y.size} (all labels are -1)")
    return y[keep], pred[keep]


def stage_epoch_metrics(
    labels: ArrayLike, predicted: ArrayLike, classes: Sequence[str]
) -> dict[str, Any]:
    """Kappa, accuracy, macro F1, per class recall and F1, and confusion counts on scored epochs.

    Parameters
    ----------
    labels
        PSG class index per epoch; -1 unscored (dropped).
    predicted
        Predicted class index per epoch.
    classes
        Class names in index order; they name the per class keys (``recall_rem``, ``f1_rem``).

    Returns
    -------
    dict
        ``kappa``, ``accuracy``, ``macro_f1``, ``recall_<class>``, ``f1_<class>`` (NaN for a
        class without PSG epochs, or without PSG and predicted epochs for F1), ``confusion``
        (list of rows, PSG class by predicted class) and ``n_epochs``.
    """
    n = len(classes)
    y, pred = _scored(labels, predicted, n)
    everything = list(range(n))
    with warnings.catch_warnings():
        # A class absent from a night: its recall / F1 (and kappa, if only one class is left) are
        # NaN by request, not a surprise.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        recall = recall_score(y, pred, labels=everything, average=None, zero_division=np.nan)
        f1 = f1_score(y, pred, labels=everything, average=None, zero_division=np.nan)
        macro = f1_score(y, pred, labels=everything, average="macro", zero_division=np.nan)
        kappa = cohen_kappa_score(y, pred, labels=everything)  # NaN for one class throughout
    out: dict[str, Any] = {
        "kappa": float(kappa),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(macro),
    }
    for k, name in enumerate(classes):
        out[f"recall_{name}"] = float(recall[k])
    for k, name in enumerate(classes):
        out[f"f1_{name}"] = float(f1[k])
    out["confusion"] = confusion_matrix(y, pred, labels=everything).tolist()
    out["n_epochs"] = int(y.size)
    return out


def figures_from_confusion(counts: ArrayLike) -> dict[str, float]:
    """Kappa, accuracy and macro F1 of a confusion matrix ``[true, predicted]``.

    Used by the bootstrap, which sums per-night matrices thousands of times; equal to
    :func:`stage_epoch_metrics` on the epochs behind the matrix (a test checks it).

    Examples
    --------
    >>> {k: round(v, 6) for k, v in figures_from_confusion([[20, 5], [10, 15]]).items()}
    {'kappa': 0.4, 'accuracy': 0.7, 'macro_f1': 0.69697}
    """
    cm = np.asarray(counts, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        return dict.fromkeys(HEADLINE_FIGURES, math.nan)
    true, called, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    expected = float(true @ called / n**2)
    observed = float(hits.sum() / n)
    kappa = math.nan if expected == 1.0 else (observed - expected) / (1.0 - expected)
    present = (true + called) > 0
    f1 = 2.0 * hits[present] / (true[present] + called[present])
    return {"kappa": float(kappa), "accuracy": observed, "macro_f1": float(f1.mean())}


# --------------------------------------------------------------------------------------------
# Night level
# --------------------------------------------------------------------------------------------


def stage_minutes(
    classes_per_epoch: ArrayLike, n_classes: int, epoch_seconds: float = EPOCH_SECONDS
) -> NDArray[np.float64]:
    """Minutes of each class among the given (scored) epochs.

    >>> stage_minutes([0, 1, 1, 2, 1], 3).tolist()
    [0.5, 1.5, 0.5]
    """
    counts = np.bincount(np.asarray(classes_per_epoch, dtype=np.int64), minlength=n_classes)
    return counts[:n_classes].astype(np.float64) * epoch_seconds / 60.0


def rem_latency_min(
    classes_per_epoch: ArrayLike, wake: int, rem: int, epoch_seconds: float = EPOCH_SECONDS
) -> float:
    """Minutes from sleep onset (the first epoch that is not ``wake``) to the first ``rem``
    epoch, over scored epochs in time order; NaN without sleep or without REM.

    >>> rem_latency_min([0, 0, 1, 1, 1, 2, 1, 2], wake=0, rem=2)
    1.5
    >>> rem_latency_min([0, 2, 1], wake=0, rem=2), rem_latency_min([0, 1, 1], wake=0, rem=2)
    (0.0, nan)
    """
    seq = np.asarray(classes_per_epoch)
    asleep = np.flatnonzero(seq != wake)
    if asleep.size == 0:
        return math.nan
    onset = int(asleep[0])
    rems = np.flatnonzero(seq[onset:] == rem)
    return float(rems[0] * epoch_seconds / 60.0) if rems.size else math.nan


def night_keys(classes: Sequence[str]) -> list[str]:
    """Night-level quantities of a task: ``<class>_min`` per class, ``rem_latency_min`` when
    the task has REM."""
    keys = [f"{name}_min" for name in classes]
    return [*keys, "rem_latency_min"] if REM in classes else keys


def night_stage_values(night: StageNight, classes: Sequence[str], rule: str) -> dict[str, Any]:
    """One night's row: PSG and predicted minutes per class and REM latency (scored epochs)."""
    scored = night.scored
    if not scored.any():
        raise ValueError(f"Night of subject {night.subject_id!r} has no scored epochs")
    n = len(classes)
    row: dict[str, Any] = {"subject_id": night.subject_id}
    for source, seq in (
        ("psg", night.labels[scored]),
        ("pred", night.decisions(rule)[scored]),
    ):
        for name, minutes in zip(classes, stage_minutes(seq, n), strict=True):
            row[f"{source}_{name}_min"] = float(minutes)
        if REM in classes and WAKE in classes:
            row[f"{source}_rem_latency_min"] = rem_latency_min(
                seq, classes.index(WAKE), classes.index(REM)
            )
    return row


def night_level(nights: Sequence[StageNight], classes: Sequence[str], rule: str) -> dict[str, Any]:
    """``agreement``: Bland-Altman of every :func:`night_keys` quantity, predicted - PSG;
    ``nights``: the rows of :func:`night_stage_values`."""
    rows = [night_stage_values(n, classes, rule) for n in nights]
    return {
        "agreement": {
            key: agreement([r[f"psg_{key}"] for r in rows], [r[f"pred_{key}"] for r in rows])
            for key in night_keys(classes)
        },
        "nights": rows,
    }


# --------------------------------------------------------------------------------------------
# The paper's three-class figure, for comparison only
# --------------------------------------------------------------------------------------------


def oracle_best_accuracy(labels: ArrayLike, proba: ArrayLike, n_grid: int = 41) -> float:
    """Wake / NREM / REM accuracy at the best thresholds chosen on the very labels it scores.

    An epoch is wake when ``p_wake >= t_wake``, else REM when ``p_rem >= t_rem``, else NREM;
    both thresholds run over ``n_grid`` quantiles of their probabilities and the largest
    accuracy is returned. Walch et al. (2019) report their three-class "best accuracy" this way
    (a search over wake and REM thresholds on each test split's labels); it is an oracle, not
    achievable in use, and is reported only to compare with that number. NaN without scored
    epochs.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or y.shape != (p.shape[0],):
        raise ValueError(
            f"Expected labels (n,) and wake/NREM/REM probabilities (n, 3), got {y.shape} and {p.shape}"
        )
    keep = y >= 0
    y, p = y[keep], p[keep]
    if y.size == 0:
        return math.nan
    levels = np.linspace(0.0, 1.0, n_grid)
    t_wake = np.unique(np.append(np.quantile(p[:, 0], levels), np.inf))
    t_rem = np.unique(np.append(np.quantile(p[:, 2], levels), np.inf))
    best = 0.0
    for tw in t_wake:
        wake = p[:, 0] >= tw
        correct_wake = np.count_nonzero(wake & (y == 0))
        sleeping = ~wake
        rem_hit = sleeping[:, None] & (p[:, 2][:, None] >= t_rem[None, :])
        correct = (
            correct_wake
            + np.count_nonzero(rem_hit & (y == 2)[:, None], axis=0)
            + np.count_nonzero(~rem_hit & sleeping[:, None] & (y == 1)[:, None], axis=0)
        )
        best = max(best, float(correct.max()) / y.size)
    return best


# --------------------------------------------------------------------------------------------
# Summary of a stage result
# --------------------------------------------------------------------------------------------


def _pool(
    nights: Sequence[StageNight], rule: str, subset: str = "scored"
) -> tuple[NDArray[np.int8], NDArray[np.int8]]:
    if subset not in ("scored", "valid"):
        raise ValueError(f"Unknown epoch subset {subset!r}: expected 'scored' or 'valid'")
    labels, predicted = [], []
    for night in nights:
        mask = night.scored & night.valid if subset == "valid" else night.scored
        labels.append(night.labels[mask])
        predicted.append(night.decisions(rule)[mask])
    return np.concatenate(labels), np.concatenate(predicted)


def _rule_summary(result: StageResult, rule: str) -> dict[str, Any]:
    classes = result.classes
    pooled = stage_epoch_metrics(*_pool(result.nights, rule), classes)
    valid_y, valid_pred = _pool(result.nights, rule, "valid")
    valid = stage_epoch_metrics(valid_y, valid_pred, classes) if valid_y.size else {}
    subjects = []
    for night in result.nights:
        figures = stage_epoch_metrics(night.labels, night.decisions(rule), classes)
        figures.pop("confusion")
        subjects.append({"subject_id": night.subject_id, **figures})
    keys = [k for k in pooled if k not in ("confusion", "n_epochs")]
    return {
        "scored": {"pooled": pooled, "subjects": mean_sd(subjects, keys)},
        "valid": {"pooled": valid},
        "night_level": night_level(result.nights, classes, rule),
        "subjects": subjects,
    }


def summarize_stages(result: StageResult) -> dict[str, Any]:
    """Every stage figure of one result, JSON-ready (NaN -> ``None``).

    Returns
    -------
    dict
        ``name``, ``causal``, ``task``, ``classes``, ``description``, ``scenario``,
        ``n_nights``, ``n_subjects``; ``rules``: per decision rule (:data:`~sleepstream.
        evaluation.stages.RULES`) ``scored`` (``pooled``: :func:`stage_epoch_metrics` of all
        scored epochs of all nights; ``subjects``: mean, SD, n over nights), ``valid``
        (``pooled`` on the paper's valid epochs), ``night_level`` (:func:`night_level`) and
        ``subjects`` (per night figures); for three classes also ``oracle_best_accuracy`` on
        the valid epochs, ``pooled`` and ``subjects`` (mean over nights).
    """
    if not result.nights:
        raise ValueError(f"Predictor {result.name!r} has no nights")
    described = ("name", "causal", "task", "classes", "description", "scenario", "rule_source")
    summary: dict[str, Any] = {key: getattr(result, key) for key in described}
    summary |= {
        "classes": list(result.classes),
        "n_nights": len(result.nights),
        "n_subjects": len({n.subject_id for n in result.nights}),
        "rules": {rule: _rule_summary(result, rule) for rule in RULES},
    }
    if result.classes == ("wake", "nrem", "rem"):
        per_night = [
            oracle_best_accuracy(n.labels[n.valid], n.proba[n.valid], n_grid=21)
            for n in result.nights
        ]
        labels = np.concatenate([n.labels[n.valid] for n in result.nights])
        proba = np.concatenate([n.proba[n.valid] for n in result.nights])
        summary["oracle_best_accuracy"] = {
            "pooled": oracle_best_accuracy(labels, proba),
            "subjects": float(np.nanmean(per_night)) if per_night else math.nan,
        }
    return to_jsonable(summary)


# --------------------------------------------------------------------------------------------
# Over seeds and subjects
# --------------------------------------------------------------------------------------------


def _night_confusions(result: StageResult, rule: str) -> dict[str, list[NDArray[np.int64]]]:
    n = len(result.classes)
    by_subject: dict[str, list[NDArray[np.int64]]] = {}
    for night in result.nights:
        by_subject.setdefault(night.subject_id, []).append(
            confusion_counts(night.labels, night.decisions(rule), n)
        )
    return by_subject


def stage_bootstrap(
    runs: Sequence[StageResult], rule: str, n_resamples: int = 500, seed: int = 0
) -> dict[str, dict[str, float]]:
    """95 % interval of the seed mean of :data:`HEADLINE_FIGURES` (pooled), resampling subjects.

    Subjects are drawn with replacement; each seed's pooled confusion matrix is the sum of the
    drawn nights' matrices, its figures come from :func:`figures_from_confusion`, and the seed
    mean is taken. ``runs`` are one predictor's results over seeds, on the same subjects.
    """
    per_run = [_night_confusions(run, rule) for run in runs]
    subjects = same_subjects(per_run)
    stacked = [np.stack([sum(run[s]) for s in subjects]) for run in per_run]

    def figures(chosen: NDArray[np.int64]) -> list[dict[str, float]]:
        return [figures_from_confusion(matrices[chosen].sum(axis=0)) for matrices in stacked]

    return bootstrap_interval(len(subjects), figures, HEADLINE_FIGURES, n_resamples, seed)
