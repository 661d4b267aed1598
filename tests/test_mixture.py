"""Mixture stage: held-out split, domain weights, byte-budget sampling, templating, errors."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pytest
import realdata

from tasks import mixture
from tasks.mixture import Params, cap_epochs, split_into_chunks
from winnow.errors import WinnowError


def _real_corpus() -> pa.Table:
    """Three real domains: Python stdlib (big), licences (small), fortunes from the bundled sample (labelled)."""
    rows = []
    for f in sorted(glob.glob("/usr/lib/python3.11/*.py")):
        rows.append({"id": f, "text": open(f, encoding="utf-8").read(), "domain": "code", "label": None})
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(f):
            rows.append({"id": f, "text": open(f, encoding="utf-8", errors="replace").read(), "domain": "legal", "label": None})
    for cat in ("computers", "science", "wisdom"):
        for k, (_, text) in enumerate(realdata.fortunes([cat], 150)):
            rows.append({"id": f"fortune/{cat}/{k}", "text": text, "domain": "prose", "label": cat})
    return pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("text", pa.string()), ("domain", pa.string()), ("label", pa.string())]))


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    return _real_corpus()


def _weights(result) -> dict[str, float]:
    t = result.tables["weights"]
    return dict(zip(t["domain"].to_pylist(), t["weight"].to_pylist()))


def test_heldout_split_is_disjoint_and_independent_of_weights(corpus):
    a = mixture.run(corpus, Params(method="uniform", train_bytes=300_000, seed=1))
    b = mixture.run(corpus, Params(method="proportional", train_bytes=900_000, seed=7))
    held_a = set(a.tables["heldout"]["id"].to_pylist())
    assert held_a == set(b.tables["heldout"]["id"].to_pylist())
    assert held_a.isdisjoint(a.tables["data"]["id"].to_pylist())
    assert held_a.isdisjoint(b.tables["data"]["id"].to_pylist())
    per_domain = a.tables["weights"].to_pylist()
    assert all(r["heldout_docs"] >= 2 for r in per_domain)


def test_adding_documents_never_moves_existing_ones_across_the_split(corpus):
    params = Params(heldout_fraction=0.1, train_bytes=100_000)
    code = corpus.filter(pa.compute.equal(corpus["domain"], "code"))
    smaller = code.slice(0, 120)
    held_small = set(mixture.run(smaller, params).tables["heldout"]["id"].to_pylist())
    held_full = set(mixture.run(code, params).tables["heldout"]["id"].to_pylist())
    assert held_small, "the fraction should pick some of 120 files"
    in_smaller = set(smaller["id"].to_pylist())
    assert held_full & in_smaller == held_small


def test_weights_sum_to_one_and_temperature_interpolates(corpus):
    prop = _weights(mixture.run(corpus, Params(method="proportional", train_bytes=50_000)))
    t1 = _weights(mixture.run(corpus, Params(method="temperature", temperature=1.0, train_bytes=50_000)))
    t3 = _weights(mixture.run(corpus, Params(method="temperature", temperature=3.0, train_bytes=50_000)))
    thot = _weights(mixture.run(corpus, Params(method="temperature", temperature=1e6, train_bytes=50_000)))
    for w in (prop, t1, t3, thot):
        assert sum(w.values()) == pytest.approx(1.0)
    assert t1 == pytest.approx(prop)
    assert list(thot.values()) == pytest.approx([1 / 3] * 3, abs=1e-4)
    # Raising τ moves weight from the biggest domain to the smallest.
    big, small = max(prop, key=prop.get), min(prop, key=prop.get)
    assert prop[big] > t3[big] > thot[big]
    assert prop[small] < t3[small] < thot[small]


def test_sampled_bytes_follow_the_weights_and_small_domains_repeat(corpus):
    budget = 600_000
    r = mixture.run(corpus, Params(method="uniform", train_bytes=budget, chunk_bytes=4096))
    data = r.tables["data"]
    by_domain: dict[str, int] = {}
    for text, dom in zip(data["text"].to_pylist(), data["domain"].to_pylist()):
        by_domain[dom] = by_domain.get(dom, 0) + len(text.encode("utf-8"))
    for row in r.tables["weights"].to_pylist():
        assert by_domain[row["domain"]] == row["sampled_bytes"]
        assert abs(row["sampled_bytes"] - budget / 3) <= 4096  # at most one chunk off
    epochs = {row["domain"]: row["epochs"] for row in r.tables["weights"].to_pylist()}
    assert epochs["prose"] > 1  # small domain repeated to reach its share
    assert epochs["code"] < 1  # big domain subsampled
    keys = list(zip(data["id"].to_pylist(), data["part"].to_pylist(), data["epoch"].to_pylist()))
    assert len(keys) == len(set(keys))
    assert max(data["part"].to_pylist()) > 0  # long files were chunked
    assert max(len(t.encode("utf-8")) for t in data["text"].to_pylist()) <= 4096


def test_manual_weights_exclude_unlisted_domains(corpus):
    r = mixture.run(corpus, Params(method="manual", manual_weights={"code": 3.0, "prose": 1.0}, train_bytes=200_000))
    assert _weights(r) == pytest.approx({"code": 0.75, "legal": 0.0, "prose": 0.25})
    assert "legal" not in set(r.tables["data"]["domain"].to_pylist())
    assert "legal" in set(r.tables["heldout"]["domain"].to_pylist())  # still evaluated


def test_manual_weights_reject_unknown_domain(corpus):
    with pytest.raises(WinnowError, match="unknown domain.*cod"):
        mixture.run(corpus, Params(method="manual", manual_weights={"cod": 1.0}))


def test_same_seed_same_sample_and_other_seed_other_order(corpus):
    p = Params(train_bytes=300_000, seed=3)
    a, b = mixture.run(corpus, p), mixture.run(corpus, p)
    assert a.tables["data"].equals(b.tables["data"])
    assert a.tables["weights"].equals(b.tables["weights"])
    c = mixture.run(corpus, Params(train_bytes=300_000, seed=4))
    assert c.tables["data"]["id"].to_pylist() != a.tables["data"]["id"].to_pylist()
    assert _weights(c) == _weights(a)  # weights never depend on the seed


def test_labelled_rows_get_the_template_in_training_and_heldout(corpus):
    r = mixture.run(corpus, Params(train_bytes=300_000))
    labelled = {row["id"]: row for row in corpus.to_pylist() if row["label"] is not None}
    for table in (r.tables["data"], r.tables["heldout"]):
        for row in table.to_pylist():
            if row["id"] in labelled:
                src = labelled[row["id"]]
                assert row["text"] == f"{src['label']}: {src['text']}"
    plain = mixture.run(corpus, Params(train_bytes=300_000, template=None))
    texts = {row["id"]: row["text"] for row in plain.tables["heldout"].to_pylist()}
    some = next(i for i in texts if i in labelled)
    assert texts[some] == labelled[some]["text"]


def test_max_epochs_caps_repetition_and_moves_weight(corpus):
    r = mixture.run(corpus, Params(method="uniform", train_bytes=2_000_000, max_epochs=1.5))
    rows = {row["domain"]: row for row in r.tables["weights"].to_pylist()}
    assert sum(row["weight"] for row in rows.values()) == pytest.approx(1.0)
    assert rows["prose"]["epochs"] <= 1.5 + 0.05
    assert rows["code"]["weight"] > 1 / 3  # received the capped domains' excess


def test_cap_epochs_water_fills():
    w = cap_epochs(np.array([0.5, 0.3, 0.2]), pool_bytes=np.array([100, 1000, 1000]), train_bytes=1000, max_epochs=1.0)
    assert w == pytest.approx([0.1, 0.9 * 0.6, 0.9 * 0.4])


def test_chunks_rejoin_exactly_and_respect_the_size():
    text = "short line\n" * 50 + "x" * 300 + "\n" + "é" * 100 + "\nend"
    parts = split_into_chunks(text, 64)
    assert "".join(parts) == text
    assert all(0 < len(p.encode("utf-8")) <= 64 for p in parts)
    assert split_into_chunks(text, None) == [text]


@pytest.mark.parametrize(
    "table, message",
    [
        (pa.table({"id": ["a", "a"], "text": ["x", "y"], "domain": ["d", "d"]}), "duplicate id 'a'"),
        (pa.table({"id": ["a", "b"], "text": ["x", None], "domain": ["d", "d"]}), "'text' is null in row 1"),
        (pa.table({"id": ["a", "b"], "text": ["x", ""], "domain": ["d", "d"]}), "'text' is empty in row 1"),
        (pa.table({"id": ["a"], "text": ["x"]}), "missing column 'domain'"),
        (pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()), "domain": pa.array([], pa.string())}), "empty"),
    ],
)
def test_bad_input_names_the_problem(table, message):
    with pytest.raises(WinnowError, match=message):
        mixture.run(table, Params())


def test_invalid_params_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        Params(temperature=0)
    with pytest.raises(ValueError, match="manual_weights"):
        Params(method="manual")
