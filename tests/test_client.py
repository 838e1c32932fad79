"""The client (``sleepstream.client``) against a real ``sleepstream serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import Batch, Json, Server, night_batches, reference

from sleepstream.client import Client, Message, ServiceError
from sleepstream.live.backends import OnnxPipeline


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("client")
    running = Server(folder / "client.sqlite3", folder / "client.log")
    yield running
    running.stop()


@pytest.mark.timeout(60)
def test_the_client_sends_reads_and_subscribes(server: Server) -> None:
    """JSON and msgpack batches give a plain detector's results, which a viewer reads; a
    batch sent again is a duplicate."""
    night = night_batches(1200.0, batch_seconds=60.0, seed=1)

    async def scenario() -> tuple[list[Json], list[Json], list[Message], Json]:
        async with Client(server.url, timeout=10) as client:
            device = await client.register(threshold="wasa95", timezone="Europe/Berlin")
            viewer = await client.add_viewer(device.device_id, device.token)
            await client.send(device.device_id, device.token, night[0])
            acked: list[Json] = []
            for batch in night[1:]:
                ack = await client.send(device.device_id, device.token, batch, batch["seq"] % 2)
                acked += [r.model_dump(mode="json") for r in ack.results]
            received: list[Message] = []
            await _read(client, device.device_id, viewer.token, received, 1)
            view = await client.night(device.device_id, viewer.token, since=0)
            again = await client.send(device.device_id, device.token, night[-1], packed=True)
            results = [r.model_dump(mode="json") for r in view.results]
            return results, acked, received, {"duplicate": again.duplicate, "state": view.state}

    results, acked, received, last = asyncio.run(asyncio.wait_for(scenario(), 45))
    expected = reference(OnnxPipeline.shipped(), night, "wasa95", "Europe/Berlin")
    assert len(expected) >= 35 and results == expected
    assert acked == [r for r in expected if r["seq"] > 1]
    assert received[0]["type"] == "state" and received[0]["last_seq"] == len(night)
    assert received[0]["current"] == expected[-1]
    assert last == {"duplicate": True, "state": expected[-1]["state"]}


@pytest.mark.timeout(60)
def test_a_subscription_receives_the_epochs_of_later_batches(server: Server) -> None:
    night = night_batches(600.0, batch_seconds=30.0, seed=2)

    async def scenario() -> tuple[list[Message], list[Json]]:
        async with Client(server.url, timeout=10) as client:
            device = await client.register()
            received: list[Message] = []
            reader = asyncio.create_task(
                _read(client, device.device_id, device.token, received, 10**6)
            )
            while not received:
                await asyncio.sleep(0.02)
            acked: list[Json] = []
            for batch in night:
                ack = await client.send(device.device_id, device.token, batch)
                acked += [r.model_dump(mode="json") for r in ack.results]
            while sum(m["type"] == "epoch" for m in received) < len(acked):
                await asyncio.sleep(0.02)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            return received, acked

    received, acked = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [m["result"] for m in received if m["type"] == "epoch"] == acked
    assert len(acked) >= 15
    for message in received:
        if message["type"] == "event":
            assert message["event"] in ("fell_asleep", "woke_up", "unknown")


def test_refusals_raise_service_error_with_the_status(server: Server) -> None:
    night: list[Batch] = night_batches(60.0)

    async def scenario() -> list[int]:
        statuses = []
        async with Client(server.url, timeout=10) as client:
            device = await client.register()
            other = await client.register()
            calls = [
                client.register(timezone="Mars/Olympus"),
                client.send(device.device_id, device.token, {**night[0], "seq": 5}),
                client.send(device.device_id, other.token, night[0]),
                client.night(device.device_id, "nonsense"),
                _read(client, device.device_id, other.token, [], 1),
            ]
            for call in calls:
                with pytest.raises(ServiceError) as refused:
                    await call
                statuses.append(refused.value.status)
        return statuses

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == [422, 409, 403, 401, 403]


async def _read(
    client: Client, device_id: str, token: str, into: list[Message], count: int
) -> None:
    """Append the device's first ``count`` messages to ``into``."""
    async for message in client.events(device_id, token):
        into.append(message)
        if len(into) == count:
            return


def test_the_server_logged_no_traceback(server: Server) -> None:
    assert "Traceback" not in Path(server.log).read_text()
