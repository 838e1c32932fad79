"""Write the sleep-stage report: ``stages.json``, ``stages.csv``, ``stages.md`` and figures.

:func:`~sleepstream.evaluation.stage_metrics.summarize_stages` computes every figure; this module
groups results by task, scenario and predictor (seeds together), lays the figures out and draws
the plots. The files sit beside the sleep/wake report (``results.md``, ``metrics.json``) in the
same folder, under other names.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sleepstream.evaluation.metrics import to_jsonable
from sleepstream.evaluation.plots import (
    plot_confusions,
    plot_hypnograms,
    plot_stage_agreement,
    safe_filename,
)
from sleepstream.evaluation.report import MISSING, check_docs_path, fmt, table, update_docs
from sleepstream.evaluation.scenarios import HEADLINE, SCENARIO_NAMES, scenario
from sleepstream.evaluation.seeds import seed_spread
from sleepstream.evaluation.stage_metrics import (
    HEADLINE_FIGURES,
    night_keys,
    stage_bootstrap,
    summarize_stages,
)
from sleepstream.evaluation.stages import (
    HEADLINE_RULE,
    RULES,
    StageResult,
    StageSeeded,
    load_stage_predictions,
)
from sleepstream.paths import write_atomic
from sleepstream.records import LABEL_MAPS

logger = logging.getLogger(__name__)

__all__ = ["check_docs_path", "report_stage_predictions", "write_stage_report"]

DEFINITIONS = """\
Every figure is computed on the held-out nights of leave-one-subject-out, on **all scored
epochs** (PSG label not -1, including those without heart rate or counts), pooled over nights
unless said otherwise. **Kappa** is Cohen's kappa, **macro F1** the unweighted mean of the
classes' F1, **recall** of a class the fraction of its PSG epochs predicted as it. Decision
rules: **argmax**, the most probable class; **tuned**, the most probable class after multiplying
each class's probability by a weight chosen to maximise kappa on the pooled out-of-fold
probabilities of the *other* held-out nights (same scenario), never on the night it decides;
tuned is the headline rule. Every classifier is trained with balanced class weights. Trained
models are run once per seed: figures are the **seed mean ± SD** with a **subject-bootstrap
95 % interval** of the seed mean in brackets (subjects resampled with replacement, each seed's
pooled confusion matrix recomputed); baselines are deterministic (one run). Non-causal
predictors (`_noncausal`) use the paper's features, which look 5 min into the future: they are
there to compare with the published paper, not to run live.
"""

Grouped = dict[str, dict[str, dict[str, list[StageSeeded]]]]
"""Results by task, then scenario name, then predictor name: one entry per seed."""


def group_stages(results: Sequence[StageSeeded]) -> Grouped:
    """Results by task, scenario and predictor, in report order; rejects a predictor twice
    with the same seed in one task and scenario."""
    grouped: Grouped = {}
    for result, seed in results:
        runs = (
            grouped.setdefault(result.task, {})
            .setdefault(result.scenario, {})
            .setdefault(result.name, [])
        )
        if any(other == seed for _, other in runs):
            raise ValueError(
                f"Duplicate predictor name {result.name!r} (seed {seed}) in task "
                f"{result.task!r}, scenario {result.scenario!r}: names must be unique"
            )
        runs.append((result, seed))
    tasks = [*[t for t in LABEL_MAPS if t in grouped], *sorted(set(grouped) - set(LABEL_MAPS))]
    out: Grouped = {}
    for task in tasks:
        names = [*SCENARIO_NAMES, *sorted(set(grouped[task]) - set(SCENARIO_NAMES))]
        out[task] = {name: grouped[task][name] for name in names if name in grouped[task]}
    return out


def _entry(runs: Sequence[StageSeeded], n_resamples: int) -> dict[str, Any]:
    """One predictor in one task and scenario, over its seeds."""
    results = [result for result, _ in runs]
    summaries = [summarize_stages(result) for result in results]
    rules = {}
    for rule in RULES:
        pooled = [_numbers(s["rules"][rule]["scored"]["pooled"]) for s in summaries]
        valid = [_numbers(s["rules"][rule]["valid"]["pooled"]) for s in summaries]
        rules[rule] = {
            "seed_mean": seed_spread(pooled),
            "seed_mean_valid": seed_spread(valid) if valid[0] else {},
            "bootstrap": stage_bootstrap(results, rule, n_resamples),
        }
    weights = np.array([night.weights for result in results for night in result.nights])
    entry: dict[str, Any] = {
        "causal": results[0].causal,
        "description": results[0].description,
        "rule_source": results[0].rule_source,
        "seeds": [seed for _, seed in runs],
        "rules": rules,
        "tuned_weights": {
            "min": weights.min(axis=0).tolist(),
            "median": np.median(weights, axis=0).tolist(),
            "max": weights.max(axis=0).tolist(),
        },
        "runs": summaries,
    }
    if "oracle_best_accuracy" in summaries[0]:
        entry["oracle_best_accuracy"] = seed_spread([s["oracle_best_accuracy"] for s in summaries])
    return entry


def _numbers(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric figures only (seed_spread of ``confusion`` lists means nothing)."""
    return {k: v for k, v in figures.items() if k != "confusion"}


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _with_interval(spread: Mapping[str, Any] | None, interval: Mapping[str, Any] | None) -> str:
    if not spread or spread.get("mean") is None:
        return MISSING
    text = fmt(spread["mean"])
    if spread.get("n", 0) > 1:
        text += f" ± {fmt(spread.get('sd'))}"
    if interval:
        text += f" [{fmt(interval.get('low'))}, {fmt(interval.get('high'))}]"
    return text


