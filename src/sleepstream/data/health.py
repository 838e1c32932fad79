"""Reading the Health app's export (``export.zip`` or its ``export.xml``) as a stream.

What is read (everything else in the file is parsed and skipped):

- heart rate (``HKQuantityTypeIdentifierHeartRate``), by default from the Apple Watch sources;
- step counts (``HKQuantityTypeIdentifierStepCount``), every source, the watch preferred;
- Apple's sleep analysis (``HKCategoryTypeIdentifierSleepAnalysis``): in bed, awake, core,
  deep, REM, unspecified (the pre-iOS 16 ``Asleep`` value is "unspecified").

The file is read once, in 4 MiB chunks handed to expat (the parser under
:mod:`xml.etree.ElementTree`), and only the attributes of the records kept are held, converted
to arrays every :data:`BATCH` records: memory grows with the records kept, not with the file
(a 1 GB export: about 310 MB resident, imports included; ``docs/health-export.md``). Two defects of real exports are
repaired on the way in, without moving any byte (so errors still name true offsets and lines):

- the internal DTD (``<!DOCTYPE HealthData [...]>``) is blanked out: iOS 16 writes it with
  unterminated ``ATTLIST`` declarations that make every XML parser fail on line 156;
- bytes that XML forbids (control characters other than tab, newline and carriage return,
  e.g. ``\\x0b`` in metadata values) are replaced by spaces.

Records that are children of a ``Correlation`` (blood pressure, food) are skipped: Apple writes
each of them again as a top-level record. ``MetadataEntry``, ``Workout``, ``ActivitySummary``
and the other elements are skipped.

Times are UTC (``datetime64[ns, UTC]``); each record keeps the UTC offset its ``startDate`` was
written with (``"2024-03-10 01:59:00 -0800"`` -> -480 minutes), which follows daylight saving
and the time zones travelled through. How sources are ranked and duplicates dropped is in
``docs/health-export.md`` and in :func:`read_health_export`.

A file that stops in the middle (an interrupted copy, a cut zip) raises
:class:`TruncatedExportError`, which names the file and where it stopped and carries what was
read up to there (``.partial``); other damage in the XML raises :class:`HealthExportError`,
with the same information.
"""

from __future__ import annotations

import logging
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar
from xml.parsers import expat

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sleepstream.data.parse import DataFormatError
from sleepstream.logs import byte_progress

__all__ = [
    "HEART_RATE",
    "HEART_RATE_DUPLICATE_SECONDS",
    "SLEEP",
    "SLEEP_STAGES",
    "STEPS",
    "HealthExport",
    "HealthExportError",
    "TruncatedExportError",
    "read_health_export",
]

log = logging.getLogger(__name__)

HEART_RATE = "HKQuantityTypeIdentifierHeartRate"
STEPS = "HKQuantityTypeIdentifierStepCount"
SLEEP = "HKCategoryTypeIdentifierSleepAnalysis"
KINDS = {HEART_RATE: "heart_rate", STEPS: "steps", SLEEP: "sleep"}
"""The record types read, by the name of the table they go to."""

SLEEP_STAGES = ("in_bed", "awake", "core", "deep", "rem", "unspecified")
_SLEEP_VALUES = {
    "HKCategoryValueSleepAnalysisInBed": 0,
    "HKCategoryValueSleepAnalysisAwake": 1,
    "HKCategoryValueSleepAnalysisAsleepCore": 2,
    "HKCategoryValueSleepAnalysisAsleepDeep": 3,
    "HKCategoryValueSleepAnalysisAsleepREM": 4,
    "HKCategoryValueSleepAnalysisAsleepUnspecified": 5,
    "HKCategoryValueSleepAnalysisAsleep": 5,  # before iOS 16: asleep, stage not known
}

HEART_RATE_UNITS = {"count/min": 1.0, "count/s": 60.0}
"""Heart-rate units met in exports and the factor to beats per minute."""

HEART_RATE_DUPLICATE_SECONDS = 5.0
"""A heart-rate sample less than this far from one of a better-ranked source is the same
measurement written twice (the watch's densest cadence, in workouts, is about 5 s)."""

CHUNK_BYTES = 4 * 2**20
BATCH = 65536
"""Records of one kind held as Python strings before they are converted to arrays."""

DOCTYPE_SEARCH_LIMIT = 16 * 2**20
"""How far into the file the end of the DOCTYPE block is looked for (it is about 10 KB)."""

EXPORT_MEMBER = "apple_health_export/export.xml"

_FORBIDDEN = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])
_BLANK_FORBIDDEN = bytes.maketrans(_FORBIDDEN, b" " * len(_FORBIDDEN))
_DOCTYPE = re.compile(rb"<!DOCTYPE\b[^\[>]*(?:\[.*?\]\s*)?>", re.DOTALL)
_NOT_NEWLINE = re.compile(rb"[^\n]")


