"""The thin layer between a pure stage function and Prefect.

One generic executor loads a stage's inputs from the store, calls ``tasks.<stage>.run`` and writes
the :class:`~tasks.common.StageResult` back as one store entry. Every stage becomes a Prefect task
around that executor. Tasks exchange only fingerprints (short strings), never tables or models.

Caching: the output's fingerprint is derived *before* running from the stage name, its code version
(source of the stage and every project module it imports), its parameters and what it reads: the
content hash of each input table (recorded in its parent's manifest), or the parent's fingerprint
for a model folder. Content, not the parent's name, so an upstream rerun that yields the same rows
(label_noise with another ``filter_by`` and ``action = "flag"``) leaves everything downstream
cached: an early cutoff. That fingerprint is the Prefect cache key, so a rerun on the same data is a cache hit
across runs and processes. Prefect's cache records live inside the store (``prefect-cache/``), so
deleting a store also forgets its cache; if a record points at an entry that is gone, the flow sees
it before calling the task and refreshes that cache key instead of returning a dangling reference.

Hints: inputs that only save work. A reduce reads its map tasks' entries (dedup's per-shard
features); those are exact, so they stay out of the fingerprint. A stage may also read an earlier
output of itself as a cache (``embed`` reuses the vectors of texts it has seen): a reused vector was
computed in another batch and can differ from a fresh one in the last float bits, so that *cache
hint* is part of the fingerprint (by its table's content), and one fingerprint always names one
table. :func:`cache_hints` picks the hint under which the plan is already stored, so a rerun on
unchanged data is still a cache hit. The manifest records every hint under ``hints`` so lineage
shows where reused values came from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from storage import DatasetStore, code_version, derive_fingerprint, file_fingerprint, short
from tasks.common import StageResult, TableStream, Timings, concat_ledgers, set_progress_listener
from winnow import io as wio
from winnow.errors import WinnowError
from winnow.stages import FILES, INGEST_STAGES
from winnow.stages import spec as stage_spec


def parent_ref(fingerprint: str, table: str = "data") -> str:
    """How a task names one input: ``FP`` for the main table, ``FP/name`` for another one."""
    return fingerprint if table == "data" else f"{fingerprint}/{table}"


def split_ref(ref: str) -> tuple[str, str]:
    fp, _, table = ref.partition("/")
    return fp, table or "data"


def shard_ref(fingerprint: str, k: int, table: str = "data") -> str:
    """How a map task names one shard of a table: ``FP/table@k``."""
    return f"{fingerprint}/{table}@{k}"


def ref_list(refs: list[str]) -> str:
    """Several references as one hint value (a reduce reading every map task's entry)."""
    return ",".join(refs)


def _fps(value: str) -> list[str]:
    return [split_ref(r)[0] for r in value.split(",")]


@dataclass(frozen=True)
class StagePlan:
    """What one task will compute: enough to name its output before running it.

    ``hints`` are inputs that make the computation cheaper: a reduce's map entries, which cannot
    change its result and are not part of the fingerprint, and a stage's earlier output used as a
    cache (:func:`cache_hints`), which can change the last float bits and so is part of
    ``identity``. They are loaded and passed to ``run()`` like parents and recorded in the manifest.
    """

    stage: str
    parents: dict[str, str]  # run() argument name -> parent_ref(...)
    params: dict[str, Any]
    code_version: str
    hints: dict[str, str] = field(default_factory=dict)  # run() argument name -> parent_ref(...)
    # run() argument name -> what that input contributes to the fingerprint (see input_identity);
    # empty: the parent references themselves.
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return derive_fingerprint(self.stage, self.code_version, self.params, self.identity or self.parents)


def plan_stage(stage: str, parents: dict[str, str], params: Any, hints: dict[str, str] | None = None,
               store: DatasetStore | None = None) -> StagePlan:
    """Plan a registered stage (:mod:`winnow.stages`) with a Params dataclass or a plain dict.

    With ``store``, the fingerprint is made from the content of the input tables (see
    :func:`input_identity`); without it, from the parent references.
    """
    spec = stage_spec(stage)
    if not isinstance(params, dict):
        params = json.loads(json.dumps(_asdict(params)))
    parents = dict(sorted(parents.items()))
    identity = {k: input_identity(store, ref) for k, ref in parents.items()} if store is not None else {}
    if spec.identity:  # content a stage reads besides its parents (a model file)
        found = spec.load().identity(spec.params_type(**_params_for(spec.params_type, params)))
        if found:
            identity = {**(identity or parents), **{f"@{k}": v for k, v in found.items()}}
    hints = dict(hints or {})
    cache = spec.cache_hint and hints.get(spec.cache_hint[0])
    if cache:  # reused values are part of the result (see the module docstring)
        seen = input_identity(store, cache) if store is not None else cache
        identity = {**(identity or parents), f"~{spec.cache_hint[0]}": seen}
    return StagePlan(spec.name, parents, params, code_version(spec.module_name), hints, identity)


def input_identity(store: DatasetStore, ref: str) -> str:
    """What one input contributes to a fingerprint: its table's content hash, when known.

    A stage is a pure function of the tables it reads, so two parents holding equal tables must
    give the same output. A model folder (``FILES``) and entries written before content hashes
    were recorded fall back to the parent reference, which is at worst a needless recompute.
    """
    fp, table = split_ref(ref)
    if "@" in table:  # one shard: its rows' content hash (older entries: its file's digest)
        name, k = table.split("@")
        shard = store.manifest(fp).tables[name]["shards"][int(k)]
        return f"shard:{shard.get('content') or shard['sha256']}"
    if table != FILES:
        content = store.manifest(fp).tables.get(table, {}).get("content")
        if content:
            return f"table:{content}"
    return ref


def cache_hints(store: DatasetStore, stage: str, parents: dict[str, str], params: Any) -> dict[str, str]:
    """The cache hint for planning ``stage`` on ``parents``: an earlier output of its own, or nothing.

    Only a stage whose spec declares ``cache_hint = (run argument, table)`` (its module then has a
    ``reusable(params, metrics)`` test) takes one (``embed``: earlier vectors of the same model
    wheel). The hint is part of the fingerprint, so the choice is made in this order:

    1. a hint (or none) under which this very plan is already in the store: the one an earlier
       entry of the stage was computed with. A rerun on unchanged data is a cache hit;
    2. else the newest reusable entry: a grown corpus embeds only its new texts.
    """
    spec = stage_spec(stage)
    if spec.cache_hint is None:
        return {}
    arg, table = spec.cache_hint
    reusable = spec.load().reusable
    earlier = [m for m in reversed(store.entries())  # newest first
               if m.stage == stage and table in m.tables and reusable(m.params, m.metrics)]
    tried: set[str] = set()
    for m in earlier:
        used = m.hints.get(arg)
        if used in tried or (used and not store.exists(used)):
            continue  # its fingerprint cannot be derived once the entry it reused is gone
        tried.add(used)
        hint = {arg: parent_ref(used, table)} if used else {}
        if plan_stage(stage, parents, params, hints=hint, store=store).fingerprint == m.fingerprint:
            return hint
    return {arg: parent_ref(earlier[0].fingerprint, table)} if earlier else {}


def plan_ingest(kind: str, paths: list[str], columns: dict[str, Any]) -> StagePlan:
    """Plan reading user files: the parents are the files' content fingerprints."""
    parents = {}
    for i, path in enumerate(paths):
        wio.check_exists(Path(path))  # before resolve(), which would raise on a symlink loop
        files = wio.input_files(Path(path))
        root = Path(path) if Path(path).is_dir() else None
        parents[f"file{i}:{Path(path).name}"] = file_fingerprint(files, root)
    params = {"paths": [str(Path(p).resolve()) for p in paths], "columns": columns}
    # The absolute path is recorded for lineage but must not make equal content a cache miss.
    return StagePlan(f"ingest_{kind}", parents, params, code_version("winnow.io"))


def fingerprint_of(plan: StagePlan) -> str:
    """Content identity of an ingest ignores where the files sit; a stage's is its full plan."""
    if plan.stage in INGEST_STAGES:
        slim = {k: v for k, v in plan.params.items() if k != "paths"}
        parents = {k.split(":", 1)[0]: v for k, v in plan.parents.items()}
        return derive_fingerprint(plan.stage, plan.code_version, slim, parents)
    return plan.fingerprint


def run_in_turn(store: DatasetStore) -> Callable[[str, list[StagePlan]], list[str]]:
    """A submit (``(task name, plans) -> fingerprints``) that computes the plans one after another
    in this process, without Prefect: what ``winnow STAGE`` uses for map tasks and proxies."""
    return lambda name, plans: [execute(p, str(store.root)) for p in plans]


def execute(plan: StagePlan, store_root: str, force: bool = False, prepared: "Prepared | None" = None) -> str:
    """Compute a planned stage into the store and return its fingerprint.

    An output already in the store is reused unless ``force`` (a user asked to rerun the stage),
    in which case it is recomputed and swapped in atomically. The check and the computation run
    under the entry's lock, so a second run asking for the same entry meanwhile waits (and says
    so) and then reuses it; a writer killed midway leaves no lock and no partial entry.
    ``prepared`` is an ingest already read and validated by :func:`prepare_ingest`.
    """
    store = DatasetStore(store_root)
    fp = fingerprint_of(plan)
    if store.exists(fp) and not force:
        return fp
    with store.lock(fp, f"{plan.stage} {short(fp)}"):
        if store.exists(fp) and not force:  # computed by the run we waited for
            store.journal("reused_after_wait", fp, stage=plan.stage)
            return fp
        timings = Timings()
        if prepared is not None and prepared.result is not None:
            result, inputs, files_from, hints = prepared.result, prepared.inputs, None, {}
        else:
            result, inputs, files_from, hints = _compute(plan, store, force)
        store.put(
            fingerprint=fp,
            stage=plan.stage,
            params=plan.params,
            code_version=plan.code_version,
            parents={k: split_ref(v)[0] for k, v in plan.parents.items()},
            tables=result.tables,
            removed=concat_ledgers([result.removed]),
            metrics=result.metrics,
            files_from=files_from,
            inputs=inputs,
            hints={k: ",".join(_fps(v)) for k, v in hints.items()},
            elapsed_s=timings.total(),
            replace=force,
            segments=result.segments,
        )
        store.journal("computed", fp, stage=plan.stage, seconds=round(timings.total(), 3))
        shutil.rmtree(store.checkpoint_dir(fp), ignore_errors=True)  # committed: nothing left to resume
    return fp


@dataclass
class Prepared:
    """An ingest read and validated in memory, not yet committed (see :func:`prepare_ingest`)."""

    plan: StagePlan
    table: pa.Table  # the canonical table the ingest entry holds (or will hold)
    result: StageResult | None = None  # None: the entry is already in the store
    inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.plan)


