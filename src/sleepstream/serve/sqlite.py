"""The default store: one SQLite file (stdlib :mod:`sqlite3`), WAL mode, no setup.

Every write is a transaction committed with ``synchronous=FULL``, so what a method has
returned survives a crash of the process (and of the machine). The server's threads share two
connections, each under its lock: one writes (SQLite runs one writer at a time anyway), one
reads, so that looking up a token or a device's state never waits for a commit's disk sync
(in WAL mode a reader sees the last commit while the next one is written). The schema carries its
version (``PRAGMA user_version``). A file of an earlier version is upgraded in place, in one
transaction that only adds tables (version 1, from before groups, gains the tables of
groups, group tokens and memberships); a file of a later version, or of another program, is
refused, never altered.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleepstream.serve.store import (
    BatchCommit,
    Device,
    DeviceState,
    EpochRecord,
    Group,
    Joining,
    MemberState,
)
from sleepstream.serve.tokens import Grant, Role

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SCHEMA_V1 = """
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
GROUPS = """
CREATE TABLE groups (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE group_tokens (
    key TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    group_id TEXT NOT NULL REFERENCES groups(id),
    created REAL NOT NULL
);
CREATE TABLE memberships (
    group_id TEXT NOT NULL REFERENCES groups(id),
    device_id TEXT NOT NULL REFERENCES devices(id),
    joined REAL NOT NULL,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX memberships_by_joining ON memberships (group_id, joined);
"""
UPGRADES = (SCHEMA_V1, GROUPS)
"""The script that takes a file from version ``k`` to ``k + 1``, for each ``k`` from 0; only
ever appended to (a file's tables are those of every script up to its version)."""
_EPOCH_COLUMNS = (
    'start, "end", start_local, end_local, p_sleep, p_model, state, events, vetoed, '
    "late_samples, hr_samples, motion_seconds, seq"
)


