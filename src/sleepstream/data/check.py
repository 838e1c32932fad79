"""What a data folder holds, per subject: files present, time spans and the largest gaps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.table import Table

from sleepstream.data.folder import load_recording, subject_files, subject_ids
from sleepstream.data.parse import DataFormatError

log = logging.getLogger(__name__)

GAP_SECONDS = 60.0
"""Heart-rate or count gaps longer than this during the night are counted."""


@dataclass(frozen=True)
class SubjectCheck:
    """Summary of one subject's files; ``error`` is set when the files could not be read."""

    subject_id: str
    present: tuple[str, ...]
    night_hours: float = float("nan")
    scored_epochs: int = 0
    wake_fraction: float = float("nan")
    hr_history_hours: float = float("nan")
    hr_night_coverage: float = float("nan")
    hr_longest_gap_min: float = float("nan")
    hr_gaps: int = 0
    counts_source: str = ""
    counts_span_hours: tuple[float, float] = (float("nan"), float("nan"))
    counts_night_coverage: float = float("nan")
    error: str = ""


def _coverage(times: NDArray[np.float64], end: float, window: float) -> tuple[float, float, int]:
    """Fraction of ``[0, end)`` within ``window`` s after a sample, longest gap (s), gap count."""
    inside = times[(times >= 0) & (times < end)]
    if len(inside) == 0:
        return 0.0, end, 1
    edges = np.concatenate([[0.0], inside, [end]])
    gaps = np.diff(edges)
    covered = np.minimum(gaps[1:], window).sum()
    return float(covered / end), float(gaps.max()), int((gaps > GAP_SECONDS).sum())


def check_subject(folder: Path, subject_id: str) -> SubjectCheck:
    """Read one subject and summarise it; a read error is reported, not raised."""
    files = subject_files(folder, subject_id)
    present = tuple(sorted({"walch_features" if k.startswith("walch_") else k for k in files}))
    try:
        r = load_recording(folder, subject_id)
    except (DataFormatError, FileNotFoundError) as error:
        return SubjectCheck(subject_id, present, error=str(error))
    end = r.end_time
    scored = r.labels()[r.scored]
    hr_cov, hr_gap, hr_gaps = _coverage(r.hr_times, end, 10.0)
    count_cov, _, _ = _coverage(r.count_times, end, 15.0)
    span = (
        (float(r.count_times[0] / 3600), float(r.count_times[-1] / 3600))
        if len(r.count_times)
        else (float("nan"), float("nan"))
    )
    return SubjectCheck(
        subject_id=subject_id,
        present=present,
        night_hours=end / 3600,
        scored_epochs=int(r.scored.sum()),
        wake_fraction=float((scored == 0).mean()) if len(scored) else float("nan"),
        hr_history_hours=float(max(0.0, -r.hr_times[0]) / 3600) if len(r.hr_times) else 0.0,
        hr_night_coverage=hr_cov,
        hr_longest_gap_min=hr_gap / 60,
        hr_gaps=hr_gaps,
        counts_source=r.count_source,
        counts_span_hours=span,
        counts_night_coverage=count_cov,
    )


def check_folder(folder: Path) -> list[SubjectCheck]:
    """One :class:`SubjectCheck` per subject with a label file."""
    return [check_subject(folder, sid) for sid in subject_ids(folder)]


CHECK_COLUMNS = (
    "subject",
    "files",
    "night h",
    "scored",
    "wake %",
    "HR history h",
    "HR night cov.",
    "HR longest gap min",
    "HR gaps>1min",
    "counts from",
    "counts span h",
    "counts cov.",
)


def check_table(folder: Path, rows: Sequence[SubjectCheck]) -> Table:
    """The rows of :func:`check_folder` as a rich table, failures in red."""
    table = Table(title=f"{folder} ({len(rows)} subjects)")
    for column in CHECK_COLUMNS:
        table.add_column(column, justify="right")
    for r in rows:
        if r.error:
            table.add_row(r.subject_id, ",".join(r.present), f"[red]{r.error}")
            continue
        table.add_row(
            r.subject_id,
            ",".join(r.present),
            f"{r.night_hours:.2f}",
            str(r.scored_epochs),
            f"{100 * r.wake_fraction:.1f}",
            f"{r.hr_history_hours:.1f}",
            f"{r.hr_night_coverage:.2f}",
            f"{r.hr_longest_gap_min:.1f}",
            str(r.hr_gaps),
            r.counts_source,
            f"{r.counts_span_hours[0]:.2f}-{r.counts_span_hours[1]:.2f}",
            f"{r.counts_night_coverage:.2f}",
        )
    return table
