"""A store in Redis, for several server processes (``sleepstream serve --redis URL``).

Every server process that is given the same Redis sees the same devices, tokens, detector
states and results, so a device may send each batch to any of them. The rule of
:class:`~sleepstream.serve.store.Store` holds across processes: each batch of
:meth:`RedisStore.commit_batches` is one Lua script, which Redis runs alone, that checks the
device's last sequence number and writes the snapshot, the batch's digest, its results and the
new sequence number, or writes nothing (the scripts of the batches that arrived together go in
one pipelined round trip). Of two processes that apply the same batch, only the first commits;
the other is told its batch was not stored.

The same script appends the batch's results to one Redis stream (:attr:`RedisStore.events`),
so every process reads each device's results in the order they were committed, each exactly
once (:mod:`sleepstream.serve.redis_events` passes them to its subscribers). The stream keeps
the last ``max_events`` batches, enough for a process to catch up after a short loss of its
connection.

Keys (``PREFIX`` is ``sleepstream:`` unless told otherwise):

=================================  ==========  ================================================
key                                type        holds
=================================  ==========  ================================================
``PREFIX schema``                  string      the layout version, :data:`SCHEMA_VERSION`
``PREFIX device:ID``               hash        ``threshold``, ``timezone``, ``created``
``PREFIX token:KEY``               hash        ``secret_hash`` (SHA-256), ``device_id``, ``role``,
                                               ``created``
``PREFIX state:ID``                hash        ``snapshot`` (detector snapshot bytes, never a
                                               pickle), ``last_seq``, ``updated``
``PREFIX batches:ID``              hash        batch ``seq`` to its SHA-256 digest
``PREFIX epochs:ID``               sorted set  each result as JSON, scored by its end
``PREFIX events``                  stream      ``device`` and ``results`` (JSON) per batch;
                                               ``group``, ``member`` and ``change`` (``join``
                                               or ``leave``) per change of a group's members
``PREFIX group:ID``                hash        ``created``
``PREFIX group_token:KEY``         hash        ``secret_hash`` (SHA-256), ``group_id``,
                                               ``created``
``PREFIX members:ID``              sorted set  the group's member device ids, scored by the
                                               time they joined
=================================  ==========  ================================================

Groups came after layout version 1 without changing it: their keys are new keys, so a Redis
written before them is read as it is (it has no groups), and a process of an earlier
sleepstream on the same Redis never reads them (it finds no group tokens, and passes over the
stream entries without a ``device`` field). Joining and leaving are scripts too, which write
the membership and append the change to the event stream together, so every process learns of
a member's arrival before any of its results that follow.

What Redis has acknowledged survives a crash of the server processes. That it survives a crash
of Redis itself is Redis's configuration: ``appendonly yes`` with ``appendfsync always`` for
every acknowledged batch (``everysec`` loses up to a second); a Redis that keeps its data only
in memory is logged as a warning when the store opens.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

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

SCHEMA_VERSION = 1
PREFIX = "sleepstream:"
MAX_EVENTS = 10_000
"""Batches of results the event stream keeps (about 5 min of 1000 watches' 30 s batches)."""
MIN_REDIS = (7, 0)
"""Scripts declare themselves writers (``#!lua``), which Redis 7 understands."""
TIMEOUT_SECONDS = 5.0
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What device ids and token keys are made of (:func:`secrets.token_urlsafe`)."""

_ADD_DEVICE = """#!lua
-- KEYS: device, state, token; ARGV: threshold, timezone, created, grant fields
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'threshold', ARGV[1], 'timezone', ARGV[2], 'created', ARGV[3])
redis.call('HSET', KEYS[2], 'last_seq', '0')
redis.call('HSET', KEYS[3], 'secret_hash', ARGV[4], 'device_id', ARGV[5], 'role', ARGV[6],
           'created', ARGV[7])
return 1
"""
_ADD_GRANT = """#!lua
-- KEYS: device, token; ARGV: grant fields
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], 'secret_hash', ARGV[1], 'device_id', ARGV[2], 'role', ARGV[3],
           'created', ARGV[4])
