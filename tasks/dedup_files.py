"""Dedup of Parquet files with bounded memory: the path for millions of documents on one machine.

:func:`dedup_parquet` runs the same passes as :func:`tasks.dedup.run` (same features, same
decisions, same ledger), but never holds the texts, signatures or shingles of the whole corpus:

1. **Featurise** each row group of the inputs in a worker process (``workers`` at a time) and
   spill the features to one Parquet shard per task: exact key, one uint64 column per LSH band
   and a few bytes more (about 170 bytes per document).
2. **Decide** in the parent with :func:`tasks.dedup.decide`, reading the shards through
   :class:`ShardedFeatures`: the exact pass loads 16 bytes per document; the near pass groups
   one band column at a time (an external group-by on band keys: 16 bytes per document in
   memory), then recomputes signatures and shingles only for documents in a candidate pair.
3. **Write** the surviving rows (input order and schema) as ``data-NNNNN.parquet`` and the
   ledger as ``removed.parquet`` under ``out_dir``.

Peak memory is about (rows per row group x per-document features) per worker plus ~40 bytes per
document in the parent, so 1M documents fit in well under 4 GB. Incremental dedup against an
earlier index is :func:`tasks.dedup.run`'s job; this path is for the full rebuild.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import dedup
from tasks import minhash as mh
from tasks.common import Timings, concat_ledgers, ledger
from winnow.errors import WinnowError


def _plan(inputs: list[Path]) -> list[tuple[int, Path, list[int], int, int]]:
    """One task per row group: (task number, file, row groups, first global row, rows)."""
    tasks, start = [], 0
    for path in inputs:
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            if n:
                tasks.append((len(tasks), path, [rg], start, n))
                start += n
    return tasks


def _featurize_task(task: tuple[int, Path, list[int], int, int], params_dict: dict[str, Any], workdir: str,
                    threads: int) -> tuple[int, int]:
    """Worker: featurise one row group and write its feature shard."""
    if mh.HAVE_NUMBA and threads:
        mh.kernels().numba.set_num_threads(threads)
    number, path, groups, start, _ = task
    params = dedup.Params(**params_dict)
    banding = params.banding()
    cols = ["id", "text"] + ([params.score_column] if params.keep == "score" else [])
    table = pq.ParquetFile(path).read_row_groups(groups, columns=cols)
    dedup._check_corpus(table, params, where=f"{path} (rows from {start})", check_ids=False)
    feats = dedup.featurize(table.column("text"), params, banding)
    policy = dedup._policy_key(table, params)
    out = {
        "id": table.column("id"),
        "exact_hi": pa.array(feats.exact[:, 0]),
        "exact_lo": pa.array(feats.exact[:, 1]),
        "blank": pa.array(feats.blank),
        "num_shingles": pa.array(feats.num_shingles.astype(np.int64)),
        "policy": pa.array(policy),
    }
    for j in range(banding.bands):
        out[f"band_{j}"] = pa.array(feats.bands[:, j])
    # Signatures and shingles are not spilled (~1.5 KB per document): only documents in a
    # candidate pair need them, and ShardedFeatures recomputes those from the text.
    pq.write_table(pa.table(out), Path(workdir) / f"features-{number:05d}.parquet", compression="none")
    return number, table.num_rows


class ShardedFeatures:
    """Features spilled to Parquet shards, read lazily; the accessors match dedup.Features.

    Signatures and shingle hashes are recomputed from the input text for the few documents that
    need them (those in a candidate pair), which is cheaper than writing and reading them all.
    """

    def __init__(self, shards: list[Path], tasks: list[tuple[int, Path, list[int], int, int]],
                 params: dedup.Params) -> None:
        self.shards = shards
        self.tasks = tasks
        self.params = params
        self.starts = np.array([t[3] for t in tasks] + [tasks[-1][3] + tasks[-1][4]], np.int64)
        small = pa.concat_tables(
            pq.read_table(s, columns=["id", "exact_hi", "exact_lo", "blank", "num_shingles", "policy"]) for s in shards
        )
        self.ids = small.column("id")
        self.exact = np.stack([small.column("exact_hi").to_numpy(), small.column("exact_lo").to_numpy()], axis=1)
        self.blank = small.column("blank").to_numpy(zero_copy_only=False)
        self.num_shingles = small.column("num_shingles").to_numpy()
        self.policy = small.column("policy").to_numpy()
        self._memo: tuple[np.ndarray, dedup.Features] | None = None

    def band(self, j: int) -> np.ndarray:
        return np.concatenate([pq.read_table(s, columns=[f"band_{j}"]).column(0).to_numpy() for s in self.shards])

    def _features_of(self, rows: np.ndarray) -> dedup.Features:
        """Features of ``rows`` (in that order), recomputed from their text shard by shard."""
        rows = np.asarray(rows, np.int64)
        if self._memo is not None and np.array_equal(self._memo[0], rows):
            return self._memo[1]
        order = np.argsort(rows, kind="stable")
        task_of = np.searchsorted(self.starts, rows[order], side="right") - 1
        texts = []
        for t in np.unique(task_of):
            _, path, groups, start, _ = self.tasks[t]
            local = rows[order[task_of == t]] - start
            col = pq.ParquetFile(path).read_row_groups(groups, columns=["text"]).column("text")
            texts.append(col.take(pa.array(local)).combine_chunks())
        sorted_texts = pa.concat_arrays(texts) if texts else pa.array([], pa.string())
        inverse = np.empty(len(rows), np.int64)
        inverse[order] = np.arange(len(rows))
        feats = dedup.featurize(sorted_texts.take(pa.array(inverse)), self.params, self.params.banding())
        self._memo = (rows.copy(), feats)
        return feats

    def signatures_of(self, rows: np.ndarray) -> np.ndarray:
        return self._features_of(rows).sigs

    def shingles_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self._features_of(rows)
        return f.shingles, f.shingle_offsets


def dedup_parquet(inputs: list[str | Path], out_dir: str | Path, params: dedup.Params = dedup.Params(),
                  workers: int = 2, keep_features: bool = False) -> dict[str, Any]:
    """Dedup Parquet files (columns ``id``, ``text``, any others) into ``out_dir``.

    Writes ``data-NNNNN.parquet`` (one per input row group, surviving rows in input order, input
    schema) and ``removed.parquet`` (the ledger), and returns the metrics (also written as
    ``metrics.json``). Row groups are the unit of work and of memory: write inputs with row groups
    of ~10k-100k rows. ``workers`` processes featurise in parallel (each with one Numba thread);
    they are started with ``spawn`` (Numba's thread pool is not fork-safe), so a script calling
    this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    """
    timings = Timings()
    params.check()
    if params.semantic:
        raise WinnowError("dedup_parquet: semantic dedup is not supported on the file path; use tasks.dedup.run")
    inputs = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = out_dir / "features"
    workdir.mkdir(exist_ok=True)
    tasks = _plan(inputs)
    if not tasks:
        raise WinnowError("dedup_parquet: the input files have no rows")
    banding = params.banding()
    with timings.phase("featurize"):
        _featurize_all(tasks, params, workdir, workers)

    with timings.phase("load"):
        feats, id_list = _load_features(tasks, params, workdir)
    dec = dedup.decide(feats, id_list, feats.policy, params, banding)
    timings.seconds.update(dec.timings)

    with timings.phase("write"):
        keep = _write_kept(tasks, feats, dec, params, out_dir)
        dropped = np.flatnonzero(~keep)
        removed = ledger([id_list[i] for i in dropped], dedup.STAGE, "drop", [dec.status[i] for i in dropped],
                         [dec.evidence[int(i)] for i in dropped])
        pq.write_table(concat_ledgers([removed]), out_dir / "removed.parquet")
        if not keep_features:
            shutil.rmtree(workdir)
    timings.seconds["total"] = timings.total()

    reasons = ("exact_duplicate", "near_duplicate", "semantic_duplicate", "empty_text")
    metrics = {
        "rows_in": len(id_list),
        "rows_out": int(keep.sum()),
        "removed": {r: int((dec.status == r).sum()) for r in reasons},
        **dec.metrics,
        "banding": {"bands": banding.bands, "rows": banding.rows, "threshold": banding.threshold,
                    "p_candidate_at_threshold": round(banding.p_at_threshold, 4)},
        "tasks": len(tasks),
        "workers": workers,
        "timings_s": timings.rounded(3),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _featurize_all(tasks: list[tuple], params: dedup.Params, workdir: Path, workers: int) -> None:
    """Every task's features into ``workdir`` (``features-NNNNN.parquet``), on ``workers`` spawned
    processes of one Numba thread each, or in this process."""
    params_dict = asdict(params)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_featurize_task, tasks, [params_dict] * len(tasks), [str(workdir)] * len(tasks),
                          [1] * len(tasks)))
    else:
        for task in tasks:
            _featurize_task(task, params_dict, str(workdir), 0)


def _load_features(tasks: list[tuple], params: dedup.Params, workdir: Path) -> tuple["ShardedFeatures", list[str]]:
    """The featurised shards as one view, and the ids in order; a repeated id is an error."""
    feats = ShardedFeatures([workdir / f"features-{i:05d}.parquet" for i in range(len(tasks))], tasks, params)
    counts = pc.value_counts(feats.ids).flatten()
    dup = pc.filter(counts[0], pc.greater(counts[1], 1))
    if len(dup):
        raise WinnowError(f"dedup_parquet: duplicate id {dup[0].as_py()!r} ({len(dup)} id(s) occur more than once)")
    return feats, feats.ids.to_pylist()


def _write_kept(tasks: list[tuple], feats: "ShardedFeatures", dec: Any, params: dedup.Params, out_dir: Path) -> np.ndarray:
    """Write each input's kept rows as ``data-NNNNN.parquet``; returns the keep mask."""
    keep = dec.status == "kept"
    if params.empty_text == "keep":
        keep |= feats.blank
    for (number, path, groups, start, n) in tasks:
        part = pq.ParquetFile(path).read_row_groups(groups)
        pq.write_table(part.filter(pa.array(keep[start : start + n])), out_dir / f"data-{number:05d}.parquet")
    return keep
