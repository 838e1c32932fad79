"""Output paths: checked before any work starts, and files written whole or not at all.

The commands call :func:`check_output_dir` or :func:`check_output_file` on every output they
were given before they read data or train, so a path that cannot be written fails at once
instead of after an hour of evaluation.

Every writer goes through :func:`atomic_file`, :func:`atomic_path`, :func:`write_atomic`,
:func:`copy_atomic` or (for a folder written as a whole, such as a Core ML ``.mlpackage``)
:func:`atomic_directory`: the bytes go to a hidden temporary file or folder in the target's
folder, which replaces the target (``os.replace``) only once it is complete. An interrupted run
(Ctrl-C, a full disk, an exception) leaves either the complete new file, the old file, or
nothing; never a partial one. Temporary names start with ``.`` and end with ``.tmp``
(``.tmp<suffix>`` for :func:`atomic_path`), so a crash that kills the process outright leaves
only files that no glob of the outputs (``*.npz``, ``*.json``, ``*.mlpackage``) picks up.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_NAME_KEEP = 180
"""Characters of the target's name kept in a temporary name (names are limited to 255 bytes)."""


class OutputPathError(OSError):
    """An output path that cannot be written; the message names the path and what is wrong.

    A subclass of ``OSError``, so the command line reports it in one line with exit code 2.
    """


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the current folder for a relative path)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _check_creatable(path: Path, folder: Path, what: str) -> None:
    """Raise unless files can be created in ``folder``, the folder that is (or will) hold ``path``.

    The nearest existing ancestor of ``folder`` must be a folder in which this process can
    create a file; that is tried with a temporary file, the only reliable test (permissions,
    ACLs, read-only mounts, running as root).
    """
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputPathError(
            f"{what} {path} cannot be created: {existing} is a file, not a folder"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sleepstream-write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputPathError(
            f"{what} {path} is not writable: cannot create a file in {existing} ({reason})"
        ) from None


def check_output_dir(path: str | os.PathLike[str], what: str = "Output folder") -> Path:
    """Check that ``path`` is, or can be created as, a folder this process can write to.

    Nothing is created: a missing folder is checked through its nearest existing ancestor.

    Parameters
    ----------
    path
        The folder a command will write into.
    what
        How the message names it, e.g. ``"Output folder"`` or ``"--docs folder"``.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputPathError
        When ``path`` is a file, lies under a file, or does not accept new files.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_output_dir(folder / "new" / "report") == folder / "new" / "report"
    True
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{what} {folder} is a file: a folder is needed here")
    _check_creatable(folder, folder, what)
    return folder


def check_output_file(
    path: str | os.PathLike[str], what: str = "Output file", suffixes: Sequence[str] = ()
) -> Path:
    """Check that ``path`` can be written as a file (replacing an existing file is fine).

    The same checks as :func:`check_output_dir` (nothing is created; ``what`` names the path in
    the message; ``path`` is returned as a :class:`~pathlib.Path`), for a file: an
    :class:`OutputPathError` when ``path`` is a folder, ends in none of ``suffixes`` (e.g.
    ``(".png", ".pdf")``, case-insensitive; empty: any ending), lies under a file, or its folder
    does not accept new files (the file is written via a temporary file beside it).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_output_file(folder / "night.PNG", "--out file", (".png",)).name
    'night.PNG'
    >>> check_output_file(folder / "night.txt", "--out file", (".png",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    sleepstream.paths.OutputPathError: --out file ...night.txt: expected a name ending in .png, got '.txt'
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise OutputPathError(f"{what} {file} is a folder: a file name is needed here")
    if suffixes and file.suffix.lower() not in {s.lower() for s in suffixes}:
        raise OutputPathError(
            f"{what} {file}: expected a name ending in {' or '.join(suffixes)}, "
            f"got {file.suffix or 'no suffix'!r}"
        )
    _check_creatable(file, file.parent, what)
    return file


def _temporary_file(path: Path, suffix: str) -> tuple[Path, int]:
    """A new hidden file beside ``path``, opened for writing; created with the usual umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = path.with_name(f".{path.name[:_NAME_KEEP]}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name beside the target", str(path))


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        log.warning("Could not remove the temporary file %s: %s", path, error)


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` with ``path`` as its file name when it names none (e.g. a full disk)."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror, str(path))


@contextmanager
def _renamed_when_done(temporary: Path, target: Path) -> Iterator[None]:
    """Rename ``temporary`` over ``target`` when the block ends; if it raises (or the rename
    fails), remove ``temporary`` and leave ``target`` as it was. An ``OSError`` names
    ``target`` when it names no file."""
    try:
        yield
        os.replace(temporary, target)
    except OSError as error:
        _remove_quietly(temporary)
        raise _naming(error, target) from error
    except BaseException:
        _remove_quietly(temporary)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing so that it appears only once complete.

    Writes go to a temporary file in the same folder (created with its parents if missing),
    which is flushed to disk and then renamed over ``path``. If the block raises (including
    ``KeyboardInterrupt``), the temporary file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_file(folder / "data.bin") as handle:
    ...     _ = handle.write(b"all or nothing")
    >>> (folder / "data.bin").read_bytes()
    b'all or nothing'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary, descriptor = _temporary_file(target, "")
    with _renamed_when_done(temporary, target), os.fdopen(descriptor, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that need a file name; renamed when done.

    The temporary name keeps the suffix of ``path`` (matplotlib picks the image format from
    it). Use :func:`atomic_file` where the writer accepts an open file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary, descriptor = _temporary_file(target, target.suffix)
    os.close(descriptor)
    with _renamed_when_done(temporary, target):
        yield temporary


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A path for a writer that creates a whole folder at ``path``; moved into place when done.

    The path handed out does not exist yet (writers such as Core ML's ``save`` insist on
    creating it) and has the name of ``path``, inside a hidden temporary folder
    (``.NAME.xxxxxxxx.tmp``) beside it. When the block ends, an existing ``path`` is moved
    aside and the new folder renamed into place; then the temporary folder is removed. If the
    block raises (including ``KeyboardInterrupt``), ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_directory(folder / "model.mlpackage") as partial:
    ...     partial.mkdir()
    ...     _ = (partial / "weights.bin").write_bytes(b"complete")
    >>> sorted(p.name for p in folder.rglob("*"))
    ['model.mlpackage', 'weights.bin']
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(
        tempfile.mkdtemp(prefix=f".{target.name[:_NAME_KEEP]}.", suffix=".tmp", dir=target.parent)
    )
    try:
        written = scratch / target.name
        yield written
        if not written.exists():
            raise FileNotFoundError(
                errno.ENOENT, "the writer created nothing to move into place", str(written)
            )
        if target.exists():
            os.replace(target, scratch / f"{target.name}.replaced")
        os.replace(written, target)
    except OSError as error:
        raise _naming(error, target) from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_file`; returns ``path``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as handle:
        handle.write(payload)
    return Path(path)


def copy_atomic(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy ``source`` to ``target`` through :func:`atomic_file`; returns ``target``."""
    with Path(source).open("rb") as reader, atomic_file(target) as writer:
        shutil.copyfileobj(reader, writer)
    return Path(target)
