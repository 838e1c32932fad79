"""Leave-one-subject-out of the review models, their report, and the shipped review model.

The review network (:mod:`sleepstream.models.review`) is fitted once per held-out night and
seed by the LOSO driver (:func:`~sleepstream.evaluation.loso.run_folds`); its three heads are
then scored as three predictors on the same folds:

- ``review_sleep_wake`` as a sleep/wake predictor (:func:`~sleepstream.evaluation.loso.
  assemble`: WASA93/95 with the threshold chosen on the other held-out nights, the deployable
  figure, and on the test labels, the oracle);
- ``review`` for wake / NREM / REM and for wake / light / deep / REM
  (:func:`~sleepstream.evaluation.stages.assemble_stages`: kappa, accuracy, macro F1, ...).

Review models score **whole recorded nights**: they see the night from the first PSG epoch to
the last, after it has ended. The start scenarios of a live detector do not apply; the single
scenario is ``psg_start`` (the night as recorded), every scored epoch counted.

Each seed's predictions are saved as soon as its 31 folds are done (the same files as
``sleepstream cv`` / ``baselines``), so an interrupted run keeps the seeds it finished. Run::

    python -m sleepstream.evaluation.review_eval loso --seeds 0 1 2 --out reports/review
    python -m sleepstream.evaluation.review_eval report --out reports/review
    python -m sleepstream.evaluation.review_eval ship --loso reports/review
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from sleepstream.evaluation.loso import FoldScores, assemble, choose_thresholds, run_folds
from sleepstream.evaluation.predictions import Seeded, load_predictions, save_predictions
from sleepstream.evaluation.scenarios import PSG_START
from sleepstream.evaluation.stages import (
    StageSeeded,
    assemble_stages,
    choose_class_weights,
    load_stage_predictions,
    save_stage_predictions,
)
from sleepstream.models.review import (
    COLUMNS,
    TASKS,
    ReviewPredictor,
    TrainConfig,
    save_review,
    train_review,
)
from sleepstream.records import SLEEP_WAKE, LabelMap, Recording

log = logging.getLogger(__name__)

SCENARIOS = (PSG_START,)
"""Review models score the night as recorded: the one scenario."""

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "review.yaml"
SHIPPED = Path(__file__).resolve().parents[1] / "shipped"
SHIPPED_NAME = "review_model"
"""``src/sleepstream/shipped/review_model.npz`` and ``.json``."""

SLEEP_WAKE_NAME = "review_sleep_wake"
STAGE_NAME = "review"


def read_config(path: Path | None = None) -> TrainConfig:
    """Training settings from a YAML file of :class:`TrainConfig` fields (default
    ``configs/review.yaml``; the built-in defaults when that file is absent)."""
    path = DEFAULT_CONFIG if path is None else Path(path)
    if not path.exists():
        if path == DEFAULT_CONFIG:
            return TrainConfig()
        raise FileNotFoundError(f"{path} not found")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of review training settings")
    return TrainConfig.from_dict(values)


@dataclasses.dataclass
class _View:
    """One head of the review network as the assemblers see a predictor (never fitted)."""

    name: str
    label_map: LabelMap
    description: str
    causal: bool = False

    def fit(self, recordings: Sequence[Recording]) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    def predict(self, recording: Recording) -> NDArray[np.float64]:  # pragma: no cover
        raise NotImplementedError


def _head(scores: dict[str, FoldScores], task: str, p_sleep: bool = False) -> dict[str, FoldScores]:
    columns = COLUMNS[task]
    out: dict[str, FoldScores] = {}
    for subject, by_scenario in scores.items():
        out[subject] = {}
        for name, p in by_scenario.items():
            head = np.asarray(p)[:, columns]
            out[subject][name] = head[:, 1] if p_sleep else head
    return out


def split_heads(
    template: ReviewPredictor,
    recordings: Sequence[Recording],
    scores: dict[str, FoldScores],
    seed: int | None,
) -> tuple[list[Seeded], list[StageSeeded]]:
    """The sleep/wake and stage results of one LOSO run of the review network."""
    by_id = {r.subject_id: r for r in recordings}
    description = template.description
    sleep_view = _View(SLEEP_WAKE_NAME, SLEEP_WAKE, description + "; sleep/wake head")
    sleep_wake = [
        (result, seed)
        for result in assemble(
            sleep_view, by_id, _head(scores, SLEEP_WAKE.name, p_sleep=True), SCENARIOS
        ).values()
    ]
    stages: list[StageSeeded] = []
    for task in TASKS[1:]:
        view = _View(STAGE_NAME, task, description)
        stages += [
            (result, seed)
            for result in assemble_stages(view, by_id, _head(scores, task.name), SCENARIOS).values()
        ]
    return sleep_wake, stages


def run_review_loso(
    recordings: Sequence[Recording],
    seeds: Sequence[int],
    out: Path,
    *,
    config: TrainConfig | None = None,
    folds: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[list[Seeded], list[StageSeeded]]:
    """LOSO of the review network once per seed (folds in this process, one after another),
    each seed's predictions saved under ``out`` when its folds are done."""
    config = config or read_config()
    sleep_wake: list[Seeded] = []
    stages: list[StageSeeded] = []
    for seed in seeds:
        started = time.perf_counter()
        template = ReviewPredictor(dataclasses.replace(config, seed=seed))
        (scores,) = run_folds(
            [template], recordings, folds=folds, scenarios=SCENARIOS, progress=progress
        )
        sw, st = split_heads(template, recordings, scores, seed)
        save_predictions(sw, out)
        save_stage_predictions(st, out)
        sleep_wake += sw
        stages += st
        log.info(
            "Review seed %d: %d folds in %.0f s", seed, len(scores), time.perf_counter() - started
        )
    return sleep_wake, stages


