"""A corpus that grows by daily drops: ``inputs.corpus`` as a folder or glob of files, one per day.

Each file is ingested on its own, as an ``ingest_corpus`` entry keyed by that file's content
(and the column mapping), so a nightly run parses only files it has not seen: an unchanged file is
a cache hit. The corpus the pipeline reads is one more ``ingest_corpus`` entry, the days' tables
concatenated in file-name order, whose parents are the per-file entries and whose shards end at
file boundaries (each day's rows are cut into shards exactly as they would be alone). A day's
shards are therefore byte for byte the same every night, and so are the fingerprints of dedup's
per-shard map tasks on them: a night with one new file computes that file's ingest, its shards'
maps, and the reduce. Downstream stages are fingerprinted by the corpus's content, so the result
equals a run over the same rows ingested as one file.

A removed file is simply absent from the new combined entry (its own entry stays in the store,
unused); an edited file has new content, so its ingest and its shards' maps are recomputed. Ids
must be unique across files: a repeat is an error naming both files and the id, raised before
anything is written.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.stagetask import Prepared, StagePlan, commit, fingerprint_of, ingest_metrics, plan_ingest, prepare_ingest
from storage import DatasetStore, code_version
from tasks.common import StageResult
from winnow import io as wio
from winnow.errors import WinnowError
from winnow.stages import CORPUS

GLOB_CHARS = "*?["
DATA_SUFFIXES = (".parquet", ".pq", *wio.JSONL_SUFFIXES)


def drop_files(corpus: str) -> list[Path] | None:
    """The daily files of ``corpus`` in file-name order, or None when it is a single input.

    A glob (``drops/2026-12-*.jsonl``) or a folder that is not a saved ``datasets`` folder is a
    set of drops. In a folder, files and folders whose names start with ``.`` or ``_`` are skipped
    (``_SUCCESS`` markers, editors' files); any other file must be Parquet or JSON Lines.
    """
    path = Path(corpus).expanduser()
    if not path.exists() and any(c in corpus for c in GLOB_CHARS):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise WinnowError(f"inputs.corpus: '{corpus}' matches no file")
        return [_data_file(p, corpus) for p in found]
    wio.check_exists(path)
    if not path.is_dir() or (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return None
    found = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    found = [p for p in found if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)]
    if not found:
        raise WinnowError(f"{path}: folder holds no data file (daily drops are .parquet or .jsonl[.gz] files)")
    return [_data_file(p, str(path)) for p in found]


def _data_file(path: Path, where: str) -> Path:
    if not path.name.lower().endswith(DATA_SUFFIXES):
        raise WinnowError(f"{path}: not a Parquet or JSON Lines file, in the daily drops {where} "
                          "(rename it with a leading '_' or '.' to keep it there unread)")
    return path


def plan_drops(files: list[Path], columns: dict[str, Any]) -> tuple[list[StagePlan], StagePlan]:
    """One ingest plan per file, and the plan of the combined corpus over their entries.

    The combined entry is named by the per-file entries' fingerprints in order (file content and
    column mapping), not by the files' paths, so moving the folder changes nothing.
    """
    days = [plan_ingest("corpus", [str(f)], columns) for f in files]
    parents = {f"file{i}:{f.name}": fingerprint_of(p) for i, (f, p) in enumerate(zip(files, days))}
    params = {"paths": [str(f.resolve()) for f in files], "columns": columns, "drops": True}
    return days, StagePlan(CORPUS, parents, params, code_version("winnow.drops"))


@dataclass
class Drops:
    """A drops corpus read and checked in memory, not yet committed (see :func:`prepare`)."""

    combined: Prepared
    days: list[Prepared] = field(default_factory=list)  # empty: the combined entry is in the store

    @property
    def fingerprint(self) -> str:
        return self.combined.fingerprint

    @property
    def table(self) -> pa.Table:
        return self.combined.table

    @property
    def cached(self) -> bool:
        return self.combined.result is None


def prepare(store: DatasetStore, files: list[Path], columns: dict[str, Any]) -> Drops:
    """Plan, read and check a drops corpus without writing anything.

    Only files with no entry yet are parsed; the others come from their entries. When the
    combined entry exists already, nothing is read but it.
    """
    day_plans, plan = plan_drops(files, columns)
    fp = fingerprint_of(plan)
    if store.exists(fp):
        return Drops(Prepared(plan, store.table(fp)))
    days = [prepare_ingest(p, store) for p in day_plans]
    # A new file's rows as a later night will read them back from its entry: a Parquet round
    # trip may re-spell types (nested lists), and the day's shards must be the same every night.
    tables = [d.table if d.result is None else _as_stored(d.table) for d in days]
    _check_unique_across(tables, files)
    table = _concat(tables, files)
    result = StageResult(tables={"data": table}, metrics={**ingest_metrics(table), "files": len(files)},
                         segments={"data": [t.num_rows for t in tables]})
    inputs = [{"path": str(f.resolve()), "entry": d.fingerprint, "fingerprint": next(iter(d.plan.parents.values())),
               "rows": d.table.num_rows, "new": d.result is not None} for f, d in zip(files, days)]
    return Drops(Prepared(plan, table, result, inputs), days)


def commit_drops(drops: Drops, store: DatasetStore) -> str:
    """Write the new files' entries, then the combined corpus; returns the corpus fingerprint."""
    for day in drops.days:
        commit(day, store)  # a no-op for a file whose entry exists
    return commit(drops.combined, store)


def ingest(store: DatasetStore, files: list[Path], columns: dict[str, Any]) -> tuple[str, bool]:
    """Prepare and commit a drops corpus; returns its fingerprint and whether it was in the store."""
    drops = prepare(store, files, columns)
    return commit_drops(drops, store), drops.cached


def _as_stored(table: pa.Table) -> pa.Table:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with pq.ParquetFile(pa.BufferReader(sink.getvalue())) as f:
        return f.read()


def _check_unique_across(tables: list[pa.Table], files: list[Path]) -> None:
    """Each file's ids are unique already (its ingest checks); a repeat is across two files."""
    if len(tables) < 2:
        return
    ids = pa.chunked_array([t["id"] for t in tables])
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated.field("values")[0]
        holders = [f for f, t in zip(files, tables) if pc.any(pc.equal(t["id"], first)).as_py()]
        raise WinnowError(f"{holders[0]} and {holders[1]}: both hold id {first.as_py()!r} ({len(repeated)} id(s) "
                          "repeat across the daily files); ids must be unique across all files of inputs.corpus")


def _concat(tables: list[pa.Table], files: list[Path]) -> pa.Table:
    """The days in order; a column whose type differs between two files is named with both."""
    try:
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    seen: dict[str, tuple[pa.DataType, Path]] = {}
    for f, t in zip(files, tables):
        for col in t.schema:
            if pa.types.is_null(col.type):
                continue
            first = seen.setdefault(col.name, (col.type, f))
            if first[0] != col.type:
                raise WinnowError(f"{f}: column '{col.name}' is {col.type} here but {first[0]} in {first[1]}; "
                                  "give it one type in every daily file") from None
    raise WinnowError(f"{files[0].parent}: the daily files' columns cannot be combined") from None
