"""``sleepstream simulate``: a real night of the dataset replayed into a running server.

A watch is registered, then the night's heart rate and activity counts are sent in numbered
batches, each as soon as its last sample would have been measured at ``speed`` times real
time; a viewer subscribed to the device prints each event (fell asleep, woke up, unknown) at
its local time. The Unix times are ``start`` plus the night's times (0 = the start of its
sleep recording).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from sleepstream.client import Client, Message, ServiceError
from sleepstream.records import Recording
from sleepstream.serve.schema import BatchAck, EpochOut

log = logging.getLogger(__name__)

EVENT_WORDS = {"fell_asleep": "fell asleep", "woke_up": "woke up", "unknown": "unknown (no data)"}


def night_batches(
    recording: Recording, start: float, batch_seconds: float = 30.0, hours: float | None = None
) -> list[dict[str, Any]]:
    """The night's heart rate and counts from its time 0 (the first ``hours`` of it, or all),
    as a watch would send them: batches of ``batch_seconds``, numbered from 1, at Unix times
    ``start`` + the night's times. Batches without samples are left out."""
    if not (math.isfinite(batch_seconds) and batch_seconds > 0):
        raise ValueError(f"batch seconds must be positive, got {batch_seconds}")
    end = float(recording.epoch_times[-1]) + 30.0
    if hours is not None:
        if not (math.isfinite(hours) and hours > 0):
            raise ValueError(f"hours must be positive, got {hours}")
        end = min(end, hours * 3600.0)
    batches: list[dict[str, Any]] = []
    for lo in np.arange(0.0, end, batch_seconds):
        hi = min(lo + batch_seconds, end)
        h = (recording.hr_times >= lo) & (recording.hr_times < hi)
        c = (recording.count_times >= lo) & (recording.count_times < hi)
        if not (h.any() or c.any()):
            continue
        batch: dict[str, Any] = {"seq": len(batches) + 1}
        if h.any():
            times = (start + recording.hr_times[h]).tolist()
            batch["heart_rate"] = {"times": times, "bpm": recording.hr_bpm[h].tolist()}
        if c.any():
            times = (start + recording.count_times[c]).tolist()
            batch["counts"] = {"times": times, "counts": recording.counts[c].tolist()}
        batches.append(batch)
    return batches


def last_time(batch: dict[str, Any]) -> float:
    """The time of the batch's last sample (Unix seconds)."""
    return max(batch[k]["times"][-1] for k in ("heart_rate", "counts") if k in batch)


@dataclass(frozen=True)
class Simulated:
    """What a simulation sent and saw: the acknowledged results, and the subscriber's
    messages after its first (``state``)."""

    device_id: str
    results: list[EpochOut]
    messages: list[Message]


async def simulate(
    url: str,
    batches: list[dict[str, Any]],
    speed: float = 60.0,
    timezone: str = "UTC",
    write: Callable[[str], None] = print,
    wait: float = 10.0,
) -> Simulated:
    """Send ``batches`` to the server at ``url`` as a new device, at ``speed`` times real
    time, while a viewer subscribed to it passes a line to ``write`` for each event; then
    wait up to ``wait`` seconds for the subscriber to have every epoch."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be positive, got {speed}")
    async with Client(url) as client:
        device = await client.register(timezone=timezone)
        viewer = await client.add_viewer(device.device_id, device.token)
        write(f"device {device.device_id} ({timezone}), {len(batches)} batches at {speed:g} x")
        messages: list[Message] = []
        subscribed = asyncio.Event()
        reader = asyncio.create_task(
            _follow(client, device.device_id, viewer.token, messages, subscribed, write)
        )
        try:
            await asyncio.wait_for(subscribed.wait(), wait)
            results = await _send_all(client, device.device_id, device.token, batches, speed)
            deadline = time.monotonic() + wait
            while sum(m["type"] == "epoch" for m in messages) < len(results):
                if time.monotonic() > deadline or reader.done():
                    log.warning("the subscriber missed some epochs")
                    break
                await asyncio.sleep(0.02)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    asleep = sum(r.state == "asleep" for r in results)
    write(f"{len(results)} epochs, {asleep} asleep ({asleep / 2:g} min)")
    return Simulated(device.device_id, results, messages)


async def _send_all(
    client: Client, device_id: str, token: str, batches: list[dict[str, Any]], speed: float
) -> list[EpochOut]:
    """Send each batch when its last sample is due at ``speed`` x; the results."""
    results: list[EpochOut] = []
    if not batches:
        return results
    first = min(batches[0][k]["times"][0] for k in ("heart_rate", "counts") if k in batches[0])
    wall_start = time.monotonic()
    for batch in batches:
        due = wall_start + (last_time(batch) - first) / speed
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        results += (await _send(client, device_id, token, batch)).results
    return results


async def _send(client: Client, device_id: str, token: str, batch: dict[str, Any]) -> BatchAck:
    """Send ``batch``, again after the server's ``Retry-After`` while it answers 429 (at high
    speed a watch sends faster than the per-token rate)."""
    while True:
        try:
            return await client.send(device_id, token, batch)
        except ServiceError as error:
            if error.status != 429:
                raise
            await asyncio.sleep(error.retry_after or 1.0)


async def _follow(
    client: Client,
    device_id: str,
    token: str,
    into: list[Message],
    subscribed: asyncio.Event,
    write: Callable[[str], None],
) -> None:
    """Append the device's messages to ``into`` and write a line for each event."""
    async for message in client.events(device_id, token):
        if message["type"] == "state":
            subscribed.set()
            continue
        into.append(message)
        if message["type"] == "event":
            word = EVENT_WORDS.get(message["event"], message["event"])
            write(f"{message['time_local']}  {word}")


def run(
    url: str,
    subject: str,
    speed: float = 60.0,
    start: float | None = None,
    batch_seconds: float = 30.0,
    hours: float | None = None,
    timezone: str = "UTC",
    data: str | None = None,
) -> int:
    """Replay the night of ``subject`` (in the data folder ``data``, default
    ``$SLEEPSTREAM_DATA``) into the server at ``url``, printing the events; ``start``: the
    Unix time of the night's time 0 (default: now)."""
    from sleepstream.data.folder import data_folder, load_recording

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    recording = load_recording(data_folder(data), subject)
    begin = time.time() if start is None else start
    batches = night_batches(recording, begin, batch_seconds, hours)
    try:
        asyncio.run(simulate(url, batches, speed, timezone, lambda line: print(line, flush=True)))
    except httpx.ConnectError as error:
        raise ConnectionError(
            f"no server answers at {url} ({error}); start one with `sleepstream serve`, or "
            "give its address with --url"
        ) from None
    return 0
