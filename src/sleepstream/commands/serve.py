"""``sleepstream serve`` (the API for many watches) and ``sleepstream simulate``."""

from __future__ import annotations

import argparse

from sleepstream.commands import DATA_HELP, Subparsers

DEFAULT_DB = "sleepstream.sqlite3"


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    p = commands.add_parser("serve", help="the API for many watches (docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--db", help=f"SQLite store, made if new (default {DEFAULT_DB})")
    p.add_argument(
        "--redis", metavar="URL", help="store in this Redis, shared with other serve processes"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="requests a minute per token (default 300; 0: none)",
    )
    p.add_argument("--burst", type=int, default=100, help="requests at once per token (100)")
    p.add_argument(
        "--register-rate",
        type=float,
        default=30.0,
        help="registrations a minute per client address (default 30; 0: none)",
    )
    p.add_argument(
        "--register-burst", type=int, default=30, help="registrations at once per address (30)"
    )
    p.set_defaults(run=serve)

    p = commands.add_parser("simulate", help="replay a night into a server, print its events")
    p.add_argument("--subject", required=True, help="subject ID of the night to replay")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--speed", type=float, default=60.0, help="times real time (60)")
    p.add_argument("--start", type=float, help="Unix time of the night's start (default now)")
    p.add_argument("--batch-seconds", type=float, default=30.0, help="seconds per batch (30)")
    p.add_argument("--hours", type=float, help="replay only the night's first hours")
    p.add_argument("--timezone", default="UTC", help="IANA zone of the printed times (UTC)")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=simulate)
    return p


def serve(a: argparse.Namespace) -> int:
    from sleepstream.serve.app import run
    from sleepstream.serve.limits import RateLimits

    if a.db is not None and a.redis is not None:
        raise ValueError("serve: --db and --redis name two stores; give one")
    rates = RateLimits(a.rate, a.burst, a.register_rate, a.register_burst)
    return run(a.host, a.port, a.db or DEFAULT_DB, a.redis, rates)


def simulate(a: argparse.Namespace) -> int:
    from sleepstream.serve.simulate import run

    return run(a.url, a.subject, a.speed, a.start, a.batch_seconds, a.hours, a.timezone, a.data)
