"""Write the evaluation report of several predictors: ``metrics.json``, ``results.md`` and figures.

All figures follow the evaluation contract in the design document; :func:`summarize` computes
them and this module only lays them out.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sleepstream.evaluation.metrics import WASA_KEYS, summarize, to_jsonable
from sleepstream.evaluation.plots import (
    plot_bland_altman,
    plot_nights,
    plot_roc,
    plot_scenarios,
    safe_filename,
)
from sleepstream.evaluation.predictions import LosoResult, Seeded, load_predictions
from sleepstream.evaluation.scenarios import HEADLINE, SCENARIO_NAMES, scenario
from sleepstream.evaluation.seeds import seed_spread, subject_bootstrap, threshold_spread
from sleepstream.events import OnsetTracker
from sleepstream.paths import check_output_dir, check_output_file, copy_atomic, write_atomic

logger = logging.getLogger(__name__)

Summary = Mapping[str, Any]

MISSING = "n/a"
"""Shown for a figure that is undefined (e.g. AUROC of a night with one class)."""

DEFINITIONS = """\
Sleep is the positive class. *Sleep-correct* is the fraction of PSG-sleep epochs called sleep,
*wake-correct* the fraction of PSG-wake epochs called wake. WASA93 / WASA95 is wake-correct at a
threshold set for sleep-correct 0.93 / 0.95. **Deployable** thresholds are chosen without the test
night: on the pooled out-of-fold scores of the other held-out nights, in the same scenario (each
score from a model that did not train on the night it scores), so the held-out night's
sleep-correct only approximates the target; it is shown in parentheses. **Oracle** thresholds are
chosen on the test labels themselves (pooled out-of-fold scores), as some published numbers were;
they are not achievable in use. "Pooled" columns use all scored epochs of all nights; "subjects"
columns are mean ± SD over subjects. The other epoch metrics use each night's operating threshold
(maximising Cohen's kappa on the other nights); AUROC, Brier score and ECE (expected calibration
error, 10 bins) use p(sleep) directly. Causal predictors use only data up to the end of each
epoch. Trained models are run once per seed: their figures are the **seed mean ± SD**, with a
**subject-bootstrap 95 % interval** of the seed mean in brackets (subjects resampled with
replacement). Baselines are deterministic (one run, SD 0).
"""


def fmt(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; :data:`MISSING` for ``None``, NaN or infinity."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return f"{value:.{digits}f}"


def _mean_sd(stats: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stats or stats.get("mean") is None:
        return MISSING
    return f"{fmt(stats['mean'], digits)} ± {fmt(stats.get('sd'), digits)}"


def _deployable(figures: Mapping[str, Any], key: str) -> str:
    wake = fmt(figures.get(f"{key}_deployable"))
    return f"{wake} ({fmt(figures.get(f'{key}_deployable_sleep_correct'))})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of ``header`` and ``rows`` (cells already text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _causal(summary: Summary) -> str:
    return "yes" if summary["causal"] else "no"


def epoch_table(summaries: Mapping[str, Summary], subset: str = "scored") -> str:
    """Epoch-level table, one row per predictor, on ``subset`` (``"scored"`` or ``"valid"``).

    Mean ± SD over subjects is shown where the summary holds it (all scored epochs).
    """
    with_subjects = any("subjects" in summary[subset] for summary in summaries.values())
    header = ["Predictor", "Causal"]
    for key in WASA_KEYS:
        header.append(f"{key.upper()} deployable")
        if with_subjects:
            header.append(f"{key.upper()} deployable, subjects")
    header += [
        f"{WASA_KEYS[0].upper()} oracle",
        "AUROC",
        "Kappa",
        "Balanced acc.",
        "Accuracy",
        "Wake F1",
        "Brier",
        "ECE",
    ]
    rows = []
    for name, summary in summaries.items():
        figures = summary[subset]["pooled"]
        subjects = summary[subset].get("subjects", {})
        row = [name, _causal(summary)]
        for key in WASA_KEYS:
            row.append(_deployable(figures, key))
            if with_subjects:
                row.append(_mean_sd(subjects.get(f"{key}_deployable")))
        row.append(fmt(figures.get(f"{WASA_KEYS[0]}_oracle")))
        row += [
            fmt(figures.get(k))
            for k in ("auroc", "kappa", "balanced_accuracy", "accuracy", "wake_f1", "brier", "ece")
        ]
        rows.append(row)
    return table(header, rows)


def _bias_loa(stats: Mapping[str, Any], digits: int = 1) -> str:
    if stats.get("bias") is None:
        return MISSING
    low, high = fmt(stats.get("loa_low"), digits), fmt(stats.get("loa_high"), digits)
    return f"{fmt(stats['bias'], digits)} [{low}, {high}]"


def night_table(summaries: Mapping[str, Summary]) -> str:
    """Bias [95 % limits of agreement] of TST, SE, WASO and SOL against PSG, per predictor."""
    header = ["Predictor", "Causal", "TST (min)", "SE (%)", "WASO (min)", "SOL (min)", "Nights"]
    rows = []
    for name, summary in summaries.items():
        level = summary["night_level"]
        row = [name, _causal(summary)]
        row += [_bias_loa(level[k]) for k in ("tst_min", "se_pct", "waso_min", "sol_min")]
        row.append(str(level["tst_min"]["n"]))
        rows.append(row)
    return table(header, rows)


def _delay(stats: Mapping[str, Any]) -> str:
    """A delay in minutes: mean ± SD [median] (n)."""
    return f"{_mean_sd(stats, 1)} [{fmt(stats.get('median'), 1)}] (n={stats['n']})"


_REALTIME_COLUMNS: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
    ("Onset delay (min), mean ± SD [median]", lambda rt: _delay(rt["onset_delay_min"])),
    ("Missed onsets", lambda rt: str(rt["missed_onsets"])),
    ("False onset events / night", lambda rt: fmt(rt["false_onset_events"].get("mean"), 2)),
    ("False wake events / night", lambda rt: fmt(rt["false_wake_events"].get("mean"), 2)),
    ("Wake-up delay (min), mean ± SD [median]", lambda rt: _delay(rt["wakeup_delay_min"])),
]
"""The columns of :func:`realtime_table` after the predictor's: the header, and the cell made
of a summary's ``real_time`` figures."""


