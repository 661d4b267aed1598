"""The store: stable fingerprints, atomic writes, manifests, lineage and the removal ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from storage import DatasetStore, code_version, derive_fingerprint, file_fingerprint, table_fingerprint
from tasks.common import ledger
from winnow.errors import WinnowError

REPO = Path(__file__).resolve().parents[1]


def _licences(n: int = 6) -> pa.Table:
    """Real text: licence files every Debian machine has."""
    files = sorted(p for p in Path("/usr/share/common-licenses").iterdir() if p.is_file() and not p.is_symlink())[:n]
    return pa.table({"id": [p.name for p in files], "text": [p.read_text(errors="replace") for p in files]})


def _put(store: DatasetStore, table: pa.Table, fp: str, **kw):
    return store.put(fingerprint=fp, stage="test", params={"a": 1}, code_version="c", parents={}, tables={"data": table}, **kw)


def test_table_fingerprint_ignores_chunking_but_not_content():
    t = _licences()
    rechunked = pa.concat_tables([t.slice(0, 2), t.slice(2)])
    assert rechunked["text"].num_chunks == 2
    assert table_fingerprint(t) == table_fingerprint(rechunked)
    changed = t.set_column(1, "text", pa.array([s + "!" if i == 3 else s for i, s in enumerate(t["text"].to_pylist())]))
    assert table_fingerprint(changed) != table_fingerprint(t)


def test_fingerprints_are_stable_across_processes(tmp_path):
    """Python's hash() is salted per process; our fingerprints must not be."""
    code = (
        "import pyarrow as pa; from storage import derive_fingerprint, table_fingerprint;"
        "print(derive_fingerprint('dedup', 'v1', {'threshold': 0.8, 'ngram': [5]}, {'corpus': 'ab'}));"
        "print(table_fingerprint(pa.table({'id': ['x', 'y'], 'text': ['héllo', 'wörld']})))"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}, cwd=REPO).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    here = f"{derive_fingerprint('dedup', 'v1', {'ngram': (5,), 'threshold': 0.8}, {'corpus': 'ab'})}\n"
    assert outs.pop().startswith(here)


def test_derived_fingerprint_changes_with_each_ingredient():
    base = derive_fingerprint("dedup", "v1", {"t": 0.8}, {"corpus": "a"})
    assert base != derive_fingerprint("dedup", "v2", {"t": 0.8}, {"corpus": "a"})
    assert base != derive_fingerprint("dedup", "v1", {"t": 0.9}, {"corpus": "a"})
    assert base != derive_fingerprint("dedup", "v1", {"t": 0.8}, {"corpus": "b"})
    assert base != derive_fingerprint("contamination", "v1", {"t": 0.8}, {"corpus": "a"})