def _mean(spread: Mapping[str, Any], key: str) -> str:
    return fmt(spread.get(key, {}).get("mean"))


def scenario_table(entries: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> str:
    """One task and scenario: per predictor and rule, kappa, accuracy and macro F1 (seed mean
    ± SD [bootstrap interval]) and each class's recall."""
    header = ["Predictor", "Causal", "Rule", "Seeds", "Kappa", "Accuracy", "Macro F1"]
    header += [f"Recall {c}" for c in classes]
    rows = []
    for name, entry in entries.items():
        for rule in RULES:
            spread = entry["rules"][rule]["seed_mean"]
            intervals = entry["rules"][rule]["bootstrap"]
            row = [name, "yes" if entry["causal"] else "no", rule, str(len(entry["seeds"]))]
            row += [_with_interval(spread.get(k), intervals.get(k)) for k in HEADLINE_FIGURES]
            row += [_mean(spread, f"recall_{c}") for c in classes]
            rows.append(row)
    return table(header, rows)


def class_table(entries: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> str:
    """Per predictor and rule: each class's F1 (seed mean, pooled)."""
    header = ["Predictor", "Rule", *[f"F1 {c}" for c in classes]]
    rows = []
    for name, entry in entries.items():
        for rule in RULES:
            spread = entry["rules"][rule]["seed_mean"]
            rows.append([name, rule, *[_mean(spread, f"f1_{c}") for c in classes]])
    return table(header, rows)


def valid_table(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The paper's valid epochs: kappa and accuracy per rule, and the oracle best accuracy."""
    with_oracle = any("oracle_best_accuracy" in e for e in entries.values())
    header = ["Predictor", *[f"{f} ({r})" for r in RULES for f in ("Kappa", "Accuracy")]]
    if with_oracle:
        header += ["Oracle best accuracy, pooled", "Oracle best accuracy, nights"]
    rows = []
    for name, entry in entries.items():
        row = [name]
        for rule in RULES:
            spread = entry["rules"][rule]["seed_mean_valid"]
            row += [_mean(spread, "kappa"), _mean(spread, "accuracy")]
        if with_oracle:
            oracle = entry.get("oracle_best_accuracy", {})
            row += [_mean(oracle, "pooled"), _mean(oracle, "subjects")]
        rows.append(row)
    return table(header, rows)


def weight_table(entries: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> str:
    """How far the tuned rule's class weights move across folds (and seeds): min / median /
    max per class (the first class keeps weight 1)."""
    header = ["Predictor", *[f"Weight {c}" for c in classes[1:]]]
    rows = []
    for name, entry in entries.items():
        spread = entry["tuned_weights"]
        cells = [
            " / ".join(fmt(spread[k][i], 2) for k in ("min", "median", "max"))
            for i in range(1, len(classes))
        ]
        rows.append([name, *cells])
    return table(header, rows)


def _bias_loa(stats: Mapping[str, Any]) -> str:
    if stats.get("bias") is None:
        return MISSING
    low, high = fmt(stats.get("loa_low"), 1), fmt(stats.get("loa_high"), 1)
    return f"{fmt(stats['bias'], 1)} [{low}, {high}] (n={stats['n']})"


def night_table(summaries: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> str:
    """Bias [95 % limits of agreement] per night of stage minutes and REM latency, headline
    rule, one run per predictor."""
    keys = night_keys(classes)
    header = ["Predictor", *[k.removesuffix("_min").replace("_", " ") + " (min)" for k in keys]]
    rows = []
    for name, summary in summaries.items():
        agreement = summary["rules"][HEADLINE_RULE]["night_level"]["agreement"]
        rows.append([name, *[_bias_loa(agreement[k]) for k in keys]])
    return table(header, rows)


def subject_table(summary: Mapping[str, Any], classes: Sequence[str]) -> str:
    """One predictor, headline rule: kappa, accuracy, macro F1 and PSG / predicted minutes of
    each class per night."""
    rule = summary["rules"][HEADLINE_RULE]
    nights = {row["subject_id"]: row for row in rule["night_level"]["nights"]}
    header = ["Subject", "Epochs", "Kappa", "Accuracy", "Macro F1"]
    header += [f"{c} PSG / pred. (min)" for c in classes]
    rows = []
    for subject in rule["subjects"]:
        night = nights.get(subject["subject_id"], {})
        row = [subject["subject_id"], str(subject["n_epochs"])]
        row += [fmt(subject.get(k)) for k in HEADLINE_FIGURES]
        row += [
            f"{fmt(night.get(f'psg_{c}_min'), 0)} / {fmt(night.get(f'pred_{c}_min'), 0)}"
            for c in classes
        ]
        rows.append(row)
    return table(header, rows)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def csv_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per task, scenario, predictor and rule: the seed mean, SD and bootstrap
    interval of the headline figures, recall and F1 per class, the valid-epoch figures."""
    rows = []
    for task, by_task in metrics["tasks"].items():
        for scenario_name, entries in by_task["scenarios"].items():
            for name, entry in entries.items():
                for rule in RULES:
                    spread = entry["rules"][rule]["seed_mean"]
                    intervals = entry["rules"][rule]["bootstrap"]
                    row: dict[str, Any] = {
                        "task": task,
                        "scenario": scenario_name,
                        "predictor": name,
                        "rule": rule,
                        "causal": entry["causal"],
                        "seeds": len(entry["seeds"]),
                        "n_epochs": spread.get("n_epochs", {}).get("mean"),
                    }
                    for key in HEADLINE_FIGURES:
                        row[f"{key}_mean"] = spread.get(key, {}).get("mean")
                        row[f"{key}_sd"] = spread.get(key, {}).get("sd")
                        row[f"{key}_low"] = intervals.get(key, {}).get("low")
                        row[f"{key}_high"] = intervals.get(key, {}).get("high")
                    for key, stats in spread.items():
                        if key.startswith(("recall_", "f1_")):
                            row[key] = stats.get("mean")
                    valid = entry["rules"][rule]["seed_mean_valid"]
                    row["valid_kappa"] = valid.get("kappa", {}).get("mean")
                    row["valid_accuracy"] = valid.get("accuracy", {}).get("mean")
                    oracle = entry.get("oracle_best_accuracy", {})
                    row["oracle_best_accuracy_pooled"] = oracle.get("pooled", {}).get("mean")
                    rows.append(row)
    return rows


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return buffer.getvalue()


def _scenario_title(name: str) -> str:
    try:
        return scenario(name).title
    except ValueError:
        return name


def _task_title(task: str) -> str:
    classes = LABEL_MAPS[task].classes if task in LABEL_MAPS else (task,)
    return " / ".join(c.upper() if c in ("nrem", "rem") else c for c in classes)


def _figures(task: str, first: Sequence[StageResult], out_dir: Path) -> list[Path]:
    stem = safe_filename(task)
    figures = [plot_confusions(first, out_dir / f"stages_{stem}_confusion.png")]
    figures.append(plot_stage_agreement(first, out_dir / f"stages_{stem}_bland_altman.png"))
    for result in first:
        name = safe_filename(result.name)
        figures.append(plot_hypnograms(result, out_dir / f"stages_{stem}_hypnograms_{name}.png"))
    return figures


def _task_markdown(task: str, by_task: Mapping[str, Any], figures: Sequence[Path]) -> list[str]:
    classes = by_task["classes"]
    headline = by_task["headline_scenario"]
    parts = [f"## {_task_title(task)} (`{task}`)\n"]
    for name, entries in by_task["scenarios"].items():
        parts += [f"### {_scenario_title(name)} (`{name}`)\n", scenario_table(entries, classes)]
    entries = by_task["scenarios"][headline]
    first = {name: entry["runs"][0] for name, entry in entries.items()}
    parts.append(f"### {_scenario_title(headline)} in detail (one run each)\n")
    parts += ["#### F1 per class (pooled)\n", class_table(entries, classes)]
    parts += [
        "#### The published paper's valid epochs (pooled)\n",
        valid_table(entries),
    ]
    parts += [
        "#### Tuned-rule class weights across folds: min / median / max\n",
        weight_table(entries, classes),
    ]
    if "rem" in classes:
        parts.append(
            "The oracle best accuracy chooses a wake and a REM threshold on the very labels it "
            "scores (pooled over all nights, or per night and averaged), as the paper's "
            'three-class "best accuracy" did; it is not achievable in use.\n'
        )
    parts += [
        f"#### Night level ({HEADLINE_RULE} rule): bias [95 % limits of agreement], "
        "predicted - PSG\n",
        night_table(first, classes),
        "Minutes count scored epochs; REM latency runs from the first epoch that is not wake "
        "to the first REM epoch (nights without REM on either side left out).\n",
        "#### Figures\n",
    ]
    parts += [f"![{path.stem}]({path.name})\n" for path in figures]
    parts.append("#### Per night\n")
    for name, summary in first.items():
        parts.append(
            f"<details><summary>{name}</summary>\n\n{subject_table(summary, classes)}\n</details>\n"
        )
    return parts


def write_stage_report(
    results: Sequence[StageSeeded], out_dir: Path, *, n_resamples: int = 500
) -> dict[str, Any]:
    """Summarise every stage predictor in every task and scenario; write ``stages.json``,
    ``stages.csv``, ``stages.md`` and the PNG figures into ``out_dir``.

    The figures (confusion matrices, Bland-Altman plots, hypnograms) show the headline scenario
    (:data:`~sleepstream.evaluation.scenarios.HEADLINE` when present, else the first) and each
    predictor's first seed. Files are written whole or not at all, the figures first.

    Returns
    -------
    dict
        The content of ``stages.json``: ``tasks``, per task ``classes``, ``headline_scenario``
        and ``scenarios`` (per scenario and predictor: ``causal``, ``seeds``, ``rules`` (per
        rule: ``seed_mean``, ``seed_mean_valid``, ``bootstrap``), ``oracle_best_accuracy`` for
        three classes, ``runs`` (:func:`~sleepstream.evaluation.stage_metrics.
        summarize_stages` per seed)).
    """
    if not results:
        raise ValueError("No stage results to report")
    grouped = group_stages(results)
    tasks: dict[str, Any] = {}
    for task, by_scenario in grouped.items():
        first_runs = next(iter(next(iter(by_scenario.values())).values()))
        tasks[task] = {
            "classes": list(first_runs[0][0].classes),
            "headline_scenario": HEADLINE.name
            if HEADLINE.name in by_scenario
            else next(iter(by_scenario)),
            "scenarios": {
                name: {p: _entry(runs, n_resamples) for p, runs in by_name.items()}
                for name, by_name in by_scenario.items()
            },
        }
    metrics = to_jsonable({"headline_rule": HEADLINE_RULE, "tasks": tasks})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Sleep stages: leave-one-subject-out results\n", DEFINITIONS]
    for task, by_task in metrics["tasks"].items():
        headline = by_task["headline_scenario"]
        first = [runs[0][0] for runs in grouped[task][headline].values()]
        parts += _task_markdown(task, by_task, _figures(task, first, out_dir))
    write_atomic(out_dir / "stages.csv", _csv_text(csv_rows(metrics)))
    write_atomic(out_dir / "stages.json", json.dumps(metrics, indent=1, allow_nan=False))
    write_atomic(out_dir / "stages.md", "\n".join(parts))
    logger.info("Wrote the stage report of %d runs to %s", len(results), out_dir)
    return dict(metrics)


def report_stage_predictions(
    out: Path, docs: Path | None = None, *, n_resamples: int = 500
) -> dict[str, Any]:
    """:func:`write_stage_report` of the stage predictions saved under ``out``, into ``out``;
    with ``docs``, also :func:`~sleepstream.evaluation.report.update_docs` of that file from
    ``stages.md``. Returns the content of ``stages.json``."""
    metrics = write_stage_report(load_stage_predictions(out), out, n_resamples=n_resamples)
    if docs is not None:
        update_docs(out / "stages.md", docs)
    return metrics