def realtime_table(summaries: Mapping[str, Summary]) -> str:
    """Onset delay, false events per night and wake-up delay, per predictor."""
    header = ["Predictor", "Causal", *(title for title, _ in _REALTIME_COLUMNS)]
    rows = [
        [name, _causal(summary), *(cell(summary["real_time"]) for _, cell in _REALTIME_COLUMNS)]
        for name, summary in summaries.items()
    ]
    return table(header, rows)


def subject_table(summary: Summary) -> str:
    """One row per subject of one predictor: WASA deployable and oracle, AUROC, kappa, TST."""
    nights: dict[str, list[Mapping[str, Any]]] = {}
    for night in summary["nights"]:
        nights.setdefault(night["subject_id"], []).append(night)
    header = ["Subject", "Epochs"]
    for key in WASA_KEYS:
        header += [f"{key.upper()} deployable", f"{key.upper()} oracle"]
    header += ["AUROC", "Kappa", "TST PSG / pred. (min)"]
    rows = []
    for subject in summary["subjects"]:
        row = [subject["subject_id"], str(subject["n_epochs"])]
        for key in WASA_KEYS:
            row += [_deployable(subject, key), fmt(subject.get(f"{key}_oracle"))]
        row += [fmt(subject.get("auroc")), fmt(subject.get("kappa"))]
        tst = [
            f"{fmt(n['psg_tst_min'], 0)} / {fmt(n['pred_tst_min'], 0)}"
            for n in nights.get(subject["subject_id"], [])
        ]
        row.append("; ".join(tst))
        rows.append(row)
    return table(header, rows)


