"""Reading users' files: every bad input gets one clear error naming the file, row or column."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow import io as wio
from winnow.errors import WinnowError


def _docs(n: int = 5) -> list[dict]:
    files = sorted(Path("/usr/lib/python3.11/json").glob("*.py"))[:n]
    return [{"doc_id": f"py:{p.name}", "body": p.read_text(), "domain": "code"} for p in files]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


COLS = wio.Columns(id="doc_id", text="body")


def test_reads_parquet_jsonl_gzip_and_datasets_the_same(tmp_path):
    rows = _docs()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    _jsonl(tmp_path / "d.jsonl", rows)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    tables = [wio.canonical_corpus(wio.read_table(tmp_path / n), COLS, n) for n in ("d.parquet", "d.jsonl", "d.jsonl.gz", "hf")]
    for t in tables:
        assert t.column_names[:3] == ["id", "text", "domain"]
        assert t["id"].to_pylist() == [r["doc_id"] for r in rows]
        assert t["text"].to_pylist() == [r["body"] for r in rows]


def test_missing_file(tmp_path):
    with pytest.raises(WinnowError, match=r"nope\.parquet: no such file"):
        wio.read_table(tmp_path / "nope.parquet")


def test_truncated_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(_docs()), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WinnowError, match=r"t\.parquet: not a readable Parquet"):
        wio.read_table(path)


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"doc_id": "a", "body": "x"}\n{"doc_id": "b", "body": \n')
    with pytest.raises(WinnowError, match=r"b\.jsonl:2: invalid JSON"):
        wio.read_table(path)


def test_invalid_utf8_in_jsonl_is_named(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"doc_id": "a", "body": "ok"}\n{"doc_id": "b", "body": "bad \xff byte"}\n')
    with pytest.raises(WinnowError, match=r"u\.jsonl:2: invalid UTF-8"):
        wio.read_table(path)


def test_invalid_utf8_in_parquet_is_named(tmp_path):
    table = pa.table({"doc_id": ["a", "b"], "body": pa.array([b"fine", b"bad \xff"], pa.binary())})
    with pytest.raises(WinnowError, match=r"column 'body' has invalid UTF-8 at row 1 \(id 'b'\)"):
        wio.canonical_corpus(table, COLS, "x.parquet")


def test_missing_text_column_names_the_columns(tmp_path):
    table = pa.Table.from_pylist(_docs())
    with pytest.raises(WinnowError, match=r"missing text column 'text' \(columns: doc_id, body, domain; choose another with --text-column\)"):
        wio.canonical_corpus(table, wio.Columns(id="doc_id"), "in.parquet")


def test_null_and_non_text_values_are_named():
    table = pa.table({"doc_id": ["a", "b", "c"], "body": ["x", None, "z"]})
    with pytest.raises(WinnowError, match=r"column 'body' is null at row 1 \(id 'b'\)"):
        wio.canonical_corpus(table, COLS, "in")
    table = pa.table({"doc_id": ["a", "b"], "body": [1.5, 2.5]})
    with pytest.raises(WinnowError, match=r"column 'body' must hold text, but has type double"):
        wio.canonical_corpus(table, COLS, "in")


def test_duplicate_ids_are_named():
    table = pa.table({"doc_id": ["a", "b", "a"], "body": ["x", "y", "z"]})
    with pytest.raises(WinnowError, match=r"1 duplicated id\(s\); e\.g\. 'a' at rows \[0, 2\]"):
        wio.canonical_corpus(table, COLS, "in")


def test_empty_dataset():
    with pytest.raises(WinnowError, match="the dataset is empty"):
        wio.canonical_corpus(pa.table({"doc_id": pa.array([], pa.string()), "body": pa.array([], pa.string())}), COLS, "in")


def test_integer_ids_and_labels_become_strings_and_extras_pass_through():
    table = pa.table({"doc_id": [1, 2], "body": ["x", "y"], "label": [0, 1], "score": [0.5, 0.7]})
    out = wio.canonical_corpus(table, COLS, "in")
    assert out["id"].to_pylist() == ["1", "2"] and out["label"].to_pylist() == ["0", "1"]
    assert out["score"].to_pylist() == [0.5, 0.7] and out["domain"].to_pylist() == ["default", "default"]


def test_benchmarks_accept_letters_and_keep_unknown_fields(tmp_path):
    table = pa.Table.from_pylist([
        {"question": "2+2?", "choices": ["3", "4"], "answer": "B", "target": None},
        {"question": "def f():", "choices": None, "answer": None, "target": "return 1"},
    ])
    out = wio.canonical_benchmarks(table, "b.jsonl", "mine")
    assert out["answer"].to_pylist() == [1, -1]
    assert out["target"].to_pylist() == ["4", "return 1"]
    assert out["id"].to_pylist() == ["mine/0", "mine/1"]
    kept = wio.canonical_benchmarks(pa.Table.from_pylist([{"question": "x", "subject": "law"}]), "b.jsonl", "b")
    assert json.loads(kept["extra"][0].as_py()) == {"subject": "law"}
    with pytest.raises(WinnowError, match=r"cannot tell the benchmark format from its fields \(qestion\)"):
        wio.canonical_benchmarks(pa.Table.from_pylist([{"qestion": "x"}]), "b.jsonl", "b")
    with pytest.raises(WinnowError, match=r"1 item\(s\) have no searchable text"):
        wio.canonical_benchmarks(pa.Table.from_pylist([{"question": "  "}]), "b.jsonl", "b")
    with pytest.raises(WinnowError, match=r"row 0: 'answer' 'E' is not a valid choice"):
        wio.canonical_benchmarks(pa.Table.from_pylist([{"question": "q", "choices": ["a", "b"], "answer": "E"}]), "b.jsonl", "b")


def test_an_exported_file_does_not_depend_on_how_the_table_is_chunked(sample_corpus, tmp_path):
    """A result fresh from a stage and the same rows read back from the store's shards are
    chunked differently; the user's file must be the same bytes (a rerun after kill -9 is)."""
    t = pq.read_table(sample_corpus)
    pieces = pa.concat_tables([t.slice(s, 997) for s in range(0, t.num_rows, 997)])
    assert t.equals(pieces) and len(t["text"].chunks) != len(pieces["text"].chunks)
    one = wio.export_table(t, tmp_path / "one.parquet").read_bytes()
    assert wio.export_table(pieces, tmp_path / "pieces.parquet").read_bytes() == one
    assert pq.read_table(tmp_path / "one.parquet").equals(t)
    assert pq.read_table(wio.export_table(t.slice(0, 0), tmp_path / "empty.parquet")).num_rows == 0


