"""Reading nights from a folder in the PhysioNet sleep-accel layout.

::

    labels/{id}_labeled_sleep.txt    seconds stage        (30 s epochs)
    heart_rate/{id}_heartrate.txt    seconds,bpm
    motion/{id}_acceleration.txt     seconds x y z        (g, ~50 Hz; optional)
    counts/{id}_counts.txt           seconds,count        (15 s; used when motion/ is absent)
    walch_features/{id}_*.out        the paper's per-epoch features (optional)

Counts from ``motion/`` are the live detector's counts
(:func:`~sleepstream.signal.live_counts.counts_fir`), so a model trained on them sees exactly
what it sees live.

Parsed nights are cached as ``.npz`` files named by a hash of the input files' contents, so a
changed file is always parsed again and all 31 nights load in a fraction of a second afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from sleepstream.cache import cache_root
from sleepstream.data import parse
from sleepstream.data.parse import DataFormatError
from sleepstream.records import PAPER_FEATURE_NAMES, Recording
from sleepstream.signal.live_counts import counts_fir

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


def subject_ids(folder: Path) -> list[str]:
    """Subjects that have a label file, sorted numerically."""
    ids = [p.name.split("_")[0] for p in (folder / "labels").glob("*_labeled_sleep.txt")]
    return sorted(ids, key=lambda s: (len(s), s))


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
    memo: dict[str, str] = json.loads(memo_path.read_text()) if memo_path.exists() else {}
    before = len(memo)
    parts = [CACHE_VERSION] + [f"{k}={_file_digest(p, memo)}" for k, p in sorted(files.items())]
    if len(memo) != before and any(p.stat().st_size > _STAT_HASH_LIMIT for p in files.values()):
        cache.mkdir(parents=True, exist_ok=True)
        memo_path.write_text(json.dumps(memo))
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
    if "heart_rate" not in files:
        raise DataFormatError(
            f"Subject {subject_id}: labels in {files['labels']} but no heart-rate file "
            f"heart_rate/{subject_id}_heartrate.txt"
        )
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
        arrays["count_times"], arrays["counts"] = counts_fir(accel_times, accel[:, 2])
        arrays["count_source"] = np.array("motion")
    elif "counts" in files:
        arrays["count_times"], arrays["counts"] = parse.read_counts(files["counts"])
        arrays["count_source"] = np.array("counts")
    else:
        raise DataFormatError(
            f"Subject {subject_id}: labels in {files['labels']} but neither "
            f"motion/{subject_id}_acceleration.txt nor counts/{subject_id}_counts.txt"
        )
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
            cache.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".tmp.npz")
            np.savez(partial, **arrays)  # type: ignore[arg-type]
            os.replace(partial, cached)
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
    """Read every night (or the given subjects) of a data folder, ``$SLEEPSTREAM_DATA`` by default."""
    folder = data_folder(folder)
    ids: Sequence[str] = list(subjects) if subjects is not None else subject_ids(folder)
    if not ids:
        raise FileNotFoundError(f"{folder}/labels holds no *_labeled_sleep.txt files")
    return [load_recording(folder, sid, use_cache=use_cache) for sid in ids]
