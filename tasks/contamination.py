"""Benchmark contamination: is each benchmark example in the training corpus, where, and how much.

Method (n-gram overlap with longest-match scoring):

1. Each benchmark example's checked text is the configured fields joined in order (default
   ``question`` then ``target``). It is folded like :func:`tasks.common.normalize_text` (NFKC, lower
   case, punctuation and white space folded) and cut into word tokens; every word ``n``-gram
   (default ``n = 8``) is hashed into an in-memory index: a sorted uint64 array plus a CSR list of
   (example, token position) occurrences.
2. The corpus is streamed in Arrow batches (threads in parallel, numpy does the work with the GIL
   released): the same folding and hashing, every corpus n-gram looked up through a bitmap prefilter
   and a binary search. Character offsets into the original text are kept for every token.
3. Per example: ``matched_ngrams`` (distinct example n-grams found anywhere), ``coverage`` (fraction
   of example tokens covered by a found n-gram), ``longest_match_tokens`` (longest run of example
   tokens found *contiguously in one document*: consecutive n-grams at consecutive positions on the
   same diagonal, as in the ConTAM study), ``n_docs`` and capped ``hits`` (document id, character
   span).
4. Rules, with thresholds per benchmark (``per_benchmark``): ``longest_match`` fires when
   ``longest_match_tokens >= min_longest_match``; ``coverage`` when ``coverage >= min_coverage``;
   ``n_docs`` when ``min_docs > 0`` and ``n_docs >= min_docs``. An example is contaminated if any
   fires; ``rule`` lists those that fired, joined by ``+``.
5. Action on the corpus (``action``): ``mask`` replaces the matched character spans with
   ``mask_text``; ``drop`` drops the document; ``flag`` records ledger rows but changes nothing.
   Only documents that on their own carry enough evidence for a contaminated example (their
   longest span or their own coverage passes the example's threshold) are acted on, so a generic
   8-gram shared with a contaminated question does not cost every document that uses it; when an
   example is contaminated only through several documents jointly, all of them are acted on.

Edge cases (documented behaviour, never a silent "clean"):

* Examples with fewer than ``n`` tokens are matched as a whole (their full token sequence is one
  n-gram of their own length) when they have at least ``min_example_tokens`` tokens; shorter ones
  are reported with ``checked = False`` (``contaminated`` False, ``rule`` null) and counted in
  ``metrics["unchecked_examples"]``.
* A benchmark larger than the corpus is fine: every example still gets a report row;
  ``metrics["benchmark_larger_than_corpus"]`` says so.
* Corpus: missing ``id``/``text`` column, non-string type, null or empty text, null or duplicate
  ids, or an empty table raise :class:`WinnowError`.
* Benchmarks: missing ``id``/``benchmark``/``question`` columns, a configured field whose column is
  missing, null or empty ``question``, null/duplicate ids, an ``answer`` index outside ``choices``
  when ``answer`` is checked, or an empty table raise :class:`WinnowError`.
* A document whose text is empty after masking is dropped instead (ledger ``action = "drop"``,
  evidence ``emptied_by_mask``).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common import (
    BENCHMARK_SCHEMA,
    Normalization,
    StageResult,
    concat_ledgers,
    drop_rows,
    ledger,
    require_columns,
)
from tasks.ngram_index import Tokenizer, Tokens
from winnow.errors import WinnowError

STAGE = "contamination"
REASON = "benchmark_contamination"
ACTIONS = ("mask", "drop", "flag")
#: Fields of a benchmark example that can be checked. ``answer`` is the text of the correct choice
#: (``choices[answer]``; ``target`` when ``answer`` is -1); ``choices`` is all choices in order;
#: ``context`` is an optional extra column (e.g. a reading passage).
FIELDS = ("question", "choices", "answer", "target", "context")
_RULE_KEYS = ("fields", "min_longest_match", "min_coverage", "min_docs")

REPORT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("benchmark", pa.string()),
        ("contaminated", pa.bool_()),
        ("rule", pa.string()),
        ("longest_match_tokens", pa.int64()),
        ("coverage", pa.float64()),
        ("matched_ngrams", pa.int64()),
        ("n_docs", pa.int64()),
        ("hits", pa.string()),
        ("example_tokens", pa.int64()),
        ("checked", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class Params:
    """Settings of the contamination stage.

    Attributes:
        ngram_n: word n-gram length of the index. Default 8: the ConTAM study (arXiv 2411.03923)
            found n = 8 with mincount 1 detects more real contamination than 13 (GPT-3, lm-eval),
            which misses short and partly copied items; longest-match scoring (below) keeps
            precision. Raise to 13 to reproduce the lm-eval rule, lower it for very short items.
        fields: benchmark fields checked, joined in this order: any of ``question``, ``choices``,
            ``answer``, ``target``, ``context``. Default question + target: the item a model would
            memorise; add ``choices`` for multiple choice sets whose options are long.
        min_longest_match: rule ``longest_match`` fires when the longest contiguous matched span
            reaches this many tokens. Default 13: the GPT-3 / lm-eval 13-gram rule, measured on
            whole spans instead of one hash.
        min_coverage: rule ``coverage`` fires when this fraction of the example's tokens is covered
            by matched n-grams. Default 0.5: PaLM-style "most of it is in there"; it catches short
            items (below 13 tokens) and copies that were edited in several places.
        min_docs: rule ``n_docs`` fires when the example's n-grams are found in at least this many
            documents; 0 (default) turns it off (shared phrases make it noisy on its own).
        min_example_tokens: examples shorter than ``ngram_n`` tokens are matched as a whole when
            they have at least this many tokens; shorter ones are reported unchecked. Default 5:
            a 4-word string occurs by chance in any large corpus.
        per_benchmark: overrides by benchmark name, e.g.
            ``{"humaneval": {"fields": ["question", "target"], "min_longest_match": 30}}``; keys:
            ``fields``, ``min_longest_match``, ``min_coverage``, ``min_docs``.
        action: ``mask`` (default: keeps the rest of the document), ``drop`` or ``flag``.
        mask_text: what a masked span is replaced with. Default one space, so the words on either
            side do not fuse.
        max_hits: cap on the ``hits`` listed per example in the report (the counts are exact).
        normalization: folding; ``strip_punctuation`` and ``collapse_whitespace`` must stay on
            (matching is on word tokens).
        batch_mb: corpus text per scanned batch; memory is ~40 bytes per character of a batch
            per worker.
        workers: threads scanning batches in parallel (numpy releases the GIL). 0 = one per CPU.
    """

    ngram_n: int = 8
    fields: tuple[str, ...] = ("question", "target")
    min_longest_match: int = 13
    min_coverage: float = 0.5
    min_docs: int = 0
    min_example_tokens: int = 5
    per_benchmark: dict[str, dict[str, Any]] = field(default_factory=dict)
    action: str = "mask"
    mask_text: str = " "
    max_hits: int = 20
    normalization: Normalization = Normalization()
    batch_mb: float = 8.0
    workers: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.normalization, dict):
            object.__setattr__(self, "normalization", Normalization(**self.normalization))
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.ngram_n < 1:
            raise WinnowError(f"contamination: ngram_n must be >= 1, got {self.ngram_n}")
        if self.action not in ACTIONS:
            raise WinnowError(f"contamination: action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if not (self.normalization.strip_punctuation and self.normalization.collapse_whitespace):
            raise WinnowError("contamination: normalization.strip_punctuation and collapse_whitespace must be true "
                              "(matching is on word tokens)")
        if self.batch_mb <= 0 or self.max_hits < 0 or self.workers < 0 or self.min_example_tokens < 1:
            raise WinnowError("contamination: batch_mb must be > 0, max_hits and workers >= 0, min_example_tokens >= 1")
        _check_rules(self.fields, self.min_longest_match, self.min_coverage, self.min_docs, "contamination")
        for bench, over in self.per_benchmark.items():
            unknown = sorted(set(over) - set(_RULE_KEYS))
            if unknown:
                raise WinnowError(f"contamination.per_benchmark.{bench}: unknown key(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(_RULE_KEYS)}")
            r = self.rules_for(bench)
            _check_rules(r["fields"], r["min_longest_match"], r["min_coverage"], r["min_docs"],
                         f"contamination.per_benchmark.{bench}")

    def rules_for(self, benchmark: str) -> dict[str, Any]:
        """The fields and thresholds in force for one benchmark."""
        r = {"fields": self.fields, "min_longest_match": self.min_longest_match,
             "min_coverage": self.min_coverage, "min_docs": self.min_docs}
        r.update(self.per_benchmark.get(benchmark, {}))
        r["fields"] = tuple(r["fields"])
        return r


def _check_rules(fields: Any, longest: Any, coverage: Any, docs: Any, where: str) -> None:
    if not fields or any(f not in FIELDS for f in fields):
        raise WinnowError(f"{where}: fields must be a non-empty list of {', '.join(FIELDS)}; got {list(fields)}")
    if not isinstance(longest, int) or longest < 1:
        raise WinnowError(f"{where}: min_longest_match must be an integer >= 1, got {longest!r}")
    if not (0 < float(coverage) <= 1):
        raise WinnowError(f"{where}: min_coverage must be in (0, 1], got {coverage!r}")
    if not isinstance(docs, int) or docs < 0:
        raise WinnowError(f"{where}: min_docs must be an integer >= 0, got {docs!r}")


# --------------------------------------------------------------------------------------------------
# input checks


def _check_corpus(corpus: pa.Table) -> None:
    require_columns(corpus, {"id": pa.string(), "text": pa.string()}, "contamination corpus")
    if corpus.num_rows == 0:
        raise WinnowError("contamination corpus: the table is empty")
    ids = corpus["id"]
    if ids.null_count:
        raise WinnowError(f"contamination corpus: column 'id' has {ids.null_count} null value(s)")
    if pc.count_distinct(ids).as_py() != corpus.num_rows:
        vc = pc.value_counts(ids)
        dup = vc.filter(pc.greater(vc.field("counts"), 1))[0]["values"].as_py()
        raise WinnowError(f"contamination corpus: duplicate id {dup!r} in column 'id'")
    text = corpus["text"]
    bad = pc.or_(pc.is_null(text), pc.equal(pc.binary_length(text), 0))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise WinnowError(f"contamination corpus: row id {ids[row].as_py()!r} has null or empty 'text'")


@dataclass
class _Examples:
    ids: list[str]
    benchmarks: list[str]
    texts: list[str]


def _examples(benchmarks: pa.Table, params: Params) -> _Examples:
    """Validate the benchmark table and build each example's checked text."""
    what = "contamination benchmarks"
    need = {"id": pa.string(), "benchmark": pa.string(), "question": pa.string()}
    missing = [c for c in need if c not in benchmarks.column_names]
    if missing:
        raise WinnowError(f"{what}: unknown schema, missing column(s) {', '.join(missing)} "
                          f"(have: {', '.join(benchmarks.column_names)}; expected: "
                          f"{', '.join(BENCHMARK_SCHEMA.names)}, optional context)")
    require_columns(benchmarks, need, what)
    if benchmarks.num_rows == 0:
        raise WinnowError(f"{what}: the table is empty")
    ids = benchmarks["id"].to_pylist()
    names = benchmarks["benchmark"].to_pylist()
    seen: set[str] = set()
    for i, (x, b) in enumerate(zip(ids, names)):
        if x is None:
            raise WinnowError(f"{what}: row {i} has a null 'id'")
        if b is None or b == "":
            raise WinnowError(f"{what}: example {x!r} has a null or empty 'benchmark'")
        if x in seen:
            raise WinnowError(f"{what}: duplicate id {x!r}")
        seen.add(x)
    used = {f for b in set(names) for f in params.rules_for(b)["fields"]}
    cols: dict[str, list[Any]] = {}
    for f in ("question", "choices", "answer", "target", "context"):
        src = {"answer": ("choices", "answer", "target")}.get(f, (f,))
        if f not in used:
            continue
        for c in src:
            if c not in benchmarks.column_names:
                if f == "answer" and c == "target":
                    continue
                raise WinnowError(f"{what}: field '{f}' is checked but column '{c}' is missing "
                                  f"(have: {', '.join(benchmarks.column_names)})")
            col = benchmarks[c]
            t = col.type
            ok = {"choices": pa.types.is_list(t) or pa.types.is_large_list(t), "answer": pa.types.is_integer(t)}.get(
                c, pa.types.is_string(t) or pa.types.is_large_string(t))
            if not ok:
                raise WinnowError(f"{what}: column '{c}' has type {t}, which winnow does not know for this field")
            cols[c] = col.to_pylist()
    texts = []
    for i, x in enumerate(ids):
        q = cols["question"][i] if "question" in cols else benchmarks["question"][i].as_py()
        if q is None or not q.strip():
            raise WinnowError(f"{what}: example {x!r} has a null or empty 'question'")
        parts = []
        for f in params.rules_for(names[i])["fields"]:
            if f == "choices":
                parts.extend(c for c in (cols["choices"][i] or []) if c)
            elif f == "answer":
                a, ch = cols["answer"][i], cols["choices"][i] or []
                if a is None or a < 0:
                    t = cols.get("target", [None] * len(ids))[i]
                    if t:
                        parts.append(t)
                elif a >= len(ch):
                    raise WinnowError(f"{what}: example {x!r} has answer index {a} but {len(ch)} choice(s)")
                elif ch[a]:
                    parts.append(ch[a])
            else:
                v = cols[f][i]
                if v:
                    parts.append(v)
        texts.append("\n".join(parts))
    return _Examples(ids, names, texts)


