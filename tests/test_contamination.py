"""Contamination stage: benchmark examples planted into real text are found, located and removed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.common import BENCHMARK_SCHEMA, LEDGER_SCHEMA, normalize_text, params_from_dict
from tasks.contamination import REPORT_SCHEMA, Params, run
from tasks.ngram_index import Folder
from winnow.errors import WinnowError

LICENSES = Path("/usr/share/common-licenses")

# Real multiple-choice style items (MMLU-like wording), long enough for 13-token spans.
ITEMS = [
    ("Which of the following best describes the function of the mitochondria in eukaryotic cells "
     "during aerobic respiration", "It produces most of the cell's ATP"),
    ("A ball is thrown straight up with an initial speed of twenty metres per second; ignoring air "
     "resistance, how long does it take to reach its highest point", "About two seconds"),
    ("In the context of the separation of powers, which branch of government is primarily "
     "responsible for interpreting the constitution", "The judiciary"),
]


def _license_docs() -> list[str]:
    docs = []
    for p in sorted(LICENSES.iterdir()):
        if p.is_file() and not p.is_symlink():
            docs.append(p.read_text(encoding="utf-8", errors="replace"))
    assert len(docs) >= 5
    return docs


def _corpus(docs: list[str]) -> pa.Table:
    return pa.table({
        "id": [f"doc{i}" for i in range(len(docs))],
        "text": docs,
        "domain": ["legal"] * len(docs),
    })


def _bench(items=ITEMS, benchmark="mmlu_like", ids=None) -> pa.Table:
    n = len(items)
    return pa.table({
        "id": ids or [f"{benchmark}/{i}" for i in range(n)],
        "benchmark": [benchmark] * n,
        "question": [q for q, _ in items],
        "choices": [[a, "none of these"] for _, a in items],
        "answer": [0] * n,
        "target": [a for _, a in items],
    }, schema=BENCHMARK_SCHEMA)


def _planted(insert: str, where: int = 3) -> tuple[list[str], int]:
    docs = _license_docs()
    d = docs[where]
    cut = len(d) // 2
    docs[where] = d[:cut] + "\n" + insert + "\n" + d[cut:]
    return docs, cut + 1


def _row(report: pa.Table, example_id: str) -> dict:
    return [r for r in report.to_pylist() if r["id"] == example_id][0]


def test_verbatim_item_is_found_with_its_character_span():
    q, a = ITEMS[0]
    docs, at = _planted(f"{q}? {a}.")
    res = run(_corpus(docs), _bench(), Params())
    row = _row(res.tables["report"], "mmlu_like/0")
    assert row["contaminated"] and "longest_match" in row["rule"]
    assert row["coverage"] == 1.0
    assert row["longest_match_tokens"] == row["example_tokens"]
    hit = json.loads(row["hits"])[0]
    assert hit["doc_id"] == "doc3"
    assert normalize_text(docs[3][hit["start"]:hit["end"]]) == normalize_text(f"{q} {a}")
    assert hit["start"] == at
    # the other items were not planted
    assert res.tables["report"].schema == REPORT_SCHEMA
    assert sum(res.tables["report"]["contaminated"].to_pylist()) == 1


def test_reformatted_copy_is_found():
    q, a = ITEMS[1]
    # upper case, doubled spaces, punctuation changed, full-width digits-free letters in one word
    reformatted = re.sub(r" ", "  ", q.upper()).replace(";", " --") + " ... ANSWER:" + a.upper()
    reformatted = reformatted.replace("BALL", "ＢＡＬＬ")
    docs, _ = _planted(reformatted)
    row = _row(run(_corpus(docs), _bench(), Params()).tables["report"], "mmlu_like/1")
    assert row["contaminated"]
    assert row["longest_match_tokens"] >= 13


def test_decoy_sharing_topic_words_is_not_flagged():
    decoy = ("Mitochondria are organelles; eukaryotic cells rely on them. During respiration, aerobic "
             "or not, the cell makes ATP, and the function of each part is described below.")
    docs, _ = _planted(decoy)
    res = run(_corpus(docs), _bench(), Params())
    assert not any(res.tables["report"]["contaminated"].to_pylist())
    assert res.removed.num_rows == 0
    assert res.tables["data"].equals(_corpus(docs))


def test_mask_replaces_only_the_matched_span():
    q, a = ITEMS[2]
    docs, at = _planted(f"{q}? {a}.")
    res = run(_corpus(docs), _bench(), Params(action="mask", mask_text="<X>"))
    out = res.tables["data"]
    assert out.num_rows == len(docs)
    text = out["text"][3].as_py()
    assert "<X>" in text and "judiciary" not in text.lower()
    assert text.startswith(docs[3][:at]) and text.endswith(docs[3][at + len(q) + len(a) + 4:])
    assert res.removed.schema == LEDGER_SCHEMA
    led = res.removed.to_pylist()
    assert [(r["id"], r["action"], r["reason"]) for r in led] == [("doc3", "mask", "benchmark_contamination")]
    ev = json.loads(led[0]["evidence"])
    assert ev["benchmark_ids"] == ["mmlu_like/2"] and ev["longest_match"] >= 13 and ev["spans"][0][0] == at


def test_drop_removes_the_document_and_records_it():
    q, a = ITEMS[0]
    docs, _ = _planted(f"{q} {a}")
    res = run(_corpus(docs), _bench(), Params(action="drop"))
    assert res.tables["data"].num_rows == len(docs) - 1
    assert "doc3" not in res.tables["data"]["id"].to_pylist()
    assert res.removed["action"].to_pylist() == ["drop"]
    assert res.metrics["rows_out"] == len(docs) - 1


def test_flag_changes_nothing_but_records_the_document():
    q, a = ITEMS[0]
    docs, _ = _planted(f"{q} {a}")
    res = run(_corpus(docs), _bench(), Params(action="flag"))
    assert res.tables["data"].equals(_corpus(docs))
    assert res.removed["action"].to_pylist() == ["flag"]


def test_partial_copy_fires_on_longest_span():
    q, _ = ITEMS[1]
    half = " ".join(q.split()[: len(q.split()) // 2 + 1])
    docs, _ = _planted(half)
    row = _row(run(_corpus(docs), _bench(), Params()).tables["report"], "mmlu_like/1")
    assert row["contaminated"] and row["rule"].startswith("longest_match")
    assert 0.4 < row["coverage"] < 0.7


def test_threshold_is_per_benchmark():
    halves = [" ".join(q.split()[:14]) for q, _ in ITEMS[:2]]  # a 14-token span of each
    docs, _ = _planted(" and ".join(halves))
    bench = pa.concat_tables([_bench(ITEMS[:1], "strict"), _bench(ITEMS[1:2], "lenient", ids=["lenient/0"])])
    params = Params(per_benchmark={"lenient": {"min_longest_match": 20, "min_coverage": 0.9}})
    rep = run(_corpus(docs), bench, params).tables["report"]
    assert _row(rep, "strict/0")["contaminated"]
    lenient = _row(rep, "lenient/0")
    assert not lenient["contaminated"] and lenient["rule"] is None
    assert lenient["longest_match_tokens"] == 14  # the evidence is still reported


def test_ngram_n_can_be_set_per_benchmark():
    pieces = [" ".join(q.split()[3:9]) for q, _ in ITEMS[1:3]]  # six words of each question
    docs, _ = _planted(" and ".join(pieces))
    bench = pa.concat_tables([_bench(ITEMS[2:3], "default_n"), _bench(ITEMS[1:2], "short_n")])
    params = Params(fields=("question",), per_benchmark={"short_n": {"ngram_n": 5}})
    rep = run(_corpus(docs), bench, params).tables["report"]
    assert _row(rep, "default_n/0")["matched_ngrams"] == 0
    assert _row(rep, "short_n/0")["matched_ngrams"] == 2 and _row(rep, "short_n/0")["longest_match_tokens"] == 6


def test_short_example_matches_whole_and_fires_coverage():
    items = [("What is the capital city of Australia", "Canberra")]  # question: 7 tokens < n = 8
    docs, _ = _planted("Quiz night: what is the capital city of Australia? Canberra!")
    params = Params(fields=("question",))
    row = _row(run(_corpus(docs), _bench(items), params).tables["report"], "mmlu_like/0")
    assert row["checked"] and row["contaminated"] and row["rule"] == "coverage"
    assert row["longest_match_tokens"] == 7


# Short items (MMLU / QuaRTz-like, 11 and 10 tokens): half of one holds no 8-gram.
SHORT_ITEMS = [
    ("Which planet in our solar system has the most moons", "Saturn"),
    ("People have _____ water in forests than in deserts", "more"),
    ("People have _____ water in deserts than in forests", "less"),
]


def test_half_copy_of_a_short_item_fires_short_span_and_is_masked():
    docs, at = _planted("Trivia: which planet in our solar system")  # 6 of its 11 tokens
    res = run(_corpus(docs), _bench(SHORT_ITEMS[:1]), Params(mask_text="<X>"))
    row = res.tables["report"].to_pylist()[0]
    assert row["contaminated"] and row["rule"] == "short_span"
    assert row["longest_match_tokens"] == 6 and row["n_docs"] == 1
    hit = json.loads(row["hits"])[0]
    assert hit["doc_id"] == "doc3" and docs[3][hit["start"]:hit["end"]] == "which planet in our solar system"
    assert "solar system" not in res.tables["data"]["text"][3].as_py()
    assert res.removed["id"].to_pylist() == ["doc3"]
    # the n-gram rules alone miss it: no 8-gram of the item is in the document
    for params in (Params(short_ngram_n=0), Params(per_benchmark={"mmlu_like": {"short_ngram_n": 0}})):
        off = run(_corpus(docs), _bench(SHORT_ITEMS[:1]), params)
        assert not off.tables["report"]["contaminated"][0].as_py() and off.removed.num_rows == 0


def test_short_span_needs_a_phrase_rare_in_the_corpus():
    half = "which planet in our solar system"
    docs = _license_docs()
    for d in range(4):  # in 4 documents: more than short_max_docs = 3, so a common phrase
        docs[d] = docs[d] + "\n" + half
    for batch_mb in (2.0, 0.001):  # document frequency summed over batches (one document per batch)
        rep = run(_corpus(docs), _bench(SHORT_ITEMS[:1]), Params(batch_mb=batch_mb)).tables["report"].to_pylist()[0]
        assert not rep["contaminated"] and rep["rule"] is None
    rep = run(_corpus(docs), _bench(SHORT_ITEMS[:1]), Params(short_max_docs=4)).tables["report"].to_pylist()[0]
    assert rep["contaminated"] and rep["rule"] == "short_span" and rep["n_docs"] == 4


def test_short_span_ignores_text_shared_by_two_items():
    bench = _bench(SHORT_ITEMS[1:])
    # the first half of both items: it cannot say which one was copied
    docs, _ = _planted("Survey: people have _____ water in")
    rep = run(_corpus(docs), bench, Params()).tables["report"]
    assert not any(rep["contaminated"].to_pylist())
    # a half with a phrase of the first item only ("in forests than in")
    docs, _ = _planted("Survey: water in forests than in deserts")
    rep = run(_corpus(docs), bench, Params()).tables["report"]
    assert rep["contaminated"].to_pylist() == [True, False]
    assert rep["rule"].to_pylist() == ["short_span", None]


def test_short_span_needs_two_words_that_are_not_function_words():
    target = ("Who was the mother of the Greek god Zeus", "Rhea")  # 10 tokens: matched on 4-grams
    places = ["Rome", "Athens", "Sparta", "Troy", "Carthage", "Thebes", "Corinth", "Delphi", "Memphis",
              "Babylon", "Nineveh", "Ur", "Tyre", "Sidon", "Knossos", "Mycenae", "Argos", "Pylos",
              "Ithaca", "Syracuse", "Miletus", "Ephesus", "Smyrna", "Rhodes"]
    fillers = [(f"Which of the following was the first king of {p} in the legends", "none") for p in places]
    docs, _ = _planted("And Adam called his wife Eve, because she was the mother of all living.")
    # "was the mother of": in one document and in no other item, but "was", "the", "of" are in
    # most items of this benchmark; "mother" alone is one content word
    rep = run(_corpus(docs), _bench([target] + fillers), Params()).tables["report"].to_pylist()
    assert not any(r["contaminated"] for r in rep)
    bench = _bench([target] + fillers)
    rep = run(_corpus(docs), bench, Params(short_min_content=1)).tables["report"].to_pylist()[0]
    assert rep["contaminated"] and rep["rule"] == "short_span"
    # a benchmark too small to tell function words apart counts every word
    rep = run(_corpus(docs), _bench([target]), Params()).tables["report"].to_pylist()[0]
    assert rep["contaminated"] and rep["rule"] == "short_span"


def test_too_short_example_is_reported_unchecked_not_clean():
    bench = _bench([("Define entropy", "x")])
    bench = bench.set_column(5, "target", pa.array([None], pa.string()))  # no answer text
    docs = _license_docs() + ["Physics quiz: define entropy."]
    res = run(_corpus(docs), bench, Params())
    row = res.tables["report"].to_pylist()[0]
    assert row["checked"] is False and row["contaminated"] is False and row["example_tokens"] == 2
    assert res.metrics["unchecked_examples"] == 1
    assert res.metrics["per_benchmark"]["mmlu_like"]["unchecked"] == 1


def test_template_ngrams_shared_by_many_examples_are_not_evidence():
    template = "Which of the following statements about this topic is most accurate"
    topics = ["volcanoes", "glaciers", "tides", "comets", "forests", "deserts", "rivers", "storms",
              "islands", "caves", "reefs", "dunes"]
    items = [(f"{template} when considering {t} and their formation over long periods", "A")
             for t in topics]
    docs, _ = _planted(template + " in general?")
    on = run(_corpus(docs), _bench(items), Params(fields=("question",))).tables["report"]
    assert not any(on["contaminated"].to_pylist())
    assert set(on["matched_ngrams"].to_pylist()) == {0}
    # shown apart: every item has 19 template tokens (the sentence + "when considering", and the
    # 6-token tail all twelve share), found in one document
    assert set(on["template_tokens"].to_pylist()) == {19} and set(on["template_docs"].to_pylist()) == {1}
    off = run(_corpus(docs), _bench(items), Params(fields=("question",), template_examples=0)).tables["report"]
    assert set(off["template_docs"].to_pylist()) == {0}
    # without templates the shared text is still no item's own: no unique n-gram of any is there
    assert not any(off["contaminated"].to_pylist())


def test_template_sentence_with_a_chance_word_is_no_evidence():
    """A question sentence six items share, followed by the next word of one of them: the n-gram
    across the join is that item's alone, but one own token is not enough (min_own_tokens)."""
    template = "Which of the following statements about this topic is most accurate"
    topics = ["volcanoes erupt near plate boundaries", "glaciers carve wide valleys slowly",
              "tides follow the moon closely", "comets shed dust near the sun", "forests store carbon in wood",
              "deserts gain heat fast by day"]
    items = [(f"{template} {t}", "A") for t in topics]
    docs, _ = _planted(f"{template} volcanoes were mentioned.")
    rep = run(_corpus(docs), _bench(items), Params(fields=("question",))).tables["report"]
    first = rep.to_pylist()[0]
    assert first["coverage"] >= 0.4 and first["matched_ngrams"] > 0  # the join n-grams did match
    assert not any(rep["contaminated"].to_pylist())
    docs, _ = _planted(items[0][0])  # a real copy of the item is found
    rep = run(_corpus(docs), _bench(items), Params(fields=("question",))).tables["report"]
    assert rep["contaminated"].to_pylist() == [True] + [False] * 5


