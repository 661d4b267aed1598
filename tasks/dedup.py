"""Dedup: drop exact and near-duplicate documents, with a receipt for every one dropped.

Three passes, each over the survivors of the one before:

1. **Exact**: a 128-bit key of the normalised token sequence (NFKC, lower case, punctuation as
   separator, whitespace runs as one; each switchable), i.e. of ``normalize_text(text)``. Texts
   that normalise to nothing (e.g. ``"!!!"``) are keyed on their raw text (xxh3-128) instead, so
   ``"!!!"`` and ``"???"`` are not duplicates of each other.
2. **Near (MinHash-LSH)**: word (or byte) n-gram shingles, MinHash signatures computed by a
   vectorised kernel (:mod:`tasks.minhash`; identical to datasketch's ``affine32`` MinHash given
   our shingle hash), banding chosen so that a pair at the threshold becomes a candidate with
   probability >= ``min_recall``, every candidate verified with exact Jaccard of the shingle sets,
   clusters = connected components (union-find) of the verified pairs.
3. **Semantic** (off by default): MiniLM embeddings, k-means, and inside each cluster a document
   whose cosine to an earlier kept one is >= ``semantic_threshold`` is dropped (SemDeDup).

Which copy survives a cluster is ``keep``: the first seen, the longest, or the highest
``score_column``. With a previous ``index`` (incremental runs), documents seen in earlier runs
always win over new ones, because they have already been published.

The index (``tables["index"]``) has one row per document ever seen (previous index rows first,
unchanged, then this corpus's rows in input order), in :data:`INDEX_COLUMNS`:

==============  ==================================  ==============================================
column          type                                meaning
==============  ==================================  ==============================================
id              string                              document id
seq             int64                               global arrival order (first seen = 0)
status          string                              ``kept`` or the ledger reason it was dropped
exact_hash      fixed_size_binary(16)               exact-duplicate key (big-endian hi, lo)
num_shingles    int32                               shingles in the text (0: nothing to compare)
signature       fixed_size_list<uint32>[num_perm]   MinHash (null for exact duplicates/no shingles)
band_keys       fixed_size_list<uint64>[bands]      LSH band hashes (null where signature is)
shingles        large_list<uint32>                  shingle hashes in text order, for exact
                                                    Jaccard against later documents (null where
                                                    signature is, or with ``index_shingles=False``)
==============  ==================================  ==============================================

The schema metadata key ``winnow.dedup.index`` holds the settings the hashes depend on; an index
built with other settings is rejected (or its band keys recomputed, when only banding differs).

Edge cases, by rule:

* missing ``id``/``text`` column, wrong type, empty table, null id or text, duplicate id, text
  that is not valid UTF-8, an id already in the previous index: :class:`WinnowError` naming it.
* blank text (empty or whitespace only): ``empty_text`` decides (``error`` by default, ``keep``
  passes it through uncompared, ``drop`` removes it with reason ``empty_text``).
* text shorter than ``ngram`` tokens: one shingle of all its tokens.
* very long text (tens of MB): processed like any other; memory is bounded by ``batch_bytes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from tasks import memory
from tasks import minhash as mh
from tasks.common import Normalization, RowRules, StageResult, Timings, check_rows, concat_ledgers, first_true, ledger, track
from tasks.encoding import plain_field
from winnow import pandas_guard
from winnow.errors import WinnowError

STAGE = "dedup"
INDEX_FORMAT = 1
INDEX_META_KEY = b"winnow.dedup.index"
INDEX_COLUMNS = ("id", "seq", "status", "exact_hash", "num_shingles", "signature", "band_keys", "shingles")
_KEEP_POLICIES = ("first", "longest", "score")
_EMPTY_RULES = ("error", "keep", "drop")


@dataclass(frozen=True)
class Params:
    """Settings of the dedup stage.

    Attributes:
        exact: drop exact duplicates of the normalised text. Default on: it is nearly free and
            makes the near-dup pass smaller.
        near: drop near duplicates found by MinHash-LSH. Default on.
        semantic: drop semantic duplicates (MiniLM embeddings, SemDeDup). Default off: it embeds
            every surviving document with a transformer on CPU, which costs far more than the
            other passes together, and it removes paraphrases that are often wanted; turn on for
            crawls full of templated or machine-rewritten pages. Not incremental: new documents
            are compared with each other only.
        threshold: Jaccard of the shingle sets at or above which two documents are near
            duplicates. 0.8 is the usual choice for 5-gram word shingles (Lee et al. 2021 use
            0.8); raise to 0.9 to drop only light edits, lower to 0.7 for aggressive dedup.
        num_perm: MinHash permutations. 128 gives a standard error of 0.035 on an estimate at
            J=0.8; the estimate is only used to find candidates, which are then verified exactly,
            so more permutations buy little.
        ngram: shingle length in tokens (or bytes with ``shingle="char"``). 5 words is the
            standard for prose; use 3 for very short texts (tweets, titles).
        shingle: ``"word"`` (n-grams of normalised words) or ``"char"`` (n-grams of the UTF-8
            bytes of the normalised text; use ngram 8-12). Word is the default and the faster.
        seed: seed of the MinHash permutations (datasketch's default is 1; same seed, same
            signatures as datasketch given our shingle hash).
        min_recall: lower bound for P(candidate | J = threshold) when choosing (bands, rows).
            0.9 by default; pairs above the threshold are found with higher probability (0.99
            at J=0.85 for t=0.8).
        bands, rows: fixed banding; 0 (default) chooses from ``threshold`` and ``min_recall``.
        verify: check each candidate pair with exact Jaccard of the shingle sets (default on;
            off accepts the MinHash estimate, faster but with ~3% wrong calls near the threshold).
        keep: which copy of a cluster survives: ``"first"`` (input order; default, stable and
            cheap), ``"longest"`` (most characters; keeps the most complete version), or
            ``"score"`` (highest ``score_column``, e.g. a quality score).
        score_column: numeric column for ``keep="score"``; null scores rank last.
        nfkc, lowercase, strip_punctuation, collapse_whitespace: text normalisation before
            hashing and shingling (see :class:`tasks.common.Normalization`); all on by default
            so reformatted copies match.
        empty_text: blank texts (empty or whitespace only): ``"error"`` (default; the corpus is
            probably mis-parsed), ``"keep"`` (pass through, never compared), ``"drop"`` (remove,
            ledger reason ``empty_text``).
        max_bucket: an LSH bucket up to this size yields all its pairs, a larger one a star and
            a chain (linear in its size). 32 by default; raise if recall on big clusters of
            near-identical templates matters more than time.
        batch_bytes: text bytes featurised at once; bounds the temporary arrays (about 3x this
            at peak) whatever the corpus size (default 64 MB).
        index_shingles: store each document's shingle set in the index so later incremental
            runs can verify new-vs-old pairs exactly (about 4 bytes per shingle). Off: new-vs-old
            pairs are judged on the MinHash estimate.
        semantic_threshold: cosine similarity at or above which two documents in one k-means
            cluster are semantic duplicates. 0.95 keeps paraphrases with different facts apart
            (MiniLM paraphrases score ~0.9-0.95, unrelated text ~0.0-0.2).
        semantic_clusters: k-means clusters; 0 picks ``max(1, round(sqrt(n)))``, which keeps the
            per-cluster pairwise work at about n^1.5 in total.
        semantic_batch_size: texts per MiniLM forward pass (64: fastest on 2 CPU cores).
    """

    exact: bool = True
    near: bool = True
    semantic: bool = False
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    shingle: str = "word"
    seed: int = 1
    min_recall: float = 0.9
    bands: int = 0
    rows: int = 0
    verify: bool = True
    keep: str = "first"
    score_column: str = ""
    nfkc: bool = True
    lowercase: bool = True
    strip_punctuation: bool = True
    collapse_whitespace: bool = True
    empty_text: str = "error"
    max_bucket: int = 32
    batch_bytes: int = 64 << 20
    index_shingles: bool = True
    semantic_threshold: float = 0.95
    semantic_clusters: int = 0
    semantic_batch_size: int = 64

    def normalization(self) -> Normalization:
        """The :class:`Normalization` these params describe."""
        return Normalization(self.nfkc, self.lowercase, self.strip_punctuation, self.collapse_whitespace)

    def banding(self) -> mh.Banding:
        """The (bands, rows) in use: fixed by ``bands``/``rows`` or chosen from the threshold."""
        if self.bands and self.rows:
            b, r = self.bands, self.rows
            return mh.Banding(b, r, self.threshold, 1.0 - (1.0 - self.threshold**r) ** b)
        return mh.choose_banding(self.threshold, self.num_perm, self.min_recall)

    def check(self) -> None:
        """Raise :class:`WinnowError` naming the first invalid setting."""
        def bad(name: str, why: str) -> WinnowError:
            return WinnowError(f"dedup.{name} = {getattr(self, name)!r}: {why}")

        if self.keep not in _KEEP_POLICIES:
            raise bad("keep", f"expected one of {', '.join(_KEEP_POLICIES)}")
        if self.keep == "score" and not self.score_column:
            raise bad("score_column", "keep='score' needs the name of a numeric column")
        if self.empty_text not in _EMPTY_RULES:
            raise bad("empty_text", f"expected one of {', '.join(_EMPTY_RULES)}")
        if self.shingle not in ("word", "char"):
            raise bad("shingle", "expected 'word' or 'char'")
        if not 0.0 < self.threshold <= 1.0:
            raise bad("threshold", "expected 0 < threshold <= 1")
        if not 0.0 < self.semantic_threshold <= 1.0:
            raise bad("semantic_threshold", "expected 0 < semantic_threshold <= 1")
        if not 0.0 < self.min_recall < 1.0:
            raise bad("min_recall", "expected 0 < min_recall < 1")
        if self.num_perm < 1 or self.ngram < 1 or self.max_bucket < 2 or self.batch_bytes < 1:
            raise WinnowError("dedup: num_perm, ngram and batch_bytes must be >= 1 and max_bucket >= 2")
        if (self.bands > 0) != (self.rows > 0) or self.bands * self.rows > self.num_perm or min(self.bands, self.rows) < 0:
            raise bad("bands", f"bands and rows must both be 0 or both set with bands*rows <= num_perm ({self.num_perm})")

    def index_settings(self) -> dict[str, Any]:
        """The settings an index's hashes depend on (stored in its schema metadata)."""
        return {
            "format": INDEX_FORMAT,
            "scheme": "affine32",
            "shingle_hash": "fnv1a64-fmix64-poly-fmix64-hi32",
            "num_perm": self.num_perm,
            "seed": self.seed,
            "ngram": self.ngram,
            "shingle": self.shingle,
            "normalization": [self.nfkc, self.lowercase, self.strip_punctuation, self.collapse_whitespace],
        }