def _summaries(results: Sequence[LosoResult]) -> dict[str, dict[str, Any]]:
    summaries: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.name in summaries:
            raise ValueError(f"Duplicate predictor name {result.name!r}: names must be unique")
        summaries[result.name] = summarize(result)
    return summaries


def markdown_table(results: Sequence[LosoResult]) -> str:
    """The epoch-level markdown table (all scored epochs) of one run per predictor.

    Columns: predictor, causal, WASA93/WASA95 deployable (pooled, with the achieved
    sleep-correct in parentheses, and mean ± SD over subjects), WASA93 oracle, AUROC, kappa,
    balanced accuracy, accuracy, wake F1, Brier score, ECE. See :data:`DEFINITIONS`.
    """
    return epoch_table(_summaries(results))


Grouped = dict[str, dict[str, list[Seeded]]]
"""Results by scenario name, then predictor name: one entry per seed."""


def group(results: Sequence[Seeded]) -> Grouped:
    """Results by scenario, then predictor; rejects one predictor twice with the same seed."""
    grouped: Grouped = {}
    for result, seed in results:
        runs = grouped.setdefault(result.scenario, {}).setdefault(result.name, [])
        if any(other == seed for _, other in runs):
            raise ValueError(
                f"Duplicate predictor name {result.name!r} (seed {seed}) in scenario "
                f"{result.scenario!r}: names must be unique"
            )
        runs.append((result, seed))
    return {
        name: grouped[name]
        for name in [*SCENARIO_NAMES, *sorted(set(grouped) - set(SCENARIO_NAMES))]
        if name in grouped
    }


def _with_interval(spread: Mapping[str, Any], interval: Mapping[str, Any] | None) -> str:
    text = fmt(spread.get("mean"))
    if spread.get("n", 0) > 1:
        text += f" ± {fmt(spread.get('sd'))}"
    if interval:
        text += f" [{fmt(interval.get('low'))}, {fmt(interval.get('high'))}]"
    return text


def scenario_table(entries: Mapping[str, Summary]) -> str:
    """One scenario: seed mean ± SD [bootstrap interval] of the headline figures, per predictor."""
    header = [
        "Predictor",
        "Causal",
        "Seeds",
        "WASA93 deployable",
        "WASA95 deployable",
        "AUROC",
        "Kappa",
        "WASA93 oracle",
        "Sleep-correct at WASA93",
    ]
    rows = []
    for name, entry in entries.items():
        spread, intervals = entry["seed_mean"], entry["bootstrap"]
        row = [name, "yes" if entry["causal"] else "no", str(len(entry["seeds"]))]
        row += [
            _with_interval(spread[key], intervals.get(key))
            for key in ("wasa93_deployable", "wasa95_deployable", "auroc", "kappa")
        ]
        row.append(_with_interval(spread["wasa93_oracle"], None))
        row.append(fmt(spread["wasa93_deployable_sleep_correct"]["mean"]))
        rows.append(row)
    return table(header, rows)


def threshold_table(entries: Mapping[str, Summary]) -> str:
    """How far each predictor's deployable WASA93 threshold moves across folds and seeds."""
    header = ["Predictor", "Thresholds", "Min", "Max", "SD"]
    rows = []
    for name, entry in entries.items():
        t = entry["wasa93_threshold_spread"]
        rows.append([name, str(t["n"]), fmt(t["min"]), fmt(t["max"]), fmt(t["sd"])])
    return table(header, rows)


def _entry(runs: Sequence[Seeded], n_resamples: int) -> dict[str, Any]:
    results = [result for result, _ in runs]
    summaries = [summarize(result) for result in results]
    return {
        "causal": results[0].causal,
        "description": results[0].description,
        "threshold_source": results[0].threshold_source,
        "seeds": [seed for _, seed in runs],
        "seed_mean": seed_spread([s["scored"]["pooled"] for s in summaries]),
        "seed_mean_valid": seed_spread([s["valid"]["pooled"] for s in summaries]),
        "bootstrap": subject_bootstrap(results, n_resamples),
        "wasa93_threshold_spread": threshold_spread(results),
        "runs": summaries,
    }


