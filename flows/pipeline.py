"""The pipeline, as Prefect flows. Read this file like the diagram:

    corpus files ──ingest──> dedup ──> contamination ───────────────> label_noise ──> mixture ──> tokenize ──> train ──> evaluate
    benchmark files ──ingest───────────────┘ │  └──> embed ──(vectors)──┘                  └──(held-out text)────────────────┤
                                             └─── (report) ─────────────────────────────────────────────────────────────────┘

The graph itself is declared once, in :mod:`winnow.stages` (each stage's inputs by upstream stage
and table); this module only walks it in order (:mod:`flows.graph` finds each stage's parents).
``curate`` runs the curation stages (embed and embed_lm only when label_noise's features include
MiniLM or SmolLM2),
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
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.graph import configured_refs, prepared_inputs, run_parents
from flows.graph import plan as plan_for
from flows.receipt import publish_run, receipt_rows
from flows.search import publish_search
from flows.stagetask import StagePlan, fingerprint_of, plan_ingest, stage_task
from storage import DatasetStore, heads
from tasks.proxy import preload
from winnow import drops
from winnow.config import PipelineConfig, load_config
from winnow.errors import WinnowError
from winnow.stages import BENCHMARKS, CORPUS, pipeline_names, pipeline_specs
from winnow.stages import spec as stage_spec


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
        order = pipeline_names()
        return self.last is None or order.index(stage) <= order.index(self.last)

    def ingest(self, kind: str, paths: list[str]) -> str:
        inputs = self.config.inputs
        columns = inputs.benchmark_columns() if kind == "benchmarks" else {"split": inputs.split}
        if kind == "corpus":
            columns |= {"id": inputs.id_column, "text": inputs.text_column,
                        "domain": inputs.domain_column, "label": inputs.label_column}
        if kind == "corpus" and len(paths) == 1 and (files := drops.drop_files(paths[0])) is not None:
            return self._ingest_drops(files, columns)
        plan = plan_ingest(kind, paths, columns)
        return self._call(plan, name=f"ingest_{kind}")

    def _ingest_drops(self, files: list[Path], columns: dict[str, Any]) -> str:
        """A corpus of daily files (:mod:`winnow.drops`): only files without an entry are read."""
        future = ingest_drops_task.submit(str(self.store.root), [str(f) for f in files], columns)
        fp, cached = future.result()
        self.outcomes[CORPUS] = Outcome(CORPUS, fp, cached=cached)
        return fp

    def stage(self, stage: str, outputs: dict[str, str | None]) -> str | None:
        """Run one stage on its upstream stages' ``outputs``; None if the run stops before it,
        the config leaves it out (embed) or a required input is missing.

        A stage with a ``prepare`` hook computes its extra inputs first (a learned mixture runs its
        proxies and fit, :mod:`flows.search`).
        """
        spec = stage_spec(stage)
        if not self.wanted(stage) or not spec.wants(self.config):
            return None
        parents = run_parents(spec, outputs, configured_refs(spec, self.config, self.store))
        if parents is None:
            return None
        params = self.config.run_params(stage)
        parents |= prepared_inputs(spec, self.store, parents, params, self.submit_all, outputs.get(BENCHMARKS))
        maps = lambda name, plans: submit_plans(self.store, name, plans)[0]  # noqa: E731
        plan = plan_for(spec, self.store, parents, params, maps, forced=stage in self.force)
        return self._call(plan, name=stage)

    def submit_all(self, name: str, plans: list[StagePlan]) -> list[str]:
        """Submit every plan to the task runner at once (proxies run in parallel); wait for all.

        Each plan is its own cached task, so a batch rerun after a crash computes only the
        entries missing from the store.
        """
        fps, states = submit_plans(self.store, name, plans)
        if name == "proxy":
            self.proxies.extend(fps)
        elif name != "contamination_index":  # that one is contamination's parent, in its lineage
            self.outcomes[name] = Outcome(name, fps[0], cached=states[0].name == "Cached")
            publish_search(self.store, fps[0], self.proxies)
        return fps

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


@task(name=CORPUS, cache_policy=NO_CACHE)
def ingest_drops_task(store_root: str, files: list[str], columns: dict[str, Any]) -> tuple[str, bool]:
    """Ingest the daily files not seen yet and combine all of them (the store is the cache)."""
    return drops.ingest(DatasetStore(store_root), [Path(f) for f in files], columns)


def submit_plans(store: DatasetStore, name: str, plans: list[StagePlan]) -> tuple[list[str], list[Any]]:
    """Submit every plan as a ``name`` task at once (the runner runs them in parallel); wait for all.

    Returns the fingerprints and the final task states, in the plans' order.
    """
    root = str(store.root)
    preload()  # transformers' lazy imports are not thread-safe
    futures = [stage_task(name, root, refresh=not store.exists(fingerprint_of(p))).submit(p, root) for p in plans]
    states = [f.wait() or f.state for f in futures]
    return [s.result() for s in states], states


def _config(config: dict[str, Any] | None, profile: str | None = None, store: str | None = None) -> PipelineConfig:
    """A flow run's settings, resolved as ``winnow run`` resolves them (:func:`winnow.config.load_config`).

    Defaults < ``profile`` < the working directory's ``winnow.toml`` < ``config`` (a partial
    config as JSON, e.g. ``{"dedup": {"threshold": 0.9}}``) < ``store`` (the store folder).
    """
    return load_config(profile=profile, overlay=config, store=store)


@flow(name="curate", log_prints=True)
def curate(config: dict[str, Any] | None = None, force: list[str] | None = None,
           last: str | None = None, profile: str | None = None, store: str | None = None) -> dict[str, Any]:
    """Ingest, dedup, decontaminate and check labels. Returns the run's outcomes so far."""
    run = PipelineRun(_config(config, profile, store), frozenset(force or ()), last)
    _curate(run)
    return {k: dataclasses.asdict(v) for k, v in run.outcomes.items()}