class SQLiteStore:
    """A :class:`~sleepstream.serve.store.Store` in the SQLite file ``path``.

    The file and its tables are created on first use, and a file of an earlier schema
    version is upgraded (:data:`UPGRADES`). ``RuntimeError`` names the file when it is not
    an SQLite database, or holds a later schema version.

    Examples
    --------
    >>> store = SQLiteStore(":memory:")
    >>> store.device("nobody") is None
    True
    >>> store.close()
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise RuntimeError(f"{self.path}: cannot be used as the store ({error})") from None
        except RuntimeError:
            self._db.close()
            raise
        if self.path == ":memory:":  # one database per connection: read where it was written
            self._reader, self._read_lock = self._db, self._lock
        else:
            self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._reader.execute("PRAGMA busy_timeout = 10000")
            self._read_lock = threading.Lock()

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        if self._version() == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")  # the version is read again under the write lock
            version = self._version()
            if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise RuntimeError(
                    f"{self.path} is an SQLite database of something else (tables but no "
                    "sleepstream schema version); give another --db file"
                )
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has store schema version {version}; this sleepstream reads "
                    f"versions up to {SCHEMA_VERSION}"
                )
            for script in UPGRADES[version:SCHEMA_VERSION]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if version == 0:
            log.info("created the store %s", self.path)
        elif version < SCHEMA_VERSION:
            log.info(
                "upgraded the store %s from version %d to %d", self.path, version, SCHEMA_VERSION
            )

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    # -- devices and tokens -------------------------------------------------------------------
    def add_device(self, device: Device, grant: Grant) -> None:
        """Register ``device`` with its device token, and an empty detector state."""
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?)",
                (device.id, device.threshold, device.timezone, device.created),
            )
            db.execute("INSERT INTO detector_state VALUES (?, NULL, 0, NULL)", (device.id,))
            _insert_grant(db, grant)

    def device(self, device_id: str) -> Device | None:
        """The device, or ``None`` if unknown."""
        rows = self._query("SELECT * FROM devices WHERE id = ?", (device_id,))
        return Device(*rows[0]) if rows else None

    def add_grant(self, grant: Grant) -> None:
        """Store a token record (its device must exist)."""
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            _insert_grant(db, grant)

    def grant(self, key: str) -> Grant | None:
        """The token record with ``key`` (of a device, viewer or group token), or ``None``."""
        rows = self._query(
            "SELECT key, secret_hash, device_id, role, created, '' FROM tokens WHERE key = ? "
            "UNION ALL SELECT key, secret_hash, '', 'group', created, group_id "
            "FROM group_tokens WHERE key = ?",
            (key, key),
        )
        if not rows:
            return None
        key, secret_hash, device_id, role, created, group_id = rows[0]
        return Grant(key, bytes(secret_hash), device_id, Role(role), created, group_id)

    # -- detector state and results -----------------------------------------------------------
    def state(self, device_id: str) -> DeviceState:
        """The device's detector snapshot and last sequence number."""
        rows = self._query(
            "SELECT snapshot, last_seq FROM detector_state WHERE device_id = ?", (device_id,)
        )
        if not rows:
            raise KeyError(f"no detector state for device {device_id!r}")
        snapshot, last_seq = rows[0]
        return DeviceState(None if snapshot is None else bytes(snapshot), int(last_seq))

    def batch_digest(self, device_id: str, seq: int) -> bytes | None:
        """The digest of the applied batch ``seq`` of the device, or ``None``."""
        rows = self._query(
            "SELECT digest FROM batches WHERE device_id = ? AND seq = ?", (device_id, seq)
        )
        return bytes(rows[0][0]) if rows else None

    def commit_batches(self, commits: Sequence[BatchCommit]) -> list[bool]:
        """Durably store each batch, the snapshot after it and its results, in one transaction
        (one disk sync for all); each only if its device's last sequence number is ``seq - 1``.
        Returns, for each, whether it was stored."""
        stored = []
        now = time.time()
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            for c in commits:
                updated = db.execute(
                    "UPDATE detector_state SET snapshot = ?, last_seq = ?, updated = ? "
                    "WHERE device_id = ? AND last_seq = ?",
                    (c.snapshot, c.seq, now, c.device_id, c.seq - 1),
                )
                stored.append(updated.rowcount == 1)
                if not stored[-1]:
                    continue
                db.execute("INSERT INTO batches VALUES (?, ?, ?)", (c.device_id, c.seq, c.digest))
                db.executemany(
                    f"INSERT INTO epochs (device_id, {_EPOCH_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(c.device_id, *_epoch_row(r)) for r in c.results],
                )
        return stored

    def epochs(self, device_id: str, since: float, limit: int) -> list[EpochRecord]:
        """Up to ``limit`` results of the device that end after ``since``, oldest first."""
        rows = self._query(
            f'SELECT {_EPOCH_COLUMNS} FROM epochs WHERE device_id = ? AND "end" > ? '
            'ORDER BY "end" LIMIT ?',
            (device_id, since, limit),
        )
        return [_epoch(row) for row in rows]

    def last_epoch(self, device_id: str) -> EpochRecord | None:
        """The device's newest result, or ``None``."""
        rows = self._query(
            f"SELECT {_EPOCH_COLUMNS} FROM epochs WHERE device_id = ? ORDER BY start DESC LIMIT 1",
            (device_id,),
        )
        return _epoch(rows[0]) if rows else None

    # -- groups -------------------------------------------------------------------------------
    def add_group(self, group: Group, grant: Grant) -> None:
        """Create ``group``, without members, with its group token."""
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO groups VALUES (?, ?)", (group.id, group.created))
            db.execute(
                "INSERT INTO group_tokens VALUES (?, ?, ?, ?)",
                (grant.key, grant.secret_hash, group.id, grant.created),
            )

    def group(self, group_id: str) -> Group | None:
        """The group, or ``None`` if unknown."""
        rows = self._query("SELECT id, created FROM groups WHERE id = ?", (group_id,))
        return Group(*rows[0]) if rows else None

    def add_member(self, group_id: str, device_id: str, joined: float, max_members: int) -> Joining:
        """Make the device a member of the group, unless the group has ``max_members``
        already (counted in the same transaction). ``KeyError`` for an unknown group or
        device."""
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            for table, name in (("groups", group_id), ("devices", device_id)):
                if not db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (name,)).fetchone():
                    raise KeyError(f"unknown {table[:-1]} {name!r:.80}")
            if db.execute(
                "SELECT 1 FROM memberships WHERE group_id = ? AND device_id = ?",
                (group_id, device_id),
            ).fetchone():
                return Joining.ALREADY
            count = db.execute(
                "SELECT count(*) FROM memberships WHERE group_id = ?", (group_id,)
            ).fetchone()[0]
            if count >= max_members:
                return Joining.FULL
            db.execute("INSERT INTO memberships VALUES (?, ?, ?)", (group_id, device_id, joined))
        return Joining.JOINED

    def remove_member(self, group_id: str, device_id: str) -> bool:
        """The device leaves the group: whether it was a member."""
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            removed = db.execute(
                "DELETE FROM memberships WHERE group_id = ? AND device_id = ?",
                (group_id, device_id),
            )
        return removed.rowcount == 1

    def members(self, group_id: str) -> list[str]:
        """The ids of the group's members, in the order they joined."""
        rows = self._query(
            "SELECT device_id FROM memberships WHERE group_id = ? ORDER BY joined, device_id",
            (group_id,),
        )
        return [device_id for (device_id,) in rows]

    def member_states(self, group_id: str) -> list[MemberState]:
        """Each member of the group with its last sequence number and newest result, in the
        order they joined (one query)."""
        columns = ", ".join(f"e.{c.strip()}" for c in _EPOCH_COLUMNS.split(","))
        rows = self._query(
            f"SELECT m.device_id, m.joined, s.last_seq, {columns} FROM memberships m "
            "JOIN detector_state s ON s.device_id = m.device_id "
            "LEFT JOIN epochs e ON e.device_id = m.device_id AND e.start = "
            "(SELECT max(start) FROM epochs WHERE device_id = m.device_id) "
            "WHERE m.group_id = ? ORDER BY m.joined, m.device_id",
            (group_id,),
        )
        return [
            MemberState(row[0], row[1], int(row[2]), None if row[3] is None else _epoch(row[3:]))
            for row in rows
        ]

    def close(self) -> None:
        """Close the connections (everything acknowledged is already on disk)."""
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()


