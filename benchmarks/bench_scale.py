"""Scale-out benchmark: dedup as map / reduce over store shards on a local Dask cluster, and the
end-to-end `winnow dedup` command against a datasketch MinHashLSH script.

Run from the repository root::

    python -m benchmarks.bench_scale                      # 100k synthetic docs, 1 and 2 workers
    python -m benchmarks.bench_scale --docs 400000 --shards 16
    python -m benchmarks.bench_scale --end-to-end         # `time winnow dedup` vs datasketch, ~23k real docs

**Map / reduce**: the synthetic corpus of ``benchmarks.bench_dedup`` (Zipf words, 10% planted near
duplicates, 2% exact copies) is ingested once into a store whose tables are ``--shards`` Parquet
shards. Each shard's ``dedup_map`` entry is computed by :func:`flows.stagetask.execute` (what the
Prefect task runs) on a ``distributed.LocalCluster`` of 1 or 2 single-threaded worker processes;
the reduce (:func:`tasks.dedup.run` with the shards' features) runs in this process. Reported:
map wall time (workers warmed up first: imports and Numba kernels loaded), docs/s of the map
phase and of map + reduce, peak RSS of each worker, and whether
the keep-set (ids kept, ledger) equals one process running ``tasks.dedup.run`` on the whole table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_dedup import MACHINE, OUT, _rss_mb, method_datasketch, synthetic_corpus
from flows.graph import map_hints
from flows.stagetask import execute, plan_ingest, split_ref
from storage import DatasetStore
from tasks import dedup
from winnow.stages import spec

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    return _rss_mb("VmHWM")


def _warm_up() -> None:
    dedup.featurize(pa.chunked_array([pa.array(["warm up the kernels " * 20] * 4)]), dedup.Params(),
                    dedup.Params().banding())


def _ingest(store: DatasetStore, path: Path) -> str:
    plan = plan_ingest("corpus", [str(path)], {"split": None, "id": "id", "text": "text", "domain": "domain",
                                               "label": "label"})
    return execute(plan, str(store.root))


def map_reduce(store: DatasetStore, corpus: str, workers: int) -> dict:
    """Map tasks on a fresh local cluster of ``workers`` processes, then the reduce here."""
    from distributed import Client, LocalCluster

    params = dedup.Params()
    timings: dict[str, float] = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: sys.path.insert(0, str(REPO)))
        client.run(_warm_up)  # import and kernel load outside the timing: each worker pays it once
        root = str(store.root)

        def submit(name: str, plans: list) -> list[str]:
            return client.gather(client.map(execute, plans, [root] * len(plans), pure=False))

        t = time.perf_counter()
        hints = map_hints(spec("dedup"), store, {"corpus": corpus}, params, submit)
        timings["map_s"] = time.perf_counter() - t
        rss = client.run(_peak_rss_mb)
    t = time.perf_counter()
    feats = [store.table(split_ref(r)[0]) for r in hints["features"].split(",")]
    result = dedup.run(store.table(corpus), params, features=feats)
    timings["reduce_s"] = time.perf_counter() - t
    return {"workers": workers, **{k: round(v, 2) for k, v in timings.items()},
            "peak_rss_worker_mb": sorted(round(v) for v in rss.values()), "result": result}


def bench_map_reduce(docs: int, shards: int) -> dict:
    table = synthetic_corpus(docs)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        src = Path(tmp) / "corpus.parquet"
        pq.write_table(table, src)
        t = time.perf_counter()
        whole = dedup.run(table, dedup.Params())
        one_process_s = time.perf_counter() - t
        rows = []
        for workers in (1, 2):
            store = DatasetStore(Path(tmp) / f"store-{workers}")
            store.configure(shard_rows=-(-docs // shards))
            corpus = _ingest(store, src)
            r = map_reduce(store, corpus, workers)
            res = r.pop("result")
            r["keep_set_equal"] = res.tables["data"]["id"].equals(whole.tables["data"]["id"]) and res.removed.equals(whole.removed)
            r["map_docs_per_s"] = round(docs / r["map_s"])
            r["docs_per_s"] = round(docs / (r["map_s"] + r["reduce_s"]))
            rows.append(r)
            shutil.rmtree(store.root)
    return {"docs": docs, "shards": shards, "one_process_s": round(one_process_s, 2),
            "one_process_docs_per_s": round(docs / one_process_s), "removed": whole.removed.num_rows,
            "runs": rows, "map_speedup_2_over_1": round(rows[0]["map_s"] / rows[1]["map_s"], 2)}


DATASKETCH_SCRIPT = """
import sys, pyarrow as pa, pyarrow.parquet as pq, numpy as np
from benchmarks.bench_dedup import method_datasketch
t = pq.read_table(sys.argv[1])
labels, dropped, _ = method_datasketch(t)
keep = np.ones(t.num_rows, bool); keep[dropped] = False
pq.write_table(t.filter(pa.array(keep)), sys.argv[2])
"""


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return time.perf_counter() - t


def bench_end_to_end(corpus: Path) -> dict:
    """Wall time of the `winnow dedup` command (fresh store: ingest, dedup, export) vs the script."""
    assert method_datasketch  # the script imports it: same shingles and settings as bench_dedup
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        winnow = str(Path(sys.executable).with_name("winnow"))
        ours = _timed([winnow, "dedup", str(corpus), "--out", f"{tmp}/o.parquet", "--store", f"{tmp}/s"])
        cached = _timed([winnow, "dedup", str(corpus), "--out", f"{tmp}/o2.parquet", "--store", f"{tmp}/s"])
        theirs = _timed([sys.executable, "-c", DATASKETCH_SCRIPT, str(corpus), f"{tmp}/d.parquet"])
        kept = (pq.read_metadata(f"{tmp}/o.parquet").num_rows, pq.read_metadata(f"{tmp}/d.parquet").num_rows)
    return {"docs": pq.read_metadata(corpus).num_rows, "winnow_dedup_s": round(ours, 2),
            "winnow_dedup_cached_s": round(cached, 2), "datasketch_script_s": round(theirs, 2),
            "speedup": round(theirs / ours, 2), "kept_winnow_datasketch": kept}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--end-to-end", action="store_true", help="only the `winnow dedup` vs datasketch timing")
    ap.add_argument("--corpus", default=str(REPO / "data" / "sample" / "corpus.parquet"))
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"machine": MACHINE}
    if args.end_to_end:
        result["end_to_end"] = bench_end_to_end(Path(args.corpus))
    else:
        result["map_reduce"] = bench_map_reduce(args.docs, args.shards)
    print(json.dumps(result, indent=1))
    name = "scale-e2e" if args.end_to_end else f"scale-{args.docs}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