def _light_paraphrase(text: str) -> str:
    """One edit every 5-7 words: a synonym, a dropped function word, a swapped pair."""
    words = text.split()
    for i, edit in zip((2, 8, 14, 20, 26), ("swap", "drop", "swap", "synonym", "swap")):
        if i + 1 >= len(words):
            break
        if edit == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        elif edit == "drop":
            words[i] = ""
        else:
            words[i] = {"the": "a", "of": "for"}.get(words[i].lower(), words[i] + "s")
    return " ".join(w for w in words if w)


def test_light_paraphrase_is_found_by_rule_fuzzy_and_masked():
    q, a = ITEMS[1]
    edited = _light_paraphrase(f"{q} {a}")
    docs, at = _planted(edited)
    res = run(_corpus(docs), _bench(), Params())
    row = _row(res.tables["report"], "mmlu_like/1")
    assert row["contaminated"] and "fuzzy" in row["rule"].split("+")
    hit = json.loads(row["hits"])[0]
    assert hit["doc_id"] == "doc3" and at <= hit["start"] and hit["end"] <= at + len(edited)
    assert edited[:20] not in res.tables["data"]["text"][3].as_py()  # the mask covers the edited copy
    off = run(_corpus(docs), _bench(), Params(fuzzy_ngram_n=0)).tables["report"]
    assert not _row(off, "mmlu_like/1")["contaminated"]
    # per benchmark: off for this one, or a bar its copy does not reach
    for over in ({"fuzzy_ngram_n": 0}, {"fuzzy_min_aligned": 0.99}):
        rep = run(_corpus(docs), _bench(), Params(per_benchmark={"mmlu_like": over})).tables["report"]
        assert not _row(rep, "mmlu_like/1")["contaminated"]
    with pytest.raises(WinnowError, match="fuzzy_min_aligned must be in"):
        Params(per_benchmark={"mmlu_like": {"fuzzy_min_aligned": 0}})