return 1
"""
_COMMIT_BATCH = """#!lua
-- KEYS: state, batches, epochs, events
-- ARGV: seq, seq - 1, digest, snapshot, updated, device id, results JSON, max events,
--       then end and JSON of each result
if redis.call('HGET', KEYS[1], 'last_seq') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[4], 'last_seq', ARGV[1], 'updated', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
for i = 9, #ARGV, 2 do
  redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i + 1])
end
if #ARGV > 8 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'device', ARGV[6],
             'results', ARGV[7])
end
return 1
"""


_ADD_GROUP = """#!lua
-- KEYS: group, group token; ARGV: created, secret hash, group id, token created
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'created', ARGV[1])
redis.call('HSET', KEYS[2], 'secret_hash', ARGV[2], 'group_id', ARGV[3], 'created', ARGV[4])
return 1
"""
_ADD_MEMBER = """#!lua
-- KEYS: group, device, members, events; ARGV: group id, device id, joined, max members,
-- max events. Returns -1 unknown group, -2 unknown device, 0 full, 1 already, 2 joined.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return -2
end
if redis.call('ZSCORE', KEYS[3], ARGV[2]) then
  return 1
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'group', ARGV[1], 'member', ARGV[2],
           'change', 'join')
return 2
"""
_REMOVE_MEMBER = """#!lua
-- KEYS: members, events; ARGV: group id, device id, max events
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'group', ARGV[1], 'member', ARGV[2],
           'change', 'leave')
return 1
"""
_JOINING = (Joining.FULL, Joining.ALREADY, Joining.JOINED)
"""What the answers 0, 1, 2 of the joining script mean."""
MEMBERS_AT_ONCE = 1000
"""Members whose state one round trip reads."""

_TAKE = """
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local full_at = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now) + interval
local wait = full_at - burst * interval - now
if wait > 0 then
  return tostring(wait)
