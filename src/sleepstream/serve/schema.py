"""The service's messages: batches in (JSON or msgpack), devices, tokens and results out.

A batch is what a watch has measured since its previous batch, with a sequence number
``seq`` (1, 2, 3, ... per device) that makes resending safe. Every time is Unix seconds. The
models are strict: numbers must be JSON numbers (no strings, no booleans, no NaN or infinity),
unknown fields are refused, and each series has as many values as times. What they cannot
check (time order, value ranges, units) the detector checks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Annotated, ClassVar, Literal, Self
from zoneinfo import available_timezones

import msgpack
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sleepstream.live.context import ACTIVITIES, CONFIDENCES

JSON = "application/json"
MSGPACK = "application/msgpack"
MEDIA_TYPES = (JSON, MSGPACK, "application/x-msgpack")
MAX_SEQ = 2**53
"""Largest sequence number (exact in every JSON reader)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold or ask for.

    Attributes
    ----------
    max_body_bytes
        Request bodies above this are refused (413) before they are read whole.
    max_samples
        Samples per batch, all streams, p(sleep) values and context reports together (413
        above). The default is 20 min of 50 Hz acceleration.
    max_results
        Epoch results returned by one ``GET`` (24 h); ``more`` says when there are more.
    night_hours
        What ``GET`` returns without ``since``: the results of the last this many hours.
    max_members
        Devices a group may hold (a join beyond is refused with 409); also bounds what
        ``GET /groups/{id}`` and a group's first WebSocket message list.
    """

    max_body_bytes: int = 8 * 2**20
    max_samples: int = 60_000
    max_results: int = 2880
    night_hours: float = 12.0
    max_members: int = 10_000


_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
Seconds = Annotated[float, Field(description="Unix seconds")]


class _Stream(BaseModel):
    """Samples of one stream: ``times`` and one value per time, in the field that
    :attr:`values_field` names (``ValueError`` naming :attr:`stream` when the lengths differ)."""

    model_config = _STRICT
    stream: ClassVar[str]
    values_field: ClassVar[str]
    times: list[Seconds]

    @model_validator(mode="after")
    def _lengths(self) -> Self:
        times, values = self.times, getattr(self, self.values_field)
        if len(times) != len(values):
            raise ValueError(f"{self.stream}: {len(times)} times but {len(values)} values")
        return self


class HeartRate(_Stream):
    """Heart-rate samples (25-250 bpm)."""

    stream = "heart_rate"
    values_field = "bpm"
    bpm: list[float]


class Acceleration(_Stream):
    """Raw accelerometer samples, x, y, z in g, at 10 Hz to 1 kHz."""

    stream = "acceleration"
    values_field = "xyz"
    xyz: list[Annotated[list[float], Field(min_length=3, max_length=3)]]


class Counts(_Stream):
    """Ready-made activity counts, each for the 15 s window starting at its time."""

    stream = "counts"
    values_field = "counts"
    counts: list[float]


class PSleep(_Stream):
    """Per-epoch p(sleep) from a device that runs the model itself, instead of samples: each
    time the start of a 30 s epoch (on the :00 / :30 grid), in increasing order; each ``p`` the
    model's probability of sleep for it, in [0, 1]. An epoch without data is left out."""

    stream = "p_sleep"
    values_field = "p"
    times: list[Annotated[float, Field(description="Unix seconds: the start of a 30 s epoch")]]
    p: list[Annotated[float, Field(description="probability of sleep, in [0, 1]")]]


class Context(BaseModel):
    """A motion-activity report (iOS ``CMMotionActivity``): from ``time`` on, the wearer is
    doing ``activity``."""

    model_config = _STRICT
    time: Seconds
    activity: str = Field(json_schema_extra={"enum": list(ACTIVITIES)})
    confidence: str = Field("high", json_schema_extra={"enum": list(CONFIDENCES)})

    @field_validator("activity", "confidence")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        known = {"activity": ACTIVITIES, "confidence": CONFIDENCES}[info.field_name or ""]
        if value not in known:
            raise ValueError(f"unknown {info.field_name} {value!r:.40}; expected one of {known}")
        return value


class Batch(BaseModel):
    """Samples a device measured since its previous batch; every stream is optional. A device
    that runs the model itself sends ``p_sleep`` instead of samples (a batch with both is
    refused)."""

    model_config = _STRICT
    seq: int = Field(ge=1, le=MAX_SEQ, description="1 for the device's first batch, then +1")
    heart_rate: HeartRate | None = None
    acceleration: Acceleration | None = None
    counts: Counts | None = None
    context: list[Context] = Field(default_factory=list)
    p_sleep: PSleep | None = Field(
        None, description="per-epoch p(sleep) from a device that runs the model itself"
    )

    def samples(self) -> int:
        """Samples of every stream, p(sleep) values and context reports included."""
        series = (self.heart_rate, self.acceleration, self.counts, self.p_sleep)
        return sum(len(s.times) for s in series if s is not None) + len(self.context)

    def digest(self) -> bytes:
        """SHA-256 of the batch's content, the same for its JSON and msgpack forms."""
        # Without p_sleep, the content (and so the digest) of a batch stored before the field
        # existed: a resent batch is recognised as the duplicate it is.
        unset = {"p_sleep"} if self.p_sleep is None else None
        return hashlib.sha256(self.model_dump_json(exclude=unset).encode()).digest()


