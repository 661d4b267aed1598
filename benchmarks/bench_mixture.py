"""Mixture methods compared at a fixed token budget: uniform, proportional, RegMix (mean, worst and
benchmark targets), DoReMi at the bench's proxy size and at the stage's default one (temperature on
request).

On the bundled sample (uncurated: the comparison is about weights), one BPE is fitted once and
read by every proxy and main run; each method's mixture trains the same "main" model with
``--seeds`` seeds for the same number of tokens. The held-out split is cut into dev and test
halves (:func:`tasks.compare.heldout_half`): proxies are scored on dev, every main model on the
test documents (:func:`tasks.compare.document_bits`) and the test half of the benchmark items
(:func:`tasks.compare.benchmark_bits`: gold-answer bits/byte). Each method is compared with uniform
and with proportional by a paired bootstrap (documents within domains; seeds paired, seed s of
every method being one initialisation and batch order; the unpaired intervals printed too), and the
RegMix regression's predictions for every mixture are ranked against the main runs (Spearman
with a bootstrap interval: the transfer check); ``--transfer-sizes`` also trains proxies of each
given size directly on every method's mixture and ranks them the same way. Search compute = training FLOPs of all proxies
(6N + attention per token x tokens; DoReMi's reference forward passes are counted too) / the
FLOPs of one main run.

Everything goes through the store (``--store``), so a rerun reuses every mixture, proxy, model and
score already computed.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/bench_mixture.py --store /tmp/bench-mixture2 \
        --transfer-sizes 32x1x15360,32x1x30720,64x2x30720,128x3x25600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flows import search
from flows.stagetask import FILES, execute, parent_ref, plan_ingest, plan_stage
from storage import DatasetStore
from tasks import compare, mixture, proxy, regmix, tokenize, train
from winnow.config import SAMPLE_DIR, benchmark_columns

METHODS = ("uniform", "proportional", "regmix", "regmix:worst", "regmix:benchmark:humaneval", "doremi",
           "doremi@64x2x30720")


def parallel(store: DatasetStore, workers: int) -> search.Submit:
    """Submit a batch to a thread pool (what the flow's thread runner does)."""
    def submit(name, plans):
        proxy.preload()
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: execute(p, str(store.root)), plans))
    return submit


def shared_tokenizer(store: DatasetStore, corpus: str, args: argparse.Namespace) -> str:
    """One BPE for every mixture, proxy and main run: fitted on a uniform sample of the training pool.

    Fitting a BPE per mixture (as the first version of this bench did) makes a mixture's score
    also measure its tokenizer; with one tokenizer, only the weights differ.
    """
    params = mixture.Params(method="uniform", train_bytes=args.train_bytes, heldout_fraction=args.heldout_fraction,
                            max_heldout_docs=None, seed=1_000)  # the same held-out split: no test text in the BPE
    mix_fp = execute(plan_stage("mixture", {"corpus": corpus}, params, store=store), str(store.root))
    tok = execute(plan_stage("tokenize", {"train": mix_fp}, tokenize.Params(tokenizer="bpe", vocab_size=args.vocab),
                             store=store), str(store.root))
    return str(store.files_dir(tok))