def _scenario_title(name: str) -> str:
    try:
        return scenario(name).title
    except ValueError:
        return name


def _results_markdown(metrics: Mapping[str, Any], headline: str, figures: Sequence[Path]) -> str:
    tracker = OnsetTracker()
    scenarios = metrics["scenarios"]
    parts = ["# Leave-one-subject-out results\n", DEFINITIONS]
    parts.append(
        "## Start scenarios\n\nThe same PSG epochs are scored in every scenario; only what the "
        "detector was fed before them differs. The dataset has no motion before the PSG start, "
        "so the hours before it carry heart rate only. "
        f"The headline is **{_scenario_title(headline)}**.\n"
    )
    for name, entries in scenarios.items():
        parts += [f"### {_scenario_title(name)} (`{name}`)\n", scenario_table(entries)]
    if headline in scenarios:
        entries = scenarios[headline]
        parts += [
            "## Deployable WASA93 thresholds across folds and seeds (headline scenario)\n",
            threshold_table(entries),
        ]
        first = {name: entry["runs"][0] for name, entry in entries.items()}
        seeds = {name: entry["seeds"][0] for name, entry in entries.items()}
        seed_note = ", ".join(f"{n} seed {s}" for n, s in seeds.items() if s is not None)
        parts.append(
            f"## The headline scenario in detail (one run each{': ' + seed_note if seed_note else ''})\n"
        )
        sections = [
            ("Epoch level, all scored epochs", epoch_table(first, "scored")),
            (
                "Epoch level, the published paper's valid epochs (pooled)",
                epoch_table(first, "valid"),
            ),
            ("Night level: bias [95 % limits of agreement], predicted - PSG", night_table(first)),
            ("Real time", realtime_table(first)),
        ]
        for title, text in sections:
            parts += [f"### {title}\n", text]
        parts.append(
            "Night-level figures compare total sleep time, sleep efficiency, wake after sleep "
            "onset and sleep onset latency of each night's operating-threshold decisions with "
            'PSG. Real-time events come from a hysteresis tracker: "fell asleep" after '
            f'{tracker.fall_asleep_epochs} consecutive sleep epochs, "woke up" after '
            f"{tracker.wake_up_epochs} consecutive wake epochs; delays run from the PSG "
            "transition to the end of the epoch the event fires on.\n"
        )
        parts.append("### Figures\n")
        parts += [f"![{path.stem}]({path.name})\n" for path in figures]
        parts.append("### Per subject\n")
        for name, summary in first.items():
            parts.append(
                f"<details><summary>{name}</summary>\n\n{subject_table(summary)}\n</details>\n"
            )
    return "\n".join(parts)


def write_report(
    results: Sequence[Seeded], out_dir: Path, *, n_resamples: int = 500
) -> dict[str, Any]:
    """Summarise every predictor in every scenario; write ``metrics.json``, ``results.md``, PNGs.

    Parameters
    ----------
    results
        (result, seed) pairs: one per predictor, scenario and seed (seed ``None``: deterministic).
    out_dir
        Created if missing; existing files of the same names are overwritten. Each file is
        written whole or not at all, and ``metrics.json`` and ``results.md`` last, so an
        interrupted run leaves the previous pair (or none) beside possibly newer figures.
    n_resamples
        Subject-bootstrap resamples per predictor and scenario.

    Returns
    -------
    dict
        The content of ``metrics.json``: ``headline_scenario`` and ``scenarios`` (per scenario
        and predictor: ``seeds``, ``seed_mean`` and ``seed_mean_valid`` (mean, SD and n over
        seeds of every pooled figure), ``bootstrap`` (95 % interval of the seed mean),
        ``wasa93_threshold_spread`` and ``runs`` (:func:`summarize` per seed)).
    """
    if not results:
        raise ValueError("No results to report")
    grouped = group(results)
    headline = HEADLINE.name if HEADLINE.name in grouped else next(iter(grouped))
    metrics = to_jsonable(
        {
            "headline_scenario": headline,
            "scenarios": {
                name: {p: _entry(runs, n_resamples) for p, runs in by_name.items()}
                for name, by_name in grouped.items()
            },
        }
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = [runs[0][0] for runs in grouped[headline].values()]
    figures = [plot_roc(first, out_dir / "roc.png")]
    figures.append(plot_scenarios(metrics, out_dir / "scenarios.png"))
    figures.append(plot_bland_altman(first, out_dir / "bland_altman.png"))
    used: set[str] = set()
    for index, result in enumerate(first):
        stem = f"nights_{safe_filename(result.name)}"
        stem = f"{stem}_{index}" if stem in used else stem
        used.add(stem)
        figures.append(plot_nights(result, out_dir / f"{stem}.png"))
    text = _results_markdown(metrics, headline, figures)
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False))
    write_atomic(out_dir / "results.md", text)
    logger.info("Wrote report of %d runs to %s", len(results), out_dir)
    return dict(metrics)


