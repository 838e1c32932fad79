"""Groups of the service: one group token follows many watches (docs/robustness.md, "The
service").

The stores (SQLite, and Redis against a real ``redis-server``), a version 1 SQLite file upgraded
in place, the subscribers' routing, the HTTP and WebSocket API, two apps on one Redis, and the
Python client against a real server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import test_serve_redis
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_serve import Batch, Json, Server, Service, bearer, night_batches, pushed
from test_serve_redis import EPOCHS, commit, registered

from sleepstream.client import Client, Message, ServiceError
from sleepstream.live.backends import OnnxPipeline
from sleepstream.serve.app import create_app
from sleepstream.serve.limits import RateLimits
from sleepstream.serve.redis_events import RedisEvents
from sleepstream.serve.redis_store import RedisStore
from sleepstream.serve.schema import Error, Limits
from sleepstream.serve.sqlite import SQLiteStore
from sleepstream.serve.store import Group, Joining, MemberState, Store
from sleepstream.serve.subscribers import Subscribers
from sleepstream.serve.tokens import Role, new_group_token

redis_url = test_serve_redis.redis_url
"""A private ``redis-server`` for this module (the fixture of ``test_serve_redis``)."""
open_store = test_serve_redis.open_store

V1_SCHEMA = """
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    threshold TEXT NOT NULL,
    timezone TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE tokens (
    key TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id),
    role TEXT NOT NULL CHECK (role IN ('device', 'viewer')),
    created REAL NOT NULL
);
CREATE TABLE detector_state (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    snapshot BLOB,
    last_seq INTEGER NOT NULL,
    updated REAL
);
CREATE TABLE batches (
    device_id TEXT NOT NULL REFERENCES devices(id),
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE epochs (
    device_id TEXT NOT NULL REFERENCES devices(id),
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    start_local TEXT NOT NULL,
    end_local TEXT NOT NULL,
    p_sleep REAL,
    p_model REAL,
    state TEXT NOT NULL,
    events TEXT NOT NULL,
    vetoed TEXT,
    late_samples TEXT NOT NULL,
    hr_samples INTEGER NOT NULL,
    motion_seconds REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, start)
);
CREATE INDEX epochs_by_end ON epochs (device_id, "end");
"""
"""The store's schema version 1 as released (before groups), written out here so that a change
to it in the code cannot go unnoticed."""


@pytest.fixture(scope="module")
def model() -> OnnxPipeline:
    return OnnxPipeline.shipped()


@pytest.fixture(scope="module")
def batches() -> list[Batch]:
    """Five minutes in 30 s batches."""
    return night_batches(300.0)


@pytest.fixture
def serve(tmp_path: Path, model: OnnxPipeline) -> Iterator[Callable[..., Service]]:
    """Start the app (in this process) over a fresh SQLite file; stopped after the test."""
    started: list[tuple[TestClient, SQLiteStore]] = []

    def start(limits: Limits | None = None, rates: RateLimits | None = None) -> Service:
        path = tmp_path / f"groups{len(started)}.sqlite3"
        store = SQLiteStore(path)
        client = TestClient(create_app(store, model, limits, rates))
        client.__enter__()
        started.append((client, store))
        return Service(client, store, path)

    yield start
    for client, store in started:
        client.__exit__(None, None, None)
        store.close()


def new_group(client: TestClient) -> tuple[str, str]:
    """A new group: its id and its token."""
    answer = client.post("/groups")
    assert answer.status_code == 201, answer.text
    return answer.json()["group_id"], answer.json()["token"]


def join(service: Service, device_id: str, headers: dict[str, str], group_id: str) -> Json:
    answer = service.client.put(f"/devices/{device_id}/groups/{group_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    body: Json = answer.json()
    return body


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1]


def refused_websocket(client: TestClient, url: str) -> int:
    """The close code of a WebSocket the server refuses before accepting it."""
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(url):
        pass
    return refused.value.code


# -- the stores --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_store_keeps_groups_their_tokens_and_members(
    kind: str, tmp_path: Path, open_store: Callable[[], RedisStore]
) -> None:
    store: Store = open_store() if kind == "redis" else SQLiteStore(tmp_path / "s.sqlite3")
    a, b, c = (registered(store) for _ in range(3))  # type: ignore[arg-type]
    token = new_group_token("g-1", 100.0)
    store.add_group(Group("g-1", 100.0), token.grant)
    store.add_group(Group("g-2", 101.0), new_group_token("g-2", 101.0).grant)
    assert store.group("g-1") == Group("g-1", 100.0) and store.group("g-3") is None
    assert store.grant(token.grant.key) == token.grant
    assert token.grant.role is Role.GROUP and token.grant.device_id == ""

    assert store.add_member("g-1", b.id, 200.0, 2) is Joining.JOINED
    assert store.add_member("g-1", a.id, 300.0, 2) is Joining.JOINED
    assert store.add_member("g-1", a.id, 400.0, 2) is Joining.ALREADY
    assert store.add_member("g-1", c.id, 500.0, 2) is Joining.FULL
    assert store.add_member("g-2", c.id, 500.0, 2) is Joining.JOINED
    for group_id, device_id in (("g-3", a.id), ("g-1", "nobody")):
        with pytest.raises(KeyError, match="unknown"):
            store.add_member(group_id, device_id, 0.0, 10)
    assert store.members("g-1") == [b.id, a.id] and store.members("g-3") == []

    commit(store, a.id, 1, b"d1", b"s1", EPOCHS)
    assert store.member_states("g-1") == [
        MemberState(b.id, 200.0, 0, None),
        MemberState(a.id, 300.0, 1, EPOCHS[-1]),
    ]
    assert store.remove_member("g-1", b.id) and not store.remove_member("g-1", b.id)
    assert store.members("g-1") == [a.id] and store.members("g-2") == [c.id]
    assert store.add_member("g-1", c.id, 600.0, 2) is Joining.JOINED
    if isinstance(store, RedisStore):
        # Each change of members is an entry of the event stream, after the results before it.
        entries = [fields for _, fields in store.redis.xrange(store.events)]
        changes = [
            (e[b"group"].decode(), e[b"member"].decode(), e[b"change"].decode())
            for e in entries
            if b"group" in e
        ]
        assert changes == [
            ("g-1", b.id, "join"),
            ("g-1", a.id, "join"),
            ("g-2", c.id, "join"),
            ("g-1", b.id, "leave"),
            ("g-1", c.id, "join"),
        ]
        assert b"device" in entries[3] and b"group" not in entries[3]  # a's batch
    else:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_devices_joining_at_once_never_pass_the_member_limit(
    kind: str, tmp_path: Path, open_store: Callable[[], RedisStore]
) -> None:
    stores: list[Store] = (
        [open_store() for _ in range(8)]
        if kind == "redis"
        else [SQLiteStore(tmp_path / "s.sqlite3") for _ in range(8)]
    )
    devices = [registered(stores[0]).id for _ in range(8)]  # type: ignore[arg-type]
    stores[0].add_group(Group("g", 0.0), new_group_token("g", 0.0).grant)
    start, outcomes = threading.Barrier(len(stores)), []

    def one(store: Store, device_id: str) -> None:
        start.wait()
        outcomes.append(store.add_member("g", device_id, 1.0, 5))

    threads = [
        threading.Thread(target=one, args=pair) for pair in zip(stores, devices, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == sorted([Joining.JOINED] * 5 + [Joining.FULL] * 3)
    assert len(stores[0].members("g")) == 5
    if kind == "sqlite":
        for store in stores:
            store.close()


def test_a_redis_written_before_groups_is_served_as_it_is(
    open_store: Callable[[], RedisStore],
) -> None:
    """Layout version 1 without group keys (as an earlier sleepstream left it) is read as it
    is: its devices and tokens work, and groups are added beside them."""
    store = open_store()
    device = registered(store)
    token = [k for k in store.redis.scan_iter(f"{store.prefix}token:*")]
    assert store.redis.get(f"{store.prefix}schema") == b"1" and len(token) == 1
    commit(store, device.id, 1, b"d1", b"s1", EPOCHS)
    assert not list(store.redis.scan_iter(f"{store.prefix}group*"))
    again = open_store()
    assert again.device(device.id) == device and again.last_epoch(device.id) == EPOCHS[-1]
    again.add_group(Group("g", 1.0), new_group_token("g", 1.0).grant)
    assert again.add_member("g", device.id, 2.0, 10) is Joining.JOINED
    assert again.member_states("g") == [MemberState(device.id, 2.0, 1, EPOCHS[-1])]


def _schema(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The tables and indexes of a database, their SQL with spaces evened out."""
    rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
    return sorted((kind, name, " ".join(sql.split())) for kind, name, sql in rows)


