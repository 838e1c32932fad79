"""Leave-one-subject-out evaluation of any sleep/wake predictor.

For each night: a fresh copy of the predictor is fitted on all other nights, its thresholds are
chosen on those training nights only, and the held-out night is predicted causally. Nothing from
the held-out night reaches ``fit`` or the thresholds.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from rich.progress import Progress

from sleepstream.evaluation.metrics import threshold_for_sleep_correct, threshold_max_kappa
from sleepstream.evaluation.predictions import (
    SLEEP_CORRECT_TARGETS,
    LosoResult,
    NightPrediction,
)
from sleepstream.records import SLEEP_WAKE, Recording

log = logging.getLogger(__name__)


@runtime_checkable
class Predictor(Protocol):
    """Anything that learns from nights and then gives p(sleep) per epoch of a new night.

    ``predict`` must be causal unless ``causal`` is False: the value for epoch *t* may depend
    only on data up to the end of epoch *t*.
    """

    name: str
    causal: bool

    def fit(self, recordings: Sequence[Recording]) -> None: ...

    def predict(self, recording: Recording) -> NDArray[np.float64]: ...


@runtime_checkable
class HeldOutScores(Protocol):
    """Optional: a predictor that holds scores of nights it did not train on (an inner split).

    When present, thresholds are chosen on these instead of on in-sample training predictions.
    """

    def threshold_scores(self) -> list[tuple[NDArray[np.int8], NDArray[np.float64]]]: ...


def choose_thresholds(
    scores: Sequence[tuple[NDArray[np.int8], NDArray[np.float64]]],
) -> dict[str, float]:
    """Thresholds from (labels, p_sleep) pairs of *training* nights, pooled.

    Keys: ``wasa93``/``wasa95`` (sleep-correct 0.93 / 0.95) and ``operating`` (maximum kappa).
    """
    labels = np.concatenate([lab for lab, _ in scores])
    p = np.concatenate([p for _, p in scores])
    keep = labels >= 0
    labels, p = labels[keep], p[keep]
    thresholds = {
        f"wasa{round(target * 100)}": threshold_for_sleep_correct(labels, p, target)
        for target in SLEEP_CORRECT_TARGETS
    }
    thresholds["operating"] = threshold_max_kappa(labels, p)
    return thresholds


def run_fold(
    template: Predictor, recordings: Sequence[Recording], test_index: int
) -> NightPrediction:
    """Fit a copy of ``template`` without night ``test_index`` and predict that night."""
    test = recordings[test_index]
    train = [r for i, r in enumerate(recordings) if i != test_index]
    predictor = copy.deepcopy(template)
    predictor.fit(train)
    if isinstance(predictor, HeldOutScores):
        scores = predictor.threshold_scores()
    else:
        scores = [(r.labels(SLEEP_WAKE), predictor.predict(r)) for r in train]
    thresholds = choose_thresholds(scores)
    p_sleep = predictor.predict(test)
    valid = test.paper_valid if test.paper_valid is not None else test.scored
    return NightPrediction.from_recording(test, p_sleep, thresholds, valid & test.scored)


def _run_fold_star(args: tuple[Predictor, Sequence[Recording], int]) -> NightPrediction:
    return run_fold(*args)


def run_loso(
    template: Predictor,
    recordings: Sequence[Recording],
    *,
    folds: Sequence[str] | None = None,
    n_jobs: int = 1,
    progress: bool = True,
) -> LosoResult:
    """Leave-one-subject-out over ``recordings`` (or only the held-out subjects ``folds``).

    ``template`` is copied, never fitted itself. ``n_jobs > 1`` runs folds in processes.
    """
    ids = [r.subject_id for r in recordings]
    wanted = list(ids) if folds is None else list(folds)
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        raise ValueError(f"Unknown held-out subjects {unknown}; available: {ids}")
    tasks = [(template, recordings, ids.index(s)) for s in wanted]
    nights: list[NightPrediction] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"LOSO {template.name}", total=len(tasks))
        if n_jobs > 1:
            with ProcessPoolExecutor(n_jobs) as pool:
                for night in pool.map(_run_fold_star, tasks):
                    nights.append(night)
                    bar.advance(task)
        else:
            for args in tasks:
                nights.append(_run_fold_star(args))
                bar.advance(task)
    description = getattr(template, "description", "")
    return LosoResult(template.name, template.causal, nights, description)
