"""Groups of the service: one group token follows many watches (docs/robustness.md, "The
service").

The stores (SQLite, and Redis against a real ``redis-server``), a version 1 SQLite file upgraded
in place, the subscribers' routing, the HTTP and WebSocket API, two apps on one Redis, and the
Python client against a real server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import test_serve_redis
from test_serve_redis import EPOCHS, commit, registered

from sleepstream.serve.redis_store import RedisStore
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