def test_file_fingerprint_is_content_not_name(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b" / "a.jsonl"
    b.parent.mkdir()
    a.write_text('{"id": 1}\n')
    b.write_text('{"id": 1}\n')
    assert file_fingerprint([a]) == file_fingerprint([b])
    b.write_text('{"id": 2}\n')
    assert file_fingerprint([a]) != file_fingerprint([b])


def test_code_version_covers_imported_project_modules():
    """Editing tasks/common.py must invalidate stages that import it (Prefect's TASK_SOURCE would not)."""
    from storage.codeversion import _module_file, _project_imports

    imports = _project_imports("storage.store", _module_file("storage.store"))
    assert "tasks.common" in imports and "storage.fingerprint" in imports
    assert len(code_version("storage.store")) == 64


def test_manifest_round_trip_and_tables(tmp_path):
    store = DatasetStore(tmp_path / "s")
    table = _licences()
    removed = ledger(["GPL-2"], "test", "drop", "exact_duplicate", [{"duplicate_of": "GPL-3"}])
    m = _put(store, table, "ab" * 32, removed=removed, metrics={"rows_in": 7})
    again = store.manifest("ab" * 32)
    assert again == m
    assert again.tables["data"]["rows"] == table.num_rows
    assert again.removed == {"drop": {"exact_duplicate": 1}}
    assert store.table("ab" * 32).equals(table)
    assert store.resolve("abab") == "ab" * 32
    assert store.why("GPL-2")["reason"].to_pylist() == ["exact_duplicate"]
    assert store.why("MIT").num_rows == 0


def test_a_crash_mid_write_leaves_no_visible_entry(tmp_path):
    store = DatasetStore(tmp_path / "s")

    class Boom(Exception):
        pass

    class Exploding(dict):
        """Metrics that fail to serialise after the tables were written: a crash mid-write."""

        def items(self):
            raise Boom

    with pytest.raises(Boom):
        _put(store, _licences(), "cd" * 32, metrics=Exploding(x=1))
    assert not store.exists("cd" * 32)
    assert store.entries() == []
    assert list(store.staging.iterdir()) == []  # the half-written folder was removed


def test_abandoned_staging_is_invisible_and_cleanable(tmp_path):
    """A killed process leaves a staging folder; readers never see it, `store clean` removes it."""
    store = DatasetStore(tmp_path / "s")
    code = (
        "import os, pyarrow as pa; from storage import DatasetStore;"
        f"s = DatasetStore({str(tmp_path / 's')!r});"
        "import storage.store as ss; ss._fsync_tree = lambda p: os._exit(9);"  # die just before the rename
        "s.put(fingerprint='ef'*32, stage='t', params={}, code_version='c', parents={}, tables={'data': pa.table({'id': ['a']})})"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == 9
    assert not store.exists("ef" * 32) and store.entries() == []
    assert len(list(store.staging.iterdir())) == 1
    assert len(store.clean_staging(older_than_s=0)) == 1


def test_put_is_idempotent_and_replace_swaps(tmp_path):
    store = DatasetStore(tmp_path / "s")
    first = _put(store, _licences(3), "12" * 32)
    second = _put(store, _licences(4), "12" * 32)  # same fingerprint: the first writer wins
    assert second == first and store.table("12" * 32).num_rows == 3
    third = _put(store, _licences(4), "12" * 32, replace=True)
    assert third.tables["data"]["rows"] == 4 and store.table("12" * 32).num_rows == 4


def test_lineage_walks_parents_first(tmp_path):
    store = DatasetStore(tmp_path / "s")
    t = _licences(2)
    store.put(fingerprint="a" * 64, stage="ingest", params={}, code_version="c", parents={}, tables={"data": t})
    store.put(fingerprint="b" * 64, stage="dedup", params={}, code_version="c", parents={"corpus": "a" * 64}, tables={"data": t})
    store.put(fingerprint="c" * 64, stage="train", params={}, code_version="c", parents={"train": "b" * 64}, tables={"data": t})
    assert [m.stage for m in store.lineage("c" * 64)] == ["ingest", "dedup", "train"]
    store.record_run("r1", {"dedup": "b" * 64}, {})
    assert store.resolve("dedup") == "b" * 64 and store.resolve("r1:dedup") == "b" * 64


def test_unknown_refs_are_clear_errors(tmp_path):
    store = DatasetStore(tmp_path / "s")
    with pytest.raises(WinnowError, match="no store entry matches 'beef'"):
        store.resolve("beef")
    with pytest.raises(WinnowError, match="no run 'latest'"):
        store.run_record()


def test_ledger_schema_is_enforced(tmp_path):
    store = DatasetStore(tmp_path / "s")
    with pytest.raises(ValueError, match="ledger schema"):
        _put(store, _licences(2), "ff" * 32, removed=pa.table({"id": ["x"]}))
    assert store.entries() == []


def _ast_imports(name: str, path) -> set[str]:
    """The reference: every import statement the Python parser sees (what the regex replaced)."""
    import ast

    from storage.codeversion import PROJECT_PACKAGES, _module_file

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            cands = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {c for c in cands if c.split(".")[0] in PROJECT_PACKAGES and _module_file(c)}
    return found


def test_import_scan_finds_what_the_parser_finds(tmp_path):
    """The fast regex scan must never miss an import the parser sees, in any project module."""
    from pathlib import Path

    from storage.codeversion import PROJECT_PACKAGES, _project_imports

    root = Path(__file__).resolve().parents[1]
    checked = 0
    for pkg in PROJECT_PACKAGES:
        for path in sorted((root / pkg).glob("*.py")):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            assert _ast_imports(name, path) <= _project_imports(name, path), name
            checked += 1
    assert checked > 30
def test_a_table_is_written_as_bounded_shards_each_verified(tmp_path):
    """Shards of at most shard_rows rows, read back whole or streamed; `verify` checks each one."""
    store = DatasetStore(tmp_path / "s", shard_rows=2)
    table = _licences(5)
    m = _put(store, table, "ab" * 32)
    shards = m.tables["data"]["shards"]
    assert [s["rows"] for s in shards] == [2, 2, 1] and len({s["sha256"] for s in shards}) == 3
    assert [p.name for p in store.shard_paths("ab" * 32)] == ["data.parquet", "data.00001.parquet", "data.00002.parquet"]
    assert store.table("ab" * 32).equals(table)
    streamed = pa.Table.from_batches(list(store.batches("ab" * 32, columns=["id"])))
    assert streamed["id"].to_pylist() == table["id"].to_pylist()
    assert store.dataset("ab" * 32).to_table().equals(table)
    # Sharding changes files, never what the table is: the content hash is the unsharded one's.
    assert m.tables["data"]["content"] == _put(DatasetStore(tmp_path / "t"), table, "cd" * 32).tables["data"]["content"]
    with pytest.raises(WinnowError, match="3 shards"):
        store.table_path("ab" * 32)
    assert store.verify("ab" * 32) == []
    damaged = store.shard_paths("ab" * 32)[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(damaged, 0o644)
    damaged.write_bytes(bytes(data))
    problems = store.verify("ab" * 32)
    assert len(problems) == 1 and "data.00001.parquet" in problems[0]


def test_shard_bounds_follow_rows_and_bytes():
    from storage.store import shard_bounds

    t = pa.table({"text": ["x" * 992] * 10})  # 1000 bytes a row, counting 8 for the column
    assert shard_bounds(t, 4, 1 << 30) == [(0, 4), (4, 4), (8, 2)]
    assert shard_bounds(t, 100, 3000) == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert shard_bounds(t.slice(0, 0), 4, 100) == [(0, 0)]
    # A prefix shards the same whatever follows it (a grown corpus keeps its earlier shards).
    grown = pa.table({"text": ["x" * 992] * 10 + ["y" * 50_000] * 3})
    assert shard_bounds(grown, 4, 3000)[:3] == shard_bounds(t, 4, 3000)[:3]
    assert shard_bounds(pa.table({"text": ["z" * 10_000]}), 4, 3000) == [(0, 1)]  # a huge row is a shard


@pytest.mark.parametrize("shard_rows, shard_bytes", [(1000, 1 << 30), (1 << 20, 2_000_000)])
def test_a_streamed_table_is_stored_as_the_same_shards_and_content_as_the_whole_table(
        tmp_path, sample_corpus, shard_rows, shard_bytes):
    """A TableStream (an output too big for memory) arriving in uneven pieces gives the shards and
    content hash of the same rows written whole, so downstream fingerprints agree."""
    import pyarrow.parquet as pq

    from tasks.common import TableStream

    t = pq.read_table(sample_corpus)
    store = DatasetStore(tmp_path / "s", shard_rows=shard_rows, shard_bytes=shard_bytes)

    def pieces():
        start = 0
        for n in (5, 9000, 3, 1000, 0, 1):
            yield t.slice(start, n)
            start += n
        yield t.slice(start).combine_chunks().to_batches()[0]  # the rest, as one RecordBatch

    common = dict(stage="x", params={}, code_version="c", parents={})
    whole = store.put(fingerprint="a" * 64, tables={"data": t}, **common).tables["data"]
    streamed = store.put(fingerprint="b" * 64, tables={"data": TableStream(t.schema, pieces)}, **common).tables["data"]
    assert len(whole["shards"]) > 1
    # The same shards, to the bytes of each file, and the same content hash.
    assert [(s["rows"], s["sha256"]) for s in streamed["shards"]] == [(s["rows"], s["sha256"]) for s in whole["shards"]]
    assert (streamed["content"], streamed["rows"], streamed["schema"]) == (whole["content"], whole["rows"], whole["schema"])
    assert store.table("b" * 64).equals(t) and store.sharded("b" * 64).num_rows == t.num_rows
    assert store.verify("b" * 64) == []


def test_a_ref_longer_than_a_file_name_is_no_entry_not_a_crash(tmp_path):
    """Row ids and refs are typed by people; ENAMETOOLONG must read as 'no such entry'."""
    store = DatasetStore(tmp_path / "s")
    _put(store, _licences(), "f" * 64)  # the objects folder exists, so the OS is asked
    too_long = "a" * 300
    assert store.exists(too_long) is False
    with pytest.raises(WinnowError, match="no store entry matches"):
        store.resolve(too_long)


def test_a_stage_name_resolves_in_a_store_only_stage_commands_wrote(tmp_path):
    """`winnow dedup IN --out OUT` records no pipeline run; `winnow lineage dedup` must still answer."""
    store = DatasetStore(tmp_path / "s")
    _put(store, _licences(), "a" * 64)
    _put(store, _licences(3), "b" * 64)
    assert store.resolve("test") == "b" * 64  # the newest entry of that stage
    with pytest.raises(WinnowError, match="no store entry matches 'dedup'"):
        store.resolve("dedup")


def test_columns_a_stage_marks_plain_are_written_uncompressed_and_read_back_unchanged(tmp_path):
    """Hash columns (tasks.encoding.plain_field) skip Parquet's dictionary and zstd, in both the
    whole-table and the streamed write; the rows, their schema and content hash are unchanged."""
    import numpy as np
    import pyarrow.parquet as pq

    from tasks.common import TableStream
    from tasks.encoding import plain_field

    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.string()), plain_field("sig", pa.list_(pa.uint32(), 4))])
    sig = pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 2**32, 4000, dtype=np.uint32)), 4)
    t = pa.table([pa.array([f"d{i}" for i in range(1000)]), sig], schema=schema)
    store = DatasetStore(tmp_path / "s")
    common = dict(stage="x", params={}, code_version="c", parents={})
    whole = store.put(fingerprint="a" * 64, tables={"data": t}, **common)
    streamed = store.put(fingerprint="b" * 64, tables={"data": TableStream(schema, lambda: iter([t.slice(0, 300), t.slice(300)]))},
                         **common)
    for fp in ("a" * 64, "b" * 64):
        (path,) = store.shard_paths(fp)
        group = pq.ParquetFile(path).metadata.row_group(0)
        codecs = {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}
        assert codecs == {"id": "ZSTD", "sig.list.element": "UNCOMPRESSED"}
        back = store.table(fp)
        assert back.equals(t) and back.schema.field("sig").metadata == schema.field("sig").metadata
        assert store.verify(fp) == []
    assert whole.tables["data"]["content"] == streamed.tables["data"]["content"] == table_fingerprint(t)


