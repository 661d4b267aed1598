"""Mixture methods compared at a fixed token budget: uniform, proportional, temperature, RegMix, DoReMi.

On the bundled sample (uncurated: the comparison is about weights), each method's mixture trains
the same "main" model with ``--seeds`` seeds for the same number of tokens; every model is scored
on the same held-out documents per domain (:func:`tasks.compare.document_bits`), and each method
is compared with uniform and with proportional by a paired bootstrap (documents within domains,
seeds per recipe). Search compute = training FLOPs of all proxies (6N + attention per token x
tokens; DoReMi's reference forward passes are counted too) / the FLOPs of one main run.

Everything goes through the store (``--store``), so a rerun reuses every mixture, proxy, model and
score already computed.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/bench_mixture.py --store /tmp/bench-mixture
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flows import search
from flows.stagetask import FILES, execute, parent_ref, plan_ingest, plan_stage
from storage import DatasetStore
from tasks import compare, mixture, proxy, tokenize, train
from winnow.config import SAMPLE_DIR

METHODS = ("uniform", "proportional", "temperature", "regmix", "doremi")


def parallel(store: DatasetStore, workers: int) -> search.Submit:
    """Submit a batch to a thread pool (what the flow's thread runner does)."""
    def submit(name, plans):
        proxy.preload()
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: execute(p, str(store.root)), plans))
    return submit


def main_run(store: DatasetStore, mix_fp: str, args: argparse.Namespace, seed: int) -> tuple[str, pa.Table]:
    """Tokenize + train the main model on one mixture and seed; per-document held-out bits (cached)."""
    root = str(store.root)
    tok = execute(plan_stage("tokenize", {"train": mix_fp}, tokenize.Params(tokenizer="bpe", vocab_size=args.vocab), store=store), root)
    params = train.Params(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.d_model // 32, seq_len=args.seq_len,
                          batch_size=8, max_steps=args.steps, warmup_steps=10, seed=seed, num_threads=1, device="cpu",
                          checkpoint_every=0)
    model = execute(plan_stage("train", {"tokens": parent_ref(tok, FILES)}, params, store=store), root)
    cache = store.root / "bench-mixture" / f"{model}.parquet"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        docs = compare.document_bits(store.files_dir(model), store.table(mix_fp, "heldout"), args.eval_docs)
        pq.write_table(docs, cache)
    return model, pq.read_table(cache)


def search_flops(store: DatasetStore, fit: str) -> float:
    """Training FLOPs of the proxies behind a regmix / doremi entry."""
    m = store.manifest(fit)
    total = 0.0
    for name, parent in m.parents.items():
        pm = store.manifest(parent)
        if pm.stage == "proxy":
            total += pm.metrics["flops_per_token"] * pm.metrics["tokens_seen"]
    if m.stage == "doremi":  # the DRO proxy trains (6N) and runs the reference forward (2N) on its tokens
        ref = store.manifest(m.parents["reference"]).metrics
        total += ref["flops_per_token"] * m.metrics["tokens"] * (8 / 6)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="/tmp/winnow-bench-mixture")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--proxies", type=int, default=16)
    ap.add_argument("--proxy-tokens", type=int, default=30_720)
    ap.add_argument("--train-bytes", type=int, default=1_000_000)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--eval-docs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = DatasetStore(args.store)
    cols = {"split": None, "id": "id", "text": "text", "domain": "domain", "label": "label"}
    corpus = execute(plan_ingest("corpus", [str(SAMPLE_DIR / "corpus.parquet")], cols), str(store.root))
    results, weights, flops, timing = {}, {}, {}, {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        params = mixture.Params(method=method, train_bytes=args.train_bytes, max_heldout_docs=args.eval_docs,
                                proxies=args.proxies, proxy_tokens=args.proxy_tokens)
        parents = {"corpus": corpus}
        if method in mixture.LEARNED:
            fit = search.learned_weights(store, corpus, params, parallel(store, args.workers))
            parents["weights"] = fit
            flops[method] = search_flops(store, fit)
        mix_fp = execute(plan_stage("mixture", parents, params, store=store), str(store.root))
        weights[method] = store.manifest(mix_fp).metrics["weights"]
        runs = [main_run(store, mix_fp, args, seed) for seed in range(args.seeds)]
        results[method] = [docs for _, docs in runs]
        main_flops = store.manifest(runs[0][0]).metrics["flops_per_token"] * store.manifest(runs[0][0]).metrics["tokens_seen"]
        timing[method] = round(time.perf_counter() - t0, 1)
        print(f"{method}: weights {weights[method]} ({timing[method]} s)", flush=True)
    report(results, weights, flops, main_flops, args)


def report(results: dict, weights: dict, flops: dict, main_flops: float, args: argparse.Namespace) -> None:
    """Markdown tables: bits/byte per method and domain, then differences vs uniform and proportional."""
    domains = sorted(set(results[next(iter(results))][0]["domain"].to_pylist()))
    print(f"\nmain model d={args.d_model} x {args.n_layers} layers, seq {args.seq_len}, {args.steps} steps x 8 seqs "
          f"({main_flops:.3g} FLOPs per run), {args.seeds} seeds; proxies d=64 x 2, {args.proxy_tokens} tokens each\n")
    print("| method | " + " | ".join(domains) + " | mean | worst | search FLOPs / main run |")
    print("|---" * (len(domains) + 4) + "|")
    for method, docs in results.items():
        row = compare.bootstrap_difference(docs, docs, n_boot=1)
        cells = [f"{r['a']:.4f}" for r in row]
        frac = f"{flops[method] / main_flops:.2f}" if method in flops else "0"
        print(f"| {method} | " + " | ".join(cells) + f" | {frac} |")
    for base in ("uniform", "proportional"):
        if base not in results:
            continue
        print(f"\ndifference vs {base} (bits/byte, negative = better; 95% paired bootstrap)\n")
        print("| method | mean | worst | domains improved | " + " | ".join(domains) + " |")
        print("|---" * (len(domains) + 4) + "|")
        for method, docs in results.items():
            if method == base:
                continue
            rows = {r["domain"]: r for r in compare.bootstrap_difference(docs, results[base])}
            fmt = lambda r: f"{r['difference']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"  # noqa: E731
            improved = sum(rows[d]["verdict"] == "better" for d in domains)
            print(f"| {method} | {fmt(rows['mean'])} | {fmt(rows['worst'])} | {improved}/{len(domains)} | "
                  + " | ".join(fmt(rows[d]) for d in domains) + " |")
    print("\nweights:", json.dumps(weights))


if __name__ == "__main__":
    main()