def test_fuzzy_credits_the_item_a_copy_aligns_with_best():
    """Two items that differ in one word both align with a lightly edited copy of either; only the
    one copied is credited."""
    q, a = ITEMS[1]
    twin = q.replace("twenty metres", "thirty metres")
    items = [(q, a), (twin, a), ITEMS[0]]
    docs, _ = _planted(_light_paraphrase(f"{q} {a}"))
    rep = run(_corpus(docs), _bench(items), Params()).tables["report"]
    assert rep["contaminated"].to_pylist() == [True, False, False]


def test_optional_context_column_can_be_checked():
    passage = ("The committee met on a rainy Tuesday to discuss the budget for the new library wing, "
               "and after a long debate it approved the plan")
    bench = _bench(ITEMS[:1]).append_column("context", pa.array([passage]))
    docs, _ = _planted(passage)
    plain = run(_corpus(docs), bench, Params()).tables["report"].to_pylist()[0]
    assert not plain["contaminated"]
    with_ctx = run(_corpus(docs), bench, Params(fields=("context", "question"))).tables["report"].to_pylist()[0]
    assert with_ctx["contaminated"] and with_ctx["longest_match_tokens"] >= 20


def test_field_choice_changes_what_is_checked():
    q, a = ITEMS[0]
    docs, _ = _planted(f"Unrelated words first. {a}. " * 3)
    rep_q = run(_corpus(docs), _bench(), Params(fields=("question",))).tables["report"]
    assert _row(rep_q, "mmlu_like/0")["matched_ngrams"] == 0
    rep_qa = run(_corpus(docs), _bench(), Params(fields=("question", "answer"))).tables["report"]
    assert _row(rep_qa, "mmlu_like/0")["example_tokens"] == len(normalize_text(f"{q} {a}").split())