def test_a_table_hashes_the_same_however_it_is_cut_and_whatever_buffers_hold_it():
    """The content hash names rows, not buffers: pieces that are zero-offset slices of longer
    arrays (a Parquet row group read in batches, a streamed piece) once hashed their unused tail."""
    from storage.fingerprint import TableHasher, table_fingerprint

    n = 140_000  # over two of the hasher's 65,536-row batches
    t = pa.table({"id": [f"d{i}" for i in range(n)], "x": list(range(n))})
    fresh = table_fingerprint(pa.Table.from_pylist(t.to_pylist()))
    assert table_fingerprint(t) == fresh
    for rows in (50_000, 65_536, 99_999, 7_777):
        h = TableHasher(t.schema)
        for batch in t.to_batches(max_chunksize=rows):  # each a slice of t's buffers, the first at offset 0
            h.update(batch)
        assert h.hexdigest() == fresh, rows


def test_shards_whose_rows_a_store_already_holds_are_linked_not_encoded_again(tmp_path, sample_corpus):
    """A stream of Shard pieces: a first entry encodes each once (one read, nothing to link); the
    same stage's next entry links every shard whose rows come out the same (one read, to hash)
    and writes the one that changed (read again to encode); another stage links nothing. The
    content hash is the whole table's in every case, and a store cut otherwise links nothing."""
    import pyarrow.parquet as pq

    from tasks.common import Shard, TableStream

    t = pq.read_table(sample_corpus).slice(0, 4000)
    store = DatasetStore(tmp_path / "s", shard_rows=1000)
    reads: list[int] = []

    def stream(table: pa.Table) -> TableStream:
        def shard(k: int):
            reads.append(k)
            return table.slice(k * 1000, 1000).to_batches(max_chunksize=300)

        return TableStream(table.schema, lambda: (Shard(lambda k=k: shard(k)) for k in range(4)))

    def put(fp: str, table: pa.Table, stage: str = "x", **kw) -> dict:
        reads.clear()
        info = store.put(fingerprint=fp * 64, stage=stage, params={}, code_version="c", parents={},
                         tables={"data": stream(table)}, segments={"data": [1000] * 4}, **kw).tables["data"]
        assert info["content"] == table_fingerprint(table) and store.table(fp * 64).equals(table)
        assert store.verify(fp * 64) == []
        return info

    def linked(fp: str, other: str) -> list[int]:
        theirs = store.shard_paths(other * 64)
        return [k for k, p in enumerate(store.shard_paths(fp * 64)) if any(os.path.samefile(p, q) for q in theirs)]

    put("a", t)
    assert reads == [0, 1, 2, 3]
    texts = t["text"].to_pylist()
    texts[2500] = "a row changed tonight"
    changed = t.set_column(1, "text", pa.array(texts, pa.string()))
    put("b", changed)
    assert linked("b", "a") == [0, 1, 3] and reads == [0, 1, 2, 2, 3]  # shard 2 read again to encode
    sizes = {fp[0]: (size, shared) for fp, size, shared in store.iter_sizes()}  # `store ls`: on disk once
    assert 0 < sizes["b"][1] == sum(p.stat().st_size for k, p in enumerate(store.shard_paths("b" * 64)) if k != 2)
    put("c", t, stage="y")
    assert linked("c", "a") == [] and linked("c", "b") == []
    store = DatasetStore(tmp_path / "s", shard_rows=500)  # the same store, cut finer
    assert len(put("d", t)["shards"]) == 8 and linked("d", "a") == []