# --------------------------------------------------------------------------- features


@dataclass
class Features:
    """Per-document hashes of one corpus (arrays aligned with its rows)."""

    exact: np.ndarray  # uint64[n, 2]
    blank: np.ndarray  # bool[n]: empty or whitespace-only text
    num_units: np.ndarray  # int64[n]: tokens (bytes for char shingles) after normalisation
    sigs: np.ndarray  # uint32[n, k]
    bands: np.ndarray  # uint64[n, b]
    shingles: np.ndarray  # uint32[S]: shingle hashes in document order
    shingle_offsets: np.ndarray  # int64[n + 1]

    @property
    def num_shingles(self) -> np.ndarray:
        return np.diff(self.shingle_offsets)

    # The passes below read features only through these three accessors, so a disk-backed
    # implementation (tasks.dedup_files.ShardedFeatures) can stand in for this in-memory one.
    def band(self, j: int) -> np.ndarray:
        """Band ``j``'s key for every row (uint64[n])."""
        return self.bands[:, j]

    def signatures_of(self, rows: np.ndarray) -> np.ndarray:
        """Signatures of ``rows`` (uint32[len(rows), k])."""
        return self.sigs[rows]

    def shingles_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of ``rows`` as (values, CSR offsets)."""
        return _take_csr(self.shingles, self.shingle_offsets, rows)


def featurize(texts: pa.Array | pa.ChunkedArray, params: Params, banding: mh.Banding, use_numba: bool = True) -> Features:
    """Exact keys, MinHash signatures, band keys and shingle hashes of ``texts``.

    Works in batches of at most ``params.batch_bytes`` of text, so intermediate arrays stay
    bounded whatever the corpus size (one huge text is a batch of its own).
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    n = len(texts)
    cum = np.cumsum(pc.binary_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
    bounds = [0]
    while bounds[-1] < n:
        start = bounds[-1]
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + params.batch_bytes, side="right"))
        bounds.append(max(stop, start + 1))
    a, b = mh.permutations(params.num_perm, params.seed)
    if len(bounds) == 2:
        return _featurize_batch(texts, params, banding, a, b, use_numba)
    # Fill preallocated arrays batch by batch (concatenating at the end would copy them again).
    exact = np.empty((n, 2), np.uint64)
    blank = np.empty(n, bool)
    num_units = np.empty(n, np.int64)
    sigs = np.empty((n, params.num_perm), np.uint32)
    bands = np.empty((n, banding.bands), np.uint64)
    shingles, offs = [], [np.zeros(1, np.int64)]
    for s, e in track(list(zip(bounds[:-1], bounds[1:])), desc="minhash batches"):
        p = _featurize_batch(texts.slice(s, e - s), params, banding, a, b, use_numba)
        exact[s:e], blank[s:e], num_units[s:e], sigs[s:e], bands[s:e] = p.exact, p.blank, p.num_units, p.sigs, p.bands
        shingles.append(p.shingles)
        offs.append(p.shingle_offsets[1:] + offs[-1][-1])
    return Features(exact, blank, num_units, sigs, bands, np.concatenate(shingles), np.concatenate(offs))


