"""Pushing a device's results to whoever subscribed to it, inside one server process.

Each subscription is a queue the WebSocket handler drains. A subscriber that falls
``max_queue`` messages behind is cut off (its queue ends with ``None``) rather than letting
the server's memory grow; it reconnects and reads what it missed with ``GET``. With several
server processes, a :class:`Broker` (:class:`~sleepstream.serve.redis_events.RedisEvents`)
feeds :meth:`Subscribers.publish` on each of them with the results that any of them stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sleepstream.serve.schema import EpochOut
from sleepstream.serve.store import EpochRecord

MAX_QUEUE = 1000
Message = dict[str, Any]


@dataclass(eq=False)
class Subscription:
    """One subscriber of one device: its queue of messages, ``None`` when it is cut off."""

    device_id: str
    queue: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    cut_off: bool = False


class Subscribers:
    """The subscriptions of a server, by device; use from the server's event loop only."""

    def __init__(self, max_queue: int = MAX_QUEUE):
        self.max_queue = max_queue
        self._by_device: dict[str, set[Subscription]] = {}

    def subscribe(self, device_id: str) -> Subscription:
        """A new subscription to the device's messages."""
        subscription = Subscription(device_id)
        self._by_device.setdefault(device_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """End a subscription (again is fine)."""
        subscriptions = self._by_device.get(subscription.device_id, set())
        subscriptions.discard(subscription)
        if not subscriptions:
            self._by_device.pop(subscription.device_id, None)

    def count(self, device_id: str) -> int:
        """Open subscriptions of the device."""
        return len(self._by_device.get(device_id, ()))

    def publish(self, device_id: str, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for every subscriber of the device."""
        for subscription in list(self._by_device.get(device_id, ())):
            if subscription.cut_off:
                continue
            for message in messages:
                if subscription.queue.qsize() >= self.max_queue:
                    _cut_off(subscription)
                    break
                subscription.queue.put_nowait(message)

    def cut_off_all(self) -> None:
        """Cut every subscriber off (messages may have been lost): each reconnects and reads
        what it missed with ``GET``."""
        for subscriptions in self._by_device.values():
            for subscription in subscriptions:
                if not subscription.cut_off:
                    _cut_off(subscription)


def _cut_off(subscription: Subscription) -> None:
    subscription.cut_off = True
    subscription.queue.put_nowait(None)


class Broker(Protocol):
    """Carries the results that any server process stores to the subscribers of each one.

    Without a broker, a process passes the results it stores to its own subscribers; with one,
    it leaves that to the broker (which passes them to this process's subscribers too).
    """

    def lifespan(
        self, subscribers: Subscribers
    ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """The app's lifespan: results go to ``subscribers`` from the app's start to its end."""
        ...


def messages(device_id: str, results: Sequence[EpochRecord]) -> list[Message]:
    """What subscribers get for new results: an ``epoch`` message per result, each followed
    by an ``event`` message per event it completed (``fell_asleep``, ``woke_up``,
    ``unknown``)."""
    out: list[Message] = []
    for result in results:
        epoch = EpochOut.model_validate(result).model_dump(mode="json")
        out.append({"type": "epoch", "device_id": device_id, "result": epoch})
        out += [
            {
                "type": "event",
                "device_id": device_id,
                "event": event,
                "time": result.end,
                "time_local": result.end_local,
                "seq": result.seq,
            }
            for event in result.events
        ]
    return out
