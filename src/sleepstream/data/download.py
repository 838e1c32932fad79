"""Download the PhysioNet sleep-accel record, verified against its ``SHA256SUMS.txt``.

The record (Walch et al., 2019) is published at ``https://physionet.org/files/sleep-accel/1.0.0/``
with a ``SHA256SUMS.txt`` that lists every file. :func:`fetch` mirrors the listed files into a
local folder and guarantees that every file under its final name matches its checksum: data are
written to ``<name>.part`` first and renamed only once verified. Interrupted downloads resume from
the ``.part`` file with an HTTP ``Range`` request, within one call or in a later one.

HTTP(S) goes through :class:`pooch.HTTPDownloader` (``requests``) and hashing through
:func:`pooch.file_hash`. Pooch alone cannot resume: its downloader truncates the file it is given
and :meth:`pooch.Pooch.fetch` downloads into a fresh temporary file that it deletes on failure.
Resuming is added here through the arguments the downloader passes on to ``requests``: a
``Range`` header, and a response hook that checks the server's answer before any byte is written.
Pooch's registry format (``<path> <hash>``) is not PhysioNet's, so :func:`parse_sha256sums`
reads ``SHA256SUMS.txt``.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import IO, Any, TypeVar

import pooch
import requests
from rich.progress import Progress, TaskID

from sleepstream.logs import byte_progress

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
"""Bytes per read. A dropped connection loses the partial chunk being read, so a resume starts
at a multiple of this (or wherever the ``.part`` file ended before)."""
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,  # refused, reset, remote end closed without a response
    requests.exceptions.ChunkedEncodingError,  # body shorter than its Content-Length
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)
_IDENTITY = {"Accept-Encoding": "identity"}
"""Byte ranges count bytes of the encoded body, so resuming needs it uncompressed."""
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
        Payload bytes received and written in this call, including attempts that were later
        retried; bytes of a ``.part`` file left by an earlier call are not counted, nor the
        partial chunk in flight when a connection dropped.
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
        ``http(s)://`` URL of the record's folder. Defaults to ``$SLEEPSTREAM_BASE_URL`` if set,
        else :data:`DEFAULT_BASE_URL`.
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
        matches no listed file, if ``retries`` or ``timeout`` is out of range, or if the base
        URL is not ``http://`` or ``https://``.
    ChecksumMismatchError
        (a ``RuntimeError``) if a file still mismatches after the last retry; neither the file
        nor its ``.part`` is left behind.
    ConnectionError
        If the connection keeps failing after the last retry; the ``.part`` file is kept so a
        later call resumes from it.
    OSError
        If the server answers with a non-transient HTTP error such as 404.

    Examples
    --------
    >>> summary = fetch(default_data_dir(), include=["labels/"])  # doctest: +SKIP
    >>> summary.downloaded[:1]  # doctest: +SKIP
    ['labels/1066528_labeled_sleep.txt']

    Arguments are checked before anything is downloaded or created:

    >>> fetch(Path("sleep-accel"), retries=-1)
    Traceback (most recent call last):
    ...
    ValueError: retries must be >= 0, got -1
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
    with byte_progress(progress) as bar:
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
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ValueError(f"Base URL {base!r} is not supported: expected an http:// or https:// URL")
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


def _sha256(path: Path) -> str:
    digest: str = pooch.file_hash(str(path), alg="sha256")
    return digest


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
        except requests.HTTPError as exc:
            status, reason = _close(exc.response)
            if status not in _RETRY_STATUS:
                raise OSError(f"Cannot download {final_url}: HTTP {status} {reason}") from exc
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


def _close(response: requests.Response | None) -> tuple[int | None, str | None]:
    """Release the connection of an error response; its status code and reason."""
    if response is None:
        return None, None
    response.close()
    return response.status_code, response.reason


def _downloader(timeout: float, **requests_options: Any) -> pooch.HTTPDownloader:
    """Pooch's HTTP downloader; ``timeout`` applies to connecting and to each read."""
    return pooch.HTTPDownloader(chunk_size=_CHUNK_BYTES, timeout=timeout, **requests_options)


def _read_url(url: str, timeout: float) -> bytes:
    """Whole body of ``url``; ``ChunkedEncodingError`` if the connection drops early."""
    body = io.BytesIO()
    _downloader(timeout)(url, body, None)
    return body.getvalue()


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
        with _PartFile(part, relative, meter) as sink:
            hooks = {"response": sink.check_response}
            _downloader(timeout, headers=sink.headers(), hooks=hooks)(url, sink, None)
    except requests.HTTPError as exc:
        status, _ = _close(exc.response)
        if status != 416 or not part.exists():
            raise
        # Range not satisfiable: the .part file already holds the whole file (or more).
        logger.debug("%s: server has nothing past byte %d", relative, part.stat().st_size)
    actual = _sha256(part)
    if actual != digest:
        part.unlink()
        raise ChecksumMismatchError(
            f"Checksum mismatch for {relative}: expected {digest}, got {actual}"
        )
    os.replace(part, target)


class _PartFile:
    """The ``.part`` file as the file-like output of :class:`pooch.HTTPDownloader`.

    :meth:`headers` asks for the bytes after those already in the file. :meth:`check_response`,
    a ``requests`` response hook, sees the answer before its body: a ``206`` at the right offset
    appends, a ``200`` (the server ignored ``Range``) rewrites from byte 0, and a ``206`` for
    another range deletes the file and fails the attempt. What did arrive before a dropped
    connection stays in the file for the next attempt to resume from.
    """

    def __init__(self, part: Path, relative: str, meter: _Meter) -> None:
        self.part = part
        self.relative = relative
        self.meter = meter
        self.offset = part.stat().st_size if part.exists() else 0
        self._file: IO[bytes] | None = None

    def headers(self) -> dict[str, str]:
        if not self.offset:
            return dict(_IDENTITY)
        return {**_IDENTITY, "Range": f"bytes={self.offset}-"}

    def check_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.status_code not in (200, 206):
            return  # redirects are followed; errors are raised by the downloader
        if self.offset and response.status_code == 200:
            logger.info("%s: server sent the whole file; restarting from byte 0", self.relative)
            self.offset = 0
        elif self.offset:
            self._check_range(response)
            logger.info("%s: resuming from byte %d", self.relative, self.offset)
        length = response.headers.get("Content-Length")
        total = None if length is None else self.offset + int(length)
        self.meter.start(completed=self.offset, total=total)
        self._file = self.part.open("ab" if self.offset else "wb")

    def _check_range(self, response: requests.Response) -> None:
        """Raise ``_ResumeRejectedError`` (deleting ``part``) unless the body starts at offset."""
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
        if match is None or int(match.group(1)) != self.offset:
            response.close()
            self.part.unlink()
            raise _ResumeRejectedError(
                f"asked for bytes from {self.offset}, got Content-Range {content_range!r}"
            )

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError(f"{self.relative}: body received before its response was checked")
        self._file.write(chunk)
        self.meter.advance(len(chunk))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def __enter__(self) -> _PartFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()


def _write_atomically(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)
