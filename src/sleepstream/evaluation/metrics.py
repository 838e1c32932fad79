"""Epoch-level metrics, operating points and the summary of one predictor's LOSO result.

Sleep is the positive class. *Sleep-correct* is the fraction of PSG-sleep epochs called sleep
(sensitivity); *wake-correct* is the fraction of PSG-wake epochs called wake (specificity). An
epoch is called sleep when ``p_sleep >= threshold``. Labels are 1 sleep, 0 wake, -1 unscored;
unscored epochs are dropped before anything is computed.

WASA93 / WASA95 is the wake-correct fraction at a threshold giving sleep-correct 0.93 / 0.95.
The *deployable* figure uses the thresholds chosen on the training subjects
(``NightPrediction.thresholds``); the *oracle* figure chooses the threshold on the very labels it
is scored on and is reported only for comparison with published numbers that did so.

Examples
--------
>>> labels = np.array([0, 0, 1, 1, 1, -1])
>>> p = np.array([0.1, 0.6, 0.4, 0.8, 0.9, 0.5])
>>> threshold_for_sleep_correct(labels, p, 0.6)
0.8
>>> wasa(labels, p, 0.8)
Wasa(wake_correct=1.0, sleep_correct=0.6666666666666666, threshold=0.8)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    f1_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.functional.classification import binary_calibration_error

from sleepstream.evaluation.nightly import night_level_summary
from sleepstream.evaluation.predictions import SLEEP_CORRECT_TARGETS, LosoResult, NightPrediction

logger = logging.getLogger(__name__)

EPOCH_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "kappa",
    "auroc",
    "wake_f1",
    "brier",
    "ece",
    "sleep_correct",
    "wake_correct",
)
"""Keys of :func:`epoch_metrics`, in report order."""

OPERATING = "operating"
"""Key of the kappa-maximising threshold in ``NightPrediction.thresholds``."""


def wasa_key(target: float) -> str:
    """Name of the figure at a sleep-correct target: ``0.93 -> "wasa93"``."""
    return f"wasa{round(target * 100)}"


WASA_KEYS = tuple(wasa_key(t) for t in SLEEP_CORRECT_TARGETS)
"""Threshold keys of the sleep-correct targets, e.g. ``("wasa93", "wasa95")``."""


class Wasa(NamedTuple):
    """Wake-correct at one threshold, with the sleep-correct it actually achieved."""

    wake_correct: float
    sleep_correct: float
    threshold: float


class Pooled(NamedTuple):
    """Scored epochs of several nights concatenated, with each night's thresholds per epoch."""

    labels: NDArray[np.int8]
    p_sleep: NDArray[np.float64]
    thresholds: dict[str, NDArray[np.float64]]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _scored(
    labels: ArrayLike, p_sleep: ArrayLike, threshold: ArrayLike | None = None
) -> tuple[NDArray[np.int8], NDArray[np.float64], NDArray[np.float64]]:
    """Scored labels and scores (and the threshold per scored epoch); checks shapes and codes."""
    y = np.asarray(labels)
    p = np.asarray(p_sleep, dtype=np.float64)
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(
            f"labels and p_sleep must be 1-D of equal length, got shapes {y.shape} and {p.shape}"
        )
    bad = ~np.isin(y, (-1, 0, 1))
    if bad.any():
        raise ValueError(
            f"Invalid label {y[bad][0].item()!r}: expected 1 sleep, 0 wake or -1 unscored"
        )
    if not np.all(np.isfinite(p)):
        raise ValueError(f"p_sleep must be finite, got {p[~np.isfinite(p)][0].item()!r}")
    if threshold is None:
        thr = np.full(p.shape, np.nan)
    else:
        thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), p.shape)
        if not np.all(np.isfinite(thr)):
            bad_threshold = thr[~np.isfinite(thr)][0].item()
            raise ValueError(f"threshold must be finite, got {bad_threshold!r}")
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"No scored epochs among {y.size} (all labels are -1)")
    return y[keep].astype(np.int8), p[keep], thr[keep]


