"""Shared fixtures: a private parse cache, the real sleep-accel nights, small generated folders.

The real data is required: tests that use ``data_dir`` or ``recordings`` fail (not skip) when
``SLEEPSTREAM_DATA`` does not name the sleep-accel folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from sleepstream.cache import CACHE_ENV
from sleepstream.data.folder import DATA_ENV, load_all
from sleepstream.records import Recording

SUBJECT = "1001"
N_EPOCHS = 20
STAGE_CYCLE = (-1, 0, 1, 2, 3, 4, 5, 2, 2, 0)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the parse cache at a fresh folder for the session, so ~/.cache is never touched.

    With ``pytest -n N`` (pytest-xdist, the default in pyproject.toml) the workers share one
    folder, so each night is parsed and its features computed once: the cache's files are
    written whole or not at all, and a worker that computes one the other is writing only
    repeats the work. Each worker then runs torch on one thread, one worker a core."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        cache = tmp_path_factory.getbasetemp().parent / "sleepstream-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("sleepstream-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real sleep-accel folder named by ``$SLEEPSTREAM_DATA``; fails when it is missing."""
    env = os.environ.get(DATA_ENV)
    if not env:
        pytest.fail(
            f"{DATA_ENV} is not set: these tests need the real sleep-accel data "
            f"(e.g. {DATA_ENV}=/work/shared/data/sleep-accel, or `sleepstream data fetch`)",
            pytrace=False,
        )
    folder = Path(env).expanduser()
    if not (folder / "labels").is_dir():
        pytest.fail(
            f"{DATA_ENV}={env} has no labels/ folder: these tests need the real sleep-accel data",
            pytrace=False,
        )
    return folder


@pytest.fixture(scope="session")
def recordings(data_dir: Path, private_cache: Path) -> list[Recording]:
    """All real nights, loaded once per session."""
    return load_all(data_dir)


def default_labels() -> list[str]:
    """``seconds stage`` rows, one per 30 s epoch from t = 0, cycling through every stage."""
    return [f"{30 * i} {STAGE_CYCLE[i % len(STAGE_CYCLE)]}" for i in range(N_EPOCHS)]


def default_heart_rate() -> list[str]:
    """``seconds,bpm`` rows every 5 s from 5 minutes before the night to its end."""
    return [f"{t:.3f},{60 + (t // 5) % 7:g}" for t in np.arange(-300.0, 30.0 * N_EPOCHS, 5.0)]


def default_counts() -> list[str]:
    """``seconds,count`` rows every 15 s over the night."""
    return [f"{t:.3f},{(t // 15) % 4 * 10:g}" for t in np.arange(0.0, 30.0 * N_EPOCHS, 15.0)]


@dataclass
class SyntheticNight:
    """The text files of one generated subject, as lists of lines; ``None`` means no file.

    Tests edit the lines (to build bad input) and then call :meth:`write`.
    """

    folder: Path
    subject_id: str = SUBJECT
    labels: list[str] | None = field(default_factory=default_labels)
    heart_rate: list[str] | None = field(default_factory=default_heart_rate)
    counts: list[str] | None = field(default_factory=default_counts)
    motion: list[str] | None = None

    def path(self, kind: str) -> Path:
        """Where the file of ``kind`` (``labels``, ``heart_rate``, ``counts``, ``motion``) goes."""
        names = {
            "labels": f"labels/{self.subject_id}_labeled_sleep.txt",
            "heart_rate": f"heart_rate/{self.subject_id}_heartrate.txt",
            "counts": f"counts/{self.subject_id}_counts.txt",
            "motion": f"motion/{self.subject_id}_acceleration.txt",
        }
        return self.folder / names[kind]

    def set_motion(self, times: NDArray[np.float64], z: NDArray[np.float64]) -> None:
        """Raw acceleration rows ``seconds x y z`` (g); x and y are constant."""
        self.motion = [f"{t:.6f} 0.01 -0.02 {v:.6f}" for t, v in zip(times, z, strict=True)]

    def write(self) -> Path:
        """Write the files that are not ``None`` and return the data folder."""
        for kind in ("labels", "heart_rate", "counts", "motion"):
            lines: list[str] | None = getattr(self, kind)
            if lines is None:
                continue
            path = self.path(kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{line}\n" for line in lines))
        return self.folder


@pytest.fixture
def make_night(tmp_path: Path) -> Callable[..., SyntheticNight]:
    """Factory of generated subjects that all live in the same data folder ``tmp_path/data``."""

    def make(subject_id: str = SUBJECT, **files: list[str] | None) -> SyntheticNight:
        return SyntheticNight(tmp_path / "data", subject_id, **files)

    return make


@pytest.fixture
def night(make_night: Callable[..., SyntheticNight]) -> SyntheticNight:
    """One generated subject with valid labels, heart rate and counts (not yet written)."""
    return make_night()
