"""Write the evaluation report of several predictors: ``metrics.json``, ``results.md`` and figures.

All figures follow the evaluation contract in the design document; :func:`summarize` computes
them and this module only lays them out.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sleepstream.evaluation.metrics import WASA_KEYS, summarize
from sleepstream.evaluation.nightly import OnsetTracker
from sleepstream.evaluation.plots import plot_bland_altman, plot_nights, plot_roc, safe_filename
from sleepstream.evaluation.predictions import LosoResult

logger = logging.getLogger(__name__)

Summary = Mapping[str, Any]

MISSING = "n/a"
"""Shown for a figure that is undefined (e.g. AUROC of a night with one class)."""

DEFINITIONS = """\
Sleep is the positive class. *Sleep-correct* is the fraction of PSG-sleep epochs called sleep,
*wake-correct* the fraction of PSG-wake epochs called wake. WASA93 / WASA95 is wake-correct at a
threshold set for sleep-correct 0.93 / 0.95. **Deployable** thresholds are chosen on the training
subjects only (leave-one-subject-out), so the held-out night's sleep-correct only approximates the
target; it is shown in parentheses. **Oracle** thresholds are chosen on the test labels themselves
(pooled out-of-fold scores), as some published numbers were; they are not achievable in use.
"Pooled" columns use all scored epochs of all nights; "subjects" columns are mean ± SD over
subjects. The other epoch metrics use each night's operating threshold (maximising Cohen's kappa
on its training subjects); AUROC, Brier score and ECE (expected calibration error, 10 bins) use
p(sleep) directly. Causal predictors use only data up to the end of each epoch.
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return f"{value:.{digits}f}"


