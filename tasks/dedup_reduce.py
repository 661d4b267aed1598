"""dedup's reduce over the per-shard map outputs, in bounded memory.

:func:`tasks.dedup.run` comes here when its corpus is sharded and every shard's features were
computed by the ``dedup_map`` stage. It makes the same decisions as the in-memory run
(:func:`tasks.dedup.decide`, the same passes) and returns the same tables, but never holds the
corpus's texts, signatures, band keys or shingles at once:

1. **Small columns**: ids, exact keys, blank flags and shingle counts of every row and the
   passes' per-row decisions (and evidence for dropped rows) are the only per-document state held
   for the whole corpus; it is not bounded by the budget below (10M documents: 2.7 GB peak with
   the budget's 1 GB, BENCHMARKS.md ``## scale``). Freed pages are handed back to the OS between
   phases (:func:`tasks.memory.release`).
2. **Band-key shuffle**: the band keys of the rows still in play after the exact pass are read one
   row group at a time and partitioned by key into P files under ``spill_dir``; P is chosen so
   that one partition's keys, rows and sort fit the memory budget (``WINNOW_DEDUP_REDUCE_MB``,
   default 1024). Keys of different bands never meet (a band key hashes its band number), so
   grouping a partition by key gives exactly the buckets of the in-memory per-band grouping, and
   with ties in row order the same candidate pairs, whatever P.
3. **Verification** copies the signatures and shingles of rows in a candidate pair into spill
   files in one pass over their row groups (:meth:`StreamedFeatures.stage`), and scores the pairs
   in chunks whose distinct rows' features fit the same budget (:class:`tasks.dedup._PairScorer`;
   at 10M documents holding them all took ~6 GB); union-find runs over those rows' positions.
4. **Outputs** are :class:`~tasks.common.TableStream` s: the kept rows and the index are produced
   shard by shard (a row group at a time) while the store writes them, cut where the corpus's
   shards fall, so an old shard whose rows come out as in last night's entry is linked to that
   file rather than encoded again (:class:`~tasks.common.Shard`).

The budget is not part of any fingerprint: it changes how the work is cut, never the result.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from tasks import dedup, memory
from tasks import minhash as mh
from tasks.common import StageResult, TableStream, Timings, check_unique_ids, concat_ledgers, ledger
from tasks.shards import Pieces, parts_left, shard_stream, shards_hit
from winnow.errors import WinnowError

MEMORY_ENV = "WINNOW_DEDUP_REDUCE_MB"
DEFAULT_MEMORY_MB = 1024
#: Bytes of memory per band key in a partition: key and row read back (16), the sort's order and
#: sorted copies (24), the pair arrays of its buckets (8).
BYTES_PER_KEY = 48
_SMALL = ["exact_hi", "exact_lo", "blank", "num_shingles"]


def memory_budget() -> int:
    """The reduce's memory budget in bytes (``WINNOW_DEDUP_REDUCE_MB``, else 1 GB)."""
    text = os.environ.get(MEMORY_ENV, "")
    try:
        mb = int(text) if text else DEFAULT_MEMORY_MB
    except ValueError:
        raise WinnowError(f"{MEMORY_ENV}={text!r}: expected a whole number of megabytes") from None
    if mb < 1:
        raise WinnowError(f"{MEMORY_ENV}={mb}: expected at least 1 (megabyte)")
    return mb << 20


class _Ids:
    """Row -> id over an Arrow column, so the passes need no Python list of every id."""

    def __init__(self, ids: pa.ChunkedArray) -> None:
        self.ids = ids.combine_chunks()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row: int) -> str:
        return self.ids[int(row)].as_py()


