"""Results committed by any server process, passed to this process's subscribers.

With ``--redis``, a batch's results do not go straight to the subscribers of the process that
stored it: :meth:`RedisStore.commit_batches
<sleepstream.serve.redis_store.RedisStore.commit_batches>` appends them to a Redis stream in the
same script that commits them, and every process follows that stream (``XREAD BLOCK``) and
hands each entry to its own :class:`~sleepstream.serve.subscribers.Subscribers`. So a
subscriber connected to one process receives the results of a device that posts to another, in
the order they were committed, each once. A device joining or leaving a group is an entry of
the same stream (:meth:`RedisStore.add_member
<sleepstream.serve.redis_store.RedisStore.add_member>`), so a group's subscriber on any
process gets a member's results from those committed after its join to those committed
before its leave.

A stream rather than pub/sub: a process whose connection to Redis drops reads on from the last
entry it saw once it is back, and loses nothing unless the stream was trimmed past that entry
meanwhile; then it cuts its subscribers off (close code 1013) so they read what they missed with
``GET``, the rule for any subscriber that falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sleepstream.serve.redis_store import TIMEOUT_SECONDS, RedisStore, decode_results, redacted
from sleepstream.serve.subscribers import Subscribers, messages

log = logging.getLogger(__name__)

BLOCK_MS = 1000
"""How long one ``XREAD`` waits for new entries."""
MAX_ENTRIES = 500
"""Entries read at once."""
MAX_BACKOFF_SECONDS = 5.0


class RedisEvents:
    """Follows the event stream of ``store`` and passes each entry to ``subscribers``.

    Parameters
    ----------
    url
        The Redis of ``store`` (the same URL).
    store
        The :class:`~sleepstream.serve.redis_store.RedisStore` whose commits are followed.

    Use :meth:`lifespan` as the FastAPI app's lifespan: the stream is followed from the app's
    start (entries committed before it are not passed on) to its end.
    """

    def __init__(self, url: str, store: RedisStore):
        self.url, self.stream = url, store.events
        self.where = redacted(url)

    def lifespan(
        self, subscribers: Subscribers
    ) -> Callable[[object], AbstractAsyncContextManager[None]]:
        """The app's lifespan: follow the stream into ``subscribers`` while the app runs."""

        @asynccontextmanager
        async def following(app: object) -> AsyncIterator[None]:
            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=BLOCK_MS / 1000 + TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), retries=0),  # _follow retries, and checks what it missed
            )
            try:
                start = await self._last_id(client)
                task = asyncio.create_task(self._follow(client, subscribers, start))
                try:
                    yield
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            finally:
                await client.aclose()

        return following

    async def _last_id(self, client: redis.asyncio.Redis) -> bytes:
        """The id of the stream's newest entry (``0-0`` while it is empty)."""
        newest = _entries(await client.xrevrange(self.stream, count=1))
        return newest[0][0] if newest else b"0-0"

    async def _follow(
        self, client: redis.asyncio.Redis, subscribers: Subscribers, last: bytes
    ) -> None:
        """Pass every entry after ``last`` to ``subscribers``, until cancelled."""
        failures = 0
        while True:
            try:
                if failures:
                    await self._check_trimmed(client, subscribers, last)
                found = await client.xread({self.stream: last}, count=MAX_ENTRIES, block=BLOCK_MS)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
                failures += 1
                if failures == 1:
                    log.warning("lost the event stream of Redis at %s (%s)", self.where, error)
                await asyncio.sleep(min(0.1 * 2**failures, MAX_BACKOFF_SECONDS))
                continue
            if failures:
                log.info("following the event stream of Redis at %s again", self.where)
                failures = 0
            for entries in _streams(found):
                for entry_id, fields in _entries(entries):
                    last = entry_id
                    self._pass_on(subscribers, fields)

    async def _check_trimmed(
        self, client: redis.asyncio.Redis, subscribers: Subscribers, last: bytes
    ) -> None:
        """Cut every subscriber off when entries after ``last`` may have been trimmed (the
        oldest entry left is newer than ``last``, or none is left)."""
        oldest = _entries(await client.xrange(self.stream, count=1))
        if last != b"0-0" and (not oldest or _entry_id(oldest[0][0]) > _entry_id(last)):
            log.warning("results were missed while Redis was away: subscribers are cut off")
            subscribers.cut_off_all()

    def _pass_on(self, subscribers: Subscribers, fields: dict[object, object]) -> None:
        """Queue the messages of one entry for the subscribers in this process: a batch's
        results for the device's (and its groups'), a join or leave for the group's."""
        if b"group" in fields:
            self._pass_on_change(subscribers, fields)
            return
        device, text = fields.get(b"device"), fields.get(b"results")
        if not isinstance(device, bytes) or not subscribers.wanted(device_id := device.decode()):
            return
        try:
            if not isinstance(text, bytes):
                raise ValueError("no results")
            results = decode_results(text)
        except (KeyError, TypeError, ValueError) as error:
            log.error("an entry of the event stream cannot be read (%s); skipped", error)
            return
        subscribers.publish(device_id, messages(device_id, results))

    def _pass_on_change(self, subscribers: Subscribers, fields: dict[object, object]) -> None:
        """A device that joined or left a group, for the group's subscribers in this process."""
        group, member, change = fields.get(b"group"), fields.get(b"member"), fields.get(b"change")
        if not isinstance(group, bytes) or not subscribers.watches_group(
            group_id := group.decode()
        ):
            return
        if not isinstance(member, bytes) or change not in (b"join", b"leave"):
            log.error("a change of group %s in the event stream cannot be read; skipped", group_id)
            return
        subscribers.change_member(group_id, member.decode(), change == b"join")


def _streams(found: object) -> list[object]:
    """The entries of each stream in an ``XREAD`` answer (RESP2 list or RESP3 map)."""
    if isinstance(found, dict):
        return list(found.values())
    if isinstance(found, list):
        return [item[1] for item in found if isinstance(item, list | tuple) and len(item) == 2]
    return []


def _entries(found: object) -> list[tuple[bytes, dict[object, object]]]:
    """The ``(id, fields)`` of the entries in an ``XRANGE`` answer (or a stream's part of an
    ``XREAD`` answer)."""
    if not isinstance(found, list):
        return []
    return [
        (entry[0], entry[1])
        for entry in found
        if isinstance(entry, list | tuple)
        and isinstance(entry[0], bytes)
        and isinstance(entry[1], dict)
    ]


def _entry_id(text: bytes) -> tuple[int, int]:
    """A stream entry id ``MS-SEQ`` as numbers that compare in stream order."""
    ms, _, seq = text.partition(b"-")
    return int(ms), int(seq or 0)
