"""Download the PhysioNet sleep-accel record, verified against its ``SHA256SUMS.txt``.

The record (Walch et al., 2019) is published at ``https://physionet.org/files/sleep-accel/1.0.0/``
with a ``SHA256SUMS.txt`` that lists every file. :func:`fetch` mirrors the listed files into a
local folder and guarantees that every file under its final name matches its checksum: data are
written to ``<name>.part`` first and renamed only once verified. Interrupted downloads resume from
the ``.part`` file with an HTTP ``Range`` request, within one call or in a later one.

Only the standard library is used for HTTP, so ``file://`` mirrors work too.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "RETRY_DELAY_SECONDS",
    "SHA256SUMS",
    "ChecksumMismatchError",
    "FetchSummary",
    "default_data_dir",
    "fetch",
    "parse_sha256sums",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://physionet.org/files/sleep-accel/1.0.0/"
"""Where the sleep-accel record lives; overridden by ``SLEEPSTREAM_BASE_URL`` or an argument."""

SHA256SUMS = "SHA256SUMS.txt"
"""Name of the checksum list at the base URL, one ``<sha256-hex>  <relative/path>`` per line."""

RETRY_DELAY_SECONDS = 1.0
"""Wait before the first retry; doubles with each further retry, capped at 30 s."""

_CHUNK_BYTES = 1 << 16
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (
    http.client.IncompleteRead,
    ConnectionError,  # includes ConnectionResetError and http.client.RemoteDisconnected
    TimeoutError,  # socket.timeout is an alias since Python 3.10
    urllib.error.URLError,
)
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

T = TypeVar("T")


class ChecksumMismatchError(RuntimeError):
    """A downloaded file does not match the SHA-256 listed for it in ``SHA256SUMS.txt``."""


class _ResumeRejectedError(Exception):
    """The server answered a ``Range`` request with a different range; the next try restarts."""


@dataclass
class FetchSummary:
    """What one :func:`fetch` call did.

    Attributes
    ----------
    downloaded : list of str
        Relative paths downloaded (and verified) in this call, in ``SHA256SUMS.txt`` order.
    skipped : list of str
        Relative paths already present with the right checksum, left untouched.
    bytes : int
        Payload bytes received over the network in this call, including attempts that were
        later retried; bytes of a ``.part`` file left by an earlier call are not counted.
    """

    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass
class _Meter:
    """Forwards the byte count of the file being downloaded to a progress bar and a total."""

    progress: Progress
    task: TaskID
    received: int = 0

    def start(self, completed: int, total: int | None) -> None:
        self.progress.update(self.task, completed=completed, total=total)

    def advance(self, n_bytes: int) -> None:
        self.received += n_bytes
        self.progress.advance(self.task, n_bytes)


def default_data_dir() -> Path:
    """Folder that holds the sleep-accel data unless a caller names another one.

    Returns
    -------
    pathlib.Path
        ``$SLEEPSTREAM_DATA`` if set; otherwise ``sleepstream/sleep-accel`` under
        ``$XDG_CACHE_HOME`` (when set to an absolute path) or under ``~/.cache``. The folder is
        not created.
    """
    configured = os.environ.get("SLEEPSTREAM_DATA")
    if configured:
        return Path(configured).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg_cache and Path(xdg_cache).is_absolute():
        cache = Path(xdg_cache)
    else:
        cache = Path.home() / ".cache"
    return cache / "sleepstream" / "sleep-accel"


def parse_sha256sums(text: str, source: str = SHA256SUMS) -> dict[str, str]:
    """Parse ``sha256sum``-style lines into ``{relative path: lower-case hex digest}``.

    Parameters
    ----------
    text : str
        Content of a ``SHA256SUMS.txt`` file: ``<sha256-hex>  <relative/path>`` per line; blank
        lines are ignored and a ``*`` (binary-mode marker) before the path is accepted.
    source : str
        Name of the file or URL the text came from, used in error messages.

    Returns
    -------
    dict of str to str
        Paths in the order listed, normalised to forward-slash relative form.

    Raises
    ------
    ValueError
        If a line is malformed, a path is absolute or contains ``..`` (it would escape the
        destination folder), a path is listed twice with different digests, or no file is listed.

    Examples
    --------
    >>> sums = parse_sha256sums("AB" * 32 + "  ./labels/1_labeled_sleep.txt\\n")
    >>> list(sums), sums["labels/1_labeled_sleep.txt"][:8]
    (['labels/1_labeled_sleep.txt'], 'abababab')
    """
    checksums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(maxsplit=1)
        if len(fields) != 2 or not _SHA256_HEX.fullmatch(fields[0]):
            raise ValueError(
                f"{source} line {number}: expected '<sha256-hex>  <relative/path>', got {line!r}"
            )
        digest, raw_path = fields[0].lower(), fields[1].removeprefix("*")
        path = _safe_relative_path(raw_path, f"{source} line {number}")
        if checksums.get(path, digest) != digest:
            raise ValueError(f"{source} line {number}: {path} is listed twice with different sums")
        checksums[path] = digest
    if not checksums:
        raise ValueError(f"{source} lists no files")
    return checksums


def fetch(
    dest: Path,
    base_url: str | None = None,
    *,
    include: Sequence[str] | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60,
) -> FetchSummary:
    """Download the sleep-accel record into ``dest``, verifying every file's SHA-256.

    ``SHA256SUMS.txt`` is downloaded first (and saved in ``dest``); then each file it lists,
    keeping its relative path. Files already present with the right checksum are skipped, so a
    second call only checks. A file appears under its final name only after its checksum matched.

    Parameters
    ----------
    dest : pathlib.Path
        Destination folder; created if missing.
    base_url : str, optional
        URL of the record's folder. Defaults to ``$SLEEPSTREAM_BASE_URL`` if set, else
        :data:`DEFAULT_BASE_URL`.
    include : sequence of str, optional
        Folder prefixes (or exact paths) to download, e.g. ``["labels/", "heart_rate/"]``;
        ``"labels"`` and ``"labels/"`` are the same. Default: every listed file.
    progress : bool
        Show a ``rich`` progress bar on stderr (bytes of the current file, and file count).
    retries : int
        How many times one file may be retried after a dropped connection, a timeout, a
        transient HTTP error (408, 429, 5xx) or a checksum mismatch. Dropped connections resume
        from the ``.part`` file; a checksum mismatch restarts from byte 0.
    timeout : float
        Socket timeout in seconds for connecting and for each read.

    Returns
    -------
    FetchSummary
        Which files were downloaded or skipped, and the bytes received.

    Raises
    ------
    ValueError
        If ``SHA256SUMS.txt`` is malformed or lists an unsafe path, if an ``include`` prefix
        matches no listed file, or if ``retries`` or ``timeout`` is out of range.
    ChecksumMismatchError
        (a ``RuntimeError``) if a file still mismatches after the last retry; neither the file
        nor its ``.part`` is left behind.
    ConnectionError
        If the connection keeps failing after the last retry; the ``.part`` file is kept so a
        later call resumes from it.
    OSError
        If the server answers with a non-transient HTTP error such as 404.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    base = _resolve_base_url(base_url)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    sums_url = base + SHA256SUMS
    read_sums = functools.partial(_read_url, sums_url, timeout)
    sums_bytes = _with_retries(read_sums, SHA256SUMS, retries, final_url=sums_url)
    try:
        sums_text = sums_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{sums_url} is not UTF-8 text: {exc}") from exc
    checksums = parse_sha256sums(sums_text, source=sums_url)
    _write_atomically(dest / SHA256SUMS, sums_bytes)
    selected = _select(checksums, include)
    logger.info(
        "Fetching %d of %d files from %s into %s", len(selected), len(checksums), base, dest
    )

    summary = FetchSummary()
    with _progress_bar(progress) as bar:
        meter = _Meter(bar, bar.add_task("sleep-accel", total=None))
        for index, (relative, digest) in enumerate(selected.items(), start=1):
            bar.reset(meter.task, total=None, description=f"[{index}/{len(selected)}] {relative}")
            target = dest.joinpath(*PurePosixPath(relative).parts)
            if _is_verified(target, digest, relative):
                summary.skipped.append(relative)
                continue
            url = base + urllib.parse.quote(relative)
            attempt = functools.partial(
                _download_verified, url, target, relative, digest, timeout, meter
            )
            _with_retries(attempt, relative, retries, final_url=url)
            summary.downloaded.append(relative)
            summary.bytes = meter.received
    if summary.skipped:
        logger.info("Skipped %d files already present and verified", len(summary.skipped))
    logger.info(
        "Downloaded %d files (%d bytes) into %s", len(summary.downloaded), summary.bytes, dest
    )
    return summary


