"""A content-addressed store of datasets and models. It alone decides paths on disk.

Layout under the store root::

    objects/<fingerprint>/manifest.json      what, from what, by which code, with which parameters
    objects/<fingerprint>/tables/<name>.parquet        a table, or its first shard;
    objects/<fingerprint>/tables/<name>.NNNNN.parquet  its further shards (bounded size, own sha256)
    objects/<fingerprint>/removed.parquet    the per-row removal ledger of the stage that made it
    objects/<fingerprint>/files/...          non-tabular outputs (a trained model and tokenizer)
    runs/<run id>.json, runs/latest.json     which entry each stage of a pipeline run produced
    locks/<fingerprint>.lock                 held (flock) while that entry is being computed
    journal.jsonl                            one line per entry computed, reused or waited for
    settings.json                            optional: shard_rows / shard_bytes for new tables
    tmp/                                     staging; never read
    checkpoints/<fingerprint>/               resumable training state of an entry being computed

An entry is written completely under ``tmp/`` and then renamed into ``objects/`` in one
``rename(2)``, so a reader sees either no entry or a whole one; a crash leaves only a stray staging
folder, named after its owner process, which :meth:`DatasetStore.clean_staging` removes once that
process is gone. Entries are immutable: the same fingerprint always means the same content. Writers
of one fingerprint serialise on its lock (:meth:`DatasetStore.lock`, an ``flock`` the kernel drops
when the holder dies), so concurrent runs compute an entry once and a killed run blocks nobody.
:meth:`DatasetStore.verify` re-hashes entries against their manifests to find silent corruption.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import errno
import json
from concurrent.futures import ThreadPoolExecutor
import os
import shutil
import time
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import heads
from storage.fingerprint import TableHasher, canonical_json, short, table_fingerprint
from storage.locks import EntryLock, entry_lock, owner_alive, owner_tag, remove_free_locks
from tasks.common import LEDGER_SCHEMA, Shard, TableStream
from tasks.encoding import PLAIN_KEY
from winnow import __version__
from winnow.errors import WinnowError

MANIFEST = "manifest.json"
LEDGER_FILE = "removed.parquet"
JOURNAL = "journal.jsonl"
SETTINGS = "settings.json"  # store-wide choices that change files, never content (shard sizes)
#: A staging folder whose owner cannot be checked (written on another host) is abandoned once it
#: is this old; one whose owner ran here is abandoned as soon as that process is gone.
STALE_STAGING_S = 3600.0
#: A table is written as Parquet shards of at most this many rows, and about this many bytes in
#: memory, each with row groups of ROW_GROUP_ROWS: a reader streams it a row group at a time, and a
#: map task works one shard. Changing them changes files, never content hashes or fingerprints.
SHARD_ROWS = 1 << 20
SHARD_BYTES = 256 << 20
ROW_GROUP_ROWS = 1 << 16


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """``compression`` and ``use_dictionary`` for a Parquet writer of ``schema``: zstd with
    dictionary pages, except for the columns a stage marked with :func:`tasks.encoding.plain_field`
    (hash values: measured on a 67 MB dedup index shard, 0.56 s and 63 MB encoded, 0.36 s and
    62 MB plain)."""
    plain = {f.name for f in schema if f.metadata and f.metadata.get(PLAIN_KEY)}
    if not plain:
        return {"compression": "zstd"}
    return {"compression": {f.name: "none" if f.name in plain else "zstd" for f in schema},
            "use_dictionary": [f.name for f in schema if f.name not in plain]}


@dataclass
class Manifest:
    """Everything known about one store entry, saved as ``manifest.json`` beside its data."""

    fingerprint: str
    stage: str
    kind: str  # "dataset" or "model"
    params: dict[str, Any]
    code_version: str
    parents: dict[str, str]
    tables: dict[str, dict[str, Any]]  # name -> {rows, bytes, schema}
    files: list[str]
    removed: dict[str, dict[str, int]]  # action -> reason -> rows
    metrics: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)  # external files read (ingest)
    # Earlier entries read as a cache only (run() argument -> fingerprint). Not parents: the
    # fingerprint does not depend on them, but they show where reused values came from.
    hints: dict[str, str] = field(default_factory=dict)
    # sha256 of each file under files/ (relative path -> hex), for `winnow store verify`.
    file_digests: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    elapsed_s: float = 0.0
    winnow_version: str = __version__

    def rows(self, table: str = "data") -> int | None:
        """Row count of one of the entry's tables, or None if it has no such table."""
        info = self.tables.get(table)
        return None if info is None else int(info["rows"])

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class ShardedTable:
    """A stored table not read yet: its shards, in row order. What a stage that declares an input
    as streamed (``StageSpec.streams``) receives instead of a ``pa.Table``, so it can read one
    shard (or one row group) at a time and never hold the whole table."""

    paths: tuple[Path, ...]
    shard_rows: tuple[int, ...]
    # The same rows already in this process's memory (a table it just wrote), or None.
    in_memory: pa.Table | None = field(default=None, compare=False, repr=False)
    # Each shard's manifest record (rows, bytes, sha256, content), where the manifest has them:
    # what lets a stage hand an untouched shard on as it is (:class:`~tasks.common.Shard`).
    records: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def num_rows(self) -> int:
        return sum(self.shard_rows)

    @property
    def num_shards(self) -> int:
        return len(self.paths)

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.paths[0])

    def starts(self) -> np.ndarray:
        """First row of each shard, plus the row count at the end (int64[num_shards + 1])."""
        return np.concatenate([[0], np.cumsum(self.shard_rows, dtype=np.int64)])

    def shard(self, k: int, columns: list[str] | None = None) -> pa.Table:
        """Shard ``k`` (optionally only some columns)."""
        with pq.ParquetFile(self.paths[k]) as f:
            return f.read(columns=columns)

    def batches(self, k: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Shard ``k`` one row group at a time."""
        with pq.ParquetFile(self.paths[k]) as f:
            for g in range(f.num_row_groups):
                yield f.read_row_group(g, columns=columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole table (for a stage that truly needs it)."""
        if self.in_memory is not None:
            return self.in_memory if columns is None else self.in_memory.select(columns)
        parts = [self.shard(k, columns) for k in range(self.num_shards)]
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False for a name the file system cannot hold.

    What a person types (a ref, a row id) reaches these checks; a string longer than a file name
    may be must read as "no such entry", not crash with ENAMETOOLONG.
    """
    try:
        return path.is_file()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


class DatasetStore:
    """The on-disk store; see the module docstring for its layout and guarantees."""

    def __init__(self, root: str | os.PathLike[str], shard_rows: int | None = None,
                 shard_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self._shard_rows, self._shard_bytes = shard_rows, shard_bytes
        self.objects = self.root / "objects"
        self.runs = self.root / "runs"
        self.staging = self.root / "tmp"
        self.locks = self.root / "locks"

    @property
    def shard_rows(self) -> int:
        """Rows per table shard: the constructor's, else the store's ``settings.json``, else :data:`SHARD_ROWS`."""
        return self._shard_rows or int(self._settings().get("shard_rows", SHARD_ROWS))

    @property
    def shard_bytes(self) -> int:
        return self._shard_bytes or int(self._settings().get("shard_bytes", SHARD_BYTES))

    def _settings(self) -> dict[str, Any]:
        path = self.root / SETTINGS
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def configure(self, shard_rows: int | None = None, shard_bytes: int | None = None) -> None:
        """Record this store's shard size, so every process writing to it (a Dask worker too) shards alike."""
        settings = self._settings()
        for key, value in (("shard_rows", shard_rows), ("shard_bytes", shard_bytes)):
            if value is not None:
                if value < 1:
                    raise WinnowError(f"store {self.root}: {key} must be >= 1, got {value}")
                settings[key] = int(value)
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(self.root / SETTINGS, settings)

    # -- reading -------------------------------------------------------------------------------

    def exists(self, fingerprint: str) -> bool:
        """True if a complete entry with this exact fingerprint is in the store."""
        return _is_file(self.objects / fingerprint / MANIFEST)

    def path(self, fingerprint: str) -> Path:
        """The folder of an existing entry."""
        if not self.exists(fingerprint):
            raise WinnowError(f"store {self.root}: no entry {short(fingerprint)}")
        return self.objects / fingerprint

    def manifest(self, fingerprint: str) -> Manifest:
        """The manifest of an existing entry."""
        return Manifest.load(self.path(fingerprint) / MANIFEST)

    def table(self, fingerprint: str, name: str = "data") -> pa.Table:
        """Read one named table of an entry whole (all its shards, in order).

        For a stage that truly needs the whole table; one that can work a piece at a time reads
        :meth:`batches` or :meth:`dataset` instead and never holds it all.
        """
        recent = _RECENT.get((str(self.root), fingerprint, name))
        if recent is not None and self.exists(fingerprint):
            return recent
        paths = self.shard_paths(fingerprint, name)
        if len(paths) == 1:
            return read_parquet(paths[0])
        return pa.concat_tables([read_parquet(p) for p in paths])

    def shard_paths(self, fingerprint: str, name: str = "data") -> list[Path]:
        """The Parquet shards of one table, in row order."""
        folder = self.path(fingerprint) / "tables"
        info = self.manifest(fingerprint).tables.get(name)
        if info is None or not (folder / shard_file(name, 0)).is_file():
            have = ", ".join(self.manifest(fingerprint).tables) or "none"
            raise WinnowError(f"store entry {short(fingerprint)} has no table '{name}' (has: {have})")
        return [folder / s["file"] for s in info.get("shards", [{"file": shard_file(name, 0)}])]

    def read_shard(self, fingerprint: str, name: str, k: int) -> pa.Table:
        """Shard ``k`` of a table (a map task's input)."""
        return read_parquet(self.shard_paths(fingerprint, name)[k])

    def sharded(self, fingerprint: str, name: str = "data") -> ShardedTable:
        """A table as a :class:`ShardedTable` handle (nothing is read yet)."""
        info = self.manifest(fingerprint).tables.get(name, {})
        paths = self.shard_paths(fingerprint, name)
        records = tuple(dict(s) for s in info.get("shards", []) if "content" in s and "sha256" in s)
        rows = [s["rows"] for s in info.get("shards", [])] or [pq.read_metadata(paths[0]).num_rows]
        return ShardedTable(tuple(paths), tuple(int(r) for r in rows), _RECENT.get((str(self.root), fingerprint, name)),
                            records if len(records) == len(paths) else ())

    def batches(self, fingerprint: str, name: str = "data", columns: list[str] | None = None
                ) -> Iterator[pa.RecordBatch]:
        """Stream a table's rows shard by shard, one row group at a time (bounded memory)."""
        for path in self.shard_paths(fingerprint, name):
            with pq.ParquetFile(path) as f:
                for k in range(f.num_row_groups):
                    yield from f.read_row_group(k, columns=columns).to_batches()

    def dataset(self, fingerprint: str, name: str = "data") -> Any:
        """The table as a ``pyarrow.dataset.Dataset`` over its shards (scans, filters, projections)."""
        import pyarrow.dataset as pads

        return pads.dataset([str(p) for p in self.shard_paths(fingerprint, name)], format="parquet")

    def table_path(self, fingerprint: str, name: str = "data") -> Path:
        """Path of a one-shard table's Parquet file (for tools that read one file, e.g. `datasets`)."""
        paths = self.shard_paths(fingerprint, name) if self.exists(fingerprint) else [
            self.objects / fingerprint / "tables" / shard_file(name, 0)]
        if len(paths) > 1:
            raise WinnowError(f"store entry {short(fingerprint)}: table '{name}' has {len(paths)} shards; "
                              "read them with shard_paths() or dataset()")
        return paths[0]

    def files_dir(self, fingerprint: str) -> Path:
        """Folder of an entry's non-tabular files (e.g. a model's weights and tokenizer)."""
        return self.path(fingerprint) / "files"

    def removed(self, fingerprint: str) -> pa.Table:
        """The removal ledger written by the stage that made this entry (may be empty)."""
        path = self.path(fingerprint) / LEDGER_FILE
        return read_parquet(path) if path.is_file() else LEDGER_SCHEMA.empty_table()

    def entries(self) -> list[Manifest]:
        """All complete entries, oldest first."""
        if not self.objects.is_dir():
            return []
        found = [Manifest.load(p / MANIFEST) for p in self.objects.iterdir() if (p / MANIFEST).is_file()]
        return sorted(found, key=lambda m: (m.created_at, m.fingerprint))

    def resolve(self, ref: str) -> str:
        """Turn what a person types into a full fingerprint.

        Accepted: a full fingerprint or a unique prefix of at least 4 characters; a stage name
        (``dedup``: its newest entry reachable from the pipeline head, else the latest run's) or
        ``RUN:STAGE`` meaning that stage's output in the named run (``latest``, ``head``); or
        the path of an entry folder.
        """
        ref = ref.strip()
        candidate = Path(ref)
        if _is_file(candidate / MANIFEST):
            return Manifest.load(candidate / MANIFEST).fingerprint
        run_id, _, stage = ref.rpartition(":")
        if not run_id and self.objects.is_dir() and (found := heads.resolve_stage(self, stage)):
            return found  # a bare stage name answers from the whole pipeline (storage/heads.py)
        if self.runs.is_dir() and (stage in self._run_outputs(run_id or "latest", missing_ok=True)):
            return self._run_outputs(run_id or "latest")[stage]
        if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref) and self.objects.is_dir():
            matches = [p.name for p in self.objects.iterdir() if p.name.startswith(ref) and (p / MANIFEST).is_file()]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise WinnowError(f"'{ref}' matches {len(matches)} store entries; give more characters")
        raise WinnowError(
            f"no store entry matches '{ref}' in {self.root} "
            "(give a fingerprint prefix, a stage name of the pipeline head, or RUN:STAGE)"
        )

    def lineage(self, fingerprint: str) -> list[Manifest]:
        """The entry and all its ancestors, ancestors first (a topological order)."""
        order: list[Manifest] = []
        seen: set[str] = set()

        def visit(fp: str) -> None:
            if fp in seen:
                return
            seen.add(fp)
            m = self.manifest(fp)
            for parent in m.parents.values():
                if self.exists(parent):
                    visit(parent)
            order.append(m)

        visit(fingerprint)
        return order

    def why(self, row_id: str, fingerprints: list[str] | None = None) -> pa.Table:
        """Every ledger row about ``row_id`` in the given entries (default: the whole store).

        The result has the ledger columns plus ``entry`` (the fingerprint of the stage output
        whose ledger holds the row), in pipeline order.
        """
        chosen = fingerprints if fingerprints is not None else [m.fingerprint for m in self.entries()]
        hits = []
        for fp in chosen:
            path = self.objects / fp / LEDGER_FILE
            if not path.is_file():
                continue
            found = pq.read_table(path, filters=pc.field("id") == row_id)
            if found.num_rows:
                hits.append(found.append_column("entry", pa.array([fp] * found.num_rows, pa.string())))
        if not hits:
            return LEDGER_SCHEMA.append(pa.field("entry", pa.string())).empty_table()
        return pa.concat_tables(hits)

    # -- writing -------------------------------------------------------------------------------

    def put(
        self,
        *,
        fingerprint: str,
        stage: str,
        params: Mapping[str, Any],
        code_version: str,
        parents: Mapping[str, str],
        tables: Mapping[str, pa.Table],
        removed: pa.Table | None = None,
        metrics: Mapping[str, Any] | None = None,
        files_from: Path | None = None,
        inputs: list[dict[str, Any]] | None = None,
        hints: Mapping[str, str] | None = None,
        elapsed_s: float = 0.0,
        replace: bool = False,
        segments: Mapping[str, list[int]] | None = None,
    ) -> Manifest:
        """Write one entry atomically and return its manifest.

        ``files_from``, if given, is a folder from :meth:`scratch_dir` holding non-tabular outputs
        (a model's files); it is moved into the entry, whose kind is then ``"model"``. If the entry already exists (another writer won the
        race) the existing manifest is returned and the new copy is discarded, unless ``replace``
        (a forced recompute), which swaps the new copy in with two renames. ``hints`` names
        earlier entries the stage read only as a cache (see ``StagePlan.hints``). ``segments``
        gives, per table, the row counts of consecutive parts no shard may straddle (a corpus
        ingested from daily files: one part per file, see :func:`segment_bounds`).
        """
        if self.exists(fingerprint) and not replace:
            return self.manifest(fingerprint)
        for name in tables:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"table name {name!r} must be alphanumeric")
        removed = removed if removed is not None else LEDGER_SCHEMA.empty_table()
        if not removed.schema.equals(LEDGER_SCHEMA):
            raise ValueError(f"removal ledger schema must be {LEDGER_SCHEMA}, got {removed.schema}")
        self.staging.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f"entry-{fingerprint[:16]}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            # A forced recompute (replace) writes every file anew: it may be repairing one.
            table_info = self._write_tables(tmp / "tables", tables, segments or {}, _ShardPool(self, stage, not replace))
            pq.write_table(removed, tmp / LEDGER_FILE, compression="zstd")
            files, digests = _adopt_files(tmp / "files", files_from)
            manifest = Manifest(
                fingerprint=fingerprint,
                stage=stage,
                kind="model" if files_from is not None else "dataset",
                params=json.loads(canonical_json(params)),
                code_version=code_version,
                parents=dict(parents),
                tables=table_info,
                files=files,
                removed=_summarise_ledger(removed),
                metrics=json.loads(canonical_json(metrics or {})),
                inputs=list(inputs or []),
                hints=dict(hints or {}),
                file_digests=digests,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                elapsed_s=round(elapsed_s, 3),
            )
            _write_json(tmp / MANIFEST, asdict(manifest))
            _fsync_tree(tmp)
            committed = self._commit(tmp, manifest, replace)
            _remember(self.root, fingerprint, tables)
            return committed
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_tables(self, folder: Path, tables: Mapping[str, pa.Table | TableStream],
                      segments: Mapping[str, list[int]], pool: "_ShardPool") -> dict[str, dict[str, Any]]:
        """Write each table as Parquet shards (see :func:`segment_bounds`; a stream is cut as it
        arrives); returns the manifest's ``tables``. Two tables are written at once, so the
        :class:`~tasks.common.TableStream` s of one result must not share state."""
        folder.mkdir()
        # Tables are written side by side: Parquet encoding and hashing release the GIL, and a
        # stage's two large outputs (dedup's kept rows and index) then take the time of the larger.
        with ThreadPoolExecutor(max_workers=max(1, min(2, len(tables)))) as workers:
            written = {name: workers.submit(self._write_table, folder, name, table, segments.get(name), pool)
                       for name, table in tables.items()}
        info = {}
        for name, future in written.items():
            content, schema, shards = future.result()
            info[name] = {
                # What a stage reading this table is fingerprinted by (flows/stagetask.py).
                "content": content,
                "rows": sum(s["rows"] for s in shards),
                "bytes": sum(s["bytes"] for s in shards),
                # Each file's own digest, for `store verify` (the content hash above is of the
                # table as computed, which a Parquet round trip may re-spell, e.g. list types).
                "sha256": shards[0]["sha256"],
                "shards": shards,
                "schema": {f.name: str(f.type) for f in schema},
            }
        return info

    def _write_table(self, folder: Path, name: str, table: pa.Table | TableStream,
                     segments: list[int] | None, pool: "_ShardPool") -> tuple[str, pa.Schema, list[dict[str, Any]]]:
        """One table's shards; returns (content hash, schema, shards)."""
        if isinstance(table, TableStream):
            return self._write_stream(folder, name, table, segments, pool)
        content, shards = table_fingerprint(table), []
        bounds = segment_bounds(table, segments, self.shard_rows, self.shard_bytes)
        # Only a table of several shards looks for earlier files: a one-shard table is small, and
        # the look reads every manifest of the store once.
        stored = _stored_schema(table.schema) if len(bounds) > 1 and pool.has(name) else None
        for k, (start, rows) in enumerate(bounds):
            path = folder / shard_file(name, k)
            piece = table.slice(start, rows)
            # A one-shard table's rows are the table's: its content hash, not a second pass.
            own = content if len(bounds) == 1 else table_fingerprint(piece)
            found = pool.find(name, own) if stored is not None and rows else None
            record = found and _link_shard(found[0], found[1], rows, stored, path)
            if record:  # rows an earlier entry of the stage holds as they are: no encoding
                shards.append(record)
                continue
            if rows:
                with pq.ParquetWriter(path, piece.schema, **parquet_options(piece.schema)) as writer:
                    _write_row_groups(writer, piece)
            else:
                pq.write_table(piece, path, **parquet_options(piece.schema))
            shards.append(_shard_info(path, rows, own))
        return content, table.schema, shards

    def _write_stream(self, folder: Path, name: str, stream: TableStream, segments: list[int] | None,
                      pool: "_ShardPool") -> tuple[str, pa.Schema, list[dict[str, Any]]]:
        """Write a :class:`TableStream` shard by shard as it arrives (cut like :func:`segment_bounds`:
        the same shards as the same rows written whole); returns (content hash, schema, shards)."""
        if segments and min(segments) < 1:
            raise ValueError(f"table {name!r}: segments {segments} are not all non-empty")
        out = _StreamWriter(folder, name, stream.schema, _ShardCutter(self.shard_rows, self.shard_bytes, segments), pool)
        for piece in stream.batches():
            if isinstance(piece, Shard):
                out.shard(piece)
            else:
                out.rows(_as_table(piece))
        return out.close(sum(segments) if segments else None)

    def _commit(self, tmp: Path, manifest: Manifest, replace: bool) -> Manifest:
        """Rename a complete staged entry into ``objects/`` (swapping out the old one if ``replace``)."""
        fingerprint = manifest.fingerprint
        final = self.objects / fingerprint
        if replace and final.exists():
            old = self.staging / f"replaced-{fingerprint[:16]}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            _fsync_dir(self.objects)
            return manifest
        try:
            os.rename(tmp, final)
        except OSError:
            if self.exists(fingerprint):  # a concurrent writer committed the same entry first
                shutil.rmtree(tmp, ignore_errors=True)
                return self.manifest(fingerprint)
            raise
        _fsync_dir(self.objects)
        return manifest

    def scratch_dir(self) -> Path:
        """A new empty folder inside the store for a stage to write files into before :meth:`put`."""
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / f"scratch-{owner_tag()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def lock(self, fingerprint: str, what: str, timeout: float | None = None) -> "contextlib.AbstractContextManager[EntryLock]":
        """Hold the write lock of one entry (see :mod:`storage.locks`); waits, saying so, if taken."""
        return entry_lock(self.locks, fingerprint, what, timeout=timeout)

    def journal(self, event: str, fingerprint: str, **info: Any) -> None:
        """Append one line to ``journal.jsonl``: what this process did with an entry, and when.

        Lines are short single ``write(2)`` calls on an ``O_APPEND`` file, so concurrent writers
        never interleave inside a line.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                           "event": event, "fingerprint": fingerprint, "pid": os.getpid(), **info})
        fd = os.open(self.root / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def journal_events(self) -> list[dict[str, Any]]:
        """Every journal line, oldest first (empty for a store that has none yet)."""
        path = self.root / JOURNAL
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def checkpoint_dir(self, fingerprint: str) -> Path:
        """Where a long stage keeps resumable checkpoints for the entry it is computing (not created).

        Keyed by the output fingerprint, so a rerun of the same computation after a crash finds
        them; outside ``tmp/`` so cleaning stale staging never deletes a resumable run. The stage's
        executor deletes the folder once the entry is committed.
        """
        return self.root / "checkpoints" / fingerprint

    def record_run(self, run_id: str, outputs: Mapping[str, str], info: Mapping[str, Any]) -> Path:
        """Save which entry each stage of a pipeline run produced; also becomes ``latest``."""
        self.runs.mkdir(parents=True, exist_ok=True)
        record = {"run_id": run_id, "outputs": dict(outputs), **info}
        path = self.runs / f"{run_id}.json"
        _atomic_write_json(path, record)
        _atomic_write_json(self.runs / "latest.json", record)
        return path

    def run_record(self, run_id: str = "latest") -> dict[str, Any]:
        """A saved run record (``latest`` by default)."""
        path = self.runs / f"{run_id}.json"
        if not path.is_file():
            raise WinnowError(f"store {self.root}: no run '{run_id}' (run `winnow run` first)")
        return json.loads(path.read_text(encoding="utf-8"))

    def _run_outputs(self, run_id: str, missing_ok: bool = False) -> dict[str, str]:
        try:
            return self.run_record(run_id)["outputs"]
        except WinnowError:
            if missing_ok:
                return {}
            raise

    def clean_staging(self, older_than_s: float = STALE_STAGING_S) -> list[Path]:
        """Delete abandoned staging folders (left by a crash); returns the folders removed.

        A folder whose owner process ran on this host is abandoned when that process is gone,
        whatever its age, and never while it lives (so cleaning beside a running job is safe). A
        folder from another host, or from a version that did not tag folders, is abandoned once
        older than ``older_than_s``.
        """
        if not self.staging.is_dir():
            return []
        now = time.time()
        removed = []
        for p in sorted(self.staging.iterdir()):
            alive = _staging_owner_alive(p.name)
            if alive is False or (alive is None and now - p.stat().st_mtime >= older_than_s):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def clean(self, older_than_s: float = STALE_STAGING_S) -> dict[str, list[Path]]:
        """Remove everything a crash can leave: abandoned staging, free lock files, old lock dirs."""
        out = {"staging": self.clean_staging(older_than_s), "locks": remove_free_locks(self.locks)}
        # Prefect's file locks from versions before storage.locks; nothing reads them any more.
        legacy = self.root / "prefect-locks"
        out["legacy_locks"] = sorted(legacy.glob("*")) if legacy.is_dir() else []
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)
        return out

    def verify(self, fingerprint: str) -> list[str]:
        """Re-hash one entry against its manifest; returns the problems found (empty: sound).

        Tables and files are compared with the sha256 digests recorded at write time; entries
        written before digests were recorded are checked for readability and row counts only.
        """
        m = self.manifest(fingerprint)
        folder = self.objects / fingerprint
        problems = []
        for name, info in m.tables.items():
            # Entries written before sharding hold one file and a table-level digest.
            shards = info.get("shards") or [{"file": shard_file(name, 0), "rows": info["rows"], "sha256": info.get("sha256")}]
            for shard in shards:
                problems += _verify_shard(folder / "tables" / shard["file"], shard, name if len(shards) == 1 else
                                          f"{name} shard {shard['file']}")
        for rel in m.files:
            path = folder / "files" / rel
            if not path.is_file():
                problems.append(f"file {rel}: missing")
            elif rel in m.file_digests and _sha256(path) != m.file_digests[rel]:
                problems.append(f"file {rel}: sha256 differs from the manifest")
        if not (folder / LEDGER_FILE).is_file():
            problems.append(f"{LEDGER_FILE}: missing")
        return problems

    def iter_sizes(self) -> Iterator[tuple[str, int, int]]:
        """(fingerprint, bytes of its files, of those the bytes in files it shares with another
        entry) for every entry: a shard linked from an earlier entry is on disk once."""
        for m in self.entries():
            files = [p.stat() for p in (self.objects / m.fingerprint).rglob("*") if p.is_file()]
            yield m.fingerprint, sum(f.st_size for f in files), sum(f.st_size for f in files if f.st_nlink > 1)


#: Tables this process wrote last, by (store root, fingerprint, table): a one-stage command reads
#: back what it just wrote (the ingest, then the stage's output to export), and entries are
#: immutable, so the copy in memory is the entry. Small tables only, newest few.
_RECENT: dict[tuple[str, str, str], pa.Table] = {}
_RECENT_BYTES = 256 << 20
_RECENT_LOCK = threading.Lock()  # a flow's task threads write entries at once


def _remember(root: Path, fingerprint: str, tables: Mapping[str, Any]) -> None:
    with _RECENT_LOCK:
        for name, table in tables.items():
            if isinstance(table, pa.Table) and table.nbytes <= _RECENT_BYTES // 4:
                _RECENT[(str(root), fingerprint, name)] = table
        while sum(t.nbytes for t in _RECENT.values()) > _RECENT_BYTES:
            del _RECENT[next(iter(_RECENT))]  # oldest first (dicts keep insertion order)


def shard_bounds(table: pa.Table, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """(first row, rows) of each shard: at most ``max_rows`` rows and about ``max_bytes`` of values.

    Cut greedily from the first row, by each row's own size, so the bounds of a table's prefix do
    not depend on what follows it: a corpus that grows at the end keeps its earlier shards (and so
    its per-shard map tasks' cache entries) byte for byte.
    """
    n = table.num_rows
    if n == 0:
        return [(0, 0)]
    cum = np.cumsum(_row_sizes(table))
    bounds, start = [], 0
    while start < n:
        base = int(cum[start - 1]) if start else 0
        by_bytes = int(np.searchsorted(cum, base + max_bytes, side="right"))
        end = min(n, start + max_rows, max(start + 1, by_bytes))
        bounds.append((start, end - start))
        start = end
    return bounds


def segment_bounds(table: pa.Table, parts: list[int] | None, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """:func:`shard_bounds` cut within each of ``parts`` (consecutive row counts), so a shard
    boundary falls on every part boundary: each part's shards are those it would have alone."""
    if not parts:
        return shard_bounds(table, max_rows, max_bytes)
    if sum(parts) != table.num_rows or min(parts) < 1:
        raise ValueError(f"segments {parts} do not split a table of {table.num_rows} rows into non-empty parts")
    bounds, start = [], 0
    for rows in parts:
        bounds += [(start + s, n) for s, n in shard_bounds(table.slice(start, rows), max_rows, max_bytes)]
        start += rows
    return bounds


class _ShardCutter:
    """:func:`segment_bounds`' greedy cut, applied to rows as they arrive."""

    def __init__(self, max_rows: int, max_bytes: int, parts: list[int] | None = None) -> None:
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.rows, self.bytes = 0, 0  # in the shard being filled
        self.started = False
        self.placed = 0  # rows placed so far
        self.ends = np.cumsum(parts, dtype=np.int64) if parts else np.zeros(0, np.int64)
        self.at_end = False  # the last row placed ended a part

    def closed(self) -> bool:
        """Whether the next row must start a new shard, whatever its size."""
        return self.at_end or self.rows >= self.max_rows

    def split(self, sizes: np.ndarray) -> Iterator[tuple[int, int, bool]]:
        """(first row, rows, starts a new shard) runs of a piece whose rows have ``sizes``: a row
        joins the open shard if it has room for one more row and, unless it is the shard's first,
        for the row's bytes, and no part ended before it."""
        i, n = 0, len(sizes)
        cum = np.cumsum(sizes)
        while i < n:
            new = not self.started or self.closed() or (
                self.rows > 0 and self.bytes + int(sizes[i]) > self.max_bytes)
            if new:
                self.rows, self.bytes, self.started = 0, 0, True
            base = int(cum[i - 1]) if i else 0
            fit = int(np.searchsorted(cum, base + self.max_bytes - self.bytes, side="right")) - i
            take = min(n - i, self.max_rows - self.rows, max(fit, 1))
            k = int(np.searchsorted(self.ends, self.placed, side="right"))
            if k < self.ends.size:  # do not run past the end of the current part
                take = min(take, int(self.ends[k]) - self.placed)
            yield i, take, new
            self.rows += take
            self.bytes += int(cum[i + take - 1]) - base
            self.placed += take
            self.at_end = k < self.ends.size and self.placed == int(self.ends[k])
            i += take


class _StreamWriter:
    """The shards of one streamed table, written (or linked) as its pieces arrive."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, cut: _ShardCutter, pool: "_ShardPool") -> None:
        self.folder, self.name, self.schema, self.cut, self.pool = folder, name, schema, cut, pool
        self.hasher = TableHasher(schema)
        self.shards: list[dict[str, Any]] = []
        self.open: _ShardWriter | None = None
        self._as_stored: pa.Schema | None = None

    def _check(self, piece: pa.Table) -> None:
        if not piece.schema.equals(self.schema):
            raise ValueError(f"table {self.name!r}: a streamed piece has schema {piece.schema}, not {self.schema}")

    def rows(self, piece: pa.Table, hashed: bool = False) -> None:
        """Add rows (``hashed``: already added to the table's content hash)."""
        self._check(piece)
        if not hashed:
            self.hasher.update(piece)
        for start, rows, new_shard in self.cut.split(_row_sizes(piece)):
            if self.open is None or new_shard:
                self._close_open()
                self.open = _ShardWriter(self.folder / shard_file(self.name, len(self.shards)), self.schema)
            self.open.write(piece.slice(start, rows))

    def shard(self, piece: Shard) -> None:
        """Add a :class:`~tasks.common.Shard`'s rows: as a link to a stored file holding exactly
        them where the cut makes them one shard (so the file is what writing them would give, row
        for row), else written like any rows."""
        if piece.stored is None and not self.pool.has(self.name):  # nothing it could link: one pass
            for t in piece.batches():
                self.rows(_as_table(t))
            return
        before = copy.copy(self.cut)
        own = TableHasher(self.schema) if piece.stored is None else None
        sizes = []
        for t in map(_as_table, piece.batches()):
            self._check(t)
            self.hasher.update(t)
            if own is not None:
                own.update(t)
            sizes.append(_row_sizes(t))
        n = sum(len(z) for z in sizes)
        runs = list(self.cut.split(np.concatenate(sizes) if sizes else np.zeros(0, np.int64)))
        if n and runs == [(0, n, True)] and self.cut.closed():
            found = piece.stored or (own and self.pool.find(self.name, own.hexdigest()))
            if found:
                self._as_stored = self._as_stored or _stored_schema(self.schema)
                record = _link_shard(Path(found[0]), found[1], n, self._as_stored,
                                     self.folder / shard_file(self.name, len(self.shards) + (self.open is not None)))
                if record is not None:
                    self._close_open()
                    self.shards.append(record)
                    return
        self.cut = before
        for t in piece.batches():
            self.rows(_as_table(t), hashed=True)

    def _close_open(self) -> None:
        if self.open is not None:
            self.shards.append(self.open.close())
            self.open = None

    def close(self, expected_rows: int | None) -> tuple[str, pa.Schema, list[dict[str, Any]]]:
        """Finish the last shard; returns (content hash, schema, shards)."""
        if expected_rows is not None and self.cut.placed != expected_rows:
            raise ValueError(f"table {self.name!r}: segments cover {expected_rows} rows, the stream had {self.cut.placed}")
        if self.open is None and not self.shards:  # no rows: one empty shard, as for an empty in-memory table
            self.open = _ShardWriter(self.folder / shard_file(self.name, 0), self.schema)
        self._close_open()
        return self.hasher.hexdigest(), self.schema, self.shards


class _ShardPool:
    """Earlier entries' shards of one stage, by table and rows' content hash, read from their
    manifests on first use: the files a :class:`_StreamWriter` may link instead of encoding."""

    def __init__(self, store: DatasetStore, stage: str, enabled: bool = True) -> None:
        self.store, self.stage = store, stage
        self._found: dict[tuple[str, str], tuple[Path, dict[str, Any]]] | None = None if enabled else {}
        self._tables: set[str] = set()  # the table names in _found
        self._lock = threading.Lock()  # an entry's tables are written two at a time

    def _shards(self) -> dict[tuple[str, str], tuple[Path, dict[str, Any]]]:
        with self._lock:
            if self._found is None:
                self._found = {}
                for m in self.store.entries():
                    if m.stage != self.stage:
                        continue
                    for name, info in m.tables.items():
                        for shard in info.get("shards", []):
                            if "content" in shard and "sha256" in shard:
                                where = self.store.path(m.fingerprint) / "tables" / shard["file"]
                                self._found.setdefault((name, shard["content"]), (where, shard))
                self._tables = {name for name, _ in self._found}
            return self._found

    def has(self, table: str) -> bool:
        """Whether an earlier entry has shards of ``table`` (a first run has none: no second pass)."""
        self._shards()
        return table in self._tables

    def find(self, table: str, content: str) -> tuple[Path, dict[str, Any]] | None:
        """(path, record) of a stored shard of ``table`` whose rows hash to ``content``, or None."""
        return self._shards().get((table, content))


def _as_table(piece: pa.Table | pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([piece]) if isinstance(piece, pa.RecordBatch) else piece


def _stored_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a shard of ``schema`` reads back with (Parquet renames list items, ...)."""
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf, **parquet_options(schema))
    return pq.read_schema(pa.BufferReader(buf.getvalue()))


def _link_shard(src: Path, record: dict[str, Any], rows: int, schema: pa.Schema, dest: Path) -> dict[str, Any] | None:
    """Link the stored shard ``src`` as ``dest`` if it holds ``rows`` rows read back as ``schema``
    and its bytes still match its digest (a damaged file is written anew, not spread); returns the
    new shard's record, or None. Entries are never written in place, so sharing a file is safe,
    and removing one entry leaves the other's name."""
    try:
        if record["rows"] != rows or not pq.read_schema(src).equals(schema, check_metadata=True):
            return None
        if _sha256(src) != record["sha256"]:
            return None
        try:
            os.link(src, dest)
        except OSError:  # another file system
            shutil.copyfile(src, dest)
    except OSError:  # the file went (its entry removed meanwhile): write the rows instead
        return None
    return {**record, "file": dest.name}


class _ShardWriter:
    """One shard file written a row group at a time (row groups of :data:`ROW_GROUP_ROWS` rows)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.hasher = TableHasher(schema)
        self.writer = pq.ParquetWriter(path, schema, **parquet_options(schema))
        self.pending: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.hasher.update(table)
        self.pending.append(table)
        self.buffered += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        full = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        if full:
            _write_row_groups(self.writer, table.slice(0, full))
            self.rows += full
        rest = table.slice(full)
        self.pending, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> dict[str, Any]:
        self._flush(final=True)
        self.writer.close()
        return _shard_info(self.path, self.rows, self.hasher.hexdigest())


def _write_row_groups(writer: pq.ParquetWriter, table: pa.Table) -> None:
    """``table`` as row groups of :data:`ROW_GROUP_ROWS` rows, each from one contiguous chunk: the
    writer cuts pages where chunks end, so this makes a shard's bytes independent of how its rows
    were chunked in memory (read whole, streamed in pieces), as its content hash already is."""
    for start in range(0, table.num_rows, ROW_GROUP_ROWS):
        group = table.slice(start, ROW_GROUP_ROWS)
        if any(column.num_chunks > 1 for column in group.columns):
            group = group.combine_chunks()
        writer.write_table(group, row_group_size=ROW_GROUP_ROWS)


def _shard_info(path: Path, rows: int, content: str) -> dict[str, Any]:
    """A shard's manifest record: its file's digest (for `store verify`) and its rows' content hash,
    which names it to a map task (a shard written by an older version may spell equal rows in
    other bytes, and must still hit the same cache entry)."""
    return {"file": path.name, "rows": rows, "bytes": path.stat().st_size, "sha256": _sha256(path), "content": content}


def _row_sizes(table: pa.Table) -> np.ndarray:
    """Approximate bytes of each row: strings and binaries by their length, other columns 8 bytes."""
    sizes = np.full(table.num_rows, 8 * table.num_columns, np.int64)
    for col in table.columns:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            sizes += pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return sizes


def shard_file(name: str, k: int) -> str:
    """File name of shard ``k`` of table ``name``: shard 0 keeps the one-file name of older entries."""
    return f"{name}.parquet" if k == 0 else f"{name}.{k:05d}.parquet"


def _verify_shard(path: Path, shard: Mapping[str, Any], what: str) -> list[str]:
    try:
        with pq.ParquetFile(path) as f:
            rows = f.metadata.num_rows
            f.read()  # decodes every page: a torn or bit-flipped file fails here
    except (OSError, pa.ArrowException) as e:
        return [f"table {what}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"]
    if rows != shard["rows"]:
        return [f"table {what}: {rows} rows, manifest says {shard['rows']}"]
    if shard.get("sha256") and _sha256(path) != shard["sha256"]:
        return [f"table {what}: sha256 differs from the manifest"]
    return []


def _adopt_files(dest: Path, files_from: Path | None) -> tuple[list[str], dict[str, str]]:
    """Move a stage's scratch folder into the staged entry; its file list and their sha256 digests."""
    if files_from is None:
        return [], {}
    os.rename(files_from, dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    return files, {name: _sha256(dest / name) for name in files}


def read_parquet(path: Path) -> pa.Table:
    """Read one Parquet file. ``pq.read_table`` would import ``pyarrow.dataset`` and pandas (~0.4 s
    per process, most of a one-stage command's start-up); a single file needs neither."""
    with pq.ParquetFile(path) as f:
        return f.read()


def _staging_owner_alive(name: str) -> bool | None:
    """Owner of a staging folder named ``<kind>-[<fp16>-]<owner tag>-<8 hex>`` (None: unknown)."""
    parts = name.split("-")
    if len(parts) < 5:
        return None  # written before folders were tagged
    return owner_alive("-".join(parts[-4:-1]))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _summarise_ledger(removed: pa.Table) -> dict[str, dict[str, int]]:
    summary: dict[str, dict[str, int]] = {}
    if removed.num_rows == 0:
        return summary
    counts = removed.group_by(["action", "reason"]).aggregate([("id", "count")])
    for action, reason, n in zip(*(counts[c].to_pylist() for c in ("action", "reason", "id_count"))):
        summary.setdefault(action, {})[reason] = n
    return summary


def _write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def _atomic_write_json(path: Path, obj: Any) -> None:
    """Run records keep their key order: stages are listed in pipeline order."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    _write_json(tmp, obj, sort_keys=False)
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