end
redis.call('SET', KEYS[1], tostring(full_at), 'PX', math.ceil((full_at - now) * 1000) + 1)
return '0'
"""


class RedisBuckets:
    """The token buckets of :class:`~sleepstream.serve.limits.TokenBuckets`, kept in Redis
    under ``prefix`` so that every server process counts a key's requests together.

    Each bucket is one key holding the time it will be full again (on the Redis server's
    clock), expiring then; a script takes a request, so two processes never both take the
    last one.
    """

    def __init__(self, store: RedisStore, name: str, per_minute: float, burst: int):
        self.per_minute, self.burst = per_minute, burst
        self._redis, self._prefix = store.redis, f"{store.prefix}rate:{name}:"
        self._take = store.redis.register_script(_TAKE)

    def take(self, key: str) -> float:
        """Take one request from the bucket of ``key``: 0.0 when there was one, else the
        seconds until there will be (nothing taken)."""
        if self.per_minute <= 0:
            return 0.0
        args = [repr(60.0 / self.per_minute), str(self.burst)]
        return float(self._take(keys=[self._prefix + key], args=args))


class RedisStore:
    """A :class:`~sleepstream.serve.store.Store` in the Redis at ``url``, shared by every
    server process given the same ``url`` and ``prefix``.

    Parameters
    ----------
    url
        ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
        ``unix://path``.
    prefix
        Start of every key (several services, or tests, may share one Redis).
    max_events
        Batches of results kept in the event stream.

    ``RuntimeError`` names the Redis (without its password) when it cannot be reached, is
    older than Redis 7, or holds another layout version under ``prefix``.

    Examples
    --------
    >>> RedisStore("http://127.0.0.1:6379")
    Traceback (most recent call last):
    ...
    RuntimeError: --redis http://127.0.0.1:6379 is not a Redis URL: expected redis://HOST:PORT/DB, rediss://... or unix://PATH
    """

    def __init__(self, url: str, prefix: str = PREFIX, max_events: int = MAX_EVENTS):
        self.where = redacted(url)
        self.prefix = prefix
        self.max_events = max_events
        self.events = f"{prefix}events"
        """The stream every commit appends its results to."""
        try:
            self.redis = redis.Redis.from_url(
                url,
                socket_timeout=TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS,
                retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=3),
            )
        except ValueError:
            raise RuntimeError(
                f"--redis {self.where} is not a Redis URL: expected redis://HOST:PORT/DB, "
                "rediss://... or unix://PATH"
            ) from None
        self._add_device = self.redis.register_script(_ADD_DEVICE)
        self._add_grant = self.redis.register_script(_ADD_GRANT)
        self._commit = self.redis.register_script(_COMMIT_BATCH)
        self._add_group = self.redis.register_script(_ADD_GROUP)
        self._add_member = self.redis.register_script(_ADD_MEMBER)
        self._remove_member = self.redis.register_script(_REMOVE_MEMBER)
        try:
            self._setup()
        except redis.RedisError as error:
            self.redis.close()
            raise RuntimeError(
                f"Redis at {self.where} cannot be used as the store: {error}"
            ) from None
        except RuntimeError:
            self.redis.close()
            raise

    def _setup(self) -> None:
        info: dict[str, Any] = self.redis.info("server")
        version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
        if version < MIN_REDIS:
            raise RuntimeError(
                f"Redis at {self.where} is version {info['redis_version']}; the store needs "
                f"{'.'.join(map(str, MIN_REDIS))} or newer"
            )
        key = f"{self.prefix}schema"
        self.redis.set(key, SCHEMA_VERSION, nx=True)
        stored = _text(self.redis.get(key))
        if stored != str(SCHEMA_VERSION):
            raise RuntimeError(
                f"Redis at {self.where} holds store layout version {stored} under {key!r}; "
                f"this sleepstream reads version {SCHEMA_VERSION}"
            )
        self._warn_if_volatile()

    def _warn_if_volatile(self) -> None:
        """Log a warning when Redis keeps acknowledged batches only in memory."""
        try:
            appendonly = self.redis.config_get("appendonly").get("appendonly")
        except redis.ResponseError:  # CONFIG refused (managed Redis): nothing to tell
            return
        if _text(appendonly) != "yes":
            log.warning(
                "Redis at %s has appendonly off: acknowledged batches are lost if Redis "
                "restarts (start it with --appendonly yes --appendfsync always)",
                self.where,
            )

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    # -- devices and tokens -------------------------------------------------------------------
    def add_device(self, device: Device, grant: Grant) -> None:
        """Register ``device`` with its device token, and an empty detector state."""
        _check_id(device.id)
        _check_id(grant.key)
        added = self._add_device(
            keys=[
                self._key("device", device.id),
                self._key("state", device.id),
                self._key("token", grant.key),
            ],
            args=[device.threshold, device.timezone, repr(device.created), *_grant_args(grant)],
        )
        if added != 1:
            raise RuntimeError(f"device {device.id} or token {grant.key} is already stored")

    def device(self, device_id: str) -> Device | None:
        """The device, or ``None`` if unknown."""
        if not _ID.fullmatch(device_id):
            return None
        threshold, timezone, created = self.redis.hmget(
            self._key("device", device_id), ["threshold", "timezone", "created"]
        )
        if threshold is None:
            return None
        return Device(device_id, _text(threshold), _text(timezone), float(_text(created)))

    def add_grant(self, grant: Grant) -> None:
        """Store a token record (its device must exist)."""
        _check_id(grant.device_id)
        _check_id(grant.key)
        added = self._add_grant(
            keys=[self._key("device", grant.device_id), self._key("token", grant.key)],
            args=_grant_args(grant),
        )
        if added != 1:
            raise RuntimeError(
                f"token {grant.key} is already stored, or device {grant.device_id} is unknown"
            )

    def grant(self, key: str) -> Grant | None:
        """The token record with ``key`` (of a device, viewer or group token), or ``None``:
        both kinds of record in one round trip."""
        if not _ID.fullmatch(key):
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self._key("token", key), ["secret_hash", "device_id", "role", "created"])
        pipe.hmget(self._key("group_token", key), ["secret_hash", "group_id", "created"])
        (secret_hash, device_id, role, created), group_token = pipe.execute()
        if secret_hash is not None:
            return Grant(
                key,
                _bytes(secret_hash),
                _text(device_id),
                Role(_text(role)),
                float(_text(created)),
            )
        secret_hash, group_id, created = group_token
        if secret_hash is None:
            return None
        return Grant(
            key, _bytes(secret_hash), "", Role.GROUP, float(_text(created)), _text(group_id)
        )

    # -- detector state and results -----------------------------------------------------------
    def state(self, device_id: str) -> DeviceState:
        """The device's detector snapshot and last sequence number."""
        if not _ID.fullmatch(device_id):
            raise KeyError(f"no detector state for device {device_id!r:.80}")
        snapshot, last_seq = self.redis.hmget(
            self._key("state", device_id), ["snapshot", "last_seq"]
        )
        if last_seq is None:
            raise KeyError(f"no detector state for device {device_id!r}")
        return DeviceState(None if snapshot is None else _bytes(snapshot), int(_text(last_seq)))

    def batch_digest(self, device_id: str, seq: int) -> bytes | None:
        """The digest of the applied batch ``seq`` of the device, or ``None``."""
        if not _ID.fullmatch(device_id):
            return None
        digest = self.redis.hget(self._key("batches", device_id), str(seq))
        return None if digest is None else _bytes(digest)

    def commit_batches(self, commits: Sequence[BatchCommit]) -> list[bool]:
        """Store each batch, the snapshot after it and its results, and append the results to
        :attr:`events`: one script per batch (all or nothing), all in one round trip; each
        only if its device's last sequence number is ``seq - 1``. Returns, for each, whether
        it was stored."""
        for c in commits:
            _check_id(c.device_id)
        pipe = self.redis.pipeline(transaction=False)
        for c in commits:
            encoded = [_encode(r) for r in c.results]
            args: list[str | bytes] = [
                str(c.seq),
                str(c.seq - 1),
                c.digest,
                c.snapshot,
                repr(time.time()),
                c.device_id,
                "[" + ",".join(encoded) + "]",
                str(self.max_events),
            ]
            for result, text in zip(c.results, encoded, strict=True):
                args += [repr(result.end), text]
            keys = [self._key(kind, c.device_id) for kind in ("state", "batches", "epochs")]
            self._commit(keys=[*keys, self.events], args=args, client=pipe)
        return [answer == 1 for answer in pipe.execute()]

    def epochs(self, device_id: str, since: float, limit: int) -> list[EpochRecord]:
        """Up to ``limit`` results of the device that end after ``since``, oldest first."""
        if limit <= 0 or not _ID.fullmatch(device_id):
            return []
        found = self.redis.zrangebyscore(
            self._key("epochs", device_id), f"({since!r}", "+inf", start=0, num=limit
        )
        return [decode(_bytes(member)) for member in found]

    def last_epoch(self, device_id: str) -> EpochRecord | None:
        """The device's newest result (the one that ends last), or ``None``."""
        if not _ID.fullmatch(device_id):
            return None
        found = self.redis.zrange(self._key("epochs", device_id), -1, -1)
        return decode(_bytes(found[0])) if found else None

    # -- groups -------------------------------------------------------------------------------
    def add_group(self, group: Group, grant: Grant) -> None:
        """Create ``group``, without members, with its group token."""
        _check_id(group.id)
        _check_id(grant.key)
        added = self._add_group(
            keys=[self._key("group", group.id), self._key("group_token", grant.key)],
            args=[repr(group.created), grant.secret_hash, group.id, repr(grant.created)],
        )
        if added != 1:
            raise RuntimeError(f"group {group.id} or token {grant.key} is already stored")

    def group(self, group_id: str) -> Group | None:
        """The group, or ``None`` if unknown."""
        if not _ID.fullmatch(group_id):
            return None
        created = self.redis.hget(self._key("group", group_id), "created")
        return None if created is None else Group(group_id, float(_text(created)))

    def add_member(self, group_id: str, device_id: str, joined: float, max_members: int) -> Joining:
        """Make the device a member of the group, unless the group has ``max_members``
        already (one script: counted and written at once), and append the change to
        :attr:`events`. ``KeyError`` for an unknown group or device."""
        if not (_ID.fullmatch(group_id) and _ID.fullmatch(device_id)):
            raise KeyError(f"unknown group {group_id!r:.80} or device {device_id!r:.80}")
        answer = self._add_member(
            keys=[
                self._key("group", group_id),
                self._key("device", device_id),
                self._key("members", group_id),
                self.events,
            ],
            args=[group_id, device_id, repr(joined), str(max_members), str(self.max_events)],
        )
        if answer == -1:
            raise KeyError(f"unknown group {group_id!r}")
        if answer == -2:
            raise KeyError(f"unknown device {device_id!r}")
        return _JOINING[int(answer)]

    def remove_member(self, group_id: str, device_id: str) -> bool:
        """The device leaves the group (and the change is appended to :attr:`events`):
        whether it was a member."""
        if not (_ID.fullmatch(group_id) and _ID.fullmatch(device_id)):
            return False
        removed = self._remove_member(
            keys=[self._key("members", group_id), self.events],
            args=[group_id, device_id, str(self.max_events)],
        )
        return bool(removed == 1)

    def members(self, group_id: str) -> list[str]:
        """The ids of the group's members, in the order they joined."""
        if not _ID.fullmatch(group_id):
            return []
        return [
            _text(member) for member in self.redis.zrange(self._key("members", group_id), 0, -1)
        ]

    def member_states(self, group_id: str) -> list[MemberState]:
        """Each member of the group with its last sequence number and newest result, in the
        order they joined (a round trip per :data:`MEMBERS_AT_ONCE` members)."""
        if not _ID.fullmatch(group_id):
            return []
        found = self.redis.zrange(self._key("members", group_id), 0, -1, withscores=True)
        members = [(_text(pair[0]), float(pair[1])) for pair in found]
        states = []
        for first in range(0, len(members), MEMBERS_AT_ONCE):
            chunk = members[first : first + MEMBERS_AT_ONCE]
            pipe = self.redis.pipeline(transaction=False)
            for device_id, _ in chunk:
                pipe.hget(self._key("state", device_id), "last_seq")
                pipe.zrange(self._key("epochs", device_id), -1, -1)
            answers = pipe.execute()
            for (device_id, joined), last_seq, newest in zip(
                chunk, answers[::2], answers[1::2], strict=True
            ):
                current = decode(_bytes(newest[0])) if newest else None
                states.append(MemberState(device_id, joined, int(_text(last_seq or 0)), current))
        return states

    def close(self) -> None:
        """Close the connections (everything acknowledged is already in Redis)."""
        self.redis.close()


