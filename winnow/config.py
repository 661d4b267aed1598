"""The pipeline configuration: one TOML file, every stage's parameters, validated on load.

Precedence, lowest first: each stage's ``Params`` defaults (documented on the class) -> a named
profile from ``winnow/profiles.toml`` (``smoke`` is the small one tests use) -> the user's config
file -> ``--set section.key=value`` flags. Unknown sections, unknown keys and values of the wrong
type are errors that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from winnow import stages as stage_graph
from winnow.errors import WinnowError

#: The pipeline, in order, and the stages run around it (no config section): both declared in
#: :mod:`winnow.stages`. ``embed`` (``embed_lm``) runs only when label_noise uses MiniLM (SmolLM2) features.
STAGES: tuple[str, ...] = stage_graph.pipeline_names()
AUX_STAGES: tuple[str, ...] = stage_graph.aux_names()
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SAMPLE_DIR = REPO_DIR / "data" / "sample"
PROFILES_FILE = PACKAGE_DIR / "profiles.toml"
DEFAULT_CONFIG_NAME = "winnow.toml"


@dataclass(frozen=True)
class StoreConfig:
    """Where the dataset store lives.

    Attributes:
        root: the store folder; relative paths are taken from the working directory.
    """

    root: str = ".winnow"


@dataclass(frozen=True)
class InputsConfig:
    """What the pipeline reads.

    Attributes:
        corpus: the training corpus (Parquet, JSONL or a `datasets` folder), or daily drops: a
            folder or glob (``drops/2026-12-*.jsonl``) of Parquet / JSONL files, read one file at a
            time in file-name order, each ingested once (``winnow/drops.py``). Rows need an id
            (unique across all files) and a text; a domain column splits it into mixture domains; a
            label column marks labelled rows for the label-noise stage. Default: the bundled real sample.
        benchmarks: evaluation benchmarks checked for contamination and scored by evaluate.
        id_column, text_column, domain_column, label_column: the user's column names for each role.
        split: the split to read when an input is a saved `datasets` DatasetDict.
        benchmark_format: the benchmark files' format: ``auto`` (detected from their field names)
            or one of ``winnow.benchmark_formats.FORMATS`` (mmlu, mmlu_prompt, arc, hellaswag,
            gsm8k, truthfulqa_mc, lm_eval); README "Benchmark formats" lists each one's fields.
        benchmark_fields: role -> column name for benchmark files in any other shape, e.g.
            ``{question = "problem", target = "solution"}``; roles: id, benchmark, question,
            choices, answer, target, context.
        dedup_index: incremental dedup. A store reference (fingerprint prefix or RUN:dedup) of an
            earlier dedup output whose signature index the new corpus is checked against; the
            corpus must then hold only documents not seen before. Empty: dedup the corpus alone.
    """

    corpus: str = str(SAMPLE_DIR / "corpus.parquet")
    benchmarks: tuple[str, ...] = (str(SAMPLE_DIR / "benchmarks.parquet"),)
    id_column: str = "id"
    text_column: str = "text"
    domain_column: str = "domain"
    label_column: str = "label"
    split: str | None = None
    dedup_index: str = ""
    benchmark_format: str = "auto"
    benchmark_fields: dict[str, str] = field(default_factory=dict)

    def benchmark_columns(self) -> dict[str, Any]:
        """How benchmark files are read: the ingest parameters (part of its fingerprint)."""
        return benchmark_columns(self.split, self.benchmark_format, self.benchmark_fields)


def benchmark_columns(split: str | None, fmt: str = "auto", fields: dict[str, str] | None = None) -> dict[str, Any]:
    """Ingest parameters of benchmark files; the defaults add nothing, so old fingerprints hold."""
    out: dict[str, Any] = {"split": split}
    if fmt != "auto":
        out["format"] = fmt
    if fields:
        out["fields"] = dict(sorted(fields.items()))
    return out


@dataclass(frozen=True)
class RunConfig:
    """How the flow executes.

    Attributes:
        task_runner: "threads" (default, one machine), "dask" or "ray" (needs the `dask`/`ray`
            extra; scale-out through prefect-dask / prefect-ray).
        runner_address: an existing Dask scheduler / Ray cluster address; empty starts a local one.
        max_workers: threads (or local Dask workers) to run independent tasks on.
    """

    task_runner: str = "threads"
    runner_address: str = ""
    max_workers: int = 2


@dataclass
class PipelineConfig:
    """The resolved configuration of one run."""

    store: StoreConfig = field(default_factory=StoreConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stages: dict[str, Any] = field(default_factory=dict)  # stage name -> its Params instance
    profile: str | None = None
    source: str | None = None  # the config file read, if any

    def params(self, stage: str) -> Any:
        """The Params dataclass of one stage."""
        return self.stages[stage]

    def run_params(self, stage: str) -> Any:
        """A stage's parameters as a run uses them: tokenize's ``"auto"`` becomes train.init's tokenizer."""
        if stage == "tokenize":
            return stage_module("tokenize").resolve(self.params("tokenize"), self.params("train").init)
        return self.params(stage)

    def check(self, stages: tuple[str, ...] | None = None) -> None:
        """Run each stage's ``preflight`` (model, tokenizer choices): bad ones fail before any data is read."""
        for stage in stage_graph.pipeline_names() if stages is None else stages:
            if stage_graph.spec(stage).preflight:
                stage_module(stage).preflight(self.run_params(stage))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (used as the Prefect flow parameter and in run records)."""
        out: dict[str, Any] = {
            "store": dataclasses.asdict(self.store),
            "inputs": dataclasses.asdict(self.inputs),
            "run": dataclasses.asdict(self.run),
        }
        for name, params in self.stages.items():
            out[name] = dataclasses.asdict(params)
        return json.loads(json.dumps(out))


SECTIONS: dict[str, type] = {"store": StoreConfig, "inputs": InputsConfig, "run": RunConfig}


def stage_module(stage: str) -> types.ModuleType:
    """Import a registered stage's module; an unknown name is a user error listing the stages."""
    return stage_graph.spec(stage).load()