def _featurize_batch(texts: pa.Array, params: Params, banding: mh.Banding, a: np.ndarray, b: np.ndarray,
                     use_numba: bool) -> Features:
    folded = mh.fold_case(texts, params.nfkc, params.lowercase)
    if params.shingle == "word":
        wf = mh.word_features(folded, params.strip_punctuation, params.ngram, a, b, banding.bands, banding.rows,
                              use_numba)
        h, keys = wf.hashes, wf.band_keys
    else:
        units, unit_off = mh.char_units(folded, params.strip_punctuation, params.collapse_whitespace)
        h = mh.document_hashes(units, unit_off, params.ngram, a, b, use_numba)
        keys = mh.band_keys(h.sigs, banding.bands, banding.rows)
    blank = pc.or_(pc.utf8_is_space(texts), pc.equal(pc.binary_length(texts), 0)).to_numpy(zero_copy_only=False)
    # Texts with no word characters ("!!!", "---") normalise to nothing: key those on their raw
    # text, so they only match identical copies.
    for i in np.flatnonzero((h.num_units == 0) & ~blank):
        d = xxhash.xxh3_128_intdigest(b"\x00raw\x00" + texts[int(i)].as_py().encode("utf-8"))
        h.exact[i] = (d >> 64, d & ((1 << 64) - 1))
    return Features(h.exact, blank, h.num_units, h.sigs, keys, h.shingles, h.shingle_offsets)


def features_table(feats: Features) -> pa.Table:
    """``feats`` as an Arrow table (one row per document): the output of a per-shard map task.
    Its hash columns are marked plain (:mod:`tasks.encoding`): compressing them only costs time."""
    k, b = feats.sigs.shape[1], feats.bands.shape[1]
    columns = {
        "exact_hi": pa.array(feats.exact[:, 0]), "exact_lo": pa.array(feats.exact[:, 1]),
        "blank": pa.array(feats.blank), "num_units": pa.array(feats.num_units.astype(np.int64)),
        # Read without the shingles themselves by the bounded-memory reduce (tasks.dedup_reduce).
        "num_shingles": pa.array(feats.num_shingles.astype(np.int32)),
        "sigs": pa.FixedSizeListArray.from_arrays(pa.array(feats.sigs.ravel(), pa.uint32()), k),
        "bands": pa.FixedSizeListArray.from_arrays(pa.array(feats.bands.ravel(), pa.uint64()), b),
        "shingles": pa.LargeListArray.from_arrays(pa.array(feats.shingle_offsets, pa.int64()),
                                                  pa.array(feats.shingles, pa.uint32())),
    }
    hashes = {"exact_hi", "exact_lo", "sigs", "bands", "shingles"}
    schema = pa.schema([plain_field(n, c.type) if n in hashes else pa.field(n, c.type) for n, c in columns.items()])
    return pa.table(list(columns.values()), schema=schema)


def features_from_tables(parts: list[pa.Table]) -> Features:
    """The in-memory :class:`Features` of the shards' :func:`features_table` outputs, in row order:
    the same arrays :func:`featurize` computes on the whole corpus (it is a per-row function)."""
    t = pa.concat_tables(parts).combine_chunks()
    col = lambda name: t.column(name).chunk(0) if t.num_rows else t.column(name).combine_chunks()  # noqa: E731
    sigs, bands, shingles = col("sigs"), col("bands"), col("shingles")
    n = t.num_rows
    offsets = shingles.offsets.to_numpy() - (shingles.offsets[0].as_py() if n else 0)
    return Features(
        exact=np.stack([col("exact_hi").to_numpy(), col("exact_lo").to_numpy()], axis=1),
        blank=col("blank").to_numpy(zero_copy_only=False),
        num_units=col("num_units").to_numpy(),
        sigs=sigs.flatten().to_numpy().reshape(n, sigs.type.list_size),
        bands=bands.flatten().to_numpy().reshape(n, bands.type.list_size),
        shingles=shingles.flatten().to_numpy(),
        shingle_offsets=offsets.astype(np.int64),
    )


# --------------------------------------------------------------------------- input checks


def _check_corpus(corpus: pa.Table, params: Params, where: str = "dedup corpus", check_ids: bool = True) -> None:
    check_rows(corpus, where, RowRules(unique_ids=check_ids, utf8=True))
    if params.keep == "score":
        col = params.score_column
        if col not in corpus.column_names:
            raise WinnowError(f"dedup: score_column '{col}' is not a column (have: {', '.join(corpus.column_names)})")
        t = corpus.schema.field(col).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise WinnowError(f"dedup: score_column '{col}' has type {t}, expected a numeric type")


# --------------------------------------------------------------------------- previous index


@dataclass
class _Previous:
    table: pa.Table
    ids: pa.ChunkedArray
    seq: np.ndarray
    kept: np.ndarray  # bool
    exact: np.ndarray  # uint64[N, 2]
    has_sig: np.ndarray  # bool
    bands_recomputed: bool


def _load_index(index: pa.Table | None, params: Params, banding: mh.Banding) -> _Previous | None:
    if index is None or index.num_rows == 0:
        return None
    missing = [c for c in INDEX_COLUMNS if c not in index.column_names]
    if missing:
        raise WinnowError(f"dedup index: missing column(s) {', '.join(missing)}; pass the 'index' table a dedup run returned")
    meta = json.loads((index.schema.metadata or {}).get(INDEX_META_KEY, b"{}"))
    want = params.index_settings()
    diff = [k for k in want if meta.get(k) != want[k]]
    if diff:
        raise WinnowError(
            "dedup index: built with other settings (" + ", ".join(f"{k}={meta.get(k)!r}, now {want[k]!r}" for k in diff)
            + "); rebuild it by running dedup on the whole corpus without an index"
        )
    recompute = (meta.get("bands"), meta.get("rows")) != (banding.bands, banding.rows)
    exact = _fsb16_to_u64(index.column("exact_hash"))
    return _Previous(
        table=index,
        ids=index.column("id"),
        seq=index.column("seq").to_numpy(),
        kept=pc.equal(index.column("status"), "kept").to_numpy(zero_copy_only=False),
        exact=exact,
        has_sig=pc.is_valid(index.column("signature")).to_numpy(zero_copy_only=False),
        bands_recomputed=recompute,
    )


def _fsb16_to_u64(col: pa.ChunkedArray) -> np.ndarray:
    parts = []
    for ch in col.chunks:
        buf = np.frombuffer(ch.buffers()[1], dtype=">u8")[2 * ch.offset : 2 * (ch.offset + len(ch))]
        parts.append(buf.astype(np.uint64).reshape(-1, 2))
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.uint64)