class StreamedFeatures:
    """The features :func:`tasks.dedup.decide` reads (``exact``, ``blank``, ``num_shingles`` and
    the accessors of :class:`tasks.dedup.Features`), over the map entries on disk."""

    def __init__(self, features: Sequence[Any], params: dedup.Params, bands: int, spill_dir: Path,
                 memory_bytes: int) -> None:
        self.pieces = Pieces(features)
        self.num_perm, self.bands, self.spill_dir, self.memory_bytes = params.num_perm, bands, Path(spill_dir), memory_bytes
        small = self.pieces.read(_SMALL)
        self.exact = np.stack([small.column("exact_hi").to_numpy(), small.column("exact_lo").to_numpy()], axis=1)
        self.blank = small.column("blank").to_numpy(zero_copy_only=False)
        self.num_shingles = small.column("num_shingles").to_numpy()
        self.partitions = 0
        self._memo: tuple[np.ndarray, pa.Table] | None = None
        self._staged: _Staged | None = None

    def candidate_pairs(self, rows: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct candidate pairs among ``rows`` (ascending), as positions in ``rows``: what
        :func:`tasks.dedup._candidate_pairs` finds band by band, found by partitions of keys."""
        p = max(1, math.ceil(len(rows) * self.bands * BYTES_PER_KEY / self.memory_bytes))
        self.partitions = p
        files = self._shuffle(rows, p)
        lefts, rights = [], []
        for key_file, row_file in files:
            keys, docs = np.fromfile(key_file, np.uint64), np.fromfile(row_file, np.int64)
            key_file.unlink()
            row_file.unlink()
            left, right = mh.pairs_sharing_keys(keys, docs, max_bucket)
            del keys, docs
            memory.release()
            lefts.append(left)
            rights.append(right)
        left, right = np.concatenate(lefts), np.concatenate(rights)
        return mh.unique_pairs(np.searchsorted(rows, left), np.searchsorted(rows, right), len(rows))

    def _shuffle(self, rows: np.ndarray, p: int) -> list[tuple[Path, Path]]:
        """Append (band key, row) of every band of ``rows`` to partition ``key % p``, rows ascending
        within each partition (the order ties must have)."""
        active = np.zeros(self.pieces.num_rows, bool)
        active[rows] = True
        names = [(self.spill_dir / f"keys-{k:05d}.u64", self.spill_dir / f"rows-{k:05d}.i64") for k in range(p)]
        handles = [(open(a, "wb"), open(b, "wb")) for a, b in names]
        try:
            for start, t in self.pieces.row_groups(["bands"]):
                local = np.flatnonzero(active[start : start + t.num_rows])
                if not len(local):
                    continue
                col = t.column("bands").combine_chunks()
                keys = col.flatten().to_numpy().reshape(t.num_rows, self.bands)[local].ravel()
                docs = np.repeat(start + local, self.bands)
                part = keys % np.uint64(p)
                order = np.argsort(part, kind="stable")
                cuts = np.searchsorted(part[order], np.arange(p + 1, dtype=np.uint64))
                for k, (fk, fr) in enumerate(handles):
                    sel = order[cuts[k] : cuts[k + 1]]
                    keys[sel].tofile(fk)
                    docs[sel].tofile(fr)
        finally:
            for fk, fr in handles:
                fk.close()
                fr.close()
        return names

    def _taken(self, rows: np.ndarray) -> pa.Table:
        """Signatures and shingles of ``rows``, in that order (kept for the next call)."""
        rows = np.asarray(rows, np.int64)
        if self._memo is not None and np.array_equal(self._memo[0], rows):
            return self._memo[1]
        order = np.argsort(rows, kind="stable")
        got = self.pieces.take(rows[order], ["sigs", "shingles"])
        inverse = np.empty(len(rows), np.int64)
        inverse[order] = np.arange(len(rows))
        table = got.take(pa.array(inverse)).combine_chunks() if got is not None else None
        self._memo = (rows.copy(), table)
        return table

    def stage(self, rows: np.ndarray) -> None:
        """Copy the signatures and shingles of ``rows`` into a spill file in one pass over their
        row groups, so that later reads of any of them (the pair scorer's chunks) read those rows
        only. Without it every chunk read whole row groups again (at 10M documents a reduce of
        675 s against 547 s staged, BENCHMARKS.md ``## scale``)."""
        rows = np.unique(np.asarray(rows, np.int64))
        if self._staged is not None and self._staged.holds(rows):
            return
        self.unstage()
        self._staged = _Staged.write(self.pieces, rows, self.num_perm, self.spill_dir)

    def unstage(self) -> None:
        """Delete the spill files of :meth:`stage` (reads go back to the map entries)."""
        if self._staged is not None:
            self._staged.sig_path.unlink(missing_ok=True)
            self._staged.set_path.unlink(missing_ok=True)
            self._staged = None

    def signatures_of(self, rows: np.ndarray) -> np.ndarray:
        if self._staged is not None and self._staged.holds(rows):
            return self._staged.signatures_of(rows)
        t = self._taken(rows)
        if t is None:
            return np.zeros((0, self.num_perm), np.uint32)
        sigs = t.column("sigs").chunk(0)
        return sigs.flatten().to_numpy().reshape(len(rows), sigs.type.list_size)

    def shingles_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._staged is not None and self._staged.holds(rows):
            return self._staged.shingles_of(rows)
        t = self._taken(rows)
        if t is None:
            return np.zeros(0, np.uint32), np.zeros(1, np.int64)
        col = t.column("shingles").chunk(0)
        offsets = col.offsets.to_numpy().astype(np.int64)
        return col.flatten().to_numpy(), offsets - offsets[0]


class _Staged:
    """Signatures (uint32[n, k]) and shingles (CSR) of ascending ``rows``, in two spill files that
    are mapped only while rows are copied out of them (so their pages do not stay resident)."""

    def __init__(self, rows: np.ndarray, offsets: np.ndarray, num_perm: int, sig_path: Path, set_path: Path) -> None:
        self.rows, self.offsets, self.num_perm, self.sig_path, self.set_path = rows, offsets, num_perm, sig_path, set_path

    @classmethod
    def write(cls, pieces: Pieces, rows: np.ndarray, num_perm: int, spill_dir: Path) -> "_Staged":
        sig_path, set_path = Path(spill_dir) / "staged-sigs.u32", Path(spill_dir) / "staged-shingles.u32"
        lengths = []
        with open(sig_path, "wb") as fs, open(set_path, "wb") as fh:
            for t in pieces.taken(rows, ["sigs", "shingles"]):
                t.column("sigs").combine_chunks().flatten().to_numpy().tofile(fs)
                col = t.column("shingles").combine_chunks()
                col.flatten().to_numpy().tofile(fh)
                lengths.append(np.diff(col.offsets.to_numpy()))
                del t, col
                memory.release()  # each row group's decoded columns (measured: +400 MB kept otherwise)
        offsets = np.zeros(len(rows) + 1, np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return cls(rows, offsets, num_perm, sig_path, set_path)

    def holds(self, rows: np.ndarray) -> bool:
        if not len(rows):
            return True
        pos = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        return len(self.rows) > 0 and bool((self.rows[pos] == rows).all())

    # Mapped copy-on-write ("c", never written): a read-only array would make Numba compile its
    # kernels again for that type (seconds, and their code stays resident).
    def signatures_of(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.num_perm), np.uint32)
        mapped = np.memmap(self.sig_path, np.uint32, "c", shape=(len(self.rows), self.num_perm))
        return np.array(mapped[np.searchsorted(self.rows, rows)])

    def shingles_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.rows, rows)
        if self.offsets[-1] == 0 or not len(rows):
            return np.zeros(0, np.uint32), np.zeros(len(rows) + 1, np.int64)
        mapped = np.memmap(self.set_path, np.uint32, "c", shape=(int(self.offsets[-1]),))
        return mh.gather_csr(np.asarray(mapped), self.offsets, pos)


def run(corpus: Any, features: Sequence[Any], params: dedup.Params, spill_dir: Path,
        memory_bytes: int | None = None) -> StageResult:
    """dedup of a sharded ``corpus`` from its shards' ``dedup_map`` outputs (``features``), in
    bounded memory; the same tables, ledger and decisions as :func:`tasks.dedup.run` in memory.

    ``corpus`` and each of ``features`` are :class:`~storage.store.ShardedTable` handles (or
    anything with ``paths`` and ``shard_rows``); ``memory_bytes`` defaults to :func:`memory_budget`.
    """
    timings = Timings()
    banding = params.banding()
    with timings.phase("load"):
        source = Pieces([corpus])
        ids = _checked_ids(corpus, source, params)
        feats = StreamedFeatures(features, params, banding.bands, spill_dir, memory_bytes or memory_budget())
        if feats.pieces.num_rows != source.num_rows:
            raise WinnowError(f"dedup: {feats.pieces.num_rows} rows of shard features for {source.num_rows} corpus rows")
        policy = _policy(source, params)
    memory.release()  # the id check's hash tables: freed, still resident
    try:
        dec = dedup.decide(feats, _Ids(ids), policy, params, banding)
    finally:
        feats.unstage()
    memory.release()
    timings.seconds.update(dec.timings)

    keep = dec.status == "kept"
    if params.empty_text == "keep":
        keep |= feats.blank
    dropped = np.flatnonzero(~keep)
    removed = ledger(ids.take(pa.array(dropped, pa.int64())).to_pylist(), dedup.STAGE, "drop",
                     [dec.status[i] for i in dropped], [dec.evidence[int(i)] for i in dropped])
    dec.evidence.clear()  # in the ledger now: the largest per-row state
    memory.release()
    tables = {"data": _kept_rows(source, corpus.schema, keep),
              "index": _index(feats.pieces, ids, dec.status, params, banding)}
    # Each output's shards fall where the corpus's do: a nightly's old shards then come out as the
    # same rows as last night's, which the store links instead of encoding (tasks.common.Shard).
    segments = {"data": parts_left(source.shard_sizes, dropped), "index": parts_left(feats.pieces.shard_sizes)}
    n = source.num_rows
    reasons = ("exact_duplicate", "near_duplicate", "semantic_duplicate", "empty_text")
    metrics = {
        "rows_in": n, "rows_out": int(keep.sum()), "removed": {r: int((dec.status == r).sum()) for r in reasons},
        **dec.metrics,
        "banding": {"bands": banding.bands, "rows": banding.rows, "threshold": banding.threshold,
                    "p_candidate_at_threshold": round(banding.p_at_threshold, 4)},
        "index": {"rows_before": 0, "rows_after": n, "band_keys_recomputed": False},
        "reduce": {"shards": len(source.paths), "partitions": feats.partitions,
                   "score_chunks": dec.metrics["near"].pop("score_chunks", 0),
                   "memory_budget_mb": (memory_bytes or memory_budget()) >> 20},
        "kernel": "numba" if mh.HAVE_NUMBA else "numpy",
        "timings_s": {**timings.rounded(), "total": round(timings.total(), 4)},
        "docs_per_s": round(n / max(timings.total(), 1e-9), 1),
    }
    return StageResult(tables=tables, removed=concat_ledgers([removed]), metrics=metrics, segments=segments)


def _checked_ids(corpus: Any, source: Pieces, params: dedup.Params) -> pa.ChunkedArray:
    """Every id (unique across shards: each map task checked only its own rows) and the keep column."""
    schema = corpus.schema
    if params.keep == "score":
        field = schema.field(params.score_column) if params.score_column in schema.names else None
        if field is None:
            raise WinnowError(f"dedup: score_column '{params.score_column}' is not a column (have: {', '.join(schema.names)})")
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise WinnowError(f"dedup: score_column '{params.score_column}' has type {field.type}, expected a numeric type")
    ids = source.read(["id"]).column("id")
    check_unique_ids(ids, "dedup corpus")
    return ids


def _policy(source: Pieces, params: dedup.Params) -> np.ndarray:
    """:func:`tasks.dedup._policy_key` of every row, reading only the column it needs."""
    if params.keep == "first":
        return np.zeros(source.num_rows)
    column = "text" if params.keep == "longest" else params.score_column
    return np.concatenate([dedup._policy_key(t, params) for _, t in source.row_groups([column])])


def _kept_rows(source: Pieces, schema: pa.Schema, keep: np.ndarray) -> TableStream:
    """The kept rows, shard by shard (a shard that lost no row is the corpus's file)."""
    return shard_stream(source, schema, lambda start, t: t.filter(pa.array(keep[start : start + t.num_rows])),
                        ~shards_hit(source.starts, np.flatnonzero(~keep)), schema.names)


def _index(pieces: Pieces, ids: pa.ChunkedArray, status: np.ndarray, params: dedup.Params,
           banding: mh.Banding) -> TableStream:
    """The index, a row group of features at a time (:func:`tasks.dedup._index_table` is per row)."""
    first = dedup._index_table(None, pa.table({"id": ids.slice(0, 0)}), _empty_features(params, banding), status[:0],
                               params, banding, 0)

    def rows(start: int, t: pa.Table) -> pa.Table:
        n = t.num_rows
        return dedup._index_table(None, pa.table({"id": ids.slice(start, n)}), dedup.features_from_tables([t]),
                                  status[start : start + n], params, banding, start)

    return shard_stream(pieces, first.schema, rows)


def _empty_features(params: dedup.Params, banding: mh.Banding) -> dedup.Features:
    k, b = params.num_perm, banding.bands
    return dedup.Features(np.zeros((0, 2), np.uint64), np.zeros(0, bool), np.zeros(0, np.int64),
                          np.zeros((0, k), np.uint32), np.zeros((0, b), np.uint64), np.zeros(0, np.uint32),
                          np.zeros(1, np.int64))
