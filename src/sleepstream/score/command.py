"""``sleepstream score PATH... --out DIR``: every recording the paths hold, scored into ``DIR``.

Each recording (:func:`sleepstream.data.user.sources`: a raw file, a folder of raw files, a
Health export, or each subject of a sleep-accel folder) gets its own folder ``DIR/<name>/``
(:mod:`sleepstream.score.outputs`), written whole or not at all. Recordings run in ``jobs``
processes (:class:`concurrent.futures.ProcessPoolExecutor`) under one progress bar.

- **Finished outputs are skipped**: a folder holds ``.done.json`` with the size and
  modification time of every input file, the reading options, and the versions of the models
  :func:`~sleepstream.score.model.choose_model` can choose; a re-run with all of them unchanged
  skips the recording (``force`` redoes it).
- **A bad file never stops the others**: its error is kept, the other recordings are scored,
  and the run ends with the list of failures (the command then exits non-zero).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: ``sleepstream --help`` loads this module
    import argparse

    from rich.console import Console

    from sleepstream.commands import Subparsers
    from sleepstream.data.raw import RawOptions
    from sleepstream.data.user import Source, UserRecording

log = logging.getLogger(__name__)

DONE_MARKER = ".done.json"


@dataclass(frozen=True)
class Outcome:
    """What happened to one recording: ``status`` is ``scored``, ``skipped`` or ``failed``."""

    name: str
    status: str
    folder: Path
    model: str | None = None
    nights: int = 0
    seconds: float = 0.0
    error: str | None = None


def models_version() -> str:
    """The versions of every model :func:`~sleepstream.score.model.choose_model` can pick."""
    import hashlib

    from sleepstream.models.card import DEFAULT_NAME, shipped_folder

    digest = hashlib.blake2b(digest_size=8)
    digest.update((shipped_folder() / f"{DEFAULT_NAME}.npz").read_bytes())
    try:
        from sleepstream.models import sparse
    except ImportError:
        pass
    else:
        digest.update(
            str(
                getattr(sparse, "MODEL_VERSION", Path(sparse.__file__ or "").stat().st_mtime_ns)
            ).encode()
        )
    return digest.hexdigest()


def input_files(source: Source) -> list[Path]:
    """The files a recording is read from."""
    if source.kind == "sleep-accel":
        from sleepstream.data.folder import subject_files

        assert source.subject is not None
        return sorted(subject_files(source.paths[0], source.subject).values())
    return list(source.paths)


LONG_SPAN_DAYS = 31.0
"""Recordings longer than this are scored whole but with a warning (``--last-days N``)."""


def fingerprint(
    source: Source, options: RawOptions, version: str, last_days: float | None = None
) -> dict[str, Any]:
    """What must be unchanged for finished outputs of ``source`` to stand."""
    files = []
    for path in input_files(source):
        stat = path.stat()
        files.append(
            {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    return {"inputs": files, "options": asdict(options), "last_days": last_days, "models": version}


def is_done(folder: Path, print_: dict[str, Any]) -> bool:
    """Whether ``folder`` holds finished outputs of exactly these inputs, options and models."""
    marker = folder / DONE_MARKER
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")) == print_)
    except (OSError, ValueError):
        return False


def score_recording(recording: UserRecording, folder: Path) -> tuple[str, int]:
    """Score ``recording`` and write its outputs into ``folder`` (replaced whole). Returns the
    model's name and the number of days."""
    from sleepstream.data.user import epoch_grid
    from sleepstream.paths import atomic_directory
    from sleepstream.score import days, outputs, report
    from sleepstream.score.model import choose_model

    model, scorer = choose_model(recording)
    first, last = recording.span
    starts = epoch_grid(first, last)
    scores = scorer.score(recording, starts)
    table = days.epoch_table(recording, starts, scores, scorer.threshold)
    nights = days.nights(recording, table)
    with atomic_directory(folder) as partial:
        partial.mkdir(parents=True)
        outputs.write_tables(partial, recording, model, table, nights)
        figures = []
        for night in nights:
            fig = outputs.night_figure(recording, table, night, scorer.threshold, model)
            png = outputs.write_figure(
                fig, partial / "nights" / f"{night.day.date.isoformat()}.png"
            )
            figures.append((f"{night.day.date:%A %d %B %Y}", png))
        page = report.report_html(
            recording,
            model,
            outputs.summary_frame(nights),
            outputs.agreement_frame(nights),
            figures,
        )
        (partial / "report.html").write_text(page, encoding="utf-8")
    return model, len(nights)