def _u64_to_fsb16(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(x), [None, pa.py_buffer(x.astype(">u8").tobytes())])


def _fixed_list_rows(col: pa.ChunkedArray, rows: np.ndarray, width: int, dtype: type) -> np.ndarray:
    """Rows ``rows`` of a fixed_size_list column as a dense [len(rows), width] array."""
    taken = col.take(pa.array(rows, pa.int64())).combine_chunks()
    if taken.null_count:
        taken = pc.fill_null(taken, pa.scalar([0] * width, taken.type))
    flat = taken.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return flat.reshape(len(rows), width)


def _fixed_list_matrix(col: pa.ChunkedArray, width: int, dtype: type) -> np.ndarray:
    """A whole fixed_size_list column as a dense [n, width] array (null rows hold zeros or junk;
    zero-copy for a single chunk)."""
    parts = []
    for ch in col.chunks:
        vals = ch.values.to_numpy(zero_copy_only=False)[ch.offset * width : (ch.offset + len(ch)) * width]
        parts.append(vals.astype(dtype, copy=False).reshape(len(ch), width))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _list_rows(col: pa.ChunkedArray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    taken = col.take(pa.array(rows, pa.int64())).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(taken), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=off[1:])
    return taken.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False), off


# --------------------------------------------------------------------------- clustering


