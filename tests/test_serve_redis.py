"""The service on Redis (``sleepstream serve --redis URL``): the store, the event stream, and two
real server processes sharing one real ``redis-server`` (docs/robustness.md, "The service").

Every test here needs ``redis-server`` on the PATH (Debian: ``apt-get install -y
redis-server``) and fails without it; each module run starts a private one on a free port of
127.0.0.1, in memory only, and stops it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import msgpack
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_serve import Batch, Json, as_json, bearer, night_batches, pushed
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from sleepstream.cli import main
from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.detector import SleepDetector
from sleepstream.serve.app import create_app
from sleepstream.serve.devices import Devices, SequenceError
from sleepstream.serve.feed import record
from sleepstream.serve.limits import RateLimits
from sleepstream.serve.redis_events import RedisEvents
from sleepstream.serve.redis_store import RedisStore, decode_results
from sleepstream.serve.schema import Batch as BatchModel
from sleepstream.serve.schema import DeviceSettings
from sleepstream.serve.sqlite import SQLiteStore
from sleepstream.serve.store import BatchCommit, Device, DeviceState, EpochRecord, Store
from sleepstream.serve.tokens import Role, new_token


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def stop(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> int:
    """Stop a child process: ``how``, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(how)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=15)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free port of 127.0.0.1 that keeps nothing on disk."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(
            "redis-server is not on the PATH: these tests need a real Redis "
            "(Debian/Ubuntu: apt-get install -y redis-server)",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "log")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited: {(folder / 'log').read_text()}")
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer within 20 s")
            time.sleep(0.05)
        yield url
    finally:
        client.close()
        stop(process)


@pytest.fixture
def open_store(redis_url: str) -> Iterator[Callable[[], RedisStore]]:
    """Stores over the test's own key prefix (one per server process of a test)."""
    prefix, stores = f"test-{secrets.token_hex(4)}:", []

    def opened() -> RedisStore:
        stores.append(RedisStore(redis_url, prefix=prefix))
        return stores[-1]

    yield opened
    for store in stores:
        store.close()


@pytest.fixture(scope="module")
def model() -> OnnxPipeline:
    return OnnxPipeline.shipped()


@pytest.fixture(scope="module")
def batches() -> list[Batch]:
    """Twenty minutes in 60 s batches."""
    return night_batches(1200.0, batch_seconds=60.0, seed=1)


def reference(
    model: OnnxPipeline, batches: list[Batch], threshold: str = "wasa93", timezone: str = "UTC"
) -> list[Json]:
    """The results of a plain detector fed the same batches (:meth:`SleepDetector.add`)."""
    detector = SleepDetector(model, threshold=threshold, timezone=timezone)
    out = []
    for batch in batches:
        hr, acc = batch["heart_rate"], batch["acceleration"]
        results = detector.add(
            heart_rate=(hr["times"], hr["bpm"]), acceleration=(acc["times"], acc["xyz"])
        )
        out += [as_json(record(r, batch["seq"])) for r in results]
    return out


def registered(store: RedisStore, device_id: str | None = None) -> Device:
    device = Device(device_id or secrets.token_urlsafe(12), "wasa93", "Europe/Berlin", 1.5e9)
    store.add_device(device, new_token(device.id, Role.DEVICE, 1.5e9).grant)
    return device


AWAKE = EpochRecord(30.0, 60.0, "01:00:30", "01:01:00", 0.1 + 0.2, 0.5, "awake", (), "cycling")
EPOCHS = [
    EpochRecord(0.0, 30.0, "01:00:00", "01:00:30", None, None, "unknown", ("unknown",), None),
    replace(AWAKE, late_samples={"heart_rate": 2}, hr_samples=6, motion_seconds=12.5, seq=1),
    EpochRecord(60.0, 90.0, "01:01:00", "01:01:30", 0.9, 0.875, "asleep", ("fell_asleep",), None),
]
"""Results as the store gets them: ``None`` probabilities, events, a veto, late samples."""


