"""Figures over seeds: the mean +- SD over training seeds and a subject-bootstrap 95 % interval.

A recipe's figures move with the training seed, so a headline figure is the mean over seeds
(each seed a whole LOSO run) with the seeds' SD. The interval says how much the figure depends on
which subjects happened to be in the study: subjects are resampled with replacement, every seed's
pooled figure is recomputed on the resampled nights (each with its own deployable thresholds), and
the seed mean is taken; the 2.5th and 97.5th percentiles of that mean form the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from sleepstream.evaluation.metrics import OPERATING
from sleepstream.evaluation.predictions import LosoResult

HEADLINE_FIGURES = ("wasa93_deployable", "wasa95_deployable", "auroc", "kappa")
"""The figures that get a subject-bootstrap interval."""

_Night = tuple[NDArray[np.int8], NDArray[np.float64], dict[str, float]]


def seed_spread(pooled: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Mean, SD (ddof=1; 0 for one seed) and count over seeds of every numeric pooled figure."""
    keys = [k for k in pooled[0] if isinstance(pooled[0][k], int | float)]
    out: dict[str, dict[str, float | int]] = {}
    for key in keys:
        values = np.array(
            [row.get(key) if row.get(key) is not None else math.nan for row in pooled], float
        )
        values = values[np.isfinite(values)]
        out[key] = {
            "mean": float(values.mean()) if values.size else math.nan,
            "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "n": int(values.size),
        }
    return out


def _nights(result: LosoResult) -> dict[str, list[_Night]]:
    by_subject: dict[str, list[_Night]] = {}
    for night in result.nights:
        scored = night.scored
        by_subject.setdefault(night.subject_id, []).append(
            (night.labels[scored], night.p_sleep[scored], night.thresholds)
        )
    return by_subject


def headline_figures(nights: Sequence[_Night]) -> dict[str, float]:
    """:data:`HEADLINE_FIGURES` of pooled nights, each with its own thresholds."""
    y = np.concatenate([n[0] for n in nights])
    p = np.concatenate([n[1] for n in nights])

    def per_epoch(key: str) -> NDArray[np.float64]:
        return np.concatenate([np.full(len(n[0]), n[2][key]) for n in nights])

    wake = y == 0
    out = {
        f"{key}_deployable": float(np.mean(p[wake] < per_epoch(key)[wake]))
        if wake.any()
        else math.nan
        for key in ("wasa93", "wasa95")
    }
    both = wake.any() and (~wake).any()
    out["auroc"] = float(roc_auc_score(y, p)) if both else math.nan
    out["kappa"] = float(cohen_kappa_score(y, (p >= per_epoch(OPERATING)).astype(np.int8)))
    return out


def subject_bootstrap(
    runs: Sequence[LosoResult], n_resamples: int = 500, seed: int = 0
) -> dict[str, dict[str, float]]:
    """95 % interval of the seed mean of :data:`HEADLINE_FIGURES`, resampling subjects.

    ``runs`` are the same predictor's results over several seeds, on the same subjects.
    """
    per_run = [_nights(run) for run in runs]
    subjects = same_subjects(per_run)

    def figures(chosen: NDArray[np.int64]) -> list[dict[str, float]]:
        return [headline_figures([n for i in chosen for n in run[subjects[i]]]) for run in per_run]

    return bootstrap_interval(len(subjects), figures, HEADLINE_FIGURES, n_resamples, seed)


def same_subjects(per_run: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sorted subjects of the first run; ``ValueError`` unless every run holds the same.

    >>> same_subjects([{"b": 1, "a": 2}, {"a": 3, "b": 4}])
    ['a', 'b']
    """
    subjects = sorted(per_run[0])
    if any(sorted(run) != subjects for run in per_run):
        raise ValueError("Every seed's run must hold the same subjects to be bootstrapped together")
    return subjects


def bootstrap_interval(
    n_subjects: int,
    figures_of: Callable[[NDArray[np.int64]], Sequence[Mapping[str, float]]],
    keys: Sequence[str],
    n_resamples: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """95 % interval of the seed mean of each figure in ``keys``, resampling subjects.

    Each resample draws ``n_subjects`` subject indices with replacement (``numpy``'s
    ``default_rng(seed)``); ``figures_of(chosen)`` gives every seed's figures on the nights of
    the chosen subjects, and their mean (NaN ignored) is one draw. Returns per key the 2.5th
    (``low``) and 97.5th (``high``) percentiles of the draws and ``n_resamples``.

    Examples
    --------
    >>> values = np.array([1.0, 2.0, 3.0])
    >>> interval = bootstrap_interval(3, lambda chosen: [{"mean": values[chosen].mean()}], ["mean"])
    >>> 1.0 <= interval["mean"]["low"] < interval["mean"]["high"] <= 3.0
    True
    """
    rng = np.random.default_rng(seed)
    draws = {key: np.empty(n_resamples) for key in keys}
    for b in range(n_resamples):
        figures = figures_of(rng.integers(0, n_subjects, n_subjects))
        for key in keys:
            draws[key][b] = np.nanmean([f[key] for f in figures])
    return {
        key: {
            "low": float(np.nanpercentile(values, 2.5)),
            "high": float(np.nanpercentile(values, 97.5)),
            "n_resamples": n_resamples,
        }
        for key, values in draws.items()
    }


def threshold_spread(runs: Sequence[LosoResult], key: str = "wasa93") -> dict[str, float]:
    """How much a deployable threshold moves across folds (and seeds): min, max, SD."""
    values = np.array([n.thresholds[key] for run in runs for n in run.nights], dtype=float)
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "n": int(values.size),
    }
