"""The devices of a server: registration, tokens, and each device's detector fed batch by batch.

A device's detector lives in memory between its batches (at most ``max_detectors`` of them,
the least recently used dropped first) and in the store after each one. The stored snapshot is
the truth: a detector is rebuilt from it after a restart, after it was dropped, when the
device's last sequence number in the store is not the one the cached detector has seen
(another server process wrote it), and whenever a batch fails half-way (bad samples, a failed
commit), so a refused batch leaves no trace in memory either. A snapshot taken with another
model (the server was upgraded) is not restored: that device starts afresh, with a warning in
the log.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sleepstream.live import state
from sleepstream.live.backends import PipelineModel
from sleepstream.live.detector import EpochResult, SleepDetector, close_together, model_id
from sleepstream.serve.feed import feed, record
from sleepstream.serve.schema import Batch, DeviceSettings
from sleepstream.serve.store import BatchCommit, Device, EpochRecord, Store
from sleepstream.serve.tokens import Grant, NewToken, Role, matches, new_token, split_token

log = logging.getLogger(__name__)

DEVICE_ID_BYTES = 12
MAX_DETECTORS = 4096
"""Detectors kept in memory by default (each about as large as its snapshot, 50-100 kB)."""


class SequenceError(Exception):
    """A batch that does not fit the device's sequence (answered with 409)."""


@dataclass(frozen=True)
class BatchOutcome:
    """What became of a batch: stored with its ``results``, or a ``duplicate`` of a stored
    one; ``last_seq`` is the device's last stored batch afterwards."""

    seq: int
    duplicate: bool
    last_seq: int
    results: list[EpochRecord]


@dataclass(frozen=True)
class DeviceNight:
    """A device, its last stored batch, and its results from ``since`` (``more``: more follow)."""

    device: Device
    last_seq: int
    current: EpochRecord | None
    results: list[EpochRecord]
    more: bool