def _components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member) of each of ``n`` nodes given undirected
    edges: union-find by hooking each edge's larger root onto the smaller, then pointer jumping,
    repeated until every edge joins one root (a few rounds; vectorised)."""
    parent = np.arange(n)
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    while True:
        while True:  # pointer jumping: every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        pl, pr = parent[left], parent[right]
        differ = pl != pr
        if not differ.any():
            return parent
        lo, hi = np.minimum(pl[differ], pr[differ]), np.maximum(pl[differ], pr[differ])
        np.minimum.at(parent, hi, lo)


def _keepers(labels: np.ndarray, cls: np.ndarray, policy: np.ndarray, order: np.ndarray) -> np.ndarray:
    """For each node, the node that survives its group: smallest (cls, policy, order)."""
    perm = np.lexsort((order, policy, cls, labels))
    first = np.ones(len(perm), bool)
    first[1:] = labels[perm][1:] != labels[perm][:-1]
    group_keeper = perm[first]  # in label order of sorted labels
    uniq = labels[perm][first]
    return group_keeper[np.searchsorted(uniq, labels)]


# --------------------------------------------------------------------------- run


def precheck(corpus: pa.Table, params: Params) -> None:
    """The checks :func:`run` would fail on, cheap enough to make before anything is written.

    Callers (the CLI) run it on the ingested corpus so that bad settings or blank texts fail
    before a single store entry is committed.
    """
    params.check()
    _check_corpus(corpus, params)
    if params.empty_text == "error":
        texts = corpus["text"]
        blank = pc.or_(pc.utf8_is_space(texts), pc.equal(pc.binary_length(texts), 0)).to_numpy(zero_copy_only=False)
        if blank.any():
            raise _blank_error(blank, corpus["id"].to_pylist())


def _blank_error(blank: np.ndarray, id_list: list[str]) -> WinnowError:
    row = int(np.flatnonzero(blank)[0])
    return WinnowError(f"dedup corpus: text of id {id_list[row]!r} (row {row}) is blank ({int(blank.sum())} "
                       "blank text(s) in all); set dedup.empty_text to 'keep' or 'drop', or remove them")


def run(corpus: Any, params: Params = Params(), index: pa.Table | None = None,
        features: list[Any] | None = None, spill_dir: Path | None = None) -> StageResult:
    """Drop exact, near and (optionally) semantic duplicates from ``corpus``.

    Args:
        corpus: rows with ``id`` (unique string) and ``text`` (string); other columns pass through.
            A table, or a store's :class:`~storage.store.ShardedTable`: with ``features`` of every
            shard, no ``index`` and no semantic pass, the reduce then runs in bounded memory
            (:mod:`tasks.dedup_reduce`, partitions under ``spill_dir``) with the same result.
        params: see :class:`Params`.
        index: the ``tables["index"]`` of an earlier run, for incremental dedup: this corpus is
            checked against every document seen before, and earlier documents always survive.
        features: the corpus's features already computed shard by shard (the ``dedup_map`` stage,
            :func:`features_table`), in row order; without them they are computed here. The
            result is the same either way, so they are a cache hint, not part of the fingerprint.

    Returns:
        ``tables["data"]`` (surviving rows, input order and schema), ``tables["index"]`` (every
        document seen, see the module docstring), the ledger of dropped rows (reason
        ``exact_duplicate``, ``near_duplicate``, ``semantic_duplicate`` or ``empty_text``; evidence
        ``duplicate_of``, ``cluster_id``, ``cluster_size``, ``jaccard_estimated``,
        ``jaccard_verified``, ...), and metrics.
    """
    params.check()
    if not isinstance(corpus, pa.Table):  # a store handle: stream it if the map tasks allow
        if features and index is None and not params.semantic and spill_dir is not None:
            from tasks import dedup_reduce

            return dedup_reduce.run(corpus, features, params, spill_dir)
        corpus = corpus.read()
    if features and not isinstance(features[0], pa.Table):
        features = [f.read() for f in features]
    timings = Timings()
    _check_corpus(corpus, params)
    banding = params.banding()
    prev = _load_index(index, params, banding)
    n = corpus.num_rows
    ids = corpus.column("id")
    id_list = ids.to_pylist()
    if prev is not None:
        # Probe the old ids against a hash set of the new ones (cheaper than the reverse).
        if pc.any(pc.is_in(prev.ids, value_set=ids.combine_chunks())).as_py():
            seen = pc.is_in(ids, value_set=prev.ids.combine_chunks())
            row = first_true(seen)
            raise WinnowError(f"dedup: id {id_list[row]!r} (row {row}) is already in the dedup index from an earlier run; "
                              "pass only new documents, or give re-ingested ones new ids")
    n_old = 0 if prev is None else prev.table.num_rows
    seq0 = 0 if prev is None else int(prev.seq.max()) + 1

    with timings.phase("featurize"):
        feats = features_from_tables(features) if features else featurize(corpus.column("text"), params, banding)
    if len(feats.blank) != n:
        raise WinnowError(f"dedup: {len(feats.blank)} rows of shard features for {n} corpus rows")

    policy = _policy_key(corpus, params)
    texts = corpus.column("text")
    dec = decide(feats, id_list, policy, params, banding, prev, seq0,
                 texts_of=lambda rows: texts.take(pa.array(rows, pa.int64())).to_pylist())
    status, evidence = dec.status, dec.evidence
    timings.seconds.update(dec.timings)

    keep_mask = status == "kept"
    if params.empty_text == "keep":
        keep_mask |= feats.blank
    data = corpus.filter(pa.array(keep_mask))
    dropped = np.flatnonzero(~keep_mask)
    removed = ledger([id_list[i] for i in dropped], STAGE, "drop", [status[i] for i in dropped], [evidence[int(i)] for i in dropped])

    with timings.phase("index"):
        new_index = _index_table(prev, corpus, feats, status, params, banding, seq0)
    timings.seconds["total"] = timings.total()

    reasons = ("exact_duplicate", "near_duplicate", "semantic_duplicate", "empty_text")
    metrics = {
        "rows_in": n,
        "rows_out": data.num_rows,
        "removed": {r: int((status == r).sum()) for r in reasons},
        **dec.metrics,
        "banding": {"bands": banding.bands, "rows": banding.rows, "threshold": banding.threshold,
                    "p_candidate_at_threshold": round(banding.p_at_threshold, 4)},
        "index": {"rows_before": n_old, "rows_after": new_index.num_rows,
                  "band_keys_recomputed": bool(prev is not None and prev.bands_recomputed)},
        "kernel": "numba" if mh.HAVE_NUMBA else "numpy",
        "timings_s": timings.rounded(),
        "docs_per_s": round(n / max(timings.seconds["total"], 1e-9), 1),
    }
    return StageResult(tables={"data": data, "index": new_index}, removed=concat_ledgers([removed]), metrics=metrics)


@dataclass
class Decisions:
    """What :func:`decide` concluded for each row of a corpus."""

    status: np.ndarray  # object[n]: "kept" or the reason the row is dropped
    evidence: dict[int, dict[str, Any]]  # row -> ledger evidence, for dropped rows
    metrics: dict[str, Any]
    timings: dict[str, float]


def decide(feats: Features, id_list: list[str], policy: np.ndarray, params: Params, banding: mh.Banding,
           prev: _Previous | None = None, seq0: int = 0, texts_of: Any = None) -> Decisions:
    """Run the blank-text rule and the exact, near and semantic passes over featurised rows.

    ``feats`` is anything with Features' arrays (``exact``, ``blank``, ``num_shingles``) and
    accessors (``band``, ``signatures_of``, ``shingles_of``); ``policy`` ranks rows for
    ``keep`` (smaller is preferred); ``texts_of(rows)`` returns texts (semantic pass only).
    """
    n = len(id_list)
    timings = Timings()
    if params.empty_text == "error" and feats.blank.any():
        raise _blank_error(feats.blank, id_list)
    # One shared "kept" object: np.full would copy the string into every row (58 MB per 1M rows).
    status = np.empty(n, dtype=object)
    status[:] = "kept"
    evidence: dict[int, dict[str, Any]] = {}
    if params.empty_text == "drop":
        for i in np.flatnonzero(feats.blank):
            status[i] = "empty_text"
            evidence[int(i)] = {"rule": "text is empty or whitespace only"}
    active = ~feats.blank  # rows still in play

    n_exact_clusters = 0
    with timings.phase("exact"):
        if params.exact:
            n_exact_clusters = _exact_pass(feats, prev, active, policy, status, evidence, id_list, seq0)
            active &= status == "kept"
        memory.release()  # the pass's sort keys and labels: freed, but kept by the heap otherwise

    near_metrics: dict[str, Any] = {}
    if params.near:
        with timings.phase("near"):
            near_metrics = _near_pass(feats, prev, active, policy, status, evidence, id_list, params, banding, seq0)
            active &= status == "kept"

    sem_metrics: dict[str, Any] = {}
    if params.semantic:
        # transformers and scikit-learn import pandas, which `winnow dedup` otherwise keeps out.
        with timings.phase("semantic"), pandas_guard.allowed():
            sem_metrics = _semantic_pass(texts_of, active, policy, status, evidence, id_list, params)
    metrics = {"blank_texts": int(feats.blank.sum()), "exact_clusters": n_exact_clusters, "near": near_metrics,
               "semantic": sem_metrics}
    return Decisions(status, evidence, metrics, timings.seconds)


def _policy_key(corpus: pa.Table, params: Params) -> np.ndarray:
    """float64 per row, smaller = preferred, for :func:`_keepers` (ties go to the earlier row)."""
    n = corpus.num_rows
    if params.keep == "first":
        return np.zeros(n)
    if params.keep == "longest":
        return -pc.utf8_length(corpus.column("text")).to_numpy(zero_copy_only=False).astype(np.float64)
    score = pc.cast(corpus.column(params.score_column), pa.float64())
    return -pc.fill_null(score, -np.inf).to_numpy(zero_copy_only=False)


def _exact_pass(feats: Features, prev: _Previous | None, active: np.ndarray, policy: np.ndarray,
                status: np.ndarray, evidence: dict[int, dict[str, Any]], id_list: list[str], seq0: int) -> int:
    """Mark exact duplicates among the active rows (and against the previous index)."""
    rows = np.flatnonzero(active)
    keys = feats.exact[rows]
    old_rows = np.zeros(0, np.int64)
    if prev is not None:
        # Only old docs whose hash occurs among the new ones matter (hash-set scan, O(old)).
        hit = pc.is_in(pa.array(prev.exact[:, 0]), value_set=pa.array(np.unique(keys[:, 0]))).to_numpy(zero_copy_only=False)
        old_rows = np.flatnonzero(hit)
    all_keys = np.concatenate([prev.exact[old_rows] if prev is not None else np.zeros((0, 2), np.uint64), keys])
    m_old = len(old_rows)
    if len(all_keys) == 0:
        return 0
    # Group equal (hi, lo) keys: sort once, label runs (np.unique(axis=0) is ~10x slower).
    perm = np.lexsort((all_keys[:, 1], all_keys[:, 0]))
    sk = all_keys[perm]
    new_group = np.r_[True, (sk[1:] != sk[:-1]).any(axis=1)]
    labels = np.empty(len(perm), np.int64)
    labels[perm] = np.cumsum(new_group) - 1
    counts = np.bincount(labels)
    if (counts > 1).sum() == 0:
        return 0
    cls = np.concatenate([np.where(prev.kept[old_rows], 0, 1) if m_old else np.zeros(0, np.int64), np.full(len(rows), 2)])
    pol = np.concatenate([np.zeros(m_old), policy[rows]])
    order = np.concatenate([prev.seq[old_rows] if m_old else np.zeros(0, np.int64), seq0 + rows])
    keeper = _keepers(labels, cls, pol, order)
    sizes = counts[labels]
    cluster_no = _cluster_numbers(labels, order, sizes > 1)
    losers = np.flatnonzero((keeper != np.arange(len(keeper))) & (np.arange(len(keeper)) >= m_old))
    # Plain Python values for the per-row loop (numpy scalar access costs ~10x more).
    for w, i, k, size, number, hi, lo in zip(losers.tolist(), rows[losers - m_old].tolist(), keeper[losers].tolist(),
                                             sizes[losers].tolist(), cluster_no[losers].tolist(),
                                             all_keys[losers, 0].tolist(), all_keys[losers, 1].tolist()):
        status[i] = "exact_duplicate"
        evidence[i] = {
            "duplicate_of": prev.ids[int(old_rows[k])].as_py() if k < m_old else id_list[int(rows[k - m_old])],
            "cluster_id": f"exact-{seq0}-{number}",
            "cluster_size": size,
            "jaccard_estimated": 1.0,
            "jaccard_verified": 1.0,
            "exact_key": f"{hi:016x}{lo:016x}",
            "duplicate_of_earlier_run": k < m_old,
        }
    n_clusters = int(np.unique(labels[np.flatnonzero(sizes > 1)]).size)
    return n_clusters


def _cluster_numbers(labels: np.ndarray, order: np.ndarray, in_cluster: np.ndarray) -> np.ndarray:
    """0-based cluster number per node, numbered by each cluster's earliest member (stable)."""
    first = np.full(labels.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, labels, order)
    ranks = np.full(labels.max() + 1, -1, np.int64)
    clustered = np.unique(labels[in_cluster])
    ranks[clustered[np.argsort(first[clustered], kind="stable")]] = np.arange(len(clustered))
    return ranks[labels]