def prepare_ingest(plan: StagePlan, store: DatasetStore) -> Prepared:
    """Read and validate the user's files for ``plan`` without writing anything.

    Callers check everything else that can fail (stage settings, :func:`precheck`) and only then
    commit with :func:`execute` (``prepared=``), so a bad input leaves the store as it was.
    """
    fp = fingerprint_of(plan)
    if store.exists(fp):
        return Prepared(plan, store.table(fp))
    result, inputs = _ingest(plan, stream=False)
    return Prepared(plan, result.tables["data"], result, inputs)


def commit(prepared: Prepared, store: DatasetStore) -> str:
    """Write a :func:`prepare_ingest` result into the store (a no-op if it is there already)."""
    return execute(prepared.plan, str(store.root), prepared=prepared)


def precheck(stage: str, params: Any, **tables: pa.Table) -> None:
    """Run the stage's cheap input checks (``precheck`` in its spec) if it declares them."""
    spec = stage_spec(stage)
    if spec.precheck:
        spec.load().precheck(**tables, params=params)


def _compute(plan: StagePlan, store: DatasetStore, force: bool
             ) -> tuple[StageResult, list[dict[str, Any]], Path | None, dict[str, str]]:
    """Run the stage function (or the ingest) on its loaded inputs; nothing is committed here."""
    if plan.stage in INGEST_STAGES:
        result, inputs = _ingest(plan)
        return result, inputs, None, {}
    spec = stage_spec(plan.stage)
    module = spec.load()
    kwargs = _load_inputs(store, plan.parents, spec.streams)
    kwargs.update(_load_inputs(store, _usable_hints(plan, store, force), spec.streams))
    hints = {k: v for k, v in plan.hints.items() if k in kwargs}
    params = spec.params_type(**_params_for(spec.params_type, plan.params))
    files_from = store.scratch_dir() if spec.needs_out_dir else None
    if files_from is not None:
        kwargs["out_dir"] = files_from
    if spec.checkpoints:
        # Keyed by the output fingerprint: a rerun after a crash resumes from here.
        kwargs["checkpoint_dir"] = store.checkpoint_dir(fingerprint_of(plan))
    spill = store.scratch_dir() if spec.spill else None
    if spill is not None:
        kwargs["spill_dir"] = spill
    try:
        result = module.run(**kwargs, params=params)
    except BaseException:
        if files_from is not None:
            shutil.rmtree(files_from, ignore_errors=True)
        raise
    finally:
        if spill is not None:  # a killed run's folder is swept by `store clean` (its owner is gone)
            shutil.rmtree(spill, ignore_errors=True)
    if not isinstance(result, StageResult):
        raise TypeError(f"tasks.{plan.stage}.run returned {type(result).__name__}, not StageResult")
    return result, [], files_from, hints


