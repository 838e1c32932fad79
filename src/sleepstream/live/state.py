"""A detector's state as portable data: named arrays and a versioned JSON header, never a pickle.

The bytes are an ``.npz`` archive (a zip of ``.npy`` arrays) with one extra entry, ``header``,
holding a JSON document: the format name and version, the model's identity and the detector's
settings, and the scalar parts of its state. They are read with ``allow_pickle=False``, so a
crafted snapshot can at worst be refused, never run code. Any language with a zip and ``.npy``
reader can inspect them.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

FORMAT = "sleepstream-detector-state"
VERSION = 2
MAX_BYTES = 64 * 2**20
"""Snapshots larger than this are refused before they are read (a day of state is ~1 MB)."""


def pack(header: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> bytes:
    """The bytes of a snapshot: ``arrays`` plus ``header`` (with the format and version)."""
    document = {"format": FORMAT, "version": VERSION, **header}
    buffer = io.BytesIO()
    entries: dict[str, Any] = {"header": np.array(json.dumps(document, allow_nan=False))}
    entries.update(arrays)
    np.savez(buffer, **entries)
    return buffer.getvalue()


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """Header and arrays of a snapshot; ``ValueError`` saying what is wrong with anything else."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ValueError(f"snapshot must be bytes, got {type(blob).__name__}")
    if len(blob) > MAX_BYTES:
        raise ValueError(f"snapshot of {len(blob)} bytes is larger than {MAX_BYTES}")
    try:
        with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"not a sleepstream detector snapshot ({error})") from None
    if "header" not in arrays:
        raise ValueError("not a sleepstream detector snapshot (no header)")
    try:
        header = json.loads(str(arrays.pop("header")))
    except json.JSONDecodeError as error:
        raise ValueError(f"snapshot header is not JSON ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"not a sleepstream detector snapshot (format {header!r:.80})")
    if header.get("version") != VERSION:
        raise ValueError(
            f"snapshot version {header.get('version')!r} is not supported (this is {VERSION})"
        )
    return header, arrays