def test_unicode_variants_match_and_offsets_are_in_characters():
    items = [("Le café de la gare ouvre à six heures du matin et ferme à minuit chaque jour de la semaine",
              "oui")]
    decomposed = "Préambule — « ﬁn ». " + "LE CAFE\u0301 DE LA GARE OUVRE A\u0300 SIX HEURES DU MATIN ET FERME " \
        "A\u0300 MINUIT CHAQUE JOUR DE LA SEMAINE"
    docs, _ = _planted(decomposed)
    res = run(_corpus(docs), _bench(items), Params())
    row = res.tables["report"].to_pylist()[0]
    assert row["contaminated"]
    hit = json.loads(row["hits"])[0]
    assert docs[3][hit["start"]:hit["end"]].startswith("LE CAFE\u0301")
    assert docs[3][hit["start"]:hit["end"]].endswith("SEMAINE")


def test_tokens_agree_with_normalize_text_and_offsets_line_up():
    folder = Folder()
    texts = _license_docs() + [
        "Ｆｕｌｌ-width ＡＢＣ, ligature ﬁsh, e\u0301te\u0301, ΟΔΟΣ, Straße, İstanbul, ½ cup",
        "plain ascii only, with_underscores and CAPS",
        "“Curly” quotes — dashes… and non\u00a0breaking spaces",
    ]
    bounds, toks = folder.tokens(pa.array(texts))
    toks = toks.to_pylist()
    for d, t in enumerate(texts):
        want = normalize_text(t).split()
        assert toks[bounds[d]:bounds[d + 1]] == want, d
        start, end = folder.offsets(t)
        assert len(start) == len(want)
        for w, a, b in zip(want, start.tolist(), end.tolist()):
            assert w in normalize_text(t[a:b]).split()


