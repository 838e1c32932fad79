"""Load benchmark of ``sleepstream serve``: N simulated watches and their subscribers.

    python benchmarks/bench_serve.py                          # 50 watches, 1 s batches, 60 s
    python benchmarks/bench_serve.py --watches 200 --batch-seconds 30 --speed 30 --seconds 120
    python benchmarks/bench_serve.py --redis                  # two servers behind a Redis

Starts its own server (SQLite in a temporary folder; with ``--redis``, two server processes
sharing a ``redis-server`` it starts, or the one at ``--redis URL``) on 127.0.0.1 with rate
limits off, registers ``--watches`` devices, and runs for ``--seconds`` (then stops by itself):
each watch sends 50 Hz acceleration and heart rate every 5 s (generated,
:mod:`sleepstream.signal.synthetic`) in msgpack batches of ``--batch-seconds`` (by HTTP POST,
or over one WebSocket each with ``--websocket``), its Unix times advancing at ``--speed`` times
real time; one viewer per watch follows its events over the WebSocket (on the other server,
with two). A watch sends each batch when its last sample is measured; batches end 2 s after
an epoch's end (the counts filter needs 2 s of acceleration beyond an epoch, so that is when
the epoch can be computed). The watches' schedules are spread over one batch period. Prints:

- throughput: batches and samples a second acknowledged, whether the watches kept to their
  schedule (sends late by more than a batch's period), the servers' CPU (and the load
  generator's, on the same machine), and live watches per core (watches x speed / cores busy);
- latency to the subscriber receiving an epoch (p50, p99), from the end of the epoch on the
  watch's clock (what a user waits: the 2 s look-ahead, the batching and the server), and from
  the post of the batch that closed it (the server's share);
- the servers' resident memory after registration and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgpack
import numpy as np
import websockets

from sleepstream.signal import synthetic

RATE = 50.0
T0 = 1_767_308_400.0
LOOKAHEAD = 2.0
"""Seconds of acceleration past an epoch's end that its result needs."""
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """What the watches and subscribers saw."""

    posted: dict[tuple[int, int], float] = field(default_factory=dict)
    starts: dict[int, float] = field(default_factory=dict)
    """Each watch's monotonic time at Unix time T0 of its night."""
    acked: int = 0
    samples: int = 0
    late: int = 0
    resent: int = 0
    """Batches sent again after a dropped connection."""
    from_end: list[float] = field(default_factory=list)
    from_closing: list[float] = field(default_factory=list)
    epochs: int = 0
    memory: list[tuple[float, list[float]]] = field(default_factory=list)
    """(seconds into the run, the servers' resident MiB), every twentieth of the run."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(ready: object, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError, OSError):
            if callable(ready) and ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within 60 s")


def start_redis(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on the PATH (apt-get install -y redis-server)")
    port = free_port()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")

    wait_until(ping, process, "redis-server")
    return f"redis://127.0.0.1:{port}/0", process


def start_server(folder: Path, name: str, redis: str | None) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    command = [sys.executable, "-m", "sleepstream.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--rate", "0", "--register-rate", "0"]
    command += ["--redis", redis] if redis else ["--db", str(folder / f"{name}.sqlite3")]
    with (folder / f"{name}.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health", timeout=1).is_success, process, name)
    return url, process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def batch_bodies(seconds: float, batch_seconds: float) -> tuple[list[bytes], int]:
    """msgpack bodies of one generated night (the same for every watch, each its own device);
    and the samples in each batch."""
    t, z = synthetic.generate("night", seconds, rate=RATE, seed=0)
    xyz = synthetic.as_xyz(z, 0)
    hr_t = np.arange(0.0, seconds, 5.0)
    bpm = 62 + 3 * np.sin(hr_t / 500.0)
    bodies = []
    for k in range(int(seconds // batch_seconds)):
        lo = -np.inf if k == 0 else k * batch_seconds + LOOKAHEAD
        hi = (k + 1) * batch_seconds + LOOKAHEAD
        a = (t > lo) & (t <= hi)  # the sample at an epoch's end + 2 s completes it
        h = (hr_t > lo) & (hr_t <= hi)
        batch = {
            "seq": k + 1,
            "heart_rate": {"times": (T0 + hr_t[h]).tolist(), "bpm": bpm[h].tolist()},
            "acceleration": {"times": (T0 + t[a]).tolist(), "xyz": xyz[a].tolist()},
        }
        bodies.append(msgpack.packb(batch))
    return bodies, int(batch_seconds * RATE + batch_seconds / 5)


async def watch(
    http: httpx.AsyncClient,
    index: int,
    device: dict[str, str],
    bodies: list[bytes],
    period_seconds: float,
    speed: float,
    start: float,
    stop_at: float,
    per_batch: int,
    tally: Tally,
    websocket: bool,
) -> None:
    """Send the batches on schedule (each when its last sample is measured) until ``stop_at``,
    by HTTP POST, or over one WebSocket with ``websocket``."""
    path = f"/devices/{device['device_id']}/batches"
    headers = {"Authorization": f"Bearer {device['token']}", "Content-Type": "application/msgpack"}
    tally.starts[index] = start
    async with contextlib.AsyncExitStack() as stack:
        if websocket:
            ws_url = "ws" + str(http.base_url).removeprefix("http").rstrip("/")
            ws = await stack.enter_async_context(
                websockets.connect(f"{ws_url}{path}?token={device['token']}", max_size=2**24)
            )
        for k, body in enumerate(bodies):
            due = start + ((k + 1) * period_seconds + LOOKAHEAD) / speed
            if due > stop_at or time.monotonic() > stop_at:
                return
            now = time.monotonic()
            if now < due:
                await asyncio.sleep(due - now)
            elif now - due > period_seconds / speed:
                tally.late += 1
            tally.posted[(index, k + 1)] = time.monotonic()
            if websocket:
                await ws.send(body)
                answer = json.loads(await ws.recv())
                if answer["type"] != "ack":
                    raise RuntimeError(f"batch {k + 1} refused: {answer}")
            else:
                for attempt in range(3):  # a batch may be sent again: the server dedups it
                    try:
                        answer = await http.post(path, content=body, headers=headers)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        tally.resent += 1
                answer.raise_for_status()
            tally.acked += 1
            tally.samples += per_batch


async def subscribe(
    url: str,
    index: int,
    device_id: str,
    token: str,
    speed: float,
    tally: Tally,
    ready: asyncio.Event,
) -> None:
    """Follow the device's events; the latency of each epoch from its end on the watch's
    clock and from the post of the batch that closed it."""
    ws = "ws" + url.removeprefix("http")
    async with websockets.connect(f"{ws}/devices/{device_id}/events?token={token}") as socket_:
        ready.set()
        async for text in socket_:
            message = json.loads(text)
            if message["type"] != "epoch":
                continue
            received = time.monotonic()
            tally.epochs += 1
            start = tally.starts.get(index)
            if start is not None:
                tally.from_end.append(received - start - (message["result"]["end"] - T0) / speed)
            closing = tally.posted.get((index, message["result"]["seq"]))
            if closing is not None:
                tally.from_closing.append(received - closing)


async def load(args: argparse.Namespace, urls: list[str], pids: list[int]) -> None:
    period = args.batch_seconds / args.speed
    night_seconds = args.seconds * args.speed + 2 * args.batch_seconds
    bodies, per_batch = batch_bodies(night_seconds, args.batch_seconds)
    limits = httpx.Limits(max_connections=args.watches + 10, max_keepalive_connections=None)
    tally = Tally()
    clients = [httpx.AsyncClient(base_url=u, timeout=60, limits=limits) for u in urls]
    try:
        devices, viewers = [], []
        for n in range(args.watches):
            http = clients[n % len(clients)]
            device = (await http.post("/devices", json={})).json()
            headers = {"Authorization": f"Bearer {device['token']}"}
            viewer = await http.post(f"/devices/{device['device_id']}/viewers", headers=headers)
            devices.append(device)
            viewers.append(viewer.json()["token"])
        readies = [asyncio.Event() for _ in devices]
        subscribers = [
            asyncio.create_task(
                subscribe(
                    urls[(n + 1) % len(urls)],
                    n,
                    d["device_id"],
                    viewers[n],
                    args.speed,
                    tally,
                    readies[n],
                )
            )
            for n, d in enumerate(devices)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        rss_start = [rss_mib(p) for p in pids]
        cpu_start = [cpu_seconds(p) for p in pids]
        own_start = time.process_time()
        start = time.monotonic()
        stop_at = start + args.seconds

        async def sample_memory() -> None:
            while True:
                await asyncio.sleep(args.seconds / 20)
                tally.memory.append((time.monotonic() - start, [rss_mib(p) for p in pids]))

        sampler = asyncio.create_task(sample_memory())
        # spread the watches' schedules over one period, as real watches are
        offsets = np.linspace(0.0, period, args.watches, endpoint=False)
        await asyncio.gather(
            *(
                watch(
                    clients[n % len(clients)],
                    n,
                    d,
                    bodies,
                    args.batch_seconds,
                    args.speed,
                    start + offsets[n],
                    stop_at,
                    per_batch,
                    tally,
                    args.websocket,
                )
                for n, d in enumerate(devices)
            )
        )
        elapsed = time.monotonic() - start
        sampler.cancel()
        await asyncio.sleep(min(2.0, period))  # the last epochs reach their subscribers
        cpu = sum(cpu_seconds(p) for p in pids) - sum(cpu_start)
        own = time.process_time() - own_start
        rss_end = [rss_mib(p) for p in pids]
        for task in subscribers:
            task.cancel()
        await asyncio.gather(*subscribers, return_exceptions=True)
    finally:
        for client in clients:
            await client.aclose()
    report(args, tally, elapsed, cpu, own, rss_start, rss_end)


def report(
    args: argparse.Namespace,
    tally: Tally,
    elapsed: float,
    cpu: float,
    own: float,
    rss_start: list[float],
    rss_end: list[float],
) -> None:
    cores = cpu / elapsed
    kept_up = tally.late == 0
    store = "Redis, 2 servers" if args.redis else "SQLite, 1 server"
    print(
        f"{args.watches} watches, {args.batch_seconds:g} s batches at {args.speed:g} x real time, "
        f"{elapsed:.1f} s ({store}; {os.cpu_count()} cores here)"
    )
    print(
        f"  throughput  {tally.acked / elapsed:,.1f} batches/s, {tally.samples / elapsed:,.0f} "
        f"samples/s acknowledged; {tally.resent} sent again; {tally.late} sent over a period late "
        f"({'kept up' if kept_up else 'fell behind'})"
    )
    live = args.watches * args.speed
    print(
        f"  server CPU  {cores:.2f} cores busy; {live / max(cores, 1e-9):,.0f} live watches "
        f"per core (watches x speed / cores){'' if kept_up else ' (not sustained)'}; "
        f"the load generator {own / elapsed:.2f} cores"
    )
    if tally.from_closing:
        p50, p99 = np.percentile(tally.from_closing, [50, 99]) * 1000
        print(
            f"  latency     p50 {p50:.0f} ms, p99 {p99:.0f} ms from the post of the batch that "
            f"closed an epoch to its subscriber ({len(tally.from_closing)} epochs)"
        )
        p50, p99 = np.percentile(tally.from_end, [50, 99]) * 1000
        print(
            f"              p50 {p50:.0f} ms, p99 {p99:.0f} ms from the epoch's end on the "
            f"watch's clock ({'' if args.speed == 1 else f'at {args.speed:g} x, '}"
            f"including the {LOOKAHEAD:g} s look-ahead and the batching)"
        )
    else:
        print("  latency     no epoch reached a subscriber (run longer)")
    rss = ", ".join(f"{a:.0f} -> {b:.0f} MiB" for a, b in zip(rss_start, rss_end, strict=True))
    print(f"  memory      resident {rss} (after registration -> at the end)")
    if len(tally.memory) > 2:
        over = ", ".join(
            f"{at / 60:.1f} min {'/'.join(f'{m:.0f}' for m in mib)}" for at, mib in tally.memory
        )
        print(f"              over the run (MiB): {over}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watches", type=int, default=50, help="simulated watches (50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run (60 s)")
    parser.add_argument("--batch-seconds", type=float, default=1.0, choices=[1.0, 30.0])
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (1)")
    parser.add_argument(
        "--websocket", action="store_true", help="send the batches over WebSockets, not POST"
    )
    parser.add_argument(
        "--redis",
        nargs="?",
        const="start",
        metavar="URL",
        help="two servers behind this Redis (without URL: a redis-server started here)",
    )
    args = parser.parse_args()
    if not (0 < args.watches <= 5000 and 0 < args.seconds <= 4 * 3600 and 0 < args.speed <= 600):
        parser.error("--watches 1-5000, --seconds up to 4 h, --speed up to 600")
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench_serve") as tmp:
        folder = Path(tmp)
        try:
            redis = args.redis
            if redis == "start":
                redis, process = start_redis(folder)
                processes.append(process)
            names = ["a", "b"] if redis else ["a"]
            servers = [start_server(folder, name, redis) for name in names]
            processes += [p for _, p in servers]
            urls = [u for u, _ in servers]
            asyncio.run(load(args, urls, [p.pid for _, p in servers]))
        finally:
            for process in reversed(processes):
                stop(process)


if __name__ == "__main__":
    main()