def _resolve_base_url(base_url: str | None) -> str:
    """Argument, else ``$SLEEPSTREAM_BASE_URL``, else the PhysioNet URL; ends with ``/``."""
    base = base_url or os.environ.get("SLEEPSTREAM_BASE_URL") or DEFAULT_BASE_URL
    return base.rstrip("/") + "/"


def _safe_relative_path(raw: str, where: str) -> str:
    """Normalised relative path, or ``ValueError`` if it could escape the destination folder."""
    posix = PurePosixPath(raw)
    windows = PureWindowsPath(raw)
    if (
        not raw
        or posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or "\\" in raw
        or ".." in posix.parts
        or not posix.parts
    ):
        raise ValueError(
            f"{where}: unsafe path {raw!r}; paths must be relative and must not contain '..'"
        )
    return posix.as_posix()


def _select(checksums: dict[str, str], include: Sequence[str] | None) -> dict[str, str]:
    """The entries whose path is one of ``include`` or lies in one of its folders."""
    if include is None:
        return checksums
    if isinstance(include, str):
        raise TypeError(f"include must be a sequence of prefixes such as [{include!r}], not a str")
    prefixes = [prefix.strip("/") for prefix in include]
    for prefix, original in zip(prefixes, include, strict=True):
        if not any(_in_prefix(path, prefix) for path in checksums):
            raise ValueError(f"include prefix {original!r} matches no file in {SHA256SUMS}")
    return {
        path: digest
        for path, digest in checksums.items()
        if any(_in_prefix(path, prefix) for prefix in prefixes)
    }