def test_tokens_agree_with_normalize_text_on_random_unicode():
    rng = np.random.default_rng(7)
    cps = [c for c in range(0x20, 0x30000) if not 0xD800 <= c < 0xE000]
    picks = rng.choice(cps, size=(3000, 3))
    seps = rng.choice([" ", ", ", "-", "\n", "\u3000", "\u00a0"], size=3000)
    texts = ["".join(chr(c) for c in w) + str(s) for w, s in zip(picks.tolist(), seps.tolist())]
    docs = ["".join(texts[i:i + 30]) for i in range(0, len(texts), 30)]
    bounds, toks = Folder().tokens(pa.array(docs))
    toks = toks.to_pylist()
    for d, t in enumerate(docs):
        assert toks[bounds[d]:bounds[d + 1]] == normalize_text(t).split(), d
        assert len(Folder().offsets(t)[0]) == bounds[d + 1] - bounds[d]


def test_match_does_not_cross_document_boundaries():
    q, a = ITEMS[0]
    words = q.split()
    docs = _license_docs()
    docs[1] = docs[1] + "\n" + " ".join(words[:7])
    docs[2] = " ".join(words[7:]) + " " + a + "\n" + docs[2]
    row = _row(run(_corpus(docs), _bench(), Params()).tables["report"], "mmlu_like/0")
    assert row["longest_match_tokens"] == row["example_tokens"] - 7  # the second part alone
    assert row["n_docs"] == 1  # only the second half (>= 8 tokens) forms n-grams