def _sleep_wake_correct(
    y: NDArray[np.int8], called_sleep: NDArray[np.bool_]
) -> tuple[float, float]:
    """Sleep-correct and wake-correct: the recall of each class; NaN for a class not scored."""
    wake, sleep = recall_score(
        y, called_sleep.astype(np.int8), labels=[0, 1], average=None, zero_division=np.nan
    )
    return float(sleep), float(wake)


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def threshold_for_sleep_correct(labels: ArrayLike, p_sleep: ArrayLike, target: float) -> float:
    """Largest threshold whose sleep-correct fraction is at least ``target``.

    Parameters
    ----------
    labels
        1 sleep, 0 wake, -1 unscored, one per epoch.
    p_sleep
        Score per epoch; higher means more likely asleep.
    target
        Required sleep-correct fraction, in (0, 1].

    Returns
    -------
    float
        One of the sleep epochs' scores. With tied scores the achieved sleep-correct may exceed
        ``target``; any larger threshold would fall below it.

    Raises
    ------
    ValueError
        If ``target`` is outside (0, 1] or there are no scored sleep epochs.

    Examples
    --------
    Sleep scores .9 .8 .7 .6: sleep-correct is 1/4, 2/4, 3/4, 4/4 at these thresholds.

    >>> labels = np.array([1, 1, 1, 1, 0, -1])
    >>> p = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.1])
    >>> threshold_for_sleep_correct(labels, p, 0.5), threshold_for_sleep_correct(labels, p, 0.6)
    (0.8, 0.7)
    """
    if not 0 < target <= 1:
        raise ValueError(f"Sleep-correct target must be in (0, 1], got {target!r}")
    y, p, _ = _scored(labels, p_sleep)
    if not np.any(y == 1):
        raise ValueError(f"No sleep epochs among {y.size} scored epochs: sleep-correct undefined")
    with warnings.catch_warnings():
        # Without wake epochs the false-positive rate is undefined; only the TPR is used here.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        _, sleep_correct, thresholds = roc_curve(y, p, pos_label=1, drop_intermediate=False)
    # The TPR at each distinct score, from the largest down, is the sleep-correct fraction k / n
    # computed exactly as sleep-correct itself is, so 0.93 * 100 = 93.00000000000001 cannot
    # make 93 of 100 fall short. It rises to 1, so some threshold always reaches the target.
    return float(thresholds[np.argmax(sleep_correct >= target)])


