"""One night of sensor data with its polysomnography labels, sleep stages and label maps.

Times everywhere are float seconds relative to the start of the PSG recording (t = 0), as in the
sleep-accel data; a user's own files may give Unix seconds instead (:mod:`sleepstream.data.times`).
Labels are one per 30 s epoch; ``epoch_times`` holds each epoch's *start*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

EPOCH_SECONDS = 30.0
"""Length of one scored PSG epoch, in seconds."""

COUNT_SECONDS = 15.0
"""Length of the window one activity count summarises, in seconds."""

PAPER_FEATURE_NAMES = ("count", "hr", "time", "cosine", "circadian")
"""Columns of :attr:`Recording.paper_features` (Walch et al. 2019; each looks ahead in time)."""

UNSCORED = -1
"""Class index given to unscored epochs by every :class:`LabelMap`."""


class Stage(IntEnum):
    """PSG stage codes as stored in the sleep-accel label files (Rechtschaffen & Kales)."""

    UNSCORED = -1
    WAKE = 0
    N1 = 1
    N2 = 2
    N3 = 3
    N4 = 4  # old R&K scoring; AASM merges it into N3
    REM = 5


@dataclass(frozen=True)
class LabelMap:
    """Maps PSG stages to the classes of one task; unscored epochs map to :data:`UNSCORED`.

    Examples
    --------
    >>> SLEEP_WAKE.apply(np.array([0, 2, -1, 5]))
    array([ 0,  1, -1,  1], dtype=int8)
    """

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[Stage, int]

    def apply(self, stages: NDArray[np.integer]) -> NDArray[np.int8]:
        """Class index per epoch; raises ``ValueError`` naming any code that is not a stage."""
        stages = np.asarray(stages)
        lookup = np.full(len(Stage), UNSCORED, dtype=np.int8)
        for stage, index in self.mapping.items():
            lookup[stage.value + 1] = index
        bad = (stages < Stage.UNSCORED) | (stages > Stage.REM)
        if bad.any():
            raise ValueError(
                f"Invalid stage code {stages[bad][0].item()!r} for label map {self.name!r}: "
                f"expected one of {[int(s) for s in Stage]}"
            )
        return lookup[stages.astype(np.int64) + 1]


SLEEP_WAKE = LabelMap(
    "sleep_wake",
    ("wake", "sleep"),
    {Stage.WAKE: 0, Stage.N1: 1, Stage.N2: 1, Stage.N3: 1, Stage.N4: 1, Stage.REM: 1},
)
WAKE_NREM_REM = LabelMap(
    "wake_nrem_rem",
    ("wake", "nrem", "rem"),
    {Stage.WAKE: 0, Stage.N1: 1, Stage.N2: 1, Stage.N3: 1, Stage.N4: 1, Stage.REM: 2},
)
WAKE_LIGHT_DEEP_REM = LabelMap(
    "wake_light_deep_rem",
    ("wake", "light", "deep", "rem"),
    {Stage.WAKE: 0, Stage.N1: 1, Stage.N2: 1, Stage.N3: 2, Stage.N4: 2, Stage.REM: 3},
)
LABEL_MAPS = {m.name: m for m in (SLEEP_WAKE, WAKE_NREM_REM, WAKE_LIGHT_DEEP_REM)}


def empty_stream() -> NDArray[np.float64]:
    """A stream with no samples: the default of one a source does not have."""
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Recording:
    """One night of one subject: sensor streams and PSG labels.

    Attributes
    ----------
    subject_id
        Subject identifier as in the file names (e.g. ``"46343"``).
    epoch_times, stages
        Start time (s) and :class:`Stage` code of every 30 s PSG epoch, on a 30 s grid.
    hr_times, hr_bpm
        Heart-rate samples (s, beats per minute), increasing times; may start days before t = 0.
    count_times, counts
        Activity counts: each summarises the 15 s window *starting* at its time.
    accel_times, accel
        Raw acceleration (s; shape ``(n, 3)`` x, y, z in g) when the motion file exists.
    count_source
        ``"counts"`` when read from ``counts/``, ``"motion"`` when computed from raw acceleration.
    paper_valid
        The published paper's "valid epochs" (scored, with heart rate and motion), when known.
    paper_features
        The paper's non-causal per-epoch features, shape ``(n_epochs, 5)`` in the order of
        ``PAPER_FEATURE_NAMES``, NaN outside the valid epochs; ``None`` when absent.
    """

    subject_id: str
    epoch_times: NDArray[np.float64]
    stages: NDArray[np.int8]
    hr_times: NDArray[np.float64]
    hr_bpm: NDArray[np.float64]
    count_times: NDArray[np.float64] = field(default_factory=empty_stream)
    counts: NDArray[np.float64] = field(default_factory=empty_stream)
    accel_times: NDArray[np.float64] | None = None
    accel: NDArray[np.float64] | None = None
    count_source: str = "counts"
    paper_valid: NDArray[np.bool_] | None = None
    paper_features: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        pairs: dict[str, tuple[NDArray[np.generic], NDArray[np.generic]]] = {
            "epoch_times/stages": (self.epoch_times, self.stages),
            "hr_times/hr_bpm": (self.hr_times, self.hr_bpm),
            "count_times/counts": (self.count_times, self.counts),
        }
        if self.accel_times is not None and self.accel is not None:
            pairs["accel_times/accel"] = (self.accel_times, self.accel)
        for name, (times, values) in pairs.items():
            if len(times) != len(values):
                raise ValueError(
                    f"Subject {self.subject_id}: {name} lengths differ "
                    f"({len(times)} != {len(values)})"
                )

    @property
    def n_epochs(self) -> int:
        return len(self.epoch_times)

    @property
    def end_time(self) -> float:
        """End of the last PSG epoch (s)."""
        return float(self.epoch_times[-1] + EPOCH_SECONDS) if self.n_epochs else 0.0

    @property
    def scored(self) -> NDArray[np.bool_]:
        """Mask of epochs that PSG scored (stage is not -1)."""
        return self.stages != Stage.UNSCORED

    @property
    def valid(self) -> NDArray[np.bool_]:
        """Mask of the evaluation's "valid" epochs: the paper's (:attr:`paper_valid`) where
        known, else every scored epoch; never an unscored one."""
        valid = self.paper_valid if self.paper_valid is not None else self.scored
        return valid & self.scored

    def labels(self, label_map: LabelMap = SLEEP_WAKE) -> NDArray[np.int8]:
        """Class index per epoch under ``label_map``; unscored epochs are :data:`UNSCORED`."""
        return label_map.apply(self.stages)

    def truncated(self, n_epochs: int) -> Recording:
        """The same night cut after its first ``n_epochs`` epochs: no sample after their end.

        Used to prove causality: predictions for the kept epochs must not change.
        """
        end = self.epoch_times[0] + n_epochs * EPOCH_SECONDS if n_epochs else -np.inf
        keep = slice(0, n_epochs)
        return self._with_epochs(
            self.epoch_times[keep],
            self.stages[keep],
            None if self.paper_valid is None else self.paper_valid[keep],
            None if self.paper_features is None else self.paper_features[keep],
            samples_from=-np.inf,
            samples_until=end,
        )

    def _with_epochs(
        self,
        epoch_times: NDArray[np.float64],
        stages: NDArray[np.int8],
        paper_valid: NDArray[np.bool_] | None,
        paper_features: NDArray[np.float64] | None,
        *,
        samples_from: float,
        samples_until: float,
    ) -> Recording:
        """This night on another epoch grid, keeping the samples in ``[from, until)``."""

        def inside(times: NDArray[np.float64]) -> NDArray[np.bool_]:
            return (times >= samples_from) & (times < samples_until)

        hr, ct = inside(self.hr_times), inside(self.count_times)
        accel_times, accel = self.accel_times, self.accel
        if accel_times is not None and accel is not None:
            keep = inside(accel_times)
            accel_times, accel = accel_times[keep], accel[keep]
        return Recording(
            self.subject_id,
            epoch_times,
            stages,
            self.hr_times[hr],
            self.hr_bpm[hr],
            self.count_times[ct],
            self.counts[ct],
            accel_times,
            accel,
            self.count_source,
            paper_valid,
            paper_features,
        )

    def started_at(self, start: float) -> Recording:
        """The night as a detector switched on at ``start`` (s) sees it.

        The epoch grid is extended back to the epoch containing ``start`` (the added epochs are
        unscored, outside the paper's valid epochs); samples of every stream before that epoch
        are dropped. The PSG epochs keep their positions at the end, so predictions for the
        original night are the last :attr:`n_epochs` of the result.

        Examples
        --------
        >>> night = Recording("s", np.array([0.0, 30.0]), np.array([0, 2], dtype=np.int8),
        ...                   np.array([-100.0, -5.0, 10.0]), np.array([70.0, 65.0, 60.0]))
        >>> early = night.started_at(-60.0)
        >>> early.epoch_times.tolist(), early.stages.tolist(), early.hr_times.tolist()
        ([-60.0, -30.0, 0.0, 30.0], [-1, -1, 0, 2], [-5.0, 10.0])
        """
        if not self.n_epochs:
            raise ValueError(f"Subject {self.subject_id}: no epochs to start before")
        first = float(self.epoch_times[0])
        if not math.isfinite(start) or start > first:
            raise ValueError(
                f"Subject {self.subject_id}: start {start!r} s must be finite and not after the "
                f"first epoch ({first:g} s)"
            )
        n_before = math.ceil((first - start) / EPOCH_SECONDS - 1e-9)
        begin = first - n_before * EPOCH_SECONDS
        before = first - EPOCH_SECONDS * np.arange(n_before, 0, -1, dtype=np.float64)

        def padded(values: NDArray[Any] | None, fill: Any) -> NDArray[Any] | None:
            if values is None:
                return None
            pad = np.full((n_before, *values.shape[1:]), fill, dtype=values.dtype)
            return np.concatenate([pad, values])

        unscored = np.full(n_before, Stage.UNSCORED, dtype=self.stages.dtype)
        return self._with_epochs(
            np.concatenate([before, self.epoch_times]),
            np.concatenate([unscored, self.stages]),
            padded(self.paper_valid, False),
            padded(self.paper_features, np.nan),
            samples_from=begin,
            samples_until=np.inf,
        )

    def switched_on_before(self, seconds: float) -> Recording:
        """:meth:`started_at` ``seconds`` before the first epoch, but never before the epoch of
        the first sample of any stream (the watch had nothing to say before then)."""
        first_epoch = float(self.epoch_times[0])
        firsts = [float(t[0]) for t in (self.hr_times, self.count_times) if len(t)]
        first_sample = min(firsts, default=first_epoch)
        n_grid = math.ceil((first_epoch - first_sample) / EPOCH_SECONDS)
        earliest = first_epoch - EPOCH_SECONDS * max(0, n_grid)
        return self.started_at(max(first_epoch - seconds, earliest))
