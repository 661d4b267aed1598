"""Label-noise stage: real fortunes categories with injected label noise, actions, bad input."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pyarrow as pa
import pytest
import realdata

from tasks import label_noise as ln
from winnow.errors import WinnowError

CATS = ("bofh-excuses", "definitions", "startrek", "linux")


def _noisy(rows, rate: float, seed: int = 0):
    """A corpus whose labels are flipped uniformly to another class on ``rate`` of the rows."""
    rng = np.random.default_rng(seed)
    cats = sorted({c for c, _ in rows})
    labels = [c for c, _ in rows]
    flipped = rng.choice(len(rows), int(rate * len(rows)), replace=False)
    for i in flipped:
        labels[i] = str(rng.choice([c for c in cats if c != labels[i]]))
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(len(rows))],
            "text": [t for _, t in rows],
            "domain": ["quotes"] * len(rows),
            "label": labels,
        }
    )
    return table, {f"r{i}" for i in flipped}


@pytest.fixture(scope="module")
def noisy():
    return _noisy(realdata.fortunes(CATS, 150), 0.10)


@pytest.fixture(scope="module")
def flagged(noisy):
    return ln.run(noisy[0], ln.Params(features="tfidf"))


TFIDF = ln.Params(features="tfidf")


def test_finds_injected_label_errors(noisy, flagged):
    truth = noisy[1]
    found = set(flagged.removed["id"].to_pylist())
    tp = len(found & truth)
    assert tp / len(found) >= 0.6, "precision"  # base rate is 0.10
    assert tp / len(truth) >= 0.7, "recall"


def test_flag_leaves_data_unchanged_and_ledgers_every_issue(noisy, flagged):
    assert flagged.tables["data"].equals(noisy[0])
    led = flagged.removed
    assert set(led["action"].to_pylist()) == {"flag"}
    assert set(led["reason"].to_pylist()) == {"label_issue"}
    assert led.num_rows == flagged.metrics["issues"] > 0
    ev = json.loads(led["evidence"][0].as_py())
    assert {"given_label", "suggested_label", "label_quality", "method"} <= ev.keys()
    assert ev["given_label"] in CATS and ev["suggested_label"] in CATS


def test_scores_rank_every_labelled_row_worst_first(noisy, flagged):
    s = flagged.tables["scores"]
    assert s.num_rows == noisy[0].num_rows
    assert sorted(s["id"].to_pylist()) == sorted(noisy[0]["id"].to_pylist())
    assert s["rank"].to_pylist() == list(range(1, s.num_rows + 1))
    q = s["label_quality"].to_pylist()
    assert q == sorted(q)
    assert sum(s["is_issue"].to_pylist()) == flagged.metrics["issues"]


def test_worst_rows_report(noisy, flagged):
    rows = ln.worst_rows(flagged.tables["scores"], noisy[0], n=5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    texts = dict(zip(noisy[0]["id"].to_pylist(), noisy[0]["text"].to_pylist()))
    assert all(" ".join(texts[r["id"]].split()).startswith(r["text"]) and r["text"] for r in rows)


def test_ledger_evidence_matches_scores(flagged):
    s = {r["id"]: r for r in flagged.tables["scores"].to_pylist()}
    for row in flagged.removed.slice(0, 20).to_pylist():
        ev = json.loads(row["evidence"])
        assert ev["given_label"] == s[row["id"]]["label"]
        assert ev["suggested_label"] == s[row["id"]]["suggested_label"]
        assert ev["label_quality"] == pytest.approx(s[row["id"]]["label_quality"], rel=1e-5, abs=1e-12)


def test_drop_removes_only_low_quality_issues(noisy):
    res = ln.run(noisy[0], ln.Params(features="tfidf", action="drop", drop_max_quality=0.2))
    dropped = set(res.removed.filter(pa.compute.equal(res.removed["action"], "drop"))["id"].to_pylist())
    assert dropped and res.tables["data"].num_rows == noisy[0].num_rows - len(dropped)
    assert dropped.isdisjoint(res.tables["data"]["id"].to_pylist())
    quality = {r["id"]: r["label_quality"] for r in res.tables["scores"].to_pylist()}
    assert max(quality[i] for i in dropped) <= 0.2
    # issues above the quality cut are flagged, not dropped
    flagged = res.removed.filter(pa.compute.equal(res.removed["action"], "flag"))["id"].to_pylist()
    assert all(quality[i] > 0.2 for i in flagged)


def test_relabel_writes_confident_suggestions(noisy):
    table, truth = noisy
    res = ln.run(table, ln.Params(features="tfidf", action="relabel", relabel_min_confidence=0.5))
    relabelled = res.removed.filter(pa.compute.equal(res.removed["action"], "relabel")).to_pylist()
    assert relabelled
    out = dict(zip(res.tables["data"]["id"].to_pylist(), res.tables["data"]["label"].to_pylist()))
    for row in relabelled:
        ev = json.loads(row["evidence"])
        assert out[row["id"]] == ev["suggested_label"] != ev["given_label"]
        assert ev["suggested_confidence"] >= 0.5
    # a relabel of an injected flip should mostly restore the original category
    original = dict(zip(table["id"].to_pylist(), [c for c, _ in realdata.fortunes(CATS, 150)]))
    fixed = [r["id"] for r in relabelled if r["id"] in truth]
    assert sum(out[i] == original[i] for i in fixed) >= 0.8 * len(fixed)


def test_unlabelled_rows_pass_through_unscored(noisy):
    table = noisy[0]
    labels = table["label"].to_pylist()
    labels[:100] = [None] * 100
    t = table.set_column(3, "label", pa.array(labels, pa.string()))
    res = ln.run(t, ln.Params(features="tfidf", action="drop"))
    assert res.metrics["labelled_rows"] == t.num_rows - 100
    assert res.tables["scores"].num_rows == t.num_rows - 100
    kept = set(res.tables["data"]["id"].to_pylist())
    assert {f"r{i}" for i in range(100)} <= kept
    assert not {f"r{i}" for i in range(100)} & set(res.removed["id"].to_pylist())


def test_no_labelled_rows_is_a_pass_through():
    t = pa.table({"id": ["a", "b"], "text": ["x y", "z w"], "label": pa.array([None, None], pa.string())})
    res = ln.run(t, TFIDF)
    assert res.tables["data"].equals(t) and res.removed.num_rows == 0
    assert res.metrics["labelled_rows"] == 0


def test_integer_labels_binary_and_relabel_keeps_type():
    rows = realdata.fortunes(("bofh-excuses", "startrek"), 120)
    table, truth = _noisy(rows, 0.15, seed=1)
    ints = [0 if lab == "bofh-excuses" else 1 for lab in table["label"].to_pylist()]
    t = table.set_column(3, "label", pa.array(ints, pa.int64()))
    res = ln.run(t, ln.Params(features="tfidf", action="relabel", relabel_min_confidence=0.6))
    assert res.tables["data"].schema.field("label").type == pa.int64()
    assert res.metrics["classes"] == 2 and res.metrics["relabelled"] > 0
    found = set(res.removed["id"].to_pylist())
    assert len(found & truth) >= 0.7 * len(truth)


def test_class_smaller_than_folds_is_not_checked(noisy):
    t = noisy[0]
    extra = pa.table(
        {"id": ["tiny1", "tiny2"], "text": ["a rare quote about cats", "another rare cat line"],
         "domain": ["quotes"] * 2, "label": ["cats", "cats"]}
    )
    res = ln.run(pa.concat_tables([t, extra]), TFIDF)
    assert res.metrics["unchecked_rare_class_rows"] == 2
    s = {r["id"]: r for r in res.tables["scores"].to_pylist()}
    assert s["tiny1"]["label_quality"] is None and s["tiny1"]["rank"] is None
    assert "tiny1" not in res.removed["id"].to_pylist()
    assert "cats" not in {r["suggested_label"] for r in s.values()}


def test_deterministic(noisy, flagged):
    again = ln.run(noisy[0], TFIDF)
    assert again.removed.equals(flagged.removed)
    assert again.tables["scores"].equals(flagged.tables["scores"])


# --- bad input --------------------------------------------------------------------------------


def _small(labels, texts=None, ids=None):
    n = len(labels)
    return pa.table(
        {
            "id": ids or [f"r{i}" for i in range(n)],
            "text": texts or [f"text number {i} with words" for i in range(n)],
            "label": pa.array(labels, pa.string()),
        }
    )


def test_single_class_is_an_error():
    with pytest.raises(WinnowError, match="at least 2 classes"):
        ln.run(_small(["a"] * 10 + ["b"] * 2), TFIDF)


def test_empty_label_string_is_an_error_naming_the_row():
    with pytest.raises(WinnowError, match="'r3'.*empty label"):
        ln.run(_small(["a"] * 3 + [" "] + ["b"] * 6), TFIDF)


def test_empty_text_on_labelled_row_is_an_error():
    texts = [f"t {i}" for i in range(10)]
    texts[4] = "   "
    with pytest.raises(WinnowError, match="'r4'.*empty 'text'"):
        ln.run(_small(["a", "b"] * 5, texts=texts), TFIDF)


def test_duplicate_ids_are_an_error():
    with pytest.raises(WinnowError, match="duplicate id 'x'"):
        ln.run(_small(["a", "b"] * 5, ids=["x"] * 2 + [f"r{i}" for i in range(8)]), TFIDF)


def test_missing_label_column_is_an_error():
    with pytest.raises(WinnowError, match="missing column 'label'"):
        ln.run(_small(["a", "b"]).drop_columns(["label"]), TFIDF)


def test_label_outside_declared_classes_is_an_error():
    with pytest.raises(WinnowError, match="'r1' has label 'b'.*not in label_noise.classes"):
        ln.run(_small(["a", "b"] * 5), ln.Params(features="tfidf", classes=("a",)))


def test_bad_params_fail_at_construction():
    with pytest.raises(WinnowError, match="filter_by"):
        ln.Params(filter_by="nope")
    with pytest.raises(WinnowError, match="folds"):
        ln.Params(folds=1)



def test_minilm_without_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(ln, "minilm_available", lambda: False)
    monkeypatch.setattr(ln, "smollm2_available", lambda: False)
    with pytest.raises(WinnowError, match=re.escape(ln.MINILM_INSTALL)):
        ln.Params(features="minilm")
    assert ln.Params().features == "tfidf"


def test_auto_features_are_every_installed_kind_and_a_missing_lm_names_its_install(monkeypatch):
    monkeypatch.setattr(ln, "minilm_available", lambda: True)
    monkeypatch.setattr(ln, "smollm2_available", lambda: True)
    assert ln.Params().features == "tfidf+minilm+smollm2"
    assert ln.Params().uses_minilm and ln.Params().uses_smollm2
    monkeypatch.setattr(ln, "smollm2_available", lambda: False)
    assert ln.Params().features == "tfidf+minilm"
    with pytest.raises(WinnowError, match=re.escape(ln.SMOLLM2_INSTALL)):
        ln.Params(features="tfidf+smollm2")
    with pytest.raises(WinnowError, match="leave it unset with features='tfidf\\+minilm'"):
        ln.Params(features="tfidf+minilm", C=1.0)


# --- second opinions and extra checks ---------------------------------------------------------


DETECTOR = ln.Params(features="tfidf", cutoff="detector")


@pytest.fixture(scope="module")
def detected(noisy):
    """The earlier cut-off: cleanlab's filter or'ed with AUM (``detector="auto"``, 4 classes)."""
    return ln.run(noisy[0], DETECTOR)


def test_aum_is_lower_on_flipped_labels_and_and_combination_is_a_subset(noisy, detected):
    table, truth = noisy
    flagged = detected
    res = ln.run(table, ln.Params(features="tfidf", cutoff="detector", detector="cl_and_aum"))
    s = res.tables["scores"].to_pylist()
    aum_flipped = np.mean([r["aum"] for r in s if r["id"] in truth])
    aum_clean = np.mean([r["aum"] for r in s if r["id"] not in truth])
    assert aum_flipped < aum_clean
    assert set(res.removed["id"].to_pylist()) <= set(flagged.removed["id"].to_pylist())
    assert res.metrics["issues"] <= min(res.metrics["cl_issues"], res.metrics["aum_issues"])
    assert "aum" in json.loads(res.removed["evidence"][0].as_py())


def test_auto_detector_is_the_union_for_multiclass_and_confident_learning_for_binary(noisy, detected):
    flagged = detected
    s = flagged.tables["scores"]
    assert flagged.metrics["detector"] == "cl_or_aum"
    cl_only = ln.run(noisy[0], ln.Params(features="tfidf", cutoff="detector", detector="cl"))
    assert flagged.metrics["issues"] >= cl_only.metrics["issues"]
    assert set(cl_only.removed["id"].to_pylist()) <= set(flagged.removed["id"].to_pylist())
    assert "aum" in s.column_names
    assert json.loads(flagged.removed["evidence"][0].as_py())["method"].startswith("confident_learning/prune_by_noise_rate|aum")
    binary = noisy[0].filter(pa.compute.is_in(noisy[0]["label"], value_set=pa.array(list(CATS[:2]))))
    res = ln.run(binary, DETECTOR)
    assert res.metrics["detector"] == "cl"
    assert "aum" not in res.tables["scores"].column_names
    assert ln.resolve_detector("cl_and_aum", 2) == "cl_and_aum"


def test_datalab_reports_exact_duplicate_texts(noisy):
    table = noisy[0]
    dup = table.slice(0, 1).set_column(0, "id", pa.array(["copy_of_r0"]))
    res = ln.run(pa.concat_tables([table, dup]), ln.Params(features="tfidf", datalab=True))
    s = {r["id"]: r for r in res.tables["scores"].to_pylist()}
    assert s["copy_of_r0"]["is_near_duplicate"] and s["r0"]["is_near_duplicate"]
    assert res.metrics["near_duplicates"] >= 2
    assert res.removed.num_rows == res.metrics["issues"]  # Datalab findings are reported, not acted on


needs_minilm = pytest.mark.skipif(not ln.minilm_available(), reason="MiniLM wheel not installed")


@needs_minilm
def test_embedding_cache_skips_known_texts(monkeypatch):
    from tasks import embeddings

    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    X, cache = embeddings.embed_texts(texts)
    assert X.shape == (3, embeddings.DIM) and cache.num_rows == 3
    assert X[0] @ X[1] > 0.6 > X[0] @ X[2]  # paraphrases close, unrelated far

    def no_encoding(*_a, **_k):
        raise AssertionError("a cached text was embedded again")

    monkeypatch.setattr(embeddings, "_encode", no_encoding)
    again, cache2 = embeddings.embed_texts(texts[::-1], cache=cache)
    assert np.array_equal(again, X[::-1]) and cache2.num_rows == 3


@needs_minilm
def test_ensemble_takes_each_parts_own_regularisation():
    assert ln.Params(features="tfidf+minilm").C is None
    with pytest.raises(WinnowError, match="leave it unset"):
        ln.Params(features="tfidf+minilm", C=1.0)


@pytest.mark.slow
@needs_minilm
def test_minilm_features_find_injected_errors():
    table, truth = _noisy(realdata.fortunes(CATS, 40), 0.10)
    first = ln.run(table, ln.Params(features="tfidf+minilm"))
    cache = first.tables["embeddings"]
    assert cache.num_rows == len(set(table["text"].to_pylist()))
    found = set(first.removed["id"].to_pylist())
    assert len(found & truth) >= 0.5 * len(truth)
    again = ln.run(table, ln.Params(features="tfidf+minilm"), embeddings=cache)
    assert again.removed.equals(first.removed)


def test_cross_validation_threads_do_not_change_the_probabilities(monkeypatch):
    """The fits of the C grid run on CV_THREADS threads; every fit is seeded, so one thread and two
    must give bit-identical out-of-sample probabilities (the fingerprint names the same result)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(len(y), 8)) + y[:, None] * 0.5
    out = {}
    for threads in (1, 2):
        monkeypatch.setattr(ln, "CV_THREADS", threads)
        out[threads] = ln.out_of_sample_grid(X, y, 3, 5, (0.01, 1.0), 0, dense=True)
    assert all(np.array_equal(a, b) for a, b in zip(out[1], out[2]))
    assert not np.array_equal(out[1][0], out[1][1])  # the two C values really are two fits
    assert np.allclose(out[1][1], ln.out_of_sample_probs(X, y, 3, 5, 1.0, 0, dense=True))
