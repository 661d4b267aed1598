"""Learned mixtures in the flow: plan proxy runs, run them as parallel cached tasks, fit the weights.

``mixture.method = "regmix"``: N proxies on Dirichlet mixtures around the pool's byte
distribution, then the ``regmix`` stage fits the regression and finds the optimum.
``"doremi"``: one reference proxy on the baseline mixture (its model kept), then the ``doremi``
stage's Group-DRO proxy. Either way the mixture stage then reads the learned weights as an input.

Orchestration is separate from execution: every function here takes a ``submit(task, plans)``
that returns the plans' fingerprints. The flow submits them to its Prefect task runner, all at
once, so proxies run in parallel on threads, Dask or Ray; the CLI and tests may run them in turn
(:func:`run_in_turn`). Each proxy is a store entry named by its own fingerprint, so a second
call, or a rerun after a crash, computes only the proxies missing from the store.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from flows.stagetask import FILES, StagePlan, parent_ref, plan_stage
from flows.stagetask import run_in_turn  # noqa: F401  (re-exported: callers and tests use search.run_in_turn)
from storage import DatasetStore
from tasks import doremi, mixture, proxy, regmix
from winnow.errors import WinnowError

#: ``submit(task name, plans) -> fingerprints``, in the plans' order.
Submit = Callable[[str, list[StagePlan]], list[str]]


def check(corpus: pa.Table, params: mixture.Params) -> mixture.DomainStats:
    """Everything checkable before a proxy runs; returns the training pool's statistics."""
    mixture.precheck(corpus, params)
    stats, _, _ = mixture.prepare(corpus, params)
    empty = [d for d, b in zip(stats.domains, stats.bytes) if b == 0]
    if empty:
        raise WinnowError(f"mixture: domain(s) {', '.join(empty)} have no training rows (all held out or empty)")
    return stats


