"""A stage's view of a table's rows that need not be in memory: a sharded store table read a row
group at a time, or an in-memory table behind the same few calls, so one stage function serves
both the one-process path and the bounded-memory reduce of a map / reduce stage.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import memory
from tasks.common import Shard, TableStream


#: At most this many bytes of rows a :class:`Pieces` keeps from one ``take`` for the next.
TAKEN_BYTES = 256 << 20


class Pieces:
    """The Parquet files of a list of sharded tables (:class:`storage.store.ShardedTable`, or
    anything with ``paths`` and ``shard_rows``), as one row-ordered sequence of row groups."""

    def __init__(self, tables: Sequence[Any]) -> None:
        self.paths = [p for t in tables for p in t.paths]
        rows = [r for t in tables for r in t.shard_rows]
        self.starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
        # Each shard's manifest record where every table has them (else empty): what a stage needs
        # to hand an untouched shard on as it is (tasks.common.Shard).
        records = [r for t in tables for r in getattr(t, "records", ())]
        self.records = records if len(records) == len(self.paths) else []
        # Rows taken so far, by columns: a stage's later phases mostly want rows an earlier one
        # took, and a row group is decoded whole to take one row from it.
        self._taken: dict[tuple[str, ...] | None, tuple[np.ndarray, pa.Table]] = {}

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    @property
    def shard_sizes(self) -> list[int]:
        """Rows of each shard, in order."""
        return np.diff(self.starts).tolist()

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.paths[0])

    def row_groups(self, columns: list[str] | None) -> Iterator[tuple[int, pa.Table]]:
        """(first global row, table) of every row group, in row order."""
        for k in range(len(self.paths)):
            yield from self.shard_groups(k, columns)

    def shard_groups(self, k: int, columns: list[str] | None) -> Iterator[tuple[int, pa.Table]]:
        """(first global row, table) of every row group of shard ``k``."""
        start = int(self.starts[k])
        with pq.ParquetFile(self.paths[k]) as f:
            for g in range(f.num_row_groups):
                t = f.read_row_group(g, columns=columns)
                yield start, t
                start += t.num_rows

    def read(self, columns: list[str] | None) -> pa.Table:
        """The columns whole (for what truly needs every row at once: ids, small columns)."""
        parts = []
        for path in self.paths:
            with pq.ParquetFile(path) as f:
                parts.append(f.read(columns=columns))
        return pa.concat_tables(parts)

    def taken(self, rows: np.ndarray, columns: list[str] | None) -> Iterator[pa.Table]:
        """Rows ``rows`` (ascending) of the columns, a row group at a time, reading only row
        groups that hold some."""
        rows = np.asarray(rows, np.int64)
        piece = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(piece):
            local = rows[piece == k] - self.starts[k]
            with pq.ParquetFile(self.paths[k]) as f:
                sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
                bounds = np.concatenate([[0], np.cumsum(sizes)])
                group = np.searchsorted(bounds, local, side="right") - 1
                for g in np.unique(group):
                    t = f.read_row_group(int(g), columns=columns)
                    yield t.take(pa.array(local[group == g] - bounds[g]))

    def take(self, rows: np.ndarray, columns: list[str] | None) -> pa.Table | None:
        """Rows ``rows`` (ascending) of the columns, as one table (None when there are none).
        Rows taken before with the same columns are not read again (up to :data:`TAKEN_BYTES`)."""
        rows = np.asarray(rows, np.int64)
        if not rows.size:
            return None
        key = tuple(columns) if columns is not None else None
        have_rows, have = self._taken.get(key, (np.zeros(0, np.int64), None))
        missing = np.setdiff1d(rows, have_rows)
        if missing.size:
            new = pa.concat_tables(list(self.taken(missing, columns)))
            have_rows = np.concatenate([have_rows, missing])
            have = new if have is None else pa.concat_tables([have, new])
            order = np.argsort(have_rows, kind="stable")
            have_rows, have = have_rows[order], have.take(pa.array(order))
            if have.nbytes <= TAKEN_BYTES:
                self._taken[key] = (have_rows, have)
            else:
                self._taken.pop(key, None)
        return have.take(pa.array(np.searchsorted(have_rows, rows)))


class TableRows:
    """An in-memory table behind :class:`Pieces`' calls: one row group, the table itself."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    def row_groups(self, columns: list[str] | None) -> Iterator[tuple[int, pa.Table]]:
        yield 0, self.table if columns is None else self.table.select(columns)

    def read(self, columns: list[str] | None) -> pa.Table:
        return self.table if columns is None else self.table.select(columns)

    def take(self, rows: np.ndarray, columns: list[str] | None) -> pa.Table | None:
        if len(rows) == 0:
            return None
        return self.read(columns).take(pa.array(np.asarray(rows, np.int64)))


def rows_of(table: Any) -> Pieces | TableRows:
    """The rows of a ``pa.Table`` (kept in memory) or of a sharded store table (read as needed)."""
    if isinstance(table, pa.Table):
        return TableRows(table)
    if getattr(table, "in_memory", None) is not None:  # rows this process just wrote: no re-read
        return TableRows(table.in_memory)
    return Pieces([table])


def shard_stream(rows: Pieces, schema: pa.Schema, transform: Callable[[int, pa.Table], pa.Table],
                 unchanged: np.ndarray | None = None, columns: list[str] | None = None,
                 on_end: Callable[[], None] | None = None) -> TableStream:
    """An output derived from ``rows`` shard by shard: one :class:`~tasks.common.Shard` per input
    shard, each row group (``columns`` of it) through ``transform(first global row, table)``. A
    shard marked ``unchanged`` (its rows come out as they went in) names the stored file, so the
    store links it instead of encoding it; any other shard may still match a file of an earlier
    entry of the stage. ``on_end`` runs once every shard has been handed on."""

    def groups(k: int) -> Iterator[pa.Table]:
        for start, t in rows.shard_groups(k, columns):
            yield transform(start, t)
            memory.release()

    def pieces() -> Iterator[Shard]:
        for k in range(len(rows.paths)):
            same = unchanged is not None and bool(unchanged[k]) and bool(rows.records)
            yield Shard(functools.partial(groups, k), (rows.paths[k], rows.records[k]) if same else None)
        if on_end is not None:
            on_end()

    return TableStream(schema, pieces)


def _shard_of(starts: np.ndarray, rows: Any) -> np.ndarray:
    """The shard each of ``rows`` (global) is in; ``starts``: first row of each shard, then the count."""
    return np.searchsorted(starts, np.asarray(rows, np.int64), side="right") - 1


def shards_hit(starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per shard (``starts``: first row of each, then the row count), whether any of ``rows`` is in it."""
    hit = np.zeros(len(starts) - 1, bool)
    hit[_shard_of(starts, rows)] = True
    return hit


def parts_left(shard_rows: Sequence[int], dropped: Any = ()) -> list[int]:
    """What is left of each of ``shard_rows`` once ``dropped`` (global rows) are gone, empty shards
    left out: the ``segments`` that make an output's shards fall where its input's do (so an
    unchanged shard is the same shard, and the map tasks keyed by it downstream stay cached). One
    shard needs none: ``[]``."""
    if len(shard_rows) < 2:
        return []
    sizes = np.asarray(shard_rows, np.int64)
    gone = np.bincount(_shard_of(np.concatenate([[0], np.cumsum(sizes)]), dropped), minlength=len(sizes))
    return [int(n) for n in sizes - gone if n > 0]