def threshold_max_kappa(labels: ArrayLike, p_sleep: ArrayLike) -> float:
    """Threshold maximising Cohen's kappa of the sleep/wake decision.

    Every distinct score is a candidate cut point (the ROC curve's thresholds); kappa is computed
    for all of them at once from the cumulative confusion counts. Ties go to the larger threshold.

    Raises
    ------
    ValueError
        If the scored epochs do not contain both sleep and wake.
    """
    y, p, _ = _scored(labels, p_sleep)
    n_sleep = int(np.count_nonzero(y == 1))
    n_wake = y.size - n_sleep
    if n_sleep == 0 or n_wake == 0:
        raise ValueError(
            f"Kappa needs both classes: {n_sleep} sleep and {n_wake} wake scored epochs"
        )
    fpr, tpr, thresholds = roc_curve(y, p, pos_label=1, drop_intermediate=False)
    # Index 0 is the +inf threshold (nothing called sleep); kappa is 0 there, as at the lowest cut.
    tp = tpr[1:] * n_sleep
    fp = fpr[1:] * n_wake
    fn = n_sleep - tp
    tn = n_wake - fp
    numerator = 2.0 * (tp * tn - fn * fp)
    denominator = (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
    kappa = numerator / denominator
    return float(thresholds[1:][int(np.argmax(kappa))])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def expected_calibration_error(labels: ArrayLike, p_sleep: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error of p(sleep), in equal-width bins weighted by epoch count.

    ``sum_b (n_b / n) * |mean(sleep in b) - mean(p_sleep in b)|`` over bins ``[i/n_bins,
    (i+1)/n_bins)``, the last bin closed at 1: torchmetrics' ``binary_calibration_error``
    (L1 norm), whose bin edges are ``torch.linspace(0, 1, n_bins + 1)`` in float64.

    Raises
    ------
    ValueError
        If ``n_bins`` is not a positive integer or a probability lies outside [0, 1].

    Examples
    --------
    Bin [0.2, 0.3): mean p 0.2, one of its two epochs asleep. Bin [0.9, 1], which holds p = 1:
    mean p 0.95, one of its two epochs asleep.

    >>> labels = np.array([0, 1, 1, 0])
    >>> p = np.array([0.2, 0.2, 0.9, 1.0])
    >>> round(expected_calibration_error(labels, p), 12)  # (2 * 0.3 + 2 * 0.45) / 4
    0.375
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    y, p, _ = _scored(labels, p_sleep)
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"p_sleep must lie in [0, 1], got range [{p.min()}, {p.max()}]")
    # torchmetrics gives p = 1 a bin of its own, [1, 1]; the largest float below 1 keeps it in
    # the last bin (as documented), at a cost of 1.1e-16 to that bin's mean p.
    p_binned = np.where(p == 1.0, np.nextafter(1.0, 0.0), p)
    error = binary_calibration_error(
        torch.from_numpy(p_binned),
        torch.from_numpy((y == 1).astype(np.int64)),
        n_bins=n_bins,
        norm="l1",
    )
    return float(error)


def _decision_metrics(
    y: NDArray[np.int8], p: NDArray[np.float64], called_sleep: NDArray[np.bool_]
) -> dict[str, float]:
    """Metrics of scored labels ``y`` against binary decisions, plus score-based metrics."""
    sleep = y == 1
    both_classes = bool(sleep.any() and (~sleep).any())
    pred = called_sleep.astype(np.int8)
    sleep_correct, wake_correct = _sleep_wake_correct(y, called_sleep)
    nan = math.nan
    if (~sleep).any() or (~called_sleep).any():
        wake_f1 = float(f1_score(y, pred, pos_label=0, zero_division=np.nan))
    else:  # no wake in the labels nor in the decisions: F1 of wake is undefined
        wake_f1 = nan
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both_classes else nan,
        "kappa": float(cohen_kappa_score(y, pred)) if both_classes else nan,
        "auroc": float(roc_auc_score(y, p)) if both_classes else nan,
        "wake_f1": wake_f1,
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "sleep_correct": sleep_correct,
        "wake_correct": wake_correct,
    }


def epoch_metrics(labels: ArrayLike, p_sleep: ArrayLike, threshold: ArrayLike) -> dict[str, float]:
    """Epoch-level agreement of thresholded p(sleep) with PSG, on scored epochs.

    Parameters
    ----------
    labels
        1 sleep, 0 wake, -1 unscored (dropped).
    p_sleep
        Probability of sleep per epoch, in [0, 1].
    threshold
        One threshold, or one per epoch (e.g. each pooled night with its own threshold).

    Returns
    -------
    dict
        The keys of :data:`EPOCH_METRICS`. AUROC, kappa and balanced accuracy are NaN when the
        scored epochs hold only one class; sleep-/wake-correct are NaN without that class.
        AUROC, Brier and ECE use the probabilities, the rest the decisions.

    Examples
    --------
    >>> m = epoch_metrics(np.array([1, 1, 1, 0, -1]), np.array([0.9, 0.7, 0.4, 0.2, 0.5]), 0.5)
    >>> m["sleep_correct"], m["wake_correct"], m["accuracy"]
    (0.6666666666666666, 1.0, 0.75)
    """
    y, p, thr = _scored(labels, p_sleep, threshold)
    return _decision_metrics(y, p, p >= thr)


