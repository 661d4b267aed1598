"""Scale-out benchmark: dedup as map / reduce over store shards on a local Dask cluster, and the
end-to-end `winnow dedup` command against a datasketch MinHashLSH script.

Run from the repository root::

    python -m benchmarks.bench_scale --docs 1000000 --shards 16   # real text resampled, 1 and 2 workers
    python -m benchmarks.bench_scale --end-to-end                  # `time winnow dedup` vs datasketch, ~23k real docs
    python -m benchmarks.bench_scale --contamination --docs 1000000  # contamination: one process, map/reduce, +1%
                                                                   # (--workers 2: the map/reduce on a 2-worker cluster)
    python -m benchmarks.bench_scale --ingest --docs 1000000       # ingest: streamed in pieces vs read whole

**Corpus** (:func:`resampled_corpus`): documents of the bundled sample (``data/sample``, 23,483
real texts) drawn with replacement and edited, vectorised in Arrow: each word replaced by a random
word of the same batch of 100k with probability 35% (a new text: J ~ 0.1 with its source or another
copy of it); then one document in ten is instead a light edit (2% of words replaced, J ~ 0.9) of
another document of its batch, and one in a hundred an unedited copy (an exact duplicate). Ids are
``r<row>``; the incremental run's new 1% (another seed) ``n<row>``.

**Map / reduce** on a real cluster: ``dask scheduler`` and ``--workers`` ``dask worker`` processes
(one thread each) on 127.0.0.1, as a user would start them. The corpus is ingested once into a
store with ``--shards`` shards; each shard's ``dedup_map`` entry and then the reduce (dedup itself,
the bounded-memory :mod:`tasks.dedup_reduce`) are computed by :func:`flows.stagetask.execute`, the
function the Prefect task runs, submitted to the cluster. Reported per worker count: map and
reduce wall time, docs/s, each worker's peak RSS (VmHWM: the map tasks and the reduce ran in the
workers), and whether the kept ids and ledger equal one process running ``tasks.dedup.run`` on the
whole table in memory. Then **incremental**: the corpus grown by one new shard of 1% through the
same path (ingest, the new shard's map task, the reduce), against the full run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.bench_dedup import MACHINE, OUT, _rss_mb, method_datasketch
from flows.graph import map_hints
from flows.stagetask import execute, plan_ingest, plan_stage
from storage import DatasetStore
from tasks import dedup
from winnow.stages import spec

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "corpus.parquet"


def _edit(lists: pa.ListArray, rate: np.ndarray, rng: np.random.Generator) -> pa.ListArray:
    """Each word of document ``d`` replaced, with probability ``rate[d]``, by a random word of the batch."""
    flat = lists.flatten()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    swap = rng.random(len(flat)) < np.repeat(rate, lengths)
    index = np.arange(len(flat))
    index[swap] = rng.integers(0, max(len(flat), 1), int(swap.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat.take(pa.array(index)))


def resampled_corpus(n: int, path: Path, seed: int = 0, batch: int = 100_000, prefix: str = "r") -> Path:
    """Write ``n`` resampled, lightly edited real documents to ``path`` (see the module docstring)."""
    src = pq.read_table(SAMPLE, columns=["text", "domain"])
    words = pc.utf8_split_whitespace(src.column("text").combine_chunks())
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string()), ("domain", pa.string())])) as w:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            pick = rng.integers(0, len(src), m)
            base = _edit(words.take(pa.array(pick)), np.full(m, 0.35), rng)  # new texts
            near, exact = rng.random(m) < 0.1, rng.random(m) < 0.01
            copy_of = np.arange(m)
            copy_of[near | exact] = rng.integers(0, m, int((near | exact).sum()))
            final = _edit(base.take(pa.array(copy_of)), np.where(near & ~exact, 0.02, 0.0), rng)
            text = pc.binary_join(final, " ")
            text = pc.if_else(pc.equal(pc.utf8_length(text), 0), pa.scalar("empty"), text)
            w.write_table(pa.table({"id": pa.array([f"{prefix}{i}" for i in range(start, start + m)]), "text": text,
                                    "domain": src.column("domain").take(pa.array(pick))}))
    return path


def _grown(src: Path, docs: int, work: Path) -> Path:
    """A folder of two files, as a nightly sees it: the corpus and a new 1% (other documents)."""
    grown = work / "grown"
    grown.mkdir()
    shutil.copy(src, grown / "a.parquet")
    resampled_corpus(max(1, docs // 100), grown / "b.parquet", seed=1, prefix="n")
    return grown


def _linked(store: DatasetStore, fp: str, table: str) -> str:
    """How many of an entry's shards are files it shares with another entry (linked, not encoded)."""
    paths = store.shard_paths(fp, table)
    return f"{sum(p.stat().st_nlink > 1 for p in paths)}/{len(paths)}"