def load_config(
    path: str | Path | None = None,
    profile: str | None = None,
    overrides: list[str] | None = None,
    overlay: dict[str, Any] | None = None,
    store: str | None = None,
) -> PipelineConfig:
    """Resolve the configuration (see the module docstring for precedence).

    ``path`` None means ``./winnow.toml`` if it exists, else defaults only. ``overlay`` is a
    partial config as a dict (a flow's ``config`` parameter: ``{"dedup": {"threshold": 0.9}}`` or
    ``{"dedup.threshold": 0.9}``) and ``overrides`` are ``--set`` strings; both go over the file,
    ``overrides`` last. ``store`` sets ``[store].root`` over everything. The CLI and every flow
    resolve their settings through this one function, so a deployment run and ``winnow run``
    with the same profile, file and overrides compute the same fingerprints.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if profile:
        profiles = _read_toml(PROFILES_FILE)
        if profile not in profiles:
            raise WinnowError(f"unknown profile '{profile}'; profiles: {', '.join(sorted(profiles))}")
        layers.append((f"profile '{profile}'", profiles[profile]))
    source = None
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = DEFAULT_CONFIG_NAME
    if path is not None:
        source = str(Path(path).resolve())
        layers.append((str(path), _read_toml(Path(path))))
    if overlay:
        layers.append(("flow parameter config", _nest(overlay)))
    if overrides:
        layers.append(("--set", _parse_overrides(overrides)))
    if store:
        layers.append(("store", {"store": {"root": str(store)}}))
    merged: dict[str, dict[str, Any]] = {}
    for where, layer in layers:
        for section, values in layer.items():
            if section not in SECTIONS and section not in stage_graph.pipeline_names():
                raise WinnowError(
                    f"{where}: unknown section [{section}]; sections are: {', '.join([*SECTIONS, *stage_graph.pipeline_names()])}"
                )
            if not isinstance(values, dict):
                raise WinnowError(f"{where}: [{section}] must be a table of keys")
            for key, value in values.items():
                merged.setdefault(section, {})[key] = (where, value)
    built = {name: _build(cls, name, merged.get(name, {})) for name, cls in SECTIONS.items()}
    return PipelineConfig(stages=_Stages(merged), profile=profile, source=source, **built)


def config_from_dict(values: dict[str, Any], where: str = "flow parameter") -> PipelineConfig:
    """Rebuild a :class:`PipelineConfig` from :meth:`PipelineConfig.to_dict` output (validated)."""
    for section in values:
        if section not in SECTIONS and section not in stage_graph.pipeline_names():
            raise WinnowError(f"{where}: unknown section [{section}]")
    pick = lambda name: {k: (where, v) for k, v in values.get(name, {}).items()}  # noqa: E731
    built = {name: _build(cls, name, pick(name)) for name, cls in SECTIONS.items()}
    return PipelineConfig(stages=_Stages({s: pick(s) for s in stage_graph.pipeline_names() if s in values}), **built)


class _Stages(dict):
    """Stage name -> Params, built on first use: importing every stage module costs about a
    second (numba, pandas, torch), which a one-stage command such as `winnow contamination` need
    not pay. Stages the configuration sets are built at once, so their errors still show first."""

    def __init__(self, values: dict[str, dict[str, tuple[str, Any]]]) -> None:
        super().__init__()
        self._values = values
        for s in stage_graph.pipeline_names():
            if values.get(s):
                self[s] = _build(stage_module(s).Params, s, values[s])

    def __missing__(self, stage: str) -> Any:
        if stage not in stage_graph.pipeline_names():
            raise KeyError(stage)
        self[stage] = _build(stage_module(stage).Params, stage, self._values.get(stage, {}))
        return self[stage]

    def _all(self) -> None:
        for s in stage_graph.pipeline_names():
            self[s]  # noqa: B018  (builds it)

    def __iter__(self):
        self._all()
        return iter([s for s in stage_graph.pipeline_names()])

    def __len__(self) -> int:
        return len(stage_graph.pipeline_names())

    def items(self):  # noqa: D102
        self._all()
        return [(s, dict.__getitem__(self, s)) for s in stage_graph.pipeline_names()]

    def keys(self):  # noqa: D102
        return list(stage_graph.pipeline_names())

    def values(self):  # noqa: D102
        return [v for _, v in self.items()]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise WinnowError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise WinnowError(f"{path}: invalid TOML ({e})") from None


def _nest(overlay: dict[str, Any]) -> dict[str, Any]:
    """``{"dedup.threshold": 0.9}`` -> ``{"dedup": {"threshold": 0.9}}``; sections pass through (merged)."""
    if not isinstance(overlay, dict):
        raise WinnowError(f"flow parameter config: expected a JSON object of sections, got {type(overlay).__name__}")
    out: dict[str, Any] = {}
    for key, value in overlay.items():
        section, dot, name = str(key).partition(".")
        if dot:
            out.setdefault(section, {})[name] = value
        elif isinstance(value, dict):
            out.setdefault(section, {}).update(value)
        else:
            out[section] = value  # not a table: load_config names the section in its error
    return out


def _parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise WinnowError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. dedup.threshold=0.9")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word is a string, so `--set train.device=cpu` works
        out.setdefault(section, {})[name] = value
    return out


def _build(cls: type, section: str, values: dict[str, tuple[str, Any]]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, (where, value) in values.items():
        if key not in known:
            raise WinnowError(f"{where}: unknown key '{section}.{key}'; known keys: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, hints[key], f"{where}: {section}.{key}")
    try:
        built = cls(**kwargs)
        # Params that validate in a check() method (not __post_init__) are checked here too, so a
        # range error fails when the config loads, before any stage runs or any entry is written.
        if callable(getattr(built, "check", None)):
            built.check()
        return built
    except (ValueError, TypeError) as e:  # Params.__post_init__ range checks
        raise WinnowError(f"[{section}]: {e}") from None
    except WinnowError as e:
        raise WinnowError(f"[{section}]: {e}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint; lists become tuples where the hint says tuple."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        # None first, so `--set mixture.template=none` means None, not the string "none".
        for arg in sorted(args, key=lambda a: a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except WinnowError as e:
                errors.append(str(e))
        raise WinnowError(f"{where}: {value!r} is not a valid {_name(hint)}")
    if hint is type(None):
        if value is None or value == "none":
            return None
        raise WinnowError(f"{where}: expected none, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise WinnowError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise WinnowError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise WinnowError(f"{where}: expected a table of keys, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, where) for k, v in value.items()}
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, where, {k: (where, v) for k, v in value.items()})
    elif isinstance(value, hint):
        return value
    raise WinnowError(f"{where}: expected {_name(hint)}, got {value!r}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def describe(cfg: PipelineConfig) -> str:
    """The resolved configuration as TOML, each section headed by its documentation."""
    lines = [
        "# winnow pipeline configuration: every key with its resolved value.",
        "# Defaults are documented on each stage's Params class (tasks/<stage>.py).",
    ]
    sections: list[tuple[str, Any]] = [
        ("store", cfg.store),
        ("inputs", cfg.inputs),
        ("run", cfg.run),
        *cfg.stages.items(),
    ]
    for name, obj in sections:
        lines.append("")
        doc = (type(obj).__doc__ or "").strip().splitlines()
        if doc:
            lines.append(f"# {doc[0]}")
        lines.append(f"[{name}]")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                lines.append(f"# {f.name} = (none)")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(str(value))