# --------------------------------------------------------------------------------------------------
# index


@dataclass
class _Index:
    """For each n-gram length: sorted unique keys and the (example, token position) of each."""

    lengths: list[int]
    keys: dict[int, np.ndarray]
    ptr: dict[int, np.ndarray]
    occ_example: dict[int, np.ndarray]
    occ_pos: dict[int, np.ndarray]
    bitmap: np.ndarray
    shift: int

    @property
    def size(self) -> int:
        return int(sum(k.size for k in self.keys.values()))


def _build_index(tok: Tokenizer, ex_tokens: Tokens, n: int, min_tokens: int) -> _Index:
    lengths_e = np.diff(ex_tokens.doc_bounds)
    ex_of_token = np.repeat(np.arange(lengths_e.size), lengths_e)
    want = sorted({n} | {int(L) for L in lengths_e if min_tokens <= L < n})
    keys, ptr, occ_e, occ_q = {}, {}, {}, {}
    all_keys = []
    for L in want:
        h, first = tok.ngrams(ex_tokens, L)
        e = ex_of_token[first]
        if L != n:  # short examples: only their one whole-length n-gram
            keep = (lengths_e[e] == L)
            h, first, e = h[keep], first[keep], e[keep]
        q = first - ex_tokens.doc_bounds[e]
        order = np.argsort(h, kind="stable")
        h, e, q = h[order], e[order], q[order]
        uk, start = np.unique(h, return_index=True)
        keys[L], ptr[L] = uk, np.append(start, h.size).astype(np.int64)
        occ_e[L], occ_q[L] = e.astype(np.int64), q.astype(np.int64)
        all_keys.append(uk)
    total = int(sum(k.size for k in all_keys))
    bits = int(min(27, max(16, np.ceil(np.log2(max(total, 1))) + 5)))
    bitmap = np.zeros(1 << bits, dtype=bool)
    shift = 64 - bits
    for k in all_keys:
        bitmap[k >> np.uint64(shift)] = True
    return _Index(want, keys, ptr, occ_e, occ_q, bitmap, shift)


