"""Sleep stages under leave-one-subject-out: class probabilities of held-out nights, decided.

A stage predictor gives, for every epoch of a night, the probabilities of the classes of one
:class:`~sleepstream.records.LabelMap` (wake / NREM / REM, or wake / light / deep / REM). The
same LOSO driver as for sleep/wake (:func:`sleepstream.evaluation.loso.run_folds`) fits a fresh
copy per held-out night and predicts it in every start scenario; this module turns its output
into one :class:`StageResult` per scenario, with each night's decision rule fixed without it.

Decision rules
--------------
``argmax``
    The most probable class.
``tuned``
    The most probable class after weighting: ``argmax_k w_k p_k``. The weights maximise Cohen's
    kappa on the pooled out-of-fold probabilities of the *other* held-out nights of the run, in
    the same scenario: the source of the sleep/wake thresholds (:mod:`~sleepstream.evaluation.
    loso`), so the held-out night's labels never enter the choice. It undoes a model's bias
    towards the frequent classes (or, after class-balanced training, away from them) as far as
    kappa rewards it. This is the headline rule (:data:`HEADLINE_RULE`).

Saved predictions
-----------------
:func:`save_stage_predictions` writes every result to
``<out>/stage_predictions/<task>/<scenario>/<name>[_seed<k>].npz`` (plain arrays, no pickle),
so the report can be rebuilt from the files alone (:func:`load_stage_predictions`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Unpack, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.evaluation.loso import (
    FoldOptions,
    FoldScores,
    Predictor,
    leave_one_out,
    run_folds,
)
from sleepstream.evaluation.predictions import HeldOutNight, held_out_arrays, saved_nights
from sleepstream.evaluation.scenarios import SCENARIOS, StartScenario
from sleepstream.paths import atomic_file
from sleepstream.records import LABEL_MAPS, LabelMap, Recording

RULES = ("tuned", "argmax")
"""Decision rules applied to every stage result, in report order."""

HEADLINE_RULE = "tuned"
"""The rule of the headline figures, figures and night-level tables."""

RULE_SOURCE = (
    "class weights maximising kappa on the pooled out-of-fold probabilities of the other "
    "held-out nights, same scenario"
)

WEIGHT_GRID = np.exp(np.linspace(-3.0, 3.0, 25))
"""Candidate class weights of the tuned rule (about 0.05 to 20, even steps in log)."""

WEIGHT_ROUNDS = 3
"""Passes of the coordinate search over the classes."""

STAGE_TASKS = ("wake_nrem_rem", "wake_light_deep_rem")
"""The stage label maps evaluated by default (names of :data:`~sleepstream.records.LABEL_MAPS`)."""


@runtime_checkable
class StagePredictor(Predictor, Protocol):
    """Anything that learns from nights and then gives class probabilities per epoch.

    ``predict`` returns shape ``(n_epochs, len(label_map.classes))``, rows summing to 1; it must
    be causal unless ``causal`` is False (as :class:`~sleepstream.evaluation.loso.Predictor`).
    """

    label_map: LabelMap


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


def decide(proba: ArrayLike, weights: ArrayLike | None = None) -> NDArray[np.int8]:
    """Class per epoch: ``argmax_k w_k p_k`` (plain argmax without ``weights``); ties go to
    the lower class index.

    Examples
    --------
    >>> p = np.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    >>> decide(p).tolist(), decide(p, [1.0, 1.0, 2.0]).tolist()
    ([1, 1], [2, 1])
    """
    p = np.asarray(proba, dtype=np.float64)
    if weights is not None:
        p = p * np.asarray(weights, dtype=np.float64)
    return np.argmax(p, axis=1).astype(np.int8)


def confusion_counts(labels: ArrayLike, predicted: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Confusion counts ``[true, predicted]`` of scored epochs (labels ``>= 0``).

    The same matrix as scikit-learn's ``confusion_matrix`` with ``labels=range(n_classes)``,
    by one ``bincount``: the weight search and the bootstrap need thousands of them.

    Examples
    --------
    >>> confusion_counts([0, 1, 1, -1], [0, 1, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    keep = y >= 0
    flat = np.bincount(y[keep] * n_classes + pred[keep], minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def kappa_from_confusion(counts: ArrayLike) -> float:
    """Cohen's kappa of a confusion matrix: ``(p_o - p_e) / (1 - p_e)``, NaN when undefined.

    Examples
    --------
    >>> round(kappa_from_confusion([[20, 5], [10, 15]]), 12)
    0.4
    """
    cm = np.asarray(counts, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        return math.nan
    observed = np.trace(cm) / n
    expected = float(cm.sum(axis=1) @ cm.sum(axis=0)) / n**2
    return math.nan if expected == 1.0 else float((observed - expected) / (1.0 - expected))


def choose_class_weights(
    labels: ArrayLike,
    proba: ArrayLike,
    grid: NDArray[np.float64] = WEIGHT_GRID,
    rounds: int = WEIGHT_ROUNDS,
) -> NDArray[np.float64]:
    """Class weights for :func:`decide` maximising Cohen's kappa on scored ``labels``.

    A coordinate search: the first class keeps weight 1 (only ratios matter); each other
    class's weight in turn takes the grid value with the largest kappa, the others fixed, for
    ``rounds`` passes. A weight moves only for a strictly larger kappa, so with no gain (e.g. a
    constant prediction) the weights stay 1 and the rule is the plain argmax.

    Raises
    ------
    ValueError
        If there are no scored epochs or the shapes do not match.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} do not match")
    keep = y >= 0
    if not keep.any():
        raise ValueError("No scored epochs to choose class weights on")
    y, p = y[keep], p[keep]
    n_classes = p.shape[1]
    weights = np.ones(n_classes)
    best = kappa_from_confusion(confusion_counts(y, decide(p, weights), n_classes))
    for _ in range(rounds):
        moved = False
        for k in range(1, n_classes):
            others = np.delete(p * weights, k, axis=1)
            other_class = np.delete(np.arange(n_classes), k)[np.argmax(others, axis=1)]
            other_value = others.max(axis=1)
            for w in grid:
                pred = np.where(w * p[:, k] > other_value, k, other_class)
                # Ties between k and a lower class go to the lower one, as in decide().
                ties = (w * p[:, k] == other_value) & (other_class > k)
                pred[ties] = k
                kappa = kappa_from_confusion(confusion_counts(y, pred, n_classes))
                if kappa > best + 1e-12:
                    best, weights[k], moved = kappa, float(w), True
        if not moved:
            break
    return weights


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StageNight(HeldOutNight):
    """Class probabilities for every epoch of one held-out night, and its tuned-rule weights.

    ``labels`` (:class:`~sleepstream.evaluation.predictions.HeldOutNight`) are class indices
    under the task's label map, -1 unscored.

    Attributes
    ----------
    proba
        ``(n_epochs, n_classes)`` probabilities, finite, rows summing to 1.
    valid
        The published paper's "valid epochs" (scored, with heart rate and motion).
    weights
        The tuned rule's class weights, chosen without this night (:func:`choose_class_weights`).
    """

    proba: NDArray[np.float64]
    valid: NDArray[np.bool_]
    weights: NDArray[np.float64]

    def decisions(self, rule: str) -> NDArray[np.int8]:
        """Class per epoch under ``rule`` (one of :data:`RULES`)."""
        if rule == "argmax":
            return decide(self.proba)
        if rule == "tuned":
            return decide(self.proba, self.weights)
        raise ValueError(f"Unknown decision rule {rule!r}; known: {list(RULES)}")


