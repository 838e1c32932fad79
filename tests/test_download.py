"""Tests of the sleep-accel downloader against a real HTTP server on 127.0.0.1.

The server serves a small generated mirror of the PhysioNet record layout (or the real labels
and heart-rate files of the data folder) and can misbehave on request: drop a connection
half-way, serve corrupted bytes, answer with an error status, or ignore or mistake ``Range``
headers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from sleepstream.data import download
from sleepstream.data.download import (
    SHA256SUMS,
    ChecksumMismatchError,
    default_data_dir,
    fetch,
    parse_sha256sums,
)

URL_PREFIX = "/files/sleep-accel/1.0.0/"
TIMEOUT = 5.0
CHUNK = 256
"""Bytes per read in these tests, so a connection dropped half-way through a small file has
written whole chunks first. The chunk being read when it drops is lost (``requests`` discards
it), so a resume starts at the last whole chunk."""


def _labels(subject: int) -> bytes:
    return "".join(f"{30 * i} {(i + subject) % 6 - 1}\n" for i in range(400)).encode()


def _heart_rate(subject: int) -> bytes:
    return "".join(f"{i * 5.123:.3f},{60 + (i * subject) % 40}\n" for i in range(900)).encode()


FILES: dict[str, bytes] = {
    "LICENSE.txt": b"Open Data Commons Attribution License v1.0\n",
    "heart_rate/46343_heartrate.txt": _heart_rate(1),
    "heart_rate/759667_heartrate.txt": _heart_rate(2),
    "labels/46343_labeled_sleep.txt": _labels(1),
    "labels/759667_labeled_sleep.txt": _labels(2),
}
LABELS = "labels/46343_labeled_sleep.txt"
HEART_RATE = "heart_rate/759667_heartrate.txt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class MirrorState:
    """What the test server serves, how it misbehaves, and the requests it saw."""

    root: Path
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    """Path -> how many more responses to cut off half-way (Content-Length stays full)."""
    corrupt_once: set[str] = field(default_factory=set)
    ignore_range: bool = False
    status_once: dict[str, int] = field(default_factory=dict)
    """Path -> an error status to answer the next request with (e.g. 503)."""
    wrong_range_once: set[str] = field(default_factory=set)
    """Paths whose next Range request gets a 206 for the whole file instead."""
    encodings: list[str | None] = field(default_factory=list)
    """The Accept-Encoding header of each request."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ranges(self, relative: str) -> list[str | None]:
        """The Range header of each request for ``relative``, in order."""
        with self.lock:
            return [header for path, header in self.requests if path == relative]

    def requested(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.requests]


@dataclass
class Mirror:
    url: str
    state: MirrorState

    @property
    def root(self) -> Path:
        return self.state.root

    def write_sums(self, lines: list[str] | None = None) -> None:
        if lines is None:
            lines = [f"{_sha256(data)}  {path}" for path, data in FILES.items()]
        (self.root / SHA256SUMS).write_text("\n".join(lines) + "\n")


class _MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: MirrorState) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.state = state


class _MirrorHandler(BaseHTTPRequestHandler):
    server: _MirrorServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        if not self.path.startswith(URL_PREFIX):
            self.send_error(404)
            return
        relative = unquote(self.path.removeprefix(URL_PREFIX))
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((relative, range_header))
            state.encodings.append(self.headers.get("Accept-Encoding"))
            status = state.status_once.pop(relative, None)
            wrong_range = range_header is not None and relative in state.wrong_range_once
            state.wrong_range_once.discard(relative)
        if status is not None:
            self.send_error(status)
            return
        file = state.root / relative
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        with state.lock:
            if relative in state.corrupt_once:
                state.corrupt_once.discard(relative)
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            drop = state.drops.get(relative, 0) > 0
            if drop:
                state.drops[relative] -= 1
        start = 0
        if range_header is not None and not state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            if match is None:
                self.send_error(400, f"unsupported Range {range_header!r}")
                return
            start = 0 if wrong_range else int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if drop:
            # Promise the whole payload, send half, then hang up.
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture(autouse=True)
def _no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_DELAY_SECONDS", 0.0)


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_CHUNK_BYTES", CHUNK)