def test_threads_give_the_same_result():
    q, a = ITEMS[0]
    docs, _ = _planted(f"{q} {a}")
    one = run(_corpus(docs), _bench(), Params(batch_mb=0.02, workers=1))
    two = run(_corpus(docs), _bench(), Params(batch_mb=0.02, workers=2))
    assert one.tables["report"].equals(two.tables["report"])
    assert one.tables["data"].equals(two.tables["data"])


def test_benchmark_larger_than_corpus_still_reports_every_example():
    q, a = ITEMS[0]
    corpus = _corpus([f"Notes. {q} {a}. End."])
    res = run(corpus, _bench(ITEMS * 1 + [(q + " variant " + str(i), a) for i in range(5)],
                             ids=[f"e{i}" for i in range(8)]), Params())
    assert res.tables["report"].num_rows == 8
    assert res.metrics["benchmark_larger_than_corpus"] is True
    assert res.tables["report"]["contaminated"].to_pylist()[0] is True


# -- bad input ---------------------------------------------------------------------------------------


def test_corpus_without_text_column_is_an_error():
    corpus = _corpus(_license_docs()).rename_columns(["id", "body", "domain"])
    with pytest.raises(WinnowError, match="missing column 'text'"):
        run(corpus, _bench(), Params())


def test_corpus_with_empty_text_names_the_row():
    docs = _license_docs()
    docs[2] = ""
    with pytest.raises(WinnowError, match="doc2"):
        run(_corpus(docs), _bench(), Params())


def test_benchmark_with_unknown_schema_is_an_error():
    bench = pa.table({"id": ["x"], "prompt": ["What is two plus two?"], "label": ["4"]})
    with pytest.raises(WinnowError, match="unknown schema.*benchmark, question"):
        run(_corpus(_license_docs()), bench, Params())


def test_benchmark_with_empty_question_names_the_example():
    bench = _bench()
    bench = bench.set_column(2, "question", pa.array([ITEMS[0][0], "   ", ITEMS[2][0]]))
    with pytest.raises(WinnowError, match="mmlu_like/1.*question"):
        run(_corpus(_license_docs()), bench, Params())


