"""Rate limits of the service: a token bucket per token, and one per client address for
registration.

A bucket holds up to ``burst`` requests and refills at ``per_minute`` requests a minute; a
request takes one, and one that finds the bucket empty is refused (429) with the seconds
until it would be taken. A bucket is kept as a single number, the time at which it will be full
again (the "theoretical arrival time" of GCRA, which admits exactly what a token bucket
admits): a bucket whose time has passed is full, the same as a bucket never seen, so it is
dropped. Memory is therefore bounded by the keys seen within one refill time (``burst``
requests' worth), and never above ``max_keys`` (past that the least recently used bucket
is dropped, which only forgives that key its debt).

:class:`TokenBuckets` keeps the buckets in one server process. With several processes
(``--redis``), :class:`~sleepstream.serve.redis_store.RedisBuckets` keeps the same number in
Redis, so a token's requests are counted across all of them.

Why by hand: the maintained libraries either have no token bucket (``limits``: fixed and
moving windows, a timer thread expiring its memory store) or keep one bucket per key without
ever dropping it (``pyrate-limiter``'s in-memory state store), and this is a few lines.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_KEYS = 100_000
"""Buckets kept per limiter at most (each a key and a float, about 150 bytes)."""


@dataclass(frozen=True)
class RateLimits:
    """How often a token, or a client address registering devices, may call the API.

    Attributes
    ----------
    per_token
        Requests a minute, sustained, per token (device or viewer); 0 for no limit. The
        default, 5 a second, is far above a watch sending a batch every second.
    token_burst
        Requests a token may make at once after a quiet spell (a watch sending what it
        buffered while offline).
    per_address
        ``POST /devices`` (registrations, no token) a minute per client address; 0 for no
        limit. Behind a reverse proxy every client has the proxy's address, unless it sets
        ``X-Forwarded-For`` and uvicorn trusts it.
    address_burst
        Registrations a client address may make at once.
    max_keys
        Buckets kept per limiter at most.
    """

    per_token: float = 300.0
    token_burst: int = 100
    per_address: float = 30.0
    address_burst: int = 30
    max_keys: int = MAX_KEYS

    def __post_init__(self) -> None:
        for value, what in ((self.per_token, "requests"), (self.per_address, "registrations")):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"rate limit: {value:g} {what} a minute; expected 0 or more")
        for count, what in (
            (self.token_burst, "requests at once per token"),
            (self.address_burst, "registrations at once per address"),
            (self.max_keys, "buckets kept"),
        ):
            if count < 1:
                raise ValueError(f"rate limit: {count} {what}; expected 1 or more")


class Buckets(Protocol):
    """Token buckets by key (:class:`TokenBuckets` in a process, or shared in Redis)."""

    per_minute: float
    burst: int

    def take(self, key: str) -> float:
        """Take one request from the bucket of ``key``: 0.0 when there was one, else the
        seconds until there will be (nothing taken)."""
        ...


class TokenBuckets:
    """A token bucket per key, each holding ``burst`` requests, refilled at ``per_minute``.

    Parameters
    ----------
    per_minute
        Requests a minute each key may make, sustained; 0 lets every request through.
    burst
        Requests a key may make at once.
    max_keys
        Buckets kept at most (the least recently used dropped first).
    clock
        Seconds on a clock that does not jump (:func:`time.monotonic`).

    Safe to use from several threads.

    Examples
    --------
    >>> now = [0.0]
    >>> buckets = TokenBuckets(per_minute=60, burst=2, clock=lambda: now[0])
    >>> [buckets.take("a") for _ in range(3)], buckets.take("b")
    ([0.0, 0.0, 1.0], 0.0)
    >>> now[0] = 10.0
    >>> buckets.take("a"), len(buckets)
    (0.0, 1)
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.per_minute = per_minute
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._full_at: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one request from the bucket of ``key``: 0.0 when there was one, else the
        seconds until there will be (nothing taken)."""
        if self.per_minute <= 0:
            return 0.0
        interval = 60.0 / self.per_minute
        with self._lock:
            now = self.clock()
            full_at = max(self._full_at.pop(key, now), now) + interval
            wait = full_at - self.burst * interval - now
            if wait > 0:
                full_at -= interval  # refused: the bucket stays as it was
            self._full_at[key] = full_at
            self._forget(now)
        return max(wait, 0.0)

    def _forget(self, now: float) -> None:
        """Drop the buckets that are full again (oldest first), and any over ``max_keys``."""
        buckets = self._full_at
        while buckets:
            key, full_at = next(iter(buckets.items()))
            if full_at > now and len(buckets) <= self.max_keys:
                break
            del buckets[key]

    def __len__(self) -> int:
        """Buckets held (those not full)."""
        return len(self._full_at)


def retry_after(seconds: float) -> str:
    """``Retry-After`` header value: whole seconds, rounded up, at least 1.

    Examples
    --------
    >>> retry_after(0.2), retry_after(3.0), retry_after(3.01)
    ('1', '3', '4')
    """
    return str(max(1, math.ceil(seconds)))