# -- the result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthExport:
    """What :func:`read_health_export` read from one export.

    Attributes
    ----------
    heart_rate
        ``time`` (``datetime64[ns, UTC]``; the middle of the record, which for the watch is
        its one instant), ``bpm`` (float64), ``source`` (str), ``utc_offset_min`` (int16);
        sorted by time, only the chosen sources, duplicates dropped.
    steps
        ``start``, ``end`` (UTC), ``steps`` (float64), ``source``, ``utc_offset_min``; sorted by
        start; a record overlapping one of a better-ranked source dropped.
    sleep
        ``start``, ``end`` (UTC), ``stage`` (one of :data:`SLEEP_STAGES`), ``source``,
        ``utc_offset_min``; every source, sorted by start; exact repeats dropped.
    sources
        One row per (kind, source): ``kind`` (``heart_rate``, ``steps``, ``sleep``), ``source``,
        ``device`` (name and hardware of the devices named by its records), ``records`` (its
        readable records of that kind), ``used`` (whether any of them is in the table above);
        best-ranked first within each kind.
    path
        The file read.
    """

    heart_rate: pd.DataFrame
    steps: pd.DataFrame
    sleep: pd.DataFrame
    sources: pd.DataFrame
    path: Path


class HealthExportError(DataFormatError):
    """An export cannot be read to its end; ``partial`` holds what was read before the fault.

    Attributes
    ----------
    partial
        The :class:`HealthExport` of the records read before the fault.
    position
        Bytes of ``export.xml`` read (uncompressed, for a zip) when the fault was found.
    line
        Line of ``export.xml`` the fault is on (1-based).
    """

    def __init__(self, message: str, partial: HealthExport, position: int, line: int) -> None:
        super().__init__(message)
        self.partial = partial
        self.position = position
        self.line = line


class TruncatedExportError(HealthExportError):
    """The export stops in the middle (a cut file or zip); ``partial`` is what came before."""


_Stop = TypeVar("_Stop", bound=HealthExportError)


# -- reading -----------------------------------------------------------------------------------