def test_a_table_written_whole_links_the_shards_an_earlier_entry_holds_but_never_a_damaged_one(
        tmp_path, sample_corpus):
    """The in-memory path links too (each shard's content hash is computed before it is written);
    a damaged file is written anew rather than spread, and a forced recompute (``replace``, what a
    user runs to repair an entry) links nothing."""
    import pyarrow.parquet as pq

    t = pq.read_table(sample_corpus).slice(0, 3000)
    store = DatasetStore(tmp_path / "s", shard_rows=1000)
    kw = dict(stage="x", params={}, code_version="c", parents={})
    first = store.put(fingerprint="a" * 64, tables={"data": t}, **kw)
    paths = store.shard_paths("a" * 64)
    with open(paths[1], "r+b") as f:  # one byte of the second shard's file flipped
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    second = store.put(fingerprint="b" * 64, tables={"data": t}, **kw)
    same = [any(os.path.samefile(p, q) for q in paths) for p in store.shard_paths("b" * 64)]
    assert same == [True, False, True] and store.verify("b" * 64) == [] and store.table("b" * 64).equals(t)
    assert second.tables["data"]["content"] == first.tables["data"]["content"]
    store.put(fingerprint="b" * 64, tables={"data": t}, replace=True, **kw)
    assert not any(os.path.samefile(p, q) for p in store.shard_paths("b" * 64) for q in paths)
