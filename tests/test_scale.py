"""Sharded store entries and dedup as map / reduce over shards, in process and on a Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage import DatasetStore
from tasks import dedup
from winnow.cli import main
from winnow.errors import WinnowError

REPO = Path(__file__).resolve().parents[1]
SHARD = 1000  # rows per shard in these stores: 3-4 shards per corpus


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, sample_corpus) -> tuple[Path, Path]:
    """3000 real rows of the bundled sample (with real exact and near duplicates), and the same
    corpus grown by one shard's worth of new rows at the end (a nightly's new documents)."""
    t = pq.read_table(sample_corpus).select(["id", "text", "domain"])
    folder = tmp_path_factory.mktemp("corpora")
    pq.write_table(t.slice(0, 3000), folder / "base.parquet")
    pq.write_table(t.slice(0, 4000), folder / "grown.parquet")
    return folder / "base.parquet", folder / "grown.parquet"


def _sharded_store(root: Path) -> DatasetStore:
    store = DatasetStore(root)
    store.configure(shard_rows=SHARD)
    return store


def _computed(store: DatasetStore, since: int = 0) -> list[str]:
    return sorted(e["stage"] for e in store.journal_events()[since:] if e["event"] == "computed")


def _dedup(path: Path, store: Path, out: Path, capsys) -> str:
    assert main(["dedup", str(path), "--out", str(out), "--store", str(store)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("store entry"))
    return line.split()[2]


def test_map_reduce_dedup_equals_one_process_and_a_grown_corpus_maps_only_its_new_shard(corpora, tmp_path, capsys):
    base, grown = corpora
    one = _dedup(base, tmp_path / "plain", tmp_path / "plain.parquet", capsys)
    sharded = _sharded_store(tmp_path / "sharded")
    assert _dedup(base, sharded.root, tmp_path / "sharded.parquet", capsys) == one  # the same entry name
    assert _computed(sharded) == ["dedup", "dedup_map", "dedup_map", "dedup_map", "ingest_corpus"]
    assert pq.read_table(tmp_path / "sharded.parquet").equals(pq.read_table(tmp_path / "plain.parquet"))
    fp = next(m.fingerprint for m in sharded.entries() if m.stage == "dedup")
    whole = dedup.run(pq.read_table(base), dedup.Params())  # the single-process keep-set
    assert sharded.table(fp)["id"].equals(whole.tables["data"]["id"]) and whole.removed.num_rows > 100
    assert sharded.removed(fp).equals(whole.removed) and sharded.table(fp, "index").equals(whole.tables["index"])
    assert len(sharded.manifest(fp).hints["features"].split(",")) == 3
    assert sharded.manifest(fp).metrics["reduce"]["shards"] == 3  # the bounded-memory reduce ran

    before = len(sharded.journal_events())
    _dedup(grown, sharded.root, tmp_path / "grown.parquet", capsys)
    assert _computed(sharded, before) == ["dedup", "dedup_map", "ingest_corpus"]  # one new shard, then the reduce
    grown_whole = dedup.run(pq.read_table(grown), dedup.Params())
    assert pq.read_table(tmp_path / "grown.parquet")["id"].equals(grown_whole.tables["data"]["id"])
    # The old shards' kept rows and index rows come out as last night's: linked, not encoded again.
    new = next(m.fingerprint for m in sharded.entries() if m.stage == "dedup" and m.fingerprint != fp)
    assert _linked(sharded, new, fp, "data") == [0, 1, 2] and _linked(sharded, new, fp, "index") == [0, 1, 2]
    assert main(["store", "verify", "--store", str(sharded.root)]) == 0


def _planted(corpus: Path, benchmarks: Path, folder: Path) -> tuple[Path, Path]:
    """The 3000 / 4000-row corpora with benchmark items written into documents of every shard:
    whole items, first halves (partial copies) and items cut to their last 12 words."""
    from winnow import io as wio

    items = wio.canonical_benchmarks(pq.read_table(benchmarks), "b.parquet", "sample")
    texts = [f"{q} {a}" for q, a in zip(items["question"].to_pylist(), items["target"].to_pylist())]
    t = pq.read_table(corpus)
    docs = t["text"].to_pylist()
    for k, row in enumerate(range(7, len(docs), 53)):
        words = texts[k * 7 % len(texts)].split()
        part = [words, words[: len(words) // 2], words[-12:]][k % 3]
        docs[row] = f"{docs[row]} {' '.join(part)}"
    grown = t.set_column(t.column_names.index("text"), "text", pa.array(docs, pa.string()))
    pq.write_table(grown.slice(0, 3000), folder / "planted-base.parquet")
    pq.write_table(grown, folder / "planted-grown.parquet")
    return folder / "planted-base.parquet", folder / "planted-grown.parquet"


def _contamination(path: Path, bench: Path, store: Path, out: Path, capsys, *extra: str) -> str:
    assert main(["contamination", str(path), "--benchmark", str(bench), "--out", str(out), "--store", str(store),
                 *extra]) == 0
    return next(x for x in capsys.readouterr().out.splitlines() if x.startswith("store entry")).split()[2]


def test_contamination_scans_shard_by_shard_with_the_one_process_result(corpora, sample_benchmarks, tmp_path, capsys):
    """One contamination_scan map task per shard, then the reduce: the same entry and tables as
    one process; a new threshold reuses every scan, a grown corpus scans only its new shard."""
    _, grown_rows = corpora
    base, grown = _planted(grown_rows, sample_benchmarks, tmp_path)
    one = _contamination(base, sample_benchmarks, tmp_path / "plain", tmp_path / "plain.parquet", capsys)
    plain = DatasetStore(tmp_path / "plain")
    one = plain.resolve(one)
    assert plain.manifest(one).metrics["examples_contaminated"] > 40  # real work on every shard
    sharded = _sharded_store(tmp_path / "sharded")
    assert one.startswith(_contamination(base, sample_benchmarks, sharded.root, tmp_path / "sharded.parquet", capsys))
    assert _computed(sharded) == ["contamination", "contamination_index"] + ["contamination_scan"] * 3 + [
        "ingest_benchmarks", "ingest_corpus"]
    assert sharded.manifest(one).metrics["shard_scans"] == 3  # the reduce took the scans
    assert main(["lineage", one, "--store", str(sharded.root)]) == 0
    assert "reused from: scans=3 map entries (" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "sharded.parquet").equals(pq.read_table(tmp_path / "plain.parquet"))
    assert sharded.table(one, "report").equals(plain.table(one, "report")) and sharded.removed(one).equals(plain.removed(one))

    before = len(sharded.journal_events())
    _contamination(base, sample_benchmarks, sharded.root, tmp_path / "strict.parquet", capsys,
                   "--set", "contamination.min_longest_match=30")
    assert _computed(sharded, before) == ["contamination"]  # thresholds are not the scan's

    before = len(sharded.journal_events())
    fp = _contamination(grown, sample_benchmarks, sharded.root, tmp_path / "grown.parquet", capsys)
    assert _computed(sharded, before) == ["contamination", "contamination_scan", "ingest_corpus"]
    assert fp == _contamination(grown, sample_benchmarks, tmp_path / "plain", tmp_path / "grown-plain.parquet", capsys)
    assert pq.read_table(tmp_path / "grown.parquet").equals(pq.read_table(tmp_path / "grown-plain.parquet"))
    assert main(["store", "verify", "--store", str(sharded.root)]) == 0


def _map_entries(store: DatasetStore, corpus_path: Path, params: dedup.Params) -> tuple[str, list[str]]:
    """Ingest ``corpus_path`` into ``store`` and compute each shard's dedup_map entry."""
    from flows.graph import map_hints
    from flows.stagetask import execute, plan_ingest, run_in_turn
    from winnow.stages import spec

    corpus = execute(plan_ingest("corpus", [str(corpus_path)], {"split": None, "id": "id", "text": "text",
                                                                 "domain": "domain", "label": "label"}), str(store.root))
    hints = map_hints(spec("dedup"), store, {"corpus": corpus}, params, run_in_turn(store))
    return corpus, [r.split("/")[0] for r in hints["features"].split(",")]