def read_health_export(
    path: str | Path,
    *,
    heart_rate_sources: Sequence[str] | None = None,
    progress: bool = False,
) -> HealthExport:
    """Read heart rate, step counts and sleep analysis from a Health app export.

    Parameters
    ----------
    path
        ``export.zip`` as the Health app writes it (the member
        ``apple_health_export/export.xml`` is read, streamed out of the zip), or ``export.xml``.
    heart_rate_sources
        The ``sourceName`` s whose heart rate to use, best first. ``None``: the sources whose
        records name an Apple Watch device (or, without a device, have "Watch" in their name),
        the one with more records first; every source when none is a watch.
    progress
        Show a ``rich`` progress bar of the bytes read, on stderr.

    Returns
    -------
    HealthExport
        The three tables and the sources. Duplicates: a record repeated by its own source is
        kept once; a heart-rate sample within :data:`HEART_RATE_DUPLICATE_SECONDS` of a sample
        of a better-ranked source, and a step record overlapping a record of a better-ranked
        source, are dropped (steps rank the watch first, then the iPhone, then the rest; more
        records first within each). Records whose dates or values cannot be read are skipped
        and counted in a logged warning that names the first one's line.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    DataFormatError
        Not an XML file or a zip holding ``export.xml``, or an XML root that is not
        ``HealthData``.
    TruncatedExportError
        The file stops in the middle; ``.partial`` holds what was read before.
    HealthExportError
        The XML is broken in the middle; ``.partial`` holds what was read before.
    ValueError
        A source named in ``heart_rate_sources`` has no heart-rate records in the file.

    Examples
    --------
    >>> import tempfile
    >>> from sleepstream.data.health_fake import write_export
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = write_export(Path(folder) / "export.xml", days=2, seed=1)
    ...     export = read_health_export(Path(folder) / "export.xml")
    >>> export.heart_rate.columns.tolist()
    ['time', 'bpm', 'source', 'utc_offset_min']
    >>> sorted(set(export.sleep["stage"]))
    ['awake', 'core', 'deep', 'in_bed', 'rem', 'unspecified']
    >>> export.sources.loc[export.sources["kind"] == "steps", ["device", "used"]].values.tolist()
    [['Apple Watch (Watch6,2)', True], ['iPhone (iPhone15,2)', True]]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    reader = _ExportReader(path)
    with byte_progress(progress) as bar:
        task = bar.add_task(f"reading {path.name}", total=None)
        reader.run(lambda n, total: bar.update(task, advance=n, total=total))
    return reader.result(heart_rate_sources, strict=True)


@dataclass
class _Batch:
    """The records of one kind: attribute text of the latest records, arrays of the earlier."""

    kind: str
    starts: list[str | None] = field(default_factory=list)
    ends: list[str | None] = field(default_factory=list)
    values: list[str | None] = field(default_factory=list)
    sids: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    source_ids: dict[tuple[str, str, str], int] = field(default_factory=dict)
    chunks: list[dict[str, NDArray[Any]]] = field(default_factory=list)
    skipped: int = 0
    first_skipped: str = ""

    def source_id(self, name: str, device: str, unit: str) -> int:
        key = (name, device, unit)
        sid = self.source_ids.get(key)
        if sid is None:
            sid = self.source_ids[key] = len(self.source_ids)
        return sid

    def flush(self) -> None:
        """Convert the held text to arrays; unreadable records are counted and dropped."""
        if not self.starts:
            return
        start, offset, good_start = _parse_dates(self.starts)
        end, _, good_end = _parse_dates(self.ends)
        sid = np.asarray(self.sids, dtype=np.int32)
        if self.kind == "sleep":
            codes = [_SLEEP_VALUES.get(v, -1) for v in self.values]  # type: ignore[arg-type]
            value = np.asarray(codes, dtype=np.float64)
            good_value = value >= 0
        else:
            value = _numbers(self.values) * self._unit_factors()[sid]
            good_value = np.isfinite(value)
        good = good_start & good_end & good_value & (end >= start)
        if not good.all():
            self._count_skipped(good, good_start & good_end, good_value)
        self.chunks.append(
            {
                "start": start[good],
                "end": end[good],
                "offset": offset[good],
                "value": value[good],
                "sid": sid[good],
            }
        )
        for held in (self.starts, self.ends, self.values, self.sids, self.lines):
            held.clear()

    def _unit_factors(self) -> NDArray[np.float64]:
        """Per source id, the factor to the table's unit (NaN: a unit not understood)."""
        factors = np.ones(len(self.source_ids), dtype=np.float64)
        if self.kind == "heart_rate":
            for (_, _, unit), sid in self.source_ids.items():
                factors[sid] = HEART_RATE_UNITS.get(unit, np.nan)
        return factors

    def _count_skipped(
        self, good: NDArray[np.bool_], good_dates: NDArray[np.bool_], good_value: NDArray[np.bool_]
    ) -> None:
        bad = ~good
        if not self.skipped:
            row = int(np.argmax(bad))
            if not good_dates[row]:
                why = f"dates {self.starts[row]!r} to {self.ends[row]!r}"
            elif not good_value[row]:
                why = f"value {self.values[row]!r}"
            else:
                why = f"ends ({self.ends[row]!r}) before it starts ({self.starts[row]!r})"
            self.first_skipped = f"line {self.lines[row]}: {why}"
        self.skipped += int(bad.sum())

    def arrays(self) -> dict[str, NDArray[Any]]:
        """Every record read so far, as arrays (``start``, ``end`` ns UTC, ``offset`` min,
        ``value``, ``sid``)."""
        self.flush()
        names = ("start", "end", "offset", "value", "sid")
        dtypes = (np.int64, np.int64, np.int16, np.float64, np.int32)
        if not self.chunks:
            return {n: np.zeros(0, dtype=d) for n, d in zip(names, dtypes, strict=True)}
        if len(self.chunks) > 1:
            self.chunks = [{n: np.concatenate([c[n] for c in self.chunks]) for n in names}]
        return self.chunks[0]