def _usable_hints(plan: StagePlan, store: DatasetStore, force: bool) -> dict[str, str]:
    """The plan's hints that this computation reads.

    A map hint whose entry has gone since planning is dropped (it was only ever a shortcut), and a
    forced recompute takes none. The cache hint is part of the fingerprint, so it is always read,
    and its entry having gone is an error rather than a silently different result.
    """
    spec = stage_spec(plan.stage)
    cache_arg = spec.cache_hint[0] if spec.cache_hint else None
    out = {}
    for arg, value in plan.hints.items():
        present = all(map(store.exists, _fps(value)))
        if arg == cache_arg:
            if not present:
                raise WinnowError(f"{plan.stage}: the earlier entry {short(_fps(value)[0])} this run reuses "
                                  f"has gone from the store; run again to plan without it")
            out[arg] = value
        elif present and not force:
            out[arg] = value
    return out


def _asdict(params: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params)


def _params_for(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """JSON turned tuples into lists; give tuple-typed fields their tuples back."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            out[f.name] = tuple(v) if isinstance(v, list) and "tuple" in str(f.type) else v
    return out


def _load_inputs(store: DatasetStore, parents: dict[str, str], streams: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each ``run()`` argument's value: a table, one shard of one (``FP/t@k``), a model folder, or
    a list of tables for a comma-separated list of references (see :func:`ref_list`). Arguments in
    ``streams`` get :class:`~storage.store.ShardedTable` handles instead of tables."""
    kwargs: dict[str, Any] = {}
    for arg, value in parents.items():
        loaded = [_load(store, ref, arg in streams) for ref in value.split(",")]
        kwargs[arg] = loaded if "," in value else loaded[0]
    return kwargs


def _load(store: DatasetStore, ref: str, lazy: bool = False) -> Any:
    fp, table = split_ref(ref)
    if table == FILES:
        return store.files_dir(fp)
    if "@" in table:
        name, k = table.split("@")
        return store.read_shard(fp, name, int(k))
    return store.sharded(fp, table) if lazy else store.table(fp, table)


def _ingest(plan: StagePlan, stream: bool = True) -> tuple[StageResult, list[dict[str, Any]]]:
    """Read and validate the plan's files. A corpus of Parquet is streamed into the store (see
    :func:`_streamed_corpus`) unless ``stream`` is False (a caller that needs the table itself)."""
    columns = dict(plan.params["columns"])
    split = columns.pop("split", None)
    unique_ids = columns.pop("unique_ids", True)
    paths = plan.params["paths"]
    if stream and plan.stage == "ingest_corpus" and len(paths) == 1:
        files = wio.streamable_parquet(Path(paths[0]))
        if files is not None:
            return _streamed_corpus(paths[0], files, next(iter(plan.parents.values())), wio.Columns(**columns),
                                    unique_ids)
    tables = []
    inputs = []
    for path, (_, fp) in zip(paths, plan.parents.items()):
        raw = wio.read_table(path, split=split)
        if plan.stage == "ingest_corpus":
            tables.append(wio.canonical_corpus(raw, wio.Columns(**columns), where=path, unique_ids=unique_ids))
        else:
            tables.append(wio.canonical_benchmarks(raw, where=path, default_name=_stem(path),
                                                   fmt=columns.get("format", "auto"), fields=columns.get("fields")))
        inputs.append({"path": path, "fingerprint": fp, "rows": raw.num_rows})
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    if len(tables) > 1 and unique_ids:
        wio.check_unique_ids(table["id"], where=" + ".join(paths), column="id")
    return StageResult(tables={"data": table}, metrics=ingest_metrics(table)), inputs


def _streamed_corpus(path: str, files: list[Path], fingerprint: str, cols: wio.Columns, unique_ids: bool
                     ) -> tuple[StageResult, list[dict[str, Any]]]:
    """A Parquet corpus written to the store piece by piece, so an ingest of any size holds one
    piece (plus the ids, for the uniqueness check): the same entry as reading it whole.

    The metrics are counted as the pieces pass: the store reads them once the tables are written.
    """
    schema, rows, pieces = wio.stream_corpus(files, cols, where=path, unique_ids=unique_ids)
    metrics: dict[str, Any] = {"rows_out": rows}

    def counted() -> Iterator[pa.Table]:
        by_domain: dict[str, int] = {}
        for piece in pieces():
            counts = pc.value_counts(piece["domain"])
            for value, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
                by_domain[value] = by_domain.get(value, 0) + n
            yield piece
        metrics["rows_by_domain"] = by_domain

    result = StageResult(tables={"data": TableStream(schema, counted)}, metrics=metrics)
    return result, [{"path": path, "fingerprint": fingerprint, "rows": rows}]


def ingest_metrics(table: pa.Table) -> dict[str, Any]:
    """An ingest entry's receipt metrics: rows, and rows per domain or benchmark."""
    metrics: dict[str, Any] = {"rows_out": table.num_rows}
    for column in ("domain", "benchmark"):
        if column in table.column_names:  # value_counts, not group_by: that imports acero (~30 ms a command)
            counts = pc.value_counts(table[column])
            metrics[f"rows_by_{column}"] = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    return metrics


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".parquet", ".jsonl", ".json", ".ndjson"):
        name = name.removesuffix(suffix)
    return name


