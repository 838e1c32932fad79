"""A device that runs the model itself sends its per-epoch p(sleep) instead of samples.

The detector takes the values as the model's (``SleepDetector.add_p_sleep``) and applies what
follows the model: the context veto, the threshold, the tracker, the gap rules, ``hold`` and
:func:`close_together`. The service takes them as the batch field ``p_sleep``
(docs/robustness.md lists the refusals).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from test_serve import T0, as_json, bearer, pushed

from sleepstream.live import state
from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.context import MotionContext
from sleepstream.live.detector import EpochResult, SleepDetector, close_together
from sleepstream.records import Recording
from sleepstream.serve.app import create_app
from sleepstream.serve.feed import record
from sleepstream.serve.schema import Batch, Limits
from sleepstream.serve.sqlite import SQLiteStore

Json = dict[str, Any]
AWAKE, ASLEEP = 0.1, 0.95
MODEL = OnnxPipeline.shipped()
"""For the property-based tests (hypothesis does not take function-scoped fixtures)."""


@pytest.fixture(scope="module")
def model() -> OnnxPipeline:
    return OnnxPipeline.shipped()


def core(results: list[EpochResult]) -> list[tuple[object, ...]]:
    """What p(sleep) from the device must reproduce: everything after the model."""
    return [
        tuple(
            None if isinstance(v, float) and math.isnan(v) else v
            for v in (r.start, r.end, r.p_sleep, r.p_model, r.state, r.events, r.vetoed)
        )
        for r in results
    ]


def sent_p(results: list[EpochResult]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The epochs with data, as a device that ran the model would send them."""
    sent = [(r.start, r.p_model) for r in results if r.has_data]
    return np.array([t for t, _ in sent]), np.array([p for _, p in sent])


def epochs(*ks: int) -> NDArray[np.float64]:
    return T0 + 30.0 * np.array(ks, dtype=np.float64)


# -- the detector ------------------------------------------------------------------------------
def test_p_sleep_gives_the_results_of_the_samples_it_stands_for(
    recordings: list[Recording], model: OnnxPipeline
) -> None:
    """A real night (heart rate and counts) with a short and a long hole and context reports,
    in 10 min batches; the p_model values of its epochs sent as p(sleep), in the same batches."""
    night = next(r for r in recordings if r.subject_id == "46343").switched_on_before(3600.0)
    holes = [(1800.0, 2400.0), (7200.0, 15600.0)]  # 20 epochs; 2 h 20 min (the night: 4.7 h)

    def kept(times: NDArray[np.float64]) -> NDArray[np.bool_]:
        return ~np.any([(times >= lo) & (times < hi) for lo, hi in holes], axis=0)

    hr, ct = kept(night.hr_times), kept(night.count_times)
    hr_t, bpm = T0 + night.hr_times[hr], night.hr_bpm[hr]
    count_t, counts = T0 + night.count_times[ct], night.counts[ct]
    context = [
        MotionContext(T0 + 6000.0, "cycling", "high"),
        MotionContext(T0 + 6300.0, "stationary", "high"),
        MotionContext(T0 + 16200.0, "walking", "high"),
        MotionContext(T0 + 16300.0, "stationary", "high"),
    ]
    batches = T0 + np.arange(-3600.0, night.end_time + 600.0, 600.0)

    def inside(times: NDArray[np.float64], lo: float) -> NDArray[np.bool_]:
        return (times >= lo) & (times < lo + 600.0)

    def reports(lo: float) -> list[MotionContext]:
        return [c for c in context if lo <= c.time < lo + 600.0]

    samples = SleepDetector(model)
    expected = []
    for lo in batches:
        h, c = inside(hr_t, lo), inside(count_t, lo)
        expected += samples.add(
            heart_rate=(hr_t[h], bpm[h]), counts=(count_t[c], counts[c]), context=reports(lo)
        )
    expected += samples.flush()
    events = {e for r in expected for e in r.events}
    assert {"fell_asleep", "woke_up", "unknown"} <= events
    assert sum(r.is_gap for r in expected) == 1 and any(r.vetoed for r in expected)
    assert samples.late_samples == {}

    device = SleepDetector(model)
    p_t, p = sent_p(expected)
    got = []
    for lo in batches:
        g = inside(p_t, lo)
        got += device.add(p_sleep=(p_t[g], p[g]), context=reports(lo))
    got += device.flush()
    assert core(got) == core(expected)
    with_data = [r for r in got if r.state != "unknown"]
    assert len(with_data) == len(p_t) > 300
    assert all(r.has_data and r.p_from_device for r in with_data)
    assert all(r.hr_samples == 0 and r.motion_seconds == 0 and r.features is None for r in got)


