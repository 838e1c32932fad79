"""Motion-activity context (as iOS ``CMMotionActivity`` reports it) and the rule that vetoes sleep.

No one sleeps on a bike: when the phone or watch says, with enough confidence, that the wearer
is cycling, running or walking during an epoch, the detector reports p(sleep) = 0 for it, whatever
the network says. The rule is explicit and configurable (:class:`ContextVeto`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ACTIVITIES = ("stationary", "walking", "running", "cycling", "automotive", "unknown")
CONFIDENCES = ("low", "medium", "high")


@dataclass(frozen=True)
class MotionContext:
    """One motion-activity report: from ``time`` on, the wearer is doing ``activity``.

    ``confidence`` is ``"low"``, ``"medium"`` or ``"high"`` (CMMotionActivityConfidence).
    """

    time: float
    activity: str
    confidence: str = "high"

    def __post_init__(self) -> None:
        if not math.isfinite(self.time):
            raise ValueError(f"motion context time {self.time!r} is not finite")
        if self.activity not in ACTIVITIES:
            raise ValueError(f"Unknown activity {self.activity!r}; expected one of {ACTIVITIES}")
        if self.confidence not in CONFIDENCES:
            raise ValueError(
                f"Unknown confidence {self.confidence!r}; expected one of {CONFIDENCES}"
            )


@dataclass(frozen=True)
class ContextVeto:
    """Sleep is vetoed for an epoch when a report in force during it names one of
    ``activities`` with at least ``min_confidence``.

    A report is in force from its time until the next report. Set ``activities=()`` to turn
    the rule off.
    """

    activities: tuple[str, ...] = ("cycling", "running", "walking")
    min_confidence: str = "high"

    def __post_init__(self) -> None:
        unknown = [a for a in self.activities if a not in ACTIVITIES]
        if unknown:
            raise ValueError(f"Unknown activities {unknown}; expected some of {ACTIVITIES}")
        if self.min_confidence not in CONFIDENCES:
            raise ValueError(
                f"Unknown confidence {self.min_confidence!r}; expected one of {CONFIDENCES}"
            )

    def _vetoes(self, report: MotionContext) -> bool:
        return report.activity in self.activities and CONFIDENCES.index(
            report.confidence
        ) >= CONFIDENCES.index(self.min_confidence)

    def reason(self, reports: Sequence[MotionContext], start: float, end: float) -> str | None:
        """Why sleep is vetoed in ``[start, end)`` (``"cycling (high)"``), or ``None``.

        ``reports`` are in time order and include the last one before ``start``.
        """
        before = [r for r in reports if r.time < start]
        during = [r for r in reports if start <= r.time < end]
        in_force = ([before[-1]] if before else []) + during
        for report in in_force:
            if self._vetoes(report):
                return f"{report.activity} ({report.confidence})"
        return None

    @staticmethod
    def keep(reports: Sequence[MotionContext], end: float) -> list[MotionContext]:
        """The reports still needed after the epoch ending at ``end``: the one in force, and later."""
        before = [r for r in reports if r.time < end]
        return before[-1:] + [r for r in reports if r.time >= end]
