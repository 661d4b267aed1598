"""Dedup stage: exact, near (MinHash-LSH) and incremental dedup on real text.

Licences come from /usr/share/common-licenses (Debian base-files); fortunes and kernel docs from the
bundled sample, so the tests run the same on a fresh machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import realdata

from tasks import dedup
from tasks import minhash as mh
from tasks.common import LEDGER_SCHEMA, normalize_text
from winnow.errors import WinnowError

LICENSES = Path("/usr/share/common-licenses")


def _licence(name: str) -> str:
    return (LICENSES / name).read_text(encoding="utf-8", errors="replace")


def _fortunes(limit: int = 3000) -> list[tuple[str, str]]:
    """The first ``limit`` fortunes of all categories (sorted by name), as ``(id, text)``."""
    rows = []
    for cat in realdata.fortune_categories():
        rows += [(f"fortune/{cat}/{j}", text) for j, (_, text) in enumerate(realdata.fortunes([cat], limit))]
        if len(rows) >= limit:
            break
    return rows[:limit]


def _kernel_pairs() -> list[tuple[str, str]]:
    """The same Documentation/ files from kernel docs 6.1 and 6.12 (natural near-duplicates), 6.1 first."""
    rows = []
    for path, old, new in realdata.kernel_doc_pairs():
        rows += [(f"k6.1/{path}", old), (f"k6.12/{path}", new)]
    return rows


def _table(rows: list[tuple[str, str]], **extra: list) -> pa.Table:
    cols = {"id": [r[0] for r in rows], "text": [r[1] for r in rows]}
    cols.update(extra)
    return pa.table(cols)


def _shingle_set(text: str, n: int = 5) -> set[str]:
    toks = normalize_text(text).split()
    if len(toks) < n:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def _jaccard(a: str, b: str) -> float:
    x, y = _shingle_set(a), _shingle_set(b)
    return len(x & y) / len(x | y)


def _evidence(res) -> dict[str, dict]:
    return {i: json.loads(e) for i, e in zip(res.removed.column("id").to_pylist(), res.removed.column("evidence").to_pylist())}


@pytest.fixture(scope="module")
def licences() -> pa.Table:
    names = ["GFDL-1.2", "GFDL-1.3", "LGPL-2", "LGPL-2.1", "GPL-2", "GPL-3", "Apache-2.0", "MPL-2.0"]
    return _table([(n, _licence(n)) for n in names])


@pytest.fixture(scope="module")
def kernel() -> pa.Table:
    return _table(_kernel_pairs())


# --------------------------------------------------------------------------- exact


def test_reformatted_copy_is_an_exact_duplicate_of_the_first() -> None:
    fortunes = _fortunes(50)
    text = fortunes[3][1]
    copy = "  " + text.upper().replace(" ", "   ").replace(",", " ;") + "\n"
    t = _table(fortunes + [("copy", copy)])
    res = dedup.run(t, dedup.Params())
    ev = _evidence(res)
    assert res.removed.column("reason").to_pylist()[-1] == "exact_duplicate"
    assert ev["copy"]["duplicate_of"] == fortunes[3][0]
    assert "copy" not in res.tables["data"].column("id").to_pylist()


def test_punctuation_only_texts_are_not_duplicates_of_each_other() -> None:
    t = _table([("a", "!!!"), ("b", "???"), ("c", "!!!")])
    res = dedup.run(t, dedup.Params())
    assert res.tables["data"].column("id").to_pylist() == ["a", "b"]
    assert _evidence(res)["c"]["duplicate_of"] == "a"


# --------------------------------------------------------------------------- near


def test_gfdl_versions_are_near_duplicates_at_08_not_09(licences: pa.Table) -> None:
    j = _jaccard(_licence("GFDL-1.2"), _licence("GFDL-1.3"))
    assert 0.8 <= j < 0.9
    at08 = dedup.run(licences, dedup.Params(threshold=0.8))
    at09 = dedup.run(licences, dedup.Params(threshold=0.9))
    ev = _evidence(at08)
    assert ev["GFDL-1.3"]["duplicate_of"] == "GFDL-1.2"
    assert at08.removed.column("reason").to_pylist() == ["near_duplicate"]
    assert at09.removed.num_rows == 0


def test_char_shingles_find_the_same_licence_pair(licences: pa.Table) -> None:
    res = dedup.run(licences, dedup.Params(shingle="char", ngram=9, threshold=0.85))
    assert _evidence(res)["GFDL-1.3"]["duplicate_of"] == "GFDL-1.2"
    assert res.removed.num_rows == 1


def test_verified_jaccard_is_exact_jaccard_of_word_5_grams(licences: pa.Table) -> None:
    res = dedup.run(licences, dedup.Params(threshold=0.7))
    ev = _evidence(res)
    assert set(ev) == {"GFDL-1.3", "LGPL-2.1"}  # LGPL-2 vs 2.1 is J = 0.72
    for dup, e in ev.items():
        truth = _jaccard(_licence(dup), _licence(e["duplicate_of"]))
        assert e["jaccard_verified"] == pytest.approx(truth, abs=2e-3)
        assert abs(e["jaccard_estimated"] - truth) < 0.15  # 4 standard errors at k=128


def test_kernel_doc_versions_recall_and_precision(kernel: pa.Table) -> None:
    texts = dict(zip(kernel.column("id").to_pylist(), kernel.column("text").to_pylist()))
    res = dedup.run(kernel, dedup.Params())
    dropped = {i: e["duplicate_of"] for i, e in _evidence(res).items()}
    truth_pairs = []
    for i in list(texts)[1::2]:  # each 6.12 file with its 6.1 version
        j = _jaccard(texts[i.replace("k6.12/", "k6.1/")], texts[i])
        if j >= 0.8:
            truth_pairs.append(i)
    assert len(truth_pairs) >= 30
    found = sum(dropped.get(i) == i.replace("k6.12/", "k6.1/") for i in truth_pairs)
    assert found / len(truth_pairs) >= 0.97
    wrong = [i for i, k in dropped.items() if _jaccard(texts[i], texts[k]) < 0.8 - 0.01]
    assert not wrong


# --------------------------------------------------------------------------- datasketch equivalence


@pytest.mark.parametrize("seed,num_perm", [(1, 128), (7, 64)])
def test_signatures_equal_datasketch_minhash_with_our_shingle_hash(licences: pa.Table, seed: int, num_perm: int) -> None:
    from datasketch import MinHash, MinHashLSH

    params = dedup.Params(seed=seed, num_perm=num_perm)
    feats = dedup.featurize(licences.column("text"), params, params.banding())
    texts = licences.column("text").to_pylist() + []
    lsh = MinHashLSH(threshold=0.8, num_perm=num_perm)
    for d, text in enumerate(texts):
        toks = normalize_text(text).split()
        shingles = [" ".join(toks[i : i + 5]).encode() for i in range(len(toks) - 4)]
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=mh.shingle_hash32)
        m.update_batch(shingles)
        assert np.array_equal(m.hashvalues, feats.sigs[d])
        lsh.insert(str(d), MinHash(hashvalues=feats.sigs[d], seed=seed, scheme="affine32"))
    assert "1" in lsh.query(MinHash(hashvalues=feats.sigs[0], seed=seed, scheme="affine32"))


@pytest.mark.parametrize("shingle,ngram", [("word", 5), ("char", 9)])
def test_numba_and_numpy_paths_agree(shingle: str, ngram: int) -> None:
    t = _table(_fortunes(400) + [("short", "two words"), ("blank-ish", "!!"), ("uni", "Ça va? Ünïcödé — ½ ﬁ")])
    params = dedup.Params(shingle=shingle, ngram=ngram)
    fast = dedup.featurize(t.column("text"), params, params.banding(), use_numba=True)
    slow = dedup.featurize(t.column("text"), params, params.banding(), use_numba=False)
    for name in ("exact", "num_units", "sigs", "bands", "shingles", "shingle_offsets"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name


def test_tokens_match_normalize_text_on_real_text(kernel: pa.Table) -> None:
    docs = zip(kernel.column("id").to_pylist(), kernel.column("text").to_pylist())
    zh = [t for i, t in docs if i.startswith("k6.1/translations/zh_CN/")][:5]
    assert len(zh) == 5
    texts = kernel.column("text").to_pylist()[:40] + [r[1] for r in _fortunes(300)]
    texts += zh + ["ﬁnance ½ Ｆｕｌｌｗｉｄｔｈ ①,e\u0301 İstanbul"]
    arr = pa.array(texts)
    units, off = mh.word_units(mh.fold_case(arr, True, True), strip_punctuation=True)
    for d, text in enumerate(texts):
        # Python lower-cases "İ" to "i" + U+0307 (a separator for \w); Arrow to "i" (documented).
        want = [mh.token_hash(t.encode()) for t in normalize_text(text.replace("İ", "I")).split()]
        assert units[off[d] : off[d + 1]].tolist() == want


# --------------------------------------------------------------------------- banding, clustering


def test_union_find_matches_scipy_connected_components() -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    n = 5000
    left, right = rng.integers(0, n, 4000), rng.integers(0, n, 4000)
    ours = dedup._components(n, left, right)
    theirs = connected_components(coo_matrix((np.ones(4000), (left, right)), shape=(n, n)), directed=False)[1]
    # Same partition: a bijection between label sets.
    pairs = set(zip(ours.tolist(), theirs.tolist()))
    assert len(pairs) == len(set(ours.tolist())) == len(set(theirs.tolist()))
    assert all(ours[ours] == ours)  # labels are roots


def test_banding_meets_recall_target_where_datasketch_default_does_not() -> None:
    from datasketch.lsh import _optimal_param

    ours = mh.choose_banding(0.8, 128, 0.9)
    b, r = _optimal_param(0.8, 128, 0.5, 0.5)
    assert ours.p_at_threshold >= 0.9 and ours.bands * ours.rows <= 128
    assert 1 - (1 - 0.8**r) ** b < 0.5


# --------------------------------------------------------------------------- keep policy, output shape


def test_keep_longest_and_keep_score(licences: pa.Table) -> None:
    longest = dedup.run(licences, dedup.Params(keep="longest"))
    lens = {i: len(t) for i, t in zip(licences.column("id").to_pylist(), licences.column("text").to_pylist())}
    loser = longest.removed.column("id")[0].as_py()
    winner = _evidence(longest)[loser]["duplicate_of"]
    assert {loser, winner} == {"GFDL-1.2", "GFDL-1.3"} and lens[winner] >= lens[loser]
    scored = licences.append_column("quality", pa.array([0.1, 0.9, 0, 0, 0, 0, 0, 0], pa.float64()))
    res = dedup.run(scored, dedup.Params(keep="score", score_column="quality"))
    assert res.removed.column("id").to_pylist() == ["GFDL-1.2"]


def test_output_keeps_input_order_schema_and_extra_columns() -> None:
    rows = _fortunes(300)
    rows = rows + [(f"dup{i}", rows[i][1]) for i in range(0, 300, 7)]
    t = _table(rows, domain=["prose"] * len(rows))
    res = dedup.run(t, dedup.Params())
    data = res.tables["data"]
    assert data.schema == t.schema
    ids = data.column("id").to_pylist()
    assert ids == [i for i in t.column("id").to_pylist() if i in set(ids)]
    assert res.removed.schema == LEDGER_SCHEMA
    assert res.metrics["rows_in"] == t.num_rows and res.metrics["rows_out"] == data.num_rows
    assert data.num_rows + res.removed.num_rows == t.num_rows
    assert res.tables["index"].num_rows == t.num_rows


# --------------------------------------------------------------------------- incremental


def test_incremental_run_matches_full_run_on_new_rows(kernel: pa.Table) -> None:
    # Yesterday: the 6.1 docs; today: the 6.12 docs, which near-duplicate many of them.
    first, second = kernel.take(np.arange(0, kernel.num_rows, 2)), kernel.take(np.arange(1, kernel.num_rows, 2))
    full = dedup.run(pa.concat_tables([first, second]), dedup.Params())
    r1 = dedup.run(first, dedup.Params())
    r2 = dedup.run(second, dedup.Params(), index=r1.tables["index"])
    full_ev, inc_ev = _evidence(full), {**_evidence(r1), **_evidence(r2)}
    assert set(full_ev) == set(inc_ev)
    assert r2.tables["index"].num_rows == kernel.num_rows
    assert r2.metrics["near"]["old_docs_matched"] > 0
    assert any(e["duplicate_of_earlier_run"] for e in _evidence(r2).values())


def test_index_rejects_seen_ids_and_other_settings(licences: pa.Table) -> None:
    r1 = dedup.run(licences, dedup.Params())
    with pytest.raises(WinnowError, match="already in the dedup index"):
        dedup.run(licences, dedup.Params(), index=r1.tables["index"])
    other = _table([("new", "some new text here for the index check")])
    with pytest.raises(WinnowError, match="ngram"):
        dedup.run(other, dedup.Params(ngram=3), index=r1.tables["index"])


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_with_the_row_named() -> None:
    with pytest.raises(WinnowError, match="missing column 'text'"):
        dedup.run(pa.table({"id": ["a"]}), dedup.Params())
    with pytest.raises(WinnowError, match="no rows"):
        dedup.run(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), dedup.Params())
    with pytest.raises(WinnowError, match="'b'"):
        dedup.run(pa.table({"id": ["a", "b"], "text": ["x", None]}), dedup.Params())
    with pytest.raises(WinnowError, match="duplicate id 'a'"):
        dedup.run(pa.table({"id": ["a", "a"], "text": ["x", "y"]}), dedup.Params())
    with pytest.raises(WinnowError, match="dedup.keep"):
        dedup.run(pa.table({"id": ["a"], "text": ["x"]}), dedup.Params(keep="best"))


def test_invalid_utf8_is_rejected_with_its_id() -> None:
    data = b"fine" + b"bad\xff\xfe"
    offsets = pa.py_buffer(np.array([0, 4, 9], np.int32).tobytes())
    texts = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(data)])
    with pytest.raises(WinnowError, match="'second'.*not valid UTF-8"):
        dedup.run(pa.table({"id": ["first", "second"], "text": texts}), dedup.Params())


def test_blank_texts_follow_the_empty_text_rule() -> None:
    t = pa.table({"id": ["a", "b", "c", "d"], "text": ["hello there", "", "   \n", "hello there!"]})
    with pytest.raises(WinnowError, match="'b'.*blank"):
        dedup.run(t, dedup.Params())
    kept = dedup.run(t, dedup.Params(empty_text="keep"))
    assert kept.tables["data"].column("id").to_pylist() == ["a", "b", "c"]
    dropped = dedup.run(t, dedup.Params(empty_text="drop"))
    assert dropped.tables["data"].column("id").to_pylist() == ["a"]
    assert sorted(dropped.removed.column("reason").to_pylist()) == ["empty_text", "empty_text", "exact_duplicate"]


def test_long_document_is_processed() -> None:
    words = _licence("GPL-3").split()
    rng = np.random.default_rng(0)
    big = " ".join(rng.choice(words, 1_000_000))  # ~6 MB, one document
    t = _table([("big", big), ("big-copy", big + " and one more sentence"), ("small", "a small text")])
    res = dedup.run(t, dedup.Params(batch_bytes=1 << 20))
    assert res.tables["data"].column("id").to_pylist() == ["big", "small"]
    assert _evidence(res)["big-copy"]["jaccard_verified"] > 0.99


# --------------------------------------------------------------------------- semantic


def test_semantic_pass_drops_vectors_close_to_a_kept_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in embedder: bag of normalised words, so rewordings of one fortune are close.
    rows = _fortunes(60)
    vocab = {w: i for i, w in enumerate(sorted({w for _, t in rows for w in normalize_text(t).split()}))}

    def embed(texts: list[str], batch_size: int) -> np.ndarray:
        x = np.zeros((len(texts), len(vocab)), np.float32)
        for r, t in enumerate(texts):
            for w in normalize_text(t).split():
                x[r, vocab[w]] += 1
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    monkeypatch.setattr(dedup, "_embed", embed)
    words = normalize_text(rows[5][1]).split()
    reordered = " ".join(words[::-1])  # same words, new order: no shared 5-gram, cosine 1
    t = _table(rows + [("reordered", reordered)])
    res = dedup.run(t, dedup.Params(semantic=True, semantic_clusters=4))
    ev = _evidence(res)
    assert res.removed.column("reason").to_pylist() == ["semantic_duplicate"]
    assert ev["reordered"]["duplicate_of"] == rows[5][0] and ev["reordered"]["cosine"] >= 0.95
    assert dedup.run(t, dedup.Params()).removed.num_rows == 0  # MinHash alone does not see it


@pytest.mark.slow
def test_semantic_dedup_with_minilm_finds_bible_paraphrases() -> None:
    # John 1:1-50 in the KJV and the WEB: the same verse in two translations shares few 5-grams.
    verses = {tr: [(f"{tr}/John.1.{v + 1}", text) for v, text in enumerate(realdata.bible_verses(tr, "John.1")[:50])]
              for tr in ("kjv", "web")}
    t = _table(verses["kjv"] + verses["web"])
    res = dedup.run(t, dedup.Params(semantic=True, semantic_threshold=0.9, near=False))
    ev = _evidence(res)
    assert len(ev) >= 10
    same_verse = [i.split("/")[1] == e["duplicate_of"].split("/")[1] for i, e in ev.items()]
    assert np.mean(same_verse) >= 0.9


# --------------------------------------------------------------------------- Parquet path, index variants


def test_parquet_path_gives_the_same_data_and_ledger_as_run(kernel: pa.Table, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from tasks.dedup_files import dedup_parquet

    corpus = pa.concat_tables([kernel, _table(_fortunes(2000))])
    pq.write_table(corpus.slice(0, 500), tmp_path / "a.parquet", row_group_size=200)
    pq.write_table(corpus.slice(500), tmp_path / "b.parquet", row_group_size=700)
    metrics = dedup_parquet([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "out", workers=1)
    data = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out").glob("data-*.parquet")))
    expected = dedup.run(corpus, dedup.Params())
    assert metrics["tasks"] == 3 + -(-(corpus.num_rows - 500) // 700)  # one per row group
    assert metrics["removed"] == expected.metrics["removed"]
    assert data.equals(expected.tables["data"])
    assert pq.read_table(tmp_path / "out" / "removed.parquet").equals(expected.removed)
    assert not (tmp_path / "out" / "features").exists()


def test_incremental_with_new_threshold_recomputes_band_keys(licences: pa.Table) -> None:
    r1 = dedup.run(licences.slice(0, 1), dedup.Params(threshold=0.8))  # GFDL-1.2 yesterday
    r2 = dedup.run(licences.slice(1), dedup.Params(threshold=0.7), index=r1.tables["index"])
    assert r2.metrics["index"]["band_keys_recomputed"]
    ev = _evidence(r2)
    assert ev["GFDL-1.3"]["duplicate_of"] == "GFDL-1.2" and ev["GFDL-1.3"]["duplicate_of_earlier_run"]
    assert ev["LGPL-2.1"]["duplicate_of"] == "LGPL-2"


def test_index_without_shingles_falls_back_to_the_estimate(licences: pa.Table) -> None:
    r1 = dedup.run(licences.slice(0, 1), dedup.Params(index_shingles=False))
    assert r1.tables["index"].column("shingles").null_count == 1
    r2 = dedup.run(licences.slice(1), dedup.Params(index_shingles=False), index=r1.tables["index"])
    e = _evidence(r2)["GFDL-1.3"]
    assert e["jaccard_verified"] is None and e["jaccard_estimated"] >= 0.8


@pytest.mark.slow
def test_fifty_megabyte_document() -> None:
    words = _licence("GPL-3").split()
    big = " ".join(np.random.default_rng(1).choice(words, 8_500_000))
    assert len(big) > 50_000_000
    t = _table([("big", big), ("big-edited", "Preface. " + big[: len(big) // 2] + " inserted " + big[len(big) // 2 :]),
                ("small", "a small text")])
    res = dedup.run(t, dedup.Params())
    assert res.tables["data"].column("id").to_pylist() == ["big", "small"]
    assert _evidence(res)["big-edited"]["jaccard_verified"] > 0.99


def test_pair_chunks_charge_a_shared_document_once_and_stay_within_the_budget() -> None:
    """A document in many candidate pairs is read once per chunk, so it is charged once: a star of
    pairs whose distinct documents fit the budget is one chunk (charging per pair, as before, it
    took 2), and every chunk of random pairs under a small budget fits it or is a single pair."""
    texts = pa.chunked_array([pa.array([f"document {i} " + "shared words of the corpus " * (1 + i % 7) for i in range(400)])])
    params = dedup.Params()
    feats = dedup.featurize(texts, params, params.banding())
    rows = np.arange(400)
    star_l, star_r = np.zeros(399, np.int64), np.arange(1, 400)
    probe = dedup._PairScorer(feats, None, rows, np.zeros(0, np.int64), params, budget=1)
    distinct = int(probe._cost(np.arange(400)).sum())
    per_pair = int((probe._cost(star_l) + probe._cost(star_r)).sum())
    assert per_pair > distinct  # the old charge would have cut the star
    star = dedup._PairScorer(feats, None, rows, np.zeros(0, np.int64), params, budget=distinct)
    assert star._chunks(star_l, star_r) == [slice(0, 399)]

    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 400, 5000), rng.integers(0, 400, 5000)
    budget = distinct // 10
    chunks = dedup._PairScorer(feats, None, rows, np.zeros(0, np.int64), params, budget=budget)._chunks(left, right)
    assert chunks[0].start == 0 and chunks[-1].stop == 5000 and len(chunks) > 10
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    for c in chunks:
        docs = np.unique(np.concatenate([left[c], right[c]]))
        assert c.stop - c.start == 1 or probe._cost(docs).sum() <= budget
    est, ver = dedup._PairScorer(feats, None, rows, np.zeros(0, np.int64), params, budget=None).score(left[:300], right[:300])
    assert np.allclose(est, mh.estimated_jaccard(feats.sigs, left[:300], right[:300]))