def _text_mb(path: Path) -> int:
    """MB of text in a corpus file (Arrow's size of its text column), read a row group at a time."""
    with pq.ParquetFile(path) as f:
        return round(sum(f.read_row_group(g, columns=["text"]).nbytes for g in range(f.num_row_groups)) / 1e6)


INGEST_SCRIPT = """
import json, sys, time
from flows.stagetask import commit, execute, plan_ingest, prepare_ingest
from storage import DatasetStore
mode, path, root, shard_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = DatasetStore(root)
store.configure(shard_rows=shard_rows)
plan = plan_ingest("corpus", [path], {"split": None, "id": "id", "text": "text", "domain": "domain", "label": "label"})
t = time.perf_counter()
fp = execute(plan, root) if mode == "streamed" else commit(prepare_ingest(plan, store), store)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the forked copy of the parent
peak = int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) // 1024
print(json.dumps({"s": round(time.perf_counter() - t, 1), "peak_rss_mb": peak,
                  "fingerprint": fp, "shards": [s["sha256"] for s in store.manifest(fp).tables["data"]["shards"]]}))
"""


def bench_ingest(docs: int, shards: int, work: Path) -> dict:
    """A Parquet corpus ingested into a store the two ways winnow does it, each in a fresh process:
    streamed in pieces (``execute``: flows, the Dask bench above) and read whole (``prepare_ingest``:
    one-stage commands, which validate everything before writing). Wall time in process, peak RSS,
    and whether the two entries are the same to the bytes of every shard."""
    src = resampled_corpus(docs, work / "corpus.parquet")
    out: dict = {"docs": docs, "shards": shards, "text_mb": _text_mb(src)}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    entries = {}
    for mode in ("streamed", "whole"):
        done = subprocess.run([sys.executable, "-c", INGEST_SCRIPT, mode, str(src), str(work / mode), str(-(-docs // shards))],
                              check=True, capture_output=True, text=True, env=env, cwd=REPO)
        entries[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        out[mode] = {k: entries[mode][k] for k in ("s", "peak_rss_mb")}
        shutil.rmtree(work / mode)
        print(mode, json.dumps(out[mode]), flush=True)
    out["same_entry"] = all(entries["streamed"][k] == entries["whole"][k] for k in ("fingerprint", "shards"))
    return out


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    return _rss_mb("VmHWM")


def _start_cluster(folder: Path, workers: int, env: dict) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` + ``workers`` ``dask worker`` processes on 127.0.0.1 (one thread each)."""
    dask = str(Path(sys.executable).with_name("dask"))
    info = folder / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": folder, "env": env}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], **quiet)]
    deadline = time.time() + 120
    while not info.is_file() and time.time() < deadline:
        time.sleep(0.2)
    address = json.loads(info.read_text())["address"]
    for k in range(workers):
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                       "--host", "127.0.0.1", "--name", f"w{k}", "--memory-limit", "0"], **quiet))
    return address, procs


@contextlib.contextmanager
def _cluster(folder: Path, workers: int) -> Iterator[Any]:
    """A ``distributed.Client`` on a fresh local cluster of ``workers`` (kernels warmed up on each),
    or None for ``workers == 0`` (everything in this process); stopped on exit."""
    if workers == 0:
        yield None
        return
    from distributed import Client

    address, procs = _start_cluster(folder, workers, dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(workers, timeout=180)
            client.run(_warm_up)  # imports and Numba's kernel load, once per worker, outside the timing
            yield client
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def _submitter(client: Any, root: str) -> Callable[[str, list], list[str]]:
    """A map-task submit (``(task name, plans) -> fingerprints``) onto the cluster's workers."""
    return lambda name, plans: client.gather(client.map(execute, plans, [root] * len(plans), pure=False))


def _warm_up() -> None:
    dedup.featurize(pa.chunked_array([pa.array(["warm up the kernels " * 20] * 4)]), dedup.Params(),
                    dedup.Params().banding())


def _ingest(store: DatasetStore, path: Path) -> str:
    plan = plan_ingest("corpus", [str(path)], {"split": None, "id": "id", "text": "text", "domain": "domain",
                                               "label": "label"})
    return execute(plan, str(store.root))


def dedup_on_cluster(client, store: DatasetStore, corpus: str) -> dict:
    """The map tasks, then the reduce, each an :func:`execute` on the cluster's workers."""
    params = dedup.Params()
    root = str(store.root)
    t = time.perf_counter()
    hints = map_hints(spec("dedup"), store, {"corpus": corpus}, params, _submitter(client, root))
    map_s = time.perf_counter() - t
    plan = plan_stage("dedup", {"corpus": corpus}, params, hints=hints, store=store)
    t = time.perf_counter()
    fp = client.submit(execute, plan, root, pure=False).result()
    reduce_s = time.perf_counter() - t
    metrics = store.manifest(fp).metrics
    reduce = metrics.get("reduce", {})
    return {"fingerprint": fp, "map_s": round(map_s, 1), "reduce_s": round(reduce_s, 1),
            "reduce_partitions": reduce.get("partitions"), "reduce_score_chunks": reduce.get("score_chunks"),
            # the reduce's decisions by phase; the rest of reduce_s is reading and writing tables
            "reduce_decide_s": metrics.get("timings_s")}


def bench_map_reduce(docs: int, shards: int, workers_list: list[int], work: Path, compare: bool = True,
                     nightly: bool = True) -> dict:
    """Map / reduce dedup of a resampled corpus on 1..N-worker clusters, then a grown corpus's
    nightly; ``compare`` also runs it in one process in memory and checks the keep-sets agree
    (off at 10M documents, which do not fit one process on a 24 GB box)."""
    src = resampled_corpus(docs, work / "corpus.parquet")
    grown = _grown(src, docs, work) if nightly else None
    out: dict = {"docs": docs, "shards": shards, "text_mb": _text_mb(src)}
    whole = None
    if compare:
        t = time.perf_counter()
        whole = dedup.run(pq.read_table(src), dedup.Params())
        out["one_process_in_memory_s"] = round(time.perf_counter() - t, 1)
        out["one_process_peak_rss_mb"] = round(_peak_rss_mb())
        out["removed"] = whole.metrics["removed"]
    runs = []
    for workers in workers_list:
        store = DatasetStore(work / f"store-{workers}")
        store.configure(shard_rows=-(-docs // shards))
        t = time.perf_counter()
        corpus = _ingest(store, src)
        ingest_s = round(time.perf_counter() - t, 1)
        with _cluster(work, workers) as client:
            r = {"workers": workers, "ingest_s": ingest_s, **dedup_on_cluster(client, store, corpus)}
            fp = r.pop("fingerprint")
            r["removed"] = store.manifest(fp).metrics["removed"]
            if whole is not None:
                r["keep_set_equal"] = (store.table(fp)["id"].equals(whole.tables["data"]["id"])
                                       and store.removed(fp).equals(whole.removed))
            r["docs_per_s"] = round(docs / (r["map_s"] + r["reduce_s"]))
            if nightly and workers == max(workers_list):
                grown_corpus = _ingest(store, grown)
                inc = dedup_on_cluster(client, store, grown_corpus)
                inc_fp = inc.pop("fingerprint")
                inc["linked_shards"] = {t: _linked(store, inc_fp, t) for t in ("data", "index")}
                r["incremental_1pct"] = {**inc, "fraction_of_full": round(
                    (inc["map_s"] + inc["reduce_s"]) / (r["map_s"] + r["reduce_s"]), 3)}
            r["peak_rss_worker_mb"] = sorted(round(v) for v in client.run(_peak_rss_mb).values())
        runs.append(r)
        shutil.rmtree(store.root)
        print(json.dumps(r), flush=True)
    out["runs"] = runs
    out["parent_peak_rss_mb"] = round(_peak_rss_mb())  # this process: the corpus generation and the ingests
    if len(runs) > 1:
        full = [r["map_s"] + r["reduce_s"] for r in runs]
        out["speedup_map"] = round(runs[0]["map_s"] / runs[-1]["map_s"], 2)
        out["speedup_total"] = round(full[0] / full[-1], 2)
    return out


DATASKETCH_SCRIPT = """
import sys, pyarrow as pa, pyarrow.parquet as pq, numpy as np
from benchmarks.bench_dedup import method_datasketch
t = pq.read_table(sys.argv[1])
labels, dropped, _ = method_datasketch(t)
keep = np.ones(t.num_rows, bool); keep[dropped] = False
pq.write_table(t.filter(pa.array(keep)), sys.argv[2])
"""


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one command."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_end_to_end(corpus: Path) -> dict:
    """Wall and CPU time of the `winnow dedup` command (fresh store: ingest, dedup, export; then
    the same command again, all cached) vs the datasketch script, one after another."""
    assert method_datasketch  # the script imports it: same shingles and settings as bench_dedup
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        winnow = str(Path(sys.executable).with_name("winnow"))
        ours = _timed([winnow, "dedup", str(corpus), "--out", f"{tmp}/o.parquet", "--store", f"{tmp}/s"])
        cached = _timed([winnow, "dedup", str(corpus), "--out", f"{tmp}/o2.parquet", "--store", f"{tmp}/s"])
        theirs = _timed([sys.executable, "-c", DATASKETCH_SCRIPT, str(corpus), f"{tmp}/d.parquet"])
        kept = (pq.read_metadata(f"{tmp}/o.parquet").num_rows, pq.read_metadata(f"{tmp}/d.parquet").num_rows)
    return {"docs": pq.read_metadata(corpus).num_rows,
            "winnow_dedup_s": round(ours[0], 2), "winnow_dedup_cpu_s": round(ours[1], 2),
            "winnow_dedup_cached_s": round(cached[0], 2), "winnow_dedup_cached_cpu_s": round(cached[1], 2),
            "datasketch_script_s": round(theirs[0], 2), "datasketch_script_cpu_s": round(theirs[1], 2),
            "speedup_wall": round(theirs[0] / ours[0], 2), "speedup_cpu": round(theirs[1] / ours[1], 2),
            "kept_winnow_datasketch": kept}


def _contamination_in_store(store: DatasetStore, corpus: str, bench: str, client: Any = None) -> dict:
    """The benchmark index, one contamination_scan task per shard, then the reduce, each an
    :func:`execute`, timed apart: on the cluster's workers, or (no ``client``) in this process,
    as ``winnow contamination`` does."""
    from flows.graph import benchmark_index
    from flows.stagetask import run_in_turn
    from tasks.contamination import Params

    params = Params()
    root = str(store.root)
    submit = run_in_turn(store) if client is None else _submitter(client, root)
    t = time.perf_counter()
    parents = {"corpus": corpus, "benchmarks": bench}
    parents |= benchmark_index(store, parents, params, submit)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    hints = map_hints(spec("contamination"), store, parents, params, submit)
    map_s = time.perf_counter() - t
    t = time.perf_counter()
    plan = plan_stage("contamination", parents, params, hints=hints, store=store)
    fp = execute(plan, root) if client is None else client.submit(execute, plan, root, pure=False).result()
    reduce_s = time.perf_counter() - t
    return {"fingerprint": fp, "index_s": round(index_s, 1), "map_s": round(map_s, 1), "reduce_s": round(reduce_s, 1),
            "map_tasks": len(hints.get("scans", "").split(",")) if hints else 0}


def bench_contamination(docs: int, shards: int, work: Path, workers: int = 0, compare: bool = True,
                        nightly: bool = True) -> dict:
    """contamination on the resampled corpus against the bundled benchmarks: one process on the
    whole table (``compare``), then through a store of ``shards`` shards (map tasks + reduce, on a
    local cluster of ``workers`` or, with 0, in this process) with the same result, then the corpus
    grown by a new 1% shard (``nightly``: only its scan and the reduce recompute)."""
    from tasks import contamination
    from winnow import io as wio
    from winnow.config import benchmark_columns

    src = resampled_corpus(docs, work / "corpus.parquet")
    bench_path = REPO / "data" / "sample" / "benchmarks.parquet"
    items = wio.canonical_benchmarks(pq.read_table(bench_path), where=str(bench_path), default_name="benchmarks")
    out: dict = {"docs": docs, "shards": shards, "workers": workers, "items": items.num_rows, "text_mb": _text_mb(src)}
    whole = None
    if compare:
        t = time.perf_counter()
        whole = contamination.run(pq.read_table(src), items, contamination.Params())
        out.update(one_process_s=round(time.perf_counter() - t, 1), one_process_peak_rss_mb=round(_peak_rss_mb()),
                   removed=whole.removed.num_rows)
    store = DatasetStore(work / "store")
    store.configure(shard_rows=-(-docs // shards))
    bench = execute(plan_ingest("benchmarks", [str(bench_path)], benchmark_columns(None)), str(store.root))
    t = time.perf_counter()
    corpus = _ingest(store, src)
    out["ingest_s"] = round(time.perf_counter() - t, 1)
    with _cluster(work, workers) as client:
        full = _contamination_in_store(store, corpus, bench, client)
        fp = full.pop("fingerprint")
        full["removed"] = store.manifest(fp).metrics["docs_masked"] + store.manifest(fp).metrics["docs_dropped"]
        full["docs_per_s"] = round(docs / (full["index_s"] + full["map_s"] + full["reduce_s"]))
        if whole is not None:
            full["same_as_one_process"] = (store.table(fp).equals(whole.tables["data"])
                                           and store.table(fp, "report").equals(whole.tables["report"])
                                           and store.removed(fp).equals(whole.removed))
        out["sharded"] = full
        if nightly:
            t = time.perf_counter()
            grown_corpus = _ingest(store, _grown(src, docs, work))
            ingest_s = time.perf_counter() - t
            inc = _contamination_in_store(store, grown_corpus, bench, client)
            inc["linked_shards"] = _linked(store, inc.pop("fingerprint"), "data")
            inc["ingest_s"] = round(ingest_s, 1)
            inc["fraction_of_full"] = round((inc["map_s"] + inc["reduce_s"]) / (full["map_s"] + full["reduce_s"]), 3)
            out["incremental_1pct"] = inc
        if client is not None:
            out["peak_rss_worker_mb"] = sorted(round(v) for v in client.run(_peak_rss_mb).values())
    out["parent_peak_rss_mb"] = round(_peak_rss_mb())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    ap.add_argument("--end-to-end", action="store_true", help="only the `winnow dedup` vs datasketch timing")
    ap.add_argument("--contamination", action="store_true",
                    help="only contamination on --docs: one process, then map tasks per shard + reduce, then +1%%")
    ap.add_argument("--ingest", action="store_true",
                    help="only the ingest of --docs: streamed in pieces vs read whole, time and peak RSS")
    ap.add_argument("--corpus", default=str(SAMPLE))
    ap.add_argument("--no-nightly", action="store_true", help="skip the grown-by-1%% nightly run")
    ap.add_argument("--no-compare", action="store_true",
                    help="skip the one-process in-memory run and its keep-set check (for corpora over ~2M documents)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"machine": MACHINE, "load_before": os.getloadavg()}
    if args.end_to_end:
        result["end_to_end"] = bench_end_to_end(Path(args.corpus))
    elif args.ingest:
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            result["ingest"] = bench_ingest(args.docs, args.shards, Path(tmp))
    elif args.contamination:
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            result["contamination"] = bench_contamination(args.docs, args.shards, Path(tmp), int(args.workers.split(",")[-1]),
                                                          compare=not args.no_compare, nightly=not args.no_nightly)
    else:
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            result["map_reduce"] = bench_map_reduce(args.docs, args.shards, [int(w) for w in args.workers.split(",")],
                                                    Path(tmp), compare=not args.no_compare, nightly=not args.no_nightly)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    kind = "contamination-" if args.contamination else "ingest-" if args.ingest else ""
    name = "scale-e2e" if args.end_to_end else f"scale-{kind}{args.docs}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