# --------------------------------------------------------------------------------------------------
# scan


def _scan_batch(tok: Tokenizer, index: _Index, arr: pa.Array, row0: int) -> np.ndarray:
    """Hits of one batch: int64 rows (L, key index, doc row, token position, char start, char end)."""
    toks = tok.tokens_of_array(arr)
    out = []
    tok_doc = None
    for L in index.lengths:
        h, first = tok.ngrams(toks, L)
        if h.size == 0:
            continue
        cand = np.flatnonzero(index.bitmap[h >> np.uint64(index.shift)])
        if cand.size == 0:
            continue
        keys = index.keys[L]
        hk = h[cand]
        j = np.searchsorted(keys, hk)
        j[j == keys.size] = 0
        ok = keys[j] == hk
        if not ok.any():
            continue
        k, j = first[cand[ok]], j[ok]
        if tok_doc is None:
            tok_doc = np.repeat(np.arange(len(toks.doc_bounds) - 1), np.diff(toks.doc_bounds))
        d = tok_doc[k]
        out.append(np.stack([np.full(k.size, L), j, d + row0, k - toks.doc_bounds[d],
                             toks.start[k], toks.end[k + L - 1]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 6), np.int64)


def _batches(text: pa.ChunkedArray, batch_bytes: int) -> list[tuple[int, pa.Array]]:
    """Split the text column into (first row, array) pieces of about ``batch_bytes`` of UTF-8."""
    out = []
    row = 0
    for chunk in text.chunks:
        if len(chunk) == 0:
            continue
        lens = pc.binary_length(chunk).to_numpy(zero_copy_only=False).astype(np.int64)
        cum = np.cumsum(lens)
        lo = 0
        while lo < len(chunk):
            base = cum[lo - 1] if lo else 0
            hi = int(np.searchsorted(cum, base + batch_bytes, side="right"))
            hi = max(hi, lo + 1)
            out.append((row + lo, chunk.slice(lo, hi - lo)))
            lo = hi
        row += len(chunk)
    return out


# --------------------------------------------------------------------------------------------------
# scoring


def _expand(index: _Index, hits: np.ndarray) -> dict[str, np.ndarray]:
    """One row per (hit, example occurrence of the matched n-gram)."""
    cols = {k: [] for k in ("e", "q", "L", "row", "p", "cs", "ce")}
    for L in index.lengths:
        hL = hits[hits[:, 0] == L]
        if hL.size == 0:
            continue
        ptr = index.ptr[L]
        lo, hi = ptr[hL[:, 1]], ptr[hL[:, 1] + 1]
        cnt = hi - lo
        rep = np.repeat(np.arange(hL.shape[0]), cnt)
        occ = np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        cols["e"].append(index.occ_example[L][occ])
        cols["q"].append(index.occ_pos[L][occ])
        cols["L"].append(np.full(occ.size, L))
        for name, c in (("row", 2), ("p", 3), ("cs", 4), ("ce", 5)):
            cols[name].append(hL[rep, c])
    return {k: (np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64)) for k, v in cols.items()}