def a_version_1_file(path: Path, service_of: Callable[[Path], Service], night: list[Batch]) -> Json:
    """A store file as version 1 left it, with a device that sent ``night[:4]``: its id, token
    and results. Made by the current code, then taken back to version 1 (the tables of groups
    dropped), and checked to be exactly the version 1 schema."""
    service = service_of(path)
    device_id, headers = service.register(timezone="Europe/Berlin")
    for batch in night[:4]:
        assert service.send(device_id, headers, batch).status_code == 200
    made = {"device_id": device_id, "headers": headers}
    made["results"] = service.results(device_id, headers)
    service.store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            "DROP TABLE memberships; DROP TABLE group_tokens; DROP TABLE groups; "
            "PRAGMA user_version = 1;"
        )
        with contextlib.closing(sqlite3.connect(":memory:")) as v1:
            v1.executescript(V1_SCHEMA)
            assert _schema(db) == _schema(v1)
    return made


def test_a_version_1_sqlite_file_is_upgraded_in_place_and_keeps_its_devices(
    tmp_path: Path,
    model: OnnxPipeline,
    batches: list[Batch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "v1.sqlite3"
    clients: list[TestClient] = []

    def service_of(file: Path) -> Service:
        store = SQLiteStore(file)
        clients.append(TestClient(create_app(store, model)))
        return Service(clients[-1], store, file)

    old = a_version_1_file(path, service_of, batches)
    device_id, headers = old["device_id"], old["headers"]
    caplog.set_level(logging.INFO, logger="sleepstream.serve.sqlite")
    caplog.clear()
    service = service_of(path)  # opens the version 1 file: upgraded
    assert f"upgraded the store {path} from version 1 to 2" in caplog.text
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert {"groups", "group_tokens", "memberships", "devices", "epochs"} <= tables
    with service.client:
        # The device, its token, its results and its detector state are as they were.
        assert service.results(device_id, headers) == old["results"]
        again = service.send(device_id, headers, batches[3])
        assert again.json()["duplicate"] is True
        for batch in batches[4:]:
            assert service.send(device_id, headers, batch).status_code == 200
        assert len(service.results(device_id, headers)) > len(old["results"])
        group_id, group_token = new_group(service.client)
        join(service, device_id, headers, group_id)
        view = service.client.get(f"/groups/{group_id}", headers=bearer(group_token)).json()
    assert [m["device_id"] for m in view["members"]] == [device_id]
    assert view["members"][0]["last_seq"] == len(batches)
    service.store.close()
    caplog.clear()
    SQLiteStore(path).close()  # version 2 now: opened as it is
    assert "upgraded" not in caplog.text


def test_an_upgrade_that_fails_leaves_the_version_1_file_as_it_was(tmp_path: Path) -> None:
    """The upgrade is one transaction: a table in the way stops it, and none of the new
    tables, nor the new version number, is left behind."""
    path = tmp_path / "v1.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO devices VALUES ('d1', 'wasa93', 'UTC', 1.0)")
        db.execute("CREATE TABLE memberships (x)")  # created last by the upgrade: it fails there
        db.execute("PRAGMA user_version = 1")
        db.commit()
        before = _schema(db)
    with pytest.raises(RuntimeError, match=f"{re.escape(str(path))}: cannot be used as the store"):
        SQLiteStore(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert _schema(db) == before
        assert db.execute("SELECT id FROM devices").fetchall() == [("d1",)]


def test_a_sqlite_file_of_a_later_version_is_refused_and_not_altered(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(f"{V1_SCHEMA} PRAGMA user_version = 3;")
    with pytest.raises(RuntimeError, match="has store schema version 3; this sleepstream reads"):
        SQLiteStore(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert "groups" not in {n for (n,) in db.execute("SELECT name FROM sqlite_master")}


# -- subscribers -------------------------------------------------------------------------------
def test_a_group_subscription_gets_the_messages_of_its_members_only() -> None:
    async def scenario() -> tuple[list[object], list[object], bool]:
        subscribers = Subscribers()
        group, device = subscribers.subscribe_group("g"), subscribers.subscribe("x")
        subscribers.set_members("g", ["a", "b"])
        subscribers.set_members("g", ["c"])  # known already: a later reader changes nothing
        for device_id in ("a", "x", "c", "b"):
            subscribers.publish(device_id, [{"from": device_id}])
        subscribers.change_member("g", "x", joined=True)
        subscribers.change_member("g", "a", joined=False)
        for device_id in ("a", "x", "b"):
            subscribers.publish(device_id, [{"from": device_id}])
        got = [group.queue.get_nowait() for _ in range(group.queue.qsize())]
        own = [device.queue.get_nowait() for _ in range(device.queue.qsize())]
        subscribers.unsubscribe(group)
        subscribers.unsubscribe(device)
        return got, own, subscribers.wanted("b") or subscribers.watches_group("g")

    got, own, anything_left = asyncio.run(scenario())
    assert got == [
        {"from": "a"},
        {"from": "b"},
        {"type": "joined", "group_id": "g", "device_id": "x"},
        {"type": "left", "group_id": "g", "device_id": "a"},
        {"from": "x"},
        {"from": "b"},
    ]
    assert own == [{"from": "x"}, {"from": "x"}]
    assert not anything_left


@pytest.mark.parametrize("read", ["before the changes", "after the changes"])
def test_joins_and_leaves_before_the_members_are_read_are_applied_over_them(read: str) -> None:
    """A group's members are read from the store while joins and leaves come in: whether the
    store was read before or after them, the members are the same."""

    async def scenario() -> tuple[bool, bool, set[str]]:
        subscribers = Subscribers()
        subscriber = subscribers.subscribe_group("g")
        known_early = subscribers.members_known("g")
        subscribers.change_member("g", "new", joined=True)
        subscribers.change_member("g", "gone", joined=False)
        subscribers.change_member("g", "back", joined=False)
        subscribers.change_member("g", "back", joined=True)
        stored = ["old", "gone"] if read == "before the changes" else ["old", "new", "back"]
        subscribers.set_members("g", stored)
        for device_id in ("old", "new", "gone", "back", "other"):
            subscribers.publish(device_id, [{"from": device_id}])
        got = [subscriber.queue.get_nowait() for _ in range(subscriber.queue.qsize())]
        senders = {m["from"] for m in got if m is not None and "from" in m}
        return known_early, subscribers.members_known("g"), senders

    known_early, known, senders = asyncio.run(scenario())
    assert not known_early and known
    assert senders == {"old", "new", "back"}


def test_a_group_subscriber_that_falls_behind_is_cut_off_and_forgotten() -> None:
    async def scenario() -> tuple[list[object], bool, list[object]]:
        subscribers = Subscribers(max_queue=2, max_group_queue=4)
        slow = subscribers.subscribe_group("g")
        subscribers.set_members("g", ["a"])
        subscribers.publish("a", [{"n": n} for n in range(3)])  # over a device's limit only
        subscribers.publish("a", [{"n": n} for n in range(3, 6)])
        queued = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        subscribers.unsubscribe(slow)
        # After messages were lost (cut_off_all) a group's members are read again.
        other = subscribers.subscribe_group("h")
        subscribers.set_members("h", ["b"])
        subscribers.cut_off_all()
        again = subscribers.subscribe_group("h")
        subscribers.unsubscribe(other)  # the old subscription ends after the new one began
        subscribers.publish("b", [{"n": 0}])
        ends = [other.queue.get_nowait(), again.queue.qsize(), subscribers.members_known("h")]
        return queued, subscribers.wanted("a"), ends

    queued, still_wanted, ends = asyncio.run(scenario())
    assert queued == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}, None]
    assert not still_wanted
    assert ends == [None, 0, False]


# -- the API -----------------------------------------------------------------------------------
def test_a_device_joins_and_leaves_a_group_with_its_own_token(
    serve: Callable[..., Service], batches: list[Batch]
) -> None:
    service = serve()
    group_id, group_token = new_group(service.client)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", group_id)
    key = group_token.split(".")[0]
    grant = service.store.grant(key)
    assert grant is not None and grant.role is Role.GROUP and grant.group_id == group_id
    a, a_headers = service.register()
    b, b_headers = service.register()
    assert service.send(a, a_headers, batches[0]).status_code == 200
    assert service.send(a, a_headers, batches[1]).status_code == 200
    assert join(service, a, a_headers, group_id) == {
        "group_id": group_id,
        "device_id": a,
        "member": True,
    }
    assert join(service, a, a_headers, group_id)["member"]  # again: no change
    join(service, b, b_headers, group_id)
    view = service.client.get(f"/groups/{group_id}", headers=bearer(group_token))
    assert view.status_code == 200, view.text
    members = view.json()["members"]
    assert [m["device_id"] for m in members] == [a, b]
    newest = service.results(a, a_headers)[-1]
    assert members[0]["current"] == newest and members[0]["state"] == newest["state"]
    assert members[0]["last_seq"] == 2 and members[1]["current"] is None
    left = service.client.delete(f"/devices/{a}/groups/{group_id}", headers=a_headers)
    assert left.status_code == 200 and left.json()["member"] is False
    again = service.client.delete(f"/devices/{a}/groups/{group_id}", headers=a_headers)
    assert again.status_code == 200 and again.json()["member"] is False
    view = service.client.get(f"/groups/{group_id}", headers=bearer(group_token)).json()
    assert [m["device_id"] for m in view["members"]] == [b]
    for method in ("PUT", "DELETE"):
        unknown = service.client.request(method, f"/devices/{a}/groups/nothing", headers=a_headers)
        assert unknown.status_code == 404, unknown.text
        assert unknown.json() == {"detail": "unknown group nothing"}


@pytest.mark.timeout(60)
def test_the_group_websocket_sends_its_members_messages_in_order_and_nothing_else(
    serve: Callable[..., Service],
) -> None:
    """Members that join after the subscription opened are followed from their join; a
    member that left is not followed; a device that never joined is never heard of."""
    service = serve()
    group_id, group_token = new_group(service.client)
    names = ("a", "b", "c", "sentinel")
    ids, headers = {}, {}
    for name in names:
        ids[name], headers[name] = service.register()
    nights = {name: night_batches(600.0, seed=k) for k, name in enumerate(names)}
    sent = dict.fromkeys(names, 0)

    def send(name: str) -> list[Json]:
        batch = nights[name][sent[name]]
        sent[name] += 1
        answer = service.send(ids[name], headers[name], batch)
        assert answer.status_code == 200, answer.text
        results: list[Json] = answer.json()["results"]
        return results

    join(service, ids["a"], headers["a"], group_id)
    for _ in range(3):
        send("a")
    before = service.results(ids["a"], headers["a"])
    url = f"/groups/{group_id}/events?token={group_token}"
    with service.client.websocket_connect(url) as subscriber:
        state = subscriber.receive_json()
        expected: list[Json] = []
        for _ in range(3):
            expected += pushed(ids["a"], send("a"))
            send("c")  # not a member
        join(service, ids["b"], headers["b"], group_id)
        expected.append({"type": "joined", "group_id": group_id, "device_id": ids["b"]})
        for _ in range(4):
            expected += pushed(ids["b"], send("b"))
            expected += pushed(ids["a"], send("a"))
            send("c")
        service.client.delete(f"/devices/{ids['a']}/groups/{group_id}", headers=headers["a"])
        expected.append({"type": "left", "group_id": group_id, "device_id": ids["a"]})
        for _ in range(3):
            send("a")  # left: no longer followed
            expected += pushed(ids["b"], send("b"))
        join(service, ids["sentinel"], headers["sentinel"], group_id)
        expected.append({"type": "joined", "group_id": group_id, "device_id": ids["sentinel"]})
        received = [subscriber.receive_json() for _ in expected]
    assert state == {
        "type": "state",
        "group_id": group_id,
        "members": [
            {
                "device_id": ids["a"],
                "joined": state["members"][0]["joined"],
                "last_seq": 3,
                "state": before[-1]["state"],
                "current": before[-1],
            }
        ],
    }
    assert received == expected
    epochs = [m for m in received if m["type"] == "epoch"]
    assert len(epochs) >= 10 and {m["device_id"] for m in epochs} == {ids["a"], ids["b"]}
    assert ids["c"] not in str(received)


@pytest.mark.timeout(60)
def test_group_tokens_read_only_their_group_and_no_other_token_reads_a_group(
    serve: Callable[..., Service], batches: list[Batch]
) -> None:
    service = serve()
    group_id, group_token = new_group(service.client)
    other_group, other_token = new_group(service.client)
    device_id, headers = service.register()
    viewer = service.viewer(device_id, headers)
    other_id, other_headers = service.register()
    join(service, device_id, headers, group_id)
    member_of_group = bearer(group_token)
    for method, url, body in [
        ("GET", f"/devices/{device_id}", None),
        ("POST", f"/devices/{device_id}/batches", batches[0]),
        ("POST", f"/devices/{device_id}/viewers", None),
        ("PUT", f"/devices/{device_id}/groups/{group_id}", None),
        ("DELETE", f"/devices/{device_id}/groups/{group_id}", None),
    ]:
        answer = service.client.request(method, url, json=body, headers=member_of_group)
        assert answer.status_code == 403, (method, url, answer.text)
        assert answer.json() == {"detail": "a group token reads only its group (GET /groups/ID)"}
    for path in ("events", "batches"):
        url = f"/devices/{device_id}/{path}?token={group_token}"
        assert refused_websocket(service.client, url) == 1008
    for given in (headers, viewer, other_headers):
        answer = service.client.get(f"/groups/{group_id}", headers=given)
        assert answer.status_code == 403, answer.text
        assert answer.json() == {
            "detail": "a device or viewer token reads no group; this needs the group's token"
        }
        url = f"/groups/{group_id}/events?token={token_of(given)}"
        assert refused_websocket(service.client, url) == 1008
    answer = service.client.get(f"/groups/{group_id}", headers=bearer(other_token))
    assert answer.status_code == 403
    assert answer.json() == {"detail": f"this token is not for group {group_id}"}
    url = f"/groups/{group_id}/events?token={other_token}"
    assert refused_websocket(service.client, url) == 1008
    # Only the device's own token joins it, or takes it out.
    for given, detail in (
        (viewer, "a viewer token can only read; this needs the device's own token"),
        (other_headers, f"this token is not for device {device_id}"),
    ):
        for method, group in (("PUT", other_group), ("DELETE", group_id)):
            url = f"/devices/{device_id}/groups/{group}"
            answer = service.client.request(method, url, headers=given)
            assert answer.status_code == 403 and answer.json() == {"detail": detail}
    assert service.store.members(group_id) == [device_id]
    assert service.store.members(other_group) == []
    assert service.store.state(device_id).last_seq == 0
    assert other_id not in str(service.client.get(f"/groups/{group_id}", headers=member_of_group))


@pytest.mark.parametrize(
    "authorization", [None, "Bearer nonsense", "Bearer a.b", "Basic dXNlcjpwYXNz"]
)
def test_group_requests_without_a_valid_token_are_401(
    serve: Callable[..., Service], authorization: str | None
) -> None:
    service = serve()
    group_id, group_token = new_group(service.client)
    device_id, _ = service.register()
    wrong_secret = f"Bearer {group_token.split('.')[0]}.{'A' * 43}"
    for given in (authorization, wrong_secret):
        headers = {} if given is None else {"Authorization": given}
        for method, url in [
            ("GET", f"/groups/{group_id}"),
            ("PUT", f"/devices/{device_id}/groups/{group_id}"),
            ("DELETE", f"/devices/{device_id}/groups/{group_id}"),
        ]:
            answer = service.client.request(method, url, headers=headers)
            assert answer.status_code == 401, (method, url, answer.text)
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert refused_websocket(service.client, f"/groups/{group_id}/events?token=x.y") == 1008


def test_a_group_holds_at_most_max_members(serve: Callable[..., Service]) -> None:
    service = serve(Limits(max_members=2))
    group_id, group_token = new_group(service.client)
    devices = [service.register() for _ in range(3)]
    for device_id, headers in devices[:2]:
        join(service, device_id, headers, group_id)
    (first, first_headers), _, (third, third_headers) = devices
    url = f"/devices/{third}/groups/{group_id}"
    refused = service.client.put(url, headers=third_headers)
    assert refused.status_code == 409
    assert refused.json() == {"detail": f"group {group_id} has 2 members, the most it may have"}
    join(service, first, first_headers, group_id)  # a member joining again is not one more
    service.client.delete(f"/devices/{first}/groups/{group_id}", headers=first_headers)
    join(service, third, third_headers, group_id)
    view = service.client.get(f"/groups/{group_id}", headers=bearer(group_token)).json()
    assert [m["device_id"] for m in view["members"]] == [devices[1][0], third]


def test_groups_are_rate_limited_per_address_and_per_token(serve: Callable[..., Service]) -> None:
    service = serve(rates=RateLimits(per_token=60, token_burst=2, per_address=2, address_burst=2))
    group_id, group_token = new_group(service.client)
    assert service.client.post("/devices").status_code == 201
    refused = service.client.post("/groups")  # the address's third creation, of either kind
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert refused.json()["detail"].startswith("too many requests per address: at most 2")
    url, headers = f"/groups/{group_id}", bearer(group_token)
    answers = [service.client.get(url, headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[-1].headers["Retry-After"] == "1"
    events = f"/groups/{group_id}/events?token={group_token}"
    with pytest.raises(WebSocketDisconnect) as closed, service.client.websocket_connect(events):
        pass
    assert closed.value.code == 1013 and "retry after 1 s" in closed.value.reason


def test_openapi_documents_the_group_endpoints_and_their_refusals(
    serve: Callable[..., Service],
) -> None:
    document = serve().client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/Error"}

    def refusals(path: str, method: str) -> dict[int, object]:
        answers = document["paths"][path][method]["responses"]
        return {
            int(code): answer["content"]["application/json"]["schema"]
            for code, answer in answers.items()
            if code.startswith("4")
        }

    membership = "/devices/{device_id}/groups/{group_id}"
    assert refusals("/groups", "post") == {429: error}
    assert refusals("/groups/{group_id}", "get") == dict.fromkeys([401, 403, 422, 429], error)
    assert refusals(membership, "put") == dict.fromkeys([401, 403, 404, 409, 422, 429], error)
    assert refusals(membership, "delete") == dict.fromkeys([401, 403, 404, 422, 429], error)
    put = document["paths"][membership]["put"]["responses"]
    assert put["409"]["description"] == "the group has the most members it may have"
    assert put["404"]["description"] == "no such group"
    forbidden = document["paths"]["/groups/{group_id}"]["get"]["responses"]["403"]
    assert "reads no group" in forbidden["description"]
    assert "WS /groups/{group_id}/events?token=TOKEN" in document["info"]["description"]
    schemas = document["components"]["schemas"]
    assert {"GroupCreated", "GroupView", "MemberView", "Membership"} <= set(schemas)
    Error.model_validate({"detail": "unknown group x"})


# -- two apps on one Redis ---------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_group_subscriber_on_one_app_gets_a_member_posting_to_another(
    open_store: Callable[[], RedisStore], model: OnnxPipeline, redis_url: str
) -> None:
    stores = [open_store(), open_store()]
    apps = [create_app(s, model, broker=RedisEvents(redis_url, s)) for s in stores]
    night = night_batches(600.0, batch_seconds=60.0, seed=4)
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        group_id, group_token = new_group(first)
        member, stranger, sentinel = (second.post("/devices").json() for _ in range(3))

        def post(device: Json, batch: Batch) -> list[Json]:
            url = f"/devices/{device['device_id']}/batches"
            answer = second.post(url, json=batch, headers=bearer(device["token"]))
            assert answer.status_code == 200, answer.text
            results: list[Json] = answer.json()["results"]
            return results

        def membership(client: TestClient, method: str, device: Json) -> None:
            url = f"/devices/{device['device_id']}/groups/{group_id}"
            answer = client.request(method, url, headers=bearer(device["token"]))
            assert answer.status_code == 200, answer.text

        with first.websocket_connect(f"/groups/{group_id}/events?token={group_token}") as ws:
            assert ws.receive_json() == {"type": "state", "group_id": group_id, "members": []}
            membership(second, "PUT", member)  # joins on the other process
            expected: list[Json] = [
                {"type": "joined", "group_id": group_id, "device_id": member["device_id"]}
            ]
            for batch in night[:6]:
                expected += pushed(member["device_id"], post(member, batch))
                post(stranger, batch)
            membership(second, "DELETE", member)
            expected.append(
                {"type": "left", "group_id": group_id, "device_id": member["device_id"]}
            )
            for batch in night[6:]:
                post(member, batch)  # left: not followed
            membership(first, "PUT", sentinel)
            expected.append(
                {"type": "joined", "group_id": group_id, "device_id": sentinel["device_id"]}
            )
            received = [ws.receive_json() for _ in expected]
        view = second.get(f"/groups/{group_id}", headers=bearer(group_token)).json()
    assert received == expected
    assert sum(m["type"] == "epoch" for m in received) >= 5
    assert [m["device_id"] for m in view["members"]] == [sentinel["device_id"]]


# -- the client, against a real server ---------------------------------------------------------
@pytest.mark.timeout(90)
def test_the_client_creates_joins_reads_and_follows_a_group(tmp_path: Path) -> None:
    server = Server(tmp_path / "client.sqlite3", tmp_path / "client.log")
    night = night_batches(600.0, batch_seconds=60.0, seed=5)

    async def scenario() -> tuple[list[Message], list[Json], Json, list[int]]:
        async with Client(server.url, timeout=10) as client:
            group = await client.create_group()
            a, b, stranger = [await client.register() for _ in range(3)]
            await client.join(a.device_id, a.token, group.group_id)
            received: list[Message] = []

            async def follow() -> None:
                async for message in client.group_events(group.group_id, group.token):
                    received.append(message)

            reader = asyncio.create_task(follow())
            while not received:
                await asyncio.sleep(0.02)
            joined = await client.join(b.device_id, b.token, group.group_id)
            acked: list[Json] = []
            for batch in night:
                for device in (a, b, stranger):
                    ack = await client.send(device.device_id, device.token, batch)
                    if device is not stranger:
                        acked += [r.model_dump(mode="json") for r in ack.results]
            left = await client.leave(a.device_id, a.token, group.group_id)
            while sum(m["type"] in ("epoch", "left") for m in received) < len(acked) + 1:
                await asyncio.sleep(0.02)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            view = await client.group(group.group_id, group.token)
            statuses = []
            for call in (
                client.join(a.device_id, a.token, "no-such-group"),
                client.group(group.group_id, a.token),
                client.join(a.device_id, b.token, group.group_id),
                _first(client.group_events(group.group_id, a.token)),
            ):
                with pytest.raises(ServiceError) as refused:
                    await call
                statuses.append(refused.value.status)
            summary = {
                "joined": joined.member,
                "left": left.member,
                "members": [m.device_id for m in view.members],
                "b": b.device_id,
                "stranger": stranger.device_id,
            }
            return received, acked, summary, statuses

    try:
        received, acked, summary, statuses = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        server.stop()
    assert received[0]["type"] == "state" and len(received[0]["members"]) == 1
    epochs = [m["result"] for m in received if m["type"] == "epoch"]
    assert sorted(epochs, key=lambda r: (r["start"], r["seq"])) == sorted(
        acked, key=lambda r: (r["start"], r["seq"])
    )
    assert len(epochs) >= 15
    assert summary["stranger"] not in str(received)
    assert summary["joined"] is True and summary["left"] is False
    assert summary["members"] == [summary["b"]]
    assert statuses == [404, 403, 403, 403]
    assert "Traceback" not in (tmp_path / "client.log").read_text()


async def _first(messages: AsyncIterator[Message]) -> None:
    async for _ in messages:
        return