def _whole(table) -> pa.Table:
    return table if isinstance(table, pa.Table) else table.read_all()


@pytest.mark.parametrize("keep, max_bucket", [("first", 32), ("longest", 2)])
def test_bounded_reduce_equals_one_process_whatever_the_partition_count(corpora, tmp_path, keep, max_bucket):
    """The reduce over map entries, its band keys cut into 1, several or very many partitions on
    disk, gives the in-memory run's tables and ledger; max_bucket=2 makes every bucket of 3+ a
    star and chain, whose pairs depend on the order of its members."""
    from tasks import dedup_reduce

    base, _ = corpora
    params = dedup.Params(keep=keep, max_bucket=max_bucket)
    store = _sharded_store(tmp_path / "s")
    corpus, maps = _map_entries(store, base, params)
    whole = dedup.run(pq.read_table(base), params)
    assert whole.metrics["near"]["candidate_pairs"] > 50
    seen, chunks = set(), set()
    for budget in (1 << 30, 200_000, 20_000):
        spill = tmp_path / f"spill-{budget}"
        spill.mkdir()
        got = dedup_reduce.run(store.sharded(corpus), [store.sharded(m) for m in maps], params, spill, budget)
        seen.add(got.metrics["reduce"]["partitions"])
        chunks.add(got.metrics["reduce"]["score_chunks"])
        assert _whole(got.tables["data"]).equals(whole.tables["data"])
        assert _whole(got.tables["index"]).equals(whole.tables["index"])
        assert got.removed.equals(whole.removed)
        assert got.metrics["near"] == whole.metrics["near"] and not list(spill.iterdir())
    assert len(seen) == 3 and 1 in seen and max(seen) > 50
    # Two scorings (candidate pairs, then each loser with its survivor): one chunk each at 1 GB, then
    # a budget's worth of pairs at a time.
    assert 2 in chunks and max(chunks) > 10