class Devices:
    """The devices of a :class:`~sleepstream.serve.store.Store`, run with ``model``.

    Parameters
    ----------
    store
        Where devices, tokens, detector states and results are kept.
    model
        The pipeline model every detector runs (shared: it holds no stream's state).
    max_detectors
        Detectors kept in memory between batches.
    clock
        Unix seconds now (registration times).

    The methods may be called from several threads; batches are applied one at a time.
    """

    def __init__(
        self,
        store: Store,
        model: PipelineModel,
        max_detectors: int = MAX_DETECTORS,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.model = model
        self.max_detectors = max_detectors
        self.clock = clock
        self._detectors: OrderedDict[str, tuple[SleepDetector, int]] = OrderedDict()
        self._lock = threading.Lock()

    # -- devices and tokens -------------------------------------------------------------------
    def register(self, settings: DeviceSettings) -> tuple[Device, NewToken]:
        """A new device with ``settings`` and its device token.

        Raises ``ValueError`` naming a threshold that is not one of the model's.
        """
        if settings.threshold not in self.model.thresholds:
            raise ValueError(
                f"threshold {settings.threshold!r:.40} is not one of the model's "
                f"{sorted(self.model.thresholds)}"
            )
        now = self.clock()
        device = Device(
            secrets.token_urlsafe(DEVICE_ID_BYTES), settings.threshold, settings.timezone, now
        )
        self._new_detector(device)  # the settings make a detector, or raise here
        token = new_token(device.id, Role.DEVICE, now)
        self.store.add_device(device, token.grant)
        log.info("registered device %s (%s, %s)", device.id, device.threshold, device.timezone)
        return device, token

    def add_viewer(self, device_id: str) -> NewToken:
        """A new viewer token for the device."""
        token = new_token(device_id, Role.VIEWER, self.clock())
        self.store.add_grant(token.grant)
        return token

    def grant(self, token: str) -> Grant | None:
        """The stored grant of ``token``, or ``None`` when it is not a valid token."""
        parts = split_token(token)
        if parts is None:
            return None
        grant = self.store.grant(parts[0])
        return grant if grant is not None and matches(grant, parts[1]) else None

    # -- batches ------------------------------------------------------------------------------
    def add_batch(self, device_id: str, batch: Batch) -> BatchOutcome:
        """Apply one batch (see :meth:`add_batches`); raises what it failed with."""
        outcome = self.add_batches([(device_id, batch)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def add_batches(self, batches: Sequence[tuple[str, Batch]]) -> list[BatchOutcome | Exception]:
        """Apply batches of several devices together and store them in one commit.

        Each device's detector takes its batch with :attr:`~SleepDetector.hold` set; the epochs
        that close then go through the model together (:func:`close_together`, one batched
        call of the step model per round), and every stored batch is committed in one
        :meth:`~sleepstream.serve.store.Store.commit_batches`. A device that comes twice is
        applied in turn (its second batch after the first is stored).

        Returns, for each batch in order, its outcome: stored with its results, or a duplicate
        of a stored one; or the exception that refused it, with nothing of it stored:
        :class:`SequenceError` for a sequence number that skips batches or repeats one with
        other samples, the detector's ``ValueError`` for bad samples. An exception of the model
        or the store is raised: then no batch is acknowledged.
        """
        outcomes: list[BatchOutcome | Exception] = []
        with self._lock:
            while len(outcomes) < len(batches):
                first = len(outcomes)
                devices: set[str] = set()
                end = first
                while end < len(batches) and batches[end][0] not in devices:
                    devices.add(batches[end][0])
                    end += 1
                outcomes += self._apply_round(batches[first:end])
        return outcomes

    def _apply_round(self, batches: Sequence[tuple[str, Batch]]) -> list[BatchOutcome | Exception]:
        """:meth:`add_batches` for batches of distinct devices."""
        outcomes: list[BatchOutcome | Exception | None] = [None] * len(batches)
        fed: list[tuple[int, SleepDetector, list[EpochResult], bytes]] = []
        for i, (device_id, batch) in enumerate(batches):
            digest = batch.digest()
            try:
                state = self.store.state(device_id)
                if batch.seq <= state.last_seq:
                    self._check_duplicate(device_id, batch.seq, digest, state.last_seq)
                    outcomes[i] = BatchOutcome(batch.seq, True, state.last_seq, [])
                    continue
                if batch.seq != state.last_seq + 1:
                    raise SequenceError(
                        f"batch {batch.seq} does not follow the last stored batch "
                        f"{state.last_seq}: send batch {state.last_seq + 1} first"
                    )
                detector = self._detector(device_id, state.snapshot, state.last_seq)
                try:
                    fed.append((i, detector, feed(detector, batch), digest))
                except ValueError:
                    self._detectors.pop(device_id, None)
                    raise
            except (SequenceError, ValueError) as refused:
                outcomes[i] = refused
        try:
            closed = close_together([detector for _, detector, _, _ in fed])
            commits = [
                BatchCommit(
                    batches[i][0],
                    batches[i][1].seq,
                    digest,
                    detector.snapshot(),
                    [record(r, batches[i][1].seq) for r in [*early, *late]],
                )
                for (i, detector, early, digest), late in zip(fed, closed, strict=True)
            ]
            stored = self.store.commit_batches(commits)
        except BaseException:
            for i, _, _, _ in fed:
                self._detectors.pop(batches[i][0], None)
            raise
        for (i, detector, _, _), commit, ok in zip(fed, commits, stored, strict=True):
            if ok:
                self._keep(commit.device_id, detector, commit.seq)
                outcomes[i] = BatchOutcome(commit.seq, False, commit.seq, list(commit.results))
            else:
                self._detectors.pop(commit.device_id, None)
                outcomes[i] = SequenceError(
                    f"batch {commit.seq} was stored meanwhile by another server process; send "
                    "it again to be told whether it is a duplicate"
                )
        return [outcome for outcome in outcomes if outcome is not None]

    def _check_duplicate(self, device_id: str, seq: int, digest: bytes, last_seq: int) -> None:
        """Refuse a stored batch number sent with other samples (a device that lost count)."""
        stored = self.store.batch_digest(device_id, seq)
        if stored is not None and not hmac.compare_digest(stored, digest):
            raise SequenceError(
                f"batch {seq} was already stored with other samples; the device's last batch "
                f"is {last_seq}, send {last_seq + 1} next"
            )

    def _detector(self, device_id: str, snapshot: bytes | None, last_seq: int) -> SleepDetector:
        """The device's detector after batch ``last_seq``: the cached one, or restored."""
        cached = self._detectors.pop(device_id, None)
        if cached is not None and cached[1] == last_seq:
            detector = cached[0]
        else:
            device = self.store.device(device_id)
            if device is None:
                raise KeyError(f"unknown device {device_id!r}")
            detector = self._new_detector(device)
            if snapshot is not None:
                try:
                    detector.restore(snapshot)
                except ValueError as error:
                    taken_with = _model_of(snapshot)
                    if taken_with in (None, model_id(self.model)):
                        raise RuntimeError(
                            f"the stored detector state of device {device_id} cannot be "
                            f"restored ({error})"
                        ) from None
                    # The server runs another model now: its state means nothing to this one.
                    log.warning(
                        "device %s: its stored state was taken with model %s, this server "
                        "runs %s; the device starts afresh",
                        device_id,
                        taken_with,
                        model_id(self.model),
                    )
        self._keep(device_id, detector, last_seq)
        return detector

    def _keep(self, device_id: str, detector: SleepDetector, last_seq: int) -> None:
        """Cache the device's detector after batch ``last_seq`` (dropping the least recent)."""
        self._detectors[device_id] = (detector, last_seq)
        while len(self._detectors) > self.max_detectors:
            self._detectors.popitem(last=False)

    def _new_detector(self, device: Device) -> SleepDetector:
        detector = SleepDetector(self.model, threshold=device.threshold, timezone=device.timezone)
        detector.hold = True  # epochs close in add_batches, together
        return detector

    # -- reading ------------------------------------------------------------------------------
    def night(self, device_id: str, since: float | None, hours: float, limit: int) -> DeviceNight:
        """The device's results that end after ``since`` (default: ``hours`` before its
        newest result's end), at most ``limit``."""
        device = self.store.device(device_id)
        if device is None:
            raise KeyError(f"unknown device {device_id!r}")
        last_seq = self.store.state(device_id).last_seq
        current = self.store.last_epoch(device_id)
        if since is None:
            since = -float("inf") if current is None else current.end - hours * 3600.0
        results = self.store.epochs(device_id, since, limit + 1)
        return DeviceNight(device, last_seq, current, results[:limit], len(results) > limit)


def _model_of(snapshot: bytes) -> str | None:
    """The model a snapshot was taken with (``None`` if it is unreadable)."""
    try:
        taken_with = state.unpack(snapshot)[0].get("model_id")
    except ValueError:
        return None
    return taken_with if isinstance(taken_with, str) else None
