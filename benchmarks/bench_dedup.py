"""Dedup benchmark: winnow vs datasketch (defaults), datatrove and rensa on real near-duplicates.

Run from the repository root::

    python -m benchmarks.bench_dedup                 # natural corpus, all methods (~5 min)
    python -m benchmarks.bench_dedup --quick         # smaller natural corpus (~1 min)
    python -m benchmarks.bench_dedup --scale 10000 100000 1000000   # synthetic, winnow only
    python -m benchmarks.bench_dedup --incremental 100000           # 1% new docs vs full run

**Natural corpus** (all from Debian packages on this machine): kernel documentation 6.1 and 6.12
(the same files two releases apart: identical, lightly and heavily edited versions), the licence
texts in ``/usr/share/common-licenses``, all fortunes (re-posted quotes with small edits), the
KJV and WEB Bibles verse by verse and the Python 3.11 docs (many distinct short and long texts).

**Ground truth**: exact Jaccard of word 5-gram sets (``normalize_text`` then split), for every
pair of documents with J >= 0.8, found by an exact prefix-filter similarity join (lossless for
that threshold), not by sampling.

**Scores** (same for every method; each returns clusters of documents it deems duplicates and
keeps one per cluster): recall at J>=0.8 (>=0.9) = share of true pairs whose two documents end in
the same cluster; precision = share of dropped documents with a true J>=0.8 partner in their
cluster; docs/s = documents / wall time from an Arrow table in memory to the cluster assignment
(shingling included); peak RSS of the process that ran it (each method runs in its own child
process, after loading the same corpus).

Peers: datasketch 2.x ``MinHash(num_perm=128)`` + ``MinHashLSH(threshold=0.8, num_perm=128)``,
defaults (SHA-1 shingle hashes, banding (9, 13)), candidates clustered by union-find; datatrove's
four MinHash stages (5-grams, 14 x 8 buckets) with its word tokenizer replaced by ``str.split``
(its English tokenizer needs spaCy, not installed here; this only makes datatrove faster);
rensa's ``RMinHash`` + ``RMinHashLSH`` (Rust) with 16 x 8 bands.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common import normalize_text

OUT = Path(__file__).resolve().parent / "out"
MACHINE = "2-core x86-64 CPU, 24 GB RAM, no GPU, shared with other jobs"
NGRAM = 5
THRESHOLD = 0.8


# --------------------------------------------------------------------------- corpora


def natural_corpus(quick: bool = False) -> pa.Table:
    """Real near-duplicates and many distinct documents from packages on this machine."""
    rows: list[tuple[str, str, str]] = []
    for version in ("6.1", "6.12"):  # every reST file of both releases, same paths side by side
        root = Path(f"/usr/share/doc/linux-doc-{version}/Documentation")
        for p in sorted(root.rglob("*.rst.gz"))[: 400 if quick else None]:
            rows.append((f"kernel-{version}/{p.relative_to(root)}", gzip.open(p).read().decode("utf-8", "replace"), "kernel"))
    if not quick:
        listed = subprocess.run(["dpkg", "-L", "manpages", "manpages-dev"], capture_output=True, text=True).stdout
        for line in sorted(listed.split()):
            p = Path(line)
            if line.endswith(".gz") and "/man/" in line and p.is_file() and not p.is_symlink():
                rows.append((f"man/{p.name}", gzip.open(p).read().decode("utf-8", "replace"), "man"))
    lic = Path("/usr/share/common-licenses")
    for p in sorted(lic.iterdir()):
        if p.is_file() and not p.is_symlink():
            rows.append((f"licence/{p.name}", p.read_text(encoding="utf-8", errors="replace"), "licence"))
    fort = Path("/usr/share/games/fortunes")
    for p in sorted(fort.iterdir()):
        if p.is_file() and "." not in p.name:
            for j, r in enumerate(re.split(r"\n%\n", p.read_text(encoding="utf-8", errors="replace"))):
                if r.strip():
                    rows.append((f"fortune/{p.name}/{j}", r.strip(), "fortune"))
    for module in ("engKJV2006eb", "engWEB2015eb"):
        verses = _bible(module)
        rows += [(f"bible/{module}/{k}", v, "bible") for k, v in (verses[:8000] if quick else verses)]
    pydoc = Path("/usr/share/doc/python3.11/html/_sources")
    for p in sorted(pydoc.rglob("*.rst.txt"))[: 100 if quick else None]:
        rows.append((f"python-doc/{p.relative_to(pydoc)}", p.read_text(encoding="utf-8", errors="replace"), "python-doc"))
    rows = [r for r in rows if r[1].strip()]
    seen: set[str] = set()
    rows = [r for r in rows if not (r[0] in seen or seen.add(r[0]))]
    return pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows], "source": [r[2] for r in rows]})


def _bible(module: str) -> list[tuple[str, str]]:
    sys.path.append("/usr/lib/python3/dist-packages")
    import Sword  # Debian python3-sword

    mgr = Sword.SWMgr()  # keep mgr and vk referenced: temporaries segfault
    mod = mgr.getModule(module)
    vk = Sword.VerseKey()
    vk.setVersificationSystem(mod.getConfigEntry("Versification"))
    vk.setText("Genesis 1:1")
    out, last = [], None
    while True:
        mod.setKey(vk)
        text, key = mod.stripText().strip(), vk.getText()
        if key == last:
            break
        if text:
            out.append((key, text))
        last = key
        vk.increment()
    return out


def synthetic_corpus(n: int, seed: int = 0, near_rate: float = 0.1, exact_rate: float = 0.02,
                     vocab: int = 50_000, id_prefix: str = "doc") -> pa.Table:
    """``n`` documents of 150-350 Zipf-distributed words; a share are planted near duplicates
    (0-8% of tokens substituted) and exact copies of earlier documents of the same table."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i:x}" for i in range(vocab)])
    lengths = rng.integers(150, 351, n)
    ranks = (np.minimum(rng.zipf(1.2, int(lengths.sum())), vocab) - 1).astype(np.int32)
    docs = np.split(ranks, np.cumsum(lengths)[:-1])
    kind = rng.random(n)
    for i in range(1, n):
        if kind[i] < near_rate:
            src = docs[int(rng.integers(0, i))].copy()
            k = int(len(src) * rng.uniform(0, 0.08))
            src[rng.integers(0, len(src), k)] = rng.integers(0, vocab, k)
            docs[i] = src
        elif kind[i] < near_rate + exact_rate:
            docs[i] = docs[int(rng.integers(0, i))]
    texts = [" ".join(words[d]) for d in docs]
    return pa.table({"id": [f"{id_prefix}{i:08d}" for i in range(n)], "text": texts})