def test_benchmark_missing_a_checked_field_is_an_error():
    bench = _bench().drop_columns(["target"])
    with pytest.raises(WinnowError, match="field 'target'.*missing"):
        run(_corpus(_license_docs()), bench, Params())
    # not checked -> not needed
    assert run(_corpus(_license_docs()), bench, Params(fields=("question",))).tables["report"].num_rows == 3


def test_duplicate_benchmark_ids_are_an_error():
    with pytest.raises(WinnowError, match="duplicate id 'same'"):
        run(_corpus(_license_docs()), _bench(ids=["same", "other", "same"]), Params())


def test_unknown_params_are_rejected_by_name():
    with pytest.raises(WinnowError, match="ngram"):
        params_from_dict(Params, {"ngram": 13}, "contamination")
    with pytest.raises(WinnowError, match="per_benchmark.mmlu: unknown key"):
        Params(per_benchmark={"mmlu": {"threshold": 3}})
    with pytest.raises(WinnowError, match="action"):
        Params(action="delete")
    with pytest.raises(WinnowError, match="per_benchmark.mmlu: ngram_n"):
        Params(per_benchmark={"mmlu": {"ngram_n": 0}})
    with pytest.raises(WinnowError, match="short_ngram_n"):
        Params(short_ngram_n=-1)
    with pytest.raises(WinnowError, match="per_benchmark.mmlu: short_max_docs"):
        Params(per_benchmark={"mmlu": {"short_max_docs": 0}})
    with pytest.raises(WinnowError, match="short_min_content"):
        Params(short_min_content=-1)


@pytest.mark.slow
def test_planted_benchmark_items_meet_the_recall_and_precision_targets(tmp_path):
    import importlib.util

    if importlib.util.find_spec("evals") is None:
        pytest.skip("needs the evals wheel (pip install --no-deps evals==3.0.1.post1)")
    from benchmarks.bench_contamination import (
        load_corpus, load_items, native_round_trip, plant, score, winnow_method,
    )

    bench, shape_of = native_round_trip(load_items(600), tmp_path)
    corpus, _ = load_corpus(8.0)  # 280 documents of >= 400 characters to plant in
    planted, truth, decoys = plant(corpus, bench, 40, seed=1)
    method = winnow_method(Params())
    natural = method(corpus, bench)["flagged"]
    s = score(method(planted, bench), natural, truth, decoys, shape_of)
    assert s["verbatim"]["recall"] == 1.0
    assert s["reformatted"]["recall"] >= 0.95
    assert s["partial_16plus"]["recall"] >= 0.95
    assert s["light_paraphrase"]["recall"] >= 0.8
    assert min(s["precision"], s["pair_precision"], s["doc_precision"]) >= 0.99
    assert s["decoy_docs_listed"] == {"decoy": 0, "template_decoy": 0}


def test_a_prebuilt_index_gives_the_same_result_and_is_checked():
    """The benchmark index as a table (the contamination_index entry) changes nothing in the
    result, serves other thresholds and actions, and is refused for other examples or settings."""
    from dataclasses import replace

    from tasks.contamination import build_index, index_params

    q, a = ITEMS[0]
    docs, _ = _planted(f"{q}? {a}.")
    corpus, bench = _corpus(docs), _bench()
    for params in (Params(), Params(action="drop", min_longest_match=20, min_coverage=0.4)):
        index = build_index(bench, index_params(params)).tables["data"]
        assert index.num_rows == 1
        direct, via = run(corpus, bench, params), run(corpus, bench, params, index=index)
        for name in ("data", "report"):
            assert via.tables[name].equals(direct.tables[name])
        assert via.removed.equals(direct.removed)
    assert index_params(Params(action="drop", max_hits=3)) == index_params(Params())
    assert index_params(Params(ngram_n=13)) != index_params(Params())
    index = build_index(bench, Params()).tables["data"]
    with pytest.raises(ValueError, match="built for other benchmark examples or settings"):
        run(corpus, _bench(ITEMS[:2]), Params(), index=index)
    with pytest.raises(ValueError, match="built for other benchmark examples or settings"):
        run(corpus, bench, replace(Params(), ngram_n=13), index=index)