def proxy_params(params: mixture.Params, weights: dict[str, float], keep_model: bool = False) -> proxy.Params:
    """One proxy of the configured shape and budget on ``weights``, scored on the main held-out split
    (and on the target benchmark's items, for a ``benchmark:NAME`` target)."""
    bench = params.target.removeprefix(proxy.BENCHMARK_PREFIX) if params.target.startswith(proxy.BENCHMARK_PREFIX) else None
    return proxy.Params(benchmarks=(bench,) if bench else (), weights=weights, split=mixture.split_settings(params), train_bytes=params.proxy_train_bytes,
                        max_tokens=params.proxy_tokens, tokenizer=params.proxy_tokenizer, d_model=params.proxy_d_model,
                        n_layers=params.proxy_n_layers,
                        n_heads=max(1, params.proxy_d_model // 32), seq_len=mixture.PROXY_SEQ_LEN,
                        batch_size=mixture.PROXY_BATCH, seed=params.proxy_seed, keep_model=keep_model)


def regmix_plans(store: DatasetStore, corpus_ref: str, params: mixture.Params, stats: mixture.DomainStats,
                 benchmarks_ref: str | None = None) -> list[StagePlan]:
    """The RegMix proxies: ``params.proxies`` seeded Dirichlet mixtures around the byte distribution
    (each also scoring the benchmark items in ``benchmarks_ref``, if given)."""
    mixtures = regmix.draw_mixtures(_prior(stats), params.proxies, params.proxy_seed, params.concentration,
                                    params.min_weight)
    inputs = {"corpus": corpus_ref, **({"benchmarks": benchmarks_ref} if benchmarks_ref else {})}
    return [plan_stage("proxy", inputs, proxy_params(params, w), store=store) for w in mixtures]


def check_benchmark_target(store: DatasetStore, params: mixture.Params, benchmarks_ref: str | None) -> None:
    """A ``benchmark:NAME`` target needs RegMix, benchmark items and that benchmark among them."""
    items = store.table(benchmarks_ref) if benchmarks_ref is not None else None
    check_benchmark_items(params, items)


def check_benchmark_items(params: mixture.Params, items: pa.Table | None, given: str = "") -> None:
    """:func:`check_benchmark_target` on benchmark items in memory (None: none given), so the CLI
    refuses before it writes anything; ``given`` names the files in the messages."""
    if not params.target.startswith(proxy.BENCHMARK_PREFIX):
        return
    if params.method != "regmix":
        raise WinnowError(f"mixture.target = '{params.target}': a benchmark target is RegMix's (method = 'regmix')")
    if items is None:
        raise WinnowError(f"mixture.target = '{params.target}': no benchmark items were given to score the proxies on")
    name = params.target.removeprefix(proxy.BENCHMARK_PREFIX)
    present = sorted(set(items["benchmark"].to_pylist()))
    if name not in present:
        raise WinnowError(f"mixture.target = '{params.target}': benchmark '{name}' not in the benchmark items"
                          f"{' of ' + given if given else ''} ({', '.join(present) or 'none'})")


def learned_weights(store: DatasetStore, corpus_ref: str, params: mixture.Params, submit: Submit,
                    benchmarks_ref: str | None = None) -> str:
    """Run the proxies of ``params.method`` and the fit; returns the fit entry's fingerprint.

    ``benchmarks_ref`` (benchmark items) is read only by a ``benchmark:NAME`` target.
    """
    corpus = store.table(corpus_ref)
    stats = check(corpus, params)
    check_benchmark_target(store, params, benchmarks_ref)
    if not params.target.startswith(proxy.BENCHMARK_PREFIX):
        benchmarks_ref = None  # proxies of the other targets do not score benchmarks (and keep their fingerprints)
    if params.method == "regmix":
        fps = submit("proxy", regmix_plans(store, corpus_ref, params, stats, benchmarks_ref))
        fit = regmix.Params(target=params.target, regression=params.regression, prior=_prior(stats),
                            pool_bytes={d: int(b) for d, b in zip(stats.domains, stats.bytes)},
                            train_bytes=params.train_bytes, min_weight=params.min_weight, max_epochs=params.max_epochs,
                            concentration=params.concentration, seed=params.proxy_seed)
        parents = {f"proxy_{i:03d}": fp for i, fp in enumerate(fps)}
        if benchmarks_ref:
            parents.update({f"{regmix.BENCH_KEY}proxy_{i:03d}": parent_ref(fp, "benchmarks") for i, fp in enumerate(fps)})
        return submit("regmix", [plan_stage("regmix", parents, fit, store=store)])[0]
    if params.method == "doremi":
        base = mixture.Params(method=params.doremi_reference)
        reference = dict(zip(stats.domains, mixture.WEIGHTING_METHODS[params.doremi_reference](stats, base).tolist()))
        reference = _exact(reference)
        ref_fp = submit("proxy", [plan_stage("proxy", {"corpus": corpus_ref}, proxy_params(params, reference, True),
                                             store=store)])[0]
        dro = doremi.Params(split=mixture.split_settings(params), train_bytes=params.proxy_train_bytes,
                            max_tokens=params.proxy_tokens, seq_len=mixture.PROXY_SEQ_LEN, eta=params.doremi_eta,
                            smoothing=params.doremi_smoothing, min_weight=params.min_weight, seed=params.proxy_seed)
        plan = plan_stage("doremi", {"corpus": corpus_ref, "reference": parent_ref(ref_fp, FILES)}, dro, store=store)
        return submit("doremi", [plan])[0]
    raise WinnowError(f"mixture.method = '{params.method}' is not learned from proxies")


def _prior(stats: mixture.DomainStats) -> dict[str, float]:
    return _exact({d: float(b) / float(stats.bytes.sum()) for d, b in zip(stats.domains, stats.bytes)})


def _exact(weights: dict[str, float]) -> dict[str, float]:
    """Round to 6 decimals and put the residue on the largest, so the sum is 1 and the key is stable."""
    w = np.round(np.array(list(weights.values()), dtype=np.float64), 6)
    w[int(np.argmax(w))] += 1.0 - w.sum()
    return {d: float(x) for d, x in zip(weights, w)}


def proxy_results(store: DatasetStore, fingerprints: list[str]) -> list[dict[str, object]]:
    """One row per proxy entry: its weights, per-domain bits/byte, mean and worst (for the UI)."""
    rows = []
    for fp in fingerprints:
        m = store.manifest(fp)
        t = store.table(fp)
        rows.append({"proxy": fp[:12], **{f"w_{d}": round(w, 4) for d, w in zip(t["domain"].to_pylist(), t["weight"].to_pylist())},
                     **{f"bpb_{d}": round(b, 4) for d, b in zip(t["domain"].to_pylist(), t["bits_per_byte"].to_pylist())},
                     "mean": round(m.metrics["bits_per_byte_mean"], 4), "worst": round(m.metrics["bits_per_byte_worst"], 4)})
    return rows


def publish_search(store: DatasetStore, fit_fp: str, proxy_fps: list[str]) -> None:
    """The learned weights (a table and a bar chart) and the proxy results (a table) in the Prefect UI."""
    import base64
    import io

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    m = store.manifest(fit_fp)
    weights = store.table(fit_fp).to_pylist()
    create_table_artifact(weights, key=f"{m.stage}-weights",
                          description=f"{m.stage}: learned domain weights (entry {fit_fp[:12]}, {len(proxy_fps)} proxies)")
    if proxy_fps:
        create_table_artifact(proxy_results(store, proxy_fps), key=f"{m.stage}-proxies",
                              description="proxy runs: mixture weights and held-out bits/byte per domain")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    ax = fig.subplots()
    ax.bar([r["domain"] for r in weights], [r["weight"] for r in weights])
    ax.set_ylabel("weight")
    ax.set_title(f"{m.stage} weights (target: {m.metrics.get('target', 'excess loss')})")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    create_markdown_artifact(f"![weights](data:image/png;base64,{base64.b64encode(png.getvalue()).decode('ascii')})",
                             key=f"{m.stage}-weights-chart", description=f"{m.stage}: learned weights as a bar chart")