def _psg_start_only(results: Sequence[Any]) -> list[Any]:
    return [(r, s) for r, s in results if r.scenario == PSG_START.name]


def write_review_report(
    out: Path,
    *,
    sleep_wake_baselines: Path | None = None,
    stage_baselines: Path | None = None,
    n_resamples: int = 500,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sleep/wake report (``out/sleep_wake``) and the stage report (``out/stages``) of the
    review predictions under ``out``, beside the ``psg_start`` results of the report folders
    ``sleep_wake_baselines`` (``sleepstream cv``) and ``stage_baselines``
    (``sleepstream baselines --task``) when given: the same 31 folds, the same scenario."""
    from sleepstream.evaluation.report import write_report
    from sleepstream.evaluation.stage_report import write_stage_report

    sleep_wake = load_predictions(out)
    if sleep_wake_baselines is not None:
        sleep_wake += _psg_start_only(load_predictions(sleep_wake_baselines))
    stages = load_stage_predictions(out)
    if stage_baselines is not None:
        stages += _psg_start_only(load_stage_predictions(stage_baselines))
    sw = write_report(sleep_wake, out / "sleep_wake", n_resamples=n_resamples)
    st = write_stage_report(stages, out / "stages", n_resamples=n_resamples)
    return sw, st


def operating_points(loso: Path) -> dict[str, Any]:
    """The shipped model's decision settings, chosen on the pooled out-of-fold LOSO
    predictions of every seed under ``loso`` (never on the shipped network's own training
    scores): sleep/wake thresholds and, per stage task, the tuned rule's class weights."""
    sleep_wake = [r for r, _ in load_predictions(loso) if r.name == SLEEP_WAKE_NAME]
    if not sleep_wake:
        raise FileNotFoundError(f"{loso}: no {SLEEP_WAKE_NAME} predictions; run `loso` first")
    thresholds = choose_thresholds([(n.labels, n.p_sleep) for r in sleep_wake for n in r.nights])
    weights: dict[str, list[tuple[NDArray[np.int8], NDArray[np.float64]]]] = {}
    for result, _ in load_stage_predictions(loso):
        if result.name != STAGE_NAME:
            continue
        labels = np.concatenate([n.labels for n in result.nights])
        proba = np.concatenate([n.proba for n in result.nights])
        weights.setdefault(result.task, []).append((labels, proba))
    class_weights = {
        task: choose_class_weights(
            np.concatenate([y for y, _ in pairs]), np.concatenate([p for _, p in pairs])
        ).tolist()
        for task, pairs in weights.items()
    }
    return {"thresholds": thresholds, "class_weights": class_weights, "seeds": len(sleep_wake)}


def ship_review(
    recordings: Sequence[Recording],
    loso: Path,
    dest: Path = SHIPPED,
    config: TrainConfig | None = None,
    card: Path | None = None,
) -> tuple[Path, Path]:
    """Train the review network on every night (seed of ``config``) and save it under
    ``dest`` with the operating points of :func:`operating_points` and the LOSO figures."""
    config = config or read_config()
    points = operating_points(loso)
    net = train_review(recordings, config)
    figures = {}
    sw_metrics = loso / "sleep_wake" / "metrics.json"
    st_metrics = loso / "stages" / "stages.json"
    if sw_metrics.exists() and st_metrics.exists():
        figures = _card_figures(
            json.loads(sw_metrics.read_text()), json.loads(st_metrics.read_text())
        )
    extra = {
        **points,
        "trained_on": sorted(r.subject_id for r in recordings),
        "loso": figures,
        "card": card.read_text() if card is not None else "",
        "data": "Walch et al. 2019 sleep-accel (PhysioNet doi:10.13026/hmhs-py35, ODC-By 1.0)",
    }
    return save_review(net, config, dest / SHIPPED_NAME, extra)


def _card_figures(sleep_wake: dict[str, Any], stages: dict[str, Any]) -> dict[str, Any]:
    entry = sleep_wake["scenarios"][PSG_START.name][SLEEP_WAKE_NAME]["seed_mean"]
    out: dict[str, Any] = {
        "sleep_wake": {
            k: entry.get(k) for k in ("wasa95_deployable", "wasa93_deployable", "auroc", "kappa")
        }
    }
    for task, by_task in stages["tasks"].items():
        rules = by_task["scenarios"][PSG_START.name][STAGE_NAME]["rules"]
        out[task] = {rule: rules[rule]["seed_mean"].get("kappa") for rule in rules}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sleepstream.evaluation.review_eval {loso,report,ship}``."""
    from sleepstream.data.folder import load_all

    parser = argparse.ArgumentParser(prog="python -m sleepstream.evaluation.review_eval")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("loso", help="LOSO of the review network, seeds one after another")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", nargs="+", help="held-out subjects (default: all)")
    p.add_argument("--config", type=Path, help="YAML of training settings (configs/review.yaml)")
    p.add_argument("--out", type=Path, default=Path("reports/review"))
    p.add_argument("--data")
    p = commands.add_parser("report", help="the review report from the saved predictions")
    p.add_argument("--out", type=Path, default=Path("reports/review"))
    p.add_argument("--sleep-wake-baselines", type=Path, default=Path("reports/sleep_wake"))
    p.add_argument("--stage-baselines", type=Path, default=Path("reports/stages"))
    p.add_argument("--docs-figures", type=Path, help="also copy the figures here")
    p = commands.add_parser("ship", help="train on every night; save under shipped/")
    p.add_argument("--loso", type=Path, default=Path("reports/review"))
    p.add_argument("--config", type=Path)
    p.add_argument("--dest", type=Path, default=SHIPPED)
    p.add_argument("--card", type=Path, help="markdown model card to embed")
    p.add_argument("--data")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.command == "loso":
        import torch

        torch.set_num_threads(1)
        config = read_config(a.config)
        run_review_loso(load_all(a.data), a.seeds, a.out, config=config, folds=a.folds)
    elif a.command == "report":
        sw_base = a.sleep_wake_baselines if a.sleep_wake_baselines.exists() else None
        st_base = a.stage_baselines if a.stage_baselines.exists() else None
        write_review_report(a.out, sleep_wake_baselines=sw_base, stage_baselines=st_base)
        if a.docs_figures is not None:
            a.docs_figures.mkdir(parents=True, exist_ok=True)
            for png in sorted((a.out / "sleep_wake").glob("*.png")) + sorted(
                (a.out / "stages").glob("*.png")
            ):
                shutil.copyfile(png, a.docs_figures / f"review_{png.parent.name}_{png.name}")
        print(f"{a.out}/sleep_wake/results.md, {a.out}/stages/stages.md")
    else:
        weights, meta = ship_review(
            load_all(a.data), a.loso, a.dest, read_config(a.config) if a.config else None, a.card
        )
        print(f"Saved {weights} and {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