class _ExportReader:
    """One pass of expat over an export, keeping the records of :data:`KINDS`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches = {type_: _Batch(kind) for type_, kind in KINDS.items()}
        self.forbidden = 0
        self.bytes_read = 0
        self.member = ""  # the zip member read, "" for a plain XML file
        self._parser = expat.ParserCreate()
        self._parser.ordered_attributes = True
        self._parser.StartElementHandler = self._start
        self._correlation_depth = 0
        self._root_seen = False

    # -- the pass

    def run(self, advance: Callable[[int, int | None], None]) -> None:
        chunks, total = self._open()
        head = _HeadFilter(self._where())
        advance(0, total)
        try:
            for chunk in chunks:
                self.bytes_read += len(chunk)
                self._feed(head.filter(chunk))
                advance(len(chunk), total)
            self._feed(head.finish())
        except expat.ExpatError as error:
            raise self._broken(error) from None
        except _CutError as error:
            raise self._truncated(str(error)) from None
        if not self.bytes_read:
            raise self._truncated("the file is empty")
        try:
            self._parser.Parse(b"", True)
        except expat.ExpatError as error:
            message = expat.ErrorString(error.code)
            raise self._truncated(f"the XML stops in the middle ({message})") from None
        if self.forbidden:
            log.warning(
                "%s: %d bytes that XML forbids (control characters) read as spaces",
                self._where(),
                self.forbidden,
            )

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        clean = data.translate(None, _FORBIDDEN)
        if len(clean) != len(data):
            self.forbidden += len(data) - len(clean)
            data = data.translate(_BLANK_FORBIDDEN)
        self._parser.Parse(data, False)

    def _open(self) -> tuple[Iterator[bytes], int | None]:
        with self.path.open("rb") as handle:
            magic = handle.read(4)
        if magic == b"PK\x03\x04":
            return self._zip_chunks()
        return _file_chunks(self.path), self.path.stat().st_size

    def _zip_chunks(self) -> tuple[Iterator[bytes], int | None]:
        try:
            archive = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            # No central directory: the zip was cut. Its local headers still lead to the member.
            self.member = EXPORT_MEMBER
            return _cut_zip_chunks(self.path, self), None
        info = _export_member(archive, self.path)
        self.member = info.filename
        return _zip_member_chunks(archive, info), info.file_size

    # -- expat handlers

    def _start(self, name: str, attrs: list[str]) -> None:
        # attrs is [name, value, name, value, ...] (ordered_attributes: no dict for the many
        # elements skipped); Apple writes a Record's type first.
        if name == "Record":
            type_ = attrs[1] if attrs and attrs[0] == "type" else _attribute(attrs, "type")
            batch = self.batches.get(type_)
            if batch is None:
                return
            values = dict(zip(attrs[::2], attrs[1::2], strict=True))
            batch.starts.append(values.get("startDate"))
            batch.ends.append(values.get("endDate"))
            batch.values.append(values.get("value"))
            batch.sids.append(
                batch.source_id(
                    values.get("sourceName", ""), values.get("device", ""), values.get("unit", "")
                )
            )
            batch.lines.append(self._parser.CurrentLineNumber)
            if len(batch.starts) >= BATCH:
                batch.flush()
        elif name == "Correlation":
            self._enter_correlation()
        elif not self._root_seen:
            self._root_seen = True
            if name != "HealthData":
                raise DataFormatError(
                    f"{self._where()}, line {self._parser.CurrentLineNumber}: the XML root is "
                    f"<{name}>, not <HealthData>: not a Health app export.xml"
                )

    def _enter_correlation(self) -> None:
        """Skip everything until the Correlation closes: its Records are repeated top-level."""
        self._correlation_depth = 1
        self._parser.StartElementHandler = self._start_in_correlation
        self._parser.EndElementHandler = self._end_in_correlation

    def _start_in_correlation(self, name: str, attrs: list[str]) -> None:
        self._correlation_depth += 1

    def _end_in_correlation(self, name: str) -> None:
        self._correlation_depth -= 1
        if not self._correlation_depth:
            self._parser.StartElementHandler = self._start
            self._parser.EndElementHandler = None

    # -- errors and results

    def _where(self) -> str:
        return f"{self.path} (member {self.member})" if self.member else str(self.path)

    def _broken(self, error: expat.ExpatError) -> HealthExportError:
        message = expat.ErrorString(error.code)
        line = self._parser.ErrorLineNumber
        where = f"{self._where()}, line {line}, column {self._parser.ErrorColumnNumber}"
        at = f"{where}: broken XML ({message}) at byte {self._parser.ErrorByteIndex:,}"
        return self._stopped(HealthExportError, at, "", max(self._parser.ErrorByteIndex, 0), line)

    def _truncated(self, why: str) -> TruncatedExportError:
        line = self._parser.CurrentLineNumber
        at = (
            f"{self._where()}: the export is cut short after byte {self.bytes_read:,} (line {line})"
        )
        advice = "; export the data again or copy the whole file"
        return self._stopped(TruncatedExportError, f"{at}: {why}", advice, self.bytes_read, line)

    def _stopped(
        self, error: type[_Stop], message: str, advice: str, position: int, line: int
    ) -> _Stop:
        """``error`` holding what was read so far: ``message``, what was read, then ``advice``."""
        partial = self.result(None, strict=False)
        read = f"{_summary(partial)} read before it (kept in the error's .partial)"
        return error(f"{message}; {read}{advice}", partial, position, line)

    def result(self, heart_rate_sources: Sequence[str] | None, *, strict: bool) -> HealthExport:
        tables = {}
        for batch in self.batches.values():
            tables[batch.kind] = _Records.from_batch(batch)  # converts what is still text
            if batch.skipped:
                log.warning(
                    "%s: %d %s records skipped: dates, value or unit not readable (first at %s)",
                    self._where(),
                    batch.skipped,
                    batch.kind.replace("_", "-"),
                    batch.first_skipped,
                )
        hr_ranking = _heart_rate_ranking(tables["heart_rate"], heart_rate_sources, strict, self)
        heart_rate, hr_used = _heart_rate_frame(tables["heart_rate"], hr_ranking)
        steps_ranking = _ranking(tables["steps"], prefer=("Watch", "iPhone"))
        steps, steps_used = _steps_frame(tables["steps"], steps_ranking)
        sleep = _sleep_frame(tables["sleep"])
        sources = pd.concat(
            [
                tables["heart_rate"].sources_frame(hr_ranking, hr_used),
                tables["steps"].sources_frame(steps_ranking, steps_used),
                tables["sleep"].sources_frame(
                    _ranking(tables["sleep"], ("Watch", "iPhone")), set(sleep["source"].unique())
                ),
            ],
            ignore_index=True,
        )
        return HealthExport(heart_rate, steps, sleep, sources, self.path)


def _attribute(attrs: list[str], name: str) -> str:
    """The value of attribute ``name`` in expat's ordered attribute list ("" if absent)."""
    for at in range(0, len(attrs) - 1, 2):
        if attrs[at] == name:
            return attrs[at + 1]
    return ""


