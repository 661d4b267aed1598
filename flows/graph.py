"""Walking the declared stage graph (:mod:`winnow.stages`): which references feed a stage.

Two callers wire stages together and both come here, so the graph is written down once:

* a pipeline run (:mod:`flows.pipeline`): each input comes from the upstream stage's output in
  this run, or from a store entry an ``[inputs]`` key names (``dedup_index``);
* ``winnow STAGE IN`` (:mod:`winnow.cli`): the stage's main input is the user's file, benchmarks
  are the user's benchmark files, an input with a CLI flag is the store entry the user named, and
  any other input is computed from the user's file by its own upstream stage (``train`` tokenizes
  IN first; ``label-noise`` embeds IN first when it uses MiniLM or SmolLM2 features).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from storage import DatasetStore
from winnow.errors import WinnowError
from winnow.stages import BENCHMARKS, FILES, PREPARED, Input, StageSpec, resolve_hook, spec

Submit = Callable[[str, list], list[str]]


def ref(fingerprint: str | None, table: str = "data") -> str | None:
    """How a task names one input: ``FP`` for the main table, ``FP/name`` for another one."""
    if fingerprint is None:
        return None
    return fingerprint if table == "data" else f"{fingerprint}/{table}"


def entry_ref(store: DatasetStore, text: str, inp: Input, where: str) -> str:
    """The reference for ``inp`` to the store entry the user named by ``text`` (checked, not trusted).

    ``where`` names the flag or config key in the error, so a wrong entry is one clear line.
    """
    fp = store.resolve(text)
    m = store.manifest(fp)
    if inp.table == FILES:
        if m.kind != "model":
            raise WinnowError(f"{where} {text}: store entry {fp[:12]} is a {m.stage} dataset, not a model")
    elif inp.table not in m.tables:
        raise WinnowError(f"{where} {text}: store entry {fp[:12]} is a {m.stage} entry with no {inp.table} "
                          f"table; give an earlier {inp.source} output")
    return ref(fp, inp.table)  # type: ignore[return-value]


def configured_refs(stage: StageSpec, config: Any, store: DatasetStore,
                    given: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Inputs that name existing store entries: a CLI flag's value (``given``) or an ``[inputs]`` key."""
    out: dict[str, str] = {}
    for inp in stage.inputs:
        text = (given or {}).get(inp.arg)
        where = inp.option or ""
        if not text and inp.config:
            text, where = getattr(config.inputs, inp.config), f"inputs.{inp.config}"
        if text:
            out[inp.arg] = entry_ref(store, text, inp, where)
        elif given is not None and inp.option and not inp.optional:
            raise WinnowError(f"{stage.command}: {inp.option} is required")
    return out


def run_parents(stage: StageSpec, outputs: Mapping[str, str | None], named: Mapping[str, str]
                ) -> dict[str, str] | None:
    """A pipeline stage's parents from this run's ``outputs`` (stage -> fingerprint) and ``named``
    entries (:func:`configured_refs`); None when a required input is missing (the run stopped
    before its source, or the source did not run).
    """
    parents: dict[str, str] = {}
    for inp in stage.inputs:
        if inp.source == PREPARED:
            continue
        found = named.get(inp.arg) or ref(outputs.get(inp.source), inp.table)
        if found is None:
            if inp.optional:
                continue
            return None
        parents[inp.arg] = found
    return parents


def cli_parents(stage: StageSpec, user_rows: str, benchmarks: str | None, named: Mapping[str, str],
                compute: Callable[[StageSpec, dict[str, str]], str], config: Any) -> dict[str, str]:
    """``winnow STAGE IN``'s parents: IN feeds the main input, upstream stages run on IN.

    ``compute(spec, parents)`` computes one upstream stage and returns its fingerprint.
    """
    parents: dict[str, str] = {}
    main = stage.main_input and stage.main_input.arg
    for inp in stage.inputs:
        if inp.arg == main:
            parents[inp.arg] = user_rows
        elif inp.arg in named:
            parents[inp.arg] = named[inp.arg]
        elif inp.source == BENCHMARKS:
            if benchmarks is not None:
                parents[inp.arg] = benchmarks
        elif inp.source == PREPARED or inp.option or inp.config:
            continue
        else:
            upstream = spec(inp.source)
            if inp.optional and not upstream.wants(config):
                continue
            # The upstream stage reads the same rows: IN feeds its main input too.
            up = cli_parents(upstream, user_rows, benchmarks, {}, compute, config)
            parents[inp.arg] = ref(compute(upstream, up), inp.table)  # type: ignore[assignment]
    return parents


