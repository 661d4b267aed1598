"""The ``ablate`` flow: train the same model with and without each curation stage; publish the receipt.

    corpus ──repeat probe──┬─ dedup ─ contamination ─ label_noise ─ mixture ──┐  full
                           ├─────── contamination ─ label_noise ─ mixture ──┤  no_dedup
                           ├─ dedup ──────────────── label_noise ─ mixture ──┤  no_contamination
                           ├─ dedup ─ contamination ────────────── mixture ──┤  no_label_noise
                           └─ dedup ─ contamination ─ label_noise ─ proportional  no_mixture
                  each: tokenize ─ train (x seeds) ─ evaluate on the full pipeline's held-out split
                                                        └──> ablation receipt (paired bootstrap)

Every box is the ordinary cached stage, so variants share what they have in common (no_label_noise
reuses full's dedup and contamination) and a rerun computes only what is missing. Trainings of
all variants and seeds are submitted at once to the task runner. The injected-repetition probe
(:mod:`tasks.repeat`) copies ``repeat_fraction`` of the documents ``repeat_times`` times before
any stage, so ``no_dedup`` shows what repeated data costs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from flows.pipeline import PipelineRun, _config, submit_plans
from flows.search import learned_weights
from flows.stagetask import FILES, parent_ref, plan_stage
from tasks import ablation, repeat
from tasks.mixture import LEARNED
from winnow.errors import WinnowError
from winnow.stages import spec as stage_spec

ABLATED = ("dedup", "contamination", "label_noise", "mixture")


def _curated(run: PipelineRun, corpus: str, benchmarks: str, off: str | None) -> str:
    """The mixture entry of the pipeline with stage ``off`` left out (None: the full pipeline)."""
    store, cfg = run.store, run.config

    def one(stage: str, params: Any, **parents: str) -> str:
        return submit_plans(store, stage, [plan_stage(stage, parents, params, store=store)])[0][0]

    x = corpus
    if off != "dedup":
        x = one("dedup", cfg.params("dedup"), corpus=x)
    if off != "contamination":
        x = one("contamination", cfg.params("contamination"), corpus=x, benchmarks=benchmarks)
    if off != "label_noise":
        parents = {"corpus": x}
        for inp in stage_spec("label_noise").inputs:  # the vectors its features read (embed, embed_lm)
            if inp.arg != "corpus" and stage_spec(inp.source).wants(cfg):
                parents[inp.arg] = parent_ref(one(inp.source, cfg.params(inp.source), corpus=x), inp.table)
        x = one("label_noise", cfg.params("label_noise"), **parents)
    params = cfg.params("mixture")
    if off == "mixture":
        return one("mixture", dataclasses.replace(params, method="proportional"), corpus=x)
    if params.method in LEARNED:
        fit = learned_weights(store, x, params, lambda name, plans: submit_plans(store, name, plans)[0])
        return one("mixture", params, corpus=x, weights=fit)
    return one("mixture", params, corpus=x)


@flow(name="ablate", log_prints=True)
def ablate(config: dict[str, Any] | None = None, seeds: int = 3, stages: list[str] | None = None,
           repeat_fraction: float = 0.001, repeat_times: int = 100, profile: str | None = None,
           store: str | None = None) -> dict[str, Any]:
    """Ablation receipts for ``stages`` (default all four); returns the receipt entry's fingerprint.

    ``profile``, ``config`` (overlaid on ``winnow.toml``) and ``store`` as for ``nightly``.
    """
    stages = list(stages or ABLATED)
    unknown = sorted(set(stages) - set(ABLATED))
    if unknown or seeds < 1:
        raise WinnowError(f"ablate: stages must be among {', '.join(ABLATED)} (got {', '.join(unknown) or '-'}) and seeds >= 1")
    run = PipelineRun(_config(config, profile, store))
    store, cfg = run.store, run.config
    corpus = run.ingest("corpus", [cfg.inputs.corpus])
    benchmarks = run.ingest("benchmarks", list(cfg.inputs.benchmarks))
    if repeat_fraction > 0 and repeat_times > 0:
        probe = repeat.Params(fraction=repeat_fraction, times=repeat_times)
        corpus = submit_plans(store, "repeat", [plan_stage("repeat", {"corpus": corpus}, probe, store=store)])[0][0]
    variants = {"full": None, **{f"no_{s}": s for s in stages}}
    mixes = {v: _curated(run, corpus, benchmarks, off) for v, off in variants.items()}
    heldout = parent_ref(mixes["full"], "heldout")
    toks = dict(zip(mixes, submit_plans(store, "tokenize", [
        plan_stage("tokenize", {"train": m}, cfg.run_params("tokenize"), store=store) for m in mixes.values()])[0]))
    keys = [(v, s) for v in variants for s in range(seeds)]
    models = dict(zip(keys, submit_plans(store, "train", [
        plan_stage("train", {"tokens": parent_ref(toks[v], FILES)}, dataclasses.replace(cfg.params("train"), seed=s), store=store)
        for v, s in keys])[0]))
    evals = dict(zip(keys, submit_plans(store, "evaluate", [
        plan_stage("evaluate", {"model_dir": parent_ref(models[k], FILES), "heldout": heldout, "benchmarks": benchmarks},
                   cfg.params("evaluate"), store=store) for k in keys])[0]))
    parents = {"heldout": heldout,
               **{f"model__{v}__{s}": parent_ref(models[(v, s)], FILES) for v, s in keys},
               **{f"examples__{v}__{s}": parent_ref(evals[(v, s)], "examples") for v, s in keys}}
    receipt = submit_plans(store, "ablation", [plan_stage("ablation", parents, ablation.Params(), store=store)])[0][0]
    publish_receipt(store, receipt)
    return {"receipt": receipt, "store": str(store.root), "variants": {v: mixes[v] for v in variants}}


def publish_receipt(store: Any, fp: str) -> None:
    """The receipt as a table artifact and a plot of the mean bits/byte differences with their intervals."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table = store.table(fp)
    create_table_artifact(table.to_pylist(), key="ablation-receipt",
                          description=f"with minus without each stage, paired bootstrap 95% intervals (entry {fp[:12]})")
    rows = [r for r in table.to_pylist() if r["metric"] == "bits_per_byte" and r["subject"] == "mean"]
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    ax = fig.subplots()
    ax.errorbar([r["stage"] for r in rows], [r["difference"] for r in rows], fmt="o",
                yerr=[[r["difference"] - r["lo"] for r in rows], [r["hi"] - r["difference"] for r in rows]])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("mean bits/byte, with - without")
    ax.set_title("ablation: below 0 = the stage helps")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    create_markdown_artifact(f"![ablation](data:image/png;base64,{base64.b64encode(png.getvalue()).decode('ascii')})",
                             key="ablation-plot", description="mean held-out bits/byte difference per ablated stage")
