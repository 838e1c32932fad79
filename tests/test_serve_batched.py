"""The service applies the batches that arrive together as one group: the epochs they close go
through the step model in one batched call and are stored in one commit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from test_serve import Batch, Json, as_json, night_batches, reference

from sleepstream.live.backends import OnnxPipeline
from sleepstream.serve.devices import BatchOutcome, Devices, SequenceError
from sleepstream.serve.intake import Intake
from sleepstream.serve.schema import Batch as BatchModel
from sleepstream.serve.schema import DeviceSettings
from sleepstream.serve.sqlite import SQLiteStore
from sleepstream.serve.store import EpochRecord

SECONDS = 300.0


@pytest.fixture
def counted() -> tuple[OnnxPipeline, list[int]]:
    """The shipped model, recording the batch size of each call of its step."""
    model, sizes = OnnxPipeline.shipped(), []
    run = model.run

    def counting(inputs: dict[str, Any], state: Any) -> Any:
        sizes.append(len(state))
        return run(inputs, state)

    model.run = counting  # type: ignore[method-assign]
    return model, sizes


@pytest.fixture
def devices(tmp_path: Path, counted: tuple[OnnxPipeline, list[int]]) -> Devices:
    return Devices(SQLiteStore(tmp_path / "store.sqlite3"), counted[0])


def nights(n: int) -> list[list[Batch]]:
    return [night_batches(SECONDS, seed=k) for k in range(n)]


def stored_results(devices: Devices, device_id: str) -> list[Json]:
    return [as_json(r) for r in devices.store.epochs(device_id, -1e12, 1000)]


def test_epochs_closing_together_go_through_the_model_in_one_call(
    devices: Devices, counted: tuple[OnnxPipeline, list[int]]
) -> None:
    model, sizes = counted
    ids = [devices.register(DeviceSettings())[0].id for _ in range(4)]
    night = nights(4)
    expected = [reference(model, batches) for batches in night]
    sizes.clear()
    for k in range(len(night[0])):
        group = [(d, BatchModel.model_validate(n[k])) for d, n in zip(ids, night, strict=True)]
        outcomes = devices.add_batches(group)
        assert all(isinstance(o, BatchOutcome) and not o.duplicate for o in outcomes)
    # The four watches' epochs close in the same batches: one call of the step per epoch
    # round, with all four in it, where one by one it would be four calls.
    assert len(expected[0]) == 9 and sizes == [4] * 9
    assert [stored_results(devices, d) for d in ids] == expected


def test_refused_batches_in_a_group_leave_the_others_stored(
    devices: Devices, counted: tuple[OnnxPipeline, list[int]]
) -> None:
    model = counted[0]
    ok, gap, bad, twice = (devices.register(DeviceSettings())[0].id for _ in range(4))
    night = nights(4)
    in_ms = json.loads(json.dumps(night[2][0]))
    in_ms["heart_rate"]["times"] = [t * 1000 for t in in_ms["heart_rate"]["times"]]

    def batch(value: Batch) -> BatchModel:
        return BatchModel.model_validate(value)

    outcomes = devices.add_batches(
        [
            (ok, batch(night[0][0])),
            (gap, batch(night[1][1])),  # batch 2 before 1
            (bad, batch(in_ms)),  # times in milliseconds
            (twice, batch(night[3][0])),
            (twice, batch(night[3][0])),  # sent again before the answer came
        ]
    )
    assert [type(o) for o in outcomes] == [
        BatchOutcome,
        SequenceError,
        ValueError,
        BatchOutcome,
        BatchOutcome,
    ]
    assert "send batch 1 first" in str(outcomes[1])
    assert "looks like milliseconds" in str(outcomes[2])
    first, again = outcomes[3], outcomes[4]
    assert isinstance(first, BatchOutcome) and isinstance(again, BatchOutcome)
    assert (first.duplicate, again.duplicate, again.last_seq) == (False, True, 1)
    assert [devices.store.state(d).last_seq for d in (ok, gap, bad, twice)] == [1, 0, 0, 1]
    # The refused ones left nothing behind: every watch then gives its plain results.
    for k in range(len(night[0])):
        group = [
            (d, batch(n[k]))
            for d, n in zip((ok, gap, bad, twice), night, strict=True)
            if not (k == 0 and d in (ok, twice))
        ]
        assert not any(isinstance(o, Exception) for o in devices.add_batches(group))
    for device_id, batches in zip((ok, gap, bad, twice), night, strict=True):
        assert stored_results(devices, device_id) == reference(model, batches)


def test_a_failed_commit_stores_none_of_the_group_and_the_detectors_start_again(
    devices: Devices, counted: tuple[OnnxPipeline, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = counted[0]
    ids = [devices.register(DeviceSettings())[0].id for _ in range(3)]
    night = nights(3)

    def group(k: int) -> list[tuple[str, BatchModel]]:
        return [(d, BatchModel.model_validate(n[k])) for d, n in zip(ids, night, strict=True)]

    devices.add_batches(group(0))
    with monkeypatch.context() as patch:
        patch.setattr(devices.store, "commit_batches", _disk_full)
        with pytest.raises(OSError, match="disk is full"):
            devices.add_batches(group(1))
    assert [devices.store.state(d).last_seq for d in ids] == [1, 1, 1]
    for k in range(1, len(night[0])):
        devices.add_batches(group(k))
    for device_id, batches in zip(ids, night, strict=True):
        assert stored_results(devices, device_id) == reference(model, batches)


def _disk_full(*args: object) -> list[bool]:
    raise OSError("disk is full")


def test_batches_submitted_together_are_applied_as_one_group_in_order(
    devices: Devices, counted: tuple[OnnxPipeline, list[int]]
) -> None:
    model = counted[0]
    ids = [devices.register(DeviceSettings())[0].id for _ in range(5)]
    night = nights(5)
    groups: list[int] = []
    add_batches = devices.add_batches

    def recorded(batches: list[tuple[str, BatchModel]]) -> list[BatchOutcome | Exception]:
        groups.append(len(batches))
        return add_batches(batches)

    devices.add_batches = recorded  # type: ignore[method-assign]
    published: list[tuple[str, list[EpochRecord]]] = []
    intake = Intake(devices, lambda d, results: published.append((d, list(results))))

    async def send_all() -> list[list[BatchOutcome | BaseException]]:
        answers = []
        for k in range(len(night[0])):
            sends = [
                intake.submit(d, BatchModel.model_validate(n[k]))
                for d, n in zip(ids, night, strict=True)
            ]
            again = intake.submit(ids[0], BatchModel.model_validate(night[0][k]))
            answers.append(await asyncio.gather(*sends, again, return_exceptions=True))
        return answers

    answers = asyncio.run(send_all())
    # Each round's six submissions were one group; the sixth (device 0's batch sent again
    # before its answer came) was applied after the first, in the same call.
    assert groups == [6] * len(night[0])
    assert all(isinstance(a, BatchOutcome) for round_ in answers for a in round_)
    assert [[a.duplicate for a in round_] for round_ in answers] == [  # type: ignore[union-attr]
        [False] * 5 + [True]
    ] * len(night[0])
    for device_id, batches in zip(ids, night, strict=True):
        expected = reference(model, batches)
        assert stored_results(devices, device_id) == expected
        pushed = [as_json(r) for d, results in published if d == device_id for r in results]
        assert pushed == expected


def test_a_device_whose_state_was_taken_with_another_model_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After an upgrade of the model, a device's stored state is not restored (it would be a
    500 for every batch): the device goes on from a fresh detector, and the log says so."""
    store = SQLiteStore(tmp_path / "store.sqlite3")
    old = Devices(store, OnnxPipeline.shipped())
    device_id = old.register(DeviceSettings())[0].id
    night = night_batches(SECONDS)
    for batch in night[:5]:
        old.add_batch(device_id, BatchModel.model_validate(batch))
    upgraded = OnnxPipeline.shipped()
    upgraded.model_id = "onnx-another-model"
    new = Devices(store, upgraded)
    outcome = new.add_batch(device_id, BatchModel.model_validate(night[5]))
    assert "taken with model onnx-" in caplog.text and "starts afresh" in caplog.text
    # A fresh detector given batch 6 alone: the same results.
    fresh = Devices(SQLiteStore(tmp_path / "fresh.sqlite3"), upgraded)
    other = fresh.register(DeviceSettings())[0].id
    expected = fresh.add_batch(other, BatchModel.model_validate({**night[5], "seq": 1}))
    assert [(r.start, r.p_sleep) for r in outcome.results] == [
        (r.start, r.p_sleep) for r in expected.results
    ]
    # A snapshot that is broken (not a model change) is still an error, never silently reset.
    store._db.execute(
        "UPDATE detector_state SET snapshot = ? WHERE device_id = ?", (b"PK", device_id)
    )
    with pytest.raises(RuntimeError, match="cannot be restored"):
        Devices(store, upgraded).add_batch(device_id, BatchModel.model_validate(night[6]))