# -- Prefect ---------------------------------------------------------------------------------------


def _prefect_task(stage: str):
    """The Prefect task for one stage: a named wrapper around :func:`execute`."""
    from prefect import task
    from prefect.cache_policies import CachePolicy

    class StageFingerprint(CachePolicy):
        """Cache key = the planned output fingerprint (inputs + params + code version)."""

        def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):  # noqa: ANN001
            return fingerprint_of(inputs["plan"])

    def run_stage(plan: StagePlan, store_root: str, force: bool = False) -> str:
        set_progress_listener(_progress_reporter(stage))
        try:
            fp = execute(plan, store_root, force=force)
        finally:
            set_progress_listener(None)
        _publish_stage(stage, fp, store_root)
        return fp

    run_stage.__name__ = stage
    run_stage.__qualname__ = stage
    return task(
        name=stage,
        task_run_name=f"{stage}",
        cache_policy=StageFingerprint(),
        cache_expiration=timedelta(days=365),
        persist_result=True,
        result_serializer="json",
        log_prints=True,
    )(run_stage)


_TASKS: dict[str, Any] = {}


def stage_task(stage: str, store_root: str, refresh: bool = False):
    """The Prefect task for ``stage``, with cache records kept inside the store at ``store_root``.

    No Prefect lock manager: its file locks outlive a killed run (``"expiration": null``) and hung
    every later run. Two flows reaching one stage at once are serialised by the store's own entry
    lock inside :func:`execute` instead, which the kernel releases when its holder dies.
    """
    if stage not in _TASKS:
        _TASKS[stage] = _prefect_task(stage)
    root = Path(store_root)
    policy = _TASKS[stage].cache_policy.configure(key_storage=root / "prefect-cache")
    return _TASKS[stage].with_options(cache_policy=policy, refresh_cache=refresh)


