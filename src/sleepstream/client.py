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

A group follows many watches with one token:

>>> async def world(url: str, watches: list[tuple[str, str]]) -> None:  # doctest: +SKIP
...     async with Client(url) as client:
...         group = await client.create_group()
...         for device_id, token in watches:  # each watch joins with its own token
...             await client.join(device_id, token, group.group_id)
...         async for message in client.group_events(group.group_id, group.token):
...             print(message["type"], message.get("device_id"))
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import httpx
import msgpack
import websockets

from sleepstream.serve.schema import (
    MSGPACK,
    BatchAck,
    DeviceCreated,
    DeviceView,
    GroupCreated,
    GroupView,
    Membership,
    ViewerCreated,
)

Message = dict[str, Any]
"""A subscriber's message: ``{"type": "state" | "epoch" | "event", ...}`` (of a group, also
``"joined"`` and ``"left"``)."""
MAX_MESSAGE_BYTES = 2**20
MAX_GROUP_BYTES = 2**25
"""A group's first message lists up to 10,000 members' states (about 6 MB)."""


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

    async def create_group(self) -> GroupCreated:
        """A new group; its group token (in the answer) reads the devices that join it."""
        return GroupCreated.model_validate(_checked(await self._http.post("/groups")))

    async def join(self, device_id: str, token: str, group_id: str) -> Membership:
        """The device joins the group, with the device's own token (joining again is fine)."""
        url = f"/devices/{device_id}/groups/{group_id}"
        return Membership.model_validate(
            _checked(await self._http.put(url, headers=_bearer(token)))
        )

    async def leave(self, device_id: str, token: str, group_id: str) -> Membership:
        """The device leaves the group, with the device's own token."""
        url = f"/devices/{device_id}/groups/{group_id}"
        answer = await self._http.delete(url, headers=_bearer(token))
        return Membership.model_validate(_checked(answer))

    async def group(self, group_id: str, token: str) -> GroupView:
        """The group's members and their current states, with the group's token."""
        answer = await self._http.get(f"/groups/{group_id}", headers=_bearer(token))
        return GroupView.model_validate(_checked(answer))

    async def events(self, device_id: str, token: str) -> AsyncIterator[Message]:
        """The device's messages as they come: first ``{"type": "state", ...}``, then an
        ``epoch`` message for each result and an ``event`` message for each ``fell_asleep``,
        ``woke_up`` or ``unknown``. Ends when the server closes the connection normally; raises
        :class:`ServiceError` for a refused token (403) or a connection cut off (503)."""
        path = f"/devices/{device_id}/events"
        async with contextlib.aclosing(self._messages(path, token)) as messages:
            async for message in messages:
                yield message

    async def group_events(self, group_id: str, token: str) -> AsyncIterator[Message]:
        """The messages of every member of the group, with the group's token: first
        ``{"type": "state", "members": [...], ...}``, then the ``epoch`` and ``event``
        messages of the members (each with its ``device_id``), and ``joined`` or ``left``
        when a device joins or leaves. Ends and raises as :meth:`events`."""
        path = f"/groups/{group_id}/events"
        async with contextlib.aclosing(self._messages(path, token, MAX_GROUP_BYTES)) as messages:
            async for message in messages:
                yield message

    async def _messages(
        self, path: str, token: str, max_size: int = MAX_MESSAGE_BYTES
    ) -> AsyncGenerator[Message, None]:
        """The messages of the WebSocket at ``path``, opened with ``token``."""
        url = f"ws{self.url.removeprefix('http')}{path}?token={token}"
        try:
            socket = await websockets.connect(url, max_size=max_size)
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