def main_run(store: DatasetStore, mix_fp: str, args: argparse.Namespace, seed: int) -> tuple[str, pa.Table, pa.Table]:
    """Tokenize + train the main model on one mixture and seed; per-document bits on the test half
    of the held-out text and per-item gold-answer bits on the test half of the benchmarks (cached)."""
    root = str(store.root)
    tok = execute(plan_stage("tokenize", {"train": mix_fp}, tokenize.Params(tokenizer=args.tokenizer), store=store), root)
    params = train.Params(d_model=args.d_model, n_layers=args.n_layers, n_heads=max(1, args.d_model // 32),
                          seq_len=args.seq_len, batch_size=args.batch, max_steps=args.steps, lr=args.lr,
                          warmup_steps=max(1, args.steps // 10), seed=seed, num_threads=1, device="cpu",
                          checkpoint_every=0)
    model = execute(plan_stage("train", {"tokens": parent_ref(tok, FILES)}, params, store=store), root)
    cache = store.root / "bench-mixture" / f"{model}-test-{args.eval_bytes}-{args.doc_bytes}.parquet"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        test = compare.heldout_half(store.table(mix_fp, "heldout"), "test")
        if args.doc_bytes:
            test = compare.document_prefixes(test, args.doc_bytes)
        docs = compare.document_bits(store.files_dir(model), test, None, max_bytes_per_domain=args.eval_bytes or None)
        pq.write_table(docs, cache)
    bench_cache = store.root / "bench-mixture" / f"{model}-benchmarks-test-{args.bench_items}.parquet"
    if not bench_cache.is_file():
        items = compare.heldout_half(store.table(args.benchmarks), "test", "benchmark")
        pq.write_table(compare.benchmark_bits(store.files_dir(model), items, args.bench_items), bench_cache)
    return model, pq.read_table(cache), pq.read_table(bench_cache)


def search_flops(store: DatasetStore, fit: str) -> float:
    """Training FLOPs of the proxies behind a regmix / doremi entry."""
    m = store.manifest(fit)
    total = 0.0
    for parent in {ref.partition("/")[0] for ref in m.parents.values()}:  # a proxy named twice (data, benchmarks) counts once
        pm = store.manifest(parent)
        if pm.stage == "proxy":
            total += pm.metrics["flops_per_token"] * pm.metrics["tokens_seen"]
    if m.stage == "doremi":  # the DRO proxy trains (6N) and runs the reference forward (2N) on its tokens
        ref = store.manifest(m.parents["reference"]).metrics
        total += ref["flops_per_token"] * m.metrics["tokens"] * (8 / 6)
    return total


def arguments() -> argparse.Namespace:
    """The bench's sizes (defaults: the BENCHMARKS.md run)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="/tmp/winnow-bench-mixture")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--target", default="mean", help="what the learned methods minimise (mean, worst, domain:NAME)")
    ap.add_argument("--proxies", type=int, default=12)
    ap.add_argument("--proxy-tokens", type=int, default=15_360)
    ap.add_argument("--proxy-d-model", type=int, default=32)
    ap.add_argument("--proxy-layers", type=int, default=1)
    ap.add_argument("--min-weight", type=float, default=0.02, help="RegMix/DoReMi floor per domain")
    ap.add_argument("--max-epochs", type=float, default=2.0, help="RegMix epoch cap per domain at --train-bytes")
    ap.add_argument("--train-bytes", type=int, default=1_000_000)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--heldout-fraction", type=float, default=0.2,
                    help="share of each domain's documents held out (dev half for proxies, test half scored)")
    ap.add_argument("--eval-bytes", type=int, default=30_000, help="test-half bytes scored per domain (0: all)")
    ap.add_argument("--doc-bytes", type=int, default=2_000,
                    help="score each test document's first N bytes, so a domain's bytes span many documents (0: whole)")
    ap.add_argument("--bench-items", type=int, default=25, help="test-half benchmark items scored per benchmark")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--transfer-sizes", default="",
                    help="comma-separated proxy sizes DxLxTOKENS: train one proxy per method's mixture at each size, "
                         "scored on the dev half, and rank them against the main runs (Spearman)")
    ap.add_argument("--transfer-seeds", type=int, default=1, help="proxy seeds averaged per mixture and size")
    return ap.parse_args()


def proxy_size(spec: str) -> tuple[int, int, int]:
    """``"64x2x30720"`` -> (d_model, n_layers, tokens) of a proxy."""
    d, layers, tokens = (int(x) for x in spec.split("x"))
    return d, layers, tokens


def method_params(method: str, args: argparse.Namespace) -> mixture.Params:
    """The mixture settings of one bench method: ``NAME[:TARGET][@DxLxTOKENS]``.

    ``regmix:worst`` is RegMix with target ``worst``; ``doremi@64x2x30720`` is DoReMi with proxies
    of the mixture stage's default shape and budget instead of the bench's ``--proxy-*`` sizes.
    """
    method, _, size = method.partition("@")
    name, _, target = method.partition(":")  # "regmix:benchmark:humaneval" -> target "benchmark:humaneval"
    d, layers, tokens = proxy_size(size) if size else (args.proxy_d_model, args.proxy_layers, args.proxy_tokens)
    learned = name in mixture.LEARNED
    return mixture.Params(method=name, train_bytes=args.train_bytes, heldout_fraction=args.heldout_fraction,
                          max_heldout_docs=None, target=target or args.target, proxies=args.proxies,
                          proxy_tokens=tokens, proxy_d_model=d, proxy_n_layers=layers, proxy_tokenizer=args.tokenizer,
                          min_weight=args.min_weight if learned else 0.0,
                          max_epochs=args.max_epochs if name == "regmix" else None)


def main() -> None:
    args = arguments()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = DatasetStore(args.store)
    cols = {"split": None, "id": "id", "text": "text", "domain": "domain", "label": "label"}
    corpus = execute(plan_ingest("corpus", [str(SAMPLE_DIR / "corpus.parquet")], cols), str(store.root))
    args.benchmarks = execute(plan_ingest("benchmarks", [str(SAMPLE_DIR / "benchmarks.parquet")], benchmark_columns(None)),
                              str(store.root))
    args.tokenizer = shared_tokenizer(store, corpus, args)
    mixes, weights, flops, fits = {}, {}, {}, {}
    t0 = time.perf_counter()
    for method in args.methods.split(","):
        params = method_params(method, args)
        parents = {"corpus": corpus}
        if params.method in mixture.LEARNED:
            fit = search.learned_weights(store, corpus, params, parallel(store, args.workers), args.benchmarks)
            parents["weights"], fits[method] = fit, fit
            flops[method] = search_flops(store, fit)
        mixes[method] = execute(plan_stage("mixture", parents, params, store=store), str(store.root))
        weights[method] = store.manifest(mixes[method]).metrics["weights"]
        print(f"{method}: weights {weights[method]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    jobs = [(m, seed) for m in mixes for seed in range(args.seeds)]
    proxy.preload()
    with ThreadPoolExecutor(args.workers) as pool:  # one torch thread per main run, runs side by side
        runs = dict(zip(jobs, pool.map(lambda job: main_run(store, mixes[job[0]], args, job[1]), jobs)))
    print(f"main runs done ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = {m: [runs[(m, seed)][1] for seed in range(args.seeds)] for m in mixes}
    first = store.manifest(runs[jobs[0]][0]).metrics
    report(results, weights, flops, first["flops_per_token"] * first["tokens_seen"], args)
    print("\n## benchmarks: bits/byte of the gold answer given the question (test half of the items)")
    report({m: [runs[(m, seed)][2] for seed in range(args.seeds)] for m in mixes}, weights, flops,
           first["flops_per_token"] * first["tokens_seen"], args)
    fit = next((f for m, f in fits.items() if m.startswith("regmix")), None)
    if fit is not None:
        for target in ("mean", "worst"):
            transfer(store, fit, results, weights, target)
    main_flops = first["flops_per_token"] * first["tokens_seen"]
    for size in filter(None, args.transfer_sizes.split(",")):
        proxy_transfer(store, corpus, size, results, weights, main_flops, args)


def transfer(store: DatasetStore, fit: str, results: dict, weights: dict, target: str) -> None:
    """Does the proxies' ranking of the mixtures hold at the main size? Spearman with a bootstrap interval."""
    models = store.table(fit, "models")
    methods = sorted(results)
    predicted = [proxy.target_value(regmix.predict(models, weights[m]), target) for m in methods]
    rho, lo, hi, actual = compare.bootstrap_spearman(predicted, [results[m] for m in methods], target)
    print(f"\ntransfer ({target} bits/byte): RegMix regression's prediction at proxy size vs main-size runs\n")
    print("| mixture | predicted (proxy size) | measured (main size) |\n|---|---|---|")
    for m, p, a in zip(methods, predicted, actual):
        print(f"| {m} | {p:.4f} | {a:.4f} |")
    print(f"\nSpearman over {len(methods)} mixtures: {rho:+.3f} [{lo:+.3f}, {hi:+.3f}] (95% bootstrap: documents and seeds)")


def proxy_transfer(store: DatasetStore, corpus: str, size: str, results: dict, weights: dict, main_flops: float,
                   args: argparse.Namespace) -> None:
    """Proxies of one size trained on each method's mixture (dev half) ranked against the main runs.

    This is RegMix's claim without its regression: does the order of mixtures at proxy size hold
    at the main size? The interval resamples the main runs' test documents and seeds; the proxies'
    own seed noise is not in it (``--transfer-seeds`` averages it down instead).
    """
    d, layers, tokens = proxy_size(size)
    methods = sorted(results)
    base = dataclasses.replace(method_params("uniform", args), proxy_d_model=d, proxy_n_layers=layers, proxy_tokens=tokens)
    plans = [plan_stage("proxy", {"corpus": corpus}, dataclasses.replace(search.proxy_params(base, search._exact(weights[m])), seed=s),
                        store=store) for m in methods for s in range(args.transfer_seeds)]
    fps = parallel(store, args.workers)("proxy", plans)
    tables = [store.table(fp) for fp in fps]
    per_proxy = store.manifest(fps[0]).metrics["flops_per_token"] * store.manifest(fps[0]).metrics["tokens_seen"]
    print(f"\ntransfer of proxies d={d} x {layers}, {tokens} tokens ({per_proxy / main_flops:.4f} of a main run each; "
          f"a {args.proxies}-proxy RegMix search {args.proxies * per_proxy / main_flops:.2f}, DoReMi ~{(14 / 6) * per_proxy / main_flops:.2f}), "
          f"{args.transfer_seeds} seed(s) per mixture, scored on the dev half\n")
    print("| target | mixture | proxy (dev) | main (test) |\n|---|---|---|---|")
    for target in ("mean", "worst"):
        k = args.transfer_seeds
        predicted = [float(np.mean([proxy.score(t, target) for t in tables[i * k:(i + 1) * k]])) for i in range(len(methods))]
        rho, lo, hi, actual = compare.bootstrap_spearman(predicted, [results[m] for m in methods], target)
        for m, p, a in zip(methods, predicted, actual):
            print(f"| {target} | {m} | {p:.4f} | {a:.4f} |")
        print(f"| {target} | **Spearman** | {rho:+.3f} [{lo:+.3f}, {hi:+.3f}] | |")


def report(results: dict, weights: dict, flops: dict, main_flops: float, args: argparse.Namespace) -> None:
    """Markdown tables: bits/byte per method and domain, then differences vs uniform and proportional."""
    domains = sorted(set(results[next(iter(results))][0]["domain"].to_pylist()))
    print(f"\nmain model d={args.d_model} x {args.n_layers} layers, seq {args.seq_len}, {args.steps} steps x {args.batch} seqs "
          f"({main_flops:.3g} FLOPs per run), {args.seeds} seeds; proxies d={args.proxy_d_model} x {args.proxy_layers}, "
          f"{args.proxy_tokens} tokens each; one {args.vocab}-token BPE for all\n")
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
        print("\nthe same, seeds resampled on their own per method (pair_seeds=False): mean | worst\n")
        for method, docs in results.items():
            if method != base:
                rows = {r["domain"]: r for r in compare.bootstrap_difference(docs, results[base], pair_seeds=False)}
                print(f"- {method}: {fmt(rows['mean'])} {rows['mean']['verdict']} | {fmt(rows['worst'])} {rows['worst']['verdict']}")
    print("\nweights:", json.dumps(weights))


if __name__ == "__main__":
    main()
