"""Reading nights from a folder in the PhysioNet sleep-accel layout.

::

    labels/{id}_labeled_sleep.txt    seconds stage        (30 s epochs)
    heart_rate/{id}_heartrate.txt    seconds,bpm
    motion/{id}_acceleration.txt     seconds x y z        (g, ~50 Hz; optional)
    counts/{id}_counts.txt           seconds,count        (15 s; used when motion/ is absent)
    walch_features/{id}_*.out        the paper's per-epoch features (optional)

Counts from ``motion/`` are the live detector's counts
(:func:`~sleepstream.step.accel_counts`, the model file's own counts), so a model trained on them sees exactly
what it sees live.

Subjects are the ones with a label file. Nothing else in the folder disappears silently:
:func:`folder_contents` finds the files of subjects without a label file (orphans) and the files
whose names match no pattern of the layout (strays); :func:`load_all` logs a warning naming them,
and ``sleepstream data check`` reports them as failures.

Parsed nights are cached as ``.npz`` files named by a hash of the input files' contents, so a
changed file is always parsed again and all 31 nights load in a fraction of a second afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from sleepstream.cache import cache_root
from sleepstream.data import parse
from sleepstream.data.parse import DataFormatError
from sleepstream.paths import atomic_file, write_atomic
from sleepstream.records import PAPER_FEATURE_NAMES, Recording

log = logging.getLogger(__name__)

DATA_ENV = "SLEEPSTREAM_DATA"
CACHE_VERSION = "4"
_STAT_HASH_LIMIT = 16 * 2**20  # above this size a file's hash is remembered per (size, mtime)


def data_folder(path: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``path`` if given, else ``$SLEEPSTREAM_DATA``.

    Raises ``FileNotFoundError`` with what to do when neither names a folder with ``labels/``.
    """
    if path is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise FileNotFoundError(
                f"No data folder: set {DATA_ENV} to the sleep-accel folder, or run "
                "`sleepstream data fetch` to download it from PhysioNet"
            )
        path = env
    folder = Path(path).expanduser()
    if not (folder / "labels").is_dir():
        raise FileNotFoundError(
            f"{folder} is not a sleep-accel data folder (no labels/ inside); set {DATA_ENV} "
            "or run `sleepstream data fetch --dest DIR`"
        )
    return folder


def cache_folder() -> Path:
    """Where parsed nights are cached: ``$SLEEPSTREAM_CACHE`` or ``~/.cache/sleepstream``."""
    return cache_root() / "parsed"


FILE_PATTERNS: dict[str, re.Pattern[str]] = {
    "labels": re.compile(r"(?P<id>[^_]+)_labeled_sleep\.txt"),
    "heart_rate": re.compile(r"(?P<id>[^_]+)_heartrate\.txt"),
    "motion": re.compile(r"(?P<id>[^_]+)_acceleration\.txt"),
    "counts": re.compile(r"(?P<id>[^_]+)_counts\.txt"),
    "walch_features": re.compile(
        rf"(?P<id>[^_]+)_(?:psg_labels|(?:{'|'.join(PAPER_FEATURE_NAMES)})_feature)\.out"
    ),
}
"""The sub-folders of the layout and the file names each may hold (whole-name match)."""

_EXPECTED_NAMES = {
    "labels": "<id>_labeled_sleep.txt",
    "heart_rate": "<id>_heartrate.txt",
    "motion": "<id>_acceleration.txt",
    "counts": "<id>_counts.txt",
    "walch_features": "<id>_psg_labels.out or <id>_<feature>_feature.out",
}


def _by_number(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=lambda s: (len(s), s))


def subject_ids(folder: Path) -> list[str]:
    """Subjects that have a label file, sorted numerically."""
    pattern = FILE_PATTERNS["labels"]
    names = (p.name for p in (folder / "labels").iterdir()) if (folder / "labels").is_dir() else ()
    return _by_number(m["id"] for m in map(pattern.fullmatch, names) if m)


@dataclass(frozen=True)
class StrayFile:
    """A file (or folder) in a sub-folder of the layout that is not read as anyone's data."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FolderContents:
    """What the sub-folders of a data folder hold, sorted into subjects and leftovers.

    Attributes
    ----------
    subjects
        Subjects with a label file, sorted numerically: the ones that are read.
    orphans
        Subjects with files (heart rate, counts, motion, walch_features) but no label file,
        with those files; they are never read.
    strays
        Entries whose names match no pattern of :data:`FILE_PATTERNS`, and folders. Names
        starting with ``.`` (``.DS_Store``) are skipped.
    """

    subjects: tuple[str, ...]
    orphans: Mapping[str, tuple[Path, ...]]
    strays: tuple[StrayFile, ...]


def _stray_reason(entry: Path, kind: str) -> str:
    if entry.name.endswith(".part"):
        return "an interrupted download: run `sleepstream data fetch` again to finish it"
    if entry.is_dir():
        return f"a folder inside {kind}/, where only files are read"
    return f"matches no file name of {kind}/ (expected {_EXPECTED_NAMES[kind]})"


def folder_contents(folder: Path) -> FolderContents:
    """Sort every entry of the layout's sub-folders into subjects, orphans and strays."""
    files: dict[str, list[Path]] = {}
    strays: list[StrayFile] = []
    for kind, pattern in FILE_PATTERNS.items():
        sub = folder / kind
        if not sub.is_dir():
            continue
        for entry in sorted(sub.iterdir()):
            if entry.name.startswith("."):
                log.debug("Skipped hidden %s", entry)
                continue
            match = pattern.fullmatch(entry.name)
            if match is None or entry.is_dir():
                strays.append(StrayFile(entry, _stray_reason(entry, kind)))
            else:
                files.setdefault(match["id"], []).append(entry)
    subjects = subject_ids(folder)
    labelled = set(subjects)
    orphans = {sid: tuple(files[sid]) for sid in _by_number(files) if sid not in labelled}
    return FolderContents(tuple(subjects), orphans, tuple(strays))