def _summary(export: HealthExport) -> str:
    text = (
        f"{len(export.heart_rate):,} heart-rate samples, {len(export.steps):,} step records, "
        f"{len(export.sleep):,} sleep records"
    )
    times = [export.heart_rate["time"], export.steps["end"], export.sleep["end"]]
    last = max((t.max() for t in times if len(t)), default=None)
    return f"{text} (up to {last:%Y-%m-%d %H:%M} UTC)" if last is not None else text


class _CutError(Exception):
    """The bytes of ``export.xml`` end before the file does (a cut zip member or DOCTYPE)."""


class _HeadFilter:
    """Blanks the DOCTYPE block at the head of the stream (same length, newlines kept)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.head = b""
        self.done = False

    def filter(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        self.head += chunk
        start = self.head.find(b"<!DOCTYPE")
        root = self.head.find(b"<HealthData")
        if start < 0 and (root >= 0 or len(self.head) > DOCTYPE_SEARCH_LIMIT):
            return self._release(self.head)  # no DOCTYPE: nothing to blank
        if start < 0:
            return b""
        found = _DOCTYPE.search(self.head, start)
        if found is None:
            if len(self.head) > DOCTYPE_SEARCH_LIMIT:
                return self._release(self.head)  # let expat say what is wrong
            return b""
        block = _NOT_NEWLINE.sub(b" ", found.group())
        return self._release(self.head[: found.start()] + block + self.head[found.end() :])

    def _release(self, data: bytes) -> bytes:
        self.done, self.head = True, b""
        return data

    def finish(self) -> bytes:
        """Whatever is still held at the end of the stream."""
        if self.done or not self.head:
            return b""
        if b"<!DOCTYPE" in self.head and b"]>" not in self.head:
            raise _CutError("the file ends inside its DOCTYPE block, before any record")
        return self._release(self.head)


# -- the bytes of export.xml -------------------------------------------------------------------


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def _export_member(archive: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    """The zip member that is the export: ``apple_health_export/export.xml`` or the one
    ``export.xml`` (never ``export_cda.xml``)."""
    names = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == "export.xml"]
    if not names:
        listed = ", ".join(i.filename for i in archive.infolist()[:5])
        raise DataFormatError(
            f"{path}: a zip without export.xml (holds {listed}...): expected the Health app's "
            f"export.zip with {EXPORT_MEMBER}"
        )
    return min(names, key=lambda i: (i.filename != EXPORT_MEMBER, i.filename))


def _zip_member_chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    with archive, archive.open(info) as member:
        while True:
            try:
                chunk = member.read(CHUNK_BYTES)
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                raise _CutError(f"the zip member is damaged or cut ({error})") from None
            if not chunk:
                return
            yield chunk


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def _cut_zip_chunks(path: Path, reader: _ExportReader) -> Iterator[bytes]:
    """The export member of a zip without its central directory, from the local headers.

    Members before it are inflated and thrown away to find where each ends (their sizes may
    only be written after their data). The member's bytes are yielded until the file ends;
    :class:`_CutError` if its compressed data stops before its end.
    """
    with path.open("rb") as handle:
        while True:
            header = handle.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise _CutError(
                    f"the zip has no central directory and ends before its {EXPORT_MEMBER}"
                )
            fields = _LOCAL_HEADER.unpack(header)
            flags, method, size = fields[2], fields[3], fields[7]
            name = handle.read(fields[9]).decode("utf-8", errors="replace")
            handle.seek(fields[10], 1)
            is_export = name.rsplit("/", 1)[-1] == "export.xml"
            if method not in (0, 8) or (method == 0 and flags & 0x08):
                raise DataFormatError(
                    f"{path}: a cut zip whose entry {name!r} cannot be walked (method {method})"
                )
            if is_export:
                reader.member = name
                yield from _inflate(handle, method, size, name)
                return
            if method == 0:
                handle.seek(size, 1)
            else:
                for _ in _inflate(handle, method, size, name):
                    pass
            _skip_descriptor(handle)


def _inflate(handle: IO[bytes], method: int, size: int, name: str) -> Iterator[bytes]:
    """The data of the zip entry at the handle's position (0: stored, 8: deflated)."""
    if method == 0:
        left = size
        while left > 0 and (chunk := handle.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            yield chunk
        if left > 0:
            raise _CutError(f"the zip ends inside its entry {name}")
        return
    inflater = zlib.decompressobj(-15)
    while not inflater.eof:
        chunk = handle.read(CHUNK_BYTES)
        if not chunk:
            raise _CutError(f"the zip ends inside its entry {name}")
        try:
            yield inflater.decompress(chunk)
        except zlib.error as error:
            raise _CutError(f"the zip's compressed data is damaged ({error})") from None
    handle.seek(-len(inflater.unused_data), 1)


def _skip_descriptor(handle: IO[bytes]) -> None:
    """Move to the next local header, past a data descriptor if there is one."""
    ahead = handle.read(32)
    at = ahead.find(b"PK\x03\x04")
    handle.seek(-len(ahead) + (at if at >= 0 else len(ahead)), 1)


# -- dates and values --------------------------------------------------------------------------

_DATE_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 21, 22, 23, 24]
_DATE_MARKS = {4: "-", 7: "-", 10: " ", 13: ":", 16: ":", 19: " "}
_DATE_WIDTH = 25
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _parse_dates(
    texts: list[str | None],
) -> tuple[NDArray[np.int64], NDArray[np.int16], NDArray[np.bool_]]:
    """Health dates (``"2024-03-10 01:59:00 -0800"``) as UTC nanoseconds, the offset in
    minutes, and whether each was readable.

    The export's one format is read arithmetically on the characters (a million dates in
    about 0.1 s); anything else is tried with :func:`datetime.fromisoformat` one by one.

    >>> ns, offset, ok = _parse_dates(["2024-03-10 01:59:00 -0800", "2024-03-10 03:00:00 -0700",
    ...                                "2024-02-30 00:00:00 +0000"])
    >>> int(ns[1] - ns[0]) // 10**9, offset.tolist(), ok.tolist()
    (60, [-480, -420, 0], [True, True, False])
    """
    n = len(texts)
    text = np.array(
        [t or "" for t in texts] if None in texts else texts, dtype=f"U{_DATE_WIDTH + 1}"
    )
    chars = text.view(np.uint32).reshape(n, _DATE_WIDTH + 1).astype(np.int64)
    digits = chars[:, _DATE_DIGITS] - ord("0")
    ok = (chars[:, _DATE_WIDTH] == 0) & ((digits >= 0) & (digits <= 9)).all(axis=1)
    for at, mark in _DATE_MARKS.items():
        ok &= chars[:, at] == ord(mark)
    sign = np.where(chars[:, 20] == ord("-"), -1, 1)
    ok &= (chars[:, 20] == ord("+")) | (chars[:, 20] == ord("-"))
    d = digits
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day = d[:, 4] * 10 + d[:, 5], d[:, 6] * 10 + d[:, 7]
    hour, minute, second = (
        d[:, 8] * 10 + d[:, 9],
        d[:, 10] * 10 + d[:, 11],
        d[:, 12] * 10 + d[:, 13],
    )
    offset = sign * ((d[:, 14] * 10 + d[:, 15]) * 60 + d[:, 16] * 10 + d[:, 17])
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour < 24) & (minute < 60) & (second < 60) & (d[:, 16] * 10 + d[:, 17] < 60)
    seconds = (
        _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    ) - offset * 60
    for row in np.flatnonzero(~ok):
        other = _other_date(texts[row])
        if other is not None:
            seconds[row], offset[row] = other
            ok[row] = True
    return seconds * 10**9, offset.astype(np.int16), ok