@contextlib.contextmanager
def _serve(root: Path) -> Iterator[Mirror]:
    state = MirrorState(root)
    server = _MirrorServer(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield Mirror(f"http://{host!s}:{port}{URL_PREFIX}", state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=TIMEOUT)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "mirror"
    for path, data in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    with _serve(root) as site:
        site.write_sums()
        yield site


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _fetch(mirror: Mirror, dest: Path, **kwargs: object) -> download.FetchSummary:
    options: dict[str, object] = {"progress": False, "timeout": TIMEOUT, **kwargs}
    return fetch(dest, mirror.url, **options)  # type: ignore[arg-type]


def _leftover_parts(dest: Path) -> list[Path]:
    return sorted(dest.rglob("*.part"))


def test_fetch_downloads_every_file_and_verifies_it(mirror: Mirror, dest: Path) -> None:
    summary = _fetch(mirror, dest, progress=True)

    assert summary.downloaded == list(FILES)
    assert summary.skipped == []
    assert summary.bytes == sum(len(data) for data in FILES.values())
    for path, data in FILES.items():
        assert (dest / path).read_bytes() == data
    assert (dest / SHA256SUMS).read_bytes() == (mirror.root / SHA256SUMS).read_bytes()
    assert _leftover_parts(dest) == []
    assert all(header is None for _, header in mirror.state.requests)


def test_second_fetch_skips_verified_files(mirror: Mirror, dest: Path) -> None:
    _fetch(mirror, dest)
    first_run_requests = len(mirror.state.requests)

    summary = _fetch(mirror, dest)

    assert summary.downloaded == []
    assert summary.skipped == list(FILES)
    assert summary.bytes == 0
    assert mirror.state.requested()[first_run_requests:] == [SHA256SUMS]


def test_local_file_with_wrong_checksum_is_replaced(mirror: Mirror, dest: Path) -> None:
    _fetch(mirror, dest)
    (dest / LABELS).write_bytes(b"edited by hand\n")

    summary = _fetch(mirror, dest)

    assert summary.downloaded == [LABELS]
    assert (dest / LABELS).read_bytes() == FILES[LABELS]


def test_checksum_mismatch_raises_and_leaves_no_file(mirror: Mirror, dest: Path) -> None:
    (mirror.root / HEART_RATE).write_bytes(FILES[HEART_RATE].replace(b",6", b",9"))
    served = (mirror.root / HEART_RATE).read_bytes()
    expected = re.escape(
        f"Checksum mismatch for {HEART_RATE}: "
        f"expected {_sha256(FILES[HEART_RATE])}, got {_sha256(served)}"
    )

    with pytest.raises(RuntimeError, match=f"^{expected}$") as caught:
        _fetch(mirror, dest, retries=1)

    assert isinstance(caught.value, ChecksumMismatchError)
    assert not (dest / HEART_RATE).exists()
    assert _leftover_parts(dest) == []
    # The retry starts again from byte 0 rather than resuming the bad bytes.
    assert mirror.state.ranges(HEART_RATE) == [None, None]


def test_checksum_mismatch_fixed_by_a_fresh_retry(
    mirror: Mirror, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror.state.corrupt_once.add(HEART_RATE)

    with caplog.at_level(logging.WARNING, logger=download.__name__):
        summary = _fetch(mirror, dest)

    assert (dest / HEART_RATE).read_bytes() == FILES[HEART_RATE]
    assert HEART_RATE in summary.downloaded
    assert mirror.state.ranges(HEART_RATE) == [None, None]
    assert "Checksum mismatch" in caplog.text


def test_dropped_connection_is_resumed_with_range(
    mirror: Mirror, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror.state.drops[LABELS] = 1

    with caplog.at_level(logging.WARNING, logger=download.__name__):
        summary = _fetch(mirror, dest)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    kept = len(FILES[LABELS]) // 2 // CHUNK * CHUNK  # the whole chunks before the drop
    assert kept > 0
    assert mirror.state.ranges(LABELS) == [None, f"bytes={kept}-"]
    assert summary.bytes == sum(len(data) for data in FILES.values())
    assert f"{LABELS} failed" in caplog.text
    assert _leftover_parts(dest) == []


def test_part_kept_when_retries_run_out_and_next_fetch_resumes(mirror: Mirror, dest: Path) -> None:
    mirror.state.drops[LABELS] = 3
    part = dest / (LABELS + ".part")

    with pytest.raises(ConnectionError, match=re.escape(mirror.url + LABELS)):
        _fetch(mirror, dest, retries=1)

    assert not (dest / LABELS).exists()
    kept = part.read_bytes()
    assert 0 < len(kept) < len(FILES[LABELS])
    assert FILES[LABELS].startswith(kept)

    _fetch(mirror, dest, retries=3)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    assert mirror.state.ranges(LABELS)[2] == f"bytes={len(kept)}-"
    assert not part.exists()


def test_part_file_from_earlier_run_is_resumed(mirror: Mirror, dest: Path) -> None:
    (dest / "labels").mkdir(parents=True)
    (dest / (LABELS + ".part")).write_bytes(FILES[LABELS][:100])

    summary = _fetch(mirror, dest)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    assert mirror.state.ranges(LABELS) == ["bytes=100-"]
    assert summary.bytes == sum(len(data) for data in FILES.values()) - 100
    assert _leftover_parts(dest) == []


def test_part_file_restarts_when_server_ignores_range(mirror: Mirror, dest: Path) -> None:
    mirror.state.ignore_range = True
    (dest / "labels").mkdir(parents=True)
    (dest / (LABELS + ".part")).write_bytes(FILES[LABELS][:100])

    _fetch(mirror, dest)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    assert mirror.state.ranges(LABELS) == ["bytes=100-"]


def test_complete_part_file_is_verified_and_renamed(mirror: Mirror, dest: Path) -> None:
    (dest / "labels").mkdir(parents=True)
    (dest / (LABELS + ".part")).write_bytes(FILES[LABELS])

    summary = _fetch(mirror, dest)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    assert LABELS in summary.downloaded
    assert _leftover_parts(dest) == []


@pytest.mark.parametrize(
    "bad_path", ["../evil.txt", "labels/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt"]
)
def test_path_traversal_in_sha256sums_is_rejected(
    mirror: Mirror, dest: Path, tmp_path: Path, bad_path: str
) -> None:
    mirror.write_sums([f"{_sha256(FILES[LABELS])}  {LABELS}", f"{'0' * 64}  {bad_path}"])

    with pytest.raises(ValueError, match=rf"line 2: unsafe path {re.escape(repr(bad_path))}"):
        _fetch(mirror, dest)

    assert mirror.state.requested() == [SHA256SUMS]
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not-a-digest  labels/1.txt\n", "line 1"),
        (f"{'a' * 64}\n", "line 1"),
        (f"\n{'a' * 64}  x.txt\n{'b' * 64}  ./x.txt\n", "line 3: x.txt is listed twice"),
        ("\n\n", "lists no files"),
    ],
)
def test_malformed_sha256sums_is_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_sha256sums(text)


@pytest.mark.parametrize("include", [["heart_rate/"], ["heart_rate"]])
def test_include_limits_download_to_folders(mirror: Mirror, dest: Path, include: list[str]) -> None:
    summary = _fetch(mirror, dest, include=include)

    heart_rate = [path for path in FILES if path.startswith("heart_rate/")]
    assert summary.downloaded == heart_rate
    assert set(mirror.state.requested()) == {SHA256SUMS, *heart_rate}
    assert not (dest / "labels").exists()


def test_include_prefix_matching_nothing_is_rejected(mirror: Mirror, dest: Path) -> None:
    with pytest.raises(ValueError, match="'motion/' matches no file"):
        _fetch(mirror, dest, include=["labels/", "motion/"])


def test_base_url_comes_from_environment(
    mirror: Mirror, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLEEPSTREAM_BASE_URL", mirror.url.rstrip("/"))

    summary = fetch(dest, include=["labels/"], progress=False, timeout=TIMEOUT)

    assert summary.downloaded == [path for path in FILES if path.startswith("labels/")]


def test_missing_file_on_server_fails_without_retrying(mirror: Mirror, dest: Path) -> None:
    (mirror.root / LABELS).unlink()

    with pytest.raises(OSError, match=f"{re.escape(mirror.url + LABELS)}: HTTP 404"):
        _fetch(mirror, dest)

    assert mirror.state.ranges(LABELS) == [None]


@pytest.mark.parametrize("base_url", ["file:///srv/sleep-accel/", "/srv/sleep-accel", "ftp://x/"])
def test_base_url_other_than_http_is_rejected(dest: Path, base_url: str) -> None:
    with pytest.raises(ValueError, match=rf"Base URL {re.escape(repr(base_url))} .* http://"):
        fetch(dest, base_url, progress=False)
    assert not dest.exists()


@pytest.mark.parametrize(("retries", "timeout"), [(-1, 60.0), (3, 0.0)])
def test_invalid_retry_settings_are_rejected(dest: Path, retries: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        fetch(dest, "http://127.0.0.1:9/", retries=retries, timeout=timeout, progress=False)


def test_default_data_dir_honours_sleepstream_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLEEPSTREAM_DATA", str(tmp_path / "nights"))
    assert default_data_dir() == tmp_path / "nights"


@pytest.mark.parametrize("xdg", [None, "relative/cache"])
def test_default_data_dir_falls_back_to_home_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg: str | None
) -> None:
    monkeypatch.delenv("SLEEPSTREAM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert default_data_dir() == tmp_path / ".cache" / "sleepstream" / "sleep-accel"


def test_default_data_dir_uses_xdg_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SLEEPSTREAM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "sleepstream" / "sleep-accel"


# ---------------------------------------------------------------------------------------------
# Further server behaviour, and the real PhysioNet files
# ---------------------------------------------------------------------------------------------


def test_files_are_requested_uncompressed(mirror: Mirror, dest: Path) -> None:
    """A byte range counts bytes of the encoded body, so resuming needs it unencoded."""
    (dest / "labels").mkdir(parents=True)
    (dest / (LABELS + ".part")).write_bytes(FILES[LABELS][:100])

    _fetch(mirror, dest)

    requested = mirror.state.requested()
    encodings = mirror.state.encodings
    assert {encodings[requested.index(path)] for path in FILES} == {"identity"}


def test_transient_http_error_is_retried(mirror: Mirror, dest: Path) -> None:
    mirror.state.status_once[LABELS] = 503

    summary = _fetch(mirror, dest)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    assert mirror.state.ranges(LABELS) == [None, None]
    assert summary.downloaded == list(FILES)


def test_transient_http_error_on_the_last_try_raises_connection_error(
    mirror: Mirror, dest: Path
) -> None:
    mirror.state.status_once[SHA256SUMS] = 503

    with pytest.raises(ConnectionError, match=rf"{re.escape(SHA256SUMS)} after 1 attempts.*503"):
        _fetch(mirror, dest, retries=0)


def test_dropped_connection_on_sha256sums_is_retried(mirror: Mirror, dest: Path) -> None:
    mirror.state.drops[SHA256SUMS] = 1

    summary = _fetch(mirror, dest)

    assert summary.downloaded == list(FILES)
    assert mirror.state.ranges(SHA256SUMS) == [None, None]


def test_resume_answered_with_another_range_restarts(mirror: Mirror, dest: Path) -> None:
    (dest / "labels").mkdir(parents=True)
    (dest / (LABELS + ".part")).write_bytes(FILES[LABELS][:100])
    mirror.state.wrong_range_once.add(LABELS)

    summary = _fetch(mirror, dest)

    assert (dest / LABELS).read_bytes() == FILES[LABELS]
    # The 206 for bytes 0- is refused, the .part deleted, and the retry starts from byte 0.
    assert mirror.state.ranges(LABELS) == ["bytes=100-", None]
    assert summary.bytes == sum(len(data) for data in FILES.values())
    assert _leftover_parts(dest) == []


PRODUCTION_CHUNK = download._CHUNK_BYTES
"""The chunk size of real downloads (the autouse fixture shrinks it for the small files)."""


@pytest.fixture
def real_mirror(tmp_path: Path, data_dir: Path) -> Iterator[tuple[Mirror, dict[str, str]]]:
    """The real, unchanged PhysioNet folders (labels, heart rate) served with their checksums.

    The checksums come from the data folder's ``MANIFEST.tsv``, hashed when it was made.
    """
    root = tmp_path / "real-mirror"
    root.mkdir()
    folders = ("labels", "heart_rate")
    for folder in folders:
        (root / folder).symlink_to(data_dir / folder, target_is_directory=True)
    rows = [line.split("\t") for line in (data_dir / "MANIFEST.tsv").read_text().splitlines()[1:]]
    digests = {path: digest for path, _, digest in rows if path.startswith(tuple(folders))}
    assert len(digests) == 2 * 31
    with _serve(root) as site:
        site.write_sums([f"{digest}  {path}" for path, digest in digests.items()])
        yield site, digests


def test_real_files_download_verified_and_resume_after_a_drop(
    real_mirror: tuple[Mirror, dict[str, str]], dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror, digests = real_mirror
    monkeypatch.setattr(download, "_CHUNK_BYTES", PRODUCTION_CHUNK)
    largest = max(digests, key=lambda path: (mirror.root / path).stat().st_size)
    size = (mirror.root / largest).stat().st_size
    mirror.state.drops[largest] = 1

    summary = _fetch(mirror, dest)

    assert summary.downloaded == list(digests)
    assert summary.bytes == sum((mirror.root / path).stat().st_size for path in digests)
    for path, digest in digests.items():
        assert _sha256((dest / path).read_bytes()) == digest
    kept = size // 2 // PRODUCTION_CHUNK * PRODUCTION_CHUNK
    assert kept > 0
    assert mirror.state.ranges(largest) == [None, f"bytes={kept}-"]
    assert _leftover_parts(dest) == []


def test_fetch_command_prints_what_it_did_on_stdout(
    mirror: Mirror, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sleepstream.cli import main

    argv = ["-q", "data", "fetch", "--dest", str(dest), "--base-url", mirror.url]
    assert main([*argv, "--only", "heart_rate"]) == 0
    assert main(argv) == 0
    heart_rate = [data for path, data in FILES.items() if path.startswith("heart_rate/")]
    size = (sum(len(data) for data in FILES.values()) - sum(map(len, heart_rate))) / 1e6
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{dest}: {len(heart_rate)} files downloaded "
        f"({sum(map(len, heart_rate)) / 1e6:.1f} MB), 0 already present and verified",
        f"{dest}: {len(FILES) - len(heart_rate)} files downloaded ({size:.1f} MB), "
        f"{len(heart_rate)} already present and verified",
    ]
    assert captured.err == ""
