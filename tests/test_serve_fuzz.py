"""The service fuzzed from its own OpenAPI document (schemathesis), in process.

Two devices are registered and have results, each a member of its own group; every request is
made with a token of the first (its device token, its viewer token or its group's token), at
the first device's (or group's) URL, the second's, or a generated one. Every answer must be no
5xx, conform to the document (status, headers, body), and hold nothing of the second device
or its group: not their tokens, not the results, and not the device's id unless the request
named it. The second device's stored state is the same afterwards, and it is still a member
of its group.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_serve import T0, bearer, night_batches

from sleepstream.live.backends import OnnxPipeline
from sleepstream.serve.app import create_app
from sleepstream.serve.limits import RateLimits
from sleepstream.serve.sqlite import SQLiteStore

EXAMPLES = 40
"""Examples per operation and generation mode (the whole file runs in about 20 s)."""
NOTHING_TO_MAKE_INVALID = (
    "GET /health",
    "POST /devices/{device_id}/viewers",
    "POST /groups",
    "GET /groups/{group_id}",
    "PUT /devices/{device_id}/groups/{group_id}",
    "DELETE /devices/{device_id}/groups/{group_id}",
)
OTHER_ZONE = "Asia/Kathmandu"
"""The other device's time zone: its local times end in +05:45, which no other zone uses."""


@schemathesis.serializer("application/msgpack")
def _msgpack(context: schemathesis.SerializationContext, value: Any) -> bytes:
    return bytes(msgpack.packb(_within_64_bits(value)))