def score_source(
    source: Source, folder: Path, options: RawOptions, force: bool, last_days: float | None = None
) -> Outcome:
    """Read and score one recording unless finished; any error is caught and returned."""
    from sleepstream.data.user import load_source
    from sleepstream.paths import write_atomic

    started = time.perf_counter()
    try:
        print_ = fingerprint(source, options, models_version(), last_days)
        if not force and is_done(folder, print_):
            return Outcome(source.name, "skipped", folder)
        (folder / DONE_MARKER).unlink(missing_ok=True)
        recording = load_source(source, options)
        if last_days is not None:
            recording = recording.last_days(last_days)
        first, last = recording.span
        if (last - first) / 86400.0 > LONG_SPAN_DAYS:
            log.warning(
                "%s: %.0f days to score (%d epochs): give --last-days N to score fewer",
                source.name,
                (last - first) / 86400.0,
                int((last - first) / 30.0),
            )
        model, n_nights = score_recording(recording, folder)
        write_atomic(folder / DONE_MARKER, json.dumps(print_, indent=2) + "\n")
    except Exception as error:  # a bad file must never stop the others: reported at the end
        log.debug("%s failed", source.name, exc_info=True)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        text = "; ".join(lines) or type(error).__name__
        return Outcome(source.name, "failed", folder, error=f"{type(error).__name__}: {text}")
    return Outcome(source.name, "scored", folder, model, n_nights, time.perf_counter() - started)