def test_export_restores_user_column_names(tmp_path):
    out = wio.canonical_corpus(pa.Table.from_pylist(_docs(2)), COLS, "in")
    path = wio.export_table(out, tmp_path / "o.parquet", COLS)
    assert pq.read_table(path).column_names[:2] == ["doc_id", "body"]


def _ingest_both_ways(tmp_path: Path, path: Path, monkeypatch, columns: dict | None = None):
    """The same input ingested streamed (``execute``, as flows do) and whole (``prepare_ingest``,
    as one-stage commands do), each into its own store; returns both stores and the entry."""
    from flows.stagetask import commit, execute, plan_ingest, prepare_ingest
    from storage import DatasetStore

    monkeypatch.setattr(wio, "PIECE_ROWS", 700)  # several pieces, none aligned with shards or row groups
    plan = plan_ingest("corpus", [str(path)], columns or {})
    streamed, whole = DatasetStore(tmp_path / "streamed"), DatasetStore(tmp_path / "whole")
    for store in (streamed, whole):
        store.configure(shard_rows=1000)
    fp = execute(plan, str(streamed.root))
    assert commit(prepare_ingest(plan, whole), whole) == fp
    return streamed, whole, fp


def test_a_parquet_corpus_is_ingested_in_pieces_into_the_same_entry_as_read_whole(tmp_path, sample_corpus, monkeypatch):
    """A flow's ingest streams Parquet (a corpus need not fit in memory); the entry must be the one
    reading it whole gives, to the bytes of each shard, so every later fingerprint agrees."""
    t = pq.read_table(sample_corpus).slice(0, 3500)
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(t.slice(0, 1800), folder / "a.parquet", row_group_size=500)
    pq.write_table(t.slice(1800), folder / "b.parquet", row_group_size=5000)
    calls = []
    real = wio.read_table
    monkeypatch.setattr(wio, "read_table", lambda *a, **k: calls.append(a) or real(*a, **k))
    streamed, whole, fp = _ingest_both_ways(tmp_path, folder, monkeypatch)
    assert len(calls) == 1  # the whole read is prepare_ingest's; the flow's ingest never read it whole
    a, b = streamed.manifest(fp), whole.manifest(fp)
    assert a.tables["data"]["shards"] == b.tables["data"]["shards"] and len(a.tables["data"]["shards"]) == 4
    assert a.tables["data"]["content"] == b.tables["data"]["content"]
    assert a.metrics == b.metrics and a.metrics["rows_out"] == 3500 and sum(a.metrics["rows_by_domain"].values()) == 3500
    assert streamed.table(fp).equals(wio.canonical_corpus(t, wio.Columns(), "t"))