def _run_phase(run: PipelineRun, phase: str, outputs: dict[str, str | None]) -> dict[str, str | None]:
    """Run the pipeline stages of ``phase`` in registry order; ``outputs`` gains each one's fingerprint."""
    for spec in pipeline_specs():
        if spec.phase == phase:
            outputs[spec.name] = run.stage(spec.name, outputs)
    return outputs


def _curate(run: PipelineRun) -> dict[str, str | None]:
    outputs: dict[str, str | None] = {
        CORPUS: run.ingest("corpus", [run.config.inputs.corpus]),
        BENCHMARKS: run.ingest("benchmarks", list(run.config.inputs.benchmarks)),
    }
    return _run_phase(run, "curate", outputs)


def _train_and_evaluate(run: PipelineRun, curated: dict[str, str | None]) -> None:
    _run_phase(run, "train", curated)


@flow(name="train_and_evaluate", log_prints=True)
def train_and_evaluate(config: dict[str, Any] | None = None, force: list[str] | None = None,
                       last: str | None = None, profile: str | None = None,
                       store: str | None = None) -> dict[str, Any]:
    """Mixture, training and evaluation on the curated corpus (curation comes from cache)."""
    run = PipelineRun(_config(config, profile, store), frozenset(force or ()), last)
    _train_and_evaluate(run, _curate(run))
    return {k: dataclasses.asdict(v) for k, v in run.outcomes.items()}


@flow(name="nightly", log_prints=True)
def nightly(config: dict[str, Any] | None = None, force: list[str] | None = None,
            last: str | None = None, profile: str | None = None, store: str | None = None) -> dict[str, Any]:
    """The whole pipeline; publishes the receipt and lineage to the Prefect UI and the store.

    ``profile``, ``config`` (overlaid on ``winnow.toml``) and ``store`` as in :func:`_config`.
    """
    cfg = _config(config, profile, store)
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
    whole = run.last is None  # not a single-stage rerun: this run becomes the pipeline head
    info = {"cached": cached, "config": run.config.to_dict(), "kind": "pipeline" if whole else f"stage {run.last}",
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    store.record_run(run_id, outputs, info)
    if whole:
        heads.record_head(store, {"run_id": run_id, "outputs": outputs, **info})
    publish_run(store, rows, outputs)
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
    if stage not in pipeline_names():
        raise WinnowError(f"unknown stage '{stage}'; stages are: {', '.join(pipeline_names())}")

    # Flow and deployment are named like the stage (`stage_label_noise/label_noise`), the
    # spelling `winnow run --only` takes (it accepts `label-noise` too).
    @flow(name=f"stage_{stage}", log_prints=True)
    def rerun(config: dict[str, Any] | None = None, profile: str | None = None,
              store: str | None = None) -> dict[str, Any]:
        run = PipelineRun(_config(config, profile, store), frozenset({stage}), stage)
        _train_and_evaluate(run, _curate(run))
        return finish(run)

    return rerun


def flow_attr(stage: str) -> str:
    """The module attribute holding ``stage``'s flow: the deployment entrypoint's ``:NAME`` part."""
    return f"{stage}_flow"


# One flow object per pipeline stage, importable as entrypoints (e.g. flows/pipeline.py:dedup_flow);
# tests/test_graph.py checks deployments/prefect.yaml names each of them.
for _spec in pipeline_specs():
    globals()[flow_attr(_spec.name)] = stage_flow(_spec.name)
