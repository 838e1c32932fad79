"""Leave-one-subject-out evaluation of any sleep/wake predictor, in every start scenario.

For each held-out night a fresh copy of the predictor is fitted on all other nights and predicts
the held-out night causally, once per start scenario (:mod:`sleepstream.evaluation.scenarios`).

Deployable thresholds
---------------------
The thresholds applied to night *s* are chosen on the pooled out-of-fold scores of the *other*
held-out nights of the run, in the same scenario: each of those scores comes from a model that
never trained on the night it scores, and night *s*'s own labels and scores never enter the
choice. (Night *s* is one of the 30 training nights of the models behind those scores; that is
the only way it touches them.) This replaces a choice on a few inner validation nights, which
swung from fold to fold. At least two folds are needed.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol, TypedDict, TypeVar, Unpack, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress

from sleepstream.evaluation.metrics import threshold_for_sleep_correct, threshold_max_kappa
from sleepstream.evaluation.predictions import (
    SLEEP_CORRECT_TARGETS,
    LosoResult,
    NightPrediction,
)
from sleepstream.evaluation.scenarios import SCENARIOS, StartScenario
from sleepstream.records import SLEEP_WAKE, Recording

log = logging.getLogger(__name__)

THRESHOLD_SOURCE = "pooled out-of-fold scores of the other held-out nights, same scenario"


class FoldOptions(TypedDict, total=False):
    """Which folds the LOSO drivers run, and how (keyword arguments of :func:`run_folds`,
    :func:`run_loso`, :func:`run_loso_many` and the commands built on them).

    ``folds``: the held-out subjects (default: all); ``scenarios``: the start scenarios
    (default :data:`~sleepstream.evaluation.scenarios.SCENARIOS`); ``progress``: a progress bar
    on stderr (default True).
    """

    folds: Sequence[str] | None
    scenarios: Sequence[StartScenario]
    progress: bool


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


Scores = tuple[NDArray[np.int8], NDArray[np.float64]]


def choose_thresholds(scores: Sequence[Scores]) -> dict[str, float]:
    """Thresholds from (labels, p_sleep) pairs of nights other than the test night, pooled.

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


FoldScores = dict[str, NDArray[np.float64]]
"""The held-out night's predictions for its PSG epochs (p(sleep), or one row of class
probabilities per epoch), per scenario name."""


def run_fold(
    template: Predictor,
    recordings: Sequence[Recording],
    test_index: int,
    scenarios: Sequence[StartScenario] = SCENARIOS,
) -> FoldScores:
    """Fit a copy of ``template`` without night ``test_index``; predict it in every scenario."""
    test = recordings[test_index]
    predictor = copy.deepcopy(template)
    predictor.fit([r for i, r in enumerate(recordings) if i != test_index])
    by_history: dict[float, NDArray[np.float64]] = {}
    out: FoldScores = {}
    for scenario in scenarios:
        if scenario.history_seconds not in by_history:
            p = predictor.predict(scenario.fed(test))
            by_history[scenario.history_seconds] = np.asarray(p)[-test.n_epochs :]
        out[scenario.name] = by_history[scenario.history_seconds]
    return out


def _run_fold_star(
    args: tuple[Predictor, Sequence[Recording], int, Sequence[StartScenario]],
) -> FoldScores:
    return run_fold(*args)


_T = TypeVar("_T")


def leave_one_out(by_subject: Mapping[str, _T]) -> Iterator[tuple[str, list[_T]]]:
    """Each subject with the values of all the others (what is chosen out of fold for it).

    >>> list(leave_one_out({"a": 1, "b": 2, "c": 3}))
    [('a', [2, 3]), ('b', [1, 3]), ('c', [1, 2])]
    """
    for subject in by_subject:
        yield subject, [value for other, value in by_subject.items() if other != subject]


def assemble(
    template: Predictor,
    recordings: Mapping[str, Recording],
    scores: Mapping[str, FoldScores],
    scenarios: Sequence[StartScenario] = SCENARIOS,
) -> dict[str, LosoResult]:
    """The held-out nights of one predictor per scenario, with out-of-fold thresholds.

    ``scores`` maps each held-out subject to its :func:`run_fold` output.
    """
    if len(scores) < 2:
        raise ValueError(
            "Deployable thresholds are chosen on the out-of-fold scores of the other held-out "
            f"nights: run at least 2 folds (got {len(scores)})"
        )
    results = {}
    for scenario in scenarios:
        nights = {s: scenario.scored(recordings[s]) for s in scores}
        labelled = {s: (nights[s].labels(SLEEP_WAKE), scores[s][scenario.name]) for s in scores}
        predictions = []
        for subject, others in leave_one_out(labelled):
            night, thresholds = nights[subject], choose_thresholds(others)
            p_sleep = scores[subject][scenario.name]
            predictions.append(
                NightPrediction.from_recording(night, p_sleep, thresholds, night.valid)
            )
        results[scenario.name] = LosoResult(
            template.name,
            template.causal,
            predictions,
            getattr(template, "description", ""),
            scenario=scenario.name,
            threshold_source=THRESHOLD_SOURCE,
        )
    return results