def test_epochs_left_out_are_unknown_and_a_long_gap_starts_afresh(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, threshold=0.5)
    results = detector.add_p_sleep(epochs(*range(5)), np.full(5, ASLEEP))
    assert [r.events for r in results] == [(), (), ("fell_asleep",), (), ()]
    # Five epochs left out: unknown (the first says so), the tracker keeps its state.
    results = detector.add_p_sleep(epochs(10, 11), [ASLEEP, AWAKE])
    assert [(r.start, r.state, r.events) for r in results[:5]] == [
        (T0 + 30.0 * k, "unknown", ("unknown",) if k == 5 else ()) for k in range(5, 10)
    ]
    assert all(math.isnan(r.p_sleep) and math.isnan(r.p_model) for r in results[:5])
    assert [(r.state, r.events) for r in results[5:]] == [("asleep", ()), ("asleep", ())]
    # Three hours left out: 240 unknown epochs, the stream starts afresh, one gap result.
    later = epochs(*range(400, 405))
    results = detector.add_p_sleep(later, np.full(5, ASLEEP))
    assert [r.is_gap for r in results] == [False] * 240 + [True] + [False] * 5
    assert (results[240].start, results[240].end) == (T0 + 30.0 * 252, later[0])
    fresh = SleepDetector(model, threshold=0.5).add_p_sleep(later, np.full(5, ASLEEP))
    assert results[241:] == fresh and fresh[2].events == ("fell_asleep",)
    # The clock closes what is never sent: at most reset_after of empty epochs.
    assert detector.flush() == []
    assert len(detector.advance(math.inf)) == 240
    assert detector.advance(math.inf) == []


