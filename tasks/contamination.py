"""Benchmark contamination: is each benchmark example in the training corpus, where, and how much.

Method (n-gram overlap with longest-match scoring):

1. Each benchmark example's checked text is the configured fields joined in order (default
   ``question`` then ``target``). It is folded like :func:`tasks.common.normalize_text` (NFKC, lower
   case, punctuation and white space folded) and cut into word tokens; every word ``n``-gram
   (default ``n = 8``) is hashed into an in-memory index: a sorted uint64 array plus a CSR list of
   (example, token position) occurrences. N-grams found in ``template_examples`` or more examples
   are template text: looked up, so the report can show them (``template_docs``), but no evidence;
   the tokens inside them are not the example's *own* tokens. Examples whose partial copies the n-gram rules cannot
   see (``ceil(min_coverage * tokens) < n``: 8-17 tokens at the defaults) also get their k-grams
   indexed, ``k = max(short_ngram_n, ceil(min_coverage * tokens))`` (4-7), for rule ``short_span``;
   examples with ``fuzzy_min_tokens`` own tokens get their ``fuzzy_ngram_n``-grams, for ``fuzzy``.
2. The corpus is streamed in Arrow batches (``workers`` threads; numpy does the work with the GIL
   released), see :mod:`tasks.ngram_index`: the same folding and hashing straight from the UTF-8
   buffers, a bitmap of benchmark token pairs to skip windows that cannot match, and every remaining
   window looked up through a bitmap prefilter and a binary search; the documents holding each
   k-gram are counted on the way. Character offsets into the original text are recomputed only for
   the documents that matched.
3. Per example: ``matched_ngrams`` (distinct example n-grams found anywhere), ``coverage`` (fraction
   of example tokens covered by a found n-gram), ``longest_match_tokens`` (longest run of example
   tokens found *contiguously in one document*: consecutive n-grams at consecutive positions on the
   same diagonal, as in the ConTAM study), ``n_docs`` and capped ``hits`` (document id, character
   span). A document counts for an example only if it holds one of the example's n-grams that no
   other example holds: text several items share word for word (a LogiQA passage asked about four
   times) cannot say which of them was copied.
4. Rules, with thresholds per benchmark (``per_benchmark``): ``longest_match`` fires when
   ``longest_match_tokens >= min_longest_match``; ``coverage`` when ``coverage >= min_coverage``;
   ``n_docs`` when ``min_docs > 0`` and ``n_docs >= min_docs`` (these three on n-grams alone;
   ``coverage`` and ``short_span`` also need ``min_own_tokens`` own tokens among the covered ones);
   ``short_span`` when one document holds a contiguous run of the example's k-grams that covers
   ``min_coverage`` of it, every k-gram in at most ``short_max_docs`` documents, one in no other
   example, with ``short_min_content`` tokens that are not function words (see
   ``Params.short_ngram_n``: why, and what it costs); ``fuzzy`` when a window of one document,
   found through rare k-grams, aligns in order with ``fuzzy_min_aligned`` of the example's own
   tokens (``Params.fuzzy_ngram_n``). An example is contaminated if any fires;
   ``rule`` lists those that fired, joined by ``+``. Where ``short_span`` fired, the report's
   columns and hits also count the k-grams of the documents that fired it (for ``fuzzy``: the
   aligned blocks).
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
* Benchmark ids must be unique across all benchmarks (the report and evaluate join on them).
* A benchmark larger than the corpus is fine: every example still gets a report row;
  ``metrics["benchmark_larger_than_corpus"]`` says so.
* Corpus: missing ``id``/``text`` column, non-string type, null or empty text, null or duplicate
  ids, or an empty table raise :class:`WinnowError`.
* Benchmarks (read from their native formats by :mod:`winnow.benchmark_formats`; the report keeps
  their extra fields as JSON in ``extra``): missing ``id``/``benchmark``/``question`` columns, a
  configured field whose column is missing, null or empty ``question``, null/duplicate ids, an
  ``answer`` index outside ``choices`` when ``answer`` is checked, or an empty table raise
  :class:`WinnowError`.
* An example made only of text others share (every token inside a template n-gram) keeps all its
  tokens as its own (``metrics["template_only_examples"]``): only the n-grams across its joins tell
  it apart.
* A document whose text is empty after masking is dropped instead (ledger ``action = "drop"``,
  evidence ``emptied_by_mask``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dataclasses_replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common import (
    track,
    BENCHMARK_SCHEMA,
    Normalization,
    RowRules,
    StageResult,
    Timings,
    TableStream,
    check_rows,
    check_unique_ids,
    concat_ledgers,
    ledger,
    require_columns,
)
from tasks.shards import Pieces, TableRows, parts_left, rows_of, shard_stream, shards_hit
from tasks.ngram_index import Folder, Vocab, ngram_keys
from winnow.errors import WinnowError

STAGE = "contamination"
REASON = "benchmark_contamination"
ACTIONS = ("mask", "drop", "flag")
#: Fields of a benchmark example that can be checked. ``answer`` is the text of the correct choice
#: (``choices[answer]``; ``target`` when ``answer`` is -1); ``choices`` is all choices in order;
#: ``context`` is an optional extra column (e.g. a reading passage).
FIELDS = ("question", "choices", "answer", "target", "context")
_RULE_KEYS = ("fields", "ngram_n", "min_longest_match", "min_coverage", "min_docs", "short_ngram_n",
              "short_max_docs", "short_min_content", "fuzzy_ngram_n", "fuzzy_min_aligned")

#: key_cap of an index key that is both a short-span k-gram and an n-gram: never dropped by the scan
_NO_CAP = 1 << 62
#: rule short_span: a token in at least this share of the examples (and in at least
#: _COMMON_TOKEN_MIN of them) is a function word, not a content word (Params.short_min_content)
_COMMON_TOKEN_SHARE = 0.05
_COMMON_TOKEN_MIN = 20
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
        ("template_tokens", pa.int64()),  # tokens inside template n-grams (not evidence)
        ("template_docs", pa.int64()),  # documents holding one of its template n-grams
        ("extra", pa.string()),  # the benchmark item's fields no role reads (JSON), null if none
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
            by matched n-grams. Default 0.4: a copy of half an item covers ~0.5 of it less rounding
            (measured: 0.5 misses a third of half-copies, 0.4 none, with no extra false positive at
            n = 8); it catches short items (below 13 tokens, where one 8-gram is >= 40%) and copies
            edited in several places. PaLM's rule is 0.7 of the 8-grams.
        min_docs: rule ``n_docs`` fires when the example's n-grams are found in at least this many
            documents; 0 (default) turns it off (shared phrases make it noisy on its own).
        min_example_tokens: examples shorter than ``ngram_n`` tokens are matched as a whole when
            they have at least this many tokens; shorter ones are reported unchecked. Default 5:
            a 4-word string occurs by chance in any large corpus.
        template_examples: an n-gram that occurs in at least this many benchmark examples is
            template text (MMLU's "For which of these two scenarios does the main character ...",
            LogiQA's "If the above statement is true, which of the following must be true?"):
            finding it in a document says nothing about any one example. It is still looked up,
            and the report shows per example ``template_tokens`` and ``template_docs`` (documents
            holding one). Default 5: measured with 150 template decoys (question sentences 5+
            items of one benchmark share, planted alone), 10 listed 55 decoy documents for
            flagged items (pair precision 0.72), 5 none (BENCHMARKS.md). 0 keeps every n-gram.
        template_span: tokens inside a ``template_span``-gram of ``template_examples`` or more
            examples are template tokens too, not the example's own. Default 6: SocialIQA's "How
            would Jan feel as a result?" (7 tokens) holds no 8-gram, and planted alone next to
            one chance word ("... as a result? in", an item's answer "in a mood") it fired
            ``coverage`` for that item (2 of 150 template decoys; 0 with 6). 0: n-grams only.
        min_own_tokens: the ``coverage`` and ``short_span`` rules also need this many of the
            example's own (non-template) tokens among the covered ones (all of them, if it has
            fewer). Default 3: a template sentence followed by a word of one example by chance
            covers 40% of a short item with a single own token.
        short_ngram_n: rule ``short_span``, for partial copies of short examples. Half of an item
            under 16 tokens can hold no 8-gram: without this rule 0.75-0.80 of planted half-copies
            are found, every miss an item under 16 tokens. Examples with
            ``ceil(min_coverage * tokens) < ngram_n`` (8-17 tokens at the defaults) also get their
            k-grams indexed, ``k = max(short_ngram_n, ceil(min_coverage * tokens))``: one k-gram is
            just enough coverage, and a longer item is matched on longer, rarer k-grams (4-grams
            only for items of 8-10 tokens). The rule fires when one document holds a contiguous
            run of these k-grams covering ``min_coverage`` of the example in which every k-gram
            is in at most ``short_max_docs`` documents of the corpus, one k-gram is in no other
            example (two QuaRTz items that differ by a word share their halves word for word: such
            text cannot say which was copied, and crediting both flags an item's twin whenever
            the item itself is copied), and ``short_min_content`` tokens are content words.
            Measured (BENCHMARKS.md: 18 MB, 5,242 items, 150 plants per kind, seeds 0-3):
            partial recall 0.768 -> 0.957 (574/600; 0.947-0.967 per seed), paraphrased 0.65 ->
            0.77, decoys 0, precision 1.000, about 4% more scan CPU. The cost: 3 items are
            flagged on the clean corpus by chance phrases in 1-2 documents ("term is used to
            describe", "to the top of a mountain") against 0 without it (7 with
            ``short_min_content = 0``). The 26 misses: 19 halves that are all text shared with
            another item, 6 halves (3-4 words) of items under 8 tokens, one 4-word half with one
            content word ("is strong it has"). Default 4; 5 finds 0.937 with the same clean-corpus
            flags; 0 turns the rule off, as does a value >= ``ngram_n``.
        fuzzy_ngram_n: rule ``fuzzy``, for light paraphrases: an edit every 5-7 words (a synonym,
            a dropped function word, two words swapped) leaves no 8-gram. Examples with at least
            ``fuzzy_min_tokens`` own tokens get their k-grams (k = this) indexed; a document where
            ``fuzzy_min_grams`` distinct ones that are each in at most ``fuzzy_max_docs``
            documents (one of them in no other example) fall within 1.5x the example's length is a
            candidate, and an ordered token alignment (difflib's matching blocks over the window)
            verifies it: the rule fires when the aligned own tokens reach ``fuzzy_min_aligned`` of
            the example's own tokens. When windows of several examples overlap, the best-aligned
            one is credited (QuaRTz twins "more ... than" / "less ... than" align with a copy of
            either). Chosen over skip-grams and windowed MinHash because the alignment is exact
            evidence (the report's spans are the aligned blocks) and costs nothing where no rare
            k-grams meet. Measured (BENCHMARKS.md, tuned on seed 1, reported on seed 0): light
            paraphrase recall 0.09 -> 0.95 with no loss of precision; k = 3 found 2 more of 150
            on the tuning seed at a higher scan cost. Default 4; 0 turns the rule off.
        fuzzy_min_aligned: share of an example's own tokens the alignment must match. Default
            0.7: an edit every 6 words leaves about 0.83.
        fuzzy_min_tokens: examples with fewer own tokens get no fuzzy k-grams (an aligned 70% of
            a few words is chance). Default 12 (8 found the same on the tuning seed).
        fuzzy_max_docs: a k-gram in more documents is common text, no candidate evidence.
            Default 10.
        fuzzy_min_grams: distinct k-grams that must meet in one window. Default 2.
        short_max_docs: a k-gram found in more documents than this is common text and is no
            evidence for ``short_span``. Default 3: a copied item may sit on a few pages (1-10
            gave the same recall here; 1 flags 2 clean items instead of 3, 10 flags 4). The scan
            drops the hits of a k-gram once it passes this count in one batch.
        short_min_content: content words a ``short_span`` run must hold. A content word is a
            token found in fewer than max(5% of the examples, 20) examples, so function words
            ("the", "of", "was") are learnt from the benchmark itself, in any language; in a
            benchmark of fewer than 20 examples no token reaches the bar and every word counts.
            Default 2: chance phrases such as "was the mother of", "when you make a", "of a
            population of" have one; measured, 2 flags 3 clean items instead of 7 (with 0) at the
            cost of one partial copy of 600 ("is strong it has").
        per_benchmark: overrides by benchmark name, e.g.
            ``{"humaneval": {"fields": ["question", "target"], "min_longest_match": 30}}``; keys:
            ``fields``, ``ngram_n``, ``min_longest_match``, ``min_coverage``, ``min_docs``,
            ``short_ngram_n``, ``short_max_docs``, ``short_min_content``, ``fuzzy_ngram_n``,
            ``fuzzy_min_aligned``. A smaller ``ngram_n``
            for a benchmark of short items finds more partial copies at a cost in precision (see
            BENCHMARKS.md: n = 5 gives partial recall 0.98, precision 0.93).
        action: ``mask`` (default: keeps the rest of the document), ``drop`` or ``flag``.
        mask_text: what a masked span is replaced with. Default one space, so the words on either
            side do not fuse.
        max_hits: cap on the ``hits`` listed per example in the report (the counts are exact).
        normalization: folding; ``strip_punctuation`` and ``collapse_whitespace`` must stay on
            (matching is on word tokens).
        batch_mb: corpus text per scanned batch. Default 2: fastest per CPU-second in
            measurements (1-8 MB tried; larger batches leave the caches and re-fault fresh pages);
            memory is ~30 bytes per character of a batch per worker.
        workers: threads scanning batches in parallel (numpy releases the GIL). 0 = one per CPU.
    """

    ngram_n: int = 8
    fields: tuple[str, ...] = ("question", "target")
    min_longest_match: int = 13
    min_coverage: float = 0.4
    min_docs: int = 0
    min_example_tokens: int = 5
    template_examples: int = 5
    short_ngram_n: int = 4
    short_max_docs: int = 3
    short_min_content: int = 2
    fuzzy_ngram_n: int = 4
    fuzzy_min_aligned: float = 0.7
    fuzzy_min_tokens: int = 12
    fuzzy_max_docs: int = 10
    fuzzy_min_grams: int = 2
    min_own_tokens: int = 3
    template_span: int = 6
    per_benchmark: dict[str, dict[str, Any]] = field(default_factory=dict)
    action: str = "mask"
    mask_text: str = " "
    max_hits: int = 20
    normalization: Normalization = Normalization()
    batch_mb: float = 2.0
    workers: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.normalization, dict):
            object.__setattr__(self, "normalization", Normalization(**self.normalization))
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.action not in ACTIONS:
            raise WinnowError(f"contamination: action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if not (self.normalization.strip_punctuation and self.normalization.collapse_whitespace):
            raise WinnowError("contamination: normalization.strip_punctuation and collapse_whitespace must be true "
                              "(matching is on word tokens)")
        if self.batch_mb <= 0 or min(self.max_hits, self.workers, self.template_examples) < 0 \
                or self.min_example_tokens < 1 or min(self.fuzzy_min_tokens, self.fuzzy_max_docs, self.fuzzy_min_grams) < 1 \
                or not 0 <= self.template_span <= 255 or self.min_own_tokens < 0:
            raise WinnowError("contamination: batch_mb must be > 0, max_hits, workers and template_examples >= 0, "
                              "min_example_tokens, fuzzy_min_tokens, fuzzy_max_docs and fuzzy_min_grams >= 1, "
                              "template_span in 0..255, min_own_tokens >= 0")
        _check_rules({k: getattr(self, k) for k in _RULE_KEYS}, "contamination")
        for bench, over in self.per_benchmark.items():
            unknown = sorted(set(over) - set(_RULE_KEYS))
            if unknown:
                raise WinnowError(f"contamination.per_benchmark.{bench}: unknown key(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(_RULE_KEYS)}")
            _check_rules(self.rules_for(bench), f"contamination.per_benchmark.{bench}")

    def rules_for(self, benchmark: str) -> dict[str, Any]:
        """The fields and thresholds in force for one benchmark."""
        r = {k: getattr(self, k) for k in _RULE_KEYS}
        r.update(self.per_benchmark.get(benchmark, {}))
        r["fields"] = tuple(r["fields"])
        return r


def _check_rules(r: dict[str, Any], where: str) -> None:
    fields, n, longest, coverage, docs = (r[k] for k in _RULE_KEYS[:5])
    if not isinstance(n, int) or not 1 <= n <= 255:
        raise WinnowError(f"{where}: ngram_n must be an integer in 1..255, got {n!r}")
    if not fields or any(f not in FIELDS for f in fields):
        raise WinnowError(f"{where}: fields must be a non-empty list of {', '.join(FIELDS)}; got {list(fields)}")
    if not isinstance(longest, int) or longest < 1:
        raise WinnowError(f"{where}: min_longest_match must be an integer >= 1, got {longest!r}")
    if not (0 < float(coverage) <= 1):
        raise WinnowError(f"{where}: min_coverage must be in (0, 1], got {coverage!r}")
    if not isinstance(docs, int) or docs < 0:
        raise WinnowError(f"{where}: min_docs must be an integer >= 0, got {docs!r}")
    k, cap = r["short_ngram_n"], r["short_max_docs"]
    if not isinstance(k, int) or not 0 <= k <= 255:
        raise WinnowError(f"{where}: short_ngram_n must be an integer in 0..255 (0 = off), got {k!r}")
    if not isinstance(cap, int) or cap < 1:
        raise WinnowError(f"{where}: short_max_docs must be an integer >= 1, got {cap!r}")
    if not isinstance(r["short_min_content"], int) or r["short_min_content"] < 0:
        raise WinnowError(f"{where}: short_min_content must be an integer >= 0, got {r['short_min_content']!r}")
    if not isinstance(r["fuzzy_ngram_n"], int) or not 0 <= r["fuzzy_ngram_n"] <= 255:
        raise WinnowError(f"{where}: fuzzy_ngram_n must be an integer in 0..255 (0 = off), got {r['fuzzy_ngram_n']!r}")
    if not (0 < float(r["fuzzy_min_aligned"]) <= 1):
        raise WinnowError(f"{where}: fuzzy_min_aligned must be in (0, 1], got {r['fuzzy_min_aligned']!r}")


# --------------------------------------------------------------------------------------------------
# input checks


def _check_corpus(corpus: pa.Table) -> None:
    check_rows(corpus, "contamination corpus", RowRules(texts="nonempty"))


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
    fields_of = {b: params.rules_for(b)["fields"] for b in set(names)}
    used = {f for fs in fields_of.values() for f in fs}
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
        for f in fields_of[names[i]]:
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
    """For each n-gram length: sorted unique keys and the (example, token position) of each.

    ``occ_short`` marks the occurrences that are short-span k-grams (rule ``short_span``) rather
    than n-grams of the rules on n-grams. Per key: ``key_cap`` is the ``short_max_docs`` of a
    short-span key (the scan drops its hits past that many documents), :data:`_NO_CAP` for a key
    that is both (a whole 5-token example can be another example's 5-gram), 0 for an n-gram key;
    ``key_examples`` is how many benchmark examples hold each key. ``occ_template`` marks
    n-grams held by ``template_examples`` or more examples: they are looked up so the report can
    show them, but are no evidence; ``own`` is False for every example token inside one.
    ``occ_fuzzy`` marks the k-grams of rule ``fuzzy`` (capped like short-span ones).
    """

    lengths: list[int]
    keys: dict[int, np.ndarray]
    ptr: dict[int, np.ndarray]
    occ_example: dict[int, np.ndarray]
    occ_pos: dict[int, np.ndarray]
    occ_short: dict[int, np.ndarray]
    key_cap: dict[int, np.ndarray]
    key_examples: dict[int, np.ndarray]
    occ_template: dict[int, np.ndarray]
    key_template: dict[int, np.ndarray]
    occ_fuzzy: dict[int, np.ndarray]
    own: np.ndarray
    all_template: np.ndarray
    bitmap: np.ndarray
    shift: int

    @property
    def size(self) -> int:
        return int(sum(k.size for k in self.keys.values()))

    @property
    def short_lengths(self) -> list[int]:
        return [L for L in self.lengths if self.occ_short[L].any()]


def _examples_per_key(h: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique keys, number of distinct examples holding each) of n-gram occurrences ``h`` in ``e``."""
    o = np.lexsort((e, h))
    hs, es = h[o], e[o]
    first_of_pair = np.ones(hs.size, bool)
    first_of_pair[1:] = (hs[1:] != hs[:-1]) | (es[1:] != es[:-1])
    return np.unique(hs[first_of_pair], return_counts=True)


def _build_index(ex_hash: np.ndarray, ex_bounds: np.ndarray, ex_n: np.ndarray, min_tokens: int,
                 template_examples: int = 0, ex_k: np.ndarray | None = None,
                 ex_cap: np.ndarray | None = None, ex_fk: np.ndarray | None = None,
                 fuzzy_cap: int = 0, fuzzy_min_tokens: int = 0, template_span: int = 0) -> _Index:
    """Index the n-grams of every example; ``ex_n`` is each example's n (per benchmark).

    ``ex_k`` and ``ex_cap`` are each example's short-span k (0: none) and ``short_max_docs``; the
    examples with a k also get their k-grams, except template ones (``template_examples``).
    ``ex_fk`` is each example's fuzzy k (0: none): examples with at least ``fuzzy_min_tokens`` own
    (non-template) tokens get those k-grams too, capped at ``fuzzy_cap`` documents. Template
    tokens are those inside a template n-gram or a ``template_span``-gram of ``template_examples``
    examples.
    """
    lengths_e = np.diff(ex_bounds)
    n_ex = lengths_e.size
    ex_of_token = np.repeat(np.arange(n_ex), lengths_e)
    short = (lengths_e >= min_tokens) & (lengths_e < ex_n)
    zeros = np.zeros(n_ex, np.int64)
    ex_k = zeros if ex_k is None else ex_k
    ex_cap = zeros if ex_cap is None else ex_cap
    ex_fk = zeros if ex_fk is None else ex_fk
    ks = sorted({int(v) for v in np.unique(ex_k[ex_k > 0])})
    fks = sorted({int(v) for v in np.unique(ex_fk[ex_fk > 0])})
    want = sorted({int(v) for v in np.unique(ex_n)} | {int(v) for v in np.unique(lengths_e[short])})
    all_lengths = sorted(set(want) | set(ks) | set(fks))
    grams = ngram_keys(ex_hash, np.ones(ex_hash.size, bool), ex_bounds, all_lengths)
    parts: dict[int, list[tuple[np.ndarray, ...]]] = {L: [] for L in all_lengths}
    in_template = np.zeros(ex_hash.size + 1, np.int64)  # +1/-1 at each template n-gram's ends
    for L in want:
        h, first = grams[L]
        e = ex_of_token[first]
        # the example's own n, or its whole token sequence when it is shorter than its n
        whole = short[e] & (lengths_e[e] == L)
        keep = (ex_n[e] == L) | whole
        h, e, whole = h[keep], e[keep], whole[keep]
        q = first[keep] - ex_bounds[e]
        tmpl = np.zeros(h.size, bool)
        if template_examples and h.size:
            # an n-gram in many examples is template text ("which of the following is ..."):
            # evidence for none of them in particular. A whole short example is never a template.
            gk, gc = _examples_per_key(h[~whole], e[~whole])
            tmpl = ~whole & np.isin(h, gk[gc >= template_examples])
            g0 = ex_bounds[e[tmpl]] + q[tmpl]
            np.add.at(in_template, g0, 1)
            np.add.at(in_template, g0 + L, -1)
        parts[L].append(_part(h, e, q, template=tmpl))
    if template_examples and template_span:
        # a question sentence shorter than n ("How would Jan feel as a result?", 7 tokens) holds
        # no template n-gram, yet one chance word beside it completes an n-gram of one item
        h, first = ngram_keys(ex_hash, np.ones(ex_hash.size, bool), ex_bounds, [template_span])[template_span]
        gk, gc = _examples_per_key(h, ex_of_token[first])
        g0 = first[np.isin(h, gk[gc >= template_examples])]
        np.add.at(in_template, g0, 1)
        np.add.at(in_template, g0 + template_span, -1)
    own = np.cumsum(in_template[:-1]) == 0
    own_cum = np.concatenate(([0], np.cumsum(own)))
    all_template = (own_cum[ex_bounds[1:]] - own_cum[ex_bounds[:-1]] == 0) & (lengths_e > 0)
    # an example made only of pieces that others share (a question sentence + an answer five items
    # have) is told apart only where the pieces join: all its tokens count as its own, and the
    # n-grams of no other example (_with_unique_evidence) are what says it was copied
    own[all_template[ex_of_token]] = True
    own_len = np.where(all_template, lengths_e, own_cum[ex_bounds[1:]] - own_cum[ex_bounds[:-1]])
    # how many examples hold each key, over every example of any length or benchmark
    n_holders = {L: _examples_per_key(grams[L][0], ex_of_token[grams[L][1]]) for L in all_lengths}
    for k in sorted(set(ks) | set(fks)):
        h, first = grams[k]
        e = ex_of_token[first]
        gk, gc = n_holders[k]
        not_tmpl = ~np.isin(h, gk[gc >= template_examples]) if template_examples else np.ones(h.size, bool)
        for flag, sel, cap in (("short", ex_k == k, ex_cap), ("fuzzy", (ex_fk == k) & (own_len >= fuzzy_min_tokens),
                                                               np.full(n_ex, fuzzy_cap))):
            keep = sel[e] & not_tmpl
            ek = e[keep]
            parts[k].append(_part(h[keep], ek, first[keep] - ex_bounds[ek], cap=cap[ek], **{flag: True}))
    return _assemble(parts, n_holders, own, all_template)


def _part(h: np.ndarray, e: np.ndarray, q: np.ndarray, cap: np.ndarray | None = None, short: bool = False,
          fuzzy: bool = False, template: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Occurrence columns of one kind of index key: hash, example, position, short, doc cap,
    template, fuzzy."""
    n = h.size
    return (h, e, q, np.full(n, short), np.zeros(n, np.int64) if cap is None else cap,
            np.zeros(n, bool) if template is None else template, np.full(n, fuzzy))


def _assemble(parts: dict[int, list[tuple[np.ndarray, ...]]], n_holders: dict[int, tuple[np.ndarray, np.ndarray]],
              own: np.ndarray, all_template: np.ndarray) -> _Index:
    """Sort each length's occurrences into keys + CSR lists, with per-key caps and a bitmap."""
    keys, ptr, occ_e, occ_q, occ_s, cap, holders, occ_t, key_t, occ_f = ({} for _ in range(10))
    for L, ps in parts.items():
        h, e, q, s_, c, t_, f_ = (np.concatenate(col) for col in zip(*ps))
        order = np.argsort(h, kind="stable")
        h, e, q, s_, c, t_, f_ = (a[order] for a in (h, e, q, s_, c, t_, f_))
        uk, start = np.unique(h, return_index=True)
        keys[L], ptr[L] = uk, np.append(start, h.size).astype(np.int64)
        occ_e[L], occ_q[L], occ_s[L], occ_t[L], occ_f[L] = e.astype(np.int64), q.astype(np.int64), s_, t_, f_
        cap[L] = np.zeros(uk.size, np.int64)
        capped = s_ | f_
        if start.size and capped.any():
            # a key that is also a regular n-gram is never dropped by the scan (its df is still counted)
            n_capped = np.add.reduceat(capped.astype(np.int64), start)
            cap[L] = np.where(n_capped == np.diff(ptr[L]), np.maximum.reduceat(c, start), _NO_CAP)
            cap[L][n_capped == 0] = 0
        holders[L] = np.zeros(uk.size, np.int64)
        key_t[L] = np.maximum.reduceat(t_.astype(np.int8), start) > 0 if start.size else np.zeros(0, bool)
        if L in n_holders:
            gk, gc = n_holders[L]
            holders[L] = gc[np.searchsorted(gk, uk)]
    bitmap, shift = _bitmap(keys)
    return _Index(sorted(parts), keys, ptr, occ_e, occ_q, occ_s, cap, holders, occ_t, key_t, occ_f, own,
                  all_template, bitmap, shift)


def _bitmap(keys: dict[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """The scan's prefilter: one bit per top-``bits`` prefix of any key, and the shift to it."""
    total = int(sum(k.size for k in keys.values()))
    bits = int(min(27, max(16, np.ceil(np.log2(max(total, 1))) + 5)))
    bitmap = np.zeros(1 << bits, dtype=bool)
    shift = 64 - bits
    for k in keys.values():
        bitmap[k >> np.uint64(shift)] = True
    return bitmap, shift


# --------------------------------------------------------------------------------------------------
# scan


def _scan_batch(folder: Folder, vocab: Vocab, index: _Index, arr: pa.Array, row0: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Hits of one batch and the document frequency of its short-span keys.

    Returns (int64 rows (L, key index, doc row, token position in the doc); int64 rows (L, key
    index, documents of this batch holding it) for every short-span key found). Hits of a
    short-span key found in more than its ``short_max_docs`` documents of this batch alone can
    never count and are dropped here, so a common phrase costs no memory.
    """
    bounds, th = folder.hashed(arr)
    usable = vocab.usable_pairs(th)
    out, df = [], []
    grams = ngram_keys(th, usable, bounds, index.lengths)
    for L in index.lengths:
        h, first = grams[L]
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
        d = np.searchsorted(bounds, k, side="right") - 1
        cap = index.key_cap[L][j]
        if cap.any():
            sj = np.unique(j[cap > 0] * (bounds.size - 1) + d[cap > 0]) // (bounds.size - 1)
            uj, cnt = np.unique(sj, return_counts=True)
            df.append(np.stack([np.full(uj.size, L), uj, cnt], axis=1))
            over = np.zeros(keys.size, bool)
            over[uj[cnt > index.key_cap[L][uj]]] = True
            k, j, d = k[~over[j]], j[~over[j]], d[~over[j]]
        out.append(np.stack([np.full(k.size, L), j, d + row0, k - bounds[d]], axis=1))
    empty = np.zeros((0, 3), np.int64)
    return (np.concatenate(out) if out else np.zeros((0, 4), np.int64)), (np.concatenate(df) if df else empty)


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
    """One row per (hit, example occurrence of the matched n-gram); ``s`` marks short-span k-grams."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("e", "q", "L", "row", "p", "j", "s", "t", "f")}
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
        cols["row"].append(hL[rep, 2])
        cols["p"].append(hL[rep, 3])
        cols["j"].append(hL[rep, 1])
        cols["s"].append(index.occ_short[L][occ])
        cols["t"].append(index.occ_template[L][occ])
        cols["f"].append(index.occ_fuzzy[L][occ])
    out = {k: (np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64)) for k, v in cols.items()}
    for k in ("s", "t", "f"):
        out[k] = out[k].astype(bool)
    return out


def _take(x: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[sel] for k, v in x.items()}


def _chains(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs of consecutive n-grams on one diagonal of one (example, document) pair.

    A chain of c n-grams of length L starting at example token q0 and document token p0 is a
    contiguous match of ``c + L - 1`` tokens. With a column ``a`` in ``x``, each chain's ``a`` is
    its largest.
    """
    names = ("e", "row", "q0", "p0", "tokens") + (("a",) if "a" in x else ())
    if x["e"].size == 0:
        return {k: np.zeros(0, np.int64) for k in names}
    diag = x["p"] - x["q"]
    order = np.lexsort((x["L"], x["q"], diag, x["row"], x["e"]))
    e, row, q, dg, L, p = (x[k][order] if k != "dg" else diag[order] for k in ("e", "row", "q", "dg", "L", "p"))
    new = np.ones(e.size, dtype=bool)
    # q == previous q only between n-grams of different lengths at one position: still contiguous
    new[1:] = (e[1:] != e[:-1]) | (row[1:] != row[:-1]) | (dg[1:] != dg[:-1]) | (q[1:] > q[:-1] + 1)
    starts = np.flatnonzero(new)
    # a chain's end is its last n-gram's end; lengths can differ only between whole short examples
    end_tok = np.maximum.reduceat(q + L, starts)
    out = {"e": e[starts], "row": row[starts], "q0": q[starts], "p0": p[starts], "tokens": end_tok - q[starts]}
    if "a" in x:  # any flagged n-gram in the chain
        out["a"] = np.maximum.reduceat(x["a"][order], starts)
    return out


def _coverage(x: dict[str, np.ndarray], ex_bounds: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
    """Number of tokens of each group covered by a matched n-gram (only ``own`` tokens, if given).

    ``x["e"]`` indexes the groups delimited by ``ex_bounds`` (examples, or (example, document)
    pairs laid end to end), ``x["q"]`` is the n-gram's first token in its group, ``x["L"]`` its
    length; ``own`` is a bool per token of that layout.
    """
    n_ex = ex_bounds.size - 1
    if x["e"].size == 0:
        return np.zeros(n_ex, np.int64)
    total = int(ex_bounds[-1])
    g0 = ex_bounds[x["e"]] + x["q"]
    diff = np.zeros(total + 1, dtype=np.int64)
    np.add.at(diff, g0, 1)
    np.add.at(diff, g0 + x["L"], -1)
    covered = np.cumsum(diff[:-1]) > 0
    if own is not None:
        covered &= own
    cum = np.concatenate(([0], np.cumsum(covered)))
    return cum[ex_bounds[1:]] - cum[ex_bounds[:-1]]


def _pair_spans(ch: dict[str, np.ndarray], chain_pair: np.ndarray, n_pairs: int) -> list[list[tuple[int, int]]]:
    """Merged document token intervals ``[start, end)`` of the chains of each (example, doc) pair."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(n_pairs)]
    order = np.lexsort((ch["p0"], chain_pair))
    for c in order.tolist():
        pi, a, b = int(chain_pair[c]), int(ch["p0"][c]), int(ch["p0"][c] + ch["tokens"][c])
        lst = out[pi]
        if lst and a <= lst[-1][1]:
            lst[-1] = (lst[-1][0], max(lst[-1][1], b))
        else:
            lst.append((a, b))
    return out


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


def _own_enough(own_covered: np.ndarray, own_len: np.ndarray, min_own: int) -> np.ndarray:
    """Whether matched text holds enough of an example's own (non-template) tokens to count: a
    template sentence followed by a word of the example by chance holds one."""
    return own_covered >= np.minimum(own_len, min_own)


def _summary(x: dict[str, np.ndarray], ch: dict[str, np.ndarray], p: _Prepared, n_rows: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per example: longest contiguous match in one document, coverage fraction, distinct matched
    n-grams and documents, and whether the covered tokens hold enough of its own (non-template)
    ones, from the match rows ``x`` and their chains ``ch``."""
    n_ex = p.ex_bounds.size - 1
    longest = np.zeros(n_ex, np.int64)
    np.maximum.at(longest, ch["e"], ch["tokens"])
    coverage = _coverage(x, p.ex_bounds) / np.maximum(p.ex_len, 1)
    own_ok = _own_enough(_coverage(x, p.ex_bounds, p.index.own), p.own_len, p.min_own)
    matched = np.zeros(n_ex, np.int64)
    n_docs = np.zeros(n_ex, np.int64)
    if x["e"].size:
        # (example, position, length) and (example, document) as single int64 keys
        eq = np.unique((x["e"] << 40) | (x["q"] << 8) | x["L"])
        matched = np.bincount(eq >> 40, minlength=n_ex)
        er = np.unique(x["e"] * n_rows + x["row"])
        n_docs = np.bincount(er // n_rows, minlength=n_ex)
    return longest, coverage, matched, n_docs, own_ok


def _capped_rows(x_all: dict[str, np.ndarray], flag: str, df_rows: np.ndarray, index: _Index,
                 cap_of: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The k-gram matches of one kind (``flag``: ``s`` short-span, ``f`` fuzzy) whose k-gram is in
    at most ``cap_of[example]`` documents of the whole corpus (``df_rows``: per-batch document
    counts (L, key index, documents) from the scan), and for each whether it is in one example."""
    xs = _take(x_all, x_all[flag])
    rare = np.zeros(xs["e"].size, bool)
    single = np.zeros(xs["e"].size, np.int64)
    for L in sorted(set(xs["L"].tolist())):
        df = np.zeros(index.keys[L].size, np.int64)
        at = df_rows[:, 0] == L
        np.add.at(df, df_rows[at, 1], df_rows[at, 2])
        at = xs["L"] == L
        rare[at] = df[xs["j"][at]] <= cap_of[xs["e"][at]]
        single[at] = index.key_examples[L][xs["j"][at]] == 1
    return _take(xs, rare), single[rare]


def _with_unique_evidence(x: dict[str, np.ndarray], index: _Index, n_rows: int) -> dict[str, np.ndarray]:
    """The match rows of the (example, document) pairs where the document holds an n-gram of that
    example that no other example holds: text that several items share word for word (LogiQA
    passages asked about four times, a question sentence of three items) cannot say which of them
    was copied, so a document holding only such text is evidence for none of them."""
    if x["e"].size == 0:
        return x
    single = np.zeros(x["e"].size, bool)
    for L in np.unique(x["L"]).tolist():
        at = x["L"] == L
        single[at] = index.key_examples[L][x["j"][at]] == 1
    pair = x["e"] * n_rows + x["row"]
    return _take(x, np.isin(pair, np.unique(pair[single])))


def _fuzzy_candidates(xf: dict[str, np.ndarray], p: _Prepared, min_grams: int, n_rows: int
                      ) -> list[tuple[int, int, int, int]]:
    """(example, document row, first, last document token) of each window where the example's
    rare k-grams hit at least ``min_grams`` distinct positions within 1.5 x its length, one of
    them a k-gram of no other example (``xf["a"]``)."""
    out: list[tuple[int, int, int, int]] = []
    if xf["e"].size == 0:
        return out
    key = xf["e"] * n_rows + xf["row"]
    order = np.lexsort((xf["p"], key))
    key, q, pos, L, single = key[order], xf["q"][order], xf["p"][order], xf["L"][order], xf["a"][order]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    ends = np.append(starts[1:], key.size)
    many = (ends - starts) >= min_grams
    for a, b in zip(starts[many].tolist(), ends[many].tolist()):
        e, row = divmod(int(key[a]), n_rows)
        n = int(p.ex_len[e])
        pg, qg = pos[a:b], q[a:b]
        reach = np.searchsorted(pg, pg + int(1.5 * n), side="right")  # hits within one window
        i = int(np.argmax(reach - np.arange(pg.size)))
        j = int(reach[i])
        if np.unique(qg[i:j]).size < min_grams or not single[a + i:a + j].any():
            continue  # too little, or only text the example shares with another
        lo = max(0, int((pg[i:j] - qg[i:j]).min()) - 3)
        hi = int((pg[i:j] + n - qg[i:j]).max()) + 3 + int(L[a])
        out.append((e, row, lo, hi))
    return out


def _fuzzy(xf: dict[str, np.ndarray], corpus: Pieces | TableRows, p: _Prepared, params: Params, n_rows: int
           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rule ``fuzzy``: align each candidate window with its example, token by token and in order
    (difflib's matching blocks, so gaps from edits are skipped), and fire where the aligned own
    tokens reach ``fuzzy_min_aligned`` of the example's own tokens. Returns the aligned blocks of
    the windows that fired as match rows (an n-gram of the block's length each) and the examples."""
    import difflib
    from collections import Counter

    fired = np.zeros(p.ex_len.size, bool)
    rows: dict[str, list[int]] = {k: [] for k in ("e", "q", "L", "row", "p")}
    cands = _fuzzy_candidates(xf, p, params.fuzzy_min_grams, n_rows)
    if cands:
        # tokens are compared by their 64-bit hashes: no Python string per token of a long document
        thr = np.array([r["fuzzy_min_aligned"] for r in p.rules])
        rows_needed = sorted({c[1] for c in cands})
        # the columns _locate and _actions take: the rows read here are not read again for them
        d_bounds, d_hash = p.folder.hashed(corpus.take(np.array(rows_needed, np.int64), ["id", "text"])["text"])
        slot = {r: i for i, r in enumerate(rows_needed)}
        passed: list[tuple[float, int, int, int, int, list]] = []  # (share, row, start, end, example, blocks)
        for e, row, lo, hi in cands:
            d0, d1 = int(d_bounds[slot[row]]), int(d_bounds[slot[row] + 1])
            b0 = int(p.ex_bounds[e])
            item, window = p.ex_hash[b0:b0 + int(p.ex_len[e])].tolist(), d_hash[d0 + lo:min(d0 + hi, d1)].tolist()
            # no alignment can match more tokens than the two share as multisets: a cheap bound
            # that spares most windows the quadratic alignment
            if sum((Counter(item) & Counter(window)).values()) < thr[e] * max(int(p.own_len[e]), 1):
                continue
            blocks = [m for m in difflib.SequenceMatcher(None, item, window, autojunk=False).get_matching_blocks() if m.size]
            aligned = sum(int(p.own_cum[b0 + m.a + m.size] - p.own_cum[b0 + m.a]) for m in blocks)
            share = aligned / max(int(p.own_len[e]), 1)
            if blocks and share >= thr[e]:
                passed.append((share, row, lo + blocks[0].b, lo + blocks[-1].b + blocks[-1].size, e, blocks))
        # two items that differ by a word or two (QuaRTz pairs "more ... than" / "less ... than")
        # both align with a copy of either: a stretch of text is credited to the item it aligns with
        # best, as the n-gram rules credit the item a span belongs to
        taken: dict[int, list[tuple[int, int]]] = {}
        for share, row, a, b, e, blocks in sorted(passed, key=lambda c: -c[0]):
            if any(a < b2 and a2 < b for a2, b2 in taken.get(row, [])):
                continue
            taken.setdefault(row, []).append((a, b))
            fired[e] = True
            lo = a - blocks[0].b
            for m in blocks:
                for k, v in (("e", e), ("q", m.a), ("L", m.size), ("row", row), ("p", lo + m.b)):
                    rows[k].append(v)
    x = {k: np.array(v, np.int64) for k, v in rows.items()}
    x.update(j=np.zeros(x["e"].size, np.int64), s=np.zeros(x["e"].size, bool), t=np.zeros(x["e"].size, bool),
             f=np.zeros(x["e"].size, bool))
    return x, fired


def _content_tokens(ex_hash: np.ndarray, ex_bounds: np.ndarray) -> np.ndarray:
    """Prefix sums over all example tokens of "content" tokens: those in fewer than
    max(_COMMON_TOKEN_SHARE * examples, _COMMON_TOKEN_MIN) examples, i.e. not function words like
    "the", "of", "was" (learnt from the benchmark itself, so any language works; in a benchmark too
    small to tell, every token counts as content)."""
    n_ex = ex_bounds.size - 1
    ex_of_token = np.repeat(np.arange(n_ex), np.diff(ex_bounds))
    tok, n_holding = _examples_per_key(ex_hash, ex_of_token)
    common = n_holding[np.searchsorted(tok, ex_hash)] >= max(_COMMON_TOKEN_SHARE * n_ex, _COMMON_TOKEN_MIN)
    return np.concatenate(([0], np.cumsum(~common)))


def _short_spans(xs: dict[str, np.ndarray], p: _Prepared, n_rows: int) -> np.ndarray:
    """Rule ``short_span``: the (example * n_rows + document row) pairs where a contiguous run of the
    example's rare k-grams ``xs`` covers at least ``min_coverage`` of the example (enough of its
    own tokens among them),
    holds a k-gram of no other example (so the run is not text the example shares with another)
    and at least ``short_min_content`` content tokens (see :func:`_content_tokens`)."""
    ch = _chains(xs)
    first = p.ex_bounds[ch["e"]] + ch["q0"]
    content = p.content_cum[first + ch["tokens"]] - p.content_cum[first]
    own = p.own_cum[first + ch["tokens"]] - p.own_cum[first]
    cov = ch["tokens"] / p.ex_len[ch["e"]]  # as the coverage rule computes it
    good = (cov >= p.thr_cov[ch["e"]]) & (ch["a"] > 0) & (content >= p.min_content[ch["e"]])
    good &= _own_enough(own, p.own_len[ch["e"]], p.min_own)
    return np.unique(ch["e"][good] * n_rows + ch["row"][good])


@dataclass
class _Prepared:
    """Everything known before the corpus is read: examples, their tokens and rules, the index."""

    ex: _Examples
    folder: Folder
    vocab: Vocab
    ex_bounds: np.ndarray
    ex_hash: np.ndarray
    ex_len: np.ndarray
    rules: list[dict[str, Any]]
    thr_cov: np.ndarray
    thr_longest: np.ndarray
    min_content: np.ndarray
    ex_cap: np.ndarray
    checked: np.ndarray
    index: _Index
    own_cum: np.ndarray
    own_len: np.ndarray
    min_own: int
    content_cum: np.ndarray


def _prepare(benchmarks: pa.Table, params: Params, index: pa.Table | None = None) -> _Prepared:
    """Validate the benchmarks, fold and hash every example, and build the n-gram index (or take
    it from ``index``, a :func:`build_index` table of the same examples and settings)."""
    ex = _examples(benchmarks, params)
    folder = Folder(params.normalization)
    rules = _rules(ex, params)
    col = lambda key, dtype: np.array([r[key] for r in rules], dtype)  # noqa: E731
    if index is None:
        ex_bounds, ex_hash, idx, content_cum = _index_of(ex, folder, rules, params)
    else:
        ex_bounds, ex_hash, idx, content_cum = _index_from_table(index, _built_for(ex, params))
    ex_len = np.diff(ex_bounds)
    own_cum = np.concatenate(([0], np.cumsum(idx.own)))
    own_len = own_cum[ex_bounds[1:]] - own_cum[ex_bounds[:-1]]
    checked = (ex_len >= col("ngram_n", np.int64)) | (ex_len >= params.min_example_tokens)
    return _Prepared(ex, folder, Vocab(ex_hash), ex_bounds, ex_hash, ex_len, rules, col("min_coverage", np.float64),
                     col("min_longest_match", np.int64), col("short_min_content", np.int64),
                     col("short_max_docs", np.int64), checked, idx, own_cum, own_len, params.min_own_tokens, content_cum)


def _rules(ex: _Examples, params: Params) -> list[dict[str, Any]]:
    """The fields and thresholds in force for each example (its benchmark's)."""
    of = {b: params.rules_for(b) for b in set(ex.benchmarks)}
    return [of[b] for b in ex.benchmarks]


def _index_of(ex: _Examples, folder: Folder, rules: list[dict[str, Any]], params: Params
              ) -> tuple[np.ndarray, np.ndarray, _Index, np.ndarray]:
    """Token bounds and hashes of every example, its n-gram index and its content-token prefix sums."""
    ex_bounds, ex_hash = folder.hashed(pa.array(ex.texts, pa.string()))
    ex_len = np.diff(ex_bounds)
    col = lambda key, dtype: np.array([r[key] for r in rules], dtype)  # noqa: E731
    ex_n, ex_k, ex_cap, thr_cov = (col("ngram_n", np.int64), col("short_ngram_n", np.int64),
                                   col("short_max_docs", np.int64), col("min_coverage", np.float64))
    # short_span is for examples with n-grams (shorter ones are matched whole) where a run long
    # enough for min_coverage can still hold none (run_min < n); their k is that shortest run, so
    # one k-gram is enough and a longer example is matched on longer, rarer k-grams
    run_min = np.floor(thr_cov * ex_len).astype(np.int64)
    run_min += run_min / np.maximum(ex_len, 1) < thr_cov  # the coverage rule's own test: tokens / len
    ex_k = np.where((ex_k > 0) & (ex_k < ex_n) & (ex_len >= ex_n) & (run_min < ex_n), np.maximum(ex_k, run_min), 0)
    index = _build_index(ex_hash, ex_bounds, ex_n, params.min_example_tokens, params.template_examples,
                         ex_k, ex_cap, col("fuzzy_ngram_n", np.int64), params.fuzzy_max_docs,
                         params.fuzzy_min_tokens, params.template_span)
    return ex_bounds, ex_hash, index, _content_tokens(ex_hash, ex_bounds)


# --------------------------------------------------------------------------------------------------
# the index as a table (a store entry of its own: see build_index)

#: Params that only the scan, the rules or the action read: the index does not depend on them, so
#: index_params() resets them and one index entry serves every value. Overrides in per_benchmark
#: are kept whole (a conservative key: some of them do change the index).
_NOT_INDEX = ("min_longest_match", "min_docs", "short_min_content", "fuzzy_min_aligned", "fuzzy_min_grams",
              "min_own_tokens", "action", "mask_text", "max_hits", "batch_mb", "workers")
#: _Index fields held per n-gram length, and the ones over all example tokens
_PER_LENGTH = ("keys", "ptr", "occ_example", "occ_pos", "occ_short", "key_cap", "key_examples", "occ_template",
               "key_template", "occ_fuzzy")


def index_params(params: Params) -> Params:
    """``params`` with every setting the benchmark index does not depend on at its default: the
    index entry's parameters, so changing a threshold or the action reuses the index."""
    defaults = Params()
    return dataclasses_replace(params, **{k: getattr(defaults, k) for k in _NOT_INDEX})


def _built_for(ex: _Examples, params: Params) -> str:
    """What an index was built from: the index settings and a digest of every example's checked
    text, id and benchmark (so an index is never applied to other examples)."""
    import hashlib

    h = hashlib.sha256()
    for part in (ex.ids, ex.benchmarks, ex.texts):
        h.update("\0".join(part).encode("utf-8") + b"\1")
    return json.dumps({"params": asdict(index_params(params)), "examples": h.hexdigest()}, sort_keys=True, default=list)


def build_index(benchmarks: pa.Table, params: Params = Params()) -> StageResult:
    """The benchmark side of :func:`run` (validated examples, token hashes, n-gram index,
    content-token counts) as a one-row table, each array's bytes in a binary column (``dtypes``
    says how to read them): the ``contamination_index`` stage,
    a store entry keyed by the benchmarks' content and :func:`index_params`, so a nightly run whose
    benchmarks did not change skips building it."""
    t0 = time.perf_counter()
    ex = _examples(benchmarks, params)
    ex_bounds, ex_hash, index, content_cum = _index_of(ex, Folder(params.normalization), _rules(ex, params), params)
    arrays = {"ex_bounds": ex_bounds, "ex_hash": ex_hash, "content_cum": content_cum, "own": index.own,
              "all_template": index.all_template}
    for L in index.lengths:
        arrays.update({f"{name}_{L}": getattr(index, name)[L] for name in _PER_LENGTH})
    # each array as one binary value: Parquet writes a list column element by element (levels,
    # a dictionary tried on 300k random keys), 4x the time of the raw bytes (measured); integers
    # in the narrowest type that holds them (the file is half the size), widened again on reading
    packed = {name: _narrowest(a) for name, a in arrays.items()}
    cols = {name: pa.array([a.tobytes()], pa.large_binary()) for name, a in packed.items()}
    cols["dtypes"] = pa.array([json.dumps({name: [packed[name].dtype.str, a.dtype.str] for name, a in arrays.items()})],
                              pa.string())
    cols["built_for"] = pa.array([_built_for(ex, params)], pa.string())
    cols["lengths"] = pa.array([json.dumps(index.lengths)], pa.string())
    return StageResult(tables={"data": pa.table(cols)},
                       metrics={"examples": len(ex.ids), "index_ngrams": index.size,
                                "seconds": round(time.perf_counter() - t0, 3)})


def _narrowest(a: np.ndarray) -> np.ndarray:
    """A signed integer array in the narrowest signed type that holds its values (others as they are)."""
    a = np.ascontiguousarray(a)
    if a.dtype.kind != "i" or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    for t in (np.int8, np.int16, np.int32):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    return a


def _index_from_table(table: pa.Table, built_for: str) -> tuple[np.ndarray, np.ndarray, _Index, np.ndarray]:
    """The arrays of a :func:`build_index` table, after checking it was built for these examples."""
    if table.num_rows != 1 or "built_for" not in table.column_names or table["built_for"][0].as_py() != built_for:
        raise ValueError("contamination: the index table was built for other benchmark examples or settings")

    dtypes = json.loads(table["dtypes"][0].as_py())

    def arr(name: str) -> np.ndarray:
        stored, wide = dtypes[name]
        return np.frombuffer(table[name][0].as_buffer(), np.dtype(stored)).astype(wide, copy=False)

    lengths = json.loads(table["lengths"][0].as_py())
    per = {name: {L: arr(f"{name}_{L}") for L in lengths} for name in _PER_LENGTH}
    bitmap, shift = _bitmap(per["keys"])
    index = _Index(lengths, per["keys"], per["ptr"], per["occ_example"], per["occ_pos"], per["occ_short"],
                   per["key_cap"], per["key_examples"], per["occ_template"], per["key_template"], per["occ_fuzzy"],
                   arr("own"), arr("all_template"), bitmap, shift)
    return arr("ex_bounds"), arr("ex_hash"), index, arr("content_cum")


def _scan_corpus(text: pa.ChunkedArray, folder: Folder, vocab: Vocab, index: _Index, params: Params
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Hits and short-span document counts of the whole corpus, and the scan's timings."""
    t1, c1 = time.perf_counter(), time.process_time()
    batches = _batches(text, max(1, int(params.batch_mb * 1e6)))
    workers = params.workers or (os.cpu_count() or 1)
    scan = functools.partial(_scan_batch, folder, vocab, index)
    if workers > 1 and len(batches) > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(track(pool.map(lambda b: scan(b[1], b[0]), batches), total=len(batches), desc="scanning corpus batches"))
    else:
        parts = [scan(a, r0) for r0, a in track(batches, desc="scanning corpus batches")]
    hits = np.concatenate([h for h, _ in parts]) if parts else np.zeros((0, 4), np.int64)
    df_rows = np.concatenate([d for _, d in parts]) if parts else np.zeros((0, 3), np.int64)
    timing = {"scan_seconds": time.perf_counter() - t1,
              "scan_cpu_seconds": time.process_time() - c1,  # all threads: MB per CPU-second is per core
              "workers": workers}
    return hits, df_rows, timing


#: The columns of a shard scan's tables (:func:`scan_shard`): hits and short-span document counts.
HIT_COLUMNS = ("L", "key", "row", "pos")
DF_COLUMNS = ("L", "key", "docs")
SHARD_ROWS_KEY = b"winnow.contamination.shard_rows"


def scan_shard(text: pa.ChunkedArray, index: pa.Table, workers: int = 1) -> tuple[pa.Table, pa.Table, dict]:
    """The corpus side of :func:`run` for one shard of the corpus: every benchmark n-gram hit
    (rows numbered within the shard) and the short-span document counts, as two tables that
    :func:`run` takes back as ``scans`` / ``scans_df``. ``index`` is a :func:`build_index` table;
    everything the scan depends on (folding, n-gram lengths, caps) is in it."""
    built_for = index["built_for"][0].as_py()
    params = dataclasses_replace(Params(**json.loads(built_for)["params"]), workers=workers)
    _, ex_hash, idx, _ = _index_from_table(index, built_for)
    hits, df_rows, timing = _scan_corpus(text, Folder(params.normalization), Vocab(ex_hash), idx, params)
    meta = {SHARD_ROWS_KEY: str(len(text)).encode()}
    hits_t = pa.table({c: hits[:, k] for k, c in enumerate(HIT_COLUMNS)}).replace_schema_metadata(meta)
    return hits_t, pa.table({c: df_rows[:, k] for k, c in enumerate(DF_COLUMNS)}), timing


def _scans_back(scans: list[pa.Table], scans_df: list[pa.Table], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-shard scans as one corpus scan: hits renumbered to corpus rows, in shard order."""
    rows = [int((t.schema.metadata or {}).get(SHARD_ROWS_KEY, b"-1")) for t in scans]
    if min(rows, default=0) < 0 or sum(rows) != n_rows:
        raise WinnowError(f"contamination: the shard scans cover {sum(rows)} rows of a {n_rows}-row corpus")
    starts = np.concatenate(([0], np.cumsum(rows)[:-1])).astype(np.int64)
    hits = [np.column_stack([t[c].to_numpy() for c in HIT_COLUMNS]).astype(np.int64).reshape(-1, 4) for t in scans]
    for h, start in zip(hits, starts):
        h[:, 2] += start
    df = [np.column_stack([t[c].to_numpy() for c in DF_COLUMNS]).astype(np.int64).reshape(-1, 3) for t in scans_df]
    return (np.concatenate(hits) if hits else np.zeros((0, 4), np.int64),
            np.concatenate(df) if df else np.zeros((0, 3), np.int64))


def _split_template_hits(index: _Index, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hits of keys that are evidence for someone, one hit per (template key, document)).

    A template key is held by many examples; expanding each of its hits would cost (hits x holders)
    rows, and the report only needs which documents hold it.
    """
    is_t = np.zeros(hits.shape[0], bool)
    for L in index.lengths:
        at = np.flatnonzero(hits[:, 0] == L)
        is_t[at] = index.key_template[L][hits[at, 1]]
    tmpl = hits[is_t]
    if tmpl.size:
        tmpl = tmpl[np.unique(tmpl[:, :3], axis=0, return_index=True)[1]]
    return hits[~is_t], tmpl


def _rules_fired(p: _Prepared, longest: np.ndarray, coverage: np.ndarray, matched: np.ndarray,
                 n_docs: np.ndarray, own_ok: np.ndarray, extra: dict[str, np.ndarray]) -> list[list[str]]:
    """The rules that fired for each checked example; ``extra`` holds rules decided elsewhere
    (``short_span``, ``fuzzy``) as bool arrays."""
    fired: list[list[str]] = []
    for i, r in enumerate(p.rules):
        f = []
        if p.checked[i]:
            if longest[i] >= r["min_longest_match"]:
                f.append("longest_match")
            if matched[i] and coverage[i] >= r["min_coverage"] and own_ok[i]:
                f.append("coverage")
            if r["min_docs"] and n_docs[i] >= r["min_docs"]:
                f.append("n_docs")
            f.extend(name for name, on in extra.items() if on[i])
        fired.append(f)
    return fired


@dataclass
class _Evidence:
    """Per (example, document) pair: the chains and which pairs carry enough to be acted on."""

    pairs: np.ndarray
    pair_e: np.ndarray
    pair_row: np.ndarray
    pair_best: np.ndarray
    strong: np.ndarray
    spans_tok: list[list[tuple[int, int]]]


def _pair_evidence(x: dict[str, np.ndarray], ch: dict[str, np.ndarray], p: _Prepared,
                   contaminated: np.ndarray, n_rows: int) -> _Evidence:
    """Which documents carry, on their own, enough evidence for a contaminated example (their
    longest span or their own coverage passes its threshold); where none does, all of them."""
    n_ex = p.ex_len.size
    pairs, chain_pair = np.unique(ch["e"] * n_rows + ch["row"], return_inverse=True)
    pair_e, pair_row = pairs // n_rows, pairs % n_rows
    pair_best = np.zeros(pairs.size, np.int64)
    np.maximum.at(pair_best, chain_pair, ch["tokens"])
    pair_cov = np.zeros(pairs.size)
    sel = contaminated[x["e"]]
    if sel.any():
        grp = np.searchsorted(pairs, x["e"][sel] * n_rows + x["row"][sel])
        lens = p.ex_len[pair_e]
        pb = np.zeros(pairs.size + 1, np.int64)
        np.cumsum(lens, out=pb[1:])
        # each pair's own-token mask: its example's, laid end to end like the pairs
        tok = np.repeat(p.ex_bounds[pair_e] - pb[:-1], lens) + np.arange(int(pb[-1]))
        xp = {"e": grp, "q": x["q"][sel], "L": x["L"][sel]}
        own_ok = _own_enough(_coverage(xp, pb, p.index.own[tok]), p.own_len[pair_e], p.min_own)
        pair_cov = np.where(own_ok, _coverage(xp, pb) / np.maximum(lens, 1), 0.0)
    strong = contaminated[pair_e] & ((pair_best >= p.thr_longest[pair_e]) | (pair_cov >= p.thr_cov[pair_e]))
    no_strong = contaminated & (np.bincount(pair_e[strong], minlength=n_ex) == 0)
    strong |= no_strong[pair_e]  # contaminated only jointly: act on every document involved
    return _Evidence(pairs, pair_e, pair_row, pair_best, strong, _pair_spans(ch, chain_pair, pairs.size))


def _locate(corpus: Pieces | TableRows, p: _Prepared, ev: _Evidence, max_hits: int
            ) -> tuple[list[str], dict[int, list[tuple[int, int]]], dict[int, set[int]], dict[int, int]]:
    """Token spans -> character spans, only for the documents that are listed or acted on.

    Returns each example's ``hits`` JSON and, per document row to act on, its spans, the examples
    it holds and its longest span.
    """
    n_ex = p.ex_len.size
    listed: dict[int, list[int]] = {}
    n_listed = np.zeros(n_ex, np.int64)
    for pi in range(ev.pairs.size):
        e = int(ev.pair_e[pi])
        if n_listed[e] < max_hits:
            listed.setdefault(e, []).append(pi)
            n_listed[e] += len(ev.spans_tok[pi])
    need_rows = sorted({int(ev.pair_row[pi]) for lst in listed.values() for pi in lst} | set(ev.pair_row[ev.strong].tolist()))
    docs = corpus.take(np.array(need_rows, np.int64), ["id", "text"])
    texts, ids = (docs["text"].to_pylist(), docs["id"].to_pylist()) if docs is not None else ([], [])
    offsets = {r: p.folder.offsets(t) for r, t in zip(need_rows, texts)}
    doc_ids = dict(zip(need_rows, ids))

    def char_spans(pi: int) -> list[list[int]]:
        st, en = offsets[int(ev.pair_row[pi])]
        return [[int(st[a]), int(en[b - 1])] for a, b in ev.spans_tok[pi]]

    hits_json = ["[]"] * n_ex
    for e, lst in listed.items():
        items = [{"doc_id": doc_ids[int(ev.pair_row[pi])], "start": s_, "end": e_}
                 for pi in lst for s_, e_ in char_spans(pi)]
        hits_json[e] = json.dumps(items[:max_hits])
    act_spans: dict[int, list[tuple[int, int]]] = {}
    act_examples: dict[int, set[int]] = {}
    act_longest: dict[int, int] = {}
    for pi in np.flatnonzero(ev.strong).tolist():
        r = int(ev.pair_row[pi])
        act_spans.setdefault(r, []).extend(tuple(sp) for sp in char_spans(pi))
        act_examples.setdefault(r, set()).add(int(ev.pair_e[pi]))
        act_longest[r] = max(act_longest.get(r, 0), int(ev.pair_best[pi]))
    return hits_json, act_spans, act_examples, act_longest


def _template_docs(index: _Index, tmpl_hits: np.ndarray, n_ex: int, n_rows: int) -> np.ndarray:
    """Per example: documents holding one of its template n-grams (shown, never evidence)."""
    if tmpl_hits.size == 0:
        return np.zeros(n_ex, np.int64)
    xt = _expand(index, np.column_stack((tmpl_hits[:, :3], np.zeros(len(tmpl_hits), np.int64))))
    xt = _take(xt, xt["t"])
    return np.bincount(np.unique(xt["e"] * n_rows + xt["row"]) // n_rows, minlength=n_ex)


def run(corpus: Any, benchmarks: pa.Table, params: Params = Params(), index: pa.Table | None = None,
        scans: list[pa.Table] | None = None, scans_df: list[pa.Table] | None = None) -> StageResult:
    """Check every benchmark example against the corpus, then mask/drop contaminated text.

    ``corpus`` is a ``pa.Table`` or a sharded store table (:class:`storage.store.ShardedTable`).
    ``index`` is the :func:`build_index` table of these benchmarks and settings (the pipeline's
    cached ``contamination_index`` entry); without it the index is built here. ``scans`` and
    ``scans_df``: the :func:`scan_shard` tables of every shard of ``corpus`` with that index, in
    shard order (the ``contamination_scan`` map tasks); without them the corpus is scanned here.
    Same result either way. With scans, a sharded corpus is never read whole: the reduce reads
    the ids, the rows that hold evidence, and then streams the output a row group at a time.

    Returns ``tables={"data": corpus after the action (same schema), "report": one row per benchmark
    example (REPORT_SCHEMA)}``, the ledger of masked/dropped documents and metrics (rows in/out,
    contaminated examples per benchmark, MB scanned, MB/s).
    """
    timings = Timings()
    mapped = scans is not None and scans_df is not None and index is not None
    rows = rows_of(corpus) if mapped else TableRows(rows_of(corpus).read(None))
    with timings.phase("index"):
        if isinstance(rows, TableRows):
            _check_corpus(rows.table)
        else:
            _check_shards(rows)
        p = _prepare(benchmarks, params, index)
    if mapped:
        hits, df_rows = _scans_back(scans, scans_df, rows.num_rows)
        timing = {"scan_seconds": 0.0, "scan_cpu_seconds": 0.0, "workers": 0, "shard_scans": len(scans)}
    else:
        hits, df_rows, timing = _scan_corpus(rows.table["text"], p.folder, p.vocab, p.index, params)
    contaminated, fired, x, ch, tmpl_hits = _score(p, params, hits, df_rows, rows)
    ev = _pair_evidence(x, ch, p, contaminated, rows.num_rows)
    hits_json, act_spans, act_examples, act_longest = _locate(rows, p, ev, params.max_hits)
    longest, coverage, matched, n_docs, _ = _summary(x, ch, p, rows.num_rows)
    report = pa.table(
        {
            "id": pa.array(p.ex.ids, pa.string()),
            "benchmark": pa.array(p.ex.benchmarks, pa.string()),
            "contaminated": pa.array(contaminated, pa.bool_()),
            "rule": pa.array(["+".join(f) if f else None for f in fired], pa.string()),
            "longest_match_tokens": pa.array(longest, pa.int64()),
            "coverage": pa.array(np.round(coverage, 6), pa.float64()),
            "matched_ngrams": pa.array(matched, pa.int64()),
            "n_docs": pa.array(n_docs, pa.int64()),
            "hits": pa.array(hits_json, pa.string()),
            "example_tokens": pa.array(p.ex_len, pa.int64()),
            "checked": pa.array(p.checked, pa.bool_()),
            "template_tokens": pa.array(p.ex_len - p.own_len, pa.int64()),
            "template_docs": pa.array(_template_docs(p.index, tmpl_hits, p.ex_len.size, rows.num_rows), pa.int64()),
            "extra": _extra_column(benchmarks),
        },
        schema=REPORT_SCHEMA,
    )
    new_text, drops, removed = _actions(rows, params, act_spans, act_examples, act_longest, p.ex)
    metrics = _metrics(rows.num_rows, rows.num_rows - drops.size, removed, p, contaminated, params, timing)
    metrics.update(index_seconds=round(timings.seconds["index"], 3), seconds=round(timings.total(), 3))
    bench_mb = sum(len(t.encode("utf-8")) for t in p.ex.texts) / 1e6
    if isinstance(rows, TableRows):
        data = _acted(rows.table, 0, new_text, drops)
        metrics.update(_mb_metrics(_text_mb(rows.table), bench_mb, timing))
    else:  # the store reads the metrics once this stream is written (tasks.common.StageResult)
        data = _acted_stream(rows, new_text, drops, lambda mb: metrics.update(_mb_metrics(mb, bench_mb, timing)))
    # The output's shards where the corpus's fall (a pa.Table corpus has none to follow).
    shard_rows = getattr(corpus, "shard_rows", None)
    return StageResult(tables={"data": data, "report": report}, removed=removed, metrics=metrics,
                       segments={"data": parts_left(shard_rows, drops)} if shard_rows else {})


def _check_shards(rows: Pieces) -> None:
    """A sharded corpus: the columns, and ids unique across shards (each ``contamination_scan``
    map task checked its own shard's rows)."""
    require_columns(rows.schema.empty_table(), {"id": pa.string(), "text": pa.string()}, "contamination corpus")
    if rows.num_rows == 0:
        raise WinnowError("contamination corpus: the table is empty (no rows)")
    check_unique_ids(rows.read(["id"])["id"], "contamination corpus")


def _score(p: _Prepared, params: Params, hits: np.ndarray, df_rows: np.ndarray, rows: Pieces | TableRows
           ) -> tuple[np.ndarray, list[list[str]], dict[str, np.ndarray], Any, np.ndarray]:
    """Score each example on the corpus hits: the n-gram rules on n-grams alone (template n-grams
    aside), then short spans and fuzzy alignment. Returns (contaminated, the rules each fired, the
    match rows and their chains, the template hits)."""
    n_rows = rows.num_rows
    hits, tmpl_hits = _split_template_hits(p.index, hits)
    x_all = _expand(p.index, hits)
    x = _with_unique_evidence(_take(x_all, ~x_all["s"] & ~x_all["t"] & ~x_all["f"]), p.index, n_rows)
    ch = _chains(x)
    longest, coverage, matched, n_docs, own_ok = _summary(x, ch, p, n_rows)
    xs, xs["a"] = _capped_rows(x_all, "s", df_rows, p.index, p.ex_cap)
    span_pairs = _short_spans(xs, p, n_rows)
    span_fired = np.zeros(p.ex_len.size, bool)
    span_fired[span_pairs // n_rows] = True
    xf, xf["a"] = _capped_rows(x_all, "f", df_rows, p.index, np.full(p.ex_len.size, params.fuzzy_max_docs))
    xfz, fuzzy_fired = _fuzzy(xf, rows, p, params, n_rows)
    fired = _rules_fired(p, longest, coverage, matched, n_docs, own_ok,
                         {"short_span": span_fired, "fuzzy": fuzzy_fired})
    contaminated = np.array([bool(f) for f in fired], dtype=bool)
    if span_pairs.size or xfz["e"].size:
        # the report, hits and actions also count the k-grams of the documents that fired
        # short_span and the aligned blocks of those that fired fuzzy
        xs = _take(xs, np.isin(xs["e"] * n_rows + xs["row"], span_pairs))
        x = {k: np.concatenate((x[k], xs[k], xfz[k])) for k in x}
        ch = _chains(x)
    return contaminated, fired, x, ch, tmpl_hits


def _metrics(rows_in: int, rows_out: int, removed: pa.Table, p: _Prepared, contaminated: np.ndarray,
             params: Params, timing: dict) -> dict[str, Any]:
    """The stage's summary: rows, actions, examples per benchmark (throughput: :func:`_mb_metrics`)."""
    per_bench: dict[str, dict[str, int]] = {}
    for b, c, k in zip(p.ex.benchmarks, contaminated.tolist(), p.checked.tolist()):
        d = per_bench.setdefault(b, {"examples": 0, "contaminated": 0, "unchecked": 0})
        d["examples"] += 1
        d["contaminated"] += int(c)
        d["unchecked"] += int(not k)
    count = lambda act: int(pc.sum(pc.equal(removed["action"], act)).as_py() or 0) if removed.num_rows else 0  # noqa: E731
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "docs_dropped": count("drop"),
        "docs_masked": count("mask"),
        "examples": int(p.ex_len.size),
        "examples_contaminated": int(contaminated.sum()),
        "unchecked_examples": int((~p.checked).sum()),
        "template_only_examples": int(p.index.all_template.sum()),
        "per_benchmark": per_bench,
        "index_ngrams": p.index.size,
        "workers": timing["workers"],
        "shard_scans": timing.get("shard_scans", 0),  # >0: scanned shard by shard by contamination_scan
        "params": {k: v for k, v in asdict(params).items() if k not in ("per_benchmark",)},
    }


def _text_mb(table: pa.Table) -> float:
    return sum(pc.sum(pc.binary_length(c)).as_py() or 0 for c in table["text"].chunks) / 1e6


def _mb_metrics(mb: float, bench_mb: float, timing: dict) -> dict[str, Any]:
    """The metrics that need the corpus's size in MB: scanned, and per second of the scan."""
    t_scan, cpu_scan = timing["scan_seconds"], timing["scan_cpu_seconds"]
    return {
        "mb_scanned": round(mb, 3),
        "scan_seconds": round(t_scan, 3),
        "mb_per_s": round(mb / t_scan, 2) if t_scan > 0 else None,
        "scan_cpu_seconds": round(cpu_scan, 3),
        "mb_per_cpu_s": round(mb / cpu_scan, 2) if cpu_scan > 0 else None,
        "benchmark_larger_than_corpus": bench_mb > mb,
    }


def _extra_column(benchmarks: pa.Table) -> pa.Array:
    """The benchmark's kept extra fields (``winnow.benchmark_formats``), for the report."""
    if "extra" in benchmarks.column_names:
        return benchmarks["extra"].combine_chunks().cast(pa.string())
    return pa.nulls(benchmarks.num_rows, pa.string())


def _actions(corpus: Pieces | TableRows, params: Params, spans: dict[int, list[tuple[int, int]]],
             examples: dict[int, set[int]], longest: dict[int, int], ex: _Examples
             ) -> tuple[dict[int, str], np.ndarray, pa.Table]:
    """What to do to each document that holds contamination: (masked text by row, rows to drop
    (ascending), the ledger). Reads only those documents."""
    if not spans:
        return {}, np.zeros(0, np.int64), concat_ledgers([])
    rows = sorted(spans)
    docs = corpus.take(np.array(rows, np.int64), ["id", "text"])
    ids = docs["id"].to_pylist()
    evidence, actions, drops = [], [], []
    new_text: dict[int, str] = {}
    for r, t in zip(rows, docs["text"].to_pylist()):
        merged = _merge_spans(spans[r])
        ev = {
            "benchmark_ids": sorted(ex.ids[e] for e in examples[r]),
            "benchmarks": sorted({ex.benchmarks[e] for e in examples[r]}),
            "spans": merged,
            "longest_match": longest[r],
        }
        action = params.action
        if action == "mask":
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
            drops.append(r)
        evidence.append(ev)
        actions.append(action)
    led = concat_ledgers(
        ledger([i for i, a in zip(ids, actions) if a == act], STAGE, act, REASON,
               [ev for ev, a in zip(evidence, actions) if a == act])
        for act in ("drop", "mask", "flag")
    )
    return new_text, np.array(drops, np.int64), led


def _acted(table: pa.Table, start: int, new_text: dict[int, str], drops: np.ndarray) -> pa.Table:
    """Rows ``start ...`` of the corpus (``table``) with their masks applied and drops removed."""
    n = table.num_rows
    mine = [r for r in new_text if start <= r < start + n]  # new_text is in row order
    if mine:
        i = table.column_names.index("text")
        field = table.schema.field("text")
        mask = np.zeros(n, bool)
        mask[np.array(mine) - start] = True
        text = pc.replace_with_mask(table["text"].combine_chunks(), pa.array(mask),
                                    pa.array([new_text[r] for r in mine], field.type))
        table = table.set_column(i, field, text)
    gone = drops[(drops >= start) & (drops < start + n)] - start
    if gone.size:
        keep = np.ones(n, bool)
        keep[gone] = False
        table = table.filter(pa.array(keep))
    return table


def _acted_stream(rows: Pieces, new_text: dict[int, str], drops: np.ndarray,
                  on_end: Callable[[float], None]) -> TableStream:
    """The acted-on corpus, shard by shard, a row group at a time (:func:`shard_stream`: a shard
    the action left alone is the corpus's file, one it acted on may match last night's output, and
    the store links either instead of encoding it again); ``on_end`` gets the MB of text read."""
    mb: dict[int, float] = {}  # by first row: the same once however often the store reads a shard

    def act(start: int, t: pa.Table) -> pa.Table:
        mb[start] = _text_mb(t)
        return _acted(t, start, new_text, drops)

    edited = np.concatenate([np.fromiter(new_text, np.int64, len(new_text)), drops])
    return shard_stream(rows, rows.schema, act, ~shards_hit(rows.starts, edited), rows.schema.names,
                        lambda: on_end(sum(mb.values())))
