"""The whole pipeline as Prefect flows on the smoke profile: caching, single-stage reruns, lineage.

One module-scoped smoke run is shared by the tests; each later test starts from its store.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from storage import DatasetStore
from winnow.cli import main
from winnow.config import STAGES

pytestmark = pytest.mark.usefixtures("prefect_server")

ALL = ["ingest_corpus", "ingest_benchmarks", *STAGES]


def _run(capsys, store, *extra: str) -> dict:
    code = main(["run", "--profile", "smoke", "--store", str(store), "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_server):
    store = tmp_path_factory.mktemp("flow") / "store"
    code = main(["run", "--profile", "smoke", "--store", str(store), "--json"])
    assert code == 0
    return store, DatasetStore(store).run_record()


def _copy(first_run, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(first_run[0], store)
    return store


def test_first_run_computes_every_stage_and_records_lineage(first_run):
    store, record = first_run
    assert list(record["outputs"]) == ALL
    assert not any(record["cached"].values())
    s = DatasetStore(store)
    evaluate = s.manifest(record["outputs"]["evaluate"])
    assert evaluate.tables["data"]["rows"] > 0
    chain = [m.stage for m in s.lineage(record["outputs"]["evaluate"])]
    for stage in ALL:
        assert stage in chain
    assert s.manifest(record["outputs"]["ingest_corpus"]).inputs[0]["path"].endswith("corpus.parquet")


def test_second_run_is_all_cache_hits_with_identical_fingerprints(first_run, tmp_path, capsys):
    store = _copy(first_run, tmp_path)
    again = _run(capsys, store)
    assert all(again["cached"].values()), again["cached"]
    assert again["outputs"] == first_run[1]["outputs"]


def test_only_reruns_one_stage_on_cached_upstream(first_run, tmp_path, capsys):
    store = _copy(first_run, tmp_path)
    result = _run(capsys, store, "--only", "contamination")
    assert list(result["outputs"]) == ["ingest_corpus", "ingest_benchmarks", "dedup", "contamination"]
    assert result["cached"] == {"ingest_corpus": True, "ingest_benchmarks": True, "dedup": True, "contamination": False}
    # Deterministic stage: recomputing gives the same identity, so downstream stays valid.
    assert result["outputs"]["contamination"] == first_run[1]["outputs"]["contamination"]


def test_changing_a_parameter_invalidates_that_stage_and_downstream_only(first_run, tmp_path, capsys):
    store = _copy(first_run, tmp_path)
    result = _run(capsys, store, "--set", "mixture.heldout_fraction=0.2")
    cached = result["cached"]
    assert all(cached[s] for s in ["ingest_corpus", "ingest_benchmarks", "dedup", "contamination", "label_noise"])
    assert not any(cached[s] for s in ["mixture", "train", "evaluate"])


def test_lineage_and_why_commands(first_run, capsys):
    store, record = first_run
    assert main(["lineage", "evaluate", "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert "corpus.parquet" in text and "code version" in text and "dedup" in text
    removed = DatasetStore(store).removed(record["outputs"]["dedup"])
    assert removed.num_rows > 0, "the bundled sample has real duplicates"
    row_id = removed["id"][0].as_py()
    assert main(["why", row_id, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"{row_id}: drop by dedup" in out
    assert main(["lineage", "evaluate", "--mermaid", "--store", str(store)]) == 0
    assert 'flowchart LR' in capsys.readouterr().out


def test_store_ls_and_show(first_run, capsys):
    store, record = first_run
    assert main(["store", "ls", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    for stage in STAGES:
        assert stage in listing
    assert main(["store", "show", record["outputs"]["train"][:10], "--store", str(store)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "model" and any(f.endswith(".safetensors") for f in shown["files"])


def _objects(store):
    return sorted(p.name for p in (store / "objects").iterdir()) if (store / "objects").exists() else []


@pytest.mark.parametrize(
    "setup, message",
    [
        ("truncated", "not a readable Parquet"),
        ("missing", "no such file"),
        ("nocolumn", "missing text column 'text'"),
    ],
)
def test_bad_input_fails_cleanly_and_leaves_the_store_unchanged(first_run, tmp_path, capsys, setup, message):
    store = _copy(first_run, tmp_path)
    before = _objects(store)
    bad = tmp_path / "bad.parquet"
    if setup == "truncated":
        src = (first_run[0] / "objects" / first_run[1]["outputs"]["ingest_corpus"] / "tables" / "data.parquet").read_bytes()
        bad.write_bytes(src[: len(src) // 3])
    elif setup == "nocolumn":
        pq.write_table(pq.read_table(first_run[0] / "objects" / first_run[1]["outputs"]["ingest_corpus"] / "tables" / "data.parquet").drop_columns(["text"]), bad)
    code = main(["run", "--profile", "smoke", "--store", str(store), "--set", f"inputs.corpus={json.dumps(str(bad))}"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert _objects(store) == before


def test_unknown_stage_is_a_usage_error(capsys, tmp_path):
    assert main(["run", "--only", "dedupe", "--store", str(tmp_path)]) == 2
    assert "unknown stage 'dedupe'" in capsys.readouterr().err
