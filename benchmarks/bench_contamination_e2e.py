"""End-to-end speed of ``winnow contamination`` against lm-eval's 13-gram rule, each a fresh process.

    python -m benchmarks.bench_contamination_e2e --runs 5      # 13.6 MB, 5,675 docs, ~5,800 items

Data: the corpus and items of :mod:`benchmarks.bench_contamination` (``load_corpus(--mb)``; every
item written in one of the seven native shapes and read back, as there). Both files are Parquet.

Timed, in turn, ``--runs`` times each (wall clock from process start to exit, and the child's CPU
seconds):

* ``fresh store``: ``winnow contamination corpus.parquet --benchmark bench.parquet --out OUT
  --store NEW``: a new store every time, so the ingests, the benchmark index and the stage are all
  computed and written;
* ``nightly``: the same command on a store that already holds this benchmark's index (made by a run
  on the first half of the corpus, copied before each run, the copy not timed): what a daily run
  whose benchmarks did not change costs;
* ``lm-eval 13-gram``: lm-eval 0.4.13's decontamination rule (``Janitor.normalize_string`` and
  ``word_ngrams``, 13-grams, as ``decontaminate.py``) as a script: read the same two Parquet
  files, index the items' 13-grams, scan every document, write the contaminated items and their
  documents as JSON (``--lm-eval-script``, a fresh process like the others).

Also measured: ``python -c "import pyarrow"`` (the floor no pyarrow program goes below) and
importing everything the command imports. Bytecode caches are written by a first untimed run
(``PYTHONDONTWRITEBYTECODE`` is unset for the children, as for an installed copy). The per-entry
seconds come from the store's journal of the last fresh-store run. JSON in
``benchmarks/out/contamination-e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
IMPORTS = "import winnow.cli, flows.graph, flows.stagetask, tasks.contamination, pyarrow.parquet, pyarrow.compute"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process run to completion."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def winnow_cmd(corpus: Path, bench: Path, out: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "winnow.cli", "contamination", str(corpus), "--benchmark", str(bench),
            "--out", str(out), "--store", str(store)]


def lm_eval_script(corpus: Path, bench: Path, out: Path) -> None:
    """lm-eval's 13-gram rule end to end: read, index, scan, write (what ``--lm-eval-script`` runs)."""
    import pyarrow.parquet as pq

    from benchmarks.bench_contamination import _janitor, item_text

    jm = _janitor()
    jan = jm.Janitor()
    lookup: dict[str, set[str]] = {}
    for r in pq.read_table(bench).to_pylist():
        for ng in jm.word_ngrams(jan.normalize_string(item_text(r)), jan.ngram_n):
            lookup.setdefault(ng, set()).add(r["id"])
    table = pq.read_table(corpus, columns=["id", "text"])
    docs: dict[str, set[str]] = {}
    for did, text in zip(table["id"].to_pylist(), table["text"].to_pylist()):
        for ng in jm.word_ngrams(jan.normalize_string(text), jan.ngram_n):
            for e in lookup.get(ng, ()):
                docs.setdefault(e, set()).add(did)
    out.write_text(json.dumps({e: sorted(d) for e, d in sorted(docs.items())}))


def journal_seconds(store: Path) -> dict[str, float]:
    """Seconds of each entry the run computed (stage name -> seconds), from the store's journal."""
    from storage import DatasetStore

    s = DatasetStore(store)
    stage = {m.fingerprint: m.stage for m in s.entries()}
    return {stage[e["fingerprint"]]: e["seconds"] for e in s.journal_events() if e["event"] == "computed"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=float, default=13.6, help="corpus size")
    ap.add_argument("--lm-eval-script", nargs=3, metavar=("CORPUS", "BENCH", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lm_eval_script:
        lm_eval_script(*map(Path, args.lm_eval_script))
        return
    import pyarrow.parquet as pq

    from benchmarks.bench_contamination import _janitor, load_corpus, load_items, native_round_trip

    tmp = Path(tempfile.mkdtemp(prefix="bench_contamination_e2e_"))
    bench, _ = native_round_trip(load_items(None), tmp)
    corpus, source = load_corpus(args.mb)
    mb = sum(len(t.encode()) for t in corpus["text"].to_pylist()) / 1e6
    files = {"corpus": tmp / "corpus.parquet", "bench": tmp / "bench.parquet", "half": tmp / "half.parquet"}
    pq.write_table(corpus, files["corpus"])
    pq.write_table(bench, files["bench"])
    pq.write_table(corpus.slice(0, corpus.num_rows // 2), files["half"])
    print(f"corpus {corpus.num_rows} docs, {mb:.1f} MB ({source}); {bench.num_rows} items")

    timed(winnow_cmd(files["corpus"], files["bench"], tmp / "warm.parquet", tmp / "warm-store"))  # bytecode
    nightly = tmp / "nightly-store"
    timed(winnow_cmd(files["half"], files["bench"], tmp / "half-out.parquet", nightly))
    methods = {
        "fresh store": lambda k: winnow_cmd(files["corpus"], files["bench"], tmp / f"f{k}.parquet", tmp / f"fresh{k}"),
        "nightly (index entry in the store)": lambda k: (
            shutil.copytree(nightly, tmp / f"night{k}"),
            winnow_cmd(files["corpus"], files["bench"], tmp / f"n{k}.parquet", tmp / f"night{k}"))[1],
        "import pyarrow": lambda k: [sys.executable, "-c", "import pyarrow"],
        "imports of the command": lambda k: [sys.executable, "-c", IMPORTS],
    }
    if _janitor() is not None:
        methods["lm-eval 0.4.13 13-gram script"] = lambda k: [
            sys.executable, "-m", "benchmarks.bench_contamination_e2e", "--lm-eval-script",
            str(files["corpus"]), str(files["bench"]), str(tmp / f"lm{k}.json")]
    else:
        print("lm-eval not installed: pip install --no-deps lm-eval==0.4.13 (peer skipped)")
    results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in methods}
    loads = [os.getloadavg()[0]]
    for k in range(args.runs):
        for name, cmd in methods.items():
            wall, cpu = timed(cmd(k))
            results[name]["wall"].append(wall)
            results[name]["cpu"].append(cpu)
        loads.append(os.getloadavg()[0])
    print(f"\n{args.runs} runs each, in turn; load average {min(loads):.1f}-{max(loads):.1f}")
    print("| command | median wall s | MB/s wall | median CPU s | MB per CPU-s | walls |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        w, c = float(np.median(r["wall"])), float(np.median(r["cpu"]))
        rate = f"{mb / w:.1f}" if "import" not in name else "-"
        rate_cpu = f"{mb / c:.1f}" if "import" not in name else "-"
        print(f"| {name} | {w:.2f} | {rate} | {c:.2f} | {rate_cpu} | {', '.join(f'{x:.2f}' for x in r['wall'])} |")
    entries = journal_seconds(tmp / f"fresh{args.runs - 1}")
    print("entries computed by the last fresh-store run (seconds, from the journal):",
          ", ".join(f"{k} {v:.2f}" for k, v in entries.items()))
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"mb": mb, "docs": corpus.num_rows, "items": bench.num_rows, "runs": args.runs, "results": results,
           "entries_s": entries, "load_average": loads, "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    (OUT / "contamination-e2e.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT / 'contamination-e2e.json'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
