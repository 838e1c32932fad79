"""The service (``sleepstream serve``): API, tokens, batches, limits, subscribers, and a real
server process killed mid-night (docs/robustness.md, "The service")."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from sleepstream.cli import main
from sleepstream.live import state
from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.detector import SleepDetector
from sleepstream.serve.app import create_app
from sleepstream.serve.feed import record
from sleepstream.serve.limits import RateLimits, TokenBuckets
from sleepstream.serve.schema import EpochOut, Error, Limits
from sleepstream.serve.sqlite import SQLiteStore
from sleepstream.serve.subscribers import Subscribers
from sleepstream.signal import synthetic

T0 = 1_767_308_400.0
"""2026-01-01 23:00 UTC."""
README = Path(__file__).parents[1] / "README.md"
Batch = dict[str, Any]
Json = dict[str, Any]


@pytest.fixture(scope="module")
def model() -> OnnxPipeline:
    return OnnxPipeline.shipped()


def night_batches(seconds: float, batch_seconds: float = 30.0, seed: int = 0) -> list[Batch]:
    """A generated night as a watch sends it: 50 Hz acceleration (x, y, z in g) and heart
    rate every 5 s, Unix times, in batches numbered from 1."""
    t, z = synthetic.generate("night", seconds, rate=50.0, seed=seed)
    xyz = synthetic.as_xyz(z, seed)
    hr_t = np.arange(0.0, seconds, 5.0)
    bpm = 66 - 10 * np.minimum(hr_t / 1800.0, 1) + 3 * np.sin(hr_t / 500.0)
    batches = []
    for k, lo in enumerate(np.arange(0.0, seconds, batch_seconds)):
        a = (t >= lo) & (t < lo + batch_seconds)
        h = (hr_t >= lo) & (hr_t < lo + batch_seconds)
        batches.append(
            {
                "seq": k + 1,
                "heart_rate": {"times": (T0 + hr_t[h]).tolist(), "bpm": bpm[h].tolist()},
                "acceleration": {"times": (T0 + t[a]).tolist(), "xyz": xyz[a].tolist()},
            }
        )
    return batches


def reference(
    model: OnnxPipeline, batches: list[Batch], threshold: str = "wasa93", timezone: str = "UTC"
) -> list[Json]:
    """The results of a plain detector fed the same batches, each one second at a time."""
    detector = SleepDetector(model, threshold=threshold, timezone=timezone)
    out = []
    for batch in batches:
        hr_t, bpm = (np.array(batch["heart_rate"][k]) for k in ("times", "bpm"))
        acc_t, xyz = (np.array(batch["acceleration"][k]) for k in ("times", "xyz"))
        for second in np.unique(np.floor(np.concatenate([hr_t, acc_t]))):
            h, a = (hr_t >= second) & (hr_t < second + 1), (acc_t >= second) & (acc_t < second + 1)
            results = detector.add_heart_rate(hr_t[h], bpm[h])
            results += detector.add_acceleration(acc_t[a], xyz[a])
            out += [as_json(record(r, batch["seq"])) for r in results]
    return out


def pushed(device_id: str, results: list[Json]) -> list[Json]:
    """The messages a subscriber gets for ``results``: an epoch, then its events."""
    out: list[Json] = []
    for result in results:
        out.append({"type": "epoch", "device_id": device_id, "result": result})
        out += [
            {
                "type": "event",
                "device_id": device_id,
                "event": event,
                "time": result["end"],
                "time_local": result["end_local"],
                "seq": result["seq"],
            }
            for event in result["events"]
        ]
    return out


def as_json(value: object) -> Json:
    return EpochOut.model_validate(value).model_dump(mode="json")


class Service:
    """An app over a fresh SQLite store, with a test client."""

    def __init__(self, client: TestClient, store: SQLiteStore, path: Path):
        self.client, self.store, self.path = client, store, path

    def register(self, **settings: str) -> tuple[str, dict[str, str]]:
        answer = self.client.post("/devices", json=settings)
        assert answer.status_code == 201, answer.text
        return answer.json()["device_id"], bearer(answer.json()["token"])

    def viewer(self, device_id: str, headers: dict[str, str]) -> dict[str, str]:
        answer = self.client.post(f"/devices/{device_id}/viewers", headers=headers)
        assert answer.status_code == 201, answer.text
        return bearer(answer.json()["token"])

    def send(
        self, device_id: str, headers: dict[str, str], batch: Batch, packed: bool = False
    ) -> httpx.Response:
        url = f"/devices/{device_id}/batches"
        if packed:
            body = msgpack.packb(batch)
            kind = {"Content-Type": "application/msgpack"}
            return self.client.post(url, content=body, headers={**headers, **kind})
        return self.client.post(url, json=batch, headers=headers)

    def results(self, device_id: str, headers: dict[str, str]) -> list[Json]:
        answer = self.client.get(f"/devices/{device_id}", params={"since": 0}, headers=headers)
        assert answer.status_code == 200, answer.text
        results: list[Json] = answer.json()["results"]
        return results


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def serve(tmp_path: Path, model: OnnxPipeline) -> Iterator[Callable[..., Service]]:
    """Start the app (in this process) with the given limits; stopped after the test."""
    stack: list[tuple[TestClient, SQLiteStore]] = []

    def start(
        limits: Limits | None = None,
        raise_server_exceptions: bool = True,
        rates: RateLimits | None = None,
    ) -> Service:
        path = tmp_path / f"serve{len(stack)}.sqlite3"
        store = SQLiteStore(path)
        app = create_app(store, model, limits, rates)
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        stack.append((client, store))
        return Service(client, store, path)

    yield start
    for client, store in stack:
        client.__exit__(None, None, None)
        store.close()


@pytest.fixture
def service(serve: Callable[..., Service]) -> Service:
    return serve()


@pytest.fixture(scope="module")
def batches() -> list[Batch]:
    """Ten minutes in 30 s batches."""
    return night_batches(600.0)


# -- tokens ------------------------------------------------------------------------------------
def test_tokens_are_random_and_stored_only_as_a_hash(service: Service) -> None:
    answers = [service.client.post("/devices").json() for _ in range(2)]
    assert answers[0]["token"] != answers[1]["token"]
    assert answers[0]["device_id"] != answers[1]["device_id"]
    key, secret = answers[0]["token"].split(".")
    assert len(secret) >= 43  # 32 random bytes
    grant = service.store.grant(key)
    assert grant is not None and grant.device_id == answers[0]["device_id"]
    assert grant.secret_hash == hashlib.sha256(secret.encode()).digest()
    service.store.close()
    stored = b"".join(p.read_bytes() for p in service.path.parent.glob("serve0.sqlite3*"))
    assert secret.encode() not in stored
    assert answers[0]["timezone"] == "UTC" and answers[0]["threshold"] == "wasa93"


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer nonsense", "Bearer a.b", "Bearer x" * 100],
)
def test_requests_without_a_valid_token_are_401(
    service: Service, batches: list[Batch], authorization: str | None
) -> None:
    device_id, headers = service.register()
    key = headers["Authorization"].split()[1].split(".")[0]
    wrong_secret = {"Authorization": f"Bearer {key}.{'A' * 43}"}
    for given in ({} if authorization is None else {"Authorization": authorization}, wrong_secret):
        for method, url in [
            ("POST", f"/devices/{device_id}/batches"),
            ("POST", f"/devices/{device_id}/viewers"),
            ("GET", f"/devices/{device_id}"),
        ]:
            answer = service.client.request(method, url, json=batches[0], headers=given)
            assert answer.status_code == 401, (method, url, answer.text)
            assert answer.json() == {
                "detail": "a valid token is needed (Authorization: Bearer TOKEN)"
            }
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert service.store.state(device_id).last_seq == 0


def test_another_devices_token_is_refused(service: Service, batches: list[Batch]) -> None:
    mine, my_headers = service.register()
    theirs, their_headers = service.register()
    their_viewer = service.viewer(theirs, their_headers)
    for headers in (their_headers, their_viewer):
        for answer in (
            service.send(mine, headers, batches[0]),
            service.client.get(f"/devices/{mine}", headers=headers),
            service.client.post(f"/devices/{mine}/viewers", headers=headers),
        ):
            assert answer.status_code == 403, answer.text
            assert answer.json() == {"detail": f"this token is not for device {mine}"}
    assert service.store.state(mine).last_seq == 0
    assert service.client.get("/devices/unknown", headers=my_headers).status_code == 403


def test_a_viewer_reads_but_cannot_write(service: Service, batches: list[Batch]) -> None:
    device_id, headers = service.register(timezone="Europe/Berlin")
    viewer = service.viewer(device_id, headers)
    assert service.send(device_id, headers, batches[0]).status_code == 200
    for answer in (
        service.send(device_id, viewer, batches[1]),
        service.client.post(f"/devices/{device_id}/viewers", headers=viewer),
    ):
        assert answer.status_code == 403
        assert answer.json()["detail"].startswith("a viewer token can only read")
    view = service.client.get(f"/devices/{device_id}", headers=viewer)
    assert view.status_code == 200
    assert view.json()["last_seq"] == 1 and view.json()["timezone"] == "Europe/Berlin"


# -- batches -----------------------------------------------------------------------------------
def test_batches_in_json_and_msgpack_give_the_results_of_a_plain_detector(
    service: Service, model: OnnxPipeline, batches: list[Batch]
) -> None:
    device_id, headers = service.register(threshold="wasa95", timezone="America/New_York")
    acknowledged = []
    for batch in batches:
        answer = service.send(device_id, headers, batch, packed=batch["seq"] % 2 == 0)
        assert answer.status_code == 200, answer.text
        assert answer.json()["seq"] == batch["seq"] and not answer.json()["duplicate"]
        acknowledged += answer.json()["results"]
        # Acknowledged means committed: another connection to the file sees it.
        with sqlite3.connect(service.path) as other:
            stored = other.execute("SELECT last_seq FROM detector_state").fetchone()[0]
        assert stored == batch["seq"]
    expected = reference(model, batches, "wasa95", "America/New_York")
    assert len(expected) == 19
    assert acknowledged == expected
    assert service.results(device_id, headers) == expected
    view = service.client.get(f"/devices/{device_id}", headers=headers).json()
    assert view["current"] == expected[-1] and view["state"] == expected[-1]["state"]
    assert expected[0]["start_local"] == "2026-01-01T18:00:00-05:00"
    assert any(r["events"] for r in expected)
    snapshot = service.store.state(device_id).snapshot
    assert snapshot is not None and snapshot.startswith(b"PK")  # an .npz, never a pickle
    assert state.unpack(snapshot)[0]["settings"]["timezone"] == "America/New_York"


def test_a_batch_sent_again_is_a_duplicate_and_a_gap_in_seq_is_409(
    service: Service, model: OnnxPipeline, batches: list[Batch]
) -> None:
    device_id, headers = service.register()
    for batch in batches[:4]:
        assert service.send(device_id, headers, batch).status_code == 200
    for seq in (1, 3, 4):  # as JSON or msgpack: the same samples
        again = service.send(device_id, headers, batches[seq - 1], packed=seq == 3)
        assert again.status_code == 200
        assert again.json() == {"seq": seq, "duplicate": True, "last_seq": 4, "results": []}
    skipped = service.send(device_id, headers, batches[5])
    assert skipped.status_code == 409
    assert skipped.json() == {
        "detail": "batch 6 does not follow the last stored batch 4: send batch 5 first"
    }
    other = {**batches[2], "heart_rate": {"times": [T0 + 60.0], "bpm": [70.0]}}
    contradicting = service.send(device_id, headers, other)
    assert contradicting.status_code == 409
    assert "batch 3 was already stored with other samples" in contradicting.json()["detail"]
    for batch in batches[4:]:
        assert service.send(device_id, headers, batch).status_code == 200
    assert service.results(device_id, headers) == reference(model, batches)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"heart_rate": {"times": [T0 + 55.0], "bpm": [300.0]}}, "heart rate 300 bpm at t="),
        ({"heart_rate": {"times": [T0 * 1000], "bpm": [60.0]}}, "looks like milliseconds"),
        (
            {"heart_rate": {"times": [T0 + 35.0, T0 + 31.0], "bpm": [60.0, 60.0]}},
            "heart rate: time goes backwards at index 1",
        ),
        (
            {
                "acceleration": {
                    "times": [T0 + 30.0 + k / 5 for k in range(70)],
                    "xyz": [[0.0, 0.6, -0.8]] * 70,
                }
            },
            "acceleration at about 5 Hz: the counts need at least 10 Hz",
        ),
        ({"counts": {"times": [T0 + 30.0], "counts": [-1.0]}}, "activity count -1 at t="),
    ],
)
def test_bad_samples_are_422_with_the_detectors_message_and_nothing_is_stored(
    service: Service, model: OnnxPipeline, batches: list[Batch], bad: Batch, message: str
) -> None:
    device_id, headers = service.register()
    assert service.send(device_id, headers, batches[0]).status_code == 200
    before = service.store.state(device_id)
    # Good samples of the batch come first, so the detector has taken part of it.
    mixed = {**batches[1], **bad}
    if "heart_rate" in bad:
        mixed["acceleration"] = batches[1]["acceleration"]
    answer = service.send(device_id, headers, mixed)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]
    assert service.store.state(device_id) == before
    assert service.results(device_id, headers) == reference(model, batches[:1])
    for batch in batches[1:]:
        assert service.send(device_id, headers, batch).status_code == 200
    assert service.results(device_id, headers) == reference(model, batches)


def test_a_device_sends_its_batches_over_one_websocket(
    serve: Callable[..., Service], model: OnnxPipeline, batches: list[Batch]
) -> None:
    service = serve()
    answer = service.client.post("/devices").json()
    device_id, token = answer["device_id"], answer["token"]
    url = f"/devices/{device_id}/batches?token={token}"
    acknowledged: list[Json] = []
    with service.client.websocket_connect(url) as ws:
        for batch in batches:
            if batch["seq"] % 2:
                ws.send_bytes(msgpack.packb(batch))
            else:
                ws.send_text(json.dumps(batch))
            ack = ws.receive_json()
            assert (ack["type"], ack["seq"], ack["duplicate"]) == ("ack", batch["seq"], False)
            acknowledged += ack["results"]
        # Refusals are answered with the status a POST would get; the connection stays.
        ws.send_bytes(msgpack.packb(batches[0]))
        assert ws.receive_json()["duplicate"] is True
        ws.send_bytes(msgpack.packb({**batches[0], "seq": len(batches) + 5}))
        refused = ws.receive_json()
        assert (refused["type"], refused["status"]) == ("error", 409)
        assert f"send batch {len(batches) + 1} first" in refused["detail"]
        ws.send_bytes(b"\xc1 not msgpack")
        assert ws.receive_json()["status"] == 400
        ws.send_text('{"seq": 1, "heart_rate": {"times": [1], "bpm": ["fast"]}}')
        invalid = ws.receive_json()
        assert invalid["status"] == 422 and invalid["detail"][0]["loc"][:3] == [
            "body",
            "heart_rate",
            "bpm",
        ]
        ws.send_text(json.dumps({"seq": len(batches) + 1}))
        assert ws.receive_json()["type"] == "ack"
    expected = reference(model, batches)
    assert (
        acknowledged == expected == service.results(device_id, {"Authorization": f"Bearer {token}"})
    )


@pytest.mark.parametrize("who", ["viewer", "other device", "nobody"])
def test_only_the_devices_own_token_may_send_batches_over_a_websocket(
    service: Service, who: str
) -> None:
    device_id, headers = service.register()
    _, other_headers = service.register()
    token = {
        "viewer": service.viewer(device_id, headers)["Authorization"].split()[1],
        "other device": other_headers["Authorization"].split()[1],
        "nobody": "a.b",
    }[who]
    url = f"/devices/{device_id}/batches?token={token}"
    with pytest.raises(WebSocketDisconnect) as refused, service.client.websocket_connect(url) as ws:
        ws.receive_json()
    assert refused.value.code == 1008
    assert service.store.state(device_id).last_seq == 0


def test_a_failed_commit_is_a_500_that_stores_nothing(
    serve: Callable[..., Service],
    model: OnnxPipeline,
    batches: list[Batch],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = serve(raise_server_exceptions=False)
    device_id, headers = service.register()
    assert service.send(device_id, headers, batches[0]).status_code == 200

    def disk_full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(service.store, "commit_batches", disk_full)
        failed = service.send(device_id, headers, batches[1])
    assert failed.status_code == 500
    assert failed.json() == {"detail": "internal error; nothing was stored"}
    assert service.store.state(device_id).last_seq == 1
    for batch in batches[1:]:
        assert service.send(device_id, headers, batch).status_code == 200
    assert service.results(device_id, headers) == reference(model, batches)


def test_the_night_so_far_comes_in_pages(
    serve: Callable[..., Service], model: OnnxPipeline, batches: list[Batch]
) -> None:
    service = serve(Limits(max_results=5))
    device_id, headers = service.register()
    empty = service.client.get(f"/devices/{device_id}", headers=headers).json()
    assert (empty["state"], empty["current"], empty["results"]) == (None, None, [])
    for batch in batches:
        assert service.send(device_id, headers, batch).status_code == 200
    expected, pages, since = reference(model, batches), [], 0.0
    while True:
        page = service.client.get(
            f"/devices/{device_id}", params={"since": since}, headers=headers
        ).json()
        pages.append(page["results"])
        if not page["more"]:
            break
        since = page["results"][-1]["end"]
    assert [len(p) for p in pages] == [5, 5, 5, 4]
    assert [r for page in pages for r in page] == expected
    latest = service.client.get(f"/devices/{device_id}", headers=headers).json()
    assert latest["results"] == expected[:5] and latest["current"] == expected[-1]
    for since in ("nan", "inf", "yesterday"):
        answer = service.client.get(
            f"/devices/{device_id}", params={"since": since}, headers=headers
        )
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == [
            "query",
            "since",
        ]


# -- limits and malformed requests -------------------------------------------------------------
def test_bodies_and_batches_over_the_limits_are_413(
    serve: Callable[..., Service], batches: list[Batch]
) -> None:
    service = serve(Limits(max_body_bytes=200_000, max_samples=1000))
    device_id, headers = service.register()
    url = f"/devices/{device_id}/batches"
    big = json.dumps({**batches[0], "pad": "x" * 300_000}).encode()
    declared = service.client.post(url, content=big, headers=headers)
    assert declared.status_code == 413
    assert declared.json() == {"detail": "the body is over 200000 bytes"}
    streamed = service.client.post(
        url, content=iter([big[:150_000], big[150_000:]]), headers=headers
    )
    assert streamed.status_code == 413 and "Content-Length" not in streamed.request.headers
    assert service.client.post("/devices", content=big).status_code == 413
    too_many = service.send(device_id, headers, batches[0])  # 1500 + 6 samples
    assert too_many.status_code == 413
    assert too_many.json() == {"detail": "1506 samples in one batch; at most 1000"}
    assert service.store.state(device_id).last_seq == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status", "detail"),
    [
        (b'{"seq": 1,', "application/json", 400, "the body is not JSON"),
        (b"\xc1", "application/msgpack", 400, "the body is not msgpack"),
        (b"\x91" * 5000, "application/msgpack", 400, "the body is not msgpack: StackError"),
        (b"seq=1", "text/plain", 415, "Content-Type 'text/plain' is not one of"),
        (b'{"seq": 0}', "application/json", 422, "greater than or equal to 1"),
        (b'{"seq": "1"}', "application/json", 422, "valid integer"),
        (b'{"seq": 1, "heartrate": {}}', "application/json", 422, "Extra inputs"),
        (b'{"seq": 1, "counts": {"times": [1e9], "counts": [NaN]}}', None, 422, "finite number"),
        (b'{"seq": 1, "counts": {"times": ["1e9"], "counts": [1]}}', None, 422, "valid number"),
        (
            b'{"seq": 1, "heart_rate": {"times": [1e9, 2e9], "bpm": [60]}}',
            None,
            422,
            "heart_rate: 2 times but 1 values",
        ),
        (b'{"seq": 1, "acceleration": {"times": [1e9], "xyz": [[0, 1]]}}', None, 422, "at least 3"),
        (
            b'{"seq": 1, "context": [{"time": 1e9, "activity": "flying"}]}',
            None,
            422,
            "unknown activity 'flying'",
        ),
    ],
)
def test_malformed_batches_are_4xx_with_a_json_detail(
    service: Service, body: bytes, content_type: str | None, status: int, detail: str
) -> None:
    device_id, headers = service.register()
    kind = {"Content-Type": content_type} if content_type else {}
    answer = service.client.post(
        f"/devices/{device_id}/batches", content=body, headers={**headers, **kind}
    )
    assert answer.status_code == status, answer.text
    assert detail in json.dumps(answer.json()["detail"])
    assert service.store.state(device_id).last_seq == 0


def test_validation_errors_do_not_echo_the_input(service: Service) -> None:
    device_id, headers = service.register()
    batch = {"seq": 1, "heart_rate": {"times": [T0 + k for k in range(5000)], "bpm": [60.0]}}
    answer = service.send(device_id, headers, batch, packed=True)
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": [
            {
                "loc": ["body", "heart_rate"],
                "msg": "Value error, heart_rate: 5000 times but 1 values",
                "type": "value_error",
            }
        ]
    }


@pytest.mark.parametrize(
    ("settings", "detail"),
    [
        ({"threshold": "best"}, "threshold 'best' is not one of the model's ['operating', "),
        ({"timezone": "../../etc/passwd"}, "unknown time zone '../../etc/passwd'"),
        ({"timezone": "Europe/Berln"}, "unknown time zone 'Europe/Berln'"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_device_settings_are_422(service: Service, settings: Json, detail: str) -> None:
    answer = service.client.post("/devices", json=settings)
    assert answer.status_code == 422
    assert detail in json.dumps(answer.json()["detail"])


def test_unknown_paths_and_methods_answer_json(service: Service) -> None:
    assert service.client.get("/nowhere").json() == {"detail": "Not Found"}
    assert service.client.delete("/devices").status_code == 405
    assert service.client.get("/health").json() == {"status": "ok"}


def test_openapi_documents_both_batch_forms(service: Service) -> None:
    document = service.client.get("/openapi.json").json()
    body = document["paths"]["/devices/{device_id}/batches"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "application/msgpack"}
    schemas = document["components"]["schemas"]
    assert {"Batch", "HeartRate", "Acceleration", "Counts", "Context"} <= set(schemas)
    assert schemas["Batch"]["properties"]["heart_rate"]["anyOf"][0] == {
        "$ref": "#/components/schemas/HeartRate"
    }
    assert service.client.get("/docs").status_code == 200


def test_a_registration_body_that_is_not_text_is_400(service: Service) -> None:
    """Found by the fuzzing (tests/test_serve_fuzz.py): an answer the document did not list."""
    kind = {"Content-Type": "application/json"}
    answer = service.client.post("/devices", content=b"\xff\xfe{", headers=kind)
    assert answer.status_code == 400
    assert answer.json() == {"detail": "There was an error parsing the body"}


def test_openapi_lists_the_settings_a_device_may_choose(
    service: Service, model: OnnxPipeline
) -> None:
    """Found by the fuzzing: any text was documented for both, and refused unless known."""
    document = service.client.get("/openapi.json").json()
    settings = document["components"]["schemas"]["DeviceSettings"]["properties"]
    assert settings["threshold"]["enum"] == sorted(model.thresholds)
    zones = settings["timezone"]["enum"]
    assert {"UTC", "Europe/Berlin", "America/New_York"} <= set(zones)
    assert "../../etc/passwd" not in zones and len(zones) > 300
    for zone in ("Asia/Kathmandu", zones[-1]):
        assert service.client.post("/devices", json={"timezone": zone}).status_code == 201
    assert "WS /devices/{device_id}/events" in document["info"]["description"]


def test_openapi_documents_every_refusal(serve: Callable[..., Service]) -> None:
    """Found by the fuzzing: 400, 401, 403, 409, 413, 415 and 429 were not in the document,
    and 422 was documented as a list of field errors where the detector's is a message."""
    service = serve(Limits(max_samples=1), rates=RateLimits(per_token=60, token_burst=4))
    document = service.client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/Error"}
    documented = {
        f"{method.upper()} {path}": {
            int(code): answer["content"]["application/json"]["schema"]
            for code, answer in operation["responses"].items()
            if code.startswith("4")
        }
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert documented == {
        "GET /health": {},
        "POST /devices": dict.fromkeys([400, 413, 422, 429], error),
        "POST /devices/{device_id}/batches": dict.fromkeys(
            [400, 401, 403, 409, 413, 415, 422, 429], error
        ),
        "POST /devices/{device_id}/viewers": dict.fromkeys([401, 403, 422, 429], error),
        "GET /devices/{device_id}": dict.fromkeys([401, 403, 422, 429], error),
        "PUT /devices/{device_id}/groups/{group_id}": dict.fromkeys(
            [401, 403, 404, 409, 422, 429], error
        ),
        "DELETE /devices/{device_id}/groups/{group_id}": dict.fromkeys(
            [401, 403, 404, 422, 429], error
        ),
        "POST /groups": {429: error},
        "GET /groups/{group_id}": dict.fromkeys([401, 403, 422, 429], error),
    }
    batches = document["paths"]["/devices/{device_id}/batches"]["post"]["responses"]
    assert batches["429"]["headers"]["Retry-After"]["required"]
    device_id, headers = service.register()
    url = f"/devices/{device_id}/batches"
    answers = [service.client.post(url, json={"seq": 1})]
    for body in (
        {"seq": 1, "counts": {"times": [1e9], "counts": [1.0, 2.0]}},  # field errors
        {"seq": 1, "counts": {"times": [1.7e9], "counts": [-1.0]}},  # the detector's message
        {"seq": 1, "counts": {"times": [1.7e9, 1.7e9 + 15], "counts": [1.0, 1.0]}},
        {"seq": 5},
        {"seq": 1},
    ):
        answers.append(service.client.post(url, json=body, headers=headers))
    assert [a.status_code for a in answers] == [401, 422, 422, 413, 409, 429]
    for answer in answers:
        Error.model_validate(answer.json())
    assert isinstance(answers[1].json()["detail"], list)
    assert isinstance(answers[2].json()["detail"], str)


# -- rate limits -------------------------------------------------------------------------------
def test_a_token_over_its_rate_is_429_with_retry_after(
    serve: Callable[..., Service], batches: list[Batch]
) -> None:
    service = serve(rates=RateLimits(per_token=60, token_burst=3))
    device_id, headers = service.register()
    viewer = service.viewer(device_id, headers)
    assert service.send(device_id, headers, batches[0]).status_code == 200
    assert service.client.get(f"/devices/{device_id}", headers=headers).status_code == 200
    refused = service.send(device_id, headers, batches[1])
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json() == {
        "detail": "too many requests per token: at most 60 a minute, 3 at once; retry after 1 s"
    }
    assert service.store.state(device_id).last_seq == 1  # refused before it was read
    assert service.client.get(f"/devices/{device_id}", headers=viewer).status_code == 200
    other_id, other = service.register()
    assert service.send(other_id, other, batches[0]).status_code == 200
    url = f"/devices/{device_id}/events?token={headers['Authorization'].split()[1]}"
    with pytest.raises(WebSocketDisconnect) as closed, service.client.websocket_connect(url):
        pass
    assert closed.value.code == 1013 and "retry after 1 s" in closed.value.reason
    time.sleep(1.0)
    assert service.send(device_id, headers, batches[1]).status_code == 200
    assert service.send(device_id, headers, batches[2]).status_code == 429


def test_registrations_per_address_are_limited(serve: Callable[..., Service]) -> None:
    service = serve(rates=RateLimits(per_address=2, address_burst=2))
    assert [service.client.post("/devices").status_code for _ in range(2)] == [201, 201]
    for body in ({}, {"timezone": "nowhere"}):  # counted before the body is read
        refused = service.client.post("/devices", json=body)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
        assert refused.json()["detail"].startswith("too many requests per address: at most 2")
    unlimited = serve(rates=RateLimits(per_address=0))
    assert {unlimited.client.post("/devices").status_code for _ in range(40)} == {201}


def test_the_default_rates_let_a_watch_send_every_second_and_catch_up() -> None:
    now = [0.0]
    defaults = RateLimits()
    buckets = TokenBuckets(defaults.per_token, defaults.token_burst, clock=lambda: now[0])
    for second in range(3600):  # a batch every second for an hour, a GET every 10 s
        now[0] = float(second)
        assert buckets.take("watch") == 0.0
        if second % 10 == 0:
            assert buckets.take("watch") == 0.0
    now[0] += 600.0  # ten minutes offline: 100 buffered batches at once
    assert [buckets.take("watch") for _ in range(100)] == [0.0] * 100
    assert buckets.take("watch") == pytest.approx(0.2)  # then 5 a second


def test_token_buckets_refill_at_their_rate_and_memory_stays_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(per_minute=120, burst=4, max_keys=1000, clock=lambda: now[0])
    taken = 0
    for step in range(600):  # 60 s of a request every 0.1 s: the burst, then 2 a second
        now[0] = step / 10
        taken += buckets.take("busy") == 0.0
    assert taken == 4 + 2 * 59 + 1
    for key in range(5000):  # more keys than kept: the least recently used are dropped
        buckets.take(f"client {key}")
    assert len(buckets) == 1000
    now[0] += 2.0  # every bucket full again after burst / rate: all dropped
    buckets.take("late")
    assert len(buckets) == 1
    with pytest.raises(ValueError, match="rate limit: -1 requests a minute; expected 0 or more"):
        RateLimits(per_token=-1)
    with pytest.raises(ValueError, match="0 registrations at once per address; expected 1"):
        RateLimits(address_burst=0)


# -- subscribers -------------------------------------------------------------------------------
def test_a_subscriber_receives_every_epoch_and_event(
    service: Service, batches: list[Batch]
) -> None:
    device_id, headers = service.register()
    viewer = service.viewer(device_id, headers)["Authorization"].split()[1]
    assert service.send(device_id, headers, batches[0]).status_code == 200
    url = f"/devices/{device_id}/events?token={viewer}"
    sent = []
    with service.client.websocket_connect(url) as socket_:
        hello = socket_.receive_json()
        assert hello == {"type": "state", "device_id": device_id, "last_seq": 1, "current": None}
        for batch in batches[1:]:
            sent += service.send(device_id, headers, batch).json()["results"]
        expected = pushed(device_id, sent)
        received = [socket_.receive_json() for _ in expected]
    assert received == expected
    events = [m["event"] for m in received if m["type"] == "event"]
    assert "fell_asleep" in events


def test_a_subscriber_that_falls_behind_is_cut_off() -> None:
    async def scenario() -> tuple[list[object], int]:
        subscribers = Subscribers(max_queue=3)
        slow, other = subscribers.subscribe("a"), subscribers.subscribe("b")
        subscribers.publish("a", [{"n": n} for n in range(5)])
        subscribers.publish("a", [{"n": 5}])
        queued = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        subscribers.unsubscribe(slow)
        subscribers.unsubscribe(slow)
        return queued, other.queue.qsize() + subscribers.count("a")

    queued, left = asyncio.run(scenario())
    assert queued == [{"n": 0}, {"n": 1}, {"n": 2}, None]
    assert left == 0


def test_a_subscriber_that_stops_reading_is_cut_off_after_max_lag() -> None:
    """A subscriber that takes no message for ``max_lag`` seconds while some wait is cut off at
    the next publish, however few are queued; one that keeps taking is never cut off."""

    async def scenario() -> tuple[list[object], list[object]]:
        now = [0.0]
        subscribers = Subscribers(max_queue=1000, max_lag=60.0, clock=lambda: now[0])
        stalled, reading = subscribers.subscribe("a"), subscribers.subscribe("a")
        taken = []
        for n in range(10):
            subscribers.publish("a", [{"n": n}])
            taken.append(await reading.take(subscribers.clock))
            now[0] += 30.0  # one epoch a minute, 20 minutes late at the end
        queued = [stalled.queue.get_nowait() for _ in range(stalled.queue.qsize())]
        return taken, queued

    taken, queued = asyncio.run(scenario())
    assert taken == [{"n": n} for n in range(10)]
    # 0 at t=0 s, 1 at 30 s, 2 at 60 s; at 90 s the oldest has waited 90 s > 60 s: cut off
    assert queued == [{"n": 0}, {"n": 1}, {"n": 2}, None]


@pytest.mark.parametrize("token", ["", "nonsense", "other device"])
def test_a_subscriber_without_a_valid_token_is_refused(service: Service, token: str) -> None:
    device_id, _ = service.register()
    if token == "other device":
        token = service.register()[1]["Authorization"].split()[1]
    url = f"/devices/{device_id}/events?token={token}"
    with pytest.raises(WebSocketDisconnect) as refused, service.client.websocket_connect(url):
        pass
    assert refused.value.code == 1008


# -- the command -------------------------------------------------------------------------------
def test_serve_refuses_a_db_that_is_not_a_store(tmp_path: Path) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database\n" * 100)
    assert main(["serve", "--port", "9", "--db", str(not_sqlite)]) == 1
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    assert main(["serve", "--port", "9", "--db", str(foreign)]) == 1
    assert main(["serve", "--port", "9", "--db", str(tmp_path)]) == 2


@pytest.mark.parametrize("option", [["--rate", "-1"], ["--rate", "nan"], ["--register-burst", "0"]])
def test_serve_refuses_bad_rate_limits(
    tmp_path: Path, option: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "unused.sqlite3"
    assert main(["serve", "--port", "9", "--db", str(db), *option]) == 1
    assert "rate limit: " in caplog.text and not db.exists()


# -- a real server, killed mid-night ----------------------------------------------------------
class Server:
    """``sleepstream serve`` in a child process on 127.0.0.1."""

    def __init__(self, db: Path, log: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "sleepstream.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--db", str(db)]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited: {log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"the server did not answer within 60 s: {log.read_text()}")

    def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(how)
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=15)


@pytest.mark.timeout(180)
def test_a_server_killed_mid_night_loses_nothing(tmp_path: Path, model: OnnxPipeline) -> None:
    """SIGKILL mid-night (one batch in flight), restart on the same file, resend the last
    batches: the results are those of an uninterrupted run, and a subscriber sees the rest."""
    night = night_batches(2 * 3600.0, batch_seconds=60.0, seed=3)
    settings = {"threshold": "wasa95", "timezone": "Europe/Berlin"}
    db, killed_at = tmp_path / "night.sqlite3", 70
    servers = [Server(db, tmp_path / "first.log")]
    try:
        with httpx.Client(base_url=servers[0].url, timeout=30) as client:
            device = client.post("/devices", json=settings).json()
            headers = bearer(device["token"])
            viewer = client.post(f"/devices/{device['device_id']}/viewers", headers=headers)
            url = f"/devices/{device['device_id']}/batches"

            def send(client: httpx.Client, batch: Batch) -> httpx.Response:
                if batch["seq"] % 2:
                    return client.post(url, json=batch, headers=headers)
                kind = {"Content-Type": "application/msgpack"}
                return client.post(url, content=msgpack.packb(batch), headers={**headers, **kind})

            for batch in night[:killed_at]:
                assert send(client, batch).status_code == 200

            def in_flight() -> None:
                with contextlib.suppress(httpx.TransportError):
                    send(client, night[killed_at])  # killed before it answers: resent later

            sender = threading.Thread(target=in_flight)
            sender.start()
            time.sleep(0.01)
            assert servers[0].stop(signal.SIGKILL) == -signal.SIGKILL
            sender.join(timeout=30)

        servers.append(Server(db, tmp_path / "second.log"))
        with httpx.Client(base_url=servers[1].url, timeout=30) as client:
            stored = client.get(f"/devices/{device['device_id']}", headers=headers).json()
            assert stored["last_seq"] in (killed_at, killed_at + 1)
            token = viewer.json()["token"]  # tokens survive the restart
            events_url = f"ws://127.0.0.1:{servers[1].port}/devices/{device['device_id']}/events"
            with ws_connect(f"{events_url}?token={token}", open_timeout=10) as subscriber:
                hello = json.loads(subscriber.recv(timeout=10))
                assert hello["type"] == "state" and hello["last_seq"] == stored["last_seq"]
                duplicates = 0
                for batch in night[killed_at - 5 :]:
                    answer = send(client, batch)
                    assert answer.status_code == 200, answer.text
                    duplicates += answer.json()["duplicate"]
                assert duplicates == stored["last_seq"] - (killed_at - 5)
                results = client.get(
                    f"/devices/{device['device_id']}", params={"since": 0}, headers=headers
                ).json()["results"]
                new = [r for r in results if r["seq"] > stored["last_seq"]]
                pushed: list[Json] = []
                while len(pushed) < len(new):
                    message = json.loads(subscriber.recv(timeout=10))
                    if message["type"] == "epoch":
                        pushed.append(message["result"])
    finally:
        for server in servers:
            server.stop()
    expected = reference(model, night, **settings)
    assert len(expected) >= 235
    assert results == expected
    assert pushed == new and new[-1]["seq"] == len(night)
    assert sum(len(r["events"]) for r in expected) >= 2


@pytest.mark.timeout(120)
def test_the_readme_service_example_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both README blocks against a real server (on a free port instead of 8000)."""
    text = README.read_text()
    start = text.index("## Serving many watches")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    server = Server(tmp_path / "readme.sqlite3", tmp_path / "readme.log")
    try:
        port = f"127.0.0.1:{server.port}"
        blocks = [block.replace("127.0.0.1:8000", port) for block in blocks]
        namespace: dict[str, Any] = {}
        exec(compile(blocks[0], str(README), "exec"), namespace)  # the project's own README
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 10 and lines[0].startswith("2026-01-02T00:00:00+01:00 ")
        assert lines[-1] == "asleep 9 epochs so far"
        printed: list[tuple[object, ...]] = []
        subscriber = threading.Thread(
            target=_run_quietly,
            args=(blocks[1], {**namespace, "print": lambda *a: printed.append(a)}),
        )
        subscriber.start()
        for seq in range(11, 31):  # the wearer gets up: heart rate 90, moving
            if printed:
                break
            time.sleep(0.2)
            moving = T0 + 300.0 + 30 * (seq - 11) + np.arange(0.0, 30.0, 0.02)
            batch = {
                "seq": seq,
                "heart_rate": {"times": moving[::250].tolist(), "bpm": [90.0] * 6},
                "acceleration": {
                    "times": moving.tolist(),
                    "xyz": [[0.0, 0.6, -0.8 + 0.3 * math.sin(k)] for k in range(1500)],
                },
            }
            url = f"{server.url}/devices/{namespace['device']['device_id']}/batches"
            httpx.post(url, json=batch, headers=namespace["watch"]).raise_for_status()
    finally:
        server.stop()
    subscriber.join(timeout=30)
    assert printed and printed[0][1] == "woke_up"


def _run_quietly(code: str, namespace: dict[str, Any]) -> None:
    """Run ``code`` until the server closes its connection."""
    with contextlib.suppress(ConnectionClosed):
        exec(compile(code, str(README), "exec"), namespace)