def _within_64_bits(value: Any) -> Any:
    """``value`` with integers that msgpack cannot hold as floats (as a client would send)."""
    if isinstance(value, dict):
        return {k: _within_64_bits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_within_64_bits(v) for v in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@dataclass
class World:
    """An app with two devices that have results: the fuzzed one (``mine``) and another."""

    app: FastAPI
    store: SQLiteStore
    mine: dict[str, str]
    my_viewer: str
    my_group: dict[str, str]
    other: dict[str, str]
    other_group: dict[str, str]
    secrets: list[str]
    """Text of the other device that no answer may hold (its id aside)."""


@pytest.fixture(scope="module")
def model() -> OnnxPipeline:
    return OnnxPipeline.shipped()


@pytest.fixture
def world(tmp_path: Path, model: OnnxPipeline) -> Iterator[World]:
    store = SQLiteStore(tmp_path / "fuzz.sqlite3")
    # No rate limits here: the fuzzer would spend its examples on 429 (tested in test_serve).
    app = create_app(store, model, rates=RateLimits(per_token=0, per_address=0))
    with TestClient(app) as client:
        mine = client.post("/devices", json={"timezone": "Europe/Berlin"}).json()
        other = client.post("/devices", json={"timezone": OTHER_ZONE}).json()
        my_viewer, other_viewer = (
            client.post(f"/devices/{d['device_id']}/viewers", headers=bearer(d["token"])).json()
            for d in (mine, other)
        )
        my_group, other_group = (client.post("/groups").json() for _ in range(2))
        for device, group in ((mine, my_group), (other, other_group)):
            url = f"/devices/{device['device_id']}/groups/{group['group_id']}"
            assert client.put(url, headers=bearer(device["token"])).status_code == 200
        their_results = []
        for device, days in ((mine, 0), (other, 3)):  # the other's night three days later
            for batch in night_batches(300.0):
                for stream in ("heart_rate", "acceleration"):
                    times = batch[stream]["times"]
                    batch[stream]["times"] = [t + days * 86400.0 for t in times]
                url = f"/devices/{device['device_id']}/batches"
                answer = client.post(url, json=batch, headers=bearer(device["token"]))
                assert answer.status_code == 200, answer.text
                if device is other:
                    their_results += answer.json()["results"]
    assert len(their_results) == 9 and their_results[0]["start_local"].endswith("+05:45")
    # Not its zone's name: a registration may choose it and hear it back.
    secrets = [other["token"], other_viewer["token"], other_viewer["viewer_id"], "+05:45"]
    secrets.append(other_group["token"])
    secrets += [json.dumps(r["start"]) for r in their_results]
    assert not any(json.dumps(T0 + k * 30.0) in secrets for k in range(20))
    yield World(app, store, mine, my_viewer["token"], my_group, other, other_group, secrets)
    store.close()


def operations() -> list[str]:
    """Every operation of the document (a new endpoint is fuzzed without being named here)."""
    store = SQLiteStore(":memory:")
    try:
        document = create_app(store, OnnxPipeline.shipped()).openapi()
    finally:
        store.close()
    return [f"{m.upper()} {path}" for path, item in document["paths"].items() for m in item]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", operations())
def test_the_api_fuzzed_from_its_schema(world: World, label: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.app)
    operation = schema.find_operation_by_label(label)
    assert operation is not None
    if mode is GenerationMode.NEGATIVE and label in NOTHING_TO_MAKE_INVALID:
        pytest.skip("nothing to make invalid: no body, no query, the ids are any text")
    other_id, my_id = world.other["device_id"], world.mine["device_id"]
    before = world.store.state(other_id), world.store.epochs(other_id, 0.0, 10_000)
    statuses: Counter[int] = Counter()

    other_group, my_group = world.other_group["group_id"], world.my_group["group_id"]

    def cases(
        token: str, device_id: str | None, group_id: str | None
    ) -> st.SearchStrategy[schemathesis.Case]:
        """Cases with this token, device and group (given: never made invalid); None:
        generated."""
        given = {"device_id": device_id, "group_id": group_id}
        path = {k: v for k, v in given.items() if v is not None and f"{{{k}}}" in label}
        return operation.as_strategy(
            mode,
            headers={"Authorization": f"Bearer {token}"},
            path_parameters=path or None,
        )

    mine = world.mine["token"]  # half of them the device's own, the one token that may write
    tokens = st.sampled_from([mine, mine, world.my_viewer, world.my_group["token"]])
    devices = st.sampled_from([my_id, my_id, other_id, None])  # half of them reach our device
    groups = st.sampled_from([my_group, my_group, other_group, None])

    @given(
        case=st.tuples(tokens, devices, groups).flatmap(lambda given: cases(*given)),
        data=st.data(),
    )
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: schemathesis.Case, data: st.DataObject) -> None:
        batch = (
            mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "seq" in case.body
        )
        next_seq = st.sampled_from([True, True, True, False])  # mostly the seq that follows
        if batch and data.draw(next_seq, label="next seq"):
            case.body["seq"] = world.store.state(my_id).last_seq + 1
        # Lengths, ranges and time order are the detector's to refuse (422): the schema
        # cannot say them, so a batch that fits the schema may yet be refused.
        excluded = [positive_data_acceptance] if "batches" in label else []
        answer = case.call_and_validate(excluded_checks=excluded)
        statuses[answer.status_code] += 1
        text = answer.content.decode("utf-8", "replace")
        leaked = [s for s in world.secrets if s in text]
        assert not leaked, f"{case.method} {case.formatted_path}: {answer.status_code} {text}"
        if other_id in text:
            assert other_id in case.formatted_path and answer.status_code == 403, text
        if other_group in text:  # its id, as the request named it; never its members
            assert other_group in case.formatted_path, text

    fuzz()
    assert world.store.state(other_id) == before[0]
    assert world.store.epochs(other_id, 0.0, 10_000) == before[1]
    assert other_id in world.store.members(other_group)
    assert statuses
    if mode is GenerationMode.POSITIVE:
        # Valid requests get past the tokens: accepted, or (batches) refused by the detector,
        # whose rules on lengths, ranges and time order the schema cannot state.
        passed = [s for s in statuses if 200 <= s < 300 or (s == 422 and "batches" in label)]
        assert passed, statuses
