"""Pushing a device's results to whoever subscribed to it, or to a group it is a member of,
inside one server process.

Each subscription is a queue the WebSocket handler drains. A subscriber that falls
``max_queue`` messages behind (a group's subscriber: ``max_group_queue``), or that has taken
no message for ``max_lag`` seconds while some were waiting, is cut off (its queue ends with
``None``) rather than letting the server's memory grow; it reconnects and reads what it
missed with ``GET``. The count bounds a burst (a watch uploading hours of results at once),
the lag bounds a subscriber that stopped reading: with a thousand such subscribers, each
holding up to ``max_queue`` messages, memory grew by over a gigabyte in an hour. With several
server processes, a :class:`Broker` (:class:`~sleepstream.serve.redis_events.RedisEvents`)
feeds :meth:`Subscribers.publish` and :meth:`Subscribers.change_member` on each of them with
the results, and the joins and leaves of groups, that any of them stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sleepstream.serve.schema import EpochOut
from sleepstream.serve.store import EpochRecord

MAX_QUEUE = 1000
MAX_GROUP_QUEUE = 10_000
"""A group's subscriber may fall this far behind: its members' batches, applied together
(up to 1,000 at once), arrive at once."""
MAX_LAG_SECONDS = 60.0
"""A subscriber that takes no message for this long while messages wait for it is cut off
(and a send that its client does not read within this time ends its connection)."""
Message = dict[str, Any]


@dataclass(eq=False)
class Subscription:
    """One subscriber, of one device (``device_id``) or of one group's members (``group_id``):
    its queue of messages, ``None`` when it is cut off."""

    device_id: str = ""
    group_id: str = ""
    queue: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    cut_off: bool = False
    waiting_since: float | None = None
    """When the subscriber last took a message with more waiting, or when a message reached
    its empty queue (the clock of :class:`Subscribers`); ``None`` when nothing waits."""

    async def take(self, clock: Callable[[], float] = time.monotonic) -> Message | None:
        """The next message (``None``: cut off), once one comes."""
        message = await self.queue.get()
        self.waiting_since = clock() if self.queue.qsize() else None
        return message


@dataclass(eq=False)
class _Group:
    """A group with subscribers in this process: who its members are (``None`` until read
    from the store), and the joins (``True``) and leaves (``False``) noticed before that."""

    subscriptions: set[Subscription] = field(default_factory=set)
    members: set[str] | None = None
    changes: dict[str, bool] = field(default_factory=dict)


class Subscribers:
    """The subscriptions of a server, by device and by group; use from the server's event
    loop only.

    A group's subscriptions get the messages of the devices that are its members. Who they
    are is kept only for the groups that have subscribers here: read from the store once by
    the first subscriber (:meth:`set_members`), then kept up to date by each join and leave
    (:meth:`change_member`), in the order they were stored. Memory is bounded by the queues
    (``max_queue`` messages per device subscriber, ``max_group_queue`` per group
    subscriber, the messages themselves shared) and by the members of subscribed groups.
    """

    def __init__(
        self,
        max_queue: int = MAX_QUEUE,
        max_group_queue: int = MAX_GROUP_QUEUE,
        max_lag: float = MAX_LAG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_queue = max_queue
        self.max_group_queue = max_group_queue
        self.max_lag = max_lag
        self.clock = clock
        self._by_device: dict[str, set[Subscription]] = {}
        self._groups: dict[str, _Group] = {}
        self._groups_of: dict[str, set[str]] = {}
        """Each member of a subscribed group whose members are known: its groups here."""

    def subscribe(self, device_id: str) -> Subscription:
        """A new subscription to the device's messages."""
        subscription = Subscription(device_id)
        self._by_device.setdefault(device_id, set()).add(subscription)
        return subscription

    def subscribe_group(self, group_id: str) -> Subscription:
        """A new subscription to the messages of the group's members. Until the group's
        members are known (:meth:`members_known`), it gets only joins and leaves."""
        subscription = Subscription(group_id=group_id)
        self._groups.setdefault(group_id, _Group()).subscriptions.add(subscription)
        return subscription

    def members_known(self, group_id: str) -> bool:
        """Whether the members of a subscribed group are known here."""
        group = self._groups.get(group_id)
        return group is not None and group.members is not None

    def set_members(self, group_id: str, device_ids: Iterable[str]) -> None:
        """The members of a subscribed group as read from the store, if they are not known
        yet; the joins and leaves noticed since its first subscription are applied over them
        (read before or after them, the outcome is the same)."""
        group = self._groups.get(group_id)
        if group is None or group.members is not None:
            return
        members = set(device_ids)
        members |= {device for device, joined in group.changes.items() if joined}
        members -= {device for device, joined in group.changes.items() if not joined}
        group.members, group.changes = members, {}
        for device_id in members:
            self._groups_of.setdefault(device_id, set()).add(group_id)

    def change_member(self, group_id: str, device_id: str, joined: bool) -> None:
        """A device joined (or left) the group: its messages go to the group's subscribers
        from now on (or no longer), who are told with a ``joined`` (``left``) message."""
        group = self._groups.get(group_id)
        if group is None:
            return
        if group.members is None:
            group.changes[device_id] = joined
        elif joined:
            group.members.add(device_id)
            self._groups_of.setdefault(device_id, set()).add(group_id)
        else:
            group.members.discard(device_id)
            self._forget_membership(device_id, group_id)
        change = {"type": "joined" if joined else "left", "group_id": group_id}
        self._queue(group.subscriptions, [{**change, "device_id": device_id}])

    def unsubscribe(self, subscription: Subscription) -> None:
        """End a subscription (again is fine)."""
        if subscription.group_id:
            self._unsubscribe_group(subscription)
            return
        subscriptions = self._by_device.get(subscription.device_id, set())
        subscriptions.discard(subscription)
        if not subscriptions:
            self._by_device.pop(subscription.device_id, None)

    def _unsubscribe_group(self, subscription: Subscription) -> None:
        group = self._groups.get(subscription.group_id)
        if group is None or subscription not in group.subscriptions:
            return
        group.subscriptions.discard(subscription)
        if group.subscriptions:
            return
        del self._groups[subscription.group_id]
        for device_id in group.members or ():
            self._forget_membership(device_id, subscription.group_id)

    def _forget_membership(self, device_id: str, group_id: str) -> None:
        groups = self._groups_of.get(device_id, set())
        groups.discard(group_id)
        if not groups:
            self._groups_of.pop(device_id, None)

    def count(self, device_id: str) -> int:
        """Open subscriptions of the device."""
        return len(self._by_device.get(device_id, ()))

    def wanted(self, device_id: str) -> bool:
        """Whether a subscriber here gets the device's messages (its own, or a group's)."""
        return device_id in self._by_device or device_id in self._groups_of

    def watches_group(self, group_id: str) -> bool:
        """Whether the group has subscribers here."""
        return group_id in self._groups

    def publish(self, device_id: str, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for every subscriber of the device, and of its groups."""
        self._queue(self._by_device.get(device_id, ()), messages)
        for group_id in self._groups_of.get(device_id, ()):
            self._queue(self._groups[group_id].subscriptions, messages)

    def _queue(self, subscriptions: Iterable[Subscription], messages: Sequence[Message]) -> None:
        now = self.clock()
        for subscription in list(subscriptions):
            if subscription.cut_off:
                continue
            since = subscription.waiting_since
            if since is not None and subscription.queue.qsize() and now - since > self.max_lag:
                _cut_off(subscription)
                continue
            if since is None or not subscription.queue.qsize():
                subscription.waiting_since = now
            limit = self.max_group_queue if subscription.group_id else self.max_queue
            for message in messages:
                if subscription.queue.qsize() >= limit:
                    _cut_off(subscription)
                    break
                subscription.queue.put_nowait(message)

    def cut_off_all(self) -> None:
        """Cut every subscriber off (messages, or joins and leaves, may have been lost): each
        reconnects and reads what it missed with ``GET``. The groups' members are forgotten
        (the next subscriber reads them again)."""
        groups = [group.subscriptions for group in self._groups.values()]
        for subscriptions in [*self._by_device.values(), *groups]:
            for subscription in subscriptions:
                if not subscription.cut_off:
                    _cut_off(subscription)
        self._groups.clear()
        self._groups_of.clear()


def _cut_off(subscription: Subscription) -> None:
    subscription.cut_off = True
    subscription.queue.put_nowait(None)


class Broker(Protocol):
    """Carries the results, and the joins and leaves of groups, that any server process
    stores to the subscribers of each one.

    Without a broker, a process passes what it stores to its own subscribers; with one, it
    leaves that to the broker (which passes them to this process's subscribers too).
    """

    def lifespan(
        self, subscribers: Subscribers
    ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """The app's lifespan: results, joins and leaves go to ``subscribers`` from the app's
        start to its end."""
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