@cache
def time_zones() -> frozenset[str]:
    """The IANA time-zone names a device may choose from."""
    return frozenset(available_timezones())


def _list_zones(schema: dict[str, JsonValue]) -> None:
    """The time-zone names as the ``enum`` of the field's JSON schema (in the OpenAPI)."""
    zones: list[JsonValue] = [*sorted(time_zones())]
    schema["enum"] = zones


class DeviceSettings(BaseModel):
    """The detector settings of a new device."""

    model_config = _STRICT
    threshold: str = Field(
        "wasa93", description="an operating threshold of the model: wasa93, wasa95, operating"
    )
    timezone: str = Field(
        "UTC",
        description="IANA time zone of the results' local times",
        json_schema_extra=_list_zones,
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # Only a name from the list reaches zoneinfo (which reads a file named after it).
        if value not in time_zones():
            raise ValueError(
                f"unknown time zone {value!r:.60}: expected an IANA name such as Europe/Berlin"
            )
        return value


class DeviceCreated(BaseModel):
    """A registered device and its device token (shown once: only its hash is stored)."""

    device_id: str
    token: str
    threshold: str
    timezone: str


class ViewerCreated(BaseModel):
    """A viewer token of a device (shown once)."""

    viewer_id: str
    token: str


class FieldError(BaseModel):
    """One refused part of a request: where (``["body", "heart_rate"]``), why, what kind."""

    loc: list[str | int]
    msg: str
    type: str


class Error(BaseModel):
    """Every refusal (4xx): a message, or for a malformed request its refused parts (which
    never echo the input)."""

    detail: str | list[FieldError]


State = Literal["asleep", "awake", "unknown"]


class EpochOut(BaseModel):
    """One epoch result (:class:`~sleepstream.live.detector.EpochResult`); ``p_sleep`` and
    ``p_model`` are ``null`` for an epoch without data."""

    model_config = ConfigDict(from_attributes=True)
    start: Seconds
    end: Seconds
    start_local: str
    end_local: str
    p_sleep: float | None
    p_model: float | None
    state: State
    events: list[str]
    vetoed: str | None
    late_samples: dict[str, int]
    hr_samples: int
    motion_seconds: float
    seq: int = Field(description="the batch that closed the epoch")


class BatchAck(BaseModel):
    """The answer to a batch: stored (its results), or a duplicate of a stored one."""

    seq: int
    duplicate: bool
    last_seq: int
    results: list[EpochOut]


class DeviceView(BaseModel):
    """A device's current state and its night so far."""

    device_id: str
    threshold: str
    timezone: str
    last_seq: int
    state: State | None = Field(description="the newest result's state; null before any")
    current: EpochOut | None
    results: list[EpochOut]
    more: bool = Field(description="more results follow: ask again with since = last end")


class GroupCreated(BaseModel):
    """A new group and its group token (shown once): the token reads the states and events
    of the group's members; a device that is given ``group_id`` may join it."""

    group_id: str
    token: str


class Membership(BaseModel):
    """A device's membership of a group after joining (``member``: true) or leaving."""

    group_id: str
    device_id: str
    member: bool


class MemberView(BaseModel):
    """A member of a group and its current state."""

    device_id: str
    joined: float = Field(description="Unix seconds when it joined")
    last_seq: int
    state: State | None = Field(description="the newest result's state; null before any")
    current: EpochOut | None


class GroupView(BaseModel):
    """A group's members, in the order they joined, each with its current state."""

    group_id: str
    members: list[MemberView]


def parse_batch(body: bytes, content_type: str | None, limits: Limits) -> Batch:
    """The batch in ``body`` (JSON, or msgpack by its content type), within ``limits``.

    Raises ``HTTPException`` (415 other media, 400 undecodable, 413 too many samples) or
    ``RequestValidationError`` (422) for a body that is not a batch.
    """
    media = (content_type or JSON).split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise HTTPException(415, f"Content-Type {media!r:.60} is not one of {list(MEDIA_TYPES)}")
    try:
        if media == JSON:
            batch = Batch.model_validate_json(body)
        else:
            batch = Batch.model_validate(_unpack(body))
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise HTTPException(400, f"the body is not JSON: {errors[0]['msg']}") from None
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    if batch.samples() > limits.max_samples:
        raise HTTPException(
            413, f"{batch.samples()} samples in one batch; at most {limits.max_samples}"
        )
    return batch


def _unpack(body: bytes) -> object:
    """msgpack to plain values (maps with text keys, lists, numbers, text); 400 otherwise."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, timestamp=0)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        reason = str(error) or type(error).__name__  # nesting too deep has no message
        raise HTTPException(400, f"the body is not msgpack: {reason}"[:200]) from None
