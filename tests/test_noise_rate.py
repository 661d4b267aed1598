"""The label-noise cut-off: noise-count estimate, ranking, fixed fraction, per-row explanations.

Real fortunes categories with injected noise (the same data as tests/test_label_noise.py).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import realdata

from tasks import label_noise as ln
from tasks import noise_rate as nr
from winnow.errors import WinnowError

CATS = ("bofh-excuses", "definitions", "startrek", "linux")


def _flip(rows, rate: float, seed: int, partner: bool = False):
    """Labels flipped on ``rate`` of the rows: to a random other class, or (``partner``) to the next one."""
    rng = np.random.default_rng(seed)
    cats = sorted({c for c, _ in rows})
    labels = [c for c, _ in rows]
    flipped = rng.choice(len(rows), int(rate * len(rows)), replace=False)
    for i in flipped:
        labels[i] = cats[(cats.index(labels[i]) + 1) % len(cats)] if partner else \
            str(rng.choice([c for c in cats if c != labels[i]]))
    table = pa.table({"id": [f"r{i}" for i in range(len(rows))], "text": [t for _, t in rows], "label": labels})
    return table, {f"r{i}" for i in flipped}


@pytest.fixture(scope="module")
def uniform():
    table, truth = _flip(realdata.fortunes(CATS, 200), 0.2, 1)
    return table, truth, ln.run(table, ln.Params(features="tfidf"))


def test_estimate_brackets_the_true_count_and_drives_the_flags(uniform):
    table, truth, res = uniform
    m = res.metrics
    assert m["estimated_errors_low"] <= len(truth) <= m["estimated_errors_high"]
    assert abs(m["estimated_errors"] - len(truth)) <= 0.35 * len(truth)  # 1.31x here: 800 rows, 4 classes
    assert m["issues"] == m["estimated_errors"]
    found = set(res.removed["id"].to_pylist())
    assert len(found & truth) / len(found) >= 0.6 and len(found & truth) / len(truth) >= 0.7  # the issue's targets
    assert m["noise_looks_structured"] is False and m["ranking"] == "self_confidence"


def test_detector_cutoff_keeps_the_earlier_rule(uniform):
    table, truth, res = uniform
    old = ln.run(table, ln.Params(features="tfidf", cutoff="detector"))
    assert old.metrics["detector"] == "cl_or_aum" and "estimated_errors" not in old.metrics
    assert old.metrics["issues"] == old.removed.num_rows != res.metrics["issues"]


def test_fixed_fraction_flags_exactly_that_many_worst_rows(uniform):
    table, _, res = uniform
    frac = ln.run(table, ln.Params(features="tfidf", cutoff="fraction", flag_fraction=0.05))
    assert frac.metrics["issues"] == round(0.05 * table.num_rows)
    # The same ranking: the fraction's rows are the head of the estimate's.
    head = set(frac.removed["id"].to_pylist())
    assert head <= set(res.removed["id"].to_pylist())
    s = frac.tables["scores"].to_pylist()
    assert {r["id"] for r in s if r["is_issue"]} == {r["id"] for r in s if r["rank"] <= len(head)}


def test_partner_noise_is_detected_as_structured():
    table, truth = _flip(realdata.fortunes(CATS, 200), 0.25, 2, partner=True)
    y = np.array([sorted(CATS).index(v) for v in table["label"].to_pylist()])
    X = ln.tfidf_features(table["text"].to_pylist(), 20_000)
    probs = ln.out_of_sample_probs(X, y, 4, 5, 10.0, 0, dense=False)
    parts = nr.mpe_parts(probs, y)
    assert parts["structured"]
    est = nr.estimate_errors(probs, y, n_boot=50)
    assert 0.5 * len(truth) <= est["estimate"] <= 1.5 * len(truth)


def test_evidence_explains_each_flag(uniform):
    table, _, res = uniform
    label_of = dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))
    flagged = set(res.removed["id"].to_pylist())
    for ev in map(json.loads, res.removed["evidence"].to_pylist()[:20]):
        assert ev["signals"] and "estimate/self_confidence" in ev["signals"]
        assert len(ev["neighbours_given_label"]) == len(ev["neighbours_suggested_label"]) == 3
        for key, label in (("neighbours_given_label", ev["given_label"]), ("neighbours_suggested_label", ev["suggested_label"])):
            sims = [n["similarity"] for n in ev[key]]
            assert sims == sorted(sims, reverse=True)
            assert all(label_of[n["id"]] == label and n["id"] not in flagged for n in ev[key])


def test_nearest_by_class_is_exact_on_dense_vectors():
    from tasks.noise_explain import nearest_by_class

    X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2], [0.1, 0.9]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 1])
    flagged = np.array([True, False, False, False, False])
    gi, gs, si, ss = nearest_by_class(X, y, flagged, np.array([1, 0, 0, 0, 0]), k=2)
    assert gi.tolist() == [[1, -1]] and np.isnan(gs[0, 1])  # only one unflagged row of class 0
    assert si.tolist() == [[3, 4]]


def test_blend_weights_follow_log_loss():
    y = np.array([0, 1] * 50)
    good = np.eye(2)[y] * 0.8 + 0.1
    flat = np.full((100, 2), 0.5)
    probs, w = nr.blend({"good": good, "flat": flat}, y)
    assert w == {"good": 1.0, "flat": 0.0}
    assert np.allclose(probs, good)


def test_bad_cutoff_settings_name_the_key():
    for kw, key in (({"cutoff": "half"}, "cutoff"), ({"ranking": "x"}, "ranking"),
                    ({"noise_estimator": "x"}, "noise_estimator"), ({"flag_fraction": 1.5}, "flag_fraction"),
                    ({"bootstrap": -1}, "bootstrap")):
        with pytest.raises(WinnowError, match=f"label_noise.{key}"):
            ln.Params(features="tfidf", **kw)


def _confusions(counts: dict[tuple[int, int], int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows labelled ``given`` whose probabilities point at ``predicted``, ``counts[(given, predicted)]`` of each."""
    y, probs = [], []
    for (given, predicted), n in counts.items():
        p = np.full(k, 0.05 / (k - 1))
        p[predicted] = 0.95
        y += [given] * n
        probs += [p] * n
    return np.array(probs), np.array(y)