def test_bounded_reduce_rejects_a_duplicate_id_across_shards(tmp_path):
    """Each map task checks its own shard; an id repeated in two shards is the reduce's to name."""
    from tasks import dedup_reduce

    t = pa.table({"id": [f"d{i}" for i in range(1500)] + ["d7"], "text": [f"text number {i} here" for i in range(1501)]})
    path = tmp_path / "dup.parquet"
    pq.write_table(t, path)
    store = _sharded_store(tmp_path / "s")
    from flows.stagetask import execute, plan_ingest

    with pytest.raises(Exception, match="d7"):  # the ingest already refuses it ...
        execute(plan_ingest("corpus", [str(path)], {"split": None, "id": "id", "text": "text", "domain": "domain",
                                                    "label": "label"}), str(store.root))
    parts = [store.put(fingerprint=c * 64, stage="x", params={}, code_version="c", parents={},
                       tables={"data": t.slice(s, n)}).fingerprint for c, (s, n) in zip("ab", ((0, 1000), (1000, 501)))]
    feats = [store.put(fingerprint=c * 64, stage="x", params={}, code_version="c", parents={},
                       tables={"data": dedup.features_table(dedup.featurize(store.table(p)["text"], dedup.Params(),
                                                                            dedup.Params().banding()))}).fingerprint
             for c, p in zip("cd", parts)]
    spill = tmp_path / "spill"
    spill.mkdir()
    sharded = store.sharded(parts[0])
    both = type(sharded)(sharded.paths + store.sharded(parts[1]).paths, (1000, 501))
    with pytest.raises(WinnowError, match="duplicate id 'd7'"):  # ... and so does the reduce
        dedup_reduce.run(both, [store.sharded(f) for f in feats], dedup.Params(), spill)


