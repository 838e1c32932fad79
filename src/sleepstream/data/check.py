"""What a data folder holds, per subject: files present, time spans and the largest gaps.

Also what it holds that is never read: subjects without a label file and files whose names match
no pattern of the layout. Any of these, or a subject that cannot be read, fails the check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich import box
from rich.console import JustifyMethod
from rich.table import Table

from sleepstream.data.folder import (
    StrayFile,
    folder_contents,
    load_recording,
    missing_modalities,
    subject_files,
)

log = logging.getLogger(__name__)

GAP_SECONDS = 60.0
"""Heart-rate or count gaps longer than this during the night are counted."""


@dataclass(frozen=True)
class SubjectCheck:
    """Summary of one subject's files; ``error`` is set when the files could not be read.

    ``missing`` names what the subject lacks: ``"labels"``, ``"heart rate"``,
    ``"motion or counts"``.
    """

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
    missing: tuple[str, ...] = ()
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


def _present(files: dict[str, Path]) -> tuple[str, ...]:
    return tuple(sorted({"walch_features" if k.startswith("walch_") else k for k in files}))


def check_subject(folder: Path, subject_id: str) -> SubjectCheck:
    """Read one subject and summarise it; a read error is reported, not raised."""
    files = subject_files(folder, subject_id)
    present = _present(files)
    missing = tuple(missing_modalities(subject_id, files))
    if "labels" not in files:
        return SubjectCheck(
            subject_id,
            present,
            missing=("labels", *missing),
            error=f"no label file labels/{subject_id}_labeled_sleep.txt, so its "
            f"{', '.join(present)} files are never read",
        )
    try:
        r = load_recording(folder, subject_id)
    except (ValueError, OSError) as error:
        return SubjectCheck(subject_id, present, missing=missing, error=str(error))
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


@dataclass(frozen=True)
class FolderCheck:
    """The check of a whole data folder: one row per subject, and the files nobody reads.

    Attributes
    ----------
    folder
        The data folder.
    subjects
        One :class:`SubjectCheck` per subject with a label file, and per orphan subject (files
        but no label file, reported with an error), sorted numerically.
    strays
        Files whose names match no pattern of the layout.
    """

    folder: Path
    subjects: tuple[SubjectCheck, ...]
    strays: tuple[StrayFile, ...] = ()

    @property
    def problems(self) -> list[str]:
        """One line per failing subject and per stray file; empty when the folder is fine."""
        lines = [f"{r.subject_id}: {r.error}" for r in self.subjects if r.error]
        for stray in self.strays:
            lines.append(f"{stray.path}: {stray.reason}")
        return lines

    @property
    def ok(self) -> bool:
        """Whether every subject reads and every file is someone's data."""
        return not self.problems


def check_folder(folder: Path) -> FolderCheck:
    """Check every subject with a label file, every orphan subject and every stray file."""
    contents = folder_contents(folder)
    ids = sorted([*contents.subjects, *contents.orphans], key=lambda s: (len(s), s))
    return FolderCheck(folder, tuple(check_subject(folder, sid) for sid in ids), contents.strays)


FILE_LETTERS = {
    "labels": "L",
    "heart_rate": "H",
    "motion": "M",
    "counts": "C",
    "walch_features": "W",
}
"""One letter per kind of file, in the order of the ``files`` column."""

CHECK_COLUMNS = (
    "subject",
    "files",
    "night\nh",
    "scored",
    "wake\n%",
    "HR\nhist h",
    "HR\ncov.",
    "HR gap\nmin",
    "HR\ngaps",
    "counts\nspan h",
    "counts\ncov.",
)
"""Column headings of :func:`check_table`, short enough for an 80-column terminal."""

CHECK_LEGEND = (
    "files: L labels, H heart rate, M motion, C counts, W walch_features, - absent (counts "
    "come from motion when M is present). night: hours of label epochs; scored: epochs with a "
    "PSG stage; hist: hours of heart rate before the night; cov.: fraction of the night with a "
    "sample in the last 10 s (HR) or 15 s (counts); HR gap: the longest, gaps: those over "
    "1 min; span: first-last count (h)."
)


def _letters(present: Sequence[str]) -> str:
    return "".join(letter if kind in present else "-" for kind, letter in FILE_LETTERS.items())


def check_table(result: FolderCheck) -> Table:
    """The rows of :func:`check_folder` as a rich table that fits 80 columns.

    Failing subjects show ``error`` in red; their messages are :attr:`FolderCheck.problems`,
    printed below the table by ``sleepstream data check``.
    """
    rows = result.subjects
    failing = sum(1 for r in rows if r.error)
    title = f"{result.folder}: {len(rows)} subjects"
    if failing or result.strays:
        title += f", {failing} failing, {len(result.strays)} stray files"
    table = Table(
        title=title,
        caption=CHECK_LEGEND,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in CHECK_COLUMNS:
        justify: JustifyMethod = "left" if column in ("subject", "files") else "right"
        table.add_column(column, justify=justify, overflow="fold")
    for r in rows:
        if r.error:
            table.add_row(r.subject_id, _letters(r.present), "[red]error")
            continue
        table.add_row(
            r.subject_id,
            _letters(r.present),
            f"{r.night_hours:.2f}",
            str(r.scored_epochs),
            f"{100 * r.wake_fraction:.1f}",
            f"{r.hr_history_hours:.1f}",
            f"{r.hr_night_coverage:.2f}",
            f"{r.hr_longest_gap_min:.1f}",
            str(r.hr_gaps),
            f"{r.counts_span_hours[0]:.1f}-{r.counts_span_hours[1]:.1f}",
            f"{r.counts_night_coverage:.2f}",
        )
    return table