def redacted(url: str) -> str:
    """``url`` without its password (for messages and logs).

    Examples
    --------
    >>> redacted("redis://:s3cret@db.example:6379/0")
    'redis://:***@db.example:6379/0'
    >>> redacted("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_id(name: str) -> None:
    if not _ID.fullmatch(name):
        raise ValueError(f"{name!r:.80} is not a device id or token key")


def _grant_args(grant: Grant) -> list[str | bytes]:
    return [grant.secret_hash, grant.device_id, str(grant.role), repr(grant.created)]


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise RuntimeError(f"Redis answered {type(value).__name__} where bytes were expected")
    return value


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(result: EpochRecord) -> str:
    """``result`` as JSON text (``None`` for a missing probability, as stored in SQLite)."""
    return json.dumps(asdict(result), sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode(text: str | bytes) -> EpochRecord:
    """The :class:`~sleepstream.serve.store.EpochRecord` of its JSON text.

    Examples
    --------
    >>> record = EpochRecord(0.0, 30.0, "a", "b", None, 0.25, "unknown", ("unknown",), None)
    >>> decode(_encode(record)) == record
    True
    """
    return _record(json.loads(text))


def decode_results(text: str | bytes) -> list[EpochRecord]:
    """The records of a JSON list of results (an entry of the event stream).

    Raises ``ValueError`` or ``TypeError`` for text that is not such a list.
    """
    found = json.loads(text)
    if not isinstance(found, list):
        raise ValueError(f"expected a list of results, got {type(found).__name__}")
    return [_record(fields) for fields in found]


def _record(fields: dict[str, Any]) -> EpochRecord:
    return EpochRecord(**{**fields, "events": tuple(fields["events"])})