def test_context_vetoes_sleep_sent_as_p_sleep(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, threshold=0.5)
    detector.add_context(MotionContext(T0 + 60.0, "cycling", "high"))
    results = detector.add_p_sleep(epochs(*range(6)), np.full(6, ASLEEP))
    detector.add_context(MotionContext(T0 + 200.0, "stationary", "high"))
    results += detector.add_p_sleep(epochs(*range(6, 10)), np.full(4, ASLEEP))
    assert [r.vetoed for r in results] == [None] * 2 + ["cycling (high)"] * 5 + [None] * 3
    assert [r.p_sleep for r in results[1:3]] == [ASLEEP, 0.0]
    assert all(r.p_model == ASLEEP for r in results)
    assert [r.start for r in results if r.events] == [T0 + 270.0]  # the third one unvetoed


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda d: d.add_p_sleep(epochs(4, 5) + np.array([0.0, 15.0]), [0.5, 0.5]), "at index 1 is not the start of a 30 s epoch"),
        (lambda d: d.add_p_sleep(epochs(4, 4), [0.5, 0.5]), "must increase, epoch by epoch, at index 1"),
        (lambda d: d.add_p_sleep(epochs(6, 5), [0.5, 0.5]), "must increase, epoch by epoch, at index 1"),
        (lambda d: d.add_p_sleep(epochs(3), [0.5]), r"epoch at t=1767308490.000 s \(index 0\) is not after the newest epoch already given"),
        (lambda d: d.add_p_sleep(epochs(4, 5), [0.5, 1.2]), r"p 1.2 at index 1 \(t=1767308550.000 s\) is not a number in \[0, 1\]"),
        (lambda d: d.add_p_sleep(epochs(4), [-0.1]), r"p -0.1 at index 0 .* is not a number in \[0, 1\]"),
        (lambda d: d.add_p_sleep(epochs(4, 5), [0.5, math.nan]), r"p nan at index 1 .* not a number in \[0, 1\]"),
        (lambda d: d.add_p_sleep(epochs(4), [math.inf]), r"p inf at index 0"),
        (lambda d: d.add_p_sleep(epochs(4, 5), [0.5]), "times .2,. and values .1,. must be equal"),
        (lambda d: d.add_p_sleep([T0 + 120.0, math.nan], [0.5, 0.5]), "non-finite time at index 1"),
        (lambda d: d.add_p_sleep(epochs(4) * 1000, [0.5]), "looks like milliseconds"),
        (lambda d: d.add_heart_rate([T0 + 120.0], [60.0]), r"heart rate: this detector has taken p\(sleep\) values"),
        (lambda d: d.add_counts([T0 + 120.0], [3.0]), r"counts: this detector has taken p\(sleep\)"),
        (lambda d: d.add_acceleration(T0 + 120.0 + np.arange(60) * 0.02, np.tile([0, 0.6, -0.8], (60, 1))), r"acceleration: this detector has taken p\(sleep\)"),
        (lambda d: d.add(heart_rate=([T0 + 120.0], [60.0]), p_sleep=(epochs(4), [0.5])), "a batch holds samples or p_sleep, not both: this one holds p_sleep and heart_rate"),
        (lambda d: d.add(context=[MotionContext(T0 + 120.0, "cycling")], p_sleep=(epochs(4, 5), [0.5, 2.0])), "p 2 at index 1"),
    ],
)  # fmt: skip
def test_bad_p_sleep_is_refused_naming_index_and_value_and_nothing_is_taken(
    model: OnnxPipeline, call: Callable[[SleepDetector], object], message: str
) -> None:
    detector = SleepDetector(model)
    detector.hold = True  # an epoch given but not yet closed is part of what must not change
    detector.add_p_sleep(epochs(0, 1, 3), [0.2, 0.3, 0.4])
    before = detector.snapshot()
    with pytest.raises(ValueError, match=message):
        call(detector)
    assert detector.snapshot() == before


def test_p_sleep_for_closed_epochs_and_after_samples_is_refused(model: OnnxPipeline) -> None:
    detector = SleepDetector(model)
    detector.add_p_sleep(epochs(0), [0.2])
    detector.advance(T0 + 600.0)  # the epochs ending by 540 s close without data
    before = detector.snapshot()
    message = r"epoch at t=1767308520.000 s \(index 0\) has already closed .*up to 1767308940"
    with pytest.raises(ValueError, match=message):
        detector.add_p_sleep(epochs(4), [0.5])
    assert detector.snapshot() == before
    assert [r.start for r in detector.add_p_sleep(epochs(18), [0.5])] == [T0 + 540.0]

    samples = SleepDetector(model)
    samples.add_heart_rate([T0, T0 + 5.0], [60.0, 61.0])
    before = samples.snapshot()
    with pytest.raises(ValueError, match=re.escape("p_sleep: this detector has taken samples")):
        samples.add_p_sleep(epochs(4), [0.5])
    assert samples.snapshot() == before


def test_off_grid_refusal_names_the_nearest_epoch_start(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, origin=10.0)
    with pytest.raises(ValueError, match=r"origin=10; the nearest is 1767308410.000 s"):
        detector.add_p_sleep([T0], [0.5])
    # Within a millisecond of the grid is on it (a device's clock rounding).
    assert [r.start for r in detector.add_p_sleep([T0 + 10.0004], [0.5])] == [T0 + 10.0]


