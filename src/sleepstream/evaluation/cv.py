"""The ``sleepstream cv`` run: models over several seeds and the baselines, every scenario, saved.

Each predictor's out-of-fold predictions, with each night's deployable thresholds, are written to
``<out>/predictions/<scenario>/<name>[_seed<k>].npz`` (:func:`~sleepstream.evaluation.predictions.
save_result`), so the report can be rebuilt, and every figure recomputed, from the saved files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from sleepstream.evaluation.loso import run_loso, run_loso_many
from sleepstream.evaluation.predictions import LosoResult, load_result, save_result
from sleepstream.evaluation.scenarios import SCENARIO_NAMES, SCENARIOS
from sleepstream.records import Recording

log = logging.getLogger(__name__)

Seeded = tuple[LosoResult, int | None]
"""One predictor's LOSO result in one scenario, with the seed it was trained with."""


def run_models(
    configs: Sequence[str],
    recordings: Sequence[Recording],
    seeds: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    folds: Sequence[str] | None = None,
    n_jobs: int = 1,
    progress: bool = True,
) -> list[Seeded]:
    """LOSO of each LightningCLI config once per seed, all folds of all seeds in one pool."""
    from sleepstream.models.training import NetPredictor

    out: list[Seeded] = []
    for config in configs:
        start = time.perf_counter()
        templates = [NetPredictor(config, overrides, seed=seed) for seed in seeds]
        runs = run_loso_many(templates, recordings, folds=folds, n_jobs=n_jobs, progress=progress)
        for seed, by_scenario in zip(seeds, runs, strict=True):
            out += [(result, seed) for result in by_scenario.values()]
        log.info(
            "%s: LOSO of %d seeds in %.0f s",
            templates[0].name,
            len(seeds),
            time.perf_counter() - start,
        )
    return out


def run_baselines(
    recordings: Sequence[Recording],
    *,
    folds: Sequence[str] | None = None,
    progress: bool = True,
) -> list[Seeded]:
    """LOSO of every baseline (deterministic: no seed)."""
    from sleepstream.baselines import all_baselines

    out: list[Seeded] = []
    for baseline in all_baselines():
        by_scenario = run_loso(baseline, recordings, folds=folds, progress=progress)
        out += [(result, None) for result in by_scenario.values()]
    return out


def prediction_path(out: Path, result: LosoResult, seed: int | None) -> Path:
    """Where :func:`save_predictions` writes one result."""
    stem = result.name if seed is None else f"{result.name}_seed{seed}"
    return out / "predictions" / result.scenario / f"{stem}.npz"


def save_predictions(results: Sequence[Seeded], out: Path) -> None:
    """Every result's out-of-fold predictions and thresholds, one ``.npz`` each."""
    for result, seed in results:
        save_result(result, prediction_path(out, result, seed), seed)


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
