"""A small asyncio client of ``sleepstream serve``: register, send batches, read, subscribe.

One :class:`Client` holds one HTTP connection pool (httpx) to one server; each call that
needs a token takes it as an argument, so one client serves a watch and its viewers alike.
Answers are the service's own models (:mod:`sleepstream.serve.schema`); a refusal (4xx) raises
:class:`ServiceError` with the server's status and detail.

Examples
--------
>>> async def night(url: str, batch: dict[str, object]) -> None:  # doctest: +SKIP
...     async with Client(url) as client:
...         device = await client.register(timezone="Europe/Berlin")
...         await client.send(device.device_id, device.token, batch)
...         view = await client.night(device.device_id, device.token)
...         async for message in client.events(device.device_id, device.token):
...             print(message["type"])
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import httpx
import msgpack
import websockets

from sleepstream.serve.schema import MSGPACK, BatchAck, DeviceCreated, DeviceView, ViewerCreated

Message = dict[str, Any]
"""A subscriber's message: ``{"type": "state" | "epoch" | "event", ...}``."""


class ServiceError(RuntimeError):
    """A refusal of the server: its HTTP status, its ``detail``, and for 429 the seconds
    after which to try again (``Retry-After``)."""

    def __init__(self, status: int, detail: object, retry_after: float | None = None):
        super().__init__(f"the server answered {status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after


class Client:
    """The API of one server at ``url`` (``http://127.0.0.1:8000``), for any of its devices.

    Parameters
    ----------
    url
        The server's base URL, ``http://`` or ``https://``.
    timeout
        Seconds to wait for each answer.

    Use it as an async context manager (``async with Client(url) as client``), or call
    :meth:`close` when done.
    """

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def register(self, threshold: str = "wasa93", timezone: str = "UTC") -> DeviceCreated:
        """Register a device with these detector settings; its token is in the answer."""
        answer = await self._http.post(
            "/devices", json={"threshold": threshold, "timezone": timezone}
        )
        return DeviceCreated.model_validate(_checked(answer))

    async def send(
        self, device_id: str, token: str, batch: Mapping[str, Any], packed: bool = False
    ) -> BatchAck:
        """Send ``batch`` (a :class:`~sleepstream.serve.schema.Batch` as plain values, with
        its ``seq``), as JSON or, with ``packed``, as msgpack; the server's acknowledgement."""
        url = f"/devices/{device_id}/batches"
        if packed:
            headers = {**_bearer(token), "Content-Type": MSGPACK}
            answer = await self._http.post(url, content=msgpack.packb(batch), headers=headers)
        else:
            answer = await self._http.post(url, json=batch, headers=_bearer(token))
        return BatchAck.model_validate(_checked(answer))

    async def night(self, device_id: str, token: str, since: float | None = None) -> DeviceView:
        """The device's current state and its results ending after ``since`` (Unix seconds;
        default: the server's last 12 h), with a device or a viewer token."""
        params = {} if since is None else {"since": since}
        answer = await self._http.get(
            f"/devices/{device_id}", params=params, headers=_bearer(token)
        )
        return DeviceView.model_validate(_checked(answer))

    async def add_viewer(self, device_id: str, token: str) -> ViewerCreated:
        """A new viewer token of the device (which reads, never writes), with its own token."""
        answer = await self._http.post(f"/devices/{device_id}/viewers", headers=_bearer(token))
        return ViewerCreated.model_validate(_checked(answer))

    async def events(self, device_id: str, token: str) -> AsyncIterator[Message]:
        """The device's messages as they come: first ``{"type": "state", ...}``, then an
        ``epoch`` message for each result and an ``event`` message for each ``fell_asleep``,
        ``woke_up`` or ``unknown``. Ends when the server closes the connection normally; raises
        :class:`ServiceError` for a refused token (403) or a connection cut off (503)."""
        base = "ws" + self.url.removeprefix("http")
        url = f"{base}/devices/{device_id}/events?token={token}"
        try:
            socket = await websockets.connect(url, max_size=2**20)
        except websockets.InvalidStatus as refused:  # the token was refused before accepting
            raise ServiceError(refused.response.status_code, "refused") from None
        async with socket:
            try:
                async for text in socket:
                    yield json.loads(text)
            except websockets.ConnectionClosedError as closed:  # cut off, or the server stopped
                raise ServiceError(503, closed.rcvd.reason if closed.rcvd else "closed") from None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _checked(answer: httpx.Response) -> Any:
    """The JSON body of a success; :class:`ServiceError` for a refusal."""
    if answer.is_success:
        return answer.json()
    try:
        detail = answer.json().get("detail")
    except ValueError:
        detail = answer.text[:200]
    wait = answer.headers.get("Retry-After", "")
    retry_after = float(wait) if wait.isdigit() else None
    raise ServiceError(answer.status_code, detail, retry_after)