def wasa(labels: ArrayLike, p_sleep: ArrayLike, threshold: ArrayLike) -> Wasa:
    """Wake-correct at ``threshold`` (scalar or per epoch) and the sleep-correct it achieved.

    ``Wasa.threshold`` is the threshold if scalar, else NaN. Sleep- or wake-correct is NaN when
    no scored epoch has that label.

    Examples
    --------
    >>> labels, p = np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.3, 0.6])
    >>> wasa(labels, p, np.array([0.5, 0.3, 0.5, 0.7]))  # each epoch its own threshold
    Wasa(wake_correct=1.0, sleep_correct=1.0, threshold=nan)
    >>> wasa(labels, p, 0.5)
    Wasa(wake_correct=0.5, sleep_correct=0.5, threshold=0.5)
    """
    y, p, thr = _scored(labels, p_sleep, threshold)
    sleep_correct, wake_correct = _sleep_wake_correct(y, p >= thr)
    scalar = np.ndim(threshold) == 0
    return Wasa(
        wake_correct=wake_correct,
        sleep_correct=sleep_correct,
        threshold=float(np.asarray(threshold)) if scalar else math.nan,
    )


# --------------------------------------------------------------------------------------------
# Summary of a LOSO result
# --------------------------------------------------------------------------------------------


def night_threshold(night: NightPrediction, key: str) -> float:
    """The night's training-chosen threshold ``key``; raises ``ValueError`` if missing or NaN."""
    try:
        value = float(night.thresholds[key])
    except KeyError:
        raise ValueError(
            f"Night of subject {night.subject_id!r} has no {key!r} threshold "
            f"(has {sorted(night.thresholds)})"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"Night of subject {night.subject_id!r}: {key!r} threshold is {value!r}")
    return value


def pool(nights: Sequence[NightPrediction], subset: str = "scored") -> Pooled:
    """Concatenate nights' epochs, repeating each night's training-chosen thresholds per epoch.

    Parameters
    ----------
    nights
        Held-out nights.
    subset
        ``"scored"`` (all epochs with a label) or ``"valid"`` (the published paper's subset,
        intersected with scored).
    """
    if subset not in ("scored", "valid"):
        raise ValueError(f"Unknown epoch subset {subset!r}: expected 'scored' or 'valid'")
    if not nights:
        raise ValueError("No nights to pool")
    keys = (OPERATING, *WASA_KEYS)
    labels, scores = [], []
    thresholds: dict[str, list[NDArray[np.float64]]] = {key: [] for key in keys}
    for night in nights:
        mask = night.scored & night.valid if subset == "valid" else night.scored
        labels.append(night.labels[mask])
        scores.append(night.p_sleep[mask])
        n = int(np.count_nonzero(mask))
        for key in keys:
            thresholds[key].append(np.full(n, night_threshold(night, key)))
    return Pooled(
        np.concatenate(labels).astype(np.int8),
        np.concatenate(scores).astype(np.float64),
        {key: np.concatenate(values) for key, values in thresholds.items()},
    )


def _figures(pooled: Pooled) -> dict[str, float]:
    """Epoch metrics at the operating thresholds, WASA deployable and oracle, for one epoch set."""
    y, p, thr = pooled
    if y.size == 0:
        return {}
    figures = _decision_metrics(y, p, p >= thr[OPERATING])
    for target, key in zip(SLEEP_CORRECT_TARGETS, WASA_KEYS, strict=True):
        deployable = wasa(y, p, thr[key])
        figures[f"{key}_deployable"] = deployable.wake_correct
        figures[f"{key}_deployable_sleep_correct"] = deployable.sleep_correct
        if np.any(y == 1):
            oracle = wasa(y, p, threshold_for_sleep_correct(y, p, target))
        else:
            oracle = Wasa(math.nan, math.nan, math.nan)
        figures[f"{key}_oracle"] = oracle.wake_correct
        figures[f"{key}_oracle_sleep_correct"] = oracle.sleep_correct
        figures[f"{key}_oracle_threshold"] = oracle.threshold
    return figures


