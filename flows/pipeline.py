"""The pipeline, as Prefect flows. Read this file like the diagram:

    corpus files ──ingest──> dedup ──> contamination ───────────────> label_noise ──> mixture ──> tokenize ──> train ──> evaluate
    benchmark files ──ingest───────────────┘ │  └──> embed ──(vectors)──┘                  └──(held-out text)────────────────┤
                                             └─── (report) ─────────────────────────────────────────────────────────────────┘

``curate`` runs the curation stages (embed only when label_noise's features include MiniLM),
``train_and_evaluate`` the last four, ``nightly`` both; ``stage_flow(name)`` makes a flow that
reruns one stage on cached upstream outputs. Every call passes fingerprints, never data; every
stage is a cached task (see ``flows/stagetask.py``). ``embed`` also takes the newest earlier embed
output as a cache hint, outside its fingerprint, so only new texts are embedded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from flows.receipt import lineage_mermaid, publish_run, receipt_rows
from flows.search import learned_weights, publish_search
from flows.stagetask import (
    FILES,
    StagePlan,
    cache_hints,
    fingerprint_of,
    parent_ref,
    plan_ingest,
    plan_stage,
    stage_task,
)
from storage import DatasetStore
from tasks.mixture import LEARNED
from tasks.proxy import preload
from winnow.config import STAGES, PipelineConfig, config_from_dict, load_config
from winnow.errors import WinnowError


#: Stage inputs that may be absent (the stage then runs without them).
OPTIONAL_INPUTS = frozenset({"index", "contamination", "embeddings"})


@dataclass
class Outcome:
    """What happened to one stage in one run."""

    stage: str
    fingerprint: str
    cached: bool


@dataclass
class PipelineRun:
    """Runs stages in order, honouring a single-stage rerun (``only``) or a rerun from a stage."""

    config: PipelineConfig
    force: frozenset[str] = frozenset()  # stages to recompute even when cached
    last: str | None = None  # stop after this stage
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    proxies: list[str] = field(default_factory=list)  # proxy entries this run used (learned mixtures)

    @property
    def store(self) -> DatasetStore:
        return DatasetStore(self.config.store.root)

    def wanted(self, stage: str) -> bool:
        return self.last is None or STAGES.index(stage) <= STAGES.index(self.last)

    def ingest(self, kind: str, paths: list[str]) -> str:
        inputs = self.config.inputs
        columns = inputs.benchmark_columns() if kind == "benchmarks" else {"split": inputs.split}
        if kind == "corpus":
            columns |= {"id": inputs.id_column, "text": inputs.text_column,
                        "domain": inputs.domain_column, "label": inputs.label_column}
        plan = plan_ingest(kind, paths, columns)
        return self._call(plan, name=f"ingest_{kind}")

    def stage(self, stage: str, **parents: str | None) -> str | None:
        """Run one stage on its parents' outputs; None if the run stops before it."""
        required = {k: v for k, v in parents.items() if k not in OPTIONAL_INPUTS}
        if not self.wanted(stage) or any(p is None for p in required.values()):
            return None
        plan = plan_stage(stage, {k: v for k, v in parents.items() if v is not None}, self.config.run_params(stage),
                          hints=cache_hints(self.store, stage), store=self.store)
        return self._call(plan, name=stage)

    def mixture(self, corpus: str | None, benchmarks: str | None = None) -> str | None:
        """The mixture stage; a learned method first runs its proxies and fit (:mod:`flows.search`),
        scoring them on ``benchmarks`` too for a ``benchmark:NAME`` target."""
        params = self.config.params("mixture")
        if params.method not in LEARNED or corpus is None or not self.wanted("mixture"):
            return self.stage("mixture", corpus=corpus)
        fit = learned_weights(self.store, corpus, params, self.submit_all, benchmarks)
        return self.stage("mixture", corpus=corpus, weights=fit)

    def submit_all(self, name: str, plans: list[StagePlan]) -> list[str]:
        """Submit every plan to the task runner at once (proxies run in parallel); wait for all.

        Each plan is its own cached task, so a batch rerun after a crash computes only the
        entries missing from the store.
        """
        fps, states = submit_plans(self.store, name, plans)
        if name == "proxy":
            self.proxies.extend(fps)
        else:
            self.outcomes[name] = Outcome(name, fps[0], cached=states[0].name == "Cached")
            publish_search(self.store, fps[0], self.proxies)
        return fps

    def embeds(self) -> bool:
        """Whether label_noise reads MiniLM vectors, so the embed stage runs before it."""
        return self.config.params("label_noise").uses_minilm

    def _call(self, plan: StagePlan, name: str) -> str:
        root = str(self.store.root)
        forced = name in self.force
        # A cache record whose store entry was deleted must not be trusted: refresh it.
        refresh = forced or not self.store.exists(fingerprint_of(plan))
        # submit() (not a direct call) so the flow's task runner decides where the stage runs:
        # threads here, a Dask or Ray worker when run.task_runner says so.
        future = stage_task(name, root, refresh=refresh).submit(plan, root, force=forced)
        future.wait()
        state = future.state
        fp = state.result()
        self.outcomes[name] = Outcome(name, fp, cached=state.name == "Cached")
        return fp