@dataclass(frozen=True, eq=False)
class StageResult:
    """All held-out nights of one stage predictor in one start scenario.

    ``task`` names the label map (a key of :data:`~sleepstream.records.LABEL_MAPS`), ``classes``
    its class names in index order.
    """

    name: str
    causal: bool
    task: str
    classes: tuple[str, ...]
    nights: list[StageNight]
    description: str = ""
    scenario: str = "psg_start"
    rule_source: str = RULE_SOURCE


StageSeeded = tuple[StageResult, int | None]
"""One stage predictor's result in one scenario, with its training seed (``None``:
deterministic)."""


def _checked_proba(recording: Recording, proba: NDArray[Any], n_classes: int) -> NDArray[Any]:
    p = np.asarray(proba, dtype=np.float64)
    if p.shape != (recording.n_epochs, n_classes):
        raise ValueError(
            f"Subject {recording.subject_id}: expected class probabilities of shape "
            f"{(recording.n_epochs, n_classes)}, got {p.shape}"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError(f"Subject {recording.subject_id}: probabilities must be finite in [0, 1]")
    worst = float(np.abs(p.sum(axis=1) - 1.0).max()) if p.size else 0.0
    if worst > 1e-6:
        raise ValueError(
            f"Subject {recording.subject_id}: probabilities of an epoch must sum to 1 "
            f"(off by up to {worst:.3g})"
        )
    return p


def assemble_stages(
    template: StagePredictor,
    recordings: Mapping[str, Recording],
    scores: Mapping[str, FoldScores],
    scenarios: Sequence[StartScenario] = SCENARIOS,
) -> dict[str, StageResult]:
    """The held-out nights of one stage predictor per scenario, each night's tuned-rule weights
    chosen on the other held-out nights (at least 2 folds)."""
    if len(scores) < 2:
        raise ValueError(
            "The tuned rule's class weights are chosen on the other held-out nights: run at "
            f"least 2 folds (got {len(scores)})"
        )
    label_map = template.label_map
    n_classes = len(label_map.classes)
    results = {}
    for scenario in scenarios:
        nights = {s: scenario.scored(recordings[s]) for s in scores}
        labelled = {
            s: (
                nights[s].labels(label_map),
                _checked_proba(nights[s], scores[s][scenario.name], n_classes),
            )
            for s in scores
        }
        out = []
        for subject, others in leave_one_out(labelled):
            weights = choose_class_weights(
                np.concatenate([y for y, _ in others]), np.concatenate([p for _, p in others])
            )
            night, (labels, proba) = nights[subject], labelled[subject]
            out.append(StageNight(subject, night.epoch_times, labels, proba, night.valid, weights))
        results[scenario.name] = StageResult(
            template.name,
            template.causal,
            label_map.name,
            label_map.classes,
            out,
            getattr(template, "description", ""),
            scenario=scenario.name,
        )
    return results


def run_stage_loso_many(
    templates: Sequence[StagePredictor],
    recordings: Sequence[Recording],
    *,
    n_jobs: int = 1,
    **options: Unpack[FoldOptions],
) -> list[dict[str, StageResult]]:
    """Leave-one-subject-out of several stage predictors (e.g. one per seed or per task):
    per predictor, one :class:`StageResult` per scenario name. Templates are copied, never
    fitted themselves; ``options``: :class:`~sleepstream.evaluation.loso.FoldOptions`."""
    runs = run_folds(templates, recordings, n_jobs=n_jobs, **options)
    scenarios = options.get("scenarios", SCENARIOS)
    by_id = {r.subject_id: r for r in recordings}
    return [
        assemble_stages(template, by_id, scores, scenarios)
        for template, scores in zip(templates, runs, strict=True)
    ]


def run_stage_loso(
    template: StagePredictor,
    recordings: Sequence[Recording],
    *,
    n_jobs: int = 1,
    **options: Unpack[FoldOptions],
) -> dict[str, StageResult]:
    """:func:`run_stage_loso_many` of one predictor."""
    return run_stage_loso_many([template], recordings, n_jobs=n_jobs, **options)[0]


def label_maps(tasks: Sequence[str]) -> list[LabelMap]:
    """The label maps named ``tasks``; ``ValueError`` naming the known ones otherwise.

    >>> [m.classes for m in label_maps(["wake_nrem_rem"])]
    [('wake', 'nrem', 'rem')]
    """
    unknown = [t for t in tasks if t not in LABEL_MAPS]
    if unknown:
        raise ValueError(f"Unknown task {unknown[0]!r}; known: {list(LABEL_MAPS)}")
    return [LABEL_MAPS[t] for t in tasks]


def run_stage_baselines(
    recordings: Sequence[Recording],
    tasks: Sequence[str] = STAGE_TASKS,
    *,
    folds: Sequence[str] | None = None,
    scenarios: Sequence[StartScenario] = SCENARIOS,
    progress: bool = True,
) -> list[StageSeeded]:
    """LOSO of every stage baseline (:func:`sleepstream.baselines.stage_baselines`) for each
    task, on the same folds (deterministic: no seed)."""
    from sleepstream.baselines import stage_baselines

    templates = [b for label_map in label_maps(tasks) for b in stage_baselines(label_map)]
    runs = run_stage_loso_many(
        templates, recordings, folds=folds, scenarios=scenarios, progress=progress
    )
    return [(result, None) for by_scenario in runs for result in by_scenario.values()]


# --------------------------------------------------------------------------------------------
# Saved predictions
# --------------------------------------------------------------------------------------------

PREDICTIONS_FOLDER = "stage_predictions"


def stage_prediction_path(out: Path, result: StageResult, seed: int | None) -> Path:
    """Where :func:`save_stage_predictions` writes one result under the report folder ``out``.

    Examples
    --------
    >>> result = StageResult("rf", False, "wake_nrem_rem", ("wake", "nrem", "rem"), [])
    >>> stage_prediction_path(Path("reports/x"), result, seed=None).as_posix()
    'reports/x/stage_predictions/wake_nrem_rem/psg_start/rf.npz'
    """
    if any(c in result.name for c in "/\\"):
        raise ValueError(f"Predictor name {result.name!r}: a file name cannot hold / or \\")
    stem = result.name if seed is None else f"{result.name}_seed{seed}"
    return out / PREDICTIONS_FOLDER / result.task / result.scenario / f"{stem}.npz"


def save_stage_result(result: StageResult, path: Path, seed: int | None = None) -> Path:
    """Write every held-out night of ``result`` to ``path`` (``.npz``, whole or not at all).

    Per epoch ``subject_id``, ``epoch_times``, ``labels``, ``proba``, ``valid``; per night
    ``night_subject`` and ``weights``; ``meta``, a JSON string (name, causal, task, classes,
    description, scenario, rule source, seed).
    """
    nights = result.nights
    meta = {
        "name": result.name,
        "causal": result.causal,
        "task": result.task,
        "classes": list(result.classes),
        "description": result.description,
        "scenario": result.scenario,
        "rule_source": result.rule_source,
        "seed": seed,
    }
    n_classes = len(result.classes)
    arrays: dict[str, Any] = {
        **held_out_arrays(nights),
        "proba": np.concatenate([n.proba for n in nights] or [np.zeros((0, n_classes))]),
        "valid": np.concatenate([n.valid for n in nights] or [np.zeros(0, bool)]),
        "weights": np.array([n.weights for n in nights]).reshape(len(nights), n_classes),
        "meta": np.array(json.dumps(meta)),
    }
    with atomic_file(path) as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_stage_result(path: Path) -> StageSeeded:
    """Read a file of :func:`save_stage_result`: the result and its seed."""
    with np.load(path, allow_pickle=False) as data:
        try:
            meta = json.loads(str(data["meta"]))
            nights = []
            for k, rows, held_out in saved_nights(data):
                proba = data["proba"][rows].astype(np.float64)
                valid = data["valid"][rows].astype(bool)
                weights = data["weights"][k].astype(np.float64)
                nights.append(StageNight(**held_out, proba=proba, valid=valid, weights=weights))
            result = StageResult(
                meta["name"],
                bool(meta["causal"]),
                meta["task"],
                tuple(meta["classes"]),
                nights,
                meta.get("description", ""),
                scenario=meta.get("scenario", "psg_start"),
                rule_source=meta.get("rule_source", RULE_SOURCE),
            )
        except (KeyError, ValueError, IndexError) as error:
            raise ValueError(
                f"{path}: not a sleepstream stage predictions file ({error})"
            ) from None
    return result, meta.get("seed")


def save_stage_predictions(results: Sequence[StageSeeded], out: Path) -> Path:
    """Every result's out-of-fold probabilities and weights, one ``.npz`` each, under
    ``out/stage_predictions``; returns that folder."""
    for result, seed in results:
        save_stage_result(result, stage_prediction_path(out, result, seed), seed)
    return out / PREDICTIONS_FOLDER


def load_stage_predictions(out: Path) -> list[StageSeeded]:
    """The results saved by :func:`save_stage_predictions` under ``out``: tasks in
    :data:`~sleepstream.records.LABEL_MAPS` order, scenarios in report order."""
    folder = out / PREDICTIONS_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: run `sleepstream baselines --task wake_nrem_rem --out {out}` "
            "first"
        )
    results: list[StageSeeded] = []
    for task in LABEL_MAPS:
        for scenario in SCENARIOS:
            for path in sorted((folder / task / scenario.name).glob("*.npz")):
                results.append(load_stage_result(path))
    if not results:
        raise FileNotFoundError(f"{folder} holds no stage predictions")
    return results