def _near_pass(feats: Features, prev: _Previous | None, active: np.ndarray, policy: np.ndarray,
               status: np.ndarray, evidence: dict[int, dict[str, Any]], id_list: list[str], params: Params,
               banding: mh.Banding, seq0: int) -> dict[str, Any]:
    """Mark near duplicates among active rows (and against the previous index), in four phases:
    old documents that may match, candidate pairs by band key, pairs scored (verified), clusters
    and their evidence."""
    rows = np.flatnonzero(active & (feats.num_shingles > 0))
    old_rows, old_bands = _old_candidates(feats, prev, rows, params, banding)
    m_old = len(old_rows)
    nw = m_old + len(rows)
    metrics: dict[str, Any] = {"candidate_pairs": 0, "verified_pairs": 0, "clusters": 0, "old_docs_matched": int(m_old)}
    if nw < 2:
        return metrics
    left, right = _candidate_pairs(feats, rows, old_bands, m_old, params, banding)
    metrics["candidate_pairs"] = int(len(left))
    scorer = _PairScorer(feats, prev, rows, old_rows, params, getattr(feats, "memory_bytes", None))
    est, ver = scorer.score(left, right)
    score = np.where(np.isnan(ver), est, ver)
    edge = score >= params.threshold
    metrics["verified_pairs"] = int(edge.sum())
    if not edge.any():
        return metrics
    working = _Working(rows, old_rows, prev, id_list, seq0)
    metrics["clusters"] = _mark_clusters(working, scorer, left[edge], right[edge], score[edge], policy, status,
                                         evidence, params)
    if scorer.budget is not None:
        metrics["score_chunks"] = scorer.chunks
    return metrics


def _old_candidates(feats: Features, prev: _Previous | None, rows: np.ndarray, params: Params,
                    banding: mh.Banding) -> tuple[np.ndarray, np.ndarray]:
    """Old docs that share at least one band key with a new doc (hash-set scan per band, O(old))."""
    old_rows = np.zeros(0, np.int64)
    old_bands = np.zeros((0, banding.bands), np.uint64)
    if prev is None or not len(rows):
        return old_rows, old_bands
    if prev.bands_recomputed:
        cand = np.flatnonzero(prev.has_sig)
        all_old = mh.band_keys(_fixed_list_rows(prev.table.column("signature"), cand, params.num_perm, np.uint32),
                               banding.bands, banding.rows)
    else:  # zero-copy view; rows without a signature are masked out below
        cand = np.arange(len(prev.has_sig))
        all_old = _fixed_list_matrix(prev.table.column("band_keys"), banding.bands, np.uint64)
    # All bands at once (a band key hashes its band number too, so keys of different bands
    # never meet): a 2^22-bit table of the new keys' top bits rules out almost every old
    # key with one gather, and only the few survivors are checked exactly.
    new_keys = np.unique(np.concatenate([feats.band(band)[rows] for band in range(banding.bands)]))
    table = np.zeros(1 << 22, bool)
    table[new_keys >> np.uint64(42)] = True
    flat = all_old.reshape(-1)
    maybe = np.flatnonzero(table[flat >> np.uint64(42)])
    hit = np.zeros(flat.shape[0], bool)
    hit[maybe] = np.isin(flat[maybe], new_keys)
    hit = hit.reshape(-1, banding.bands).any(axis=1) & prev.has_sig[cand]
    return cand[hit], all_old[hit]


def _candidate_pairs(feats: Features, rows: np.ndarray, old_bands: np.ndarray, m_old: int, params: Params,
                     banding: mh.Banding) -> tuple[np.ndarray, np.ndarray]:
    """Equal band keys, band by band, then distinct pairs of working ids (old docs first); never
    old-old (settled earlier). Only one band's keys are in memory at a time."""
    if m_old == 0 and hasattr(feats, "candidate_pairs"):  # features on disk partition the keys themselves
        return feats.candidate_pairs(rows, params.max_bucket)
    docs = np.arange(m_old + len(rows))
    lefts, rights = [], []
    for band in range(banding.bands):
        keys = np.concatenate([old_bands[:, band], feats.band(band)[rows]])
        left, right = mh.pairs_sharing_keys(keys, docs, params.max_bucket)
        keep = right >= m_old
        lefts.append(left[keep])
        rights.append(right[keep])
    return mh.unique_pairs(np.concatenate(lefts), np.concatenate(rights), len(docs))


@dataclass
class _PairFeatures:
    """Signatures and shingle sets of the documents in some candidate pair (``inv``: their working ids)."""

    inv: np.ndarray
    sigs: np.ndarray
    sets: np.ndarray
    set_off: np.ndarray
    verifiable: np.ndarray  # old documents indexed without shingles cannot be verified


def _pair_features(feats: Features, prev: _Previous | None, rows: np.ndarray, old_rows: np.ndarray,
                   left: np.ndarray, right: np.ndarray, params: Params) -> _PairFeatures:
    m_old = len(old_rows)
    inv = np.unique(np.concatenate([left, right]))
    inv_old, inv_new = inv[inv < m_old], inv[inv >= m_old]
    new_rows = rows[inv_new - m_old]
    if len(inv_old):
        old_sigs = _fixed_list_rows(prev.table.column("signature"), old_rows[inv_old], params.num_perm, np.uint32)
        old_sets, old_off = mh.sort_unique(*_list_rows(prev.table.column("shingles"), old_rows[inv_old]))
    else:
        old_sigs = np.zeros((0, params.num_perm), np.uint32)
        old_sets, old_off = np.zeros(0, np.uint32), np.zeros(1, np.int64)
    new_sets, new_off = mh.sort_unique(*feats.shingles_of(new_rows))
    set_off = np.concatenate([old_off, new_off[1:] + old_off[-1]])
    return _PairFeatures(inv, np.concatenate([old_sigs, feats.signatures_of(new_rows)]),
                         np.concatenate([old_sets, new_sets]), set_off, np.diff(set_off) > 0)