def _chains(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs of consecutive n-grams on one diagonal of one (example, document) pair."""
    if x["e"].size == 0:
        return {k: np.zeros(0, np.int64) for k in ("e", "row", "q0", "tokens", "cs", "ce")}
    diag = x["p"] - x["q"]
    order = np.lexsort((x["q"], diag, x["row"], x["e"]))
    e, row, q, dg, L = x["e"][order], x["row"][order], x["q"][order], diag[order], x["L"][order]
    cs, ce = x["cs"][order], x["ce"][order]
    new = np.ones(e.size, dtype=bool)
    new[1:] = (e[1:] != e[:-1]) | (row[1:] != row[:-1]) | (dg[1:] != dg[:-1]) | (q[1:] != q[:-1] + 1)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], e.size) - 1
    return {
        "e": e[starts], "row": row[starts], "q0": q[starts],
        "tokens": (ends - starts) + L[starts],
        "cs": cs[starts],
        "ce": np.maximum.reduceat(ce, starts),
    }


def _coverage(x: dict[str, np.ndarray], ex_bounds: np.ndarray, group: np.ndarray | None = None
              ) -> np.ndarray:
    """Covered token count per example (or per group id when ``group`` is given)."""
    n_ex = ex_bounds.size - 1
    if x["e"].size == 0:
        return np.zeros(n_ex if group is None else 0, np.int64)
    total = int(ex_bounds[-1])
    g0 = ex_bounds[x["e"]] + x["q"]
    diff = np.zeros(total + 1, dtype=np.int64)
    np.add.at(diff, g0, 1)
    np.add.at(diff, g0 + x["L"], -1)
    covered = np.cumsum(diff[:-1]) > 0
    cum = np.concatenate(([0], np.cumsum(covered)))
    return cum[ex_bounds[1:]] - cum[ex_bounds[:-1]]


def _merge_spans(spans: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


# --------------------------------------------------------------------------------------------------
# the stage


def run(corpus: pa.Table, benchmarks: pa.Table, params: Params = Params()) -> StageResult:
    """Check every benchmark example against the corpus, then mask/drop contaminated text.

    Returns ``tables={"data": corpus after the action (same schema), "report": one row per benchmark
    example (REPORT_SCHEMA)}``, the ledger of masked/dropped documents and metrics (rows in/out,
    contaminated examples per benchmark, MB scanned, MB/s).
    """
    t0 = time.perf_counter()
    _check_corpus(corpus)
    ex = _examples(benchmarks, params)
    tok = Tokenizer(params.normalization)
    ex_tokens = tok.tokens_of_texts(ex.texts)
    ex_bounds = ex_tokens.doc_bounds
    ex_len = np.diff(ex_bounds)
    index = _build_index(tok, ex_tokens, params.ngram_n, params.min_example_tokens)
    t_index = time.perf_counter() - t0

    # scan
    t1 = time.perf_counter()
    text = corpus["text"]
    batches = _batches(text, max(1, int(params.batch_mb * 1e6)))
    workers = params.workers or max(1, (__import__("os").cpu_count() or 1))
    if workers > 1 and len(batches) > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda b: _scan_batch(tok, index, b[1], b[0]), batches))
    else:
        parts = [_scan_batch(tok, index, a, r0) for r0, a in batches]
    hits = np.concatenate(parts) if parts else np.zeros((0, 6), np.int64)
    t_scan = time.perf_counter() - t1
    mb = sum(pc.sum(pc.binary_length(c)).as_py() or 0 for c in text.chunks) / 1e6

    # score
    x = _expand(index, hits)
    ch = _chains(x)
    n_ex = len(ex.ids)
    longest = np.zeros(n_ex, np.int64)
    if ch["e"].size:
        np.maximum.at(longest, ch["e"], ch["tokens"])
    covered = _coverage(x, ex_bounds)
    coverage = np.where(ex_len > 0, covered / np.maximum(ex_len, 1), 0.0)
    matched = np.zeros(n_ex, np.int64)
    n_docs = np.zeros(n_ex, np.int64)
    if x["e"].size:
        eq = np.unique(np.stack([x["e"], x["q"], x["L"]], 1), axis=0)
        matched = np.bincount(eq[:, 0], minlength=n_ex)
        er = np.unique(np.stack([x["e"], x["row"]], 1), axis=0)
        n_docs = np.bincount(er[:, 0], minlength=n_ex)
    checked = (ex_len >= params.ngram_n) | (ex_len >= params.min_example_tokens)
    rules_of = {b: params.rules_for(b) for b in set(ex.benchmarks)}
    fired: list[list[str]] = []
    for i in range(n_ex):
        r = rules_of[ex.benchmarks[i]]
        f = []
        if checked[i]:
            if longest[i] >= r["min_longest_match"]:
                f.append("longest_match")
            if matched[i] and coverage[i] >= r["min_coverage"]:
                f.append("coverage")
            if r["min_docs"] and n_docs[i] >= r["min_docs"]:
                f.append("n_docs")
        fired.append(f)
    contaminated = np.array([bool(f) for f in fired], dtype=bool)

    # per (example, document) evidence: which documents to act on
    doc_ids = corpus["id"]
    by_pair: dict[tuple[int, int], list[int]] = {}
    for c in range(ch["e"].size):
        by_pair.setdefault((int(ch["e"][c]), int(ch["row"][c])), []).append(c)
    pair_cov: dict[tuple[int, int], float] = {}
    if by_pair:
        pairs = np.array(sorted(by_pair), dtype=np.int64)
        # coverage of each example by one document: run _coverage on a relabelled example axis
        pid = {p: i for i, p in enumerate(map(tuple, pairs.tolist()))}
        sel = contaminated[x["e"]]
        if sel.any():
            sub = {k: v[sel] for k, v in x.items()}
            grp = np.array([pid[(e, r)] for e, r in zip(sub["e"].tolist(), sub["row"].tolist())], np.int64)
            pb = np.concatenate(([0], np.cumsum(ex_len[pairs[:, 0]])))
            cov_tokens = _coverage({"e": grp, "q": sub["q"], "L": sub["L"]}, pb)
            for p, i in pid.items():
                if contaminated[p[0]]:
                    pair_cov[p] = cov_tokens[i] / max(int(ex_len[p[0]]), 1)
    act_spans: dict[int, list[tuple[int, int]]] = {}
    act_examples: dict[int, set[int]] = {}
    act_longest: dict[int, int] = {}
    hits_json: list[str] = ["[]"] * n_ex
    pairs_of_ex: dict[int, list[tuple[int, int]]] = {}
    for p in sorted(by_pair):
        pairs_of_ex.setdefault(p[0], []).append(p)
    for e, plist in pairs_of_ex.items():
        listed = []
        r = rules_of[ex.benchmarks[e]]
        strong = []
        for p in plist:
            cs = by_pair[p]
            spans = _merge_spans([(int(ch["cs"][c]), int(ch["ce"][c])) for c in cs])
            best = int(max(ch["tokens"][c] for c in cs))
            for s, t in spans:
                listed.append({"doc_id": doc_ids[p[1]].as_py(), "start": s, "end": t})
            if contaminated[e] and (best >= r["min_longest_match"] or pair_cov.get(p, 0.0) >= r["min_coverage"]):
                strong.append((p, spans, best))
        hits_json[e] = json.dumps(listed[: params.max_hits])
        if contaminated[e]:
            if not strong:  # contaminated only jointly: act on every document involved
                strong = [(p, _merge_spans([(int(ch["cs"][c]), int(ch["ce"][c])) for c in by_pair[p]]),
                           int(max(ch["tokens"][c] for c in by_pair[p]))) for p in plist]
            for p, spans, best in strong:
                act_spans.setdefault(p[1], []).extend(map(tuple, spans))
                act_examples.setdefault(p[1], set()).add(e)
                act_longest[p[1]] = max(act_longest.get(p[1], 0), best)

    report = pa.table(
        {
            "id": pa.array(ex.ids, pa.string()),
            "benchmark": pa.array(ex.benchmarks, pa.string()),
            "contaminated": pa.array(contaminated, pa.bool_()),
            "rule": pa.array(["+".join(f) if f else None for f in fired], pa.string()),
            "longest_match_tokens": pa.array(longest, pa.int64()),
            "coverage": pa.array(np.round(coverage, 6), pa.float64()),
            "matched_ngrams": pa.array(matched, pa.int64()),
            "n_docs": pa.array(n_docs, pa.int64()),
            "hits": pa.array(hits_json, pa.string()),
            "example_tokens": pa.array(ex_len, pa.int64()),
            "checked": pa.array(checked, pa.bool_()),
        },
        schema=REPORT_SCHEMA,
    )

    # act
    data, removed = _act(corpus, params, act_spans, act_examples, act_longest, ex)
    per_bench: dict[str, dict[str, int]] = {}
    for b, c, k in zip(ex.benchmarks, contaminated.tolist(), checked.tolist()):
        d = per_bench.setdefault(b, {"examples": 0, "contaminated": 0, "unchecked": 0})
        d["examples"] += 1
        d["contaminated"] += int(c)
        d["unchecked"] += int(not k)
    bench_mb = sum(len(t.encode("utf-8")) for t in ex.texts) / 1e6
    metrics = {
        "rows_in": corpus.num_rows,
        "rows_out": data.num_rows,
        "docs_dropped": int(pc.sum(pc.equal(removed["action"], "drop")).as_py() or 0) if removed.num_rows else 0,
        "docs_masked": int(pc.sum(pc.equal(removed["action"], "mask")).as_py() or 0) if removed.num_rows else 0,
        "examples": n_ex,
        "examples_contaminated": int(contaminated.sum()),
        "unchecked_examples": int((~checked).sum()),
        "per_benchmark": per_bench,
        "index_ngrams": index.size,
        "mb_scanned": round(mb, 3),
        "scan_seconds": round(t_scan, 3),
        "mb_per_s": round(mb / t_scan, 2) if t_scan > 0 else None,
        "workers": workers,
        "index_seconds": round(t_index, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "benchmark_larger_than_corpus": bench_mb > mb,
        "params": {k: v for k, v in asdict(params).items() if k not in ("per_benchmark",)},
    }
    return StageResult(tables={"data": data, "report": report}, removed=removed, metrics=metrics)


def _act(corpus: pa.Table, params: Params, spans: dict[int, list[tuple[int, int]]],
         examples: dict[int, set[int]], longest: dict[int, int], ex: _Examples) -> tuple[pa.Table, pa.Table]:
    if not spans:
        return corpus, concat_ledgers([])
    rows = sorted(spans)
    ids = corpus["id"]
    evidence, actions, drop_ids = [], [], []
    new_text: dict[int, str] = {}
    for r in rows:
        merged = _merge_spans(spans[r])
        ev = {
            "benchmark_ids": sorted(ex.ids[e] for e in examples[r]),
            "benchmarks": sorted({ex.benchmarks[e] for e in examples[r]}),
            "spans": merged,
            "longest_match": longest[r],
        }
        action = params.action
        if action == "mask":
            t = corpus["text"][r].as_py()
            pieces, last = [], 0
            for s, e in merged:
                pieces.append(t[last:s])
                pieces.append(params.mask_text)
                last = e
            pieces.append(t[last:])
            masked = "".join(pieces)
            if masked.strip():
                new_text[r] = masked
            else:
                action = "drop"
                ev["emptied_by_mask"] = True
        if action == "drop":
            drop_ids.append(ids[r].as_py())
        evidence.append(ev)
        actions.append(action)
    led = concat_ledgers(
        ledger([ids[r].as_py() for r, a in zip(rows, actions) if a == act], STAGE, act, REASON,
               [ev for ev, a in zip(evidence, actions) if a == act])
        for act in ("drop", "mask", "flag")
    )
    data = corpus
    if new_text:
        col_idx = corpus.column_names.index("text")
        texts = corpus["text"].to_pylist()
        for r, t in new_text.items():
            texts[r] = t
        data = data.set_column(col_idx, corpus.schema.field("text"), pa.array(texts, corpus.schema.field("text").type))
    if drop_ids:
        data = drop_rows(data, drop_ids)
    return data, led