def _warn_leftovers(folder: Path, contents: FolderContents) -> None:
    """Log a warning naming the orphan subjects and stray files of ``folder``, if any."""
    if contents.orphans:
        log.warning(
            "%s: subjects %s have data files but no labels/<id>_labeled_sleep.txt; "
            "they are left out (run `sleepstream data check` for details)",
            folder,
            ", ".join(contents.orphans),
        )
    if contents.strays:
        shown = ", ".join(str(s.path.relative_to(folder)) for s in contents.strays[:3])
        more = f" and {len(contents.strays) - 3} more" if len(contents.strays) > 3 else ""
        log.warning(
            "%s: %d files match no name of the sleep-accel layout and are ignored: %s%s",
            folder,
            len(contents.strays),
            shown,
            more,
        )


def missing_modalities(subject_id: str, files: Mapping[str, Path]) -> dict[str, str]:
    """What a subject lacks to be read, e.g. ``{"heart rate": "no heart-rate file ..."}``.

    Keys are ``"heart rate"`` and ``"motion or counts"``; values name the files looked for.
    """
    missing = {}
    if "heart_rate" not in files:
        missing["heart rate"] = f"no heart-rate file heart_rate/{subject_id}_heartrate.txt"
    if "motion" not in files and "counts" not in files:
        missing["motion or counts"] = (
            f"neither motion/{subject_id}_acceleration.txt nor counts/{subject_id}_counts.txt"
        )
    return missing


def subject_files(folder: Path, subject_id: str) -> dict[str, Path]:
    """The files of one subject that exist, keyed by kind."""
    candidates = {
        "labels": folder / "labels" / f"{subject_id}_labeled_sleep.txt",
        "heart_rate": folder / "heart_rate" / f"{subject_id}_heartrate.txt",
        "motion": folder / "motion" / f"{subject_id}_acceleration.txt",
        "counts": folder / "counts" / f"{subject_id}_counts.txt",
        "walch_labels": folder / "walch_features" / f"{subject_id}_psg_labels.out",
    }
    for name in PAPER_FEATURE_NAMES:
        candidates[f"walch_{name}"] = folder / "walch_features" / f"{subject_id}_{name}_feature.out"
    return {kind: path for kind, path in candidates.items() if path.exists()}