# -- the store ---------------------------------------------------------------------------------
def test_the_redis_store_keeps_devices_tokens_states_and_results(
    open_store: Callable[[], RedisStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store()
    assert "has appendonly off: acknowledged batches are lost if Redis restarts" in caplog.text
    device = registered(store)
    assert store.device(device.id) == device
    assert store.device("unknown") is None and store.device("not/an{id}") is None
    viewer = new_token(device.id, Role.VIEWER, 1.6e9)
    store.add_grant(viewer.grant)
    assert store.grant(viewer.grant.key) == viewer.grant
    assert store.grant("unknown") is None and store.grant("a:b") is None
    with pytest.raises(RuntimeError, match="is unknown"):
        store.add_grant(new_token("nobody", Role.VIEWER, 0.0).grant)
    with pytest.raises(RuntimeError, match="already stored"):
        store.add_device(device, new_token(device.id, Role.DEVICE, 0.0).grant)

    state = store.state(device.id)
    assert state.snapshot is None and state.last_seq == 0
    commit(store, device.id, 1, b"d1", b"\x00snapshot one", EPOCHS[:2])
    commit(store, device.id, 2, b"d2", b"snapshot two\xff", EPOCHS[2:])
    commit(store, device.id, 3, b"d3", b"snapshot three", [])
    state = store.state(device.id)
    assert state.snapshot == b"snapshot three" and state.last_seq == 3
    assert [store.batch_digest(device.id, seq) for seq in (1, 2, 3, 4)] == [
        b"d1",
        b"d2",
        b"d3",
        None,
    ]
    assert store.epochs(device.id, -float("inf"), 10) == EPOCHS
    assert store.epochs(device.id, 30.0, 10) == EPOCHS[1:]  # those that end after 30 s
    assert store.epochs(device.id, 0.0, 1) == EPOCHS[:1]
    assert store.epochs(device.id, 90.0, 10) == [] == store.epochs(device.id, 0.0, 0)
    assert store.last_epoch(device.id) == EPOCHS[2]
    # Each commit with results is one entry of the event stream, in commit order.
    entries = store.redis.xrange(store.events)
    assert [e[1][b"device"] for e in entries] == [device.id.encode()] * 2
    assert [decode_results(e[1][b"results"]) for e in entries] == [EPOCHS[:2], EPOCHS[2:]]
    # The same data through a second connection (another server process).
    other = open_store()
    assert other.state(device.id) == state and other.epochs(device.id, 0.0, 10) == EPOCHS


def commit(
    store: Store,
    device_id: str,
    seq: int,
    digest: bytes,
    snapshot: bytes,
    results: list[EpochRecord],
) -> bool:
    """Commit one batch; whether it was stored."""
    return store.commit_batches([BatchCommit(device_id, seq, digest, snapshot, results)])[0]


def test_a_commit_that_does_not_follow_the_last_batch_stores_nothing(
    open_store: Callable[[], RedisStore],
) -> None:
    store = open_store()
    device = registered(store)
    commit(store, device.id, 1, b"d1", b"one", EPOCHS[:1])
    before = (store.state(device.id), store.epochs(device.id, 0.0, 10))
    for seq in (1, 3, 0):
        assert commit(store, device.id, seq, b"other", b"other", EPOCHS[1:]) is False
    assert (store.state(device.id), store.epochs(device.id, 0.0, 10)) == before
    assert store.batch_digest(device.id, 1) == b"d1" and store.redis.xlen(store.events) == 1
    assert commit(store, "unknown", 1, b"d", b"s", []) is False
    with pytest.raises(KeyError):
        store.state("unknown")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_batches_of_several_devices_are_committed_together_each_only_if_it_follows(
    open_store: Callable[[], RedisStore], tmp_path: Path, kind: str
) -> None:
    store = open_store() if kind == "redis" else SQLiteStore(tmp_path / "store.sqlite3")
    a, b, c = (registered(store) for _ in range(3))  # type: ignore[arg-type]
    assert commit(store, a.id, 1, b"a1", b"a one", EPOCHS[:1])
    stored = store.commit_batches(
        [
            BatchCommit(a.id, 2, b"a2", b"a two", EPOCHS[1:]),
            BatchCommit(b.id, 2, b"b2", b"b two", EPOCHS),  # b is at 0: not stored
            BatchCommit(c.id, 1, b"c1", b"c one", EPOCHS[1:2]),
        ]
    )
    assert stored == [True, False, True]
    assert store.state(a.id).last_seq == 2 and store.epochs(a.id, -1e9, 10) == EPOCHS
    assert store.state(b.id) == DeviceState(None, 0) and store.epochs(b.id, -1e9, 10) == []
    assert store.batch_digest(b.id, 2) is None
    assert store.state(c.id) == DeviceState(b"c one", 1)
    assert store.epochs(c.id, -1e9, 10) == EPOCHS[1:2]
    if kind == "sqlite":
        store.close()


def test_processes_racing_to_commit_one_batch_commit_it_once(
    open_store: Callable[[], RedisStore],
) -> None:
    stores = [open_store() for _ in range(8)]
    device = registered(stores[0])
    start, outcomes = threading.Barrier(len(stores)), []

    def race(k: int, store: RedisStore) -> None:
        start.wait()
        stored = commit(store, device.id, 1, b"d%d" % k, b"s%d" % k, EPOCHS[k % 3 : k % 3 + 1])
        outcomes.append(k if stored else -1)

    threads = [threading.Thread(target=race, args=a) for a in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [k for k in outcomes if k >= 0]
    assert len(outcomes) == 8 and len(winners) == 1
    (k,) = winners
    assert stores[0].state(device.id).snapshot == b"s%d" % k
    assert stores[0].batch_digest(device.id, 1) == b"d%d" % k
    assert stores[0].epochs(device.id, -1.0, 10) == EPOCHS[k % 3 : k % 3 + 1]
    assert stores[0].redis.xlen(stores[0].events) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redis", "redis://:s3cr3t@127.0.0.1:{closed}/0"], "cannot be used as the store"),
        (["--redis", "http://me:s3cr3t@127.0.0.1:{closed}"], "is not a Redis URL"),
        (["--redis", "redis://127.0.0.1:{closed}/0", "--db", "x.sqlite3"], "give one"),
    ],
)
def test_serve_refuses_a_redis_it_cannot_use(
    argv: list[str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    argv = [a.format(closed=free_port()) for a in argv]
    assert main(["serve", "--port", "9", *argv]) == 1
    assert message in caplog.text
    assert "s3cr3t" not in caplog.text


def test_a_redis_of_another_layout_version_is_refused(redis_url: str) -> None:
    prefix = f"test-{secrets.token_hex(4)}:"
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}schema", "7")
    with pytest.raises(RuntimeError, match="holds store layout version 7 under"):
        RedisStore(redis_url, prefix=prefix)
    client.close()


# -- detectors and apps on two processes ---------------------------------------------------------
def test_detectors_of_two_processes_reload_the_snapshot_when_the_other_moved_on(
    open_store: Callable[[], RedisStore], model: OnnxPipeline, batches: list[Batch]
) -> None:
    """Batches alternate between two processes: each finds its detector one batch behind
    the store, and must restore the stored snapshot rather than feed its own."""
    processes = [Devices(open_store(), model), Devices(open_store(), model)]
    device, _ = processes[0].register(DeviceSettings.model_validate({}))
    acknowledged: list[Json] = []
    for k, batch in enumerate(batches):
        outcome = processes[k % 2].add_batch(device.id, BatchModel.model_validate(batch))
        assert not outcome.duplicate and outcome.last_seq == batch["seq"]
        acknowledged += [as_json(r) for r in outcome.results]
        # Sent again to the other process: a duplicate, not applied twice.
        again = processes[(k + 1) % 2].add_batch(device.id, BatchModel.model_validate(batch))
        assert again.duplicate and again.results == []
    assert acknowledged == reference(model, batches, timezone="UTC")
    stored = processes[1].night(device.id, 0.0, 12.0, 1000).results
    assert [as_json(r) for r in stored] == acknowledged
    with pytest.raises(SequenceError, match="does not follow the last stored batch"):
        processes[0].add_batch(device.id, BatchModel.model_validate({"seq": len(batches) + 2}))


def test_rate_limits_count_the_requests_of_every_server_process_together(
    open_store: Callable[[], RedisStore], model: OnnxPipeline
) -> None:
    rates = RateLimits(per_token=60, token_burst=3, per_address=2, address_burst=2)
    apps = [create_app(open_store(), model, rates=rates) for _ in range(2)]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        device = first.post("/devices").json()
        assert second.post("/devices").status_code == 201
        refused = second.post("/devices")  # the address's third registration, on either
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
        url, headers = f"/devices/{device['device_id']}", bearer(device["token"])
        answers = [app.get(url, headers=headers) for app in (first, first, second, second)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[-1].headers["Retry-After"] == "1"
        assert "at most 60 a minute, 3 at once" in answers[-1].json()["detail"]
        time.sleep(1.05)
        assert first.get(url, headers=headers).status_code == 200
        assert second.get(url, headers=headers).status_code == 429


def test_a_subscriber_of_one_app_receives_what_another_app_stored(
    open_store: Callable[[], RedisStore], model: OnnxPipeline, batches: list[Batch], redis_url: str
) -> None:
    stores = [open_store(), open_store()]
    apps = [create_app(s, model, broker=RedisEvents(redis_url, s)) for s in stores]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        device = first.post("/devices").json()
        headers = bearer(device["token"])
        viewer = second.post(f"/devices/{device['device_id']}/viewers", headers=headers).json()
        url = f"/devices/{device['device_id']}/events?token={viewer['token']}"
        with first.websocket_connect(url) as subscriber:
            assert subscriber.receive_json()["type"] == "state"
            sent: list[Json] = []
            for batch in batches[:8]:
                answer = second.post(
                    f"/devices/{device['device_id']}/batches", json=batch, headers=headers
                )
                assert answer.status_code == 200, answer.text
                sent += answer.json()["results"]
            expected = pushed(device["device_id"], sent)
            received = [subscriber.receive_json() for _ in expected]
        view = first.get(f"/devices/{device['device_id']}", headers=headers).json()
    assert received == expected and len(sent) == 15
    assert view["last_seq"] == 8 and view["results"] == sent


def kill_stream_readers(store: RedisStore) -> int:
    """Close every connection blocked on the event stream (as a network failure would)."""
    readers = [c["id"] for c in store.redis.client_list() if c.get("cmd") == "xread"]
    for reader in readers:
        store.redis.client_kill_filter(_id=reader)
    return len(readers)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trimmed", [False, True])
def test_a_process_that_lost_the_event_stream_reads_on_or_cuts_its_subscribers_off(
    open_store: Callable[[], RedisStore], model: OnnxPipeline, redis_url: str, trimmed: bool
) -> None:
    """Its connection to Redis is cut while batches are committed: it reads on from the last
    entry it saw, or, when those entries were trimmed meanwhile, closes its subscribers
    (1013) so they read what they missed with GET."""
    store, writer = open_store(), open_store()
    with TestClient(create_app(store, model, broker=RedisEvents(redis_url, store))) as client:
        device = client.post("/devices").json()
        device_id = device["device_id"]
        url = f"/devices/{device_id}/events?token={device['token']}"
        with client.websocket_connect(url) as subscriber:
            assert subscriber.receive_json()["type"] == "state"
            commit(writer, device_id, 1, b"d1", b"s1", EPOCHS[:1])
            expected = pushed(device_id, [as_json(EPOCHS[0])])
            assert [subscriber.receive_json() for _ in expected] == expected
            assert kill_stream_readers(writer) == 1
            commit(writer, device_id, 2, b"d2", b"s2", EPOCHS[1:2])
            if trimmed:
                writer.redis.xtrim(writer.events, maxlen=0, approximate=False)
            commit(writer, device_id, 3, b"d3", b"s3", EPOCHS[2:])
            if trimmed:
                with pytest.raises(WebSocketDisconnect) as cut_off:
                    subscriber.receive_json()
                assert cut_off.value.code == 1013
            else:
                expected = pushed(device_id, [as_json(r) for r in EPOCHS[1:]])
                assert [subscriber.receive_json() for _ in expected] == expected


# -- two real server processes on one real redis-server ----------------------------------------
class Server:
    """``sleepstream serve --redis URL`` in a child process on a free port of 127.0.0.1."""

    def __init__(self, redis_url: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "sleepstream.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--redis", redis_url]
        command += ["--rate", "0"]  # the batches of a night at once; limits have their own test
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"the server did not answer within 60 s: {self.log.read_text()}")


class Listener:
    """A WebSocket subscriber that collects messages in a thread until the connection ends."""

    def __init__(self, connection: ClientConnection):
        self.connection, self.messages = connection, []
        self.hello = json.loads(connection.recv(timeout=10))
        self.thread = threading.Thread(target=self._collect)
        self.thread.start()

    def _collect(self) -> None:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                self.messages.append(json.loads(self.connection.recv(timeout=60)))

    def wait(self, count: int, seconds: float = 20.0) -> list[Json]:
        """The messages so far, once there are ``count`` (or ``seconds`` have passed)."""
        deadline = time.monotonic() + seconds
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)


@pytest.mark.timeout(120)
def test_two_server_processes_on_one_redis_serve_one_device(
    redis_url: str, tmp_path: Path, model: OnnxPipeline
) -> None:
    """A night's batches alternate between two processes while a subscriber listens on each;
    at batch 40 both get the same batch at once: one stores it, once."""
    night = night_batches(2 * 3600.0, batch_seconds=60.0, seed=7)
    settings = {"threshold": "wasa95", "timezone": "Europe/Berlin"}
    servers = [Server(redis_url, tmp_path / f"server{k}.log") for k in range(2)]
    clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
    try:
        for server in servers:
            server.wait_ready()
        device = clients[0].post("/devices", json=settings).json()
        device_id, headers = device["device_id"], bearer(device["token"])
        viewer = clients[1].post(f"/devices/{device_id}/viewers", headers=headers).json()
        url = f"/devices/{device_id}/batches"

        def send(client: httpx.Client, batch: Batch) -> httpx.Response:
            if batch["seq"] % 3:
                return client.post(url, json=batch, headers=headers)
            kind = {"Content-Type": "application/msgpack"}
            return client.post(url, content=msgpack.packb(batch), headers={**headers, **kind})

        events = [f"ws://127.0.0.1:{s.port}/devices/{device_id}/events" for s in servers]
        with (
            ws_connect(f"{events[0]}?token={viewer['token']}", open_timeout=10) as on_first,
            ws_connect(f"{events[1]}?token={device['token']}", open_timeout=10) as on_second,
        ):
            listeners = [Listener(on_first), Listener(on_second)]
            acknowledged: list[Json] = []
            for k, batch in enumerate(night):
                if batch["seq"] == 40:
                    answers = both_at_once(clients, batch, send)
                else:
                    answers = [send(clients[k % 2], batch)]
                stored = [a.json() for a in answers if a.status_code == 200]
                stored = [a for a in stored if not a["duplicate"]]
                assert len(stored) == 1, [a.text for a in answers]
                acknowledged += stored[0]["results"]
            again = send(clients[1], night[-1])
            assert again.json() == {
                "seq": len(night), "duplicate": True, "last_seq": len(night), "results": []
            }  # fmt: skip
            expected = pushed(device_id, acknowledged)
            received = [listener.wait(len(expected)) for listener in listeners]
        results = [
            c.get(f"/devices/{device_id}", params={"since": 0}, headers=headers).json()
            for c in clients
        ]
    finally:
        for client in clients:
            client.close()
        codes = [stop(server.process) for server in servers]
    assert all(code in (0, -signal.SIGTERM) for code in codes)  # uvicorn re-raises SIGTERM
    assert all("Application shutdown complete" in s.log.read_text() for s in servers)
    assert [listener.hello["last_seq"] for listener in listeners] == [0, 0]
    assert received[0] == expected and received[1] == expected
    reference_results = reference(model, night, **settings)
    assert len(reference_results) == 239
    assert acknowledged == reference_results
    assert results[0]["results"] == results[1]["results"] == reference_results
    assert [m["event"] for m in expected if m["type"] == "event"].count("fell_asleep") >= 1


def both_at_once(
    clients: list[httpx.Client], batch: Batch, send: Callable[[httpx.Client, Batch], httpx.Response]
) -> list[httpx.Response]:
    """``batch`` sent to every server at the same moment; each answer is 200 or 409."""
    start, answers = threading.Barrier(len(clients)), []

    def one(client: httpx.Client) -> None:
        start.wait()
        answers.append(send(client, batch))

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(a.status_code for a in answers) in ([200, 200], [200, 409])
    return answers
