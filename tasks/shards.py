"""A stage's view of a table's rows that need not be in memory: a sharded store table read a row
group at a time, or an in-memory table behind the same few calls, so one stage function serves
both the one-process path and the bounded-memory reduce of a map / reduce stage.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class Pieces:
    """The Parquet files of a list of sharded tables (:class:`storage.store.ShardedTable`, or
    anything with ``paths`` and ``shard_rows``), as one row-ordered sequence of row groups."""

    def __init__(self, tables: Sequence[Any]) -> None:
        self.paths = [p for t in tables for p in t.paths]
        rows = [r for t in tables for r in t.shard_rows]
        self.starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.paths[0])

    def row_groups(self, columns: list[str] | None) -> Iterator[tuple[int, pa.Table]]:
        """(first global row, table) of every row group, in row order."""
        for k, path in enumerate(self.paths):
            start = int(self.starts[k])
            with pq.ParquetFile(path) as f:
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
        """Rows ``rows`` (ascending) of the columns, as one table (None when there are none)."""
        out = list(self.taken(rows, columns))
        return pa.concat_tables(out) if out else None


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