def _days_from_civil(
    year: NDArray[np.int64], month: NDArray[np.int64], day: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _other_date(text: str | None) -> tuple[int, int] | None:
    """Unix seconds and UTC offset (min) of a date in another ISO-8601 form, if it has one."""
    if not text:
        return None
    for parse in (lambda t: datetime.strptime(t, "%Y-%m-%d %H:%M:%S %z"), datetime.fromisoformat):
        try:
            when = parse(text.strip())
        except ValueError:
            continue
        shift = when.utcoffset()
        if shift is not None:
            return int(when.timestamp()), int(shift.total_seconds() // 60)
    return None


def _numbers(values: list[str | None]) -> NDArray[np.float64]:
    """Record values as floats, NaN where a value is missing or not a number."""
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        as_text = pd.Series(values, dtype=object)
        return np.asarray(pd.to_numeric(as_text, errors="coerce"), dtype=np.float64)


# -- sources, ranking, duplicates --------------------------------------------------------------


@dataclass(frozen=True)
class _Records:
    """The records of one kind as arrays, with one row per (sourceName, device, unit) key."""

    kind: str
    arrays: dict[str, NDArray[Any]]
    names: list[str]  # sourceName by source id
    devices: list[str]  # raw device attribute by source id

    @classmethod
    def from_batch(cls, batch: _Batch) -> _Records:
        keys = sorted(batch.source_ids.items(), key=lambda item: item[1])
        return cls(
            batch.kind,
            batch.arrays(),
            [key[0] for key, _ in keys],
            [key[1] for key, _ in keys],
        )

    def counts(self) -> dict[str, int]:
        """Readable records per sourceName."""
        per_id = np.bincount(self.arrays["sid"], minlength=len(self.names))
        counts: dict[str, int] = {}
        for name, n in zip(self.names, per_id, strict=True):
            counts[name] = counts.get(name, 0) + int(n)
        return counts

    def devices_of(self, name: str) -> list[str]:
        return [d for n, d in zip(self.names, self.devices, strict=True) if n == name]

    def source_names(self) -> NDArray[np.object_]:
        """The sourceName of every record."""
        return (
            np.array(self.names, dtype=object)[self.arrays["sid"]]
            if self.names
            else np.array([], dtype=object)
        )

    def sources_frame(self, ranking: Sequence[str], used: set[str]) -> pd.DataFrame:
        counts = self.counts()
        order = [s for s in ranking if s in counts] + sorted(s for s in counts if s not in ranking)
        rows = [
            {
                "kind": self.kind,
                "source": name,
                "device": "; ".join(
                    sorted({_device_summary(d) for d in self.devices_of(name)} - {""})
                ),
                "records": counts[name],
                "used": name in used,
            }
            for name in order
            if counts[name]
        ]
        frame = pd.DataFrame(rows, columns=["kind", "source", "device", "records", "used"])
        return frame.astype({"records": np.int64, "used": bool})


def _device_summary(device: str) -> str:
    """``"Apple Watch (Watch6,1)"`` from ``<<HKDevice: 0x...>, name:Apple Watch, ...>``."""
    body = device.removeprefix("<").strip("<>")
    fields = dict(part.split(":", 1) for part in re.split(r", (?=\w+:)", body) if ":" in part)
    name = fields.get("name", "").strip()
    hardware = fields.get("hardware", "").strip()
    return f"{name} ({hardware})" if name and hardware else name or hardware


def _is_device(records: _Records, name: str, word: str) -> bool:
    """Whether the source's records name a device with ``word`` in it (or, for records
    without a device, whether the source's own name has it)."""
    devices = records.devices_of(name)
    return any(word in d for d in devices) or (not any(devices) and word in name)


def _ranking(records: _Records, prefer: Sequence[str]) -> list[str]:
    """Source names, best first: by the first of ``prefer`` their device matches, then by
    record count (more first), then by which comes first in the file."""
    counts = records.counts()

    def key(name: str) -> tuple[int, int, int]:
        tier = next((i for i, w in enumerate(prefer) if _is_device(records, name, w)), len(prefer))
        return tier, -counts[name], records.names.index(name)

    return sorted((n for n, c in counts.items() if c), key=key)


def _heart_rate_ranking(
    records: _Records, chosen: Sequence[str] | None, strict: bool, reader: _ExportReader
) -> list[str]:
    ranked = _ranking(records, prefer=("Watch",))
    if chosen is not None:
        missing = [s for s in chosen if s not in ranked]
        if missing and strict:
            raise ValueError(
                f"{reader._where()}: no heart-rate records from {', '.join(map(repr, missing))}; "
                f"the sources with heart rate are {ranked}"
            )
        return [s for s in chosen if s in ranked]
    watches = [s for s in ranked if _is_device(records, s, "Watch")]
    if ranked and not watches and strict:
        log.warning(
            "%s: no heart rate from an Apple Watch; using every source (%s)",
            reader._where(),
            ranked,
        )
    return watches or ranked


def _rank_of(names: NDArray[np.object_], ranking: Sequence[str]) -> NDArray[np.int64]:
    """Position of each record's source in ``ranking``; -1 for sources not in it."""
    lookup = {name: i for i, name in enumerate(ranking)}
    return np.array([lookup.get(n, -1) for n in names], dtype=np.int64)


def _keep_uncovered(
    start: NDArray[np.int64], end: NDArray[np.int64], rank: NDArray[np.int64], pad: int
) -> NDArray[np.bool_]:
    """Keep the records of the best rank, then those of each next rank that overlap none of the
    records kept before (each widened by ``pad`` on both sides; touching is no overlap)."""
    keep = np.zeros(len(start), dtype=bool)
    covered_start = covered_end = np.zeros(0, dtype=np.int64)
    for r in np.unique(rank[rank >= 0]):
        mine = np.flatnonzero(rank == r)
        if len(covered_start):
            last = np.searchsorted(covered_start, end[mine], side="left") - 1
            hit = (last >= 0) & (covered_end[np.maximum(last, 0)] > start[mine])
            mine = mine[~hit]
        keep[mine] = True
        covered_start, covered_end = _union(
            np.concatenate([covered_start, start[mine] - pad]),
            np.concatenate([covered_end, end[mine] + pad]),
        )
    return keep


def _union(
    start: NDArray[np.int64], end: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The union of intervals as sorted, disjoint intervals."""
    if not len(start):
        return start, end
    order = np.argsort(start, kind="stable")
    start, reach = start[order], np.maximum.accumulate(end[order])
    opens = np.concatenate([[True], start[1:] > reach[:-1]])
    closes = np.concatenate([opens[1:], [True]])
    return start[opens], reach[closes]


def _repeats(*columns: NDArray[Any]) -> NDArray[np.bool_]:
    """Rows equal to the row before in every column (sorted rows: the repeats)."""
    same = np.zeros(len(columns[0]), dtype=bool)
    if len(same) > 1:
        same[1:] = np.logical_and.reduce([np.diff(c) == 0 for c in columns])
    return same


def _utc(ns: NDArray[np.int64]) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(ns.astype("datetime64[ns]")).tz_localize("UTC")


def _heart_rate_frame(records: _Records, ranking: Sequence[str]) -> tuple[pd.DataFrame, set[str]]:
    a = records.arrays
    names = records.source_names()
    rank = _rank_of(names, ranking)
    time = a["start"] + (a["end"] - a["start"]) // 2
    order = np.lexsort((time, rank))  # by rank, then time
    order = order[rank[order] >= 0]
    time, rank, bpm, offset, names = (
        time[order],
        rank[order],
        a["value"][order],
        a["offset"][order],
        names[order],
    )
    keep = ~_repeats(time, rank)
    keep[keep] = _keep_uncovered(
        time[keep], time[keep], rank[keep], int(HEART_RATE_DUPLICATE_SECONDS * 1e9)
    )
    by_time = np.argsort(time[keep], kind="stable")
    frame = pd.DataFrame(
        {
            "time": _utc(time[keep][by_time]),
            "bpm": bpm[keep][by_time],
            "source": names[keep][by_time],
            "utc_offset_min": offset[keep][by_time],
        }
    )
    return frame, set(frame["source"].unique())


def _steps_frame(records: _Records, ranking: Sequence[str]) -> tuple[pd.DataFrame, set[str]]:
    a = records.arrays
    names = records.source_names()
    rank = _rank_of(names, ranking)
    order = np.lexsort((a["value"], a["end"], a["start"], rank))
    start, end, steps = a["start"][order], a["end"][order], a["value"][order]
    rank, offset, names = rank[order], a["offset"][order], names[order]
    keep = ~_repeats(start, end, steps, rank)
    keep[keep] = _keep_uncovered(start[keep], end[keep], rank[keep], 0)
    by_start = np.lexsort((end[keep], start[keep]))
    frame = pd.DataFrame(
        {
            "start": _utc(start[keep][by_start]),
            "end": _utc(end[keep][by_start]),
            "steps": steps[keep][by_start],
            "source": names[keep][by_start],
            "utc_offset_min": offset[keep][by_start],
        }
    )
    return frame, set(frame["source"].unique())


def _sleep_frame(records: _Records) -> pd.DataFrame:
    a = records.arrays
    frame = pd.DataFrame(
        {
            "start": _utc(a["start"]),
            "end": _utc(a["end"]),
            "stage": np.array(SLEEP_STAGES, dtype=object)[a["value"].astype(np.int64)],
            "source": records.source_names(),
            "utc_offset_min": a["offset"],
        }
    )
    frame = frame.drop_duplicates(["start", "end", "stage", "source"])
    return frame.sort_values(["start", "end", "source"], kind="stable").reset_index(drop=True)