def _file_digest(path: Path, memo: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if stat.st_size > _STAT_HASH_LIMIT and key in memo:
        return memo[key]
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    return memo[key]


def _cache_key(files: dict[str, Path], cache: Path) -> str:
    memo_path = cache / "large-file-hashes.json"
    memo: dict[str, str] = {}
    if memo_path.exists():
        try:
            memo = json.loads(memo_path.read_text())
        except ValueError:
            log.debug("%s is not valid JSON; hashing every file again", memo_path)
    before = len(memo)
    parts = [CACHE_VERSION] + [f"{k}={_file_digest(p, memo)}" for k, p in sorted(files.items())]
    if len(memo) != before and any(p.stat().st_size > _STAT_HASH_LIMIT for p in files.values()):
        write_atomic(memo_path, json.dumps(memo))
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def paper_epochs(
    files: dict[str, Path], stages: NDArray[np.int8]
) -> tuple[NDArray[np.bool_], NDArray[np.float64]] | None:
    """The published paper's "valid epochs" and features, aligned from ``walch_features/``.

    The paper's feature files have one row per valid epoch and no times; ``time_feature`` gives
    hours since the first valid epoch, so the rows are placed by finding the one offset at which
    their PSG labels match the label file. Returns ``None`` when the files are absent, else the
    valid mask and the features (``(n_epochs, 5)``, NaN outside valid epochs).
    """
    kinds = ["walch_labels"] + [f"walch_{name}" for name in PAPER_FEATURE_NAMES]
    if not all(kind in files for kind in kinds):
        return None
    hours = parse.read_table(files["walch_time"], None, 1)[:, 0]
    paper_stages = parse.read_table(files["walch_labels"], None, 1)[:, 0]
    offsets = np.round(hours * 3600 / 30).astype(np.int64)
    # Some of the paper's label files merge N4 into N3, some do not: compare with both merged.
    merged = np.where(stages == 4, 3, stages)
    paper_stages = np.where(paper_stages == 4, 3, paper_stages)
    starts = [
        s
        for s in range(len(stages) - int(offsets[-1]))
        if np.array_equal(merged[s + offsets], paper_stages)
    ]
    if len(starts) != 1:
        raise DataFormatError(
            f"{files['walch_labels']}: cannot align the paper's valid epochs with "
            f"{files['labels']} ({len(starts)} matching offsets, expected 1)"
        )
    rows = starts[0] + offsets
    mask = np.zeros(len(stages), dtype=bool)
    mask[rows] = True
    features = np.full((len(stages), len(PAPER_FEATURE_NAMES)), np.nan)
    for column, name in enumerate(PAPER_FEATURE_NAMES):
        values = parse.read_table(files[f"walch_{name}"], None, 1)[:, 0]
        if len(values) != len(rows):
            raise DataFormatError(
                f"{files[f'walch_{name}']}: {len(values)} rows, expected {len(rows)} as in "
                f"{files['walch_labels']}"
            )
        features[rows, column] = values
    return mask, features


def _parse_recording(subject_id: str, files: dict[str, Path]) -> dict[str, NDArray[np.generic]]:
    missing = missing_modalities(subject_id, files)
    if missing:
        lacking = " and ".join(missing.values())
        raise DataFormatError(f"Subject {subject_id}: labels in {files['labels']} but {lacking}")
    epoch_times, stages = parse.read_labels(files["labels"])
    hr_times, hr_bpm = parse.read_heart_rate(files["heart_rate"])
    arrays: dict[str, NDArray[np.generic]] = {
        "epoch_times": epoch_times,
        "stages": stages,
        "hr_times": hr_times,
        "hr_bpm": hr_bpm,
    }
    if "motion" in files:
        accel_times, accel = parse.read_acceleration(files["motion"])
        from sleepstream.step import accel_counts

        origin = float(epoch_times[0]) if len(epoch_times) else 0.0
        arrays["count_times"], arrays["counts"] = accel_counts(accel_times, accel[:, 2], origin)
        arrays["count_source"] = np.array("motion")
    else:
        arrays["count_times"], arrays["counts"] = parse.read_counts(files["counts"])
        arrays["count_source"] = np.array("counts")
    paper = paper_epochs(files, stages)
    if paper is not None:
        arrays["paper_valid"], arrays["paper_features"] = paper
    return arrays


def load_recording(
    folder: Path, subject_id: str, *, use_cache: bool = True, with_accel: bool = False
) -> Recording:
    """Read one night. ``with_accel`` also keeps the raw acceleration (large; never cached)."""
    files = subject_files(folder, subject_id)
    if "labels" not in files:
        raise FileNotFoundError(f"{folder}/labels/{subject_id}_labeled_sleep.txt not found")
    cache = cache_folder()
    cached = cache / f"{subject_id}-{_cache_key(files, cache)}.npz" if use_cache else None
    if cached is not None and cached.exists():
        with np.load(cached) as stored:
            arrays: dict[str, NDArray[np.generic]] = {k: stored[k] for k in stored.files}
    else:
        arrays = _parse_recording(subject_id, files)
        if cached is not None:
            with atomic_file(cached) as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]
    accel_times = accel = None
    if with_accel and "motion" in files:
        accel_times, accel = parse.read_acceleration(files["motion"])
    return Recording(
        subject_id=subject_id,
        epoch_times=arrays["epoch_times"].astype(np.float64),
        stages=arrays["stages"].astype(np.int8),
        hr_times=arrays["hr_times"].astype(np.float64),
        hr_bpm=arrays["hr_bpm"].astype(np.float64),
        count_times=arrays["count_times"].astype(np.float64),
        counts=arrays["counts"].astype(np.float64),
        accel_times=accel_times,
        accel=accel,
        count_source=str(arrays["count_source"]),
        paper_valid=arrays["paper_valid"].astype(bool) if "paper_valid" in arrays else None,
        paper_features=(
            arrays["paper_features"].astype(np.float64) if "paper_features" in arrays else None
        ),
    )


def load_all(
    folder: Path | None = None,
    subjects: Iterable[str] | None = None,
    *,
    use_cache: bool = True,
) -> list[Recording]:
    """Read every night (or the given subjects) of a data folder, ``$SLEEPSTREAM_DATA`` by default.

    Without ``subjects``, every subject with a label file is read, and a warning names the
    subjects whose other files have no label file and the files that match no name of the
    layout (:func:`folder_contents`).
    """
    folder = data_folder(folder)
    if subjects is None:
        contents = folder_contents(folder)
        _warn_leftovers(folder, contents)
        ids: Sequence[str] = contents.subjects
    else:
        ids = list(subjects)
    if not ids:
        raise FileNotFoundError(f"{folder}/labels holds no *_labeled_sleep.txt files")
    return [load_recording(folder, sid, use_cache=use_cache) for sid in ids]