def test_flip_matrix_discounts_two_way_confusion_only(monkeypatch):
    # Classes 0 and 1 are confused both ways (the classifier's overlap); class 2 rows were
    # labelled 0 one way only (a partner flip). F[a, j]: true a, given j.
    probs, y = _confusions({(0, 0): 200, (1, 1): 200, (2, 2): 200, (1, 0): 30, (0, 1): 30, (0, 2): 30}, 3)
    f = nr.flip_matrix(probs, y)
    monkeypatch.setattr(nr, "REVERSE_DISCOUNT", 0.0)
    raw = nr.flip_matrix(probs, y)
    assert raw[0, 1] == pytest.approx(raw[2, 0], rel=0.2)  # undiscounted, both look alike
    assert f[0, 1] < 0.4 * raw[0, 1] and f[1, 0] < 0.4 * raw[1, 0]
    assert f[2, 0] == pytest.approx(raw[2, 0], rel=0.05)


def test_flip_matrix_keeps_both_directions_with_two_classes():
    probs, y = _confusions({(0, 0): 200, (1, 1): 200, (1, 0): 30, (0, 1): 30}, 2)
    f = nr.flip_matrix(probs, y)
    assert f[0, 1] > 0.08 and f[1, 0] > 0.08


def test_regularisation_is_chosen_by_out_of_fold_log_loss(uniform):
    table, _, res = uniform
    assert res.metrics["chosen_C"]["tfidf"] in ln.C_GRID["tfidf"]
    y = np.array([sorted(CATS).index(v) for v in table["label"].to_pylist()])
    X = ln.tfidf_features(table["text"].to_pylist(), 20_000)
    probs, chosen = ln.regularised_probs(X, y, 4, ln.Params(features="tfidf"), "tfidf")
    losses = {C: nr.log_loss(ln.out_of_sample_probs(X, y, 4, 5, C, 0, dense=False), y) for C in ln.C_GRID["tfidf"]}
    assert chosen == min(losses, key=losses.get) == res.metrics["chosen_C"]["tfidf"]
    assert nr.log_loss(probs, y) == pytest.approx(min(losses.values()))
    fixed = ln.run(table, ln.Params(features="tfidf", C=1.0))
    assert fixed.metrics["chosen_C"] == {"tfidf": 1.0}
