"""Batches from many requests at once, applied together.

Every request that brings a batch (HTTP or WebSocket) waits on :meth:`Intake.submit`. One
task takes all the batches waiting and hands them to
:meth:`~sleepstream.serve.devices.Devices.add_batches` in a worker thread: the epochs they
close go through the step model in one batched call, and they are stored in one commit (one
disk sync). While that runs, the next requests gather. A lone batch is applied at once, and
under load the groups grow by themselves, with no timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from anyio import CapacityLimiter, to_thread

from sleepstream.serve.devices import BatchOutcome, Devices
from sleepstream.serve.schema import Batch
from sleepstream.serve.store import EpochRecord

log = logging.getLogger(__name__)

MAX_GROUP = 1000
"""Batches applied together at most."""


class Intake:
    """Applies the batches of ``devices`` in groups, in the order they were submitted.

    ``publish(device_id, results)`` gets each stored batch's new results in the event loop,
    before its request is answered (so subscribers see every device's results in order).
    Use from one event loop.
    """

    def __init__(
        self,
        devices: Devices,
        publish: Callable[[str, Sequence[EpochRecord]], None] | None = None,
        max_group: int = MAX_GROUP,
    ):
        self.devices = devices
        self.publish = publish
        self.max_group = max_group
        self._waiting: list[tuple[str, Batch, asyncio.Future[BatchOutcome]]] = []
        self._task: asyncio.Task[None] | None = None
        self._thread = CapacityLimiter(1)  # its own: never queued behind the requests' threads

    async def submit(self, device_id: str, batch: Batch) -> BatchOutcome:
        """Apply and store ``batch``: its outcome once stored, or the exception that refused
        it (:class:`~sleepstream.serve.devices.SequenceError`, ``ValueError``, or what the
        model or the store raised)."""
        future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((device_id, batch, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._apply_waiting())
        # the batch is applied even if the request goes away meanwhile (the device resends)
        return await asyncio.shield(future)

    async def _apply_waiting(self) -> None:
        while self._waiting:
            group = self._waiting[: self.max_group]
            del self._waiting[: self.max_group]
            try:
                outcomes = await to_thread.run_sync(
                    self.devices.add_batches,
                    [(device_id, batch) for device_id, batch, _ in group],
                    limiter=self._thread,
                )
            except Exception as error:
                log.exception("a group of %d batches failed; none is acknowledged", len(group))
                outcomes = [error] * len(group)
            log.debug("applied %d batches together", len(group))
            for (device_id, _, future), outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                    continue
                if self.publish is not None and outcome.results:
                    try:
                        self.publish(device_id, outcome.results)
                    except Exception:  # stored all the same: the device must not resend it
                        log.exception(
                            "results of device %s batch %d not passed on", device_id, outcome.seq
                        )
                future.set_result(outcome)