def submit_plans(store: DatasetStore, name: str, plans: list[StagePlan]) -> tuple[list[str], list[Any]]:
    """Submit every plan as a ``name`` task at once (the runner runs them in parallel); wait for all.

    Returns the fingerprints and the final task states, in the plans' order.
    """
    root = str(store.root)
    preload()  # transformers' lazy imports are not thread-safe
    futures = [stage_task(name, root, refresh=not store.exists(fingerprint_of(p))).submit(p, root) for p in plans]
    states = [f.wait() or f.state for f in futures]
    return [s.result() for s in states], states


def _config(config: dict[str, Any] | None) -> PipelineConfig:
    """Flow parameters are plain dicts (deployments pass JSON); None means the defaults."""
    return load_config() if config is None else config_from_dict(config)


@flow(name="curate", log_prints=True)
def curate(config: dict[str, Any] | None = None, force: list[str] | None = None,
           last: str | None = None) -> dict[str, Any]:
    """Ingest, dedup, decontaminate and check labels. Returns the run's outcomes so far."""
    run = PipelineRun(_config(config), frozenset(force or ()), last)
    _curate(run)
    return {k: dataclasses.asdict(v) for k, v in run.outcomes.items()}


def _curate(run: PipelineRun) -> dict[str, str | None]:
    corpus = run.ingest("corpus", [run.config.inputs.corpus])
    benchmarks = run.ingest("benchmarks", list(run.config.inputs.benchmarks))
    previous = run.config.inputs.dedup_index
    index = parent_ref(run.store.resolve(previous), "index") if previous else None
    deduped = run.stage("dedup", corpus=corpus, index=index)
    decontaminated = run.stage("contamination", corpus=deduped, benchmarks=benchmarks)
    vectors = run.stage("embed", corpus=decontaminated) if run.embeds() else None
    labels_checked = run.stage("label_noise", corpus=decontaminated,
                               embeddings=vectors and parent_ref(vectors, "embeddings"))
    return {"benchmarks": benchmarks, "contamination": decontaminated, "curated": labels_checked}


def _train_and_evaluate(run: PipelineRun, curated: dict[str, str | None]) -> None:
    mixture = run.mixture(curated["curated"], curated["benchmarks"])
    tokens = run.stage("tokenize", train=mixture)
    model = run.stage("train", tokens=tokens and parent_ref(tokens, FILES))
    run.stage(
        "evaluate",
        model_dir=model and parent_ref(model, FILES),
        heldout=mixture and parent_ref(mixture, "heldout"),
        benchmarks=curated["benchmarks"],
        contamination=curated["contamination"] and parent_ref(curated["contamination"], "report"),
    )


@flow(name="train_and_evaluate", log_prints=True)
def train_and_evaluate(config: dict[str, Any] | None = None, force: list[str] | None = None,
                       last: str | None = None) -> dict[str, Any]:
    """Mixture, training and evaluation on the curated corpus (curation comes from cache)."""
    run = PipelineRun(_config(config), frozenset(force or ()), last)
    _train_and_evaluate(run, _curate(run))
    return {k: dataclasses.asdict(v) for k, v in run.outcomes.items()}


