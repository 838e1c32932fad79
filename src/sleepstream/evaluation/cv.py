"""The ``sleepstream cv`` run: models over several seeds and the baselines, every scenario.

The results are saved with :func:`~sleepstream.evaluation.predictions.save_predictions` and
reported with :func:`~sleepstream.evaluation.report.report_predictions`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from sleepstream.evaluation.loso import FoldOptions, run_loso, run_loso_many
from sleepstream.evaluation.predictions import Seeded, save_predictions
from sleepstream.records import Recording

log = logging.getLogger(__name__)


def run_cv(
    configs: Sequence[str],
    recordings: Sequence[Recording],
    seeds: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    n_jobs: int = 1,
    baselines: bool = True,
    **options: Unpack[FoldOptions],
) -> list[Seeded]:
    """LOSO of each LightningCLI config once per seed (all folds of all seeds in one pool of
    ``n_jobs`` processes), then (``baselines``) :func:`run_baselines` on the same folds and
    scenarios (``options``: :class:`~sleepstream.evaluation.loso.FoldOptions`)."""
    from sleepstream.models.training import NetPredictor

    if n_jobs > 1:
        import torch

        torch.set_num_threads(1)  # the folds run in their own processes; this one waits
    out: list[Seeded] = []
    for config in configs:
        start = time.perf_counter()
        templates = [NetPredictor(config, overrides, seed=seed) for seed in seeds]
        runs = run_loso_many(templates, recordings, n_jobs=n_jobs, **options)
        for seed, by_scenario in zip(seeds, runs, strict=True):
            out += [(result, seed) for result in by_scenario.values()]
        log.info(
            "%s: LOSO of %d seeds in %.0f s",
            templates[0].name,
            len(seeds),
            time.perf_counter() - start,
        )
    if baselines:
        out += run_baselines(recordings, **options)
    return out


def run_baselines(recordings: Sequence[Recording], **options: Unpack[FoldOptions]) -> list[Seeded]:
    """LOSO of every sleep/wake baseline (deterministic: no seed), one fold after another; the
    stage baselines are :func:`sleepstream.evaluation.stages.run_stage_baselines`."""
    from sleepstream.baselines import all_baselines

    out: list[Seeded] = []
    for baseline in all_baselines():
        out += [(result, None) for result in run_loso(baseline, recordings, **options).values()]
    return out


def baselines_report(
    recordings: Sequence[Recording],
    tasks: Sequence[str],
    out: Path,
    docs: Path | None = None,
    **options: Unpack[FoldOptions],
) -> list[str]:
    """LOSO of the baselines of each task, saved and reported under ``out``.

    ``sleep_wake`` among ``tasks`` runs :func:`run_baselines` (``results.md``); the stage
    tasks run :func:`~sleepstream.evaluation.stages.run_stage_baselines` (``stages.md``).
    ``docs`` takes one report. Returns the names of the reports written.
    """
    from sleepstream.evaluation.report import report_predictions
    from sleepstream.evaluation.stage_report import report_stage_predictions
    from sleepstream.evaluation.stages import run_stage_baselines, save_stage_predictions

    stages = [task for task in dict.fromkeys(tasks) if task != "sleep_wake"]
    written = []
    if "sleep_wake" in tasks:
        save_predictions(run_baselines(recordings, **options), out)
        report_predictions(out, docs)
        written.append("Report")
    if stages:
        save_stage_predictions(run_stage_baselines(recordings, stages, **options), out)
        report_stage_predictions(out, docs)
        written.append("Stage report")
    return written