def cli_computes(stage: StageSpec, config: Any) -> tuple[str, ...]:
    """The stages ``winnow STAGE IN`` computes: its upstream stages on IN, then itself."""
    chain: list[str] = []
    main = stage.main_input and stage.main_input.arg
    for inp in stage.inputs:
        if inp.arg == main or inp.source in (BENCHMARKS, PREPARED) or inp.option or inp.config:
            continue
        upstream = spec(inp.source)
        if not inp.optional or upstream.wants(config):
            chain.extend(c for c in cli_computes(upstream, config) if c not in chain)
    return (*chain, stage.name)


def prepared_inputs(stage: StageSpec, store: DatasetStore, parents: Mapping[str, str], params: Any,
                    submit: Submit, benchmarks: str | None = None) -> dict[str, str]:
    """Extra inputs the stage's ``prepare`` hook computes first (none for most stages).

    ``benchmarks`` (the ingested benchmark items, where the run has them) reaches the hook for
    targets that score them (mixture's ``benchmark:NAME``).
    """
    if stage.prepare is None:
        return {}
    return resolve_hook(stage.prepare)(store, parents, params, submit, benchmarks)


def map_hints(stage: StageSpec, store: DatasetStore, parents: Mapping[str, str], params: Any,
              submit: Submit) -> dict[str, str]:
    """A ``shard_map`` stage's map tasks, one per shard of its main input, submitted together
    (``submit`` runs them on the task runner: threads or a Dask cluster's workers); returns the
    hints that hand their entries to the reduce: ``arg`` for their ``data`` tables, ``arg_T`` for
    each further table ``T``. Nothing when the input is one shard."""
    from flows.stagetask import parent_ref, plan_stage, ref_list, shard_ref, split_ref

    if stage.shard_map is None or stage.main_input is None:
        return {}
    map_stage = stage.shard_map[0]
    fp, table = split_ref(parents[stage.main_input.arg])
    shards = store.manifest(fp).tables[table].get("shards", [])
    if len(shards) < 2:
        return {}
    mapper = spec(map_stage)
    main = mapper.inputs[0].arg
    shared = {i.arg: parents[i.arg] for i in mapper.inputs[1:] if i.arg in parents}
    if len(shared) < len(mapper.inputs) - 1:
        return {}  # an input the map needs is absent from this run (contamination without benchmarks)
    own = _own_params(mapper, params)
    plans = [plan_stage(map_stage, {main: shard_ref(fp, k, table), **shared}, own, store=store) for k in range(len(shards))]
    refs = submit(map_stage, plans)
    return {name: ref_list([parent_ref(r, t) for r in refs]) for name, t in stage.map_args().items()}


def _own_params(mapper: StageSpec, params: Any) -> dict[str, Any]:
    """The reduce's parameters that the map stage's ``Params`` declares (dedup_map: all of dedup's;
    contamination_scan: none), as the plain values a plan holds."""
    import dataclasses
    import json

    values = json.loads(json.dumps(dataclasses.asdict(params) if not isinstance(params, dict) else params))
    names = {f.name for f in dataclasses.fields(mapper.params_type)}
    return {k: v for k, v in values.items() if k in names}


def plan(stage: StageSpec, store: DatasetStore, parents: Mapping[str, str], params: Any, submit: Submit,
         forced: bool = False) -> Any:
    """The :class:`~flows.stagetask.StagePlan` of one stage, with its hints: the map tasks of a
    ``shard_map`` stage (submitted here) and, unless the stage is forced, its cache hint. A forced
    embed recomputes every vector, so it plans without the cache."""
    from flows.stagetask import cache_hints, plan_stage

    hints = {} if forced else cache_hints(store, stage.name, dict(parents), params)
    hints |= map_hints(stage, store, parents, params, submit)
    return plan_stage(stage.name, dict(parents), params, hints=hints, store=store)


def learned_weights(store: DatasetStore, parents: Mapping[str, str], params: Any, submit: Submit,
                    benchmarks: str | None = None) -> dict[str, str]:
    """mixture's ``prepare`` hook: a learned method (RegMix, DoReMi) runs its proxies and fit first."""
    from flows.search import learned_weights as fit
    from tasks.mixture import LEARNED

    if params.method not in LEARNED:
        return {}
    return {"weights": fit(store, parents["corpus"], params, submit, benchmarks)}


def benchmark_index(store: DatasetStore, parents: Mapping[str, str], params: Any, submit: Submit,
                    benchmarks: str | None = None) -> dict[str, str]:
    """contamination's ``prepare`` hook: the benchmark n-gram index as its own cached entry
    (``contamination_index``), keyed by the benchmarks' content and the index settings, so a run
    whose benchmarks did not change reads it instead of building it."""
    from flows.stagetask import plan_stage
    from tasks.contamination import index_params

    if "benchmarks" not in parents:
        return {}
    plan = plan_stage("contamination_index", {"benchmarks": parents["benchmarks"]}, index_params(params), store=store)
    return {"index": submit("contamination_index", [plan])[0]}
