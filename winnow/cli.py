"""The ``winnow`` command line.

``winnow run`` runs the whole pipeline as a Prefect flow; ``winnow STAGE IN --out OUT`` applies one
stage to a user's file (through the same store, so it is cached and has lineage); ``winnow store``,
``winnow lineage`` and ``winnow why`` inspect what was made and why rows were removed.
Errors in the user's input or configuration print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from winnow.errors import WinnowError

EXIT_USAGE = 2
#: One-stage commands whose code and inputs hand pyarrow no pandas object: they run with pandas
#: kept out (winnow/pandas_guard.py), which saves its import, a fifth of a short command.
PANDAS_FREE = ("contamination", "dedup")

# Before torch is imported anywhere: OpenMP's default spin-waiting made training ~10x slower on a
# busy 2-core machine (measured; see BENCHMARKS.md, train). A user's explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Fixed BLAS/OpenMP thread counts, so results do not depend on machine load (see tasks/train.py).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")


def _prefect_env(debug: bool = False) -> None:
    """Quiet, local, offline Prefect defaults; a user's explicit settings win.

    Without ``--debug`` Prefect logs only what is critical: a failing task would otherwise print
    its traceback (~100 lines) before winnow's own one-line error.
    """
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The throwaway server of a run without PREFECT_API_URL can take >20 s to start on a busy box.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING" if debug else "CRITICAL",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING" if debug else "CRITICAL",
        "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "4",
        # The V2 UI of the server in use: Prefect's own "View at" links are built on this, and V1
        # shows the lineage diagram as mermaid source.
        "PREFECT_UI_URL": os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").rstrip("/").removesuffix("/api") + "/v2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' weight-loading bars drown the receipt
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="pipeline config file (TOML; default ./winnow.toml if present)")
    p.add_argument("--profile", help="a named profile from winnow/profiles.toml, e.g. smoke")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set dedup.threshold=0.9 (repeatable)")
    p.add_argument("--store", help="store folder (overrides [store].root; default ./.winnow)")
    p.add_argument("--debug", action="store_true", help="on failure, show Prefect's logs and the full traceback")


def _add_column_args(p: argparse.ArgumentParser, label: bool = False) -> None:
    p.add_argument("--id-column", default="id", help="column holding unique row ids (default: id)")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--domain-column", default="domain", help="column naming each row's domain (optional)")
    p.add_argument("--label-column", default="label", help="column holding labels (default: label)")
    p.add_argument("--split", help="split to read when IN is a saved `datasets` DatasetDict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winnow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole pipeline (a Prefect flow) and print its receipt")
    _add_config_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="STAGE", help="rerun this stage alone on cached upstream outputs")
    which.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")

    p = sub.add_parser("ablate", help="train with and without each curation stage; print the receipt with 95%% intervals")
    _add_config_args(p)
    p.add_argument("--seeds", type=int, default=3, help="training seeds per variant (default 3)")
    p.add_argument("--stages", default="dedup,contamination,label_noise,mixture",
                   help="comma-separated stages to ablate (default: all four)")
    p.add_argument("--repeat-fraction", type=float, default=0.001,
                   help="injected-repetition probe: share of documents copied (default 0.001; 0 disables)")
    p.add_argument("--repeat-times", type=int, default=100, help="copies of each probed document (default 100)")
    p.add_argument("--json", action="store_true", help="print the receipt rows as JSON")

    p = sub.add_parser("config", help="print the resolved configuration, every key documented")
    _add_config_args(p)

    p = sub.add_parser("store", help="list or describe store entries")
    ssub = p.add_subparsers(dest="store_command", required=True)
    q = ssub.add_parser("ls", help="list entries, newest last")
    q.add_argument("--store")
    q.add_argument("--stage", help="only entries of this stage")
    q = ssub.add_parser("show", help="describe one entry (manifest, tables, removal summary)")
    q.add_argument("ref", help="fingerprint prefix, a stage name (pipeline head), RUN:STAGE or an entry folder")
    q.add_argument("--store")
    q = ssub.add_parser("clean", help="delete what crashed runs left: abandoned staging folders and free lock files")
    q.add_argument("--store")
    q = ssub.add_parser("verify", help="re-hash every entry against its manifest; report any that differ")
    q.add_argument("--store")
    q.add_argument("ref", nargs="*", help="entries to check (default: all)")

    p = sub.add_parser("lineage", help="the chain from an entry back to the input files")
    p.add_argument("ref", help="fingerprint prefix, a stage name (pipeline head), RUN:STAGE or an entry folder")
    p.add_argument("--store")
    p.add_argument("--mermaid", action="store_true", help="print a mermaid diagram instead of text")

    p = sub.add_parser("why", help="why was this row removed (or masked, flagged, relabelled)?")
    p.add_argument("row_id")
    p.add_argument("--store")
    p.add_argument("--run", default="head",
                   help="look in this run's entries (default: head, the newest whole-pipeline run; "
                        "'latest' = the newest run of any kind; 'all' = whole store)")

    p = sub.add_parser("deploy", help="list the Prefect deployments and the exact command that runs each")
    p.add_argument("--profile", help="pass this profile to the runs (e.g. smoke)")
    p.add_argument("--store", help="pass this store folder to the runs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="pass this override in the runs' config parameter (repeatable)")

    _add_stage_parsers(sub)
    return parser


def _add_stage_parsers(sub: Any) -> None:
    """One subcommand per stage that runs on a user's file (`winnow STAGE IN --out OUT`), from the
    stage registry: an input read from the benchmarks gets the benchmark flags, an input that names
    a store entry gets its flag, and a stage's own flags come from its spec."""
    from winnow.stages import BENCHMARKS, cli_specs

    for spec in cli_specs():
        p = sub.add_parser(spec.command, help=spec.cli)
        p.add_argument("input", metavar="IN", help="Parquet file/folder, JSONL(.gz) or a `datasets` folder")
        p.add_argument("--out", required=True, help="output Parquet (or .jsonl) file; a folder for `train`")
        p.add_argument("--removed", help="where to write the removal report (default: OUT stem + .removed.parquet)")
        if any(i.source == BENCHMARKS for i in spec.inputs) or spec.benchmark_target:
            _add_benchmark_args(p)
        for inp in spec.inputs:
            if inp.option:
                p.add_argument(inp.option, dest=_dest(inp.option), metavar="REF", required=not inp.optional,
                               help=inp.help)
        for opt in spec.options:
            if opt.switch:
                p.add_argument(opt.flag, dest=_dest(opt.flag), action="store_true", help=opt.help)
            else:
                p.add_argument(opt.flag, dest=_dest(opt.flag), choices=opt.choices or None, help=opt.help)
        _add_column_args(p)
        _add_config_args(p)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _add_benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", action="append", default=[], metavar="B",
                   help="benchmark file (repeatable; default: the bundled benchmarks)")
    p.add_argument("--benchmark-format", metavar="FORMAT",
                   help="benchmark format: auto (default: detected from the fields), mmlu, mmlu_prompt, "
                        "arc, hellaswag, gsm8k, truthfulqa_mc or lm_eval")
    p.add_argument("--benchmark-field", action="append", default=[], metavar="ROLE=COLUMN",
                   help="read benchmark role ROLE (question, choices, answer, target, id, benchmark, "
                        "context) from COLUMN (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``winnow`` command."""
    args = build_parser().parse_args(argv)
    from winnow import pandas_guard

    try:
        with pandas_guard.kept_out() if args.command in PANDAS_FREE else contextlib.nullcontext():
            return _dispatch(args)
    except WinnowError as e:
        print(f"winnow: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `winnow lineage X | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # permissions, a full disk, a folder where a file was expected, ...
        if getattr(args, "debug", False):
            raise
        where = e.filename or ""
        print(f"winnow: error: {where}{': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("winnow: interrupted; the store holds only complete entries", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return cmd_run(args)
    if args.command == "ablate":
        return cmd_ablate(args)
    if args.command == "config":
        from winnow.config import describe

        print(describe(_load(args)), end="")
        return 0
    if args.command == "store":
        return cmd_store(args)
    if args.command == "lineage":
        return cmd_lineage(args)
    if args.command == "why":
        return cmd_why(args)
    if args.command == "deploy":
        from winnow.deploy import listing

        print("deployments/worker.sh serves these (flow/deployment), then run one with:")
        print(listing(args.profile, args.store, args.overrides))
        return 0
    return cmd_stage(args)


def _load(args: argparse.Namespace):
    from winnow.config import load_config

    return load_config(args.config, args.profile, list(args.overrides), store=getattr(args, "store", None))


def _store(args: argparse.Namespace):
    from storage import DatasetStore
    from winnow.config import load_config

    root = Path(args.store or load_config().store.root)
    if root.exists() and not root.is_dir():
        raise WinnowError(f"--store {root}: is a file, not a store folder")
    return DatasetStore(root)


def _writable_store(root: str | Path):
    """The store at ``root``, after checking (without writing) that it can be created or written."""
    from storage import DatasetStore
    from winnow import io as wio

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise WinnowError(f"store {root}: is a file, not a store folder (choose another --store)")
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise WinnowError(f"store {root}: permission denied (cannot write in it)")
    if not root.exists():
        wio.writable_parent(root)
    return DatasetStore(root)


# -- run -------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline flow; print the receipt, mixture weights, metrics and output paths."""
    from winnow.stages import pipeline_names
    from winnow.stages import spec as stage_spec

    order = pipeline_names()
    cfg = _load(args)
    force: list[str] = []
    last = None
    for name in (args.only, args.from_stage):
        if name and name.replace("-", "_") not in order:
            raise WinnowError(f"unknown stage '{name}'; stages are: {', '.join(order)}")
    if args.only:
        force, last = [args.only.replace("-", "_")], args.only.replace("-", "_")
    elif args.from_stage:
        start = order.index(args.from_stage.replace("-", "_"))
        force = list(order[start:])
    vectors = {"embed": "minilm", "embed_lm": "smollm2"}
    if last in vectors and not stage_spec(last).wants(cfg):
        kind = vectors[last]
        raise WinnowError(
            f"--only {last}: {last} computes label_noise's {kind} vectors, but label_noise.features is "
            f"'{cfg.params('label_noise').features}'; set label_noise.features='tfidf+{kind}' (or '{kind}')"
        )
    _preflight(cfg)
    _prefect_env(args.debug)
    from flows.pipeline import nightly, task_runner
    from flows.receipt import benchmark_rows, domain_rows, evaluation_summary, format_table, mixture_weights, receipt_rows
    import pyarrow as pa
    import pyarrow.compute as pc

    from storage import DatasetStore, short

    started = time.perf_counter()
    flow = nightly.with_options(task_runner=task_runner(cfg))
    state = flow(config=cfg.to_dict(), force=force, last=last, return_state=True)
    if state.is_failed():
        exc = _exception_of(state)
        if isinstance(exc, WinnowError):
            raise exc
        if args.debug:
            raise exc
        print(f"winnow: error: the flow failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(rerun with --debug for Prefect's logs and the traceback)", file=sys.stderr)
        return 1
    summary = state.result()
    store = DatasetStore(summary["store"])
    outputs, cached = summary["outputs"], summary["cached"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"winnow run {summary['run_id']}  ({time.perf_counter() - started:.1f}s, "
          f"{sum(cached.values())}/{len(cached)} stages from cache)")
    print(format_table(receipt_rows(store, outputs, cached)))
    if "mixture" in outputs:
        print("\nmixture weights:")
        print(format_table(mixture_weights(store, outputs["mixture"])))
    if "evaluate" in outputs:
        ev = evaluation_summary(store, outputs["evaluate"])
        print("\nheld-out bits/byte per domain:")
        print(format_table(domain_rows(ev["data"])))
        print("\nbenchmarks:")
        print(format_table(benchmark_rows(ev["benchmarks"])))
    receipts = [m for m in store.entries() if m.stage == "ablation"]
    if receipts:  # the newest `winnow ablate` receipt on this store: what each stage did, with intervals
        from tasks.ablation import report_lines

        rows = store.table(receipts[-1].fingerprint).filter(pc.is_in(pc.field("subject"), pa.array(["mean", "worst"])))
        print(f"\nablation receipt (entry {short(receipts[-1].fingerprint)}, `winnow ablate`; with minus without, 95% CI):")
        print("\n".join(report_lines(rows)))
    print(f"\nstore: {store.root}")
    for stage in ("label_noise", "mixture", "train", "evaluate"):
        if stage in outputs:
            where = store.files_dir(outputs[stage]) if stage == "train" else store.path(outputs[stage]) / "tables"
            print(f"  {stage:<12} {short(outputs[stage])}  {where}")
    flow_run_id = state.state_details.flow_run_id
    ui = os.environ.get("PREFECT_UI_URL", "http://127.0.0.1:4200/v2").rstrip("/").removesuffix("/v2")
    print(f"Prefect UI (after `prefect server start`): {ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts")
    print("Explain a removed row: winnow why ROW_ID    Trace an output: winnow lineage evaluate")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """Run the ``ablate`` flow and print the receipt: each stage's effect with its interval."""
    from flows.ablate import ABLATED

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(ABLATED))
    if unknown or not stages:
        raise WinnowError(f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ABLATED)}")
    if args.seeds < 1 or not 0 <= args.repeat_fraction <= 1 or args.repeat_times < 0:
        raise WinnowError("--seeds must be >= 1, --repeat-fraction in [0, 1], --repeat-times >= 0")
    cfg = _load(args)
    _preflight(cfg)
    _prefect_env(args.debug)
    from flows.ablate import ablate
    from flows.pipeline import task_runner
    from storage import DatasetStore, short
    from tasks.ablation import report_lines

    flow = ablate.with_options(task_runner=task_runner(cfg))
    state = flow(config=cfg.to_dict(), seeds=args.seeds, stages=stages, repeat_fraction=args.repeat_fraction,
                 repeat_times=args.repeat_times, return_state=True)
    if state.is_failed():
        exc = _exception_of(state)
        if isinstance(exc, WinnowError) or args.debug:
            raise exc
        print(f"winnow: error: the ablate flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    summary = state.result()
    store = DatasetStore(summary["store"])
    table = store.table(summary["receipt"])
    if args.json:
        print(json.dumps({"receipt": summary["receipt"], "rows": table.to_pylist()}, indent=2))
        return 0
    print(f"ablation receipt ({args.seeds} seeds; with minus without each stage; 95% paired bootstrap):")
    print("\n".join(report_lines(table)))
    print(f"\nstore entry {short(summary['receipt'])} (winnow lineage {short(summary['receipt'])})")
    return 0


def _exception_of(state: Any) -> BaseException:
    try:
        state.result()
    except BaseException as e:  # the flow's own exception, re-raised by Prefect
        return e
    return RuntimeError(state.message or "flow failed")


def _preflight(cfg: Any) -> None:
    """Check everything checkable before the flow starts, then commit the two ingests.

    The input files are read and validated in memory, the stages' own input checks run on them
    (blank texts for dedup, label classes for label_noise) and the incremental dedup index is
    resolved: a failure here leaves the store exactly as it was. Only then are the ingest entries
    written, which the flow finds in the store.
    """
    from flows.graph import configured_refs
    from flows.stagetask import commit, plan_ingest, precheck, prepare_ingest
    from winnow import drops
    from winnow.stages import pipeline_specs

    cfg.check()  # model and tokenizer choices, before any data is read
    store = _writable_store(cfg.store.root)
    inputs = cfg.inputs
    columns = {"split": inputs.split, "id": inputs.id_column, "text": inputs.text_column,
               "domain": inputs.domain_column, "label": inputs.label_column}
    files = drops.drop_files(inputs.corpus)  # a folder or glob of daily files (winnow/drops.py)
    if files is not None:
        corpus: Any = drops.prepare(store, files, columns)
    else:
        corpus = prepare_ingest(plan_ingest("corpus", [inputs.corpus], columns), store)
    benchmarks = prepare_ingest(plan_ingest("benchmarks", list(inputs.benchmarks), inputs.benchmark_columns()), store)
    for spec in pipeline_specs():
        precheck(spec.name, cfg.params(spec.name), corpus=corpus.table)
        configured_refs(spec, cfg, store)  # an [inputs] key naming a store entry must name a fitting one
    if files is not None:
        drops.commit_drops(corpus, store)
    else:
        commit(corpus, store)
    commit(benchmarks, store)


# -- one stage on a user's file ------------------------------------------------------------------


def _stage_outputs(args: argparse.Namespace, spec: Any) -> dict[str, Path]:
    """Every path `winnow STAGE` may write, by role, so all are checked before any is written:
    OUT, the removal report of a stage that removes rows, and one file per further output table."""
    out = Path(args.out)
    stem = out.with_name(out.name.split(".")[0])
    paths = {"out": out}
    if spec.ledger:
        paths["removed"] = Path(args.removed) if args.removed else Path(f"{stem}.removed.parquet")
    for name in spec.outputs[1:]:
        if name not in spec.internal:
            paths[name] = Path(f"{stem}.{name}.parquet")
    if getattr(args, "lm_eval", False):
        paths["lmeval"] = Path(f"{stem}.lmeval.parquet")  # per-item comparison; the tasks go in {stem}.lmeval/
    return paths


def cmd_stage(args: argparse.Namespace) -> int:
    """Apply one stage to the user's file through the store; export the result and its ledger.

    Everything that can be checked is checked before anything is written: the settings, the
    output paths (never an input, a known format, a writable folder), the input files, the
    stage's own input checks and every store reference given. Then the ingest and the stage run.
    """
    from flows.graph import cli_computes, cli_parents, configured_refs
    from flows.stagetask import commit, plan_ingest, precheck, prepare_ingest
    from winnow import io as wio
    from winnow.stages import BENCHMARKS
    from winnow.stages import spec as stage_spec

    spec = stage_spec(args.command)
    if getattr(args, "lm_eval", False):
        from tasks.lmeval import require_lm_eval

        require_lm_eval()  # an optional extra: say so before anything is read or written
    for opt in spec.options:
        if opt.sets and getattr(args, _dest(opt.flag), None):
            args.overrides.append(f"{opt.sets}={getattr(args, _dest(opt.flag))}")
    cfg = _load(args)
    store = _writable_store(cfg.store.root)
    cols = wio.Columns(id=args.id_column, text=args.text_column, domain=args.domain_column, label=args.label_column)
    columns = {"split": args.split, "id": cols.id, "text": cols.text, "domain": cols.domain, "label": cols.label}
    computes = cli_computes(spec, cfg)
    cfg.check(computes)
    if not spec.unique_ids:  # mixture rows: one document may repeat (epochs, chunks)
        columns["unique_ids"] = False
    reads_benchmarks = any(i.source == BENCHMARKS for i in spec.inputs) or _benchmark_target(spec, cfg, args)
    bench_paths = (args.benchmark or list(cfg.inputs.benchmarks)) if reads_benchmarks else []
    outputs = _stage_outputs(args, spec)
    given = [Path(args.input), *map(Path, bench_paths)]
    for path in given:
        wio.check_exists(path)
    for role, path in outputs.items():
        wio.check_output(path, given, folder=(spec.writes_folder and role == "out"))
    if spec.writes_folder and outputs["out"].is_dir() and any(outputs["out"].iterdir()):
        raise WinnowError(f"{outputs['out']}: output folder exists and is not empty")
    corpus = prepare_ingest(plan_ingest("corpus", [args.input], columns), store)
    benchmarks = prepare_ingest(plan_ingest("benchmarks", bench_paths, _benchmark_columns(args, cfg)), store) if bench_paths else None
    for column in spec.requires:
        if column not in corpus.table.column_names:
            raise WinnowError(f"{args.input}: missing {column} column '{getattr(cols, column)}' (use --{column}-column)")
    for name in computes:
        precheck(name, cfg.params(name), corpus=corpus.table)
    if spec.benchmark_target and benchmarks is not None:
        from flows.search import check_benchmark_items

        check_benchmark_items(cfg.params(spec.name), benchmarks.table, ", ".join(bench_paths))
    named = configured_refs(spec, cfg, store, {i.arg: getattr(args, _dest(i.option)) for i in spec.inputs if i.option})
    bench_fp = benchmarks and commit(benchmarks, store)
    parents = cli_parents(spec, commit(corpus, store), bench_fp, named, _computer(store, cfg, bench_fp), cfg)
    return _run_and_export(args, spec, store, cfg, parents, corpus.fingerprint, cols, outputs, bench_fp)


def _benchmark_target(spec: Any, cfg: Any, args: argparse.Namespace) -> bool:
    """Whether `winnow STAGE` reads benchmark files for its prepare hook: a ``benchmark:NAME``
    target (mixture's RegMix). ``--benchmark`` with any other target would be silently unread."""
    if not spec.benchmark_target:
        return False
    target = cfg.params(spec.name).target
    if target.startswith("benchmark:"):
        return True
    if getattr(args, "benchmark", None):
        raise WinnowError(f"--benchmark: {spec.name} reads benchmark items only for a benchmark target "
                          f"(--set {spec.name}.target=benchmark:NAME); {spec.name}.target is '{target}'")
    return False


def _computer(store: Any, cfg: Any, benchmarks: str | None = None):
    """How `winnow STAGE` computes a stage in-process (no flow): its cached store entry, with the
    stage's prepare hook (learned mixture weights: proxies in turn, each its own cached entry, so a
    rerun after a crash computes only the missing ones; ``benchmarks``, the ingested items, for a
    benchmark target) and cache hint (embed's earlier vectors)."""
    from flows.graph import plan, prepared_inputs
    # not flows.search: it imports the proxy, RegMix and DoReMi modules, which only mixture needs
    from flows.stagetask import execute, run_in_turn

    def compute(spec: Any, parents: dict[str, str]) -> str:
        params = cfg.run_params(spec.name)
        parents = {**parents, **prepared_inputs(spec, store, parents, params, run_in_turn(store), benchmarks)}
        return execute(plan(spec, store, parents, params, run_in_turn(store)), str(store.root))

    return compute


def _run_and_export(args: argparse.Namespace, spec: Any, store: Any, cfg: Any, parents: dict[str, str],
                    corpus: str, cols: Any, outputs: dict[str, Path], benchmarks: str | None = None) -> int:
    """Compute the stage entry, then write its tables where :func:`_stage_outputs` said."""
    from storage import short
    from winnow import io as wio

    fp = _computer(store, cfg, benchmarks)(spec, parents)
    m = store.manifest(fp)
    out = outputs["out"]
    if spec.writes_folder:
        _copy_folder(store.files_dir(fp), out)
    else:
        _export(store, fp, "data", out, cols)
    ledger = store.removed(fp)
    if "removed" in outputs:
        wio.export_table(ledger, outputs["removed"])  # written even when empty: "nothing removed" is an answer
    for name in (t for t in m.tables if t not in spec.internal):
        if name != "data" and not spec.writes_folder and name not in outputs:  # a table the spec does not declare
            outputs[name] = out.with_name(out.name.split(".")[0] + f".{name}.parquet")
            wio.check_output(outputs[name], [Path(args.input)])
        if name != "data" and not spec.writes_folder:
            # Held-out rows are the user's rows, so they get the user's names back; reports keep
            # winnow's names (a contamination report's `id` is a benchmark example's, not a row's).
            _export(store, fp, name, outputs[name], cols if name == "heldout" else None)
    print(f"{args.command}: {store.manifest(corpus).rows()} rows in, {m.rows()} rows out -> {out}")
    if "removed" in outputs:
        print(f"removal report: {ledger.num_rows} rows -> {outputs['removed']}")
    print(f"store entry {short(fp)} (winnow lineage {short(fp)}); metrics: {json.dumps(m.metrics)[:600]}")
    if "benchmarks" in spec.outputs:
        from flows.receipt import benchmark_rows, format_table

        print(format_table(benchmark_rows(store.table(fp, "benchmarks").to_pylist())))
    if "lmeval" in outputs:
        _lm_eval_parity(store, fp, parents, cfg.params(spec.name), outputs["lmeval"])
    return 0


def _export(store: Any, fp: str, table: str, out: Path, cols: Any = None) -> None:
    """Export one table of an entry. A one-shard table whose columns keep their names is already the
    Parquet file the user gets: its bytes are copied instead of decoded and encoded again (the
    corpus-sized table of a row stage is a tenth of `winnow contamination`'s time)."""
    from winnow import io as wio

    paths = store.shard_paths(fp, table)
    renamed = cols is not None and any(c in store.manifest(fp).tables[table]["schema"] for c in cols.renames())
    if len(paths) == 1 and wio.output_format(out) == "parquet" and not renamed:
        wio.export_parquet_file(paths[0], out)
    else:
        wio.export_table(store.table(fp, table), out, cols)


def _lm_eval_parity(store: Any, fp: str, parents: dict[str, str], params: Any, path: Path) -> None:
    """Score the evaluate entry's items with lm-eval on the same model folder; print both side by side."""
    from flows.receipt import format_table, with_interval
    from flows.stagetask import split_ref
    from tasks import lmeval
    from winnow import io as wio

    folder = path.with_name(path.name.split(".")[0] + ".lmeval")
    items, summary, lm = lmeval.parity(store.files_dir(split_ref(parents["model_dir"])[0]), store.table(parents["benchmarks"]),
                                       params, store.table(fp, "examples"), folder, store.manifest(fp).metrics["context_len"])
    ours = {r["benchmark"]: r for r in store.table(fp, "benchmarks").to_pylist() if r["subset"] == "all"}
    rows = [{"benchmark": s["benchmark"], "items": s["items"],
             "winnow acc": with_interval(ours[s["benchmark"]], "accuracy"), "lm-eval acc": s["lm_eval_acc"],
             "winnow acc_norm": with_interval(ours[s["benchmark"]], "accuracy_norm"), "lm-eval acc_norm": s["lm_eval_acc_norm"],
             "same preds": s["same_pred"], "max |Δ loglik|": s["max_abs_diff"], "too long": s["too_long"]}
            for s in summary]
    print(f"\nlm-evaluation-harness on the same items ({lm.seconds:.1f}s; tasks in {folder}):")
    print(format_table(rows))
    wio.export_table(items, path)
    print(f"per-item comparison: {items.num_rows} rows -> {path}")


def _copy_folder(src: Path, out: Path) -> None:
    """Copy a model folder to ``out`` whole or not at all (a sibling temp folder, then a rename)."""
    import uuid

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copytree(src, tmp)
        if out.is_dir():
            out.rmdir()  # checked empty before any work
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _benchmark_columns(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """Benchmark ingest parameters: the command line's format and field mapping over the config's."""
    from winnow.config import benchmark_columns

    fields = dict(cfg.inputs.benchmark_fields)
    for item in args.benchmark_field:
        role, eq, column = item.partition("=")
        if not eq or not role.strip() or not column.strip():
            raise WinnowError(f"--benchmark-field {item!r}: expected ROLE=COLUMN, e.g. question=problem")
        fields[role.strip()] = column.strip()
    return benchmark_columns(args.split, args.benchmark_format or cfg.inputs.benchmark_format, fields)


# -- inspection ------------------------------------------------------------------------------------


def cmd_store(args: argparse.Namespace) -> int:
    from flows.receipt import format_table
    from storage import short

    store = _store(args)
    if args.store_command == "ls":
        rows = []
        sizes = {fp: (size, shared) for fp, size, shared in store.iter_sizes()}
        for m in store.entries():
            if args.stage and m.stage != args.stage.replace("-", "_"):
                continue
            size, shared = sizes.get(m.fingerprint, (0, 0))
            rows.append({"entry": short(m.fingerprint), "stage": m.stage, "kind": m.kind, "rows": m.rows(),
                         "MB": round(size / 1e6, 2), "shared MB": round(shared / 1e6, 2), "created": m.created_at[:19]})
        print(format_table(rows) if rows else f"store {store.root} is empty")
        return 0
    if args.store_command == "clean":
        removed = store.clean()
        for kind, paths in removed.items():
            for path in paths:
                print(f"removed {kind.replace('_', ' ')}: {path}")
        counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in removed.items())
        print(f"store {store.root}: removed {counts}")
        return 0
    if args.store_command == "verify":
        return _verify(store, args.ref)
    fp = store.resolve(args.ref)
    m = store.manifest(fp)
    print(json.dumps({**m.__dict__, "path": str(store.path(fp))}, indent=2, sort_keys=True))
    return 0


def _verify(store: Any, refs: list[str]) -> int:
    """`winnow store verify`: exit 1 if any entry's content differs from its manifest."""
    from storage import short

    fps = [store.resolve(r) for r in refs] if refs else [m.fingerprint for m in store.entries()]
    bad = 0
    for fp in fps:
        problems = store.verify(fp)
        bad += bool(problems)
        for problem in problems:
            print(f"{short(fp)} {store.manifest(fp).stage}: {problem}")
    print(f"store {store.root}: {len(fps)} entries checked, {bad} damaged")
    return 1 if bad else 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from flows.receipt import lineage_mermaid, lineage_text

    store = _store(args)
    fp = store.resolve(args.ref)
    print(lineage_mermaid(store, {"x": fp}) if args.mermaid else lineage_text(store, fp))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from storage import short

    store = _store(args)
    from storage.heads import head_entries, head_record

    entries = None
    where = "the store"
    if args.run == "head":
        record = head_record(store)
        if record is None:
            raise WinnowError(f"store {store.root}: no pipeline run yet (run `winnow run` first)")
        entries, where = head_entries(store), f"the pipeline head (run {record['run_id']})"
    elif args.run != "all":
        record = store.run_record(args.run)
        entries, where = [fp for fp in record["outputs"].values() if store.exists(fp)], f"run {args.run}"
    hits = store.why(args.row_id, entries)
    if hits.num_rows == 0:
        print(f"{args.row_id}: not removed, masked, flagged or relabelled in {where}")
        return 0
    for row in hits.to_pylist():
        evidence = json.loads(row["evidence"])
        print(f"{row['id']}: {row['action']} by {row['stage']} ({row['reason']}) in entry {short(row['entry'])}")
        for key, value in evidence.items():
            print(f"    {key}: {json.dumps(value)[:300]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