@pytest.mark.parametrize("bad", ["null_text", "duplicate_id"])
def test_a_bad_row_deep_in_a_streamed_ingest_names_its_row_and_leaves_no_entry(tmp_path, sample_corpus, monkeypatch, bad):
    """The checks of a streamed ingest run as the pieces pass: a bad row in a late piece must still
    give the whole input's row number, and nothing may be committed or left staged."""
    from flows.stagetask import execute, plan_ingest
    from storage import DatasetStore

    t = pq.read_table(sample_corpus, columns=["id", "text", "domain"]).slice(0, 3000)
    if bad == "null_text":
        text = t["text"].to_pylist()
        text[2345] = None
        t = t.set_column(1, "text", pa.array(text, pa.string()))
        expected = f"column 'text' is null at row 2345 (id {t['id'][2345].as_py()!r})"
    else:
        ids = t["id"].to_pylist()
        ids[2900] = ids[10]
        t = t.set_column(0, "id", pa.array(ids))
        expected = f"column 'id' has 1 duplicated id(s); e.g. {ids[10]!r} at rows [10, 2900]"
    pq.write_table(t, tmp_path / "c.parquet", row_group_size=400)
    monkeypatch.setattr(wio, "PIECE_ROWS", 700)
    store = DatasetStore(tmp_path / "s")
    store.configure(shard_rows=1000)
    with pytest.raises(WinnowError) as e:
        execute(plan_ingest("corpus", [str(tmp_path / "c.parquet")], {}), str(store.root))
    assert str(e.value) == f"{tmp_path / 'c.parquet'}: {expected}"
    assert list(store.objects.iterdir()) == [] and list(store.staging.iterdir()) == []


def test_inputs_that_cannot_stream_are_read_whole(tmp_path, sample_corpus):
    """JSON Lines, a folder mixing formats or schemas, and dictionary columns keep the whole read."""
    t = pq.read_table(sample_corpus).slice(0, 50)
    _jsonl(tmp_path / "c.jsonl", t.to_pylist())
    assert wio.streamable_parquet(tmp_path / "c.jsonl") is None
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(t, mixed / "a.parquet")
    pq.write_table(t.drop_columns(["domain"]), mixed / "b.parquet")
    assert wio.streamable_parquet(mixed) is None
    pq.write_table(t.set_column(2, "domain", t["domain"].dictionary_encode()), tmp_path / "d.parquet")
    assert wio.streamable_parquet(tmp_path / "d.parquet") is None
    pq.write_table(t, tmp_path / "ok.parquet")
    assert wio.streamable_parquet(tmp_path / "ok.parquet") == [tmp_path / "ok.parquet"]
