"""``sleepstream simulate``: a real night replayed into a real server process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serve import Json, Server, as_json

from sleepstream.cli import main
from sleepstream.data.folder import load_recording
from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.detector import SleepDetector
from sleepstream.serve.feed import record
from sleepstream.serve.simulate import EVENT_WORDS, night_batches, simulate

SUBJECT = "46343"
START = 1_767_308_400.0
"""2026-01-02 00:00 in Berlin."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("simulate")
    running = Server(folder / "simulate.sqlite3", folder / "simulate.log")
    yield running
    running.stop()


def plain_detector(batches: list[Json], timezone: str) -> list[Json]:
    """The results of a plain detector fed the same batches."""
    detector = SleepDetector(OnnxPipeline.shipped(), timezone=timezone)
    out = []
    for batch in batches:
        streams = {
            name: (np.array(batch[name]["times"]), np.array(batch[name][values]))
            for name, values in (("heart_rate", "bpm"), ("counts", "counts"))
            if name in batch
        }
        out += [as_json(record(r, batch["seq"])) for r in detector.add(**streams)]
    return out


@pytest.mark.timeout(60)
def test_a_replayed_night_gives_a_plain_detectors_results(server: Server, data_dir: Path) -> None:
    batches = night_batches(load_recording(data_dir, SUBJECT), START, 60.0, hours=1.5)
    printed: list[str] = []
    simulated = asyncio.run(
        simulate(server.url, batches, speed=1e5, timezone="Europe/Berlin", write=printed.append)
    )
    expected = plain_detector(batches, "Europe/Berlin")
    assert len(batches) == 90 and len(expected) >= 170
    assert [r.model_dump(mode="json") for r in simulated.results] == expected
    pushed = [m["result"] for m in simulated.messages if m["type"] == "epoch"]
    assert pushed == expected
    events = [(r["end_local"], e) for r in expected for e in r["events"]]
    assert events and events[0] == ("2026-01-02T00:23:30+01:00", "fell_asleep")
    assert printed[1:-1] == [f"{time}  {EVENT_WORDS[event]}" for time, event in events]


@pytest.mark.timeout(60)
def test_simulate_prints_the_events_with_local_times(
    server: Server, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--subject", SUBJECT, "--url", server.url, "--speed", "100000"]
    argv += ["--start", str(START), "--hours", "0.75", "--batch-seconds", "60"]
    argv += ["--data", str(data_dir)]
    assert main([*argv, "--timezone", "Asia/Tokyo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("(Asia/Tokyo), 45 batches at 100000 x")
    assert lines[1] == "2026-01-02T08:23:30+09:00  fell asleep"
    assert lines[-1].startswith("89 epochs, ")


def test_the_server_logged_no_traceback(server: Server) -> None:
    assert "Traceback" not in Path(server.log).read_text()


def test_simulate_without_a_server_says_so(
    data_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["simulate", "--subject", "46343", "--url", f"http://127.0.0.1:{port}"]
    assert main([*argv, "--data", str(data_dir)]) == 2
    assert f"no server answers at http://127.0.0.1:{port}" in caplog.text
    assert "start one with `sleepstream serve`" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