def _mean_sd(stats: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stats or stats.get("mean") is None:
        return MISSING
    return f"{_fmt(stats['mean'], digits)} ± {_fmt(stats.get('sd'), digits)}"


def _deployable(figures: Mapping[str, Any], key: str) -> str:
    wake = _fmt(figures.get(f"{key}_deployable"))
    return f"{wake} ({_fmt(figures.get(f'{key}_deployable_sleep_correct'))})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
        row.append(_fmt(figures.get(f"{WASA_KEYS[0]}_oracle")))
        row += [
            _fmt(figures.get(k))
            for k in ("auroc", "kappa", "balanced_accuracy", "accuracy", "wake_f1", "brier", "ece")
        ]
        rows.append(row)
    return _table(header, rows)


def _bias_loa(stats: Mapping[str, Any], digits: int = 1) -> str:
    if stats.get("bias") is None:
        return MISSING
    low, high = _fmt(stats.get("loa_low"), digits), _fmt(stats.get("loa_high"), digits)
    return f"{_fmt(stats['bias'], digits)} [{low}, {high}]"


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
    return _table(header, rows)


def realtime_table(summaries: Mapping[str, Summary]) -> str:
    """Onset delay, false events per night and wake-up delay, per predictor."""
    header = [
        "Predictor",
        "Causal",
        "Onset delay (min), mean ± SD [median]",
        "Missed onsets",
        "False onset events / night",
        "False wake events / night",
        "Wake-up delay (min), mean ± SD [median]",
    ]
    rows = []
    for name, summary in summaries.items():
        rt = summary["real_time"]

        def delay(stats: Mapping[str, Any]) -> str:
            return f"{_mean_sd(stats, 1)} [{_fmt(stats.get('median'), 1)}] (n={stats['n']})"

        rows.append(
            [
                name,
                _causal(summary),
                delay(rt["onset_delay_min"]),
                str(rt["missed_onsets"]),
                _fmt(rt["false_onset_events"].get("mean"), 2),
                _fmt(rt["false_wake_events"].get("mean"), 2),
                delay(rt["wakeup_delay_min"]),
            ]
        )
    return _table(header, rows)


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
            row += [_deployable(subject, key), _fmt(subject.get(f"{key}_oracle"))]
        row += [_fmt(subject.get("auroc")), _fmt(subject.get("kappa"))]
        tst = [
            f"{_fmt(n['psg_tst_min'], 0)} / {_fmt(n['pred_tst_min'], 0)}"
            for n in nights.get(subject["subject_id"], [])
        ]
        row.append("; ".join(tst))
        rows.append(row)
    return _table(header, rows)


def _summaries(results: Sequence[LosoResult]) -> dict[str, dict[str, Any]]:
    summaries: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.name in summaries:
            raise ValueError(f"Duplicate predictor name {result.name!r}: names must be unique")
        summaries[result.name] = summarize(result)
    return summaries


def markdown_table(results: Sequence[LosoResult]) -> str:
    """The headline markdown table (all scored epochs), one row per predictor, for the docs.

    Columns: predictor, causal, WASA93/WASA95 deployable (pooled, with the achieved
    sleep-correct in parentheses, and mean ± SD over subjects), WASA93 oracle, AUROC, kappa,
    balanced accuracy, accuracy, wake F1, Brier score, ECE. See :data:`DEFINITIONS`.
    """
    return epoch_table(_summaries(results))


def _results_markdown(summaries: Mapping[str, Summary], figures: Sequence[Path]) -> str:
    tracker = OnsetTracker()
    sections = [
        ("Epoch level, all scored epochs", epoch_table(summaries, "scored")),
        (
            "Epoch level, the published paper's valid epochs (pooled)",
            epoch_table(summaries, "valid"),
        ),
        ("Night level: bias [95 % limits of agreement], predicted - PSG", night_table(summaries)),
        ("Real time", realtime_table(summaries)),
    ]
    parts = ["# Leave-one-subject-out results\n", DEFINITIONS]
    for title, table in sections:
        parts += [f"## {title}\n", table]
    parts.append(
        "Night-level figures compare total sleep time, sleep efficiency, wake after sleep onset "
        "and sleep onset latency of each night's operating-threshold decisions with PSG. "
        'Real-time events come from a hysteresis tracker: "fell asleep" after '
        f'{tracker.fall_asleep_epochs} consecutive sleep epochs, "woke up" after '
        f"{tracker.wake_up_epochs} consecutive wake epochs; delays run from the PSG transition to "
        "the end of the epoch the event fires on.\n"
    )
    parts.append("## Figures\n")
    parts += [f"![{path.stem}]({path.name})\n" for path in figures]
    parts.append("## Per subject\n")
    for name, summary in summaries.items():
        parts.append(
            f"<details><summary>{name}</summary>\n\n{subject_table(summary)}\n</details>\n"
        )
    return "\n".join(parts)


def write_report(results: Sequence[LosoResult], out_dir: Path) -> dict[str, Any]:
    """Summarise each predictor and write ``metrics.json``, ``results.md`` and PNG figures.

    Parameters
    ----------
    results
        One LOSO result per predictor; names must be unique.
    out_dir
        Created if missing; existing files of the same names are overwritten.

    Returns
    -------
    dict
        The content of ``metrics.json``: :func:`summarize` per predictor name.
    """
    if not results:
        raise ValueError("No results to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = _summaries(results)
    with (out_dir / "metrics.json").open("w", encoding="utf-8") as f:
        json.dump(summaries, f, indent=2, allow_nan=False)
    figures = [plot_roc(results, out_dir / "roc.png")]
    figures.append(plot_bland_altman(results, out_dir / "bland_altman.png"))
    used: set[str] = set()
    for index, result in enumerate(results):
        stem = f"nights_{safe_filename(result.name)}"
        stem = f"{stem}_{index}" if stem in used else stem
        used.add(stem)
        figures.append(plot_nights(result, out_dir / f"{stem}.png"))
    (out_dir / "results.md").write_text(_results_markdown(summaries, figures), encoding="utf-8")
    logger.info("Wrote report of %d predictors to %s", len(results), out_dir)
    return summaries
