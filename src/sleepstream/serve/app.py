"""The HTTP and WebSocket API of ``sleepstream serve`` (FastAPI; OpenAPI at ``/docs``).

=========================================  ============================  ====================
endpoint                                   token                         what
=========================================  ============================  ====================
``POST /devices``                          none                          register a device
``POST /devices/{id}/batches``             the device's                  send samples
``WS /devices/{id}/batches?token=...``     the device's                  send many batches
``POST /devices/{id}/viewers``             the device's                  make a viewer token
``GET /devices/{id}``                      the device's or a viewer's    state and night
``WS /devices/{id}/events?token=...``      the device's or a viewer's    results as they come
``PUT /devices/{id}/groups/{group}``       the device's                  join a group
``DELETE /devices/{id}/groups/{group}``    the device's                  leave a group
``POST /groups``                           none                          create a group
``GET /groups/{group}``                    the group's                   members' states
``WS /groups/{group}/events?token=...``    the group's                   members' results
``GET /health``                            none                          liveness
=========================================  ============================  ====================

Tokens go in ``Authorization: Bearer TOKEN`` (the WebSocket takes ``?token=``, as browsers
cannot set headers there). A group token reads its group and nothing else; a device or viewer
token reads no group. A device joins a group with its own token, so its consent is needed for
the group's token to follow it. Every error is a 4xx with a JSON body ``{"detail": ...}``; see
``docs/robustness.md`` ("The service") for each one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sleepstream.live.backends import PipelineModel
from sleepstream.serve.devices import BatchOutcome, Devices, SequenceError
from sleepstream.serve.intake import Intake
from sleepstream.serve.limits import Buckets, RateLimits, TokenBuckets, retry_after
from sleepstream.serve.redis_store import RedisBuckets, RedisStore
from sleepstream.serve.schema import (
    JSON,
    MSGPACK,
    BatchAck,
    DeviceCreated,
    DeviceSettings,
    DeviceView,
    EpochOut,
    Error,
    GroupCreated,
    GroupView,
    Limits,
    Membership,
    MemberView,
    ViewerCreated,
    parse_batch,
)
from sleepstream.serve.store import EpochRecord, Group, Joining, MemberState, Store
from sleepstream.serve.subscribers import Broker, Subscribers, Subscription, messages
from sleepstream.serve.tokens import Grant, Role, new_group_token

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
"""WebSocket close code for a refused token."""
TRY_AGAIN_LATER = 1013
"""WebSocket close code for a subscriber cut off for falling behind."""
KEEP_ALIVE_SECONDS = 75
GROUP_ID_BYTES = 12
"""Idle HTTP connections are kept this long, past a watch's 30 s or 60 s between batches."""
DESCRIPTION = """
A watch registers (`POST /devices`) and sends numbered batches of samples with its device
token; each is acknowledged once stored. Viewer tokens read one device's state. A group
(`POST /groups`) gathers the watches that join it with their own token (`PUT
/devices/{device_id}/groups/{group_id}`); its group token reads all of them at once.

Not listed below (OpenAPI has no WebSockets):

- **`WS /devices/{device_id}/events?token=TOKEN`** (a device or viewer token) sends a `state`
  message, then an `epoch` message for every new epoch result and an `event` message for each
  `fell_asleep`, `woke_up` or `unknown`.
- **`WS /devices/{device_id}/batches?token=TOKEN`** (the device's token) takes batches, one per
  message (binary: msgpack; text: JSON), and answers each in turn with `{"type": "ack", ...}`
  (the answer of `POST /devices/{device_id}/batches`) or `{"type": "error", "status": ...,
  "detail": ...}` (the status the `POST` would have had).
- **`WS /groups/{group_id}/events?token=TOKEN`** (the group's token) sends a `state` message
  listing the members and their current states (as `GET /groups/{group_id}`), then the
  `epoch` and `event` messages of every member (each with its `device_id`), and a `joined` or
  `left` message (`{"type": "joined", "group_id": ..., "device_id": ...}`) when a device
  joins or leaves: a member's results from its join on, none after it left.
"""
_bearer = HTTPBearer(auto_error=False, description="a device, viewer or group token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def create_app(
    store: Store,
    model: PipelineModel | None = None,
    limits: Limits | None = None,
    rates: RateLimits | None = None,
    broker: Broker | None = None,
) -> FastAPI:
    """The API over ``store``, running ``model`` (default: the shipped model file), with
    ``limits`` on each request and ``rates`` on how often a token or an address may call.

    The caller owns the store (and closes it after the app has stopped). With a ``broker``,
    results reach subscribers through it, whichever server process stored them (``--redis``).
    """
    if model is None:
        from sleepstream.live.backends import OnnxPipeline

        model = OnnxPipeline.shipped()
    limits = limits or Limits()
    rates = rates or RateLimits()
    per_token: Buckets
    per_address: Buckets
    if isinstance(store, RedisStore):  # counted across the server processes
        per_token = RedisBuckets(store, "token", rates.per_token, rates.token_burst)
        per_address = RedisBuckets(store, "address", rates.per_address, rates.address_burst)
    else:
        per_token = TokenBuckets(rates.per_token, rates.token_burst, rates.max_keys)
        per_address = TokenBuckets(rates.per_address, rates.address_burst, rates.max_keys)
    devices = Devices(store, model)
    subscribers = Subscribers()

    def publish(device_id: str, results: Sequence[EpochRecord]) -> None:
        subscribers.publish(device_id, messages(device_id, results))

    intake = Intake(devices, publish if broker is None else None)
    app = FastAPI(
        lifespan=None if broker is None else broker.lifespan(subscribers),
        title="sleepstream",
        summary="Live sleep state for many watches, pushed to whoever may see it.",
        description=DESCRIPTION,
    )
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    _add_error_handlers(app)

    def authenticated(credentials: Credentials) -> Grant:
        """The grant of the request's token (401 without one), its request taken (429)."""
        found = devices.grant(credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(
                401,
                "a valid token is needed (Authorization: Bearer TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        _take(per_token, found.key, "per token")
        return found

    def grant(device_id: str, credentials: Credentials, role: Role | None) -> Grant:
        """The grant of the request's token for ``device_id`` (``role``: only that role)."""
        found = authenticated(credentials)
        if found.role is Role.GROUP:
            raise HTTPException(403, "a group token reads only its group (GET /groups/ID)")
        if found.device_id != device_id:
            raise HTTPException(403, f"this token is not for device {device_id}")
        if role is not None and found.role != role:
            raise HTTPException(
                403, "a viewer token can only read; this needs the device's own token"
            )
        return found

    def group_grant(group_id: str, credentials: Credentials) -> Grant:
        """The grant of the request's token for the group ``group_id``."""
        found = authenticated(credentials)
        if found.role is not Role.GROUP:
            raise HTTPException(
                403, "a device or viewer token reads no group; this needs the group's token"
            )
        if found.group_id != group_id:
            raise HTTPException(403, f"this token is not for group {group_id}")
        return found

    def member_changed(group_id: str, device_id: str, joined: bool) -> None:
        """Tell this process's subscribers of the group (with a broker, the broker does)."""
        if broker is None:
            subscribers.change_member(group_id, device_id, joined)

    @app.get("/health")
    def health() -> dict[str, str]:
        """Whether the server answers."""
        return {"status": "ok"}

    def address_limit(request: Request) -> None:
        """Take a request from the bucket of the client's address."""
        _take(per_address, request.client.host if request.client else "", "per address")

    @app.post(
        "/devices",
        status_code=201,
        dependencies=[Depends(address_limit)],
        responses=_errors(400, 413, 422, 429),
    )
    def register(settings: Annotated[DeviceSettings | None, Body()] = None) -> DeviceCreated:
        """Register a device; the answer holds its device token, shown this once."""
        try:
            device, token = devices.register(settings or DeviceSettings.model_validate({}))
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        return DeviceCreated(
            device_id=device.id,
            token=token.text,
            threshold=device.threshold,
            timezone=device.timezone,
        )

    @app.post(
        "/devices/{device_id}/batches",
        openapi_extra={"requestBody": _batch_body()},
        responses=_errors(400, 401, 403, 409, 413, 415, 422, 429),
    )
    async def add_batch(device_id: str, request: Request, credentials: Credentials) -> BatchAck:
        """Send a batch of samples (JSON, or msgpack with ``Content-Type: application/msgpack``).

        Acknowledged once stored: the detector state, the new epoch results and ``seq``
        are committed together. A batch sent again (``seq`` at or below the last stored) is
        acknowledged as a duplicate and not applied again.
        """
        await run_in_threadpool(grant, device_id, credentials, Role.DEVICE)
        body = await request.body()
        batch = await run_in_threadpool(
            parse_batch, body, request.headers.get("content-type"), limits
        )
        try:
            outcome = await intake.submit(device_id, batch)
        except SequenceError as error:
            raise HTTPException(409, str(error)) from None
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        return _ack(outcome)

    @app.websocket("/devices/{device_id}/batches")
    async def batch_stream(websocket: WebSocket, device_id: str, token: str = "") -> None:
        """Batches over one connection: each message a batch (a binary message msgpack, a text
        message JSON), each answered in turn with ``{"type": "ack", ...}`` (the ``BatchAck``
        of ``POST``) or ``{"type": "error", "status": ..., "detail": ...}`` with the status
        ``POST`` would have had; the connection stays open after a refused batch."""
        found = await run_in_threadpool(devices.grant, token)
        if found is None or found.device_id != device_id or found.role != Role.DEVICE:
            await websocket.close(POLICY_VIOLATION, "this device's own token is needed")
            return
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            body, media = (text.encode(), JSON) if text is not None else (data or b"", MSGPACK)
            try:
                if len(body) > limits.max_body_bytes:
                    raise HTTPException(413, f"the message is over {limits.max_body_bytes} bytes")
                await run_in_threadpool(_take, per_token, found.key, "per token")
                batch = await run_in_threadpool(parse_batch, body, media, limits)
                answer = _ack(await intake.submit(device_id, batch)).model_dump(mode="json")
                answer["type"] = "ack"
            except HTTPException as error:
                answer = {"type": "error", "status": error.status_code, "detail": error.detail}
            except RequestValidationError as error:
                answer = {"type": "error", "status": 422, "detail": _validation_detail(error)}
            except SequenceError as error:
                answer = {"type": "error", "status": 409, "detail": str(error)}
            except ValueError as error:
                answer = {"type": "error", "status": 422, "detail": str(error)}
            await websocket.send_json(answer)

    @app.post(
        "/devices/{device_id}/viewers", status_code=201, responses=_errors(401, 403, 422, 429)
    )
    def add_viewer(device_id: str, credentials: Credentials) -> ViewerCreated:
        """Make a viewer token: it reads this device's state and events, nothing else."""
        grant(device_id, credentials, Role.DEVICE)
        token = devices.add_viewer(device_id)
        return ViewerCreated(viewer_id=token.grant.key, token=token.text)

    @app.get("/devices/{device_id}", responses=_errors(401, 403, 422, 429))
    def night(
        device_id: str,
        credentials: Credentials,
        since: Annotated[
            float | None,
            Query(
                description="Unix seconds; default: 12 h before the newest result's end",
                allow_inf_nan=False,
            ),
        ] = None,
    ) -> DeviceView:
        """The device's current state and its night so far (results ending after ``since``)."""
        grant(device_id, credentials, None)
        found = devices.night(device_id, since, limits.night_hours, limits.max_results)
        current = None if found.current is None else EpochOut.model_validate(found.current)
        return DeviceView(
            device_id=device_id,
            threshold=found.device.threshold,
            timezone=found.device.timezone,
            last_seq=found.last_seq,
            state=None if current is None else current.state,
            current=current,
            results=[EpochOut.model_validate(r) for r in found.results],
            more=found.more,
        )

    async def admit(websocket: WebSocket, found: Grant | None, allowed: bool, refusal: str) -> bool:
        """Accept a subscriber's WebSocket if its token is ``allowed`` and within its rate;
        otherwise close it (1008 with ``refusal``, or 1013 with when to retry)."""
        if found is None or not allowed:
            await websocket.close(POLICY_VIOLATION, refusal)
            return False
        wait = await run_in_threadpool(per_token.take, found.key)
        if wait > 0:
            reason = f"too many requests per token; retry after {retry_after(wait)} s"
            await websocket.close(TRY_AGAIN_LATER, reason)
            return False
        await websocket.accept()
        return True

    @app.websocket("/devices/{device_id}/events")
    async def events(websocket: WebSocket, device_id: str, token: str = "") -> None:
        """Every new epoch result of the device (``{"type": "epoch", ...}``) and each event
        (``{"type": "event", "event": "fell_asleep" | "woke_up" | "unknown", ...}``),
        after a first ``{"type": "state", ...}`` message with the device's current state."""
        found = await run_in_threadpool(devices.grant, token)
        allowed = found is not None and found.device_id == device_id
        if not await admit(websocket, found, allowed, "a valid token for this device is needed"):
            return
        subscription = subscribers.subscribe(device_id)
        closed = asyncio.ensure_future(_until_closed(websocket))
        try:
            state = await run_in_threadpool(devices.night, device_id, None, 0.0, 0)
            last = None if state.current is None else EpochOut.model_validate(state.current)
            await websocket.send_json(
                {
                    "type": "state",
                    "device_id": device_id,
                    "last_seq": state.last_seq,
                    "current": None if last is None else last.model_dump(mode="json"),
                }
            )
            await _forward(websocket, subscription, subscribers, closed)
        finally:
            closed.cancel()
            subscribers.unsubscribe(subscription)

    # -- groups -------------------------------------------------------------------------------
    @app.post(
        "/groups", status_code=201, dependencies=[Depends(address_limit)], responses=_errors(429)
    )
    def create_group() -> GroupCreated:
        """Create a group; the answer holds its group token, shown this once. Devices join it
        with their own token and its id; the group token reads them all."""
        now = devices.clock()
        group = Group(secrets.token_urlsafe(GROUP_ID_BYTES), now)
        token = new_group_token(group.id, now)
        store.add_group(group, token.grant)
        log.info("created group %s", group.id)
        return GroupCreated(group_id=group.id, token=token.text)

    @app.put(
        "/devices/{device_id}/groups/{group_id}",
        responses=_errors(401, 403, 404, 409, 422, 429, described={409: _GROUP_ERRORS[409]}),
    )
    async def join_group(device_id: str, group_id: str, credentials: Credentials) -> Membership:
        """Join the group, with the device's own token (its consent): from the answer on, the
        group's token reads this device's state and events, until it leaves. Joining again
        changes nothing."""
        await run_in_threadpool(grant, device_id, credentials, Role.DEVICE)
        try:
            joining = await run_in_threadpool(
                store.add_member, group_id, device_id, devices.clock(), limits.max_members
            )
        except KeyError:
            raise HTTPException(404, f"unknown group {group_id}") from None
        if joining is Joining.FULL:
            raise HTTPException(
                409, f"group {group_id} has {limits.max_members} members, the most it may have"
            )
        if joining is Joining.JOINED:
            member_changed(group_id, device_id, True)
        return Membership(group_id=group_id, device_id=device_id, member=True)

    @app.delete(
        "/devices/{device_id}/groups/{group_id}", responses=_errors(401, 403, 404, 422, 429)
    )
    async def leave_group(device_id: str, group_id: str, credentials: Credentials) -> Membership:
        """Leave the group, with the device's own token: from the answer on, the group's
        token reads nothing of this device. Leaving a group it is not a member of is fine."""
        await run_in_threadpool(grant, device_id, credentials, Role.DEVICE)
        if await run_in_threadpool(store.group, group_id) is None:
            raise HTTPException(404, f"unknown group {group_id}")
        if await run_in_threadpool(store.remove_member, group_id, device_id):
            member_changed(group_id, device_id, False)
        return Membership(group_id=group_id, device_id=device_id, member=False)

    @app.get("/groups/{group_id}", responses=_errors(401, 403, 422, 429, described=_GROUP_ERRORS))
    def group_view(group_id: str, credentials: Credentials) -> GroupView:
        """The group's members, in the order they joined, each with its current state."""
        group_grant(group_id, credentials)
        members = [_member_view(m) for m in store.member_states(group_id)]
        return GroupView(group_id=group_id, members=members)

    @app.websocket("/groups/{group_id}/events")
    async def group_events(websocket: WebSocket, group_id: str, token: str = "") -> None:
        """Every new epoch result and event of each member of the group (the messages of
        ``WS /devices/{id}/events``), and a ``joined`` or ``left`` message when a device
        joins or leaves, after a first ``{"type": "state", ...}`` message with the members'
        current states."""
        found = await run_in_threadpool(devices.grant, token)
        allowed = found is not None and found.role is Role.GROUP and found.group_id == group_id
        if not await admit(websocket, found, allowed, "this group's token is needed"):
            return
        subscription = subscribers.subscribe_group(group_id)
        closed = asyncio.ensure_future(_until_closed(websocket))
        try:
            # Members first, then their states: a result stored in between is in the states.
            if not subscribers.members_known(group_id):
                members = await run_in_threadpool(store.members, group_id)
                subscribers.set_members(group_id, members)
            states = await run_in_threadpool(store.member_states, group_id)
            view = GroupView(group_id=group_id, members=[_member_view(m) for m in states])
            await websocket.send_json({"type": "state", **view.model_dump(mode="json")})
            await _forward(websocket, subscription, subscribers, closed)
        finally:
            closed.cancel()
            subscribers.unsubscribe(subscription)

    app.openapi = lambda: _openapi(app, model.thresholds)  # type: ignore[method-assign]
    return app


async def _forward(
    websocket: WebSocket,
    subscription: Subscription,
    subscribers: Subscribers,
    closed: asyncio.Task[None],
) -> None:
    """Send the subscription's messages as they come, until the client closes the WebSocket
    (``closed`` is done), or close it with 1013 when the subscriber fell too far behind.

    A send (or that close) the client does not read within ``max_lag`` seconds ends the
    connection without more ado: what waits for a client that stopped reading stays bounded.
    """
    try:
        while True:
            message = asyncio.ensure_future(subscription.take(subscribers.clock))
            await asyncio.wait({message, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                message.cancel()
                return
            if message.result() is None:
                await asyncio.wait_for(
                    websocket.close(TRY_AGAIN_LATER, "fell too far behind"), subscribers.max_lag
                )
                return
            await asyncio.wait_for(websocket.send_json(message.result()), subscribers.max_lag)
    except TimeoutError:
        log.warning(
            "a subscriber read nothing for %.0f s: its connection ends", subscribers.max_lag
        )


def _member_view(member: MemberState) -> MemberView:
    current = None if member.current is None else EpochOut.model_validate(member.current)
    return MemberView(
        device_id=member.device_id,
        joined=member.joined,
        last_seq=member.last_seq,
        state=None if current is None else current.state,
        current=current,
    )


async def _until_closed(websocket: WebSocket) -> None:
    """Returns when the client closes the WebSocket (what it sends is ignored)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


def _take(buckets: Buckets, key: str, what: str) -> None:
    """Take a request from the bucket of ``key``; 429 with ``Retry-After`` when it is empty."""
    wait = buckets.take(key)
    if wait > 0:
        seconds = retry_after(wait)
        raise HTTPException(
            429,
            f"too many requests {what}: at most {buckets.per_minute:g} a minute, "
            f"{buckets.burst} at once; retry after {seconds} s",
            headers={"Retry-After": seconds},
        )


_ERRORS = {
    400: "the body is not JSON, or not msgpack",
    401: "no valid token",
    403: "the token is not for this device (a group token is for none), or a viewer's where "
    "the device's is needed",
    404: "no such group",
    409: "the sequence number skips or contradicts stored batches",
    413: "the body, or the samples in the batch, are over the limits",
    415: "the body is neither JSON nor msgpack (Content-Type)",
    422: "a field or value that is refused",
    429: "too many requests: retry after Retry-After seconds",
}
_GROUP_ERRORS = {
    403: "the token is not this group's (a device or viewer token reads no group)",
    409: "the group has the most members it may have",
}


def _errors(
    *codes: int, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers of the refusals ``codes`` (with their headers), described as in
    ``described``, else as in :data:`_ERRORS`."""
    headers = {
        401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
        429: {"Retry-After": {"schema": {"type": "integer"}, "required": True}},
    }
    texts = {**_ERRORS, **(described or {})}
    return {
        code: {"model": Error, "description": texts[code], "headers": headers.get(code, {})}
        for code in codes
    }


def _batch_body() -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Batch"}
    return {"required": True, "content": {JSON: {"schema": schema}, MSGPACK: {"schema": schema}}}


def _openapi(app: FastAPI, thresholds: Collection[str]) -> dict[str, Any]:
    """The OpenAPI document, with the batch schema the batch endpoint reads by hand and the
    model's threshold names."""
    from sleepstream.serve.schema import Batch

    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        batch = Batch.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update({**batch.pop("$defs", {}), "Batch": batch})
        schemas["DeviceSettings"]["properties"]["threshold"]["enum"] = sorted(thresholds)
        app.openapi_schema = document
    return app.openapi_schema


def _ack(outcome: BatchOutcome) -> BatchAck:
    return BatchAck(
        seq=outcome.seq,
        duplicate=outcome.duplicate,
        last_seq=outcome.last_seq,
        results=[EpochOut.model_validate(r) for r in outcome.results],
    )


def _validation_detail(error: RequestValidationError) -> list[dict[str, Any]]:
    """The errors of a refused body, without echoing its values."""
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in error.errors()[:20]
    ]


def _add_error_handlers(app: FastAPI) -> None:
    """4xx answers as ``{"detail": ...}`` without echoing the input; 500 as JSON too."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(error)}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; nothing was stored"}, status_code=500)


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get 413 (declared or counted)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            too_large = declared.isdigit()
            detail = (
                f"the body is over {self.max_bytes} bytes" if too_large else "bad Content-Length"
            )
            await JSONResponse({"detail": detail}, 413 if too_large else 400)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"the body is over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)


class HideTokens(logging.Filter):
    """Log records with the ``token=`` of WebSocket URLs blanked out.

    Examples
    --------
    >>> record = logging.LogRecord("uvicorn.error", 20, "", 0, '"%s" [accepted]', ("/e?token=ab.cd",), None)
    >>> HideTokens().filter(record), record.getMessage()
    (True, '"/e?token=..." [accepted]')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Blank the tokens out of ``record``; always keep it."""
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = _TOKEN_IN_URL.sub("token=...", message), ()
        return True


_TOKEN_IN_URL = re.compile(r"token=[^&\s\"']*")


def run(
    host: str,
    port: int,
    db: str | Path,
    redis: str | None = None,
    rates: RateLimits | None = None,
) -> int:
    """Serve the API on ``host:port`` until stopped, with the SQLite store ``db``, or with
    the Redis at the URL ``redis`` shared with other server processes; ``rates``: the rate
    limits of each process."""
    import uvicorn

    from sleepstream.paths import check_output_file
    from sleepstream.serve.sqlite import SQLiteStore

    store: Store
    broker: Broker | None = None
    if redis is None:
        store = SQLiteStore(check_output_file(db, "--db file"))
    else:
        from sleepstream.serve.redis_events import RedisEvents
        from sleepstream.serve.redis_store import RedisStore

        store = RedisStore(redis)
        broker = RedisEvents(redis, store)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(HideTokens())
    try:
        uvicorn.run(
            create_app(store, rates=rates, broker=broker),
            host=host,
            port=port,
            ws="websockets-sansio",
            ws_max_size=Limits().max_body_bytes + 1024,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
    finally:
        store.close()
    return 0
