"""Start scenarios: when the detector was switched on, relative to the start of the PSG night.

A watch is worn all day, so a detector is rarely started at lights-off. Every predictor is scored
on the same PSG epochs in each scenario; only what it was fed before them differs:

- ``psg_start``: switched on at the PSG start, nothing before it (comparable with the paper);
- ``early_30min``, ``early_1h`` (the headline), ``early_2h``: switched on that long before, fed
  the heart rate the watch recorded in between. The dataset has no motion before the PSG start,
  so those hours have heart rate only;
- ``whole_day``: switched on a day before (or at the first heart-rate sample, if later);
- ``early_1h_after_30min``: ``early_1h`` scored without the first 30 min after the PSG start,
  which hold a third of all PSG wake.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sleepstream.records import Recording, Stage


@dataclass(frozen=True)
class StartScenario:
    """When the detector is switched on, and which PSG epochs are scored.

    Attributes
    ----------
    name
        Key in reports and ``metrics.json``.
    title
        One line for the report.
    history_seconds
        How long before the first PSG epoch the detector is switched on (never before the epoch
        of the night's first sample).
    skip_seconds
        PSG epochs starting less than this after the first PSG epoch are not scored.
    """

    name: str
    title: str
    history_seconds: float
    skip_seconds: float = 0.0

    def fed(self, night: Recording) -> Recording:
        """What the detector is fed: the night extended back to the switch-on time."""
        return night.switched_on_before(self.history_seconds)

    def scored(self, night: Recording) -> Recording:
        """The night with the skipped epochs marked unscored (the whole night if none)."""
        if self.skip_seconds <= 0:
            return night
        skip = night.epoch_times < night.epoch_times[0] + self.skip_seconds
        stages = np.where(skip, np.int8(Stage.UNSCORED), night.stages).astype(night.stages.dtype)
        valid = None if night.paper_valid is None else night.paper_valid & ~skip
        return dataclasses.replace(night, stages=stages, paper_valid=valid)


PSG_START = StartScenario("psg_start", "(a) switched on at the PSG start", 0.0)
HEADLINE = StartScenario(
    "early_1h", "(b) switched on 1 h before the PSG start, heart rate only before it", 3600.0
)
SCENARIOS: tuple[StartScenario, ...] = (
    PSG_START,
    StartScenario(
        "early_30min",
        "(b) switched on 30 min before the PSG start, heart rate only before it",
        1800.0,
    ),
    HEADLINE,
    StartScenario(
        "early_2h", "(b) switched on 2 h before the PSG start, heart rate only before it", 7200.0
    ),
    StartScenario("whole_day", "(c) fed the whole day of heart rate before the night", 86_400.0),
    StartScenario(
        "early_1h_after_30min",
        "(b) at 1 h, scored without the first 30 min after the PSG start",
        3600.0,
        skip_seconds=1800.0,
    ),
)
"""Every scenario of the report, in its order; :data:`HEADLINE` is the one quoted first."""

SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


def scenario(name: str) -> StartScenario:
    """The scenario called ``name``; ``ValueError`` naming the known ones otherwise."""
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise ValueError(f"Unknown start scenario {name!r}; known: {list(SCENARIO_NAMES)}")