def mean_sd(rows: Sequence[Mapping[str, float]], keys: Sequence[str]) -> dict[str, dict]:
    """Mean, SD (ddof=1; NaN for fewer than two values) and count of the finite values of each
    key over ``rows`` (e.g. one row of figures per subject); a missing key counts as NaN.

    Examples
    --------
    >>> mean_sd([{"kappa": 0.5}, {"kappa": 0.7}, {"kappa": float("nan")}], ["kappa"])
    {'kappa': {'mean': 0.6, 'sd': 0.14142135623730948, 'n': 2}}
    """
    out: dict[str, dict] = {}
    for key in keys:
        values = np.array([row.get(key, math.nan) for row in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[key] = {
            "mean": float(values.mean()) if values.size else math.nan,
            "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan,
            "n": int(values.size),
        }
    return out


def _by_subject(nights: Sequence[NightPrediction]) -> dict[str, list[NightPrediction]]:
    groups: dict[str, list[NightPrediction]] = {}
    for night in nights:
        groups.setdefault(night.subject_id, []).append(night)
    return groups


def to_jsonable(value: Any) -> Any:
    """Nested dicts/lists of plain Python numbers, with NaN and infinities turned into ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def summarize(result: LosoResult) -> dict[str, Any]:
    """Every figure of the evaluation contract for one predictor, JSON-ready (NaN -> ``None``).

    Returns
    -------
    dict
        ``name``, ``causal``, ``description``, ``n_nights``, ``n_subjects``;
        ``scored``: ``n_epochs``, ``pooled`` (all scored epochs of all nights: epoch metrics with
        each night's own operating threshold, ``wasaNN_deployable`` with each night's own
        training-chosen threshold, ``wasaNN_oracle`` with one threshold chosen on the pooled
        out-of-fold scores), and ``subjects`` (mean, SD, n of the same figures computed per
        subject, the oracle on that subject's own labels);
        ``valid``: ``n_epochs`` and ``pooled`` on the published paper's valid epochs;
        ``night_level``, ``real_time``, ``nights``: from :mod:`sleepstream.evaluation.nightly`;
        ``subjects``: one row of figures per subject.
    """
    if not result.nights:
        raise ValueError(f"Predictor {result.name!r} has no nights")
    scored = pool(result.nights, "scored")
    valid = pool(result.nights, "valid")
    pooled_figures = _figures(scored)
    subject_rows: list[dict[str, Any]] = []
    for subject_id, nights in _by_subject(result.nights).items():
        subject_pool = pool(nights, "scored")
        row: dict[str, Any] = {"subject_id": subject_id, "n_epochs": int(subject_pool.labels.size)}
        row.update(_figures(subject_pool))
        subject_rows.append(row)
    keys = list(pooled_figures)
    operating = [night_threshold(night, OPERATING) for night in result.nights]
    nightly = night_level_summary(result.nights, operating)
    summary = {
        "name": result.name,
        "causal": result.causal,
        "description": result.description,
        "n_nights": len(result.nights),
        "n_subjects": len(subject_rows),
        "scored": {
            "n_epochs": int(scored.labels.size),
            "pooled": pooled_figures,
            "subjects": mean_sd(subject_rows, keys),
        },
        "valid": {"n_epochs": int(valid.labels.size), "pooled": _figures(valid)},
        "night_level": nightly["night_level"],
        "real_time": nightly["real_time"],
        "nights": nightly["nights"],
        "subjects": subject_rows,
    }
    logger.debug("Summarised %s over %d nights", result.name, len(result.nights))
    return to_jsonable(summary)