def _start_cluster(tmp_path: Path) -> tuple[str, list[subprocess.Popen]]:
    """A real local cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    dask = str(Path(sys.executable).with_name("dask"))
    env = dict(os.environ, PYTHONPATH=str(REPO))  # as an installed winnow would be importable
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not info.is_file() and time.time() < deadline:
        time.sleep(0.2)
    address = json.loads(info.read_text())["address"]
    for k in range(2):
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                       "--host", "127.0.0.1", "--name", f"w{k}"], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=90)
    return address, procs


def _run_dedup(store: Path, corpus: Path, tmp_path: Path, *runner: str) -> dict:
    from prefect.settings import PREFECT_API_URL

    cmd = [str(Path(sys.executable).with_name("winnow")), "run", "--profile", "smoke", "--store", str(store), "--json",
           "--set", f"inputs.corpus={json.dumps(str(corpus))}", "--only", "dedup", *runner]
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow  # two `winnow run` processes and a cluster: ~4 min on the shared 2-core box
def test_map_tasks_run_on_an_existing_dask_cluster_with_the_threaded_result(prefect_server, corpora, tmp_path):
    pytest.importorskip("prefect_dask")
    base, _ = corpora
    threads = _sharded_store(tmp_path / "threads")
    on_dask = _sharded_store(tmp_path / "dask")
    address, procs = _start_cluster(tmp_path)
    try:
        mine = _run_dedup(on_dask.root, base, tmp_path, "--set", "run.task_runner=dask",
                          "--set", f"run.runner_address={json.dumps(address)}")
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    theirs = _run_dedup(threads.root, base, tmp_path)
    fp = mine["outputs"]["dedup"]
    assert fp == theirs["outputs"]["dedup"]
    assert on_dask.table(fp).equals(threads.table(fp)) and on_dask.removed(fp).equals(threads.removed(fp))
    maps = {m.fingerprint for m in on_dask.entries() if m.stage == "dedup_map"}
    assert len(maps) == 3 and maps == {m.fingerprint for m in threads.entries() if m.stage == "dedup_map"}
    # The map tasks (and the reduce) ran in the workers' processes, not in the flow's, which
    # committed the ingest.
    pids = {e["stage"]: set() for e in on_dask.journal_events()}
    for e in on_dask.journal_events():
        if e["event"] == "computed":
            pids[e["stage"]].add(e["pid"])
    assert pids["dedup_map"] and not (pids["dedup_map"] | pids["dedup"]) & pids["ingest_corpus"]
    assert pa.concat_tables([on_dask.table(m) for m in sorted(maps)]).num_rows == 3000


def _kill_dedup_when(base: Path, store: DatasetStore, tmp_path: Path, ready) -> bool:
    """Start `winnow dedup` in a child process and kill -9 it once ``ready()``; True if it was killed."""
    cmd = [sys.executable, "-m", "winnow.cli", "dedup", str(base), "--out", str(tmp_path / "o.parquet"),
           "--store", str(store.root)]
    child = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not ready() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    child.kill()
    return child.wait() == -9


def test_a_sharded_dedup_killed_midway_reruns_to_the_same_entries(corpora, tmp_path, capsys):
    """kill -9 after the first map entry is committed; the rerun computes only what is missing."""
    base, _ = corpora
    reference = _dedup(base, tmp_path / "plain", tmp_path / "plain.parquet", capsys)
    store = _sharded_store(tmp_path / "store")
    _kill_dedup_when(base, store, tmp_path, lambda: any(m.stage == "dedup_map" for m in store.entries()))
    done = {m.fingerprint for m in store.entries() if m.stage == "dedup_map"}
    assert 1 <= len(done) < 3 and not any(m.stage == "dedup" for m in store.entries()), "killed mid-map"
    before = len(store.journal_events())
    assert _dedup(base, store.root, tmp_path / "o.parquet", capsys) == reference
    assert _computed(store, before) == ["dedup"] + ["dedup_map"] * (3 - len(done))
    assert pq.read_table(tmp_path / "o.parquet").equals(pq.read_table(tmp_path / "plain.parquet"))
    assert main(["store", "verify", "--store", str(store.root)]) == 0


def test_a_dedup_killed_in_its_reduce_reruns_to_the_same_entry(corpora, tmp_path, capsys):
    """kill -9 once every map entry is committed and the reduce has made its spill folder; the
    rerun computes only the reduce, names the same entry, and `store clean` sweeps the dead folder."""
    base, _ = corpora
    reference = _dedup(base, tmp_path / "plain", tmp_path / "plain.parquet", capsys)
    store = _sharded_store(tmp_path / "store")
    killed = _kill_dedup_when(base, store, tmp_path, lambda: bool(list(store.staging.glob("scratch-*"))))
    assert killed, "the command ended before its reduce could be killed"
    assert sum(m.stage == "dedup_map" for m in store.entries()) == 3
    assert not any(m.stage == "dedup" for m in store.entries())
    before = len(store.journal_events())
    assert _dedup(base, store.root, tmp_path / "o.parquet", capsys) == reference
    assert _computed(store, before) == ["dedup"]
    assert pq.read_table(tmp_path / "o.parquet").equals(pq.read_table(tmp_path / "plain.parquet"))
    assert [p.name.startswith("scratch-") for p in store.clean()["staging"]] == [True]


def test_a_shard_is_named_by_its_rows_not_by_how_its_file_was_spelled(corpora, tmp_path):
    """The same rows ingested from one file or from two (a chunk boundary inside a shard, so the
    Parquet pages differ) give the same map-task fingerprints: a nightly whose corpus is a folder
    of daily files recomputes only its new shard."""
    from flows.stagetask import plan_stage, shard_ref

    base, _ = corpora
    t = pq.read_table(base)
    folder = tmp_path / "days"
    folder.mkdir()
    pq.write_table(t.slice(0, 1500), folder / "a.parquet")
    pq.write_table(t.slice(1500), folder / "b.parquet")
    fingerprints = []
    for name, source in (("one", base), ("two", folder)):
        store = _sharded_store(tmp_path / name)
        corpus, _ = _map_entries(store, source, dedup.Params())
        shards = store.manifest(corpus).tables["data"]["shards"]
        fingerprints.append([plan_stage("dedup_map", {"shard": shard_ref(corpus, k)}, dedup.Params(), store=store)
                             .fingerprint for k in range(len(shards))])
    assert fingerprints[0] == fingerprints[1] and len(fingerprints[0]) == 3


@pytest.mark.parametrize("action", ["mask", "drop"])
def test_a_sharded_contamination_reduce_streams_the_corpus_and_equals_the_in_memory_run(
        corpora, sample_benchmarks, tmp_path, monkeypatch, action):
    """The reduce on a sharded corpus (no copy in memory) reads the ids whole and only the rows
    that hold evidence, then writes the acted-on corpus a row group at a time: the same tables,
    ledger and metrics as the in-memory run, with masks and drops in many row groups."""
    from dataclasses import replace

    import storage.store as st
    from flows.stagetask import execute, plan_ingest
    from tasks import contamination
    from tasks.common import TableStream
    from tasks.shards import Pieces
    from winnow import io as wio

    monkeypatch.setattr(st, "ROW_GROUP_ROWS", 300)  # 4 row groups a shard
    base, _ = _planted(corpora[1], sample_benchmarks, tmp_path)
    store = _sharded_store(tmp_path / "s")
    corpus = replace(store.sharded(execute(plan_ingest("corpus", [str(base)], {}), str(store.root))), in_memory=None)
    items = wio.canonical_benchmarks(pq.read_table(sample_benchmarks), "b.parquet", "sample")
    params = contamination.Params(action=action)
    index = contamination.build_index(items, params).tables["data"]
    scans = [contamination.scan_shard(corpus.shard(k)["text"], index) for k in range(corpus.num_shards)]
    reads = []
    real_read = Pieces.read
    monkeypatch.setattr(Pieces, "read", lambda self, columns: reads.append(columns) or real_read(self, columns))
    sharded = contamination.run(corpus, items, params, index=index, scans=[s[0] for s in scans],
                                scans_df=[s[1] for s in scans])
    assert reads == [["id"]]  # never the texts whole
    stream = sharded.tables["data"]
    assert isinstance(stream, TableStream)
    data = stream.read_all()
    whole = contamination.run(corpus.read(), items, params)
    assert data.equals(whole.tables["data"]) and sharded.tables["report"].equals(whole.tables["report"])
    assert sharded.removed.equals(whole.removed)
    touched = {int(r) // 300 for r in pc.indices_nonzero(pc.is_in(corpus.read()["id"], whole.removed["id"])).to_pylist()}
    assert whole.removed.num_rows > 40 and len(touched) >= 8
    same = ("rows_in", "rows_out", "docs_dropped", "docs_masked", "examples_contaminated", "mb_scanned",
            "benchmark_larger_than_corpus", "per_benchmark")
    assert {k: sharded.metrics[k] for k in same} == {k: whole.metrics[k] for k in same}


def _streamed_contamination(store: DatasetStore, src: Path, items: pa.Table, params, fp: str,
                            out_rows: int | None = None):
    """Ingest ``src``, scan its shards and run the streamed reduce (no copy in memory), written as
    entry ``fp`` (in shards of ``out_rows``, if given); returns (corpus fingerprint, the in-memory
    run's result)."""
    from dataclasses import replace

    from flows.stagetask import execute, plan_ingest
    from tasks import contamination

    corpus_fp = execute(plan_ingest("corpus", [str(src)], {}), str(store.root))
    corpus = replace(store.sharded(corpus_fp), in_memory=None)
    if out_rows:
        store.configure(shard_rows=out_rows)
    index = contamination.build_index(items, params).tables["data"]
    scans = [contamination.scan_shard(corpus.shard(k)["text"], index) for k in range(corpus.num_shards)]
    result = contamination.run(corpus, items, params, index=index, scans=[s[0] for s in scans],
                               scans_df=[s[1] for s in scans])
    store.put(fingerprint=fp, stage="contamination", params={}, code_version="test", parents={"corpus": corpus_fp},
              tables=result.tables, removed=result.removed, metrics=result.metrics, segments=result.segments)
    whole = contamination.run(corpus.read(), items, params)
    assert store.table(fp).equals(whole.tables["data"]) and store.removed(fp).equals(whole.removed)
    assert store.manifest(fp).metrics["mb_scanned"] == whole.metrics["mb_scanned"] and store.verify(fp) == []
    return corpus_fp, whole


def _planted_first_shard(rows: pa.Table, benchmarks: Path, path: Path) -> tuple[Path, pa.Table]:
    """``rows`` with benchmark items written into its first shard only; returns (path, the items)."""
    from winnow import io as wio

    items = wio.canonical_benchmarks(pq.read_table(benchmarks), "b.parquet", "sample")
    texts = [f"{q} {a}" for q, a in zip(items["question"].to_pylist(), items["target"].to_pylist())]
    docs = rows["text"].to_pylist()
    for k, row in enumerate(range(7, SHARD, 97)):
        docs[row] = f"{docs[row]} {texts[k * 11 % len(texts)]}"
    pq.write_table(rows.set_column(rows.column_names.index("text"), "text", pa.array(docs, pa.string())), path)
    return path, items


def _linked(store: DatasetStore, fp: str, other: str, table: str = "data") -> list[int]:
    """The shards of entry ``fp``'s ``table`` that are the same file as one of entry ``other``'s."""
    theirs = store.shard_paths(other, table)
    return [k for k, p in enumerate(store.shard_paths(fp, table)) if any(os.path.samefile(p, q) for q in theirs)]


@pytest.mark.parametrize("action", ["mask", "drop"])
def test_a_shard_the_reduce_left_alone_is_linked_not_rewritten(corpora, sample_benchmarks, tmp_path, action):
    """Items planted in the first shard (the real text matches a few items elsewhere too): the
    streamed reduce rewrites the shards it acted on and hands the others on as the stored files they
    are (hard links, the same records), with the same content hash, tables and metrics as the
    in-memory run; a store cut finer than the corpus gets the rows written, not links to files of
    the wrong shape."""
    from storage.fingerprint import table_fingerprint
    from tasks import contamination

    src, items = _planted_first_shard(pq.read_table(corpora[1]), sample_benchmarks, tmp_path / "p.parquet")
    for shard_rows in (SHARD, SHARD // 2):
        store = _sharded_store(tmp_path / f"s{shard_rows}")
        fp = f"{action}{shard_rows}".ljust(64, "0")
        corpus_fp, whole = _streamed_contamination(store, src, items, contamination.Params(action=action), fp,
                                                   out_rows=shard_rows)
        hit = pc.indices_nonzero(pc.is_in(store.table(corpus_fp)["id"], whole.removed["id"])).to_numpy() // SHARD
        dropped = [int((hit == k).sum()) if action == "drop" else 0 for k in range(4)]
        untouched = [k for k in range(4) if k not in set(hit.tolist())]
        assert hit.size > 8 and untouched and 0 in hit  # the first shard rewritten, at least one left alone
        info, source = store.manifest(fp).tables["data"], store.manifest(corpus_fp).tables["data"]["shards"]
        assert info["content"] == table_fingerprint(whole.tables["data"])
        linked = _linked(store, fp, corpus_fp)
        if shard_rows == SHARD:
            assert linked == untouched and [s["rows"] for s in info["shards"]] == [SHARD - d for d in dropped]
            assert [info["shards"][k] | {"file": ""} for k in linked] == [source[k] | {"file": ""} for k in linked]
        else:  # cut within each input shard: its dropped rows come off its second half
            assert linked == [] and [s["rows"] for s in info["shards"]] == [
                n for d in dropped for n in (SHARD // 2, SHARD // 2 - d)]
    assert main(["store", "verify", "--store", str(tmp_path / f"s{SHARD}")]) == 0


def test_a_nightly_reduce_links_the_shards_that_come_out_as_last_night(corpora, sample_benchmarks, sample_corpus,
                                                                       tmp_path):
    """The corpus grown by a new shard: the shard masked last night comes out the same and is
    linked to last night's file, the untouched ones to the corpus's files; only the new shard, if
    the action touched it, is written."""
    from tasks import contamination

    rows = pq.read_table(sample_corpus).select(["id", "text", "domain"])
    base, items = _planted_first_shard(rows.slice(0, 4000), sample_benchmarks, tmp_path / "base.parquet")
    grown = tmp_path / "grown.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(base), rows.slice(4000, SHARD)]), grown)
    store = _sharded_store(tmp_path / "s")
    params = contamination.Params()
    night1, _ = _streamed_contamination(store, base, items, params, "a" * 64)
    night2, whole = _streamed_contamination(store, grown, items, params, "b" * 64)
    masked = set((pc.indices_nonzero(pc.is_in(store.table(night2)["id"], whole.removed["id"])).to_numpy()
                  // SHARD).tolist())
    assert 0 in masked and len(masked) < 5
    assert _linked(store, "b" * 64, "a" * 64) == sorted(masked - {4})  # last night's masked shards
    assert _linked(store, "b" * 64, night2) == [k for k in range(5) if k not in masked]


def test_rows_taken_once_are_not_read_again(corpora, tmp_path, monkeypatch):
    """A reduce's later phases take rows an earlier one took: a take reads only the row groups of
    rows it has not taken before with those columns, and returns the rows asked for, in order."""
    from tasks.shards import Pieces

    store = _sharded_store(tmp_path / "s")
    fp = store.put(fingerprint="a" * 64, stage="x", params={}, code_version="c", parents={},
                   tables={"data": pq.read_table(corpora[0])}).fingerprint
    rows = Pieces([store.sharded(fp)])
    whole = store.table(fp)
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: reads.append(g) or real(self, g, **kw))
    first, second = np.array([3, 1500, 2999]), np.array([3, 17, 2999])
    assert rows.take(first, ["id", "text"]).equals(whole.select(["id", "text"]).take(first)) and len(reads) == 3
    assert rows.take(second, ["id", "text"]).equals(whole.select(["id", "text"]).take(second)) and len(reads) == 4
    assert rows.take(first, ["text"]).equals(whole.select(["text"]).take(first)) and len(reads) == 7  # other columns
