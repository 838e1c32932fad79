"""One check over every streaming class, as river runs its checks over every estimator.

A streaming class here takes its data piece by piece and keeps state between calls. Each one
must: take its parameters as ``__init__`` arguments and keep them as attributes of the same
name; ``clone()`` to a fresh object with the same parameters and none of the state; save its
state as portable data and continue from it exactly; give the same results whatever the
chunking of its input; and document itself (a class docstring with Parameters and Examples, a
docstring on every public method).

A new streaming class gets one :class:`Streaming` entry in :data:`STREAMING` below.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from sleepstream.events import OnsetTracker
from sleepstream.live.detector import SleepDetector
from sleepstream.signal.synthetic import as_xyz, generate

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


@dataclass(frozen=True)
class Streaming:
    """How the generic checks drive one streaming class."""

    cls: type
    make: Callable[[], Any]
    """A new object with parameters other than the defaults where it has any."""
    items: Callable[[], list[Any]]
    """The stream, as items that any chunking keeps whole."""
    feed: Callable[[Any, Sequence[Any]], list[str]]
    """Give a chunk of items; returns what came out, as comparable text."""
    save: Callable[[Any], Any]
    """The state as portable data (bytes, or JSON-ready values)."""
    load: Callable[[Any, Any], None]
    """Continue an object made by ``make`` from ``save``'s data."""


def _tracker_items() -> list[Any]:
    rng = np.random.default_rng(3)
    return [bool(x) for x in rng.random(200) < 0.6]


def _tracker_feed(tracker: OnsetTracker, chunk: Sequence[Any]) -> list[str]:
    return [str(tracker.update(x)) for x in chunk]


def _detector_items(acceleration: bool) -> list[Any]:
    """Ten seconds at a time of heart rate and motion over 20 min: ``(stream, times, values)``."""
    rng = np.random.default_rng(5)
    seconds = 1200.0
    hr_t = T0 + np.arange(0.0, seconds, 5.0)
    hr = 58.0 + rng.normal(0.0, 2.0, len(hr_t))
    if acceleration:
        t, z = generate("night", seconds, 50.0, seed=2)
        motion: tuple[str, Any, Any] = ("acceleration", T0 + t, as_xyz(z, seed=2))
    else:
        ct = T0 + np.arange(0.0, seconds, 15.0)
        motion = ("counts", ct, rng.poisson(3.0, len(ct)).astype(float))
    items = []
    for lo in np.arange(0.0, seconds, 10.0):
        for stream, times, values in (("heart_rate", hr_t, hr), motion):
            keep = (times >= T0 + lo) & (times < T0 + lo + 10.0)
            items.append((stream, times[keep], values[keep]))
    return items


def _detector_feed(detector: SleepDetector, chunk: Sequence[Any]) -> list[str]:
    out = []
    for stream, times, values in chunk:
        add = getattr(detector, f"add_{stream}")
        out += [repr(result) for result in add(times, values)]
    return out


def _detector(acceleration: bool) -> Streaming:
    expect = ("heart_rate", "acceleration" if acceleration else "counts")
    return Streaming(
        SleepDetector,
        lambda: SleepDetector(threshold="wasa95", timezone="Europe/Berlin", expect=expect),
        lambda: _detector_items(acceleration),
        _detector_feed,
        lambda detector: detector.snapshot(),
        lambda detector, data: detector.restore(data),
    )


STREAMING = {
    "OnsetTracker": Streaming(
        OnsetTracker,
        lambda: OnsetTracker(fall_asleep_epochs=4, wake_up_epochs=3),
        _tracker_items,
        _tracker_feed,
        lambda tracker: json.loads(json.dumps(tracker.get_state())),  # JSON, never a pickle
        lambda tracker, data: tracker.set_state(data),
    ),
    "SleepDetector (heart rate, counts)": _detector(acceleration=False),
    "SleepDetector (heart rate, acceleration)": _detector(acceleration=True),
}


@pytest.fixture(params=list(STREAMING), scope="module")
def spec(request: pytest.FixtureRequest) -> Streaming:
    return STREAMING[request.param]


