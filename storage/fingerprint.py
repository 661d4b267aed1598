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
    content but different chunk layouts hash the same.
    """
    h = hashlib.sha256()
    schema = table.schema.remove_metadata()
    h.update(str(schema).encode())
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = _HashSink(h)
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in table.to_batches(max_chunksize=65536):
            writer.write_batch(batch)
    return h.hexdigest()


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
