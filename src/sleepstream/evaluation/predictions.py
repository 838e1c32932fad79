"""Out-of-fold predictions of one predictor, and the thresholds chosen without the test night."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from sleepstream.records import SLEEP_WAKE, Recording

SLEEP_CORRECT_TARGETS = (0.93, 0.95)
"""Sleep-correct fractions at which wake-correct is reported (WASA93, WASA95)."""


@dataclass(frozen=True, eq=False)
class NightPrediction:
    """p(sleep) for every epoch of one held-out night, with thresholds fixed before seeing it.

    Attributes
    ----------
    subject_id
        The held-out subject.
    epoch_times
        Start (s) of each 30 s epoch.
    labels
        1 sleep, 0 wake, -1 unscored (``SLEEP_WAKE`` applied to the PSG stages).
    p_sleep
        Predicted probability of sleep per epoch, in [0, 1], never NaN.
    valid
        The published paper's "valid epochs" subset (scored, with heart rate and motion).
    thresholds
        Thresholds chosen on the *training* subjects only: keys ``"wasa93"``, ``"wasa95"``
        (the sleep-correct targets) and ``"operating"`` (maximises Cohen's kappa on training).
        An epoch is called sleep when ``p_sleep >= threshold``.
    """

    subject_id: str
    epoch_times: NDArray[np.float64]
    labels: NDArray[np.int8]
    p_sleep: NDArray[np.float64]
    valid: NDArray[np.bool_]
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_recording(
        cls,
        recording: Recording,
        p_sleep: NDArray[np.float64],
        thresholds: dict[str, float],
        valid: NDArray[np.bool_] | None = None,
    ) -> NightPrediction:
        p = np.asarray(p_sleep, dtype=np.float64)
        if p.shape != (recording.n_epochs,):
            raise ValueError(
                f"Subject {recording.subject_id}: expected {recording.n_epochs} predictions, "
                f"got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError(f"Subject {recording.subject_id}: p_sleep must be finite in [0, 1]")
        labels = recording.labels(SLEEP_WAKE)
        if valid is None:
            valid = labels >= 0
        return cls(recording.subject_id, recording.epoch_times, labels, p, valid, thresholds)

    @property
    def scored(self) -> NDArray[np.bool_]:
        return self.labels >= 0


@dataclass(frozen=True, eq=False)
class LosoResult:
    """All held-out nights of one predictor under leave-one-subject-out."""

    name: str
    causal: bool
    nights: list[NightPrediction]
    description: str = ""
