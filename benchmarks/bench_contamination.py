"""Benchmark of the contamination stage: real benchmark items planted into real documents.

    python -m benchmarks.bench_contamination --seed 0    # ~20 MB corpus, ~5,800 items, e2e timing
    python -m benchmarks.bench_contamination --quick     # ~8 MB corpus, 800 items

Data (nothing downloaded):

* Corpus: ``data/sample/corpus.parquet`` when it exists, else (and to top it up to ``--corpus-mb``)
  Wikipedia and OpenWebText passages from the ``evals`` wheel (first passage of each record), then
  Python 3.11 reST docs and Linux kernel docs from Debian packages.
* Benchmark items: MMLU (choices in the prompt), LogiQA and QuaRTz (lm-eval-style chat prompts),
  read with ``winnow.benchmark_formats``, and SocialIQA and MedMCQA items, all from the ``evals``
  wheel. Items sharing an 8-gram with fewer than ``template_examples - 1`` others are dropped (truth
  must be unambiguous); text 5+ items share stays. Each item is then written in one of the native
  shapes of :mod:`benchmarks.native_shapes` (Parquet, JSONL or a ``datasets`` folder) and read
  back through winnow's reader, so every shape is exercised; the checked text is question +
  correct answer (the stage's default ``fields``).

Planting (seeded): for each kind, ``--per-kind`` items are inserted, each into its own randomly
chosen document at a whitespace position:

* ``verbatim``: question and answer as they are;
* ``partial``: a contiguous window of half the item's words;
* ``reformatted``: upper/lower/title case, extra spaces and line breaks, punctuation dropped or
  changed, curly quotes;
* ``light_paraphrase``: one edit every 5-7 words (a one-word synonym, else a dropped function
  word, else two words swapped);
* ``paraphrased``: about one word in eight replaced by a near-synonym or dropped;
* ``decoy``: a sentence built from the item's topic words with filler around them; it shares no
  5-gram with its item;
* ``template_decoy`` (as many as ``--per-kind``): a question sentence that 5+ items of one
  benchmark share word for word, planted alone. Neither decoy holds any item.

Before planting, the same benchmark is checked against the clean corpus; items found there
("natural" overlap) are left out of the scores for that method and counted.

Scores per method: recall per planted kind and, for verbatim plants, per native shape; precision
per item (flagged items that were planted / flagged), per (item, document) pair (listed pairs whose
document is the planted one) and per document (listed documents holding a plant of an item that
lists them); false-positive pairs by cause (template decoy, topic decoy, another item's plant,
clean text); scan MB/s. Then ``winnow contamination`` end to end (fresh process and store) on
``--e2e-mb`` of corpus: wall-clock and CPU MB/s.

Peer: lm-eval-harness 0.4.13 ``lm_eval/decontamination`` (``pip install --no-deps lm-eval==0.4.13``):
its evaluation-side rule (an item is contaminated if any of its 13-grams, after
``Janitor.normalize_string``, is in the training set's 13-grams, as in ``decontaminate.py``), run
over the same corpus in the same process.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import json
import os
import platform
import re
import string
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.native_shapes import SHAPES, to_native
from tasks.common import BENCHMARK_SCHEMA
from tasks.contamination import Params, run
from tasks.ngram_index import Folder
from winnow import io as wio
from winnow.benchmark_formats import to_canonical

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
KINDS = ("verbatim", "partial", "reformatted", "light_paraphrase", "paraphrased")
DECOYS = ("decoy", "template_decoy")


# -- data ------------------------------------------------------------------------------------------


def _evals_dir() -> Path:
    spec = importlib.util.find_spec("evals")
    if spec is None:
        raise SystemExit("benchmark items need: pip install --no-deps evals==3.0.1.post1")
    return Path(spec.origin).parent / "registry" / "data"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def load_items(limit: int | None, template_examples: int = 5) -> pa.Table:
    """Real multiple-choice items from the evals wheel, read through winnow's format readers where
    their shape is a known one (MMLU prompts, LogiQA and QuaRTz lm-eval chat prompts)."""
    d = _evals_dir()
    rows: list[dict] = []

    def add(bench: str, i: int, question: str, choices: list[str], answer: int) -> None:
        question = question.strip()
        if question and 0 <= answer < len(choices):
            rows.append({"id": f"{bench}/{i}", "benchmark": bench, "question": question,
                         "choices": choices, "answer": answer, "target": choices[answer]})

    for bench, path in (("mmlu", "sandbagging/samples-all-large.jsonl"), ("logiqa", "logiqa/logiqa.jsonl"),
                        ("quartz", "quartz/samples.jsonl")):
        native = pa.Table.from_pylist(_jsonl(d / path))
        for i, r in enumerate(to_canonical(native, path, bench).to_pylist()):
            add(bench, i, r["question"], r["choices"], r["answer"])
    for i, r in enumerate(_jsonl(d / "theory_of_mind" / "socialiqa" / "test.jsonl")):
        m = re.match(r"(.*) A: (.*); B: (.*); C: (.*)\.$", r["input"][-1]["content"], re.S)
        if m:
            add("socialiqa", i, m[1], [m[2], m[3], m[4]], "ABC".find(r["ideal"].strip()[:1]))
    for i, r in enumerate(_jsonl(d / "medmcqa" / "samples.jsonl")):
        body = r["input"][-1]["content"].split("\n\n", 1)[-1]
        parts = re.split(r"\n[a-d]\) ", "\n" + body.split("\n\n")[-1])
        q = body.split("\n\n")[0]
        choices = [p.strip() for p in parts[1:]]
        add("medmcqa", i, q, choices, "abcd".find(r["ideal"].strip()[:1]))
    table = dedupe_items(pa.Table.from_pylist(rows, schema=BENCHMARK_SCHEMA), template_examples=template_examples)
    if limit and table.num_rows > limit:
        rng = np.random.default_rng(11)
        table = table.take(np.sort(rng.choice(table.num_rows, limit, replace=False)))
    return table


def dedupe_items(table: pa.Table, n: int = 8, template_examples: int = 5) -> pa.Table:
    """Keep the first of any items that share an n-gram of their checked text held by fewer than
    ``template_examples`` items.

    QuaRTz pairs questions that differ by a word and SocialIQA reuses contexts; without this, an
    unplanted item that shares most of its text with a planted one would count as a false positive.
    Text shared by many items (LogiQA's "If the above statement is true, which of the following
    must be true?") is template text, which the stage itself must not take as evidence: those items
    stay, so the template decoys test that.
    """
    while True:  # until no group of sharers shrinks below template_examples
        kept = _dedupe_once(table, n, template_examples)
        if kept.num_rows == table.num_rows:
            return kept
        table = kept


def _dedupe_once(table: pa.Table, n: int, template_examples: int) -> pa.Table:
    bounds, toks = Folder().tokens(pa.array([item_text(r) for r in table.to_pylist()]))
    toks = toks.to_pylist()
    grams_of = []
    holders: dict[tuple[str, ...], int] = {}
    for i in range(table.num_rows):
        t = toks[bounds[i]:bounds[i + 1]]
        g = {tuple(t[j:j + n]) for j in range(max(1, len(t) - n + 1))}
        grams_of.append(g)
        for x in g:
            holders[x] = holders.get(x, 0) + 1
    seen: set[tuple[str, ...]] = set()
    keep = []
    for i, g in enumerate(grams_of):
        own = {x for x in g if holders[x] < template_examples}
        if not own & seen:
            keep.append(i)
        seen |= own
    return table.take(keep)


def native_round_trip(bench: pa.Table, folder: Path) -> tuple[pa.Table, dict[str, str]]:
    """Write the items round robin in every native shape (Parquet, JSON Lines or a ``datasets``
    folder), read them back with winnow's reader, and return the items as read and each item's
    shape. Items whose searchable text changes on the way are reported and left out."""
    import datasets

    rows = bench.to_pylist()
    tables, shape_of = [], {}
    for k, shape in enumerate(SHAPES):
        part = [r for i, r in enumerate(rows) if i % len(SHAPES) == k]
        native = to_native(shape, part)
        path = folder / f"{shape}.{['parquet', 'jsonl', 'ds'][k % 3]}"
        if k % 3 == 0:
            pq.write_table(native, path)
        elif k % 3 == 1:
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in native.to_pylist())
        else:
            datasets.Dataset(native).save_to_disk(str(path))
        got = wio.canonical_benchmarks(wio.read_table(path), str(path), "x")
        for r_in, r_out in zip(part, got.to_pylist()):
            r_out["benchmark"] = r_in["benchmark"]
            if r_out["format"] != shape or item_text(r_out).split() != item_text(r_in).split():
                print(f"  {shape}: {r_in['id']} changed on the way, left out")
                continue
            tables.append(r_out)
            shape_of[r_in["id"]] = shape
    return pa.Table.from_pylist(tables).select(BENCHMARK_SCHEMA.names).cast(BENCHMARK_SCHEMA), shape_of


def template_sentences(bench: pa.Table, min_items: int = 5, min_words: int = 6) -> list[tuple[str, str]]:
    """(benchmark, sentence) for question sentences that ``min_items`` or more items of one
    benchmark share word for word."""
    holders: dict[tuple[str, str], set[str]] = {}
    for r in bench.to_pylist():
        for sent in re.split(r"(?<=[.?!])\s+|\n+|(?<=:)\s*(?=[A-Z])", r["question"]):
            sent = " ".join(sent.split())
            if len(sent.split()) >= min_words:
                holders.setdefault((r["benchmark"], sent), set()).add(r["id"])
    return sorted(k for k, v in holders.items() if len(v) >= min_items)


def load_corpus(target_mb: float) -> tuple[pa.Table, str]:
    """About ``target_mb`` of real documents (id, text)."""
    texts: list[str] = []
    sources: list[str] = []
    sample = REPO / "data" / "sample" / "corpus.parquet"
    if sample.exists():
        t = pq.read_table(sample, columns=["text"])
        texts += [x for x in t["text"].to_pylist() if x and x.strip()]
        sources.append("data/sample/corpus.parquet")
    d = _evals_dir() / "schelling_point"
    extra = []
    for name in ("wikipedia_5.jsonl", "owt_5.jsonl"):
        extra += [r["0"] for r in _jsonl(d / name) if r.get("0")]
    extra += [open(p, encoding="utf-8").read()
              for p in sorted(glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True))]
    extra += [gzip.open(p, "rt", encoding="utf-8", errors="replace").read()
              for p in sorted(glob.glob("/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", recursive=True))]
    size = sum(len(x.encode()) for x in texts)
    if size < target_mb * 1e6:
        sources.append("evals wikipedia/owt passages, python3.11-doc, linux-doc-6.1")
    for x in extra:
        if size >= target_mb * 1e6:
            break
        if x.strip():
            texts.append(x)
            size += len(x.encode())
    # keep whole documents; trim only by dropping from the end
    while texts and size - len(texts[-1].encode()) >= target_mb * 1e6:
        size -= len(texts.pop().encode())
    return pa.table({"id": [f"doc{i}" for i in range(len(texts))], "text": texts}), ", ".join(sources)


# -- perturbations ---------------------------------------------------------------------------------

_SWAPS = {
    "which": "what", "what": "which", "the": "a", "a": "the", "is": "was", "was": "is", "are": "were",
    "following": "below", "most": "mostly", "best": "most", "likely": "probably", "would": "will",
    "will": "would", "can": "could", "of": "for", "in": "within", "to": "towards", "and": "as well as",
    "many": "several", "large": "big", "small": "little", "person": "individual", "people": "persons",
    "after": "once", "before": "prior to", "because": "since", "about": "regarding", "want": "wish",
    "need": "have", "feel": "be", "how": "in what way", "why": "for what reason",
}
_STOP = set("the a an of to in on for and or but is are was were be been with by as at from that this these "
            "those which what who whom whose when where why how it its their his her they them he she we "
            "you your our not no do does did have has had will would can could should may might must "
            "following most best likely".split())


def item_text(row: dict) -> str:
    return f"{row['question']} {row['target']}"


def plant_text(kind: str, text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if kind == "verbatim":
        return text
    if kind == "partial":
        k = max(1, round(len(words) / 2))
        s = int(rng.integers(0, len(words) - k + 1))
        return " ".join(words[s:s + k])
    if kind == "reformatted":
        t = [str.upper, str.lower, str.title][int(rng.integers(3))](text)
        t = t.replace("'", "\u2019").replace('"', "\u201c")
        if rng.random() < 0.5:
            t = t.translate(str.maketrans("", "", ",.;:!?()"))
        else:
            t = re.sub(r"([,.;:?])", r" \1 ", t)
        t = re.sub(r" ", lambda _: [" ", "  ", "\n", " \t "][int(rng.integers(4))], t)
        return t
    if kind == "paraphrased":
        out = []
        for i, w in enumerate(words):
            lw = w.lower()
            if lw in _SWAPS and rng.random() < 0.35:
                out.append(_SWAPS[lw])
            elif lw in ("the", "a", "an") and rng.random() < 0.3:
                continue
            else:
                out.append(w)
        return " ".join(out)
    if kind == "light_paraphrase":
        return light_paraphrase(words, rng)
    raise ValueError(kind)


# one-word near-synonyms for light paraphrases (single words, so an edit changes one token)
_SYNONYMS = {
    "which": "what", "what": "which", "is": "was", "was": "is", "are": "were", "were": "are",
    "most": "mostly", "best": "most", "likely": "probably", "would": "will", "will": "would",
    "can": "could", "could": "can", "many": "several", "large": "big", "big": "large", "small": "little",
    "little": "small", "person": "individual", "people": "persons", "after": "once", "because": "since",
    "about": "regarding", "want": "wish", "wants": "wishes", "need": "require", "feel": "be",
    "felt": "was", "went": "headed", "got": "received", "make": "create", "made": "created",
    "said": "stated", "says": "states", "help": "assist", "helped": "assisted", "start": "begin",
    "started": "began", "end": "finish", "show": "display", "shows": "displays", "use": "employ",
    "used": "employed", "get": "obtain", "find": "discover", "found": "discovered", "give": "provide",
    "gave": "provided", "quickly": "rapidly", "often": "frequently", "usually": "typically",
    "increase": "rise", "increases": "rises", "decrease": "drop", "decreases": "drops",
    "more": "greater", "less": "fewer", "greater": "larger", "following": "subsequent",
    "true": "correct", "false": "incorrect", "statement": "claim", "argument": "reasoning",
    "cause": "reason", "important": "significant", "different": "distinct", "whole": "entire",
    "also": "too", "very": "really", "happy": "glad", "sad": "unhappy", "hard": "difficult",
    "easy": "simple", "friend": "pal", "friends": "pals", "house": "home", "job": "work",
    "buy": "purchase", "bought": "purchased", "tell": "inform", "told": "informed", "ask": "request",
    "asked": "requested", "decided": "chose", "try": "attempt", "tried": "attempted",
}


def light_paraphrase(words: list[str], rng: np.random.Generator) -> str:
    """One small edit every 5-7 words: a one-word synonym where there is one, else dropping a
    function word, else swapping the word with the next one."""
    out = list(words)
    i = int(rng.integers(2, 6))
    dropped = 0
    while i < len(out) - 1:
        w = out[i].lower().strip(string.punctuation)
        if w in _SYNONYMS:
            out[i] = _SYNONYMS[w]
        elif w in _STOP and dropped < len(words) // 10 + 1:
            out[i] = ""
            dropped += 1
        else:
            out[i], out[i + 1] = out[i + 1], out[i]
        i += int(rng.integers(5, 8))
    return " ".join(w for w in out if w)


def decoy_text(text: str, rng: np.random.Generator) -> str:
    topic = [w.strip(string.punctuation) for w in text.split()]
    topic = list(dict.fromkeys(w for w in topic if len(w) > 3 and w.isalpha() and w.lower() not in _STOP))
    rng.shuffle(topic)
    topic = (topic + ["method", "history", "practice", "theory", "evidence", "context"])[:6]
    return (f"Reading notes: {topic[0]} comes up again, and so does {topic[1]}. Someone asked whether "
            f"{topic[2]} matters here; we think {topic[3]} is more relevant, though {topic[4]} and "
            f"{topic[5]} deserve a look too.")


def _ngrams(folder: Folder, text: str, n: int) -> set[tuple[str, ...]]:
    _, toks = folder.tokens(pa.array([text]))
    t = toks.to_pylist()
    return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


def plant(corpus: pa.Table, bench: pa.Table, per_kind: int, seed: int) -> tuple[pa.Table, dict, dict]:
    """Insert items into documents; return the new corpus, the truth (item -> kind, doc) and the
    decoys (doc -> kind, text) for the template and topic decoys, which hold no item."""
    rng = np.random.default_rng(seed)
    folder = Folder()
    rows = bench.to_pylist()
    texts = corpus["text"].to_pylist()
    ids = corpus["id"].to_pylist()
    kinds = list(KINDS) + ["decoy"]
    templates = template_sentences(bench)
    n_need = per_kind * (len(kinds) + 1)
    if per_kind * len(kinds) > len(rows):
        raise SystemExit(f"need {per_kind * len(kinds)} items, have {len(rows)}")
    long_docs = [i for i, t in enumerate(texts) if len(t) >= 400]
    if n_need > len(long_docs):
        raise SystemExit(f"need {n_need} documents of >= 400 characters, have {len(long_docs)}")
    items = rng.choice(len(rows), per_kind * len(kinds), replace=False)
    docs = rng.choice(long_docs, n_need, replace=False)
    truth, decoys = {}, {}

    def put(d: int, insert: str) -> None:
        t = texts[d]
        spaces = [m.start() for m in re.finditer(r"\s", t)] or [len(t)]
        at = spaces[int(rng.integers(len(spaces)))]
        texts[d] = t[:at] + "\n" + insert + "\n" + t[at:]

    for j, (it, d) in enumerate(zip(items.tolist(), docs[: items.size].tolist())):
        kind = kinds[j // per_kind]
        text = item_text(rows[it])
        insert = decoy_text(text, rng) if kind == "decoy" else plant_text(kind, text, rng)
        if kind == "decoy":
            assert not (_ngrams(folder, insert, 5) & _ngrams(folder, text, 5)), (text, insert)
            decoys[ids[d]] = {"kind": "decoy", "text": insert}
        put(d, insert)
        truth[rows[it]["id"]] = {"kind": kind, "doc": ids[d], "tokens": len(folder.tokens(pa.array([text]))[1])}
    # template decoys: a question sentence many items of one benchmark share, planted alone
    for k, d in enumerate(docs[items.size:].tolist()):
        bench_name, sentence = templates[int(rng.integers(len(templates)))] if k >= len(templates) else templates[k]
        put(d, sentence)
        decoys[ids[d]] = {"kind": "template_decoy", "text": sentence, "benchmark": bench_name}
    out = corpus.set_column(corpus.column_names.index("text"), "text", pa.array(texts, pa.string()))
    return out, truth, decoys


# -- methods ---------------------------------------------------------------------------------------


def winnow_method(params: Params):
    def method(corpus: pa.Table, bench: pa.Table) -> dict:
        c0 = time.process_time()
        res = run(corpus, bench, params)
        cpu = time.process_time() - c0
        rep = res.tables["report"].to_pylist()
        return {
            "flagged": {r["id"] for r in rep if r["contaminated"]},
            "docs": {r["id"]: {h["doc_id"] for h in json.loads(r["hits"])} for r in rep if r["contaminated"]},
            "scan_s": res.metrics["scan_seconds"], "total_s": res.metrics["seconds"],
            "cpu_s": res.metrics["scan_cpu_seconds"], "run_cpu_s": cpu,
            "index_s": res.metrics["index_seconds"],
        }
    return method


def _janitor():
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        return None
    # load janitor.py on its own: lm_eval/__init__ pulls in the whole evaluation stack
    path = Path(spec.origin).parent / "decontamination" / "janitor.py"
    mspec = importlib.util.spec_from_file_location("lm_eval_janitor", path)
    mod = importlib.util.module_from_spec(mspec)
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mspec.loader.exec_module(mod)
    return mod


def lm_eval_method(corpus: pa.Table, bench: pa.Table) -> dict:
    """lm-eval's evaluation-side 13-gram rule (decontaminate.py), scanning the corpus in Python."""
    jm = _janitor()
    jan = jm.Janitor()
    n = jan.ngram_n
    t0, c0 = time.perf_counter(), time.process_time()
    lookup: dict[str, set[str]] = {}
    for r in bench.to_pylist():
        for ng in jm.word_ngrams(jan.normalize_string(item_text(r)), n):
            lookup.setdefault(ng, set()).add(r["id"])
    t_index = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    docs: dict[str, set[str]] = {}
    for did, text in zip(corpus["id"].to_pylist(), corpus["text"].to_pylist()):
        for ng in jm.word_ngrams(jan.normalize_string(text), n):
            hit = lookup.get(ng)
            if hit:
                for e in hit:
                    docs.setdefault(e, set()).add(did)
    t_scan = time.perf_counter() - t1
    cpu_scan = time.process_time() - c1
    return {"flagged": set(docs), "docs": docs, "scan_s": t_scan, "total_s": time.perf_counter() - t0,
            "cpu_s": cpu_scan, "run_cpu_s": time.process_time() - c0, "index_s": t_index}


# -- scoring ---------------------------------------------------------------------------------------


def score(found: dict, natural: set[str], truth: dict, decoys: dict, shape_of: dict) -> dict:
    """Recall per planted kind and native shape; precision per (item, document) pair, per document
    and per item; false positives by cause."""
    flagged = found["flagged"] - natural
    out: dict = {}
    for kind in KINDS:
        items = [i for i, t in truth.items() if t["kind"] == kind and i not in natural]
        hit = [i for i in items if i in flagged]
        out[kind] = {"items": len(items), "flagged": len(hit), "recall": len(hit) / len(items) if items else None}
    for shape in SHAPES:
        items = [i for i, t in truth.items() if t["kind"] == "verbatim" and shape_of.get(i) == shape and i not in natural]
        hit = [i for i in items if i in flagged]
        out[f"shape:{shape}"] = {"items": len(items), "flagged": len(hit),
                                 "recall": len(hit) / len(items) if items else None}
    long_items = [i for i, t in truth.items() if t["kind"] == "partial" and t["tokens"] >= 16 and i not in natural]
    out["partial_16plus"] = {"items": len(long_items), "flagged": sum(i in flagged for i in long_items),
                             "recall": sum(i in flagged for i in long_items) / len(long_items) if long_items else None}
    planted = {i for i, t in truth.items() if t["kind"] in KINDS}
    planted_doc = {truth[i]["doc"]: i for i in planted}
    pairs = [(i, d) for i in flagged for d in found["docs"].get(i, ())]
    good_pairs = [(i, d) for i, d in pairs if i in planted and truth[i]["doc"] == d]
    docs = {d for _, d in pairs}
    good_docs = {d for i, d in good_pairs}
    causes: dict[str, int] = {}
    for i, d in pairs:
        if (i, d) in good_pairs:
            continue
        cause = (decoys[d]["kind"] if d in decoys else
                 f"another item's plant ({truth[planted_doc[d]]['kind']})" if d in planted_doc else "clean text")
        causes[cause] = causes.get(cause, 0) + 1
    tp = len(flagged & planted)
    out["decoy_docs_listed"] = {k: len({d for _, d in pairs if decoys.get(d, {}).get("kind") == k}) for k in DECOYS}
    out["decoys"] = {k: sum(1 for v in decoys.values() if v["kind"] == k) for k in DECOYS}
    out["precision"] = tp / len(flagged) if flagged else None
    out["pair_precision"] = len(good_pairs) / len(pairs) if pairs else None
    out["doc_precision"] = len(good_docs) / len(docs) if docs else None
    out["fp_pairs_by_cause"] = causes
    out["false_positives"] = sorted(flagged - planted)[:20]
    out["natural"] = len(natural)
    return out


def e2e_mb_per_s(corpus: pa.Table, bench: pa.Table, folder: Path, repeats: int = 3) -> dict:
    """``winnow contamination IN --benchmark B --out OUT`` in a fresh process and a fresh store,
    wall clock from process start to exit (median of ``repeats``)."""
    import subprocess
    import sys

    size = sum(len(t.encode()) for t in corpus["text"].to_pylist()) / 1e6
    pq.write_table(corpus, folder / "corpus.parquet")
    pq.write_table(bench, folder / "bench.parquet")
    import resource

    walls, cpus = [], []
    for k in range(repeats):
        cmd = [sys.executable, "-m", "winnow.cli", "contamination", str(folder / "corpus.parquet"),
               "--benchmark", str(folder / "bench.parquet"), "--out", str(folder / f"out{k}.parquet"),
               "--store", str(folder / f"store{k}")]
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(time.perf_counter() - t0)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    wall, cpu = float(np.median(walls)), float(np.median(cpus))
    return {"mb": size, "wall_s": walls, "cpu_s": cpus, "mb_per_s": size / wall, "mb_per_cpu_s": size / cpu}


def _table(results: dict) -> tuple[str, str, str]:
    """The recall/precision table, verbatim recall per native shape, and false positives by cause."""
    def cell(r: dict) -> str:
        return f"{r['recall']:.3f} ({r['flagged']}/{r['items']})" if r["recall"] is not None else "-"

    def num(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else "-"

    head = ["method", *KINDS, "partial, items >= 16 tokens", "item precision", "pair precision",
            "document precision", "template decoy docs listed", "topic decoy docs listed", "natural",
            "scan MB/s (1 thread, wall)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in results.items():
        cells = [cell(s[k]) for k in KINDS] + [cell(s["partial_16plus"])]
        cells += [num(s["precision"]), num(s["pair_precision"]), num(s["doc_precision"])]
        cells += [f"{s['decoy_docs_listed'][k]}/{s['decoys'][k]}" for k in ("template_decoy", "decoy")]
        cells += [str(s["natural"]), f"{s['scan_mb_per_s']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    shapes = ["| method | " + " | ".join(SHAPES) + " |", "|" + "---|" * (len(SHAPES) + 1)]
    causes = ["| method | false-positive (item, document) pairs by cause |", "|---|---|"]
    for name, s in results.items():
        shapes.append(f"| {name} | " + " | ".join(cell(s[f"shape:{k}"]) for k in SHAPES) + " |")
        causes.append(f"| {name} | " + (", ".join(f"{k}: {v}" for k, v in sorted(s["fp_pairs_by_cause"].items()))
                                        or "none") + " |")
    return "\n".join(lines), "\n".join(shapes), "\n".join(causes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~8 MB corpus, 800 items")
    ap.add_argument("--corpus-mb", type=float, default=None)
    ap.add_argument("--items", type=int, default=None, help="benchmark items (default: all)")
    ap.add_argument("--per-kind", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--e2e-mb", type=float, default=13.6,
                    help="corpus size of the end-to-end `winnow contamination` timing (0: skip)")
    args = ap.parse_args()
    # 8 MB: the bundled sample's first 5 MB hold too few documents of >= 400 characters to plant in
    corpus_mb = args.corpus_mb or (8.0 if args.quick else 20.0)
    n_items = args.items or (800 if args.quick else None)
    per_kind = args.per_kind or (60 if args.quick else 150)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench_contamination_"))
    bench, shape_of = native_round_trip(load_items(n_items), tmp)
    corpus, source = load_corpus(corpus_mb)
    mb = sum(len(t.encode()) for t in corpus["text"].to_pylist()) / 1e6
    planted, truth, decoys = plant(corpus, bench, per_kind, args.seed)
    print(f"corpus: {corpus.num_rows} docs, {mb:.1f} MB ({source}); items: {bench.num_rows} "
          f"({', '.join(sorted(set(bench['benchmark'].to_pylist())))}), read from {len(SHAPES)} native shapes; "
          f"planted {per_kind} per kind, {sum(v['kind'] == 'template_decoy' for v in decoys.values())} template decoys")

    methods = {
        "winnow default": winnow_method(Params()),
        "winnow, fuzzy rule off (fuzzy_ngram_n=0)": winnow_method(Params(fuzzy_ngram_n=0)),
        "winnow, no template n-grams (template_examples=0)": winnow_method(Params(template_examples=0)),
    }
    if _janitor() is not None:
        methods["lm-eval 0.4.13 13-gram (decontaminate.py rule)"] = lm_eval_method
    else:
        print("lm-eval not installed: pip install --no-deps lm-eval==0.4.13 (peer skipped)")
    results = {}
    for name, m in methods.items():
        natural = m(corpus, bench)["flagged"]
        found = m(planted, bench)
        s = score(found, natural, truth, decoys, shape_of)
        s.update({"scan_s": found["scan_s"], "total_s": found["total_s"], "cpu_s": found["cpu_s"],
                  "run_cpu_s": found["run_cpu_s"], "index_s": found["index_s"],
                  "scan_mb_per_s": mb / found["scan_s"], "mb_per_cpu_s": mb / found["cpu_s"]})
        results[name] = s
    table, shapes, causes = _table(results)
    print(table, "\n\nverbatim recall per native shape the items were read from:", shapes,
          "\n\nfalse positives:", causes, sep="\n")
    e2e = None
    if args.e2e_mb:
        small, _ = load_corpus(args.e2e_mb)
        e2e = e2e_mb_per_s(small, bench, tmp)
        print(f"\nend to end: winnow contamination on {e2e['mb']:.1f} MB, fresh process and store: "
              f"{e2e['mb_per_s']:.1f} MB/s wall (median {np.median(e2e['wall_s']):.2f} s of "
              f"{[round(w, 2) for w in e2e['wall_s']]}), {e2e['mb_per_cpu_s']:.1f} MB per CPU-second "
              f"(median {np.median(e2e['cpu_s']):.2f} s), load average {os.getloadavg()[0]:.1f}")
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"corpus_mb": mb, "corpus_docs": corpus.num_rows, "corpus_source": source, "items": bench.num_rows,
           "per_kind": per_kind, "seed": args.seed, "results": results, "table": table, "shapes_table": shapes,
           "causes_table": causes, "e2e": e2e, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average": os.getloadavg()}
    (OUT / "contamination.json").write_text(json.dumps(out, indent=1, default=list))
    print(f"wrote {OUT / 'contamination.json'}")


if __name__ == "__main__":
    main()