DOCS_MARKER = "<!-- Written by hand below this line: kept when the report above is regenerated. -->"


def update_docs(report: Path, docs: Path) -> None:
    """Replace the generated part of ``docs`` by ``report``, keeping what follows the marker.

    The report's figures are copied to ``figures/`` beside ``docs`` and the links rewritten;
    every file is written whole or not at all.
    """
    kept = ""
    if docs.exists() and DOCS_MARKER in docs.read_text():
        kept = docs.read_text().split(DOCS_MARKER, 1)[1]
    figures = docs.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    text = report.read_text()
    for name in re.findall(r"\]\(([\w.-]+\.png)\)", text):
        copy_atomic(report.parent / name, figures / name)
        text = text.replace(f"]({name})", f"](figures/{name})")
    write_atomic(docs, text.rstrip() + "\n\n" + DOCS_MARKER + kept)


def check_docs_path(docs: str | Path) -> Path:
    """Check a ``--docs`` file and the ``figures/`` folder beside it, which :func:`update_docs`
    writes, before any work (:mod:`sleepstream.paths`); returns the file's path."""
    path = check_output_file(docs, "--docs file")
    check_output_dir(path.parent / "figures", "--docs figures folder")
    return path


def report_predictions(
    out: Path, docs: Path | None = None, *, n_resamples: int = 500
) -> dict[str, Any]:
    """:func:`write_report` of the predictions saved under ``out`` (:func:`~sleepstream.
    evaluation.predictions.load_predictions`), into ``out``; with ``docs``, also
    :func:`update_docs` of that file. Returns the content of ``metrics.json``."""
    metrics = write_report(load_predictions(out), out, n_resamples=n_resamples)
    if docs is not None:
        update_docs(out / "results.md", docs)
    return metrics


def report_folder(out: Path, docs: Path | None = None) -> list[str]:
    """Rebuild every report whose predictions are saved under ``out``, from those files alone.

    ``predictions/`` gives ``results.md`` (:func:`report_predictions`), ``stage_predictions/``
    gives ``stages.md`` (:func:`~sleepstream.evaluation.stage_report.report_stage_predictions`);
    a folder with neither is an error that says which command writes them. ``docs`` takes one
    report: ``ValueError`` when ``out`` holds both. Returns the names of the reports written.
    """
    from sleepstream.evaluation.stage_report import report_stage_predictions
    from sleepstream.evaluation.stages import PREDICTIONS_FOLDER

    if not (out / PREDICTIONS_FOLDER).is_dir():
        report_predictions(out, docs)
        return ["Report"]
    written = []
    if (out / "predictions").is_dir():
        if docs:
            raise ValueError(f"--docs takes one report; {out} holds sleep/wake and stage ones")
        report_predictions(out, None)
        written.append("Report")
    report_stage_predictions(out, docs)
    return [*written, "Stage report"]