class _PairScorer:
    """Jaccard of pairs of working ids: estimated from signatures, and verified on shingle sets
    (NaN where a set is unknown or ``verify`` is off). Pairs are scored a chunk at a time, each
    chunk's signatures and sets read together, so a reduce over a corpus larger than memory holds
    at most about ``budget`` bytes of them (all at once when ``budget`` is None)."""

    #: Bytes held per document while its pairs are scored: the signature, and each shingle read,
    #: sorted and de-duplicated (three uint32 copies).
    SHINGLE_BYTES = 12

    def __init__(self, feats: Features, prev: _Previous | None, rows: np.ndarray, old_rows: np.ndarray,
                 params: Params, budget: int | None) -> None:
        self.feats, self.prev, self.rows, self.old_rows, self.params, self.budget = feats, prev, rows, old_rows, params, budget
        self.chunks = 0  # how the work was cut (reported by the bounded reduce), never the result
        # The features of a scoring done in one chunk, which fit the budget: the evidence pass
        # (each loser with its survivor, all rows of candidate pairs) is answered from them.
        self._whole: _PairFeatures | None = None

    def _cost(self, w: np.ndarray) -> np.ndarray:
        m_old = len(self.old_rows)
        shingles = np.zeros(len(w), np.int64)
        new = w >= m_old
        shingles[new] = np.asarray(self.feats.num_shingles)[self.rows[w[new] - m_old]]
        return 4 * self.params.num_perm + self.SHINGLE_BYTES * shingles

    def _chunks(self, left: np.ndarray, right: np.ndarray) -> list[slice]:
        """Consecutive runs of pairs whose distinct documents cost at most the budget (at least one
        pair each). A document in many pairs is charged once per chunk, as it is read once."""
        n = len(left)
        if self.budget is None or not n:
            return [slice(0, n)]
        docs = np.stack([left, right], axis=1).ravel()
        cost = self._cost(docs)
        bounds, a, width = [0], 0, 1024
        while a < n:
            while True:  # widen the window until it holds more than a budget's worth
                b = min(n, a + width)
                spent = _first_seen_cost(docs[2 * a : 2 * b], cost[2 * a : 2 * b])
                if b == n or spent[-1] > self.budget:
                    break
                width *= 2
            a += max(1, int(np.searchsorted(spent, self.budget, side="right")))
            bounds.append(a)
        return [slice(x, y) for x, y in zip(bounds[:-1], bounds[1:])]

    def _features(self, left: np.ndarray, right: np.ndarray) -> _PairFeatures:
        whole = self._whole
        if whole is not None and np.isin(left, whole.inv).all() and np.isin(right, whole.inv).all():
            return whole
        self._whole = None  # let it go before reading the next chunk's
        return _pair_features(self.feats, self.prev, self.rows, self.old_rows, left, right, self.params)

    def score(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimated, verified) Jaccard of each pair, in order."""
        est = np.empty(len(left))
        ver = np.full(len(left), np.nan)
        chunks = self._chunks(left, right)
        if len(chunks) > 1:
            # Bounded features on disk copy every pair's rows aside in one pass, so the chunks
            # read only their own rows (tasks.dedup_reduce.StreamedFeatures.stage).
            w = np.unique(np.concatenate([left, right]))
            self.feats.stage(self.rows[w[w >= len(self.old_rows)] - len(self.old_rows)])
        for part in chunks:
            self.chunks += 1
            l, r = left[part], right[part]
            pf = self._features(l, r)
            li, ri = np.searchsorted(pf.inv, l), np.searchsorted(pf.inv, r)
            est[part] = mh.estimated_jaccard(pf.sigs, li, ri)
            if self.params.verify:
                both = pf.verifiable[li] & pf.verifiable[ri]
                ver[part] = np.where(both, mh.jaccard_of_pairs(pf.sets, pf.set_off, li, ri), np.nan)
            self._whole = pf if len(chunks) == 1 else None
            del pf
            if self.budget is not None:
                # Measured at 1M documents: 1,103 MB resident after scoring, 90 MB in use.
                memory.release()
        return est, ver


def _first_seen_cost(docs: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Cumulative cost per pair of ``docs`` (pairs interleaved), each document charged at its first
    appearance only."""
    charge = np.zeros(len(docs), np.int64)
    _, first = np.unique(docs, return_index=True)
    charge[first] = cost[first]
    return np.cumsum(charge.reshape(-1, 2).sum(axis=1))


@dataclass
class _Working:
    """Working ids: the matched old documents first, then this corpus's active rows."""

    rows: np.ndarray
    old_rows: np.ndarray
    prev: _Previous | None
    id_list: list[str]
    seq0: int

    def id_of(self, w: int) -> str:
        return _working_id(w, len(self.old_rows), self.old_rows, self.rows, self.prev, self.id_list)


def _mark_clusters(wk: _Working, scorer: _PairScorer, el: np.ndarray, er: np.ndarray, ej: np.ndarray,
                   policy: np.ndarray, status: np.ndarray, evidence: dict[int, dict[str, Any]],
                   params: Params) -> int:
    """Cluster the edges, keep one document per cluster, mark the rest; returns the cluster count."""
    rows, old_rows, prev, m_old = wk.rows, wk.old_rows, wk.prev, len(wk.old_rows)
    nw = m_old + len(rows)
    labels = _components(nw, el, er)
    sizes = np.bincount(labels)[labels]
    cls = np.concatenate([np.where(prev.kept[old_rows], 0, 1) if m_old else np.zeros(0, np.int64), np.full(len(rows), 2)])
    pol = np.concatenate([np.zeros(m_old), policy[rows]])
    order = np.concatenate([prev.seq[old_rows] if m_old else np.zeros(0, np.int64), wk.seq0 + rows])
    keeper = _keepers(labels, cls, pol, order)
    cluster_no = _cluster_numbers(labels, order, sizes > 1)
    losers = np.flatnonzero((keeper != np.arange(nw)) & (np.arange(nw) >= m_old))

    # Evidence: Jaccard to the survivor (estimated and exact), and the strongest verified edge.
    est_k, ver_k = scorer.score(losers, keeper[losers])
    ver_k = np.round(ver_k, 4)
    best_nb, best_j = _strongest_edge(nw, el, er, ej)
    for w, k, nb, size, number, e_est, e_ver, e_best in zip(
        losers.tolist(), keeper[losers].tolist(), best_nb[losers].tolist(), sizes[losers].tolist(),
        cluster_no[losers].tolist(), np.round(est_k, 4).tolist(), ver_k.tolist(), np.round(best_j[losers], 4).tolist()
    ):
        i = int(rows[w - m_old])
        status[i] = "near_duplicate"
        evidence[i] = {
            "duplicate_of": wk.id_of(k),
            "cluster_id": f"near-{wk.seq0}-{number}",
            "cluster_size": size,
            "jaccard_estimated": e_est,
            "jaccard_verified": None if e_ver != e_ver else e_ver,  # NaN: not verifiable
            "linked_to": wk.id_of(nb),
            "linked_jaccard": e_best,
            "threshold": params.threshold,
            "duplicate_of_earlier_run": k < m_old,
        }
    return int(np.unique(labels[sizes > 1]).size)


