"""Pushing a device's results to whoever subscribed to it, inside one server process.

Each subscription is a queue the WebSocket handler drains. A subscriber that falls
``max_queue`` messages behind is cut off (its queue ends with ``None``) rather than letting
the server's memory grow; it reconnects and reads what it missed with ``GET``. With several
server processes, a broker (Redis pub/sub) feeds :meth:`Subscribers.publish` on each of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
                    subscription.cut_off = True
                    subscription.queue.put_nowait(None)
                    break
                subscription.queue.put_nowait(message)


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
