"""``sleepstream baselines``, ``cv`` and ``report``: leave-one-subject-out reports."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from sleepstream.commands import DATA_HELP, DOCS_HELP, Subparsers, folds_arg
from sleepstream.paths import check_output_dir

log = logging.getLogger("sleepstream")


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    p = commands.add_parser("baselines", help="leave-one-subject-out report of baselines")
    p.add_argument("--out", default="reports/baselines", help="report folder")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--docs", help=DOCS_HELP)
    p.add_argument(
        "--task",
        nargs="+",
        default=["sleep_wake"],
        help="sleep_wake (default; results.md) and/or the stages wake_nrem_rem, "
        "wake_light_deep_rem (stages.md)",
    )
    p.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    p.add_argument("--scenarios", nargs="+", help="start scenarios (default: all)")
    p.set_defaults(run=baselines)

    p = commands.add_parser("cv", help="leave-one-subject-out of a model config")
    p.add_argument("-c", "--config", required=True, help="LightningCLI YAML")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--compare", nargs="+", metavar="CONFIG", help="more configs in the table")
    p.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="folds trained in parallel")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--docs", help=DOCS_HELP)
    p.add_argument("--no-baselines", action="store_true", help="leave the baselines out")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="one LOSO per seed (default 0 1 2)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="LightningCLI overrides after --, e.g. -- --trainer.max_epochs 5",
    )
    p.set_defaults(run=cv)

    p = commands.add_parser("report", help="rebuild a cv report from its saved predictions")
    p.add_argument(
        "--out",
        required=True,
        help="report folder of `cv` or `baselines` (predictions/, stage_predictions/ or both)",
    )
    p.add_argument("--docs", help=DOCS_HELP)
    p.set_defaults(run=report)
    return p


def outputs(a: argparse.Namespace) -> tuple[Path, Path | None]:
    """``--out`` and ``--docs`` (with its ``figures/``), checked before any work."""
    out = check_output_dir(a.out)
    from sleepstream.evaluation.report import check_docs_path

    return out, check_docs_path(a.docs) if a.docs else None


def _written(names: list[str], out: Path) -> int:
    for name in names:
        print(f"{name} in {out}")
    return 0


def report(a: argparse.Namespace) -> int:
    out, docs = outputs(a)
    from sleepstream.evaluation.report import report_folder

    return _written(report_folder(out, docs), out)


def baselines(a: argparse.Namespace) -> int:
    out, docs = outputs(a)
    stages = [task for task in a.task if task != "sleep_wake"]
    if docs and stages and "sleep_wake" in a.task:
        raise ValueError("--docs takes one report: run sleep_wake and the stage tasks apart")
    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.cv import baselines_report
    from sleepstream.evaluation.scenarios import SCENARIOS, scenario
    from sleepstream.evaluation.stages import label_maps

    label_maps(list(dict.fromkeys(stages)))  # names checked before any work
    scenarios = [scenario(name) for name in a.scenarios] if a.scenarios else SCENARIOS
    start, recordings = time.perf_counter(), load_all(a.data)
    written = baselines_report(
        recordings,
        a.task,
        out,
        docs,
        folds=folds_arg(a.folds),
        scenarios=scenarios,
        progress=not a.quiet,
    )
    log.info("%d nights in %.0f s", len(recordings), time.perf_counter() - start)
    return _written(written, out)


def cv(a: argparse.Namespace) -> int:
    out, docs = outputs(a)
    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.cv import run_cv
    from sleepstream.evaluation.predictions import save_predictions
    from sleepstream.evaluation.report import report_predictions

    start = time.perf_counter()
    results = run_cv(
        [a.config, *(a.compare or [])],
        load_all(a.data),
        a.seeds,
        overrides=a.overrides,
        folds=folds_arg(a.folds),
        n_jobs=a.jobs,
        baselines=not a.no_baselines,
        progress=not a.quiet,
    )
    saved = save_predictions(results, out)
    print(f"Predictions in {saved} ({time.perf_counter() - start:.0f} s)")
    report_predictions(out, docs)
    return _written(["Report"], out)