def _working_id(w: int, m_old: int, old_rows: np.ndarray, rows: np.ndarray, prev: _Previous | None,
                id_list: list[str]) -> str:
    return prev.ids[int(old_rows[w])].as_py() if w < m_old else id_list[int(rows[w - m_old])]


def _strongest_edge(n: int, left: np.ndarray, right: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each node, its neighbour over the highest-Jaccard edge (and that Jaccard)."""
    a = np.concatenate([left, right])
    b = np.concatenate([right, left])
    jj = np.concatenate([j, j])
    perm = np.lexsort((b, -jj, a))
    first = np.ones(len(perm), bool)
    first[1:] = a[perm][1:] != a[perm][:-1]
    nb = np.full(n, -1, np.int64)
    best = np.full(n, np.nan)
    nb[a[perm][first]] = b[perm][first]
    best[a[perm][first]] = jj[perm][first]
    return nb, best


def _take_csr(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items of documents ``rows`` (in that order) from CSR ``values``/``offsets``."""
    return mh.gather_csr(values, offsets, rows)


def _semantic_pass(texts_of: Any, active: np.ndarray, policy: np.ndarray, status: np.ndarray,
                   evidence: dict[int, dict[str, Any]], id_list: list[str], params: Params) -> dict[str, Any]:
    """SemDeDup over the active rows: MiniLM embeddings, k-means, cosine threshold per cluster.

    Inside a cluster, members are visited in keep-preference order and a member is dropped when
    its cosine to an already kept member reaches the threshold (SemDeDup keeps the member
    farthest from the centroid instead; we keep by ``params.keep`` like the other passes).
    """
    rows = np.flatnonzero(active)
    if len(rows) < 2:
        return {"embedded": int(len(rows)), "clusters": 0}
    vecs = np.asarray(_embed(texts_of(rows), params.semantic_batch_size), np.float32)
    k = params.semantic_clusters or max(1, int(round(np.sqrt(len(rows)))))
    k = min(k, len(rows))
    labels = _kmeans(vecs, k, params.seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    n_pairs = 0
    for grp in np.split(order, bounds):
        if len(grp) < 2:
            continue
        # Visit the group in keep-preference order; drop a member too close to one already kept.
        grp = grp[np.lexsort((rows[grp], policy[rows[grp]]))]
        sims = vecs[grp] @ vecs[grp].T
        n_pairs += len(grp) * (len(grp) - 1) // 2
        kept_local: list[int] = []
        for a in range(len(grp)):
            if kept_local:
                s = sims[a, kept_local]
                best = int(np.argmax(s))
                if s[best] >= params.semantic_threshold:
                    i, k_ = int(rows[grp[a]]), int(rows[grp[kept_local[best]]])
                    status[i] = "semantic_duplicate"
                    evidence[i] = {"duplicate_of": id_list[k_], "cluster_id": f"semantic-{int(labels[grp[a]])}",
                                   "cluster_size": int(len(grp)), "cosine": round(float(s[best]), 4),
                                   "threshold": params.semantic_threshold}
                    continue
            kept_local.append(a)
    return {"embedded": int(len(rows)), "clusters": int(k), "pairs_compared": int(n_pairs)}


def _embed(texts: list[str], batch_size: int) -> np.ndarray:
    """L2-normalised MiniLM vectors of ``texts`` (from the model wheel, on CPU)."""
    from tasks.embeddings import embed_texts

    return embed_texts(texts, batch_size=batch_size)[0]


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    model = (KMeans(n_clusters=k, n_init=1, random_state=seed) if len(x) <= 20000
             else MiniBatchKMeans(n_clusters=k, n_init=1, random_state=seed, batch_size=4096))
    return model.fit_predict(x)


def _index_table(prev: _Previous | None, corpus: pa.Table, feats: Features, status: np.ndarray, params: Params,
                 banding: mh.Banding, seq0: int) -> pa.Table:
    n = corpus.num_rows
    k, b = params.num_perm, banding.bands
    full = (status != "exact_duplicate") & (feats.num_shingles > 0)
    null_mask = pa.array(~full)
    sig = pa.FixedSizeListArray.from_arrays(pa.array(feats.sigs.ravel(), pa.uint32()), k, mask=null_mask)
    bands = pa.FixedSizeListArray.from_arrays(pa.array(feats.bands.ravel(), pa.uint64()), b, mask=null_mask)
    if params.index_shingles:
        shingles = pa.LargeListArray.from_arrays(pa.array(feats.shingle_offsets, pa.int64()),
                                                 pa.array(feats.shingles, pa.uint32()), mask=null_mask)
    else:
        shingles = pa.nulls(n, pa.large_list(pa.uint32()))
    settings = dict(params.index_settings(), bands=b, rows=banding.rows)
    schema = pa.schema(
        [("id", pa.string()), ("seq", pa.int64()), ("status", pa.string()), plain_field("exact_hash", pa.binary(16)),
         ("num_shingles", pa.int32()), plain_field("signature", pa.list_(pa.uint32(), k)),
         plain_field("band_keys", pa.list_(pa.uint64(), b)), plain_field("shingles", pa.large_list(pa.uint32()))],
        metadata={INDEX_META_KEY: json.dumps(settings, sort_keys=True).encode()},
    )
    new = pa.table(
        [corpus.column("id").cast(pa.string()), pa.array(seq0 + np.arange(n), pa.int64()), pa.array(status.tolist(), pa.string()),
         _u64_to_fsb16(feats.exact), pa.array(feats.num_shingles.astype(np.int32)), sig, bands, shingles],
        schema=schema,
    )
    if prev is None:
        return new
    old = prev.table
    if prev.bands_recomputed:
        has = np.flatnonzero(prev.has_sig)
        keys = np.zeros((old.num_rows, b), np.uint64)
        keys[has] = mh.band_keys(_fixed_list_rows(old.column("signature"), has, k, np.uint32), b, banding.rows)
        col = pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel(), pa.uint64()), b, mask=pa.array(~prev.has_sig))
        old = old.set_column(old.column_names.index("band_keys"), pa.field("band_keys", pa.list_(pa.uint64(), b)), col)
    # Zero-copy append: the old rows keep their chunks, so a store can persist only the new chunk.
    return pa.concat_tables([old.select(list(INDEX_COLUMNS)).cast(schema), new])


__all__ = ["INDEX_COLUMNS", "Params", "STAGE", "featurize", "run"]
