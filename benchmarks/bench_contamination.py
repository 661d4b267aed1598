"""Benchmark of the contamination stage: real benchmark items planted into real documents.

    python -m benchmarks.bench_contamination            # ~20 MB corpus, all ~5,200 items
    python -m benchmarks.bench_contamination --quick    # ~8 MB corpus, 800 items

Data (nothing downloaded):

* Corpus: ``data/sample/corpus.parquet`` when it exists, else (and to top it up to ``--corpus-mb``)
  Wikipedia and OpenWebText passages from the ``evals`` wheel (first passage of each record), then
  Python 3.11 reST docs and Linux kernel docs from Debian packages.
* Benchmark items: MMLU, SocialIQA, QuaRTz and MedMCQA items shipped in the ``evals`` wheel,
  converted to ``BENCHMARK_SCHEMA``; the checked text is question + correct answer (the stage's
  default ``fields``).

Planting (seeded): for each kind, ``--per-kind`` items are inserted, each into its own randomly
chosen document at a whitespace position:

* ``verbatim``: question and answer as they are;
* ``partial``: a contiguous window of half the item's words;
* ``reformatted``: upper/lower/title case, extra spaces and line breaks, punctuation dropped or
  changed, curly quotes;
* ``paraphrased``: about one word in eight replaced by a near-synonym or dropped (no target: n-gram
  matching is not meant to find paraphrases; reported so the limit is visible);
* ``decoy``: a sentence built from the item's topic words with filler around them; it shares no
  5-gram with its item, so flagging its item is a false positive.

Before planting, the same benchmark is checked against the clean corpus; items found there
("natural" overlap) are left out of the scores for that method and counted.

Scores per method: recall per kind (item found), item-level precision (flagged items that were
planted / all flagged items, natural ones excluded), document precision per kind (documents listed
for a found item that are the document it was planted in), and scan throughput in MB of corpus text
per second on one core (wall clock of the scan, and CPU seconds of the process). The cost of rule
``short_span`` is also measured as the median MB per CPU-second of ``--repeats`` alternating scans
with and without it.

Peer: lm-eval-harness 0.4.13 ``lm_eval/decontamination`` (``pip install --no-deps lm-eval==0.4.13``):
its evaluation-side rule (an item is contaminated if any of its 13-grams, after
``Janitor.normalize_string``, is in the training set's 13-grams, as in ``decontaminate.py``) run
over the same corpus in the same process, and ``Janitor.clean_python`` (its training-side cleaner;
the C++ ``janitor_util`` is not in the wheel) on a slice of the corpus for throughput.
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

from tasks.common import BENCHMARK_SCHEMA
from tasks.contamination import Params, run
from tasks.ngram_index import Folder

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
KINDS = ("verbatim", "partial", "reformatted", "paraphrased")


# -- data ------------------------------------------------------------------------------------------


def _evals_dir() -> Path:
    spec = importlib.util.find_spec("evals")
    if spec is None:
        raise SystemExit("benchmark items need: pip install --no-deps evals==3.0.1.post1")
    return Path(spec.origin).parent / "registry" / "data"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def load_items(limit: int | None) -> pa.Table:
    """Real multiple-choice items from the evals wheel, in BENCHMARK_SCHEMA."""
    d = _evals_dir()
    rows: list[dict] = []

    def add(bench: str, i: int, question: str, choices: list[str], answer: int) -> None:
        question = question.strip()
        if question and 0 <= answer < len(choices):
            rows.append({"id": f"{bench}/{i}", "benchmark": bench, "question": question,
                         "choices": choices, "answer": answer, "target": choices[answer]})

    for i, r in enumerate(_jsonl(d / "sandbagging" / "samples-all-large.jsonl")):
        lines = r["question"].split("\n")
        opts = [ln for ln in lines if re.match(r"^[A-D]\. ", ln)]
        q = "\n".join(ln for ln in lines if not re.match(r"^[A-D]\. ", ln) and ln.strip() != "Answer:")
        add("mmlu", i, q, [o[3:] for o in opts], "ABCD".find(r["answer"].strip()[:1]))
    for i, r in enumerate(_jsonl(d / "theory_of_mind" / "socialiqa" / "test.jsonl")):
        m = re.match(r"(.*) A: (.*); B: (.*); C: (.*)\.$", r["input"][-1]["content"], re.S)
        if m:
            add("socialiqa", i, m[1], [m[2], m[3], m[4]], "ABC".find(r["ideal"].strip()[:1]))
    for i, r in enumerate(_jsonl(d / "quartz" / "samples.jsonl")):
        parts = re.split(r"\n\s*[AB]: ", r["input"][-1]["content"])
        if len(parts) == 3:
            add("quartz", i, parts[0], [parts[1].strip(), parts[2].strip()], "AB".find(r["ideal"].strip()[:1]))
    for i, r in enumerate(_jsonl(d / "medmcqa" / "samples.jsonl")):
        body = r["input"][-1]["content"].split("\n\n", 1)[-1]
        parts = re.split(r"\n[a-d]\) ", "\n" + body.split("\n\n")[-1])
        q = body.split("\n\n")[0]
        choices = [p.strip() for p in parts[1:]]
        add("medmcqa", i, q, choices, "abcd".find(r["ideal"].strip()[:1]))
    table = dedupe_items(pa.Table.from_pylist(rows, schema=BENCHMARK_SCHEMA))
    if limit and table.num_rows > limit:
        rng = np.random.default_rng(11)
        table = table.take(np.sort(rng.choice(table.num_rows, limit, replace=False)))
    return table


def dedupe_items(table: pa.Table, n: int = 8) -> pa.Table:
    """Keep the first of any items that share an n-gram of their checked text.

    QuaRTz pairs questions that differ by a word and SocialIQA reuses contexts; without this, an
    unplanted item that shares most of its text with a planted one would count as a false positive.
    """
    bounds, toks = Folder().tokens(pa.array([item_text(r) for r in table.to_pylist()]))
    toks = toks.to_pylist()
    seen: set[tuple[str, ...]] = set()
    keep = []
    for i in range(table.num_rows):
        t = toks[bounds[i]:bounds[i + 1]]
        grams = {tuple(t[j:j + n]) for j in range(max(1, len(t) - n + 1))}
        if not grams & seen:
            keep.append(i)
        seen |= grams
    return table.take(keep)


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
    raise ValueError(kind)


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


def plant(corpus: pa.Table, bench: pa.Table, per_kind: int, seed: int) -> tuple[pa.Table, dict]:
    """Insert items into documents; return the new corpus and the truth (item -> kind, doc)."""
    rng = np.random.default_rng(seed)
    folder = Folder()
    rows = bench.to_pylist()
    texts = corpus["text"].to_pylist()
    ids = corpus["id"].to_pylist()
    kinds = list(KINDS) + ["decoy"]
    n_need = per_kind * len(kinds)
    if n_need > len(rows):
        raise SystemExit(f"need {n_need} items, have {len(rows)}")
    long_docs = [i for i, t in enumerate(texts) if len(t) >= 400]
    if n_need > len(long_docs):
        raise SystemExit(f"need {n_need} documents of >= 400 characters, have {len(long_docs)}")
    items = rng.choice(len(rows), n_need, replace=False)
    docs = rng.choice(long_docs, n_need, replace=False)
    truth = {}
    for j, (it, d) in enumerate(zip(items.tolist(), docs.tolist())):
        kind = kinds[j // per_kind]
        text = item_text(rows[it])
        insert = decoy_text(text, rng) if kind == "decoy" else plant_text(kind, text, rng)
        if kind == "decoy":
            assert not (_ngrams(folder, insert, 5) & _ngrams(folder, text, 5)), (text, insert)
        t = texts[d]
        spaces = [m.start() for m in re.finditer(r"\s", t)] or [len(t)]
        at = spaces[int(rng.integers(len(spaces)))]
        texts[d] = t[:at] + "\n" + insert + "\n" + t[at:]
        truth[rows[it]["id"]] = {"kind": kind, "doc": ids[d], "tokens": len(folder.tokens(pa.array([text]))[1])}
    out = corpus.set_column(corpus.column_names.index("text"), "text", pa.array(texts, pa.string()))
    return out, truth


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


def janitor_clean_throughput(corpus: pa.Table, bench: pa.Table, mb: float) -> float:
    """MB/s of Janitor.clean_python (training-side) on the first ``mb`` of the corpus."""
    jm = _janitor()
    jan = jm.Janitor()
    for r in bench.to_pylist():
        jan.register_contaminant_python(item_text(r))
    texts, size = [], 0
    for t in corpus["text"].to_pylist():
        texts.append(t)
        size += len(t.encode())
        if size >= mb * 1e6:
            break
    t0 = time.perf_counter()
    for t in texts:
        jan.clean_python(t)
    return size / 1e6 / (time.perf_counter() - t0)


# -- scoring ---------------------------------------------------------------------------------------


def score(found: dict, natural: set[str], truth: dict, all_ids: list[str]) -> dict:
    flagged = found["flagged"] - natural
    out: dict = {}
    for kind in list(KINDS) + ["decoy"]:
        items = [i for i, t in truth.items() if t["kind"] == kind and i not in natural]
        hit = [i for i in items if i in flagged]
        row = {"items": len(items), "flagged": len(hit), "recall": len(hit) / len(items) if items else None}
        listed = [(i, d) for i in hit for d in found["docs"].get(i, ())]
        right = [1 for i, d in listed if d == truth[i]["doc"]]
        row["doc_precision"] = len(right) / len(listed) if listed else None
        out[kind] = row
    long_items = [i for i, t in truth.items() if t["kind"] == "partial" and t["tokens"] >= 16 and i not in natural]
    out["partial_16plus"] = {"items": len(long_items), "flagged": sum(i in flagged for i in long_items),
                             "recall": sum(i in flagged for i in long_items) / len(long_items) if long_items else None}
    planted = {i for i, t in truth.items() if t["kind"] != "decoy"}
    tp = len(flagged & planted)
    fp = len(flagged - planted)
    out["precision"] = tp / (tp + fp) if tp + fp else None
    out["false_positives"] = sorted(flagged - planted)[:20]
    out["natural"] = len(natural)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~8 MB corpus, 800 items")
    ap.add_argument("--corpus-mb", type=float, default=None)
    ap.add_argument("--items", type=int, default=None, help="benchmark items (default: all)")
    ap.add_argument("--per-kind", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=7, help="alternating runs for the short_span cost")
    args = ap.parse_args()
    # 8 MB: the bundled sample's first 5 MB hold too few documents of >= 400 characters to plant in
    corpus_mb = args.corpus_mb or (8.0 if args.quick else 20.0)
    n_items = args.items or (800 if args.quick else None)
    per_kind = args.per_kind or (60 if args.quick else 150)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    bench = load_items(n_items)
    corpus, source = load_corpus(corpus_mb)
    mb = sum(len(t.encode()) for t in corpus["text"].to_pylist()) / 1e6
    planted, truth = plant(corpus, bench, per_kind, args.seed)
    print(f"corpus: {corpus.num_rows} docs, {mb:.1f} MB ({source}); items: {bench.num_rows} "
          f"({', '.join(sorted(set(bench['benchmark'].to_pylist())))}); planted {per_kind} per kind")

    methods = {
        "winnow default (n=8; longest>=13, coverage>=0.4 or short_span)": winnow_method(Params()),
        "winnow default without short_span (short_ngram_n=0)": winnow_method(Params(short_ngram_n=0)),
        "winnow n=5 (sensitive)": winnow_method(Params(ngram_n=5, template_examples=3)),
        "winnow n=13, longest>=13 only": winnow_method(Params(ngram_n=13, min_longest_match=13, min_coverage=1.0)),
    }
    if _janitor() is not None:
        methods["lm-eval 0.4.13 13-gram (decontaminate.py rule)"] = lm_eval_method
    else:
        print("lm-eval not installed: pip install --no-deps lm-eval==0.4.13 (peer skipped)")
    results = {}
    for name, m in methods.items():
        natural = m(corpus, bench)["flagged"]
        found = m(planted, bench)
        s = score(found, natural, truth, bench["id"].to_pylist())
        s.update({"scan_s": found["scan_s"], "total_s": found["total_s"], "cpu_s": found["cpu_s"],
                  "run_cpu_s": found["run_cpu_s"],
                  "index_s": found["index_s"], "scan_mb_per_s": mb / found["scan_s"],
                  "mb_per_cpu_s": mb / found["cpu_s"]})
        results[name] = s
    w2 = winnow_method(Params(workers=2))(planted, bench)
    # one scan is well under a second: alternate the default with and without short_span a few times
    # so that the cost of the rule is a ratio of medians from the same minutes, not one noisy pair
    reps: dict[str, list[float]] = {"with short_span": [], "without": []}
    for _ in range(args.repeats):
        for key, p in (("with short_span", Params()), ("without", Params(short_ngram_n=0))):
            reps[key].append(mb / winnow_method(p)(planted, bench)["cpu_s"])
    med = {k: float(np.median(v)) for k, v in reps.items()}
    janitor_mbs = janitor_clean_throughput(planted, bench, 2.0) if _janitor() is not None else None

    head = ("| method | verbatim | partial | partial, items >= 16 tokens | reformatted | paraphrased | "
            "decoys flagged | precision | natural | scan MB/s (1 thread, wall) | scan MB per CPU-s |")
    lines = [head, "|" + "---|" * 11]
    for name, s in results.items():
        def cell(k):
            r = s[k]
            return f"{r['recall']:.3f} ({r['flagged']}/{r['items']})" if r["recall"] is not None else "-"
        lines.append(f"| {name} | {cell('verbatim')} | {cell('partial')} | {cell('partial_16plus')} | {cell('reformatted')} | "
                     f"{cell('paraphrased')} | {s['decoy']['flagged']}/{s['decoy']['items']} | "
                     f"{s['precision']:.3f} | {s['natural']} | {s['scan_mb_per_s']:.1f} | {s['mb_per_cpu_s']:.1f} |")
    dp = ["| method | " + " | ".join(KINDS) + " |", "|" + "---|" * (len(KINDS) + 1)]
    for name, s in results.items():
        dp.append(f"| {name} | " + " | ".join(
            f"{s[k]['doc_precision']:.3f}" if s[k]["doc_precision"] is not None else "-" for k in KINDS) + " |")
    table = "\n".join(lines)
    print(table)
    print("\ndocument precision (listed documents that are the planted one):")
    print("\n".join(dp))
    print(f"\nwinnow default, 2 threads: scan {mb / w2['scan_s']:.1f} MB/s (wall, 2 cores shared)")
    print(f"winnow default scan, median of {args.repeats} alternating runs: {med['with short_span']:.1f} MB per "
          f"CPU-s with short_span, {med['without']:.1f} without (ratio {med['with short_span'] / med['without']:.3f})")
    if janitor_mbs:
        print(f"lm-eval Janitor.clean_python (training-side cleaner, python mode): {janitor_mbs:.2f} MB/s")
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"corpus_mb": mb, "corpus_docs": corpus.num_rows, "corpus_source": source, "items": bench.num_rows,
           "per_kind": per_kind, "seed": args.seed, "results": results, "table": table,
           "doc_precision_table": "\n".join(dp),
           "winnow_2_threads_scan_mb_per_s": mb / w2["scan_s"], "janitor_clean_mb_per_s": janitor_mbs,
           "short_span_mb_per_cpu_s_runs": reps,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    (OUT / "contamination.json").write_text(json.dumps(out, indent=1, default=list))
    print(f"wrote {OUT / 'contamination.json'}")


if __name__ == "__main__":
    main()