def test_a_snapshot_carries_the_p_sleep_not_yet_closed(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, threshold=0.5)
    detector.add_context(MotionContext(T0 + 150.0, "running", "high"))
    detector.add_p_sleep(epochs(0, 1, 2), np.full(3, ASLEEP))
    detector.hold = True
    assert detector.add_p_sleep(epochs(3, 4, 6), [ASLEEP, 0.6, 0.7]) == []
    blob = detector.snapshot()
    header, arrays = state.unpack(blob)
    assert arrays["p_times"].tolist() == epochs(3, 4, 6).tolist()
    assert arrays["p_values"].tolist() == [ASLEEP, 0.6, 0.7]
    restored = SleepDetector(model, threshold=0.5)
    restored.restore(blob)
    assert restored.snapshot() == blob
    expected = close_together([detector])[0]
    assert [r.start for r in expected] == epochs(3, 4, 5, 6).tolist()
    assert [r.vetoed for r in expected] == [None, None, None, "running (high)"]
    assert close_together([restored])[0] == expected
    with pytest.raises(ValueError, match="taken p"):  # what the device sends is kept too
        restored.add_heart_rate([T0 + 300.0], [60.0])

    for entry, values, why in [
        ("p_values", np.array([ASLEEP, 1.5, 0.7]), "p\\(sleep\\) values are malformed"),
        ("p_times", epochs(3, 6, 4), "p\\(sleep\\) values are malformed"),
        ("p_times", epochs(2, 4, 6), "p\\(sleep\\) values are malformed"),  # 2 has closed
        ("p_values", np.array([ASLEEP, math.nan, 0.7]), "holds non-finite values"),
    ]:
        bad = {**arrays, entry: values}
        with pytest.raises(ValueError, match=why):
            SleepDetector(model, threshold=0.5).restore(state.pack(header, bad))
    mixed = {**header, "newest": {**header["newest"], "heart_rate": T0}}
    with pytest.raises(ValueError, match=r"stream times .* are malformed"):
        SleepDetector(model, threshold=0.5).restore(state.pack(mixed, arrays))


def test_snapshots_without_p_sleep_from_before_still_restore(model: OnnxPipeline) -> None:
    """A snapshot written before p(sleep) existed (version 2, no p arrays) restores."""
    detector = SleepDetector(model, expect=("heart_rate",))
    detector.add_heart_rate(T0 + np.arange(0.0, 300.0, 5.0), np.full(60, 58.0))
    header, arrays = state.unpack(detector.snapshot())
    assert header["version"] == 2
    del arrays["p_times"], arrays["p_values"]
    restored = SleepDetector(model, expect=("heart_rate",))
    restored.restore(state.pack(header, arrays))
    more = (T0 + np.arange(300.0, 600.0, 5.0), np.full(60, 57.0))
    assert restored.add_heart_rate(*more) == detector.add_heart_rate(*more)
    assert restored.snapshot() == detector.snapshot()
    queued = {**arrays, "p_times": epochs(20), "p_values": np.array([0.5])}
    with pytest.raises(ValueError, match="for a detector that takes samples"):
        SleepDetector(model, expect=("heart_rate",)).restore(state.pack(header, queued))


