"""The stage networks under leave-one-subject-out, beside the stage baselines.

:class:`StageNetPredictor` is a LightningCLI stage config (``configs/stages.yaml``: a
:class:`~sleepstream.models.net.StageGRU` trained by
:class:`~sleepstream.models.stage_module.StageModule`) as a
:class:`~sleepstream.evaluation.stages.StagePredictor` of one task. One network answers both
tasks, so :func:`run_stage_nets` trains it once per fold and seed and scores both from the same
fit (the same folds, the same decision rules and report as the baselines,
:mod:`sleepstream.evaluation.stages`).

``sleepstream stages -c configs/stages.yaml --seeds 0 1 2 --out reports/stages`` runs it; with
the baselines' predictions already in ``--out`` (``sleepstream baselines --task ...``), the
report holds both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.evaluation.loso import FoldScores, run_folds
from sleepstream.evaluation.scenarios import SCENARIOS, StartScenario
from sleepstream.evaluation.stages import (
    STAGE_TASKS,
    StageSeeded,
    assemble_stages,
    label_maps,
    save_stage_predictions,
)
from sleepstream.records import LABEL_MAPS, Recording

log = logging.getLogger(__name__)

BOTH = "both"
"""The task of a :class:`StageNetPredictor` that predicts every task side by side."""


class StageNetPredictor:
    """A LightningCLI stage config as a stage predictor: ``fit`` trains one network on the given
    nights (the weights after the last epoch), ``predict`` gives the class probabilities of
    ``task`` per epoch, causally.

    Parameters
    ----------
    config
        LightningCLI YAML of a :class:`~sleepstream.models.stage_module.StageModule`.
    task
        ``wake_nrem_rem``, ``wake_light_deep_rem``, or :data:`BOTH` (every task's columns side
        by side, in :data:`~sleepstream.models.net.STAGE_OUTPUTS` order: what
        :func:`run_stage_nets` fits once and splits).
    overrides
        Further LightningCLI arguments, e.g. ``["--trainer.max_epochs", "5"]``.
    name
        Name in the report (default: the config's file name).
    seed
        If given, overrides the config's ``seed_everything`` and ``data.seed``.
    threads
        Torch threads while training and predicting (1: on a shared machine one thread is many
        times faster than two that compete).
    """

    causal = True

    def __init__(
        self,
        config: str | Path,
        task: str = "wake_nrem_rem",
        overrides: Sequence[str] = (),
        name: str = "",
        seed: int | None = None,
        threads: int | None = 1,
    ):
        from sleepstream.models.training import NetPredictor

        if task != BOTH and task not in STAGE_TASKS:
            raise ValueError(f"Unknown stage task {task!r}; known: {[*STAGE_TASKS, BOTH]}")
        self.task = task
        self.label_map = LABEL_MAPS[task if task != BOTH else STAGE_TASKS[0]]
        self.trainer = NetPredictor(config, overrides, name, seed)
        self.name = self.trainer.name
        self.seed = seed
        self.threads = threads
        self.description = (
            f"Causal stage GRU trained by LightningCLI from {Path(config).name} "
            "(balanced class weights unless the config says otherwise)"
        )

    def feature_nights(self, recordings: Sequence[Recording]) -> list[Recording]:
        """Every training sequence a fold may use (the LOSO driver caches their features)."""
        return self.trainer.feature_nights(recordings)

    def fit(self, recordings: Sequence[Recording]) -> None:
        with _torch_threads(self.threads):
            self.trainer.fit(recordings)

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        from sleepstream.models.net import StageGRU, predict_night_stages

        net = self.trainer.net
        if net is None:
            raise RuntimeError("StageNetPredictor.predict called before fit")
        if not isinstance(net, StageGRU):
            raise TypeError(f"{self.trainer.config}: the network must be a StageGRU")
        with _torch_threads(self.threads):
            proba = predict_night_stages(net, recording)
        if self.task == BOTH:
            return np.concatenate(list(proba.values()), axis=1)
        return proba[self.task]


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Torch uses ``threads`` threads inside (all it has when None), its previous number after."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def split_tasks(scores: FoldScores, tasks: Sequence[str]) -> dict[str, FoldScores]:
    """Per task, the columns of that task in the side-by-side probabilities of
    ``StageNetPredictor(task=BOTH)`` (every task of ``STAGE_OUTPUTS``, in order).

    Examples
    --------
    >>> both = {"psg_start": np.arange(14.0).reshape(2, 7)}
    >>> split_tasks(both, ["wake_light_deep_rem"])["wake_light_deep_rem"]["psg_start"].tolist()
    [[3.0, 4.0, 5.0, 6.0], [10.0, 11.0, 12.0, 13.0]]
    """
    from sleepstream.models.net import STAGE_OUTPUTS

    start, columns = 0, {}
    for task, n in STAGE_OUTPUTS.items():
        columns[task] = slice(start, start + n)
        start += n
    return {task: {name: p[:, columns[task]] for name, p in scores.items()} for task in tasks}


def run_stage_nets(
    config: str | Path,
    recordings: Sequence[Recording],
    seeds: Sequence[int],
    *,
    tasks: Sequence[str] = STAGE_TASKS,
    overrides: Sequence[str] = (),
    folds: Sequence[str] | None = None,
    scenarios: Sequence[StartScenario] = SCENARIOS,
    n_jobs: int = 1,
    progress: bool = True,
    out: Path | None = None,
    name: str = "",
) -> list[StageSeeded]:
    """LOSO of a stage config once per seed, both tasks from one fit per fold and seed: one
    :class:`~sleepstream.evaluation.stages.StageResult` per seed, task and scenario, each night's
    tuned-rule weights chosen on the other held-out nights.

    Seeds run one after the other; with ``out``, each seed's predictions are saved
    (:func:`~sleepstream.evaluation.stages.save_stage_predictions`) as soon as its folds are
    done, so a long run that is stopped keeps its finished seeds.
    """
    label_maps(tasks)  # names checked before any work
    by_id = {r.subject_id: r for r in recordings}
    out_results: list[StageSeeded] = []
    for seed in seeds:
        start = time.perf_counter()
        template = StageNetPredictor(config, BOTH, overrides, name, seed=seed)
        (scores,) = run_folds(
            [template],
            recordings,
            folds=folds,
            scenarios=scenarios,
            n_jobs=n_jobs,
            progress=progress,
        )
        per_task = {s: split_tasks(fold, tasks) for s, fold in scores.items()}
        seeded: list[StageSeeded] = []
        for task in tasks:
            view = StageNetPredictor(config, task, overrides, name, seed=seed)
            results = assemble_stages(
                view, by_id, {s: per_task[s][task] for s in scores}, scenarios
            )
            seeded += [(result, seed) for result in results.values()]
        if out is not None:
            save_stage_predictions(seeded, out)
        out_results += seeded
        log.info(
            "%s seed %d: %d folds in %.0f s",
            template.name,
            seed,
            len(scores),
            time.perf_counter() - start,
        )
    return out_results


def stage_nets_report(
    config: str | Path,
    recordings: Sequence[Recording],
    seeds: Sequence[int],
    out: Path,
    docs: Path | None = None,
    *,
    name: str = "",
    overrides: Sequence[str] = (),
    folds: Sequence[str] | None = None,
    scenarios: Sequence[StartScenario] = SCENARIOS,
    progress: bool = True,
) -> Path:
    """:func:`run_stage_nets` saving into ``out``, then the stage report of everything saved
    there (the baselines too, when ``sleepstream baselines --task ...`` wrote them to the same
    folder); returns ``out``."""
    from sleepstream.evaluation.stage_report import report_stage_predictions

    run_stage_nets(
        config,
        recordings,
        seeds,
        overrides=overrides,
        folds=folds,
        scenarios=scenarios,
        progress=progress,
        out=out,
        name=name,
    )
    report_stage_predictions(out, docs)
    return out


def add_parser(commands: Any) -> Any:
    """``sleepstream stages``: leave-one-subject-out of a stage network config (the command's
    arguments; the work is :func:`stage_nets_report`)."""
    p = commands.add_parser("stages", help="leave-one-subject-out of a live stage network")
    p.add_argument("-c", "--config", required=True, help="LightningCLI YAML of a StageModule")
    p.add_argument("--out", default="reports/stages", help="stage report folder")
    p.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    p.add_argument("--docs", help="also copy the markdown table here")
    p.add_argument("--name", default="", help="name in the report (default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    p.add_argument("--scenarios", nargs="+", help="start scenarios (default: all)")
    p.add_argument("overrides", nargs="*", help="LightningCLI overrides after --")
    p.set_defaults(run=_run_command)
    return p


def _run_command(a: Any) -> int:
    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.report import check_docs_path
    from sleepstream.evaluation.scenarios import scenario
    from sleepstream.paths import check_output_dir

    out = check_output_dir(a.out)
    docs = check_docs_path(a.docs) if a.docs else None
    scenarios = [scenario(s) for s in a.scenarios] if a.scenarios else SCENARIOS
    folds = a.folds.split(",") if a.folds else None
    stage_nets_report(
        a.config,
        load_all(a.data),
        a.seeds,
        out,
        docs,
        name=a.name,
        overrides=a.overrides,
        folds=folds,
        scenarios=scenarios,
        progress=not a.quiet,
    )
    print(f"Stage report in {out}")
    return 0