def _tasks(
    templates: Sequence[Predictor],
    recordings: Sequence[Recording],
    wanted: Sequence[str],
    scenarios: Sequence[StartScenario],
) -> Iterator[tuple[Predictor, Sequence[Recording], int, Sequence[StartScenario]]]:
    ids = [r.subject_id for r in recordings]
    for template in templates:
        for subject in wanted:
            yield template, recordings, ids.index(subject), scenarios


def run_folds(
    templates: Sequence[Predictor],
    recordings: Sequence[Recording],
    *,
    folds: Sequence[str] | None = None,
    scenarios: Sequence[StartScenario] = SCENARIOS,
    n_jobs: int = 1,
    progress: bool = True,
) -> list[dict[str, FoldScores]]:
    """Fit and predict every held-out night of every template: per template, the
    :func:`run_fold` output of each held-out subject (``folds``, default all), in fold order.

    Only the fitting and predicting: what the scores mean is up to the caller. ``predict`` may
    return p(sleep) per epoch (:func:`assemble`) or one row of class probabilities per epoch
    (:func:`sleepstream.evaluation.stages.assemble_stages`). ``n_jobs > 1`` runs folds in
    processes; the progress bar goes to stderr.
    """
    ids = [r.subject_id for r in recordings]
    wanted = list(ids) if folds is None else list(folds)
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        raise ValueError(f"Unknown held-out subjects {unknown}; available: {ids}")
    tasks = list(_tasks(templates, recordings, wanted, scenarios))
    _warm_feature_cache(templates, recordings, scenarios)
    fold_scores: list[FoldScores] = []
    names = ", ".join(dict.fromkeys(t.name for t in templates))
    # On stderr: stdout is for what a command was asked for.
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task(f"LOSO {names}", total=len(tasks))
        if n_jobs > 1:
            # Fresh interpreters, not forks: a fork of a process whose torch threads have run
            # (the features of the warm-up, earlier training) can hang in its thread pool.
            spawn = multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
            with ProcessPoolExecutor(
                n_jobs, mp_context=spawn, initializer=_share_cores, initargs=(threads,)
            ) as pool:
                for scores in pool.map(_run_fold_star, tasks):
                    fold_scores.append(scores)
                    bar.advance(task)
        else:
            for args in tasks:
                fold_scores.append(_run_fold_star(args))
                bar.advance(task)
    return [
        dict(zip(wanted, fold_scores[k * len(wanted) : (k + 1) * len(wanted)], strict=True))
        for k in range(len(templates))
    ]


def run_loso_many(
    templates: Sequence[Predictor],
    recordings: Sequence[Recording],
    *,
    n_jobs: int = 1,
    **options: Unpack[FoldOptions],
) -> list[dict[str, LosoResult]]:
    """:func:`run_loso` of several predictors (e.g. one per seed), their folds in one pool."""
    runs = run_folds(templates, recordings, n_jobs=n_jobs, **options)
    scenarios = options.get("scenarios", SCENARIOS)
    by_id = {r.subject_id: r for r in recordings}
    return [
        assemble(template, by_id, scores, scenarios)
        for template, scores in zip(templates, runs, strict=True)
    ]


def _share_cores(threads: int) -> None:
    """In a fold process: torch uses its share of the cores, not all of them (several folds at
    once would otherwise oversubscribe the machine many times over)."""
    import torch

    torch.set_num_threads(threads)


def _warm_feature_cache(
    templates: Sequence[Predictor],
    recordings: Sequence[Recording],
    scenarios: Sequence[StartScenario],
) -> None:
    """Features of every night any fold will use, in one batched scan before the folds start
    (they are cached on disk, so the fold processes only read them)."""
    from sleepstream.features import nights_features

    nights = [s.fed(r) for s in scenarios for r in recordings]
    for template in templates:
        sequences = getattr(template, "feature_nights", None)
        if sequences is not None:
            nights += sequences(recordings)
    started = time.perf_counter()
    nights_features(nights)
    log.info(
        "Features of %d night sequences ready in %.0f s", len(nights), time.perf_counter() - started
    )


def run_loso(
    template: Predictor,
    recordings: Sequence[Recording],
    *,
    n_jobs: int = 1,
    **options: Unpack[FoldOptions],
) -> dict[str, LosoResult]:
    """Leave-one-subject-out over ``recordings`` (or only the held-out subjects ``folds``).

    ``template`` is copied, never fitted itself. ``n_jobs > 1`` runs folds in processes;
    ``options``: :class:`FoldOptions`. Returns one :class:`LosoResult` per scenario name.
    """
    return run_loso_many([template], recordings, n_jobs=n_jobs, **options)[0]
