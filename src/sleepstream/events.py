"""Stable "fell asleep" / "woke up" events from per-epoch sleep/wake decisions.

One rule for the live detector and the evaluation (which replays it over recorded nights): the
tracker starts awake; while awake it reports ``"fell_asleep"`` on the ``fall_asleep_epochs``-th
consecutive epoch decided sleep, and is then asleep; while asleep it reports ``"woke_up"`` on the
``wake_up_epochs``-th consecutive epoch decided wake, and is then awake. A decision that agrees
with the current state resets the run. It never looks past the current epoch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Event = Literal["fell_asleep", "woke_up"]


class OnsetTracker:
    """Asleep/awake state with hysteresis, fed one sleep/wake decision per epoch.

    Parameters
    ----------
    fall_asleep_epochs
        Consecutive sleep decisions, while awake, that make the tracker fall asleep.
    wake_up_epochs
        Consecutive wake decisions, while asleep, that make it wake up.

    Examples
    --------
    >>> tracker = OnsetTracker(fall_asleep_epochs=2, wake_up_epochs=1)
    >>> [tracker.update(s) for s in (True, False, True, True, True, False)]
    [None, None, None, 'fell_asleep', None, 'woke_up']
    >>> tracker.asleep
    False
    """

    def __init__(self, fall_asleep_epochs: int = 3, wake_up_epochs: int = 2) -> None:
        for name, value in (
            ("fall_asleep_epochs", fall_asleep_epochs),
            ("wake_up_epochs", wake_up_epochs),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.fall_asleep_epochs = int(fall_asleep_epochs)
        self.wake_up_epochs = int(wake_up_epochs)
        self.asleep = False
        self._run = 0

    def update(self, is_sleep: bool) -> Event | None:
        """Take the next epoch's decision; return the event it completes, if any."""
        if bool(is_sleep) == self.asleep:
            self._run = 0
            return None
        self._run += 1
        if self.asleep and self._run >= self.wake_up_epochs:
            self.asleep, self._run = False, 0
            return "woke_up"
        if not self.asleep and self._run >= self.fall_asleep_epochs:
            self.asleep, self._run = True, 0
            return "fell_asleep"
        return None

    def get_state(self) -> dict[str, int | bool]:
        """The state as plain values, for a portable snapshot."""
        return {"asleep": self.asleep, "run": self._run}

    def set_state(self, state: dict[str, object]) -> None:
        """Continue from :meth:`get_state`; ``ValueError`` on anything else."""
        asleep, run = state.get("asleep"), state.get("run")
        if not isinstance(asleep, bool) or isinstance(run, bool) or not isinstance(run, int):
            raise ValueError(f"tracker state {state!r}: expected asleep (bool) and run (int)")
        if not 0 <= run < max(self.fall_asleep_epochs, self.wake_up_epochs):
            raise ValueError(f"tracker run {run} is out of range for {self!r}")
        self.asleep, self._run = asleep, run

    def clone(self) -> OnsetTracker:
        """A fresh tracker (awake, no run) with the same parameters."""
        return OnsetTracker(self.fall_asleep_epochs, self.wake_up_epochs)

    def __repr__(self) -> str:
        return (
            f"OnsetTracker(fall_asleep_epochs={self.fall_asleep_epochs}, "
            f"wake_up_epochs={self.wake_up_epochs})"
        )
