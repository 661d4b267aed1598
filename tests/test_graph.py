"""The stage graph is declared once (winnow/stages.py); everything else must agree with it."""

from __future__ import annotations

import inspect
import re
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from winnow import stages
from winnow.cli import build_parser, main
from winnow.config import load_config
from winnow.errors import WinnowError
from winnow.stages import CORPUS, FILES, INGEST_STAGES, PREPARED, REGISTRY, Input, StageSpec

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_each_declaration_matches_its_module(spec):
    """What a spec says about run() and its capabilities is what the module has, both ways."""
    module = spec.load()
    run = inspect.signature(module.run).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in run.values())
    data_args = [n for n, p in run.items() if p.kind is not p.VAR_KEYWORD and n not in ("params", "out_dir", "checkpoint_dir", "spill_dir")]
    declared = [i.arg for i in spec.inputs] + ([spec.cache_hint[0]] if spec.cache_hint else []) + list(spec.map_args())
    assert set(data_args) <= set(declared), f"{spec.name}: run() reads {data_args}, spec declares {declared}"
    assert takes_any or set(declared) <= set(run), f"{spec.name}: spec declares {declared}, run() takes {list(run)}"
    assert ("out_dir" in run) == spec.needs_out_dir
    assert ("checkpoint_dir" in run) == spec.checkpoints
    assert ("spill_dir" in run) == spec.spill
    assert set(spec.streams) <= set(declared), f"{spec.name}: streams {spec.streams} are not inputs"
    for capability, function in (("precheck", "precheck"), ("preflight", "preflight"), ("identity", "identity")):
        assert hasattr(module, function) == getattr(spec, capability), f"{spec.name}: {function} vs spec.{capability}"
    assert hasattr(module, "reusable") == (spec.cache_hint is not None)
    assert hasattr(module, "worst_rows") == (spec.worst_rows is not None)
    if spec.worst_rows:
        assert spec.worst_rows in spec.outputs
    assert spec.params_type is module.Params


def test_registry_is_in_run_order_and_names_are_unique():
    seen = set(INGEST_STAGES)
    for spec in REGISTRY:
        assert spec.name not in seen
        for inp in spec.inputs:
            assert inp.source in seen | {spec.name, PREPARED}, f"{spec.name}.{inp.arg} reads {inp.source} before it runs"
            if inp.source in seen - set(INGEST_STAGES) and inp.source != spec.name:
                source = stages.spec(inp.source)
                assert inp.table in source.outputs, f"{spec.name}.{inp.arg}: {inp.source} has no {inp.table}"
        seen.add(spec.name)
    assert list(load_config(profile="smoke").stages) == list(stages.pipeline_names())


def test_deployments_are_the_registrys_stages():
    """Every pipeline stage has its deployment, named as the stage (the spelling `--only` takes),
    running its flow ``stage_<name>``."""
    import flows.pipeline as pipeline

    deployments = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    per_stage = {d["name"]: d["entrypoint"] for d in deployments if d["entrypoint"].endswith("_flow")}
    assert per_stage == {s.name: f"flows/pipeline.py:{pipeline.flow_attr(s.name)}" for s in stages.pipeline_specs()}
    for name, entrypoint in per_stage.items():
        assert getattr(pipeline, entrypoint.split(":")[1]).name == f"stage_{name}"


def test_readme_stage_table_is_the_registry():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \*\*(\w+)\*\* \| (.+) \|$", text, flags=re.M)
    assert rows == [(s.name, s.help) for s in stages.pipeline_specs()]


def test_cli_stage_commands_come_from_the_registry(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert [c for c in sub.choices if c.replace("-", "_") in {s.name for s in REGISTRY}] == [
        s.command for s in stages.cli_specs()]
    evaluate = sub.choices["evaluate"].format_help()
    assert "--model REF" in evaluate and "--contamination-report REF" in evaluate and "--benchmark B" in evaluate
    assert "--index" not in evaluate and "--index REF" in sub.choices["dedup"].format_help()
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])  # "95%" in a help line once broke every --help
    assert exit_.value.code == 0


def test_cli_walks_the_graph_for_upstream_stages():
    from flows.graph import cli_computes

    cfg = load_config(profile="smoke")
    assert cli_computes(stages.spec("train"), cfg) == ("tokenize", "train")
    assert cli_computes(stages.spec("evaluate"), cfg) == ("evaluate",)  # the model is a flag's entry
    minilm = load_config(profile="smoke", overrides=['label_noise.features="tfidf+minilm"'])
    assert cli_computes(stages.spec("label_noise"), minilm) == ("embed", "label_noise")
    assert cli_computes(stages.spec("label_noise"), cfg) == ("label_noise",)
    both = load_config(profile="smoke", overrides=['label_noise.features="tfidf+minilm+smollm2"'])
    assert cli_computes(stages.spec("label_noise"), both) == ("embed", "embed_lm", "label_noise")


def test_a_source_that_is_not_registered_is_refused():
    with pytest.raises(WinnowError, match="unknown stage 'nowhere'"):
        stages.register(StageSpec("bad", (Input("corpus", "nowhere"),)))
    with pytest.raises(WinnowError, match="already registered"):
        stages.register(StageSpec("dedup"))


TOY = '''
"""A toy stage: upper-cases every text (the whole contract: Params + run)."""
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common import StageResult


@dataclass(frozen=True)
class Params:
    """Attributes: suffix: appended to every text."""

    suffix: str = "!"


def run(corpus: pa.Table, params: Params = Params()) -> StageResult:
    """Upper-case the texts."""
    text = pc.binary_join_element_wise(pc.utf8_upper(corpus["text"]), params.suffix, "")
    return StageResult(tables={"data": corpus.set_column(corpus.schema.get_field_index("text"), "text", text)},
                       metrics={"rows": corpus.num_rows})
'''


@pytest.fixture
def toy_stage(tmp_path, monkeypatch):
    """A stage added the documented way: one module plus one registry line."""
    (tmp_path / "toystage.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = stages.register(StageSpec("toy", (Input("corpus", CORPUS),), cli="upper-case IN", module="toystage",
                                     help="upper-cases texts"))
    yield spec
    stages.unregister("toy")


def test_a_toy_stage_plugs_into_the_cli_config_and_pipeline_order(toy_stage, tmp_path, capsys):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"]}), src)
    out = tmp_path / "out.parquet"
    assert main(["toy", str(src), "--out", str(out), "--set", 'toy.suffix="?"', "--store", str(tmp_path / "s")]) == 0
    assert pq.read_table(out)["text"].to_pylist() == ["ONE?", "TWO?"]
    assert "toy" in stages.pipeline_names() and stages.pipeline_names()[-1] == "toy"
    assert load_config(overrides=['toy.suffix="x"']).params("toy").suffix == "x"
    with pytest.raises(WinnowError, match="unknown key"):
        load_config(overrides=["toy.nope=1"])
    from flows.graph import run_parents

    assert run_parents(toy_stage, {CORPUS: "abc"}, {}) == {"corpus": "abc"}
    assert run_parents(toy_stage, {}, {}) is None


def test_files_inputs_are_not_fed_by_the_users_rows():
    assert stages.spec("train").main_input is None  # `winnow train IN` tokenizes IN first
    assert stages.spec("evaluate").main_input.arg == "heldout"
    assert stages.spec("dedup").main_input.arg == "corpus"
    assert all(i.table != FILES for s in stages.cli_specs() if s.main_input for i in [s.main_input])