@flow(name="nightly", log_prints=True)
def nightly(config: dict[str, Any] | None = None, force: list[str] | None = None,
            last: str | None = None) -> dict[str, Any]:
    """The whole pipeline; publishes the receipt and lineage to the Prefect UI and the store."""
    cfg = _config(config)
    run = PipelineRun(cfg, frozenset(force or ()), last)
    _train_and_evaluate(run, _curate(run))
    return finish(run)


def finish(run: PipelineRun) -> dict[str, Any]:
    """Record the run in the store and publish its receipt and lineage as Prefect artifacts."""
    store = run.store
    outputs = {k: o.fingerprint for k, o in run.outcomes.items()}
    cached = {k: o.cached for k, o in run.outcomes.items()}
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    rows = receipt_rows(store, outputs, cached)
    store.record_run(run_id, outputs, {"cached": cached, "config": run.config.to_dict(),
                                       "created_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    publish_run(rows, lineage_mermaid(store, outputs))
    get_run_logger().info("run %s: %d stages, %d from cache", run_id, len(rows), sum(cached.values()))
    return {"run_id": run_id, "outputs": outputs, "cached": cached, "store": str(store.root)}


def task_runner(cfg: PipelineConfig):
    """The Prefect task runner named by ``[run]``: threads, or an existing scale-out engine."""
    kind, address, workers = cfg.run.task_runner, cfg.run.runner_address, cfg.run.max_workers
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise WinnowError("run.task_runner = 'dask' needs the dask extra: pip install -e '.[dask]'") from None
        if address:
            return DaskTaskRunner(address=address)
        _project_root_on_sys_path()
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "host": "127.0.0.1",
                                              "dashboard_address": "127.0.0.1:0"})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise WinnowError("run.task_runner = 'ray' needs the ray extra: pip install -e '.[ray]'") from None
        if address:
            return RayTaskRunner(address=address)
        # Node address 127.0.0.1 keeps Ray's agents off the machine's network address; Ray 2.60's
        # gcs_server and raylet still listen on every interface (its own choice, not settable here),
        # which README.md says: on a shared machine prefer the Dask runner, bound to 127.0.0.1.
        return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False,
                                          "_node_ip_address": "127.0.0.1"})
    raise WinnowError(f"run.task_runner: unknown runner '{kind}'; use threads, dask or ray")


def _project_root_on_sys_path() -> None:
    """Let local Dask workers import ``storage`` (and the other top-level packages) by path.

    Every Dask server puts its scratch folder first on ``sys.path``, and a worker's scratch folder
    holds its spill folder, named ``storage``. An editable install resolves winnow's packages with
    a meta-path finder, which Python consults only after ``sys.path``, so in a worker ``import
    storage`` found the empty spill folder as a namespace package and every task failed to
    unpickle. A regular package anywhere on ``sys.path`` wins over a namespace folder, and spawned
    workers start with this process's ``sys.path``: so the folder that holds ``storage`` goes on it.
    (A non-editable install is in site-packages, already on the path; remote workers need winnow
    installed that way.)
    """
    import sys
    from pathlib import Path

    import storage

    root = str(Path(storage.__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)


def stage_flow(stage: str):
    """A flow that reruns ``stage`` alone, reusing cached upstream outputs (its own deployment)."""
    if stage not in STAGES:
        raise WinnowError(f"unknown stage '{stage}'; stages are: {', '.join(STAGES)}")

    @flow(name=f"stage-{stage.replace('_', '-')}", log_prints=True)
    def rerun(config: dict[str, Any] | None = None) -> dict[str, Any]:
        run = PipelineRun(_config(config), frozenset({stage}), stage)
        _train_and_evaluate(run, _curate(run))
        return finish(run)

    return rerun


# One flow object per stage, importable as entrypoints (e.g. flows/pipeline.py:dedup_flow).
dedup_flow = stage_flow("dedup")
contamination_flow = stage_flow("contamination")
embed_flow = stage_flow("embed")
label_noise_flow = stage_flow("label_noise")
mixture_flow = stage_flow("mixture")
tokenize_flow = stage_flow("tokenize")
train_flow = stage_flow("train")
evaluate_flow = stage_flow("evaluate")