def _parameters(obj: Any) -> dict[str, Any]:
    names = [p for p in inspect.signature(type(obj).__init__).parameters if p != "self"]
    missing = [name for name in names if not hasattr(obj, name)]
    assert not missing, (
        f"{type(obj).__name__}: __init__ arguments not kept as attributes: {missing}"
    )
    return {name: getattr(obj, name) for name in names}


def _run(spec: Streaming, obj: Any, items: Sequence[Any], cuts: Sequence[int]) -> list[str]:
    bounds = [0, *cuts, len(items)]
    out: list[str] = []
    for lo, hi in itertools.pairwise(bounds):
        out += spec.feed(obj, items[lo:hi])
    return out


def test_the_stream_gives_results(spec: Streaming) -> None:
    """The checks below compare something: the stream makes results, and not all alike."""
    results = _run(spec, spec.make(), spec.items(), [])
    assert len(results) >= 20 and len(set(results)) > 1, results[:5]


def test_clone_keeps_the_parameters_and_none_of_the_state(spec: Streaming) -> None:
    items = spec.items()
    half = len(items) // 2
    obj = spec.make()
    spec.feed(obj, items[:half])
    clone = obj.clone()
    assert type(clone) is spec.cls and clone is not obj
    assert _parameters(clone) == _parameters(obj)
    fresh = _run(spec, spec.make(), items, [])
    assert _run(spec, clone, items, []) == fresh  # as a new object: nothing seen
    assert spec.feed(obj, items[half:]) == fresh[len(spec.feed(spec.make(), items[:half])) :]


def test_saved_state_continues_exactly(spec: Streaming) -> None:
    items = spec.items()
    whole = _run(spec, spec.make(), items, [])
    rng = np.random.default_rng(7)
    for cut in [
        1,
        *rng.choice(np.arange(2, len(items) - 1), size=10, replace=False),
        len(items) - 1,
    ]:
        obj = spec.make()
        before = spec.feed(obj, items[:cut])
        data = spec.save(obj)
        assert isinstance(data, bytes | dict), type(data)
        again = spec.make()
        spec.load(again, data)
        after = spec.feed(again, items[cut:])
        assert before + after == whole, f"cut after item {cut}"
        assert spec.save(obj) == data  # saving does not change the object


def test_results_do_not_depend_on_the_chunking(spec: Streaming) -> None:
    items = spec.items()
    whole = _run(spec, spec.make(), items, [])
    rng = np.random.default_rng(11)
    for _ in range(3):
        cuts = sorted(rng.choice(np.arange(1, len(items)), size=7, replace=False).tolist())
        assert _run(spec, spec.make(), items, cuts) == whole, cuts
    assert _run(spec, spec.make(), items, list(range(1, len(items)))) == whole  # one by one


def test_the_class_documents_itself(spec: Streaming) -> None:
    doc = inspect.getdoc(spec.cls) or ""
    for section in ("Parameters", "Examples"):
        assert f"{section}\n---" in doc, f"{spec.cls.__name__}: no {section} section"
    parameters = [p for p in inspect.signature(spec.cls.__init__).parameters if p != "self"]
    undocumented = [p for p in parameters if not any(p in line for line in doc.splitlines())]
    assert not undocumented, f"{spec.cls.__name__}: parameters not in the docstring: {undocumented}"
    methods = [
        name
        for name, member in inspect.getmembers(spec.cls, inspect.isfunction)
        if not name.startswith("_")
    ]
    bare = [name for name in methods if not inspect.getdoc(getattr(spec.cls, name))]
    assert not bare, f"{spec.cls.__name__}: public methods without a docstring: {bare}"


def test_a_parameter_that_cannot_work_is_refused(spec: Streaming) -> None:
    """Parameters are checked where they are given, not at the first sample."""
    bad: dict[type, dict[str, Any]] = {
        OnsetTracker: {"fall_asleep_epochs": 0},
        SleepDetector: {"reset_after": math.inf},
    }
    with pytest.raises(ValueError, match=next(iter(bad[spec.cls]))):
        spec.cls(**bad[spec.cls])
