"""Fingerprints that are stable across processes, machines and Python versions.

Two kinds, both SHA-256 hex digests:

* **content** fingerprints hash bytes (input files) or the Arrow content of a table;
* **derived** fingerprints hash a stage name, its code version, its canonical parameters and the
  fingerprints of its parents, so an output's identity is known *before* it is computed. That is
  what lets the store and Prefect's cache answer "have we made this already?" without reading data.

Python's ``hash()`` is salted per process and never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """Serialise ``value`` the same way every time: sorted keys, no spaces, floats via repr.

    Dataclasses, paths, tuples and sets are converted first, so parameter objects hash by value.
    NaN and infinities are rejected because JSON has no single spelling for them.
    """
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cannot fingerprint non-finite float {value!r}")
    return value


def derive_fingerprint(stage: str, code_version: str, params: Any, parents: Mapping[str, str]) -> str:
    """Identity of a stage output: stage + code version + parameters + named parent fingerprints."""
    payload = canonical_json(
        {"stage": stage, "code": code_version, "params": params, "parents": dict(parents)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def file_fingerprint(paths: Iterable[Path], root: Path | None = None) -> str:
    """Hash the bytes of files (sorted by path relative to ``root``), e.g. a user's input."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        rel = str(path.relative_to(root)) if root else path.name
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def table_fingerprint(table: pa.Table) -> str:
    """Hash an Arrow table's schema (without metadata) and values, independent of chunking.

    Values are streamed as Arrow IPC record batches of a fixed size, so two tables with equal
    content but different chunk layouts hash the same; :class:`TableHasher` gives the same digest
    for the table fed piece by piece.
    """
    hasher = TableHasher(table.schema)
    hasher.update(table)
    return hasher.hexdigest()


class TableHasher:
    """:func:`table_fingerprint` of a table that arrives in pieces (a streamed store output).

    Pieces are re-cut into the fixed-size record batches the digest is defined over, so the
    result does not depend on how the rows were split.
    """

    BATCH_ROWS = 65536

    def __init__(self, schema: pa.Schema) -> None:
        self._h = hashlib.sha256()
        self._schema = schema.remove_metadata()
        self._h.update(str(self._schema).encode())
        self._writer = pa.ipc.new_stream(_HashSink(self._h), self._schema)
        self._pending: list[pa.Table] = []
        self._rows = 0

    def update(self, piece: pa.Table | pa.RecordBatch) -> None:
        """Add the next rows (in the hasher's schema, metadata aside)."""
        if isinstance(piece, pa.RecordBatch):
            piece = pa.Table.from_batches([piece])
        self._pending.append(piece.replace_schema_metadata(None))
        self._rows += piece.num_rows
        if self._rows >= self.BATCH_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self._pending) if self._pending else self._schema.empty_table()
        full = table.num_rows if final else table.num_rows - table.num_rows % self.BATCH_ROWS
        for start in range(0, full, self.BATCH_ROWS):
            self._writer.write_batch(_tight(table.slice(start, min(self.BATCH_ROWS, full - start))))
        rest = table.slice(full)
        self._pending, self._rows = ([rest] if rest.num_rows else []), rest.num_rows

    def hexdigest(self) -> str:
        """The digest of every row added so far (call once, at the end)."""
        self._flush(final=True)
        self._writer.close()
        return self._h.hexdigest()


def _tight(rows: pa.Table) -> pa.RecordBatch:
    """``rows`` as one record batch in buffers of its own, exactly as long as its values.

    The IPC writer spells an array by its buffers, not only its values: a slice (at any offset,
    zero included) of a larger array gives other bytes than the same values built fresh, so without
    this copy the digest would depend on where a table was cut or how it was read (a Parquet row
    group, a store shard and a streamed piece are all slices).
    """
    columns = [pa.concat_arrays([*column.chunks, pa.array([], column.type)]) for column in rows.columns]
    return pa.RecordBatch.from_arrays(columns, schema=rows.schema)


class _HashSink:
    """A write-only file object that feeds bytes to a hash instead of memory."""

    def __init__(self, h: "hashlib._Hash") -> None:
        self._h = h
        self.closed = False

    def write(self, data: bytes) -> int:
        self._h.update(data)
        return len(data)

    def flush(self) -> None:  # pragma: no cover - required by the file protocol
        pass

    def close(self) -> None:
        self.closed = True


def short(fp: str) -> str:
    """The 12-character prefix shown to people (still unique in any realistic store)."""
    return fp[:12]
