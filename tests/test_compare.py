"""Comparison statistics of the mixture bench and the ablation receipts: held-out halves, document bootstrap, rank transfer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks import compare
from winnow.errors import WinnowError


def _heldout() -> pa.Table:
    ids = [f"a{i}" for i in range(9) for _ in range(2)] + [f"b{i}" for i in range(4)] + ["c0"]
    return pa.table({"id": ids, "part": [p for _ in range(9) for p in (0, 1)] + [0] * 5, "text": ["t"] * len(ids),
                     "domain": ["a"] * 18 + ["b"] * 4 + ["c"]})


def test_heldout_halves_split_whole_documents_and_keep_every_domain():
    heldout = _heldout()
    dev, test = compare.heldout_half(heldout, "dev"), compare.heldout_half(heldout, "test")
    docs = lambda t, d: {i for i, dd in zip(t["id"].to_pylist(), t["domain"].to_pylist()) if dd == d}  # noqa: E731
    for d, n in (("a", 9), ("b", 4)):
        assert not docs(dev, d) & docs(test, d) and len(docs(dev, d) | docs(test, d)) == n
        assert abs(len(docs(dev, d)) - len(docs(test, d))) <= 1  # alternating by hash: balanced
    assert docs(dev, "c") == docs(test, "c") == {"c0"}  # a lone document is scored in both
    for t in (dev, test):  # both parts of a chunked document land in the same half
        parts = {}
        for i, p in zip(t["id"].to_pylist(), t["part"].to_pylist()):
            parts.setdefault(i, set()).add(p)
        assert all(v == {0, 1} for k, v in parts.items() if k.startswith("a"))
    assert compare.heldout_half(heldout, None).equals(heldout)
    shuffled = heldout.take(list(range(22, -1, -1)))  # the halves do not depend on row order
    assert set(compare.heldout_half(shuffled, "dev")["id"].to_pylist()) == set(dev["id"].to_pylist())
    with pytest.raises(WinnowError, match="held-out half 'train'"):
        compare.heldout_half(heldout, "train")


def _docs(bits: np.ndarray, keys: list[str], domains: list[str]) -> pa.Table:
    return pa.table({"key": keys, "domain": domains, "bits": bits, "bytes": [100] * len(bits)}, schema=compare.DOCS_SCHEMA)


def test_bootstrap_resamples_documents_not_their_chunks():
    # One domain, 4 documents of 10 chunks each; recipe a is better on two documents, worse on two.
    # Resampling chunks would treat 40 correlated chunks as independent and call it "better".
    keys = [f"d{j}#{p}" for j in range(4) for p in range(10)]
    domains = ["x"] * 40
    base = np.full(40, 300.0)
    shift = np.repeat([-60.0, -60.0, 40.0, 30.0], 10)
    a = [_docs(base + shift, keys, domains) for _ in range(3)]
    b = [_docs(base, keys, domains) for _ in range(3)]
    row = {r["domain"]: r for r in compare.bootstrap_difference(a, b, n_boot=500)}["x"]
    assert row["difference"] == pytest.approx(-0.125)
    assert row["verdict"] == "no measurable effect" and row["lo"] < 0 < row["hi"]


def test_spearman_transfer_agrees_with_a_true_ranking_and_flags_a_reversed_one():
    rng = np.random.default_rng(0)
    keys, domains = [f"k{i}" for i in range(60)], ["x"] * 30 + ["y"] * 30
    base = rng.normal(300, 20, 60)
    recipes = [[_docs(base + 15 * r + rng.normal(0, 1, 60), keys, domains) for _ in range(3)] for r in range(5)]
    rho, lo, hi, measured = compare.bootstrap_spearman([0.1, 0.2, 0.3, 0.4, 0.5], recipes, n_boot=300)
    assert rho == pytest.approx(1.0) and lo > 0.8 and np.all(np.diff(measured) > 0)
    rho, lo, hi, _ = compare.bootstrap_spearman([0.5, 0.4, 0.3, 0.2, 0.1], recipes, "worst", n_boot=300)
    assert rho == pytest.approx(-1.0) and hi < -0.8


def test_document_prefixes_keep_one_cut_row_per_document():
    heldout = pa.table({"id": ["a", "a", "b", "c"], "part": [1, 0, 0, 0], "domain": ["x", "x", "x", "y"],
                        "text": ["second part", "héllo wörld", "short", "ééé"]})
    out = compare.document_prefixes(heldout, 5)
    assert out["id"].to_pylist() == ["a", "b", "c"] and out["part"].to_pylist() == [0, 0, 0]
    assert out["text"].to_pylist() == ["héll", "short", "éé"]  # cut inside a character drops it
    assert all(len(t.encode("utf-8")) <= 5 for t in out["text"].to_pylist())


def test_paired_seeds_cancel_a_shared_seed_effect():
    # Recipe a is 2% better on every document under every seed, but seeds differ by +-10%, and
    # seed j of both recipes shares its luck (same init): pairing cancels it, resampling each
    # recipe's seeds on its own cannot tell the 2% from the seed noise.
    keys, domains = [f"k{i}" for i in range(40)], ["x"] * 20 + ["y"] * 20
    base = np.random.default_rng(1).normal(400, 5, 40)
    luck = [0.9, 1.0, 1.1]
    a = [_docs(base * 0.98 * l, keys, domains) for l in luck]
    b = [_docs(base * l, keys, domains) for l in luck]
    paired = {r["domain"]: r for r in compare.bootstrap_difference(a, b, n_boot=400)}["mean"]
    apart = {r["domain"]: r for r in compare.bootstrap_difference(a, b, n_boot=400, pair_seeds=False)}["mean"]
    assert paired["difference"] == pytest.approx(apart["difference"]) == pytest.approx(-0.08, rel=1e-3)
    assert paired["verdict"] == "better" and paired["hi"] - paired["lo"] < 0.05
    assert apart["verdict"] == "no measurable effect"
    rng = np.random.default_rng(0)
    first, second = compare.seed_draws(rng, [3, 3])
    assert first is second  # one draw for both recipes
    uneven = compare.seed_draws(rng, [3, 2])  # unequal seed counts cannot pair: one draw each
    assert [len(d) for d in uneven] == [3, 2]
