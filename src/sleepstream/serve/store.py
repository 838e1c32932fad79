"""What the service keeps, and the interface of the stores that keep it.

A store holds the devices, their tokens (hashed, :mod:`sleepstream.serve.tokens`), each
device's detector state (the snapshot bytes of :meth:`SleepDetector.snapshot
<sleepstream.live.detector.SleepDetector.snapshot>`, portable data, never a pickle), its epoch
results and the sequence numbers of the batches it has applied; and the groups, each with its
group token and its members (the devices that joined it, at most ``max_members``). :class:`Store` is all the
service needs from one; :class:`~sleepstream.serve.sqlite.SQLiteStore` is the default, and
:class:`~sleepstream.serve.redis_store.RedisStore` keeps the same in Redis for several server
processes.

The one rule a store must keep: :meth:`Store.commit_batches` writes each batch's new snapshot,
new results and sequence number together or not at all, and only if the device's last sequence
number is still the one the batch follows. A batch is acknowledged after it returns. It takes
the batches of many devices at once, so that one durable write (one SQLite transaction, one
Redis round trip) serves all the batches that arrived together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from sleepstream.serve.tokens import Grant


@dataclass(frozen=True)
class Device:
    """A registered device and its detector settings.

    Attributes
    ----------
    id
        The device's public identifier (in URLs).
    threshold
        Name of the model's operating threshold (``"wasa93"``, ``"wasa95"``, ``"operating"``).
    timezone
        IANA time zone of the local times in its results.
    created
        Unix seconds of the registration.
    """

    id: str
    threshold: str
    timezone: str
    created: float


@dataclass(frozen=True)
class DeviceState:
    """A device's detector state: the snapshot (``None`` before its first batch) and the
    sequence number of the last batch applied to it (0 before the first)."""

    snapshot: bytes | None
    last_seq: int


@dataclass(frozen=True)
class EpochRecord:
    """One epoch result as stored and sent: the :class:`~sleepstream.live.detector.EpochResult`
    without its features, ``NaN`` as ``None``, local times as ISO-8601 text, and the sequence
    number of the batch that closed it."""

    start: float
    end: float
    start_local: str
    end_local: str
    p_sleep: float | None
    p_model: float | None
    state: str
    events: tuple[str, ...]
    vetoed: str | None
    late_samples: dict[str, int] = field(default_factory=dict)
    hr_samples: int = 0
    motion_seconds: float = 0.0
    seq: int = 0


@dataclass(frozen=True)
class Group:
    """A group of devices, followed as one with its group token.

    Attributes
    ----------
    id
        The group's public identifier (in URLs); a device that knows it may join.
    created
        Unix seconds of its creation.
    """

    id: str
    created: float


class Joining(StrEnum):
    """What became of a device's request to join a group."""

    JOINED = "joined"
    ALREADY = "already a member"
    FULL = "the group is full"


@dataclass(frozen=True)
class MemberState:
    """A member of a group: when it joined (Unix seconds), the sequence number of its last
    stored batch, and its newest result (``None`` before any)."""

    device_id: str
    joined: float
    last_seq: int
    current: EpochRecord | None


@dataclass(frozen=True)
class BatchCommit:
    """What storing one batch writes: its sequence number and digest, the device's detector
    snapshot after it, and the results it closed."""

    device_id: str
    seq: int
    digest: bytes
    snapshot: bytes
    results: Sequence[EpochRecord]


class Store(Protocol):
    """Persistent state of the service (see the module docstring for its one rule)."""

    def add_device(self, device: Device, grant: Grant) -> None:
        """Register ``device`` with its device token, and an empty detector state."""
        ...

    def device(self, device_id: str) -> Device | None:
        """The device, or ``None`` if unknown."""
        ...

    def add_grant(self, grant: Grant) -> None:
        """Store a token record (its device must exist)."""
        ...

    def grant(self, key: str) -> Grant | None:
        """The token record with ``key`` (of a device, viewer or group token), or ``None``."""
        ...

    def state(self, device_id: str) -> DeviceState:
        """The device's detector snapshot and last sequence number."""
        ...

    def batch_digest(self, device_id: str, seq: int) -> bytes | None:
        """The digest of the applied batch ``seq`` of the device, or ``None``."""
        ...

    def commit_batches(self, commits: Sequence[BatchCommit]) -> list[bool]:
        """Durably store each batch (its digest), the snapshot after it and its results.

        Each batch is stored all or nothing, and only if its device's last sequence number is
        ``seq - 1`` at that point (the commits are applied in order; a device may appear once).
        Returns, for each, whether it was stored. After an exception any of them may or may not
        be stored: a device that sends its batch again is told whether it is a duplicate.
        """
        ...

    def epochs(self, device_id: str, since: float, limit: int) -> list[EpochRecord]:
        """Up to ``limit`` results of the device that end after ``since``, oldest first."""
        ...

    def last_epoch(self, device_id: str) -> EpochRecord | None:
        """The device's newest result, or ``None``."""
        ...

    def add_group(self, group: Group, grant: Grant) -> None:
        """Create ``group``, without members, with its group token."""
        ...

    def group(self, group_id: str) -> Group | None:
        """The group, or ``None`` if unknown."""
        ...

    def add_member(self, group_id: str, device_id: str, joined: float, max_members: int) -> Joining:
        """Make the device a member of the group, unless the group has ``max_members``
        already (checked and written at once: two joins never pass the limit). Joining again
        changes nothing. ``KeyError`` for an unknown group or device."""
        ...

    def remove_member(self, group_id: str, device_id: str) -> bool:
        """The device leaves the group: whether it was a member."""
        ...

    def members(self, group_id: str) -> list[str]:
        """The ids of the group's members, in the order they joined."""
        ...

    def member_states(self, group_id: str) -> list[MemberState]:
        """Each member of the group with its last sequence number and newest result, in the
        order they joined."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...