def _folder_names(found: Sequence[Source], out: Path) -> list[Path]:
    """``out/<name>`` for each recording; a repeated name gets ``_2``, ``_3``..."""
    seen: dict[str, int] = {}
    folders = []
    for source in found:
        base = re.sub(r"[^\w.-]+", "_", source.name).strip("._") or "recording"
        seen[base] = seen.get(base, 0) + 1
        folders.append(out / (base if seen[base] == 1 else f"{base}_{seen[base]}"))
    return folders


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def score_paths(
    paths: Sequence[Path],
    out: Path,
    *,
    options: RawOptions | None = None,
    subjects: Sequence[str] = (),
    jobs: int = 1,
    force: bool = False,
    last_days: float | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> list[Outcome]:
    """Score every recording ``paths`` hold into ``out`` (module docstring); a path that cannot
    be listed is a failed outcome too. Returns one outcome per recording, in input order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sleepstream.data.raw import RawOptions
    from sleepstream.data.user import sources

    options = RawOptions() if options is None else options

    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if last_days is not None and not last_days > 0:
        raise ValueError(f"--last-days must be a positive number of days, got {last_days}")
    found: list[Source] = []
    unlisted: list[Outcome] = []
    outcomes: dict[int, Outcome] = {}
    for path in paths:
        try:
            found += sources(Path(path), subjects)
        except (OSError, ValueError) as error:
            error_text = f"{type(error).__name__}: {error}"
            unlisted.append(_logged(Outcome(Path(path).name, "failed", out, error=error_text)))
    folders = _folder_names(found, out)
    columns = (
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, disable=not progress, console=console) as bar:
        task = bar.add_task("", total=len(found))
        if jobs == 1 or len(found) <= 1:
            for i, (source, folder) in enumerate(zip(found, folders, strict=True)):
                bar.update(task, description=source.name)
                outcomes[i] = _logged(score_source(source, folder, options, force, last_days))
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=jobs, initializer=_one_thread) as pool:
                futures = {
                    pool.submit(score_source, source, folder, options, force, last_days): i
                    for i, (source, folder) in enumerate(zip(found, folders, strict=True))
                }
                for future in as_completed(futures):
                    outcome = _logged(future.result())
                    outcomes[futures[future]] = outcome
                    bar.update(task, description=outcome.name)
                    bar.advance(task)
    return unlisted + [outcomes[i] for i in range(len(found))]


def _logged(outcome: Outcome) -> Outcome:
    if outcome.status == "failed":
        log.error("%s: %s", outcome.name, outcome.error)
    elif outcome.status == "skipped":
        log.info(
            "%s: finished before (inputs, options and models unchanged); skipped", outcome.name
        )
    else:
        log.info(
            "%s: %d days scored with %s in %.1f s",
            outcome.name,
            outcome.nights,
            outcome.model,
            outcome.seconds,
        )
    return outcome


def summary_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """The run's result for stdout: counts, then each failure with its error."""
    count = {s: sum(o.status == s for o in outcomes) for s in ("scored", "skipped", "failed")}
    lines = [
        f"{count['scored']} scored, {count['skipped']} skipped (finished before), {count['failed']} failed"
    ]
    lines += [
        f"  {o.name}: {o.folder / 'report.html'} ({o.model})"
        for o in outcomes
        if o.status == "scored"
    ]
    if count["failed"]:
        lines.append("Failed:")
        lines += [f"  {o.name}: {o.error}" for o in outcomes if o.status == "failed"]
    return lines


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    """``sleepstream score``: its options (registered in :data:`sleepstream.cli.COMMANDS`)."""
    p = commands.add_parser("score", help="score your own recordings: raw files, Health exports")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="raw CSV/Parquet files (time + x,y,z or time + bpm), folders of them (one "
        "recording each), Apple Health exports (.zip, .xml), or sleep-accel folders",
    )
    p.add_argument("--out", required=True, help="output folder (one subfolder per recording)")
    p.add_argument("--jobs", type=int, default=1, help="recordings scored at once (default 1)")
    p.add_argument("--units", choices=["g", "m/s2"], help="acceleration units (default: detect)")
    p.add_argument(
        "--time-unit",
        choices=["s", "ms", "us"],
        help="unit of numeric times (default: detect Unix s/ms/us/ns by magnitude)",
    )
    p.add_argument(
        "--timezone",
        metavar="ZONE",
        help="IANA time zone (e.g. Europe/Berlin): of ISO times without an offset, and of the "
        "days (default: the records' UTC offsets, else UTC)",
    )
    p.add_argument("--subject", action="append", default=[], help="sleep-accel: only this subject")
    p.add_argument(
        "--last-days",
        type=float,
        metavar="N",
        help="score only the last N days of each recording (e.g. of a Health export of years)",
    )
    p.add_argument("--force", action="store_true", help="score again even if finished before")
    p.set_defaults(run=run)
    return p


def run(a: argparse.Namespace) -> int:
    """The command: exit code 1 when any recording failed (listed at the end)."""
    from sleepstream.data.raw import RawOptions
    from sleepstream.logs import console
    from sleepstream.paths import check_output_dir

    options = RawOptions(a.units, a.time_unit, a.timezone)
    out = check_output_dir(a.out)
    outcomes = score_paths(
        [Path(p) for p in a.paths],
        out,
        options=options,
        subjects=a.subject,
        jobs=a.jobs,
        force=a.force,
        last_days=a.last_days,
        progress=not getattr(a, "quiet", False),
        console=console,
    )
    print("\n".join(summary_lines(outcomes)))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


__all__ = [
    "Outcome",
    "add_parser",
    "fingerprint",
    "run",
    "score_paths",
    "score_recording",
    "score_source",
    "summary_lines",
]