def _in_prefix(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _is_verified(target: Path, digest: str, relative: str) -> bool:
    """Whether ``target`` exists with the right checksum; a wrong one is deleted."""
    if not target.is_file():
        return False
    actual = _sha256(target)
    if actual == digest:
        logger.debug("%s already present and verified; skipping", relative)
        return True
    logger.warning(
        "%s is present but its SHA-256 is %s, not %s; downloading it again", target, actual, digest
    )
    target.unlink()
    return False


def _with_retries(attempt: Callable[[], T], what: str, retries: int, *, final_url: str) -> T:
    """Run ``attempt`` up to ``retries + 1`` times, retrying transient failures only."""
    error: Exception | None = None
    for number in range(retries + 1):
        if number:
            time.sleep(min(RETRY_DELAY_SECONDS * 2 ** (number - 1), 30.0))
        try:
            return attempt()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code not in _RETRY_STATUS:
                raise OSError(f"Cannot download {final_url}: HTTP {exc.code} {exc.reason}") from exc
            error = exc
        except (ChecksumMismatchError, _ResumeRejectedError, *_TRANSIENT_ERRORS) as exc:
            error = exc
        if number < retries:
            logger.warning("%s failed (%s); retry %d of %d", what, error, number + 1, retries)
    if isinstance(error, ChecksumMismatchError):
        raise error
    raise ConnectionError(
        f"Cannot download {final_url} after {retries + 1} attempts: {error}"
    ) from error


def _read_url(url: str, timeout: float) -> bytes:
    """Whole body of ``url``; ``IncompleteRead`` if the connection drops early."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body


def _download_verified(
    url: str, target: Path, relative: str, digest: str, timeout: float, meter: _Meter
) -> None:
    """One attempt: download ``url`` into ``target`` via its ``.part`` file, then verify it.

    Raises
    ------
    ChecksumMismatchError
        After deleting the ``.part`` file, so the next attempt starts from byte 0.
    """
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download_to_part(url, part, relative, timeout, meter)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not part.exists():
            raise
        # Range not satisfiable: the .part file already holds the whole file (or more).
        exc.close()
        logger.debug("%s: server has nothing past byte %d", relative, part.stat().st_size)
    actual = _sha256(part)
    if actual != digest:
        part.unlink()
        raise ChecksumMismatchError(
            f"Checksum mismatch for {relative}: expected {digest}, got {actual}"
        )
    os.replace(part, target)


def _download_to_part(url: str, part: Path, relative: str, timeout: float, meter: _Meter) -> None:
    """Append the rest of ``url`` to ``part`` (or rewrite it if the server ignores ``Range``).

    Raises ``ConnectionError`` if the body ends before its ``Content-Length``; what did arrive
    stays in ``part`` for the next attempt to resume from.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if offset and not _resumes_at(response, offset, part):
            logger.info("%s: server sent the whole file; restarting from byte 0", relative)
            offset = 0
        elif offset:
            logger.info("%s: resuming from byte %d", relative, offset)
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header is not None else None
        meter.start(completed=offset, total=None if length is None else offset + length)
        received = 0
        with part.open("ab" if offset else "wb") as out:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                meter.advance(len(chunk))
    # HTTPResponse.read(n) returns b"" at an early EOF instead of raising, so check here.
    if length is not None and received < length:
        raise ConnectionError(f"connection closed after {received} of {length} bytes")


def _resumes_at(response: http.client.HTTPResponse, offset: int, part: Path) -> bool:
    """Whether ``response`` is a 206 whose body starts at byte ``offset``.

    A 206 for another range makes ``part`` useless: it is deleted and the attempt fails.
    """
    if response.status != 206:
        return False
    content_range = response.headers.get("Content-Range", "")
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    if match is None or int(match.group(1)) != offset:
        part.unlink()
        raise _ResumeRejectedError(
            f"asked for bytes from {offset}, got Content-Range {content_range!r}"
        )
    return True


def _write_atomically(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)