def test_held_p_sleep_devices_close_in_close_together_without_the_model(
    model: OnnxPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two devices that send p(sleep) and one that sends heart rate, held and closed together
    a minute at a time: the results of each alone, and only the samples reach the model."""
    rng = np.random.default_rng(5)
    p_values = [np.clip(rng.normal(0.7, 0.25, 40), 0, 1) for _ in range(2)]
    sent = [np.arange(40), np.r_[0:12, 20:40]]  # the second leaves out eight epochs
    hr_t = T0 + np.arange(0.0, 1200.0, 5.0)
    bpm = 60 + rng.normal(0, 2, len(hr_t))

    def feed(detector: SleepDetector, device: int, minute: int) -> list[EpochResult]:
        lo, hi = 60.0 * minute, 60.0 * (minute + 1)
        if device == 2:
            h = (hr_t >= T0 + lo) & (hr_t < T0 + hi)
            return detector.add_heart_rate(hr_t[h], bpm[h])
        k = sent[device][(sent[device] * 30 >= lo) & (sent[device] * 30 < hi)]
        return detector.add_p_sleep(epochs(*k), p_values[device][k])

    def new() -> list[SleepDetector]:
        return [SleepDetector(model, expect=("heart_rate",)) for _ in range(3)]

    alone, together = new(), new()
    expected: list[list[EpochResult]] = [[] for _ in range(3)]
    got: list[list[EpochResult]] = [[] for _ in range(3)]
    rows = []
    real_run = model.run

    def counting_run(inputs: dict[str, np.ndarray], states: np.ndarray):  # type: ignore[no-untyped-def]
        rows.append(len(states))
        return real_run(inputs, states)

    for minute in range(20):
        for device in range(3):
            expected[device] += feed(alone[device], device, minute)
            together[device].hold = True
            assert feed(together[device], device, minute) == []
        monkeypatch.setattr(model, "run", counting_run)
        for device, results in enumerate(close_together(together)):
            got[device] += results
        monkeypatch.setattr(model, "run", real_run)
    assert got == expected
    assert [sum(r.p_from_device for r in results) for results in got] == [40, 32, 0]
    assert set(rows) == {1} and sum(rows) == len(got[2]) == 39


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Any]:
    """One call of a device that sends p(sleep), with arbitrary (often bad) arguments."""
    kind = draw(st.sampled_from(["p", "p", "p", "heart_rate", "advance", "flush", "context"]))
    if kind == "p":
        n = draw(st.integers(0, 8))
        ks = draw(st.lists(st.integers(-5, 700), min_size=n, max_size=n))
        if draw(st.booleans()):
            ks = sorted(set(ks))
        offset = draw(st.sampled_from([0.0, 0.0, 0.0004, 7.0]))
        p = st.one_of(st.floats(0, 1), st.floats(-1, 2), st.sampled_from([math.nan, math.inf]))
        values = draw(st.lists(p, min_size=len(ks), max_size=len(ks) + draw(st.integers(0, 1))))
        return kind, (epochs(*ks) + offset, values)
    if kind == "advance":
        return kind, T0 + draw(st.one_of(st.floats(0, 30000), st.just(math.inf)))
    if kind == "context":
        return kind, MotionContext(T0 + draw(st.floats(0, 21000)), "cycling", "high")
    return kind, None


def _call(detector: SleepDetector, kind: str, args: Any) -> list[EpochResult]:
    if kind == "p":
        return detector.add_p_sleep(*args)
    if kind == "heart_rate":
        return detector.add_heart_rate([T0], [60.0])
    if kind == "advance":
        return detector.advance(args)
    if kind == "context":
        return detector.add_context(args)
    return detector.flush()


@pytest.mark.timeout(300)
@FUZZ
@given(st.lists(calls(), max_size=12), st.booleans())
def test_any_p_sleep_call_is_a_result_or_a_value_error_that_changes_nothing(
    sequence: list[tuple[str, Any]], hold: bool
) -> None:
    detector = SleepDetector(MODEL)
    detector.hold = hold
    results: list[EpochResult] = []
    for kind, args in sequence:
        before = detector.snapshot()
        try:
            results += _call(detector, kind, args)
        except ValueError:
            assert detector.snapshot() == before, f"{kind} raised but changed the detector"
    results += close_together([detector])[0]
    assert all(b.start == a.end for a, b in itertools.pairwise(results))
    for r in results:
        assert (r.state == "unknown") == (not r.has_data) == math.isnan(r.p_model)
        assert r.p_from_device == (r.has_data and r.hr_samples == r.motion_seconds == 0)
        assert not r.p_from_device or 0 <= r.p_model <= 1
        assert r.is_gap or r.end - r.start == 30.0
    restored = SleepDetector(MODEL)
    restored.restore(detector.snapshot())
    assert restored.snapshot() == detector.snapshot()


@pytest.mark.timeout(300)
@FUZZ
@given(
    st.lists(st.integers(0, 900), min_size=1, max_size=60, unique=True),
    st.lists(st.integers(1, 59), max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_results_do_not_depend_on_how_the_p_sleep_is_cut_into_batches(
    ks: list[int], cuts: list[int], seed: int
) -> None:
    starts = epochs(*sorted(ks))
    p = np.random.default_rng(seed).uniform(0, 1, len(starts))
    whole = SleepDetector(MODEL, threshold=0.5)
    expected = whole.add_p_sleep(starts, p) + whole.advance(math.inf)
    chunked = SleepDetector(MODEL, threshold=0.5)
    got = []
    for lo, hi in itertools.pairwise([0, *sorted(set(cuts)), len(starts)]):
        got += chunked.add_p_sleep(starts[lo:hi], p[lo:hi])
    assert got + chunked.advance(math.inf) == expected


# -- the service -------------------------------------------------------------------------------
class App:
    """The service over a fresh SQLite store, with a test client and a registered device."""

    def __init__(self, client: TestClient):
        self.client = client
        answer = client.post("/devices", json={"threshold": "operating"}).json()
        self.device_id, self.headers = answer["device_id"], bearer(answer["token"])

    def send(self, batch: Json, packed: bool = False) -> Any:
        url = f"/devices/{self.device_id}/batches"
        if packed:
            kind = {"Content-Type": "application/msgpack"}
            body = msgpack.packb(batch)
            return self.client.post(url, content=body, headers={**self.headers, **kind})
        return self.client.post(url, json=batch, headers=self.headers)

    def last_seq(self) -> int:
        view = self.client.get(f"/devices/{self.device_id}", headers=self.headers)
        last: int = view.json()["last_seq"]
        return last


@pytest.fixture
def serve(tmp_path: Path, model: OnnxPipeline) -> Iterator[Callable[..., App]]:
    stores: list[SQLiteStore] = []
    clients: list[TestClient] = []

    def start(limits: Limits | None = None) -> App:
        stores.append(SQLiteStore(tmp_path / f"p_sleep{len(stores)}.sqlite3"))
        clients.append(TestClient(create_app(stores[-1], model, limits)))
        return App(clients[-1].__enter__())

    yield start
    for client, store in zip(clients, stores, strict=True):
        client.__exit__(None, None, None)
        store.close()


def p_batches() -> list[Json]:
    """Twenty minutes of a device's p(sleep), two minutes a batch: awake, then asleep."""
    p = np.r_[np.full(12, AWAKE), np.linspace(0.8, 0.99, 28)]
    k = np.r_[0:20, 22:40]  # two epochs without data
    return [
        {"seq": n + 1, "p_sleep": {"times": epochs(*k[part]).tolist(), "p": p[k[part]].tolist()}}
        for n, part in enumerate(np.array_split(np.arange(len(k)), 10))
    ]


def test_a_device_sending_p_sleep_gets_epochs_and_its_viewer_hears_it_fall_asleep(
    serve: Callable[..., App], model: OnnxPipeline
) -> None:
    app = serve()
    viewer = app.client.post(f"/devices/{app.device_id}/viewers", headers=app.headers).json()
    batches = p_batches()
    plain = SleepDetector(model, threshold="operating")
    expected = [
        as_json(record(r, b["seq"]))
        for b in batches
        for r in plain.add_p_sleep(b["p_sleep"]["times"], b["p_sleep"]["p"])
    ]
    acknowledged = []
    url = f"/devices/{app.device_id}/events?token={viewer['token']}"
    with app.client.websocket_connect(url) as subscriber:
        assert subscriber.receive_json()["type"] == "state"
        for batch in batches:
            answer = app.send(batch, packed=batch["seq"] % 2 == 0)
            assert answer.status_code == 200, answer.text
            acknowledged += answer.json()["results"]
        messages = [subscriber.receive_json() for _ in pushed(app.device_id, expected)]
    assert acknowledged == expected and messages == pushed(app.device_id, expected)
    assert [m["event"] for m in messages if m["type"] == "event"] == ["fell_asleep", "unknown"]
    assert len(expected) == 40 and [r["state"] for r in expected].count("unknown") == 2
    assert all(r["hr_samples"] == 0 and r["motion_seconds"] == 0 for r in expected)
    view = app.client.get(f"/devices/{app.device_id}", params={"since": 0}, headers=app.headers)
    assert view.json()["results"] == expected and view.json()["state"] == "asleep"
    again = app.send(batches[3])
    assert again.status_code == 200 and again.json()["duplicate"]


@pytest.mark.parametrize(
    "batch,status,detail",
    [
        ({"p_sleep": {"times": [T0 + 120.0], "p": [1.5]}}, 422, "p_sleep: p 1.5 at index 0"),
        ({"p_sleep": {"times": [T0 + 120.0, T0 + 135.0], "p": [0.5, 0.5]}}, 422, "index 1 is not the start of a 30 s epoch"),
        ({"p_sleep": {"times": [T0 + 30.0], "p": [0.5]}}, 422, "(index 0) has already closed"),
        ({"p_sleep": {"times": [T0 + 120.0], "p": [0.5]}, "heart_rate": {"times": [T0 + 120.0], "bpm": [60.0]}}, 422, "a batch holds samples or p_sleep, not both"),
        ({"heart_rate": {"times": [T0 + 120.0], "bpm": [60.0]}}, 422, "heart rate: this detector has taken p(sleep) values"),
        ({"p_sleep": {"times": [T0 + 120.0, T0 + 150.0], "p": [0.5]}}, 422, "p_sleep: 2 times but 1 values"),
        ({"p_sleep": {"times": [T0 + 120.0], "p": ["0.5"]}}, 422, "valid number"),
        ({"p_sleep": {"times": [T0 + 120.0], "p": [0.5], "hr": []}}, 422, "Extra inputs"),
        ({"p_sleep": {"times": epochs(*range(4, 9)).tolist(), "p": [0.5] * 5}}, 413, "5 samples in one batch; at most 4"),
    ],
)  # fmt: skip
def test_bad_p_sleep_batches_are_refused_and_nothing_is_stored(
    serve: Callable[..., App], batch: Json, status: int, detail: str
) -> None:
    app = serve(Limits(max_samples=4))
    first = {"seq": 1, "p_sleep": {"times": epochs(0, 1, 2).tolist(), "p": [0.2, 0.3, 0.4]}}
    assert app.send(first).status_code == 200
    answer = app.send({"seq": 2, **batch})
    assert answer.status_code == status, answer.text
    assert detail in str(answer.json()["detail"])
    assert app.last_seq() == 1
    good = {"seq": 2, "p_sleep": {"times": epochs(3).tolist(), "p": [0.5]}}
    assert [r["start"] for r in app.send(good).json()["results"]] == [T0 + 90.0]


def test_a_device_that_sent_samples_cannot_send_p_sleep(serve: Callable[..., App]) -> None:
    app = serve()
    samples = {"seq": 1, "heart_rate": {"times": [T0, T0 + 5.0], "bpm": [60.0, 61.0]}}
    assert app.send(samples).status_code == 200
    answer = app.send({"seq": 2, "p_sleep": {"times": epochs(4).tolist(), "p": [0.5]}})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("p_sleep: this detector has taken samples")
    assert app.last_seq() == 1


def test_the_batch_schema_documents_p_sleep_and_keeps_the_digests_of_earlier_batches(
    serve: Callable[..., App],
) -> None:
    document = serve().client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "p_sleep" in schemas["Batch"]["properties"]
    assert set(schemas["PSleep"]["properties"]) == {"times", "p"}
    assert "[0, 1]" in schemas["PSleep"]["properties"]["p"]["items"]["description"]
    # A batch without p_sleep has the digest it had before the field existed (stored batches
    # resent after an upgrade are still duplicates, not 409).
    earlier = Batch.model_validate(
        {
            "seq": 3,
            "heart_rate": {"times": [1767225600.0, 1767225605.0], "bpm": [58.0, 57.5]},
            "context": [{"time": 1767225600.0, "activity": "stationary"}],
        }
    )
    digest = "d9904c26a7ac89f0ddb4b6be145393e6553f8c73f8c64421e9048c9e9e379413"
    assert earlier.digest().hex() == digest
    p_sleep = {"seq": 3, "p_sleep": {"times": [1767225600.0], "p": [0.5]}}
    other = {"seq": 3, "p_sleep": {"times": [1767225600.0], "p": [0.6]}}
    assert Batch.model_validate(p_sleep).digest() != Batch.model_validate(other).digest()
    assert Batch.model_validate(p_sleep).samples() == 1