def _progress_reporter(stage: str):
    """Mirror a stage's `track` progress into one Prefect progress artifact per task run."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is None:
            return None
    except ImportError:  # pragma: no cover
        return None
    state: dict[str, Any] = {"id": None, "last": -1.0, "failed": False, "desc": None}

    def report(desc: str, fraction: float) -> None:
        pct = round(100.0 * fraction, 1)
        if desc != state["desc"]:  # a stage's next phase (label_noise: folds, then AUM epochs) starts at 0
            state["desc"], state["last"] = desc, -1.0
        if state["failed"] or (pct - state["last"] < 5.0 and pct < 100.0):
            return  # keep API traffic low: one update per 5%
        state["last"] = pct
        try:
            if state["id"] is None:
                state["id"] = create_progress_artifact(pct, description=f"{stage}: {desc}")
            else:
                update_progress_artifact(state["id"], pct, description=f"{stage}: {desc}")
        except Exception:
            # Progress display must never fail a stage, nor stall it: with the server gone each
            # call spends its client's retries (tens of seconds), so one failure ends the display.
            state["failed"] = True

    return report


def _publish_stage(stage: str, fp: str, store_root: str) -> None:
    """Show what a computed stage did in the Prefect UI: removed rows, and a lineage event."""
    from prefect.artifacts import create_table_artifact
    from prefect.events import emit_event

    store = DatasetStore(store_root)
    m = store.manifest(fp)
    removed = store.removed(fp)
    if removed.num_rows:
        rows = removed.slice(0, 50).to_pylist()
        create_table_artifact(
            rows,
            key=f"removed-{stage.replace('_', '-')}",
            description=f"{stage}: first {len(rows)} of {removed.num_rows} ledger rows (entry {short(fp)}). "
            f"`winnow why ID` explains any row.",
        )
    ranked = stage_spec(stage).worst_rows if stage not in INGEST_STAGES else None
    if ranked is not None and ranked in m.tables:
        # A stage that ranks rows (label_noise) shows its worst ones, not just the first ledger rows.
        create_table_artifact(
            stage_spec(stage).load().worst_rows(store.table(fp, ranked), store.table(fp)),
            key=f"worst-rows-{stage.replace('_', '-')}",
            description=f"{stage}: the rows most likely mislabelled, worst first (entry {short(fp)}).",
        )
    _publish_plots(stage, fp, store)
    emit_event(
        event="winnow.dataset.materialized",
        resource={"prefect.resource.id": f"winnow.dataset.{fp}", "prefect.resource.name": f"{stage}@{short(fp)}",
                  "winnow.stage": stage},
        related=[
            {"prefect.resource.id": f"winnow.dataset.{parent}", "prefect.resource.role": f"parent:{name}"}
            for name, parent in m.parents.items()
        ] + [
            {"prefect.resource.id": f"winnow.dataset.{hint}", "prefect.resource.role": f"cache-hint:{name}"}
            for name, hint in m.hints.items()
        ],
        payload={"params": m.params, "code_version": m.code_version, "tables": {k: v["rows"] for k, v in m.tables.items()},
                 "removed": m.removed, "store": str(store.root)},
    )




def _publish_plots(stage: str, fp: str, store: DatasetStore) -> None:
    """A stage's PNG files (train's loss curve) as a markdown artifact with the image inlined."""
    import base64

    from prefect.artifacts import create_markdown_artifact

    m = store.manifest(fp)
    for name in (f for f in m.files if f.endswith(".png") and "/" not in f):
        data = base64.b64encode((store.files_dir(fp) / name).read_bytes()).decode("ascii")
        create_markdown_artifact(
            f"![{name}](data:image/png;base64,{data})\n\n{stage} entry `{short(fp)}`: "
            f"`{store.files_dir(fp) / name}`",
            key=f"{stage.replace('_', '-')}-{name.removesuffix('.png').replace('_', '-')}",
            description=f"{stage}: {name} (entry {short(fp)})",
        )
