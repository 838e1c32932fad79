"""Night-level sleep metrics and real-time sleep/wake events, against PSG.

Everything here starts from a binary sleep/wake decision per *scored* epoch, in time order:
PSG's (label 1) or a predictor's (``p_sleep >= threshold``). Unscored epochs are dropped, so
durations count scored epochs only.

Night-level metrics (:func:`night_summary`)
    TST, total sleep time (min); SE, sleep efficiency (% of scored time asleep); SOL, sleep onset
    latency (min from the first scored epoch to the first epoch of any sleep, as in AASM); WASO,
    wake after sleep onset (min of wake after the first sleep epoch, to the end of the night).
    Predictor and PSG are compared with Bland-Altman :func:`agreement`.

Event rule (:class:`sleepstream.events.OnsetTracker`, shared with the live detector)
    The tracker starts awake. While awake it reports ``"fell_asleep"`` on the
    ``fall_asleep_epochs``-th consecutive epoch decided sleep, and is then asleep; while asleep it
    reports ``"woke_up"`` on the ``wake_up_epochs``-th consecutive epoch decided wake, and is then
    awake. A decision that agrees with the current state resets the run. An event belongs to the
    epoch whose decision completes the run and is known at that epoch's end (start + 30 s), so
    the tracker is causal: it never looks past the current epoch.

Real-time metrics (:func:`event_metrics`)
    Onset delay: end of the epoch on which the first ``"fell_asleep"`` fires minus start of the
    PSG sleep-onset epoch (min; negative if it fires before PSG onset; NaN without an event or
    without PSG sleep). False onset events: ``"fell_asleep"`` events firing on a PSG-wake epoch
    or before PSG sleep onset. False wake events: ``"woke_up"`` events firing on a PSG-sleep
    epoch. Wake-up delay: if PSG ends the night with a final awakening (the last sleep epoch is
    followed by wake to the end), the time from the start of that wake run to the end of the
    epoch of the first ``"woke_up"`` at or after it (min; NaN if the night has no final
    awakening or the tracker reports none).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.evaluation.predictions import NightPrediction
from sleepstream.events import Event, OnsetTracker
from sleepstream.records import EPOCH_SECONDS

logger = logging.getLogger(__name__)


NIGHT_METRICS = ("tst_min", "se_pct", "waso_min", "sol_min")
"""Keys of :func:`night_summary`, in report order."""

EVENT_METRICS = ("onset_delay_min", "false_onset_events", "false_wake_events", "wakeup_delay_min")
"""Keys of :func:`event_metrics` summarised over nights."""


def _as_bool_1d(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if array.dtype != np.bool_:
        bad = ~np.isin(array, (0, 1))
        if bad.any():
            raise ValueError(f"{name} must hold booleans (or 0/1), got {array[bad][0].item()!r}")
    return array.astype(np.bool_)


def night_summary(is_sleep: ArrayLike, epoch_seconds: float = EPOCH_SECONDS) -> dict[str, float]:
    """TST, SE, SOL and WASO of one night's sleep/wake decisions.

    Parameters
    ----------
    is_sleep
        Decision per scored epoch, in time order.
    epoch_seconds
        Epoch length (s).

    Returns
    -------
    dict
        ``tst_min``, ``se_pct``, ``waso_min``, ``sol_min``. Without any sleep, SOL is NaN and
        WASO is 0.

    Examples
    --------
    >>> night_summary([False, False, True, True, False, True, True, True])
    {'tst_min': 2.5, 'se_pct': 62.5, 'waso_min': 0.5, 'sol_min': 1.0}
    """
    sleep = _as_bool_1d(is_sleep, "is_sleep")
    minutes = epoch_seconds / 60.0
    n_sleep = int(np.count_nonzero(sleep))
    if n_sleep:
        onset = int(np.argmax(sleep))
        sol = onset * minutes
        waso = int(np.count_nonzero(~sleep[onset:])) * minutes
    else:
        sol, waso = math.nan, 0.0
    return {
        "tst_min": n_sleep * minutes,
        "se_pct": 100.0 * n_sleep / sleep.size,
        "waso_min": waso,
        "sol_min": sol,
    }


def agreement(psg_values: ArrayLike, predicted_values: ArrayLike) -> dict[str, float]:
    """Bland-Altman agreement of a predicted night-level quantity with PSG.

    Pairs with a NaN on either side are left out.

    Returns
    -------
    dict
        ``bias`` = mean(predicted - PSG), ``sd`` of the differences (ddof=1), limits of agreement
        ``loa_low`` / ``loa_high`` = bias -/+ 1.96 SD, and ``n`` pairs used.

    Examples
    --------
    >>> agreement([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    {'bias': 1.0, 'sd': 1.0, 'loa_low': -0.96, 'loa_high': 2.96, 'n': 3}
    """
    psg = np.asarray(psg_values, dtype=np.float64)
    pred = np.asarray(predicted_values, dtype=np.float64)
    if psg.ndim != 1 or psg.shape != pred.shape:
        raise ValueError(
            f"PSG and predicted values must be 1-D of equal length, got {psg.shape} and "
            f"{pred.shape}"
        )
    difference = (pred - psg)[np.isfinite(psg) & np.isfinite(pred)]
    n = int(difference.size)
    bias = float(difference.mean()) if n else math.nan
    sd = float(difference.std(ddof=1)) if n > 1 else math.nan
    return {
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "n": n,
    }


def tracker_events(
    is_sleep: ArrayLike, tracker: OnsetTracker | None = None
) -> list[tuple[int, Event]]:
    """Replay decisions through a fresh copy of ``tracker``; return ``(epoch index, event)``."""
    decisions = _as_bool_1d(is_sleep, "is_sleep")
    live = (tracker or OnsetTracker()).clone()
    events: list[tuple[int, Event]] = []
    for index, decision in enumerate(decisions.tolist()):
        event = live.update(decision)
        if event is not None:
            events.append((index, event))
    return events


def event_metrics(
    labels: ArrayLike,
    is_sleep: ArrayLike,
    epoch_times: ArrayLike,
    tracker: OnsetTracker | None = None,
    epoch_seconds: float = EPOCH_SECONDS,
) -> dict[str, float]:
    """Real-time event metrics of one night (see the module docstring for definitions).

    Parameters
    ----------
    labels
        PSG label per scored epoch (1 sleep, 0 wake), in time order.
    is_sleep
        The predictor's decision per scored epoch.
    epoch_times
        Start (s) of each scored epoch, increasing.
    tracker
        Supplies the hysteresis parameters; a fresh copy is used. Default ``OnsetTracker()``.
    epoch_seconds
        Epoch length (s).

    Returns
    -------
    dict
        ``onset_delay_min``, ``false_onset_events``, ``false_wake_events``, ``wakeup_delay_min``,
        ``missed_onset`` (1 if PSG has sleep but no ``"fell_asleep"`` fires, else 0).
    """
    y = np.asarray(labels)
    decisions = _as_bool_1d(is_sleep, "is_sleep")
    times = np.asarray(epoch_times, dtype=np.float64)
    if not y.shape == decisions.shape == times.shape:
        raise ValueError(
            f"labels, is_sleep and epoch_times must have equal length, got {y.shape}, "
            f"{decisions.shape} and {times.shape}"
        )
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(
            f"Invalid label {y[bad][0].item()!r}: expected scored epochs only (0 or 1)"
        )
    if np.any(np.diff(times) <= 0):
        raise ValueError("epoch_times must be strictly increasing")
    events = tracker_events(decisions, tracker)
    onsets = [i for i, event in events if event == "fell_asleep"]
    wakes = [i for i, event in events if event == "woke_up"]
    psg_sleep = np.flatnonzero(y == 1)
    minutes = 60.0
    onset_delay = wakeup_delay = math.nan
    if psg_sleep.size:
        psg_onset = int(psg_sleep[0])
        if onsets:
            onset_delay = (times[onsets[0]] + epoch_seconds - times[psg_onset]) / minutes
        false_onsets = sum(1 for i in onsets if i < psg_onset or y[i] == 0)
        last_sleep = int(psg_sleep[-1])
        if last_sleep < y.size - 1:
            later = [i for i in wakes if i > last_sleep]
            if later:
                wakeup_delay = (times[later[0]] + epoch_seconds - times[last_sleep + 1]) / minutes
    else:
        false_onsets = len(onsets)
    return {
        "onset_delay_min": float(onset_delay),
        "false_onset_events": float(false_onsets),
        "false_wake_events": float(sum(1 for i in wakes if y[i] == 1)),
        "wakeup_delay_min": float(wakeup_delay),
        "missed_onset": float(psg_sleep.size > 0 and not onsets),
    }


def night_values(
    night: NightPrediction, threshold: float, tracker: OnsetTracker | None = None
) -> dict[str, Any]:
    """One night's row: PSG and predicted TST/SE/WASO/SOL, and its real-time event metrics.

    The prediction is ``p_sleep >= threshold`` on the night's scored epochs.
    """
    scored = night.scored
    if not scored.any():
        raise ValueError(f"Night of subject {night.subject_id!r} has no scored epochs")
    labels = night.labels[scored]
    predicted = night.p_sleep[scored] >= threshold
    row: dict[str, Any] = {"subject_id": night.subject_id, "threshold": float(threshold)}
    psg = night_summary(labels == 1)
    pred = night_summary(predicted)
    for key in NIGHT_METRICS:
        row[f"psg_{key}"] = psg[key]
        row[f"pred_{key}"] = pred[key]
    row.update(event_metrics(labels, predicted, night.epoch_times[scored], tracker))
    return row


def _spread(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    n = int(array.size)
    return {
        "mean": float(array.mean()) if n else math.nan,
        "median": float(np.median(array)) if n else math.nan,
        "sd": float(array.std(ddof=1)) if n > 1 else math.nan,
        "n": n,
    }


def night_level_summary(
    nights: Sequence[NightPrediction],
    thresholds: Sequence[float],
    tracker: OnsetTracker | None = None,
) -> dict[str, Any]:
    """Night-level agreement and real-time event statistics over held-out nights.

    Parameters
    ----------
    nights
        Held-out nights.
    thresholds
        Each night's operating threshold (chosen on its training subjects).
    tracker
        Hysteresis parameters for the events; default ``OnsetTracker()``.

    Returns
    -------
    dict
        ``night_level``: :func:`agreement` per key of :data:`NIGHT_METRICS`; ``real_time``:
        mean, median, SD and n over nights per key of :data:`EVENT_METRICS`, plus
        ``missed_onsets`` (count of nights); ``nights``: the rows of :func:`night_values`.
    """
    if len(nights) != len(thresholds):
        raise ValueError(f"Got {len(thresholds)} thresholds for {len(nights)} nights")
    rows = [night_values(n, t, tracker) for n, t in zip(nights, thresholds, strict=True)]
    night_level = {
        key: agreement([r[f"psg_{key}"] for r in rows], [r[f"pred_{key}"] for r in rows])
        for key in NIGHT_METRICS
    }
    real_time: dict[str, Any] = {key: _spread([r[key] for r in rows]) for key in EVENT_METRICS}
    real_time["missed_onsets"] = int(sum(r["missed_onset"] for r in rows))
    return {"night_level": night_level, "real_time": real_time, "nights": rows}
