"""What ``sleepstream score`` writes for one recording, into ``OUT/<name>/``.

==========================  ==================================================================
``epochs.csv``              one row per 30 s epoch (:func:`~sleepstream.score.days.epoch_table`)
``nights.csv``              one row per day: bed time, sleep onset, final awakening, TST, SE,
                            WASO, SOL, stage minutes (when the model gives stages), naps,
                            non-wear, data coverage, agreement with Apple / PSG when present
``nights.json``             the same with each nap, the model, the clock and notes
``agreement.csv``           per day: Cohen's kappa of sleep/wake and minutes asleep for each,
                            against Apple's sleep analysis and/or PSG (only when present)
``nights/<date>.png``       one figure per day
``report.html``             every day's figures and figure, the images inline (base64)
==========================  ==================================================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sleepstream.data.user import APPLE_ASLEEP, UserRecording
from sleepstream.records import EPOCH_SECONDS
from sleepstream.score.days import Night

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_COLUMNS = (
    "date",
    "bed_time",
    "sleep_onset",
    "final_awakening",
    "tst_min",
    "se_pct",
    "waso_min",
    "sol_min",
    "naps",
    "nap_sleep_min",
    "sleep_in_day_min",
    "non_wear_min",
    "hr_coverage_pct",
    "motion_coverage_pct",
)
AGREEMENT_PREFIXES = ("apple", "psg")


def summary_frame(nights: list[Night]) -> pd.DataFrame:
    """The per-night table: :data:`SUMMARY_COLUMNS`, then stage minutes and agreement columns."""
    rows = [{k: v for k, v in n.figures.items() if not isinstance(v, list | dict)} for n in nights]
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in SUMMARY_COLUMNS]
    return frame[[c for c in SUMMARY_COLUMNS if c in frame.columns] + extra]


def agreement_frame(nights: list[Night]) -> pd.DataFrame | None:
    """Per night and reference: kappa and minutes asleep for each; ``None`` without a reference."""
    rows = []
    for night in nights:
        f = night.figures
        for ref in AGREEMENT_PREFIXES:
            if f"{ref}_epochs" in f:
                rows.append(
                    {
                        "date": f["date"],
                        "reference": {"apple": "Apple sleep analysis", "psg": "PSG"}[ref],
                        "epochs": f[f"{ref}_epochs"],
                        "kappa": f[f"{ref}_kappa"],
                        "reference_asleep_min": f[f"{ref}_asleep_min"],
                        "ours_asleep_min": f[f"ours_asleep_min_vs_{ref}"],
                    }
                )
    return pd.DataFrame(rows) if rows else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def nights_json(
    recording: UserRecording, model: str, table: pd.DataFrame, nights: list[Night]
) -> dict[str, Any]:
    """Everything of :func:`summary_frame` plus each main sleep and nap, model, clock, notes."""

    def period(p: Any) -> dict[str, Any]:
        end = float(table["start_utc"].iloc[p.stop - 1]) + EPOCH_SECONDS
        return {
            "onset": str(table["local"].iloc[p.first]),
            "end_utc": pd.Timestamp(end, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sleep_min": p.sleep_min,
        }

    out = []
    for night in nights:
        entry = {k: _jsonable(v) for k, v in night.figures.items()}
        entry["main_sleep"] = None if night.main is None else period(night.main)
        entry["nap_periods"] = [period(p) for p in night.naps]
        out.append(entry)
    return {
        "recording": recording.name,
        "source": recording.source,
        "inputs": [str(p) for p in recording.inputs],
        "model": model,
        "clock": recording.clock_name,
        "notes": list(recording.notes),
        "nights": out,
    }


# -- figures ---------------------------------------------------------------------------------


def night_figure(
    recording: UserRecording, table: pd.DataFrame, night: Night, threshold: float, model: str
) -> Figure:
    """One day, noon to noon: p(sleep) with the threshold, the main sleep and naps shaded,
    non-wear in grey, heart rate, and Apple's or PSG's sleep below when present."""
    from matplotlib.figure import Figure

    from sleepstream.score.days import psg_epochs

    day = night.day
    starts = table["start_utc"].to_numpy()
    inside = (starts >= day.start) & (starts < day.end)
    t = starts[inside]
    hours = (t + EPOCH_SECONDS / 2 - day.start) / 3600
    has_ref = recording.apple_sleep is not None or len(recording.psg_epochs) > 0
    fig = Figure(figsize=(11, 4.2 if has_ref else 3.2))
    axes = fig.subplots(
        2 if has_ref else 1, 1, sharex=True, squeeze=False, height_ratios=[3, 1] if has_ref else [1]
    )
    ax = axes[0, 0]
    ax.plot(hours, table["p_sleep"].to_numpy()[inside], color="C0", lw=0.9, label="p(sleep)")
    ax.axhline(threshold, color="C3", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
    for n, p in enumerate([night.main] if night.main else []):
        ax.axvspan(
            *_span_hours(starts, p.first, p.stop, day.start),
            color="C0",
            alpha=0.15,
            lw=0,
            label="main sleep" if n == 0 else None,
        )
    for n, p in enumerate(night.naps):
        ax.axvspan(
            *_span_hours(starts, p.first, p.stop, day.start),
            color="C2",
            alpha=0.2,
            lw=0,
            label="nap" if n == 0 else None,
        )
    non_wear = table["non_wear"].to_numpy()
    from sleepstream.score.days import runs

    for n, (a, b) in enumerate(runs(non_wear & inside)):
        ax.axvspan(
            *_span_hours(starts, a, b, day.start),
            color="0.75",
            alpha=0.6,
            lw=0,
            label="non-wear" if n == 0 else None,
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("p(sleep)")
    hr_inside = (recording.hr_times >= day.start) & (recording.hr_times < day.end)
    if hr_inside.any():
        hr_ax = ax.twinx()
        hr_ax.plot(
            (recording.hr_times[hr_inside] - day.start) / 3600,
            recording.hr_bpm[hr_inside],
            color="C1",
            lw=0.5,
            alpha=0.6,
        )
        hr_ax.set_ylabel("heart rate (bpm)", color="C1")
    ax.legend(loc="upper left", fontsize=7, ncol=5)
    f = night.figures
    title = f"{recording.name}: {day.date:%a %d %b %Y} (noon to noon, {recording.clock_name})"
    if night.main is not None:
        title += f"; TST {f['tst_min']:.0f} min, SE {f['se_pct']:.0f} %"
    ax.set_title(title, fontsize=9)
    if has_ref:
        ref_ax = axes[1, 0]
        if recording.apple_sleep is not None:
            _apple_rows(ref_ax, recording, day.start, day.end)
        else:
            ref = psg_epochs(recording, starts)[inside].astype(float)
            ref[ref < 0] = np.nan
            ref_ax.step(hours, ref, where="mid", color="k", lw=0.8)
            ref_ax.set_yticks([0, 1], ["wake", "sleep"])
            ref_ax.set_ylabel("PSG")
        ours = table["asleep"].to_numpy()[inside].astype(float)
        ref_ax.step(hours, ours * 0.9 + 0.05, where="mid", color="C0", lw=0.6, alpha=0.7)
    local = table["local"].to_numpy()[inside]
    ticks = [
        i for i in range(len(t)) if local[i][14:19] == "00:00" and int(local[i][11:13]) % 3 == 0
    ]
    bottom = axes[-1, 0]
    bottom.set_xticks([float(hours[i]) for i in ticks], [str(local[i][11:16]) for i in ticks])
    bottom.set_xlim(0, (day.end - day.start) / 3600)
    bottom.set_xlabel(f"local time; model: {model}", fontsize=8)
    fig.tight_layout()
    return fig


def _span_hours(starts: np.ndarray, first: int, stop: int, origin: float) -> tuple[float, float]:
    return (float(starts[first]) - origin) / 3600, (
        float(starts[stop - 1]) + EPOCH_SECONDS - origin
    ) / 3600


def _apple_rows(ax: Any, recording: UserRecording, start: float, end: float) -> None:
    levels = {"in_bed": 0, "awake": 1, "rem": 2, "core": 3, "unspecified": 3, "deep": 4}
    assert recording.apple_sleep is not None
    for begin, stop, stage in recording.apple_sleep[["start", "end", "stage"]].itertuples(
        index=False
    ):
        if stop <= start or begin >= end:
            continue
        y = levels.get(str(stage), 3)
        color = "C0" if stage in APPLE_ASLEEP else "0.6"
        ax.plot([(begin - start) / 3600, (stop - start) / 3600], [y, y], color=color, lw=4)
    ax.set_yticks(list(range(5)), ["in bed", "awake", "REM", "core", "deep"], fontsize=7)
    ax.set_ylabel("Apple", fontsize=8)
    ax.set_ylim(-0.5, 4.5)


def write_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def write_tables(
    folder: Path, recording: UserRecording, model: str, table: pd.DataFrame, nights: list[Night]
) -> list[Path]:
    """``epochs.csv``, ``nights.csv``, ``nights.json`` and ``agreement.csv`` (when present)."""
    written = []
    table.drop(columns=["start_utc"]).to_csv(
        folder / "epochs.csv", index=False, float_format="%.6g"
    )
    written.append(folder / "epochs.csv")
    summary_frame(nights).to_csv(folder / "nights.csv", index=False, float_format="%.4g")
    written.append(folder / "nights.csv")
    text = json.dumps(nights_json(recording, model, table, nights), indent=2, allow_nan=False)
    (folder / "nights.json").write_text(text + "\n", encoding="utf-8")
    written.append(folder / "nights.json")
    agreement = agreement_frame(nights)
    if agreement is not None:
        agreement.to_csv(folder / "agreement.csv", index=False, float_format="%.4g")
        written.append(folder / "agreement.csv")
    return written