class _Transaction:
    """The lock, then a transaction the body opens (``BEGIN ...``): committed when the body
    returns, rolled back when it raises."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        return self._db

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self._lock.release()


def _insert_grant(db: sqlite3.Connection, grant: Grant) -> None:
    db.execute(
        "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
        (grant.key, grant.secret_hash, grant.device_id, str(grant.role), grant.created),
    )


def _epoch_row(r: EpochRecord) -> tuple[Any, ...]:
    return (
        r.start,
        r.end,
        r.start_local,
        r.end_local,
        r.p_sleep,
        r.p_model,
        r.state,
        json.dumps(list(r.events)),
        r.vetoed,
        json.dumps(r.late_samples, sort_keys=True),
        r.hr_samples,
        r.motion_seconds,
        r.seq,
    )


def _epoch(row: tuple[Any, ...]) -> EpochRecord:
    (start, end, start_local, end_local, p_sleep, p_model, state) = row[:7]
    events, vetoed, late, hr_samples, motion_seconds, seq = row[7:]
    return EpochRecord(
        start,
        end,
        start_local,
        end_local,
        None if p_sleep is None or math.isnan(p_sleep) else p_sleep,
        None if p_model is None or math.isnan(p_model) else p_model,
        state,
        tuple(json.loads(events)),
        vetoed,
        json.loads(late),
        hr_samples,
        motion_seconds,
        seq,
    )
