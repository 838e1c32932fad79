"""The morning review of a recorded night: ``sleepstream review``.

The shipped review network (:mod:`sleepstream.models.review`, trained on all 31 nights of the
sleep-accel data) reads the whole night, forwards and backwards in time, and gives for every
30 s epoch p(sleep), wake / NREM / REM and wake / light / deep / REM probabilities. From them:

- a per-epoch table (CSV): epoch start, p(sleep), the stage probabilities, the decisions;
- a night summary (JSON, and printed): total sleep time (TST), sleep efficiency (SE), wake after
  sleep onset (WASO), sleep onset latency (SOL), minutes per stage and REM latency, with the PSG
  values beside them when the night has labels;
- a hypnogram (PNG).

Decisions use the operating points shipped with the model, chosen on leave-one-subject-out
predictions (never on the night reviewed): the sleep/wake threshold (``operating``, the
maximum-kappa threshold, by default) and the tuned rule's class weights per stage task.

The night is every epoch of the recording: for a subject of the data folder its PSG epochs, for
a user's files every 30 s epoch from the first sample to the last (so give files that cover the
time in bed, not a whole day). The review is not causal: it is for a night that has ended.

Examples
--------
>>> from sleepstream.records import Recording
>>> model = load_shipped_review()  # doctest: +SKIP
>>> result = review_night(recording, model)  # doctest: +SKIP
>>> result.summary["predicted"]["tst_min"]  # doctest: +SKIP
402.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.commands import DATA_HELP, Subparsers, add_night_source, user_recording
from sleepstream.evaluation.nightly import night_summary
from sleepstream.paths import atomic_file, write_atomic
from sleepstream.records import SLEEP_WAKE, WAKE_LIGHT_DEEP_REM, WAKE_NREM_REM, Recording

if TYPE_CHECKING:  # torch, scikit-learn and pandas load only when a night is reviewed
    import pandas as pd

    from sleepstream.models.review import LoadedReview

SHIPPED_REVIEW = Path(__file__).parent / "shipped" / "review_model.json"
"""The shipped review network (``review_model.npz`` beside it)."""

THRESHOLDS = ("operating", "wasa93", "wasa95")
"""Sleep/wake operating points shipped with the model (``operating``: maximum kappa)."""


def load_shipped_review() -> LoadedReview:
    """The shipped review network with its operating points (``FileNotFoundError`` if absent)."""
    from sleepstream.models.review import load_review

    if not SHIPPED_REVIEW.exists():
        raise FileNotFoundError(
            f"{SHIPPED_REVIEW} not found: ship one with "
            "`python -m sleepstream.evaluation.review_eval ship`"
        )
    return load_review(SHIPPED_REVIEW)


def with_counts(recording: Recording) -> Recording:
    """The night with activity counts: computed from its raw acceleration (as the data folder
    reader and the live step do) when it has acceleration and no counts."""
    if len(recording.counts) or recording.accel is None or recording.accel_times is None:
        return recording
    from sleepstream.step import accel_counts

    origin = float(recording.epoch_times[0]) if recording.n_epochs else 0.0
    times, counts = accel_counts(recording.accel_times, recording.accel[:, 2], origin)
    return dataclasses.replace(recording, count_times=times, counts=counts, count_source="motion")


@dataclass(frozen=True)
class NightReview:
    """The review of one night: the per-epoch table and the night summary."""

    table: pd.DataFrame
    summary: dict[str, Any]


def _finite(value: float) -> float | None:
    return round(float(value), 2) if math.isfinite(value) else None


def night_values(
    sleep: NDArray[np.bool_], stage3: NDArray[np.integer], stage4: NDArray[np.integer]
) -> dict[str, float | None]:
    """TST, SE, WASO, SOL (from ``sleep``), minutes per stage and REM latency of one night's
    decisions over the given epochs in time order.

    >>> values = night_values(np.array([False, True, True, True]), np.array([0, 1, 2, 1]),
    ...                       np.array([0, 1, 3, 2]))
    >>> values["tst_min"], values["rem_min"], values["deep_min"], values["rem_latency_min"]
    (1.5, 0.5, 0.5, 0.5)
    """
    from sleepstream.evaluation.stage_metrics import rem_latency_min, stage_minutes

    out = {k: _finite(v) for k, v in night_summary(sleep).items()}
    for task, decided in ((WAKE_NREM_REM, stage3), (WAKE_LIGHT_DEEP_REM, stage4)):
        minutes = stage_minutes(decided, len(task.classes))
        for name, value in zip(task.classes, minutes.tolist(), strict=True):
            key = "wake_stage_min" if name == "wake" else f"{name}_min"
            out[key] = _finite(value)
    out["rem_latency_min"] = _finite(rem_latency_min(stage3, wake=0, rem=2))
    return out


def review_night(
    recording: Recording, model: LoadedReview, threshold: str = "operating"
) -> NightReview:
    """Score every epoch of ``recording`` with ``model`` and summarise the night.

    ``threshold`` names the shipped sleep/wake operating point (one of :data:`THRESHOLDS`).
    With PSG labels (any scored epoch), the summary also holds the PSG values of the scored
    epochs and the predicted ones on the same epochs.
    """
    import pandas as pd

    from sleepstream.evaluation.stages import decide
    from sleepstream.models.review import TASKS, night_inputs, predict_review

    if recording.n_epochs == 0:
        raise ValueError(f"{recording.subject_id}: no epochs to review")
    thresholds: Mapping[str, float] = model.meta.get("thresholds", {})
    if threshold not in thresholds:
        raise ValueError(f"Unknown threshold {threshold!r}; the model ships {sorted(thresholds)}")
    night = with_counts(recording)
    if not len(night.counts):
        raise ValueError(
            f"{recording.subject_id}: no activity counts or acceleration: the review needs "
            "motion (--motion or --counts)"
        )
    proba = predict_review(model.net, night_inputs(night, model.config.features))
    weights: Mapping[str, Sequence[float]] = model.meta.get("class_weights", {})
    p_sleep = proba[SLEEP_WAKE.name][:, 1]
    sleep = p_sleep >= float(thresholds[threshold])
    stage3 = decide(proba[WAKE_NREM_REM.name], weights.get(WAKE_NREM_REM.name))
    stage4 = decide(proba[WAKE_LIGHT_DEEP_REM.name], weights.get(WAKE_LIGHT_DEEP_REM.name))
    columns: dict[str, Any] = {"time": night.epoch_times, "p_sleep": p_sleep}
    for task in TASKS[1:]:
        short = "3" if task is WAKE_NREM_REM else "4"
        for k, name in enumerate(task.classes):
            columns[f"p{short}_{name}"] = proba[task.name][:, k]
    columns["sleep"] = sleep.astype(np.int8)
    columns["stage3"] = np.array(WAKE_NREM_REM.classes)[stage3]
    columns["stage4"] = np.array(WAKE_LIGHT_DEEP_REM.classes)[stage4]
    scored = night.scored
    if scored.any():
        columns["psg_stage4"] = np.where(
            scored, np.array(WAKE_LIGHT_DEEP_REM.classes)[night.labels(WAKE_LIGHT_DEEP_REM)], ""
        )
    table = pd.DataFrame(columns)
    summary: dict[str, Any] = {
        "subject": recording.subject_id,
        "first_epoch_start": float(night.epoch_times[0]),
        "n_epochs": int(night.n_epochs),
        "threshold": {"name": threshold, "p_sleep": float(thresholds[threshold])},
        "predicted": night_values(sleep, stage3, stage4),
    }
    if scored.any():
        summary["n_scored_epochs"] = int(scored.sum())
        summary["predicted_on_scored"] = night_values(sleep[scored], stage3[scored], stage4[scored])
        summary["psg"] = night_values(
            night.labels(SLEEP_WAKE)[scored] == 1,
            night.labels(WAKE_NREM_REM)[scored],
            night.labels(WAKE_LIGHT_DEEP_REM)[scored],
        )
    return NightReview(table, summary)


def plot_review(review: NightReview, path: Path, title: str = "") -> Path:
    """Hypnogram of a reviewed night: p(sleep) with the threshold; the predicted four-class
    hypnogram (red) over the PSG one (black) when labelled; the stage probabilities stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = review.table
    hours = (table["time"].to_numpy() - float(table["time"].iloc[0])) / 3600.0
    level = {"wake": 3.0, "rem": 2.0, "light": 1.0, "deep": 0.0}
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), sharex=True, height_ratios=(1, 1.4, 1))
    ax = axes[0]
    ax.plot(hours, table["p_sleep"], color="C0", lw=0.8)
    ax.axhline(review.summary["threshold"]["p_sleep"], color="0.5", ls="--", lw=0.8)
    ax.set_ylabel("p(sleep)")
    ax.set_ylim(-0.02, 1.02)
    ax = axes[1]
    if "psg_stage4" in table:
        psg = np.array([level.get(s, np.nan) for s in table["psg_stage4"]])
        ax.step(hours, psg, where="post", color="black", lw=0.9, label="PSG")
    called = np.array([level[s] for s in table["stage4"]])
    ax.step(hours, called + 0.1, where="post", color="C3", lw=0.9, label="review")
    ax.set_yticks([0, 1, 2, 3], ["deep", "light", "REM", "wake"])
    ax.legend(loc="upper right", fontsize="small", ncols=2)
    ax = axes[2]
    stack = [table[f"p4_{c}"].to_numpy() for c in ("deep", "light", "rem", "wake")]
    ax.stackplot(hours, *stack, labels=["deep", "light", "REM", "wake"], step="post",
                 colors=["#1f4e79", "#7fb3d5", "#c0392b", "#f5b041"])  # fmt: skip
    ax.set_ylabel("p(stage)")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize="x-small", ncols=4)
    ax.set_xlabel("hours from the first epoch")
    values = review.summary["predicted"]
    fig.suptitle(
        f"{title or review.summary['subject']}: TST {values['tst_min']} min, SE "
        f"{values['se_pct']} %, WASO {values['waso_min']} min, REM {values['rem_min']} min, "
        f"deep {values['deep_min']} min"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


def write_review(review: NightReview, out: Path, stem: str) -> dict[str, Path]:
    """``<stem>_epochs.csv``, ``<stem>_summary.json`` and ``<stem>_hypnogram.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "epochs": out / f"{stem}_epochs.csv",
        "summary": out / f"{stem}_summary.json",
        "hypnogram": out / f"{stem}_hypnogram.png",
    }
    write_atomic(paths["epochs"], review.table.to_csv(index=False, float_format="%.4f"))
    write_atomic(paths["summary"], json.dumps(review.summary, indent=1, allow_nan=False) + "\n")
    plot_review(review, paths["hypnogram"])
    return paths


def summary_text(summary: Mapping[str, Any]) -> str:
    """The night summary as a small table: quantity, review (and PSG when labelled)."""
    predicted = summary.get("predicted_on_scored", summary["predicted"])
    psg = summary.get("psg")
    lines = [f"{'':18}{'review':>10}" + (f"{'PSG':>10}" if psg else "")]
    for key, value in predicted.items():
        row = f"{key:18}{_text(value):>10}"
        if psg:
            row += f"{_text(psg.get(key)):>10}"
        lines.append(row)
    return "\n".join(lines)


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def add_parser(commands: Subparsers) -> None:
    """Register ``sleepstream review`` on the subcommands of :mod:`sleepstream.cli`."""
    p = commands.add_parser("review", help="morning review of a recorded night (whole night)")
    add_night_source(p)
    p.add_argument("--timezone", metavar="ZONE", help="IANA zone of ISO-8601 times (as `replay`)")
    p.add_argument(
        "--threshold",
        choices=THRESHOLDS,
        default="operating",
        help="sleep/wake operating point (default: operating, the maximum-kappa threshold)",
    )
    p.add_argument("--model", help="a review model (.json with its .npz; default: shipped)")
    p.add_argument("--out", default=".", help="folder for the table, summary and PNG (.)")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=run_command)


def run_command(a: argparse.Namespace) -> int:
    """``sleepstream review``: read the night, review it, write and print the results."""
    from sleepstream.data.times import TimeFormat
    from sleepstream.paths import check_output_dir

    TimeFormat(a.time_unit, a.timezone)  # checked before any work
    if a.subject and (a.time_unit or a.motion or a.counts or a.labels):
        raise ValueError("--time-unit, --motion, --counts and --labels go with --heart-rate")
    out = check_output_dir(a.out, "--out folder")
    from sleepstream.models.review import load_review

    model = load_review(Path(a.model)) if a.model else load_shipped_review()
    if a.subject:
        from sleepstream.data.folder import data_folder, load_recording

        recording = load_recording(data_folder(a.data), a.subject)
    else:
        recording = user_recording(a)
    review = review_night(recording, model, a.threshold)
    paths = write_review(review, out, f"review_{recording.subject_id}")
    print(summary_text(review.summary))
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