def synthetic_shards(n: int, shard_rows: int = 50_000) -> list[Path]:
    """``n`` synthetic documents as Parquet shards under benchmarks/out (cached between runs);
    duplicates are planted within each shard of ``shard_rows`` documents."""
    folder = OUT / f"synthetic-{n}"
    paths = [folder / f"part-{i:04d}.parquet" for i in range(math.ceil(n / shard_rows))]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        rows = min(shard_rows, n - i * shard_rows)
        pq.write_table(synthetic_corpus(rows, seed=i, id_prefix=f"s{i:04d}-"), p, row_group_size=shard_rows)
    return paths


# --------------------------------------------------------------------------- ground truth


def shingle_strings(text: str, n: int = NGRAM) -> list[str]:
    """Word n-grams of the normalised text (a shorter text is one shingle), as in winnow."""
    toks = normalize_text(text).split()
    if len(toks) < n:
        return [" ".join(toks)] if toks else []
    return [" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def true_pairs(texts: list[str], threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) with exact Jaccard >= threshold: prefix-filter join, then verification.

    With tokens ordered by ascending document frequency, two sets with J >= t must share a token
    among the first ``|x| - ceil(t|x|) + 1`` of each (Chaudhuri et al. 2006), so indexing those
    prefixes finds every such pair.
    """
    vocab: dict[str, int] = {}
    sets = [np.unique(np.fromiter((vocab.setdefault(s, len(vocab)) for s in shingle_strings(t)), np.int64)) for t in texts]
    df = np.bincount(np.concatenate([s for s in sets if len(s)]), minlength=len(vocab))
    rank = np.empty(len(vocab), np.int64)
    rank[np.lexsort((np.arange(len(vocab)), df))] = np.arange(len(vocab))
    sets = [np.sort(rank[s]) for s in sets]
    toks, docs = [], []
    for d, s in enumerate(sets):
        if len(s):
            p = len(s) - math.ceil(threshold * len(s) - 1e-9) + 1
            toks.append(s[:p])
            docs.append(np.full(p, d))
    toks_a, docs_a = np.concatenate(toks), np.concatenate(docs)
    order = np.lexsort((docs_a, toks_a))
    toks_a, docs_a = toks_a[order], docs_a[order]
    starts = np.flatnonzero(np.r_[True, toks_a[1:] != toks_a[:-1]])
    sizes = np.diff(np.r_[starts, len(toks_a)])
    lefts, rights = [], []
    for m in np.unique(sizes[sizes > 1]):
        st = starts[sizes == m]
        iu, ju = np.triu_indices(m, 1)
        lefts.append(docs_a[(st[:, None] + iu).ravel()])
        rights.append(docs_a[(st[:, None] + ju).ravel()])
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    code = np.unique(np.minimum(np.concatenate(lefts), np.concatenate(rights)) * len(texts)
                     + np.maximum(np.concatenate(lefts), np.concatenate(rights)))
    li, ri = code // len(texts), code % len(texts)
    sizes_d = np.array([len(s) for s in sets])
    ok = (li != ri) & (np.minimum(sizes_d[li], sizes_d[ri]) >= threshold * np.maximum(sizes_d[li], sizes_d[ri]) - 1e-9)
    li, ri = li[ok], ri[ok]
    jac = np.empty(len(li))
    for p, (i, j) in enumerate(zip(li.tolist(), ri.tolist())):
        inter = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
        jac[p] = inter / (len(sets[i]) + len(sets[j]) - inter)
    keep = jac >= threshold - 1e-12
    return li[keep], ri[keep], jac[keep]


def _union_find(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def score(labels: np.ndarray, dropped: np.ndarray, li: np.ndarray, ri: np.ndarray, jac: np.ndarray) -> dict:
    """Recall at J>=0.8/0.9 and drop precision of a clustering against the true pairs."""
    same = labels[li] == labels[ri]
    hi = jac >= 0.9
    justified = np.zeros(len(labels), bool)
    justified[li[same]] = True
    justified[ri[same]] = True
    return {
        "true_pairs_08": int(len(li)),
        "true_pairs_09": int(hi.sum()),
        "recall_08": round(float(same.mean()) if len(li) else 1.0, 4),
        "recall_09": round(float(same[hi].mean()) if hi.any() else 1.0, 4),
        "dropped": int(dropped.sum()),
        "precision": round(float(justified[dropped].mean()) if dropped.any() else 1.0, 4),
    }


# --------------------------------------------------------------------------- methods (run in a child)


def method_winnow(table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
    from tasks import dedup

    res = dedup.run(table, dedup.Params(empty_text="keep"))
    ids = table.column("id").to_pylist()
    pos = {k: i for i, k in enumerate(ids)}
    parent = np.arange(len(ids))
    for i, e in zip(res.removed.column("id").to_pylist(), res.removed.column("evidence").to_pylist()):
        parent[pos[i]] = pos[json.loads(e)["duplicate_of"]]
    for _ in range(64):  # exact copy -> near-dup survivor -> ... chains are short
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    dropped = np.zeros(len(ids), bool)
    dropped[[pos[i] for i in res.removed.column("id").to_pylist()]] = True
    b = res.metrics["banding"]
    return parent, dropped, {"banding": [b["bands"], b["rows"]], "timings_s": res.metrics["timings_s"]}


def _clusters_from_edges(n: int, left: list[int], right: list[int], order: np.ndarray | None = None):
    labels = _union_find(n, np.asarray(left, np.int64), np.asarray(right, np.int64))
    first = np.full(labels.max() + 1, n)
    np.minimum.at(first, labels, np.arange(n))
    dropped = first[labels] != np.arange(n)
    return labels, dropped


def method_datasketch(table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
    from datasketch import MinHash, MinHashLSH

    texts = table.column("text").to_pylist()
    shingles = [[s.encode("utf-8") for s in shingle_strings(t)] for t in texts]
    mhs = MinHash.bulk(shingles, num_perm=128)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    with lsh.insertion_session() as session:
        for i, m in enumerate(mhs):
            if shingles[i]:
                session.insert(i, m, check_duplication=False)
    left, right = [], []
    for i, m in enumerate(mhs):
        if shingles[i]:
            for j in lsh.query(m):
                if j > i:
                    left.append(i)
                    right.append(j)
    labels, dropped = _clusters_from_edges(len(texts), left, right)
    return labels, dropped, {"banding": list(lsh.b_and_r) if hasattr(lsh, "b_and_r") else [lsh.b, lsh.r]}


def method_rensa(table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
    from rensa import RMinHash, RMinHashLSH

    texts = table.column("text").to_pylist()
    lsh = RMinHashLSH(THRESHOLD, 128, 16)
    mhs = []
    for i, t in enumerate(texts):
        sh = shingle_strings(t)
        m = RMinHash(128, 42)
        if sh:
            m.update(sh)
            lsh.insert(i, m)
        mhs.append(m if sh else None)
    left, right = [], []
    for i, m in enumerate(mhs):
        if m is not None:
            for j in lsh.query(m):
                if j > i:
                    left.append(i)
                    right.append(j)
    labels, dropped = _clusters_from_edges(len(texts), left, right)
    return labels, dropped, {"banding": [16, 8]}


def method_datatrove(table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
    import datatrove.pipeline.dedup.minhash as dtm
    from datatrove.data import Document

    class _Split:  # stands in for the spaCy tokenizer datatrove would load for English
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

    dtm.load_word_tokenizer = lambda language: _Split()
    make_hash = dtm.create_hash_func  # datatrove 0.10 passes str to xxhash 4.x, which wants bytes
    dtm.create_hash_func = lambda config: (lambda f: lambda s: f(s.encode("utf-8")))(make_hash(config))
    texts = table.column("text").to_pylist()
    cfg = dtm.MinhashConfig()
    with tempfile.TemporaryDirectory() as tmp:
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        sig = dtm.MinhashDedupSignature(output_folder=f"{tmp}/sigs", config=cfg)
        for _ in sig.run(iter(docs), rank=0, world_size=1) or []:
            pass
        buckets = dtm.MinhashDedupBuckets(input_folder=f"{tmp}/sigs", output_folder=f"{tmp}/buckets", config=cfg)
        for r in range(cfg.num_buckets):
            for _ in buckets.run(None, rank=r, world_size=cfg.num_buckets) or []:
                pass
        cluster = dtm.MinhashDedupCluster(input_folder=f"{tmp}/buckets", output_folder=f"{tmp}/remove", config=cfg,
                                          save_cluster_id=True)
        for _ in cluster.run(None, 0, 1) or []:
            pass
        filt = dtm.MinhashDedupFilter(input_folder=f"{tmp}/remove", load_cluster_ids=True)
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        kept = {int(d.id) for d in filt.run(iter(docs), 0, 1)}
    labels = np.arange(len(texts))
    for i, d in enumerate(docs):
        c = d.metadata.get("minhash_cluster_id", -1)
        if c != -1:
            labels[i] = len(texts) + int(c)
    dropped = np.array([i not in kept for i in range(len(texts))])
    return labels, dropped, {"banding": [cfg.num_buckets, cfg.hashes_per_bucket]}


METHODS = {"winnow": method_winnow, "datasketch": method_datasketch, "datatrove": method_datatrove, "rensa": method_rensa}


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS count (VmHWM), so it covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _child(method: str, corpus: str, out: str) -> None:
    table = pq.read_table(corpus)
    gc.collect()
    pa.default_memory_pool().release_unused()
    before = _rss_mb("VmRSS")
    _reset_peak_rss()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    labels, dropped, extra = METHODS[method](table)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    info = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": _rss_mb("VmHWM"), "rss_before_mb": before, **extra}
    if method == "winnow":  # again in the same process: kernels loaded, the steady-state speed
        t0 = time.perf_counter()
        METHODS[method](table)
        info["warm_wall_s"] = time.perf_counter() - t0
    np.savez(out, labels=labels, dropped=dropped)
    Path(out + ".json").write_text(json.dumps(info))


def run_method(method: str, corpus: Path, timeout: int = 1800) -> dict | None:
    """Run one method in a fresh process; None if it fails (reason printed)."""
    out = str(OUT / f"dedup-{method}")
    cmd = [sys.executable, "-m", "benchmarks.bench_dedup", "--child", method, str(corpus), out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(f"{method}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    info = json.loads(Path(out + ".json").read_text())
    arr = np.load(out + ".npz")
    return {**info, "labels": arr["labels"], "dropped": arr["dropped"]}


# --------------------------------------------------------------------------- main


def bench_natural(quick: bool, methods: list[str]) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    table = natural_corpus(quick)
    corpus_path = OUT / ("dedup-natural-quick.parquet" if quick else "dedup-natural.parquet")
    pq.write_table(table, corpus_path)
    texts = table.column("text").to_pylist()
    print(f"corpus: {table.num_rows} docs, {sum(map(len, texts)) / 1e6:.1f} M chars, built in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    li, ri, jac = true_pairs(texts)
    print(f"ground truth: {len(li)} pairs with J>=0.8 ({int((jac >= 0.9).sum())} with J>=0.9) in {time.perf_counter() - t:.0f} s")
    results = {}
    for m in methods:
        r = run_method(m, corpus_path)
        if r is None:
            results[m] = {"error": "failed, see stderr"}
            continue
        results[m] = {"docs_per_s": round(table.num_rows / r["wall_s"], 1), "wall_s": round(r["wall_s"], 2),
                      "peak_rss_mb": round(r["peak_rss_mb"]), "rss_before_mb": round(r["rss_before_mb"]),
                      **({"warm_docs_per_s": round(table.num_rows / r["warm_wall_s"], 1)} if "warm_wall_s" in r else {}),
                      **score(r["labels"], r["dropped"], li, ri, jac),
                      **{k: v for k, v in r.items() if k in ("banding", "timings_s")}}
    ref = results.get("datasketch", {}).get("docs_per_s")
    rows = ["| method | docs/s | × datasketch | recall J≥0.8 | recall J≥0.9 | precision | dropped | peak RSS MB "
            "(process / added by the run) | (b, r) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m, r in results.items():
        if "error" in r:
            rows.append(f"| {m} | failed | | | | | | | |")
            continue
        ratio = f"{r['docs_per_s'] / ref:.1f}×" if ref else "-"
        rss = f"{r['peak_rss_mb']} / {r['peak_rss_mb'] - r['rss_before_mb']}"
        rows.append(f"| {m} | {r['docs_per_s']:,.0f} | {ratio} | {r['recall_08']:.3f} | {r['recall_09']:.3f} | "
                    f"{r['precision']:.3f} | {r['dropped']} | {rss} | {tuple(r.get('banding', []))} |")
        if "warm_docs_per_s" in r:
            warm = r["warm_docs_per_s"]
            rows.append(f"| {m} (second call, kernels loaded) | {warm:,.0f} | {warm / ref:.1f}× | | | | | | |"
                        if ref else f"| {m} (second call) | {warm:,.0f} | | | | | | | |")
    table_md = "\n".join(rows)
    print(table_md)
    return {"corpus": {"docs": table.num_rows, "chars": sum(map(len, texts)),
                       "true_pairs_08": int(len(li)), "true_pairs_09": int((jac >= 0.9).sum())},
            "results": results, "markdown": table_md}


def _child_scale(n: str, out: str) -> None:
    from tasks.dedup_files import dedup_parquet

    paths = synthetic_shards(int(n))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        metrics = dedup_parquet(paths, tmp, workers=2)
    wall = time.perf_counter() - t
    Path(out).write_text(json.dumps({
        "wall_s": wall, "metrics": metrics,
        "peak_rss_parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def bench_scale(sizes: list[int]) -> dict:
    """Synthetic corpora end to end through tasks.dedup_files (Parquet in, Parquet out)."""
    out = {}
    rows = ["| docs | wall s | docs/s | peak RSS parent MB | peak RSS worker MB | removed exact | removed near | candidate pairs |",
            "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        synthetic_shards(n)  # generate outside the timed child
        res_path = OUT / f"dedup-scale-{n}.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_dedup", "--child-scale", str(n), str(res_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        r = json.loads(res_path.read_text())
        out[n] = r
        m = r["metrics"]
        rows.append(f"| {n:,} | {r['wall_s']:.1f} | {n / r['wall_s']:,.0f} | {r['peak_rss_parent_mb']:.0f} | "
                    f"{r['peak_rss_worker_mb']:.0f} | {m['removed']['exact_duplicate']:,} | "
                    f"{m['removed']['near_duplicate']:,} | {m['near']['candidate_pairs']:,} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    return {"results": out, "markdown": "\n".join(rows)}


def bench_incremental(n: int) -> dict:
    from tasks import dedup

    table = synthetic_corpus(int(n * 1.01), seed=1)
    base, new = table.slice(0, n), table.slice(n)
    full = dedup.run(base, dedup.Params())  # also loads the kernels
    # Best of 3 for each: the machine is shared, and the minimum is the least disturbed run.
    t_full = t_inc = t_all = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        full = dedup.run(base, dedup.Params())
        t_full = min(t_full, time.perf_counter() - t)
        t = time.perf_counter()
        inc = dedup.run(new, dedup.Params(), index=full.tables["index"])
        t_inc = min(t_inc, time.perf_counter() - t)
        t = time.perf_counter()
        dedup.run(table, dedup.Params())
        t_all = min(t_all, time.perf_counter() - t)
    md = (f"| base docs | new docs | full run s | full run on base+new s | incremental s | incremental / full |\n"
          f"|---|---|---|---|---|---|\n| {n:,} | {new.num_rows:,} | {t_full:.2f} | {t_all:.2f} | {t_inc:.2f} | "
          f"{t_inc / t_all:.1%} |")
    print(md)
    return {"full_s": t_full, "full_with_new_s": t_all, "incremental_s": t_inc, "new_docs": new.num_rows,
            "removed_incremental": inc.metrics["removed"], "markdown": md}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller natural corpus")
    ap.add_argument("--methods", default="winnow,datasketch,datatrove,rensa")
    ap.add_argument("--scale", nargs="*", type=int, help="synthetic corpus sizes (winnow only)")
    ap.add_argument("--incremental", type=int, help="base corpus size for the incremental check")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--child-scale", nargs=2, metavar=("N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    if args.child_scale:
        _child_scale(*args.child_scale)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": MACHINE, "command": "python -m benchmarks.bench_dedup " + " ".join(argv or sys.argv[1:])}
    if args.scale:
        report["scale"] = bench_scale(args.scale)
    elif args.incremental:
        report["incremental"] = bench_incremental(args.incremental)
    else:
        nat = bench_natural(args.quick, args.methods.split(","))
        for r in nat["results"].values():
            r.pop("labels", None)
        report["natural"] = nat
    name = "dedup-scale" if args.scale else "dedup-incremental" if args.incremental else "dedup-natural"
    (OUT / f"{name}.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
