"""Vectorised MinHash-LSH machinery for :mod:`tasks.dedup`: tokens, shingles, signatures, bands,
verification.

Everything works on flat arrays plus CSR offsets (``offsets[d]:offsets[d+1]`` are the items of
document ``d``); no Python code runs per token or per shingle. The hot loops have a Numba kernel
(used when Numba imports) and a NumPy/Python fallback that gives bit-identical results.

Pipeline for one batch of texts (:func:`document_hashes`):

1. Arrow folds the text: NFKC, then lower case (utf8proc; simple case mappings, so ``"İ"`` becomes
   ``"i"`` where Python's ``str.lower`` gives ``"i̇"``).
2. Tokens are maximal runs of word characters (Python's ``\\w``, i.e. what
   :func:`tasks.common.normalize_text` keeps; everything else separates), or of non-space
   characters with ``strip_punctuation=False``. Each token is hashed as FNV-1a-64 of its UTF-8
   bytes, finished with MurmurHash3's ``fmix64``.
3. A shingle of n token hashes ``t1..tn`` is ``fmix64(((t1*P + t2)*P + ...)*P + tn) >> 32`` with
   ``P = 0x9E3779B97F4A7C15`` (a document shorter than n gets one shingle of all its tokens).
4. MinHash is datasketch's 2.x ``affine32`` scheme: ``min_x (a_j * fmix32(x) + b_j) mod 2^32``
   with datasketch's permutations for the seed.
5. The exact-duplicate key is two independent 64-bit polynomial hashes of the token sequence, so
   two texts get the same key iff their token sequences match (up to a 2^-128 collision).

Compatibility with datasketch: our signature of a document equals
``datasketch.MinHash(num_perm=k, seed=s, hashfunc=shingle_hash32)`` updated with its shingles as
bytes (the n tokens joined by one space), for every seed and k (tested). datasketch's *default*
hashes each shingle with SHA-1 in Python instead, so default datasketch signatures differ from ours
value by value, though both estimate the same Jaccard. Our signatures can be wrapped as
``MinHash(hashvalues=sig, seed=s, scheme="affine32")`` and inserted into datasketch's LSH indexes.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Numba is optional: the fallbacks below give the same numbers, 5-50x slower. Its kernels are
# imported on first use (kernels()): importing Numba and loading its cache costs a second or more,
# which a command that computes nothing (a cached rerun) should not pay.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

_POLY = np.uint64(0x9E3779B97F4A7C15)  # shingle and exact-key polynomial (splitmix64's constant)
_POLY2 = np.uint64(0xC2B2AE3D27D4EB4F)  # second, independent polynomial of the exact key
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1
_EMPTY32 = np.uint32(0xFFFFFFFF)

@lru_cache(maxsize=1)
def kernels():  # noqa: ANN201 - a module
    """The Numba kernels (:mod:`tasks.minhash_kernels`), imported on first call."""
    from tasks import minhash_kernels

    return minhash_kernels


#: Character classes for the tokenizer: 0 whitespace, 1 word character, 2 anything else.
SPACE, WORD, OTHER = 0, 1, 2


@lru_cache(maxsize=1)
def char_classes() -> np.ndarray:
    """uint8[0x110000]: the class of every code point, by Python's own ``\\w`` and ``\\s``.

    Built once per process (~0.05 s) from the regex engine that :func:`tasks.common.normalize_text`
    uses, so the tokenizer splits exactly where it would. Read-only after construction.
    """
    points = np.arange(0x110000, dtype="<u4")
    points[0xD800:0xE000] = 0x20  # lone surrogates cannot occur in valid UTF-8; keep one char per slot
    every = points.tobytes().decode("utf-32-le")
    table = np.full(0x110000, OTHER, np.uint8)
    for m in re.finditer(r"\w+", every):
        table[m.start() : m.end()] = WORD
    for m in re.finditer(r"\s+", every):
        table[m.start() : m.end()] = SPACE
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------- scalar reference


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * int(_M1)) & _MASK64
    h ^= h >> 33
    h = (h * int(_M2)) & _MASK64
    return h ^ (h >> 33)


def token_hash(token: bytes) -> int:
    """The 64-bit hash of one token's UTF-8 bytes (FNV-1a-64, then ``fmix64``)."""
    h = int(_FNV_OFFSET)
    for byte in token:
        h = ((h ^ byte) * int(_FNV_PRIME)) & _MASK64
    return _fmix64_int(h)


def shingle_hash32(shingle: bytes, unit: str = "word") -> int:
    """The 32-bit hash of one shingle, exactly as the vectorised path computes it.

    ``shingle`` is the UTF-8 of the space-joined tokens (``unit="word"``) or the raw bytes
    (``unit="char"``). Pass it as datasketch's ``hashfunc`` to reproduce our signatures.
    """
    parts = [token_hash(t) for t in shingle.split(b" ")] if unit == "word" else list(shingle)
    acc = 0
    for p in parts:
        acc = (acc * int(_POLY) + p) & _MASK64
    return _fmix64_int(acc) >> 32


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch 2.x ``affine32`` permutations ``(a, b)`` for ``seed`` (``a`` odd), as uint32."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def compile_kernels() -> None:
    """Compile (or load from Numba's cache) every kernel the word-shingle path uses.

    The first run on a fresh checkout compiles them (tens of seconds on a busy 2-core machine);
    call this from a setup step to keep that out of the first pipeline run. A no-op without Numba.
    """
    if not HAVE_NUMBA:
        return
    a, b = permutations(128, 1)
    for text in ("warm up the kernels here", "warm up the kernels here " * 50_000):  # serial, parallel
        wf = word_features(pa.array([text, text]), True, 5, a, b, 16, 8)
        h = wf.hashes
        for values, offsets in (sort_unique(h.shingles, h.shingle_offsets),):
            jaccard_of_pairs(values, offsets, np.zeros(5000, np.int64), np.ones(5000, np.int64))
            jaccard_of_pairs(values, offsets, np.zeros(1, np.int64), np.ones(1, np.int64))


# --------------------------------------------------------------------------- NumPy helpers


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, element-wise (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(33))
    h = h * _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return h


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, element-wise; datasketch's ``affine32`` pre-mix."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64[n+1], data uint8) of a null-free string/large_string array, zero-copy."""
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def fold_case(texts: pa.Array, nfkc: bool, lowercase: bool) -> pa.Array:
    """NFKC (Python's ``unicodedata``, as ``normalize_text``) and lower case (Arrow) a column.

    Normalising is the slow part, and nearly all text is already in NFKC, so only the rows that
    are not ASCII and fail Python's quick check are normalised; the others pass through as is.
    """
    if nfkc and len(texts):
        non_ascii = np.flatnonzero(~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False))
        if len(non_ascii):
            sub = texts.take(pa.array(non_ascii)).to_pylist()
            todo = [i for i, t in zip(non_ascii.tolist(), sub) if not unicodedata.is_normalized("NFKC", t)]
            if todo:
                # utf8proc (Arrow) normalises ~2x faster than unicodedata, with the same output
                # on everything we have compared (tests/test_dedup.py).
                fixed = pc.utf8_normalize(texts.take(pa.array(todo)), "NFKC")
                index = np.arange(len(texts))
                index[todo] = len(texts) + np.arange(len(todo))
                texts = pa.concat_arrays([texts, fixed]).take(pa.array(index))
    if lowercase:
        texts = pc.utf8_lower(texts)
    return texts


#: Inputs smaller than this (bytes of text, or items) run the serial Numba driver.
PARALLEL_MIN = 1 << 20


def _compact(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out_off: np.ndarray) -> np.ndarray:
    out = np.empty(int(out_off[-1]), buf.dtype)
    k = kernels()
    (k._nb_compact_par if out.size >= PARALLEL_MIN // 4 else k._nb_compact_ser)(buf, starts, lengths, out_off, out)
    return out


# --------------------------------------------------------------------------- fallbacks


def _py_token_hashes(texts: pa.Array, strip: bool) -> tuple[np.ndarray, np.ndarray]:
    pattern = re.compile(r"\w+" if strip else r"\S+")
    memo: dict[str, int] = {}
    hashes: list[int] = []
    counts = np.zeros(len(texts), np.int64)
    for d, text in enumerate(texts.to_pylist()):
        toks = pattern.findall(text)
        counts[d] = len(toks)
        for t in toks:
            h = memo.get(t)
            if h is None:
                h = memo[t] = token_hash(t.encode("utf-8"))
            hashes.append(h)
    off = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    return np.array(hashes, np.uint64), off


def _segment_poly(units: np.ndarray, offsets: np.ndarray, mult: np.uint64) -> np.ndarray:
    """Horner ``acc = len; acc = acc*mult + u`` per segment, vectorised (wrapping uint64)."""
    lengths = np.diff(offsets)
    maxlen = int(lengths.max()) if len(lengths) else 0
    powers = np.ones(maxlen + 1, np.uint64)  # mult**i, wrapping
    powers[1:] = np.multiply.accumulate(np.full(maxlen, mult, np.uint64))
    doc = np.repeat(np.arange(len(lengths)), lengths)
    exp = (offsets[1:][doc] - 1) - np.arange(len(units))
    acc = lengths.astype(np.uint64) * powers[lengths]
    contrib = units * powers[exp]
    sums = np.zeros(len(lengths), np.uint64)
    np.add.at(sums, doc, contrib)
    return acc + sums


def shingle_hashes(units: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the n-grams of ``units`` in each document (NumPy; the Numba kernel fuses
    this into :func:`document_hashes`). Returns (hashes uint32[S], CSR offsets int64[ndoc+1])."""
    sh_off = shingle_offsets(offsets, n)
    total = int(sh_off[-1])
    if total == 0:
        return np.zeros(0, np.uint32), sh_off
    lengths = np.diff(offsets)
    nsh = np.diff(sh_off)
    doc = np.repeat(np.arange(len(lengths)), nsh)
    starts = offsets[:-1][doc] + (np.arange(total) - sh_off[:-1][doc])
    width = np.minimum(lengths, n)[doc]
    padded = np.concatenate([units.astype(np.uint64, copy=False), np.zeros(n, np.uint64)])
    acc = np.zeros(total, np.uint64)
    for j in range(n):
        acc = np.where(j < width, acc * _POLY + padded[starts + j], acc)
    return (fmix64(acc) >> np.uint64(32)).astype(np.uint32), sh_off


def _np_signatures(h: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mixed = fmix32(h.astype(np.uint32, copy=False))
    ndoc, k = len(offsets) - 1, len(a)
    out = np.full((ndoc, k), _EMPTY32, np.uint32)
    lengths = np.diff(offsets)
    has = np.flatnonzero(lengths > 0)
    if len(has) == 0:
        return out
    # Whole documents in blocks of ~16k shingles, so the (shingles x k) block stays in cache.
    ends = np.cumsum(lengths[has])
    cuts = np.searchsorted(ends, np.arange(16384, int(ends[-1]), 16384), side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(has)]]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        docs = has[lo:hi]
        s0, s1 = offsets[docs[0]], offsets[docs[-1] + 1]
        block = mixed[s0:s1, None] * a[None, :]
        block += b[None, :]
        out[docs] = np.minimum.reduceat(block, offsets[docs] - s0, axis=0)
    return out


# --------------------------------------------------------------------------- public API


def shingle_offsets(unit_offsets: np.ndarray, n: int) -> np.ndarray:
    """CSR offsets of the shingles: ``len - n + 1`` per document, 1 if shorter, 0 if empty."""
    lengths = np.diff(unit_offsets)
    nsh = np.where(lengths >= n, lengths - n + 1, (lengths > 0).astype(np.int64))
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(nsh, out=out[1:])
    return out


def word_units(folded: pa.Array, strip_punctuation: bool, use_numba: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes (uint64, CSR) of case-folded texts: runs of ``\\w`` characters (or of
    non-space characters when ``strip_punctuation`` is off)."""
    if use_numba and HAVE_NUMBA:
        offsets, data = string_buffers(folded)
        classes = char_classes()
        counts = kernels()._nb_count_tokens(data, offsets, classes, strip_punctuation)
        tok_off = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=tok_off[1:])
        return kernels()._nb_token_hashes(data, offsets, classes, strip_punctuation, tok_off), tok_off
    return _py_token_hashes(folded, strip_punctuation)


def char_units(folded: pa.Array, strip_punctuation: bool, collapse_whitespace: bool) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes (as uint64, CSR) of the normalised texts, for character (byte) shingles."""
    if strip_punctuation:
        folded = pc.replace_substring_regex(folded, r"[^\p{L}\p{N}_\s]", " ")
    if collapse_whitespace:
        folded = pc.utf8_trim_whitespace(pc.replace_substring_regex(folded, r"[\s\p{Z}]+", " "))
    offsets, data = string_buffers(folded)
    return data[offsets[0] : offsets[-1]].astype(np.uint64), offsets - offsets[0]


@dataclass
class DocumentHashes:
    """Hashes of a batch of documents (arrays aligned with its rows)."""

    exact: np.ndarray  # uint64[n, 2]: key of the normalised unit sequence
    num_units: np.ndarray  # int64[n]: tokens (or bytes) after normalisation
    sigs: np.ndarray  # uint32[n, k]
    shingles: np.ndarray  # uint32[S]: shingle hashes in document order (repeats kept)
    shingle_offsets: np.ndarray  # int64[n + 1]


def document_hashes(
    units: np.ndarray, unit_offsets: np.ndarray, n: int, a: np.ndarray, b: np.ndarray, use_numba: bool = True
) -> DocumentHashes:
    """Exact keys, shingle hashes and MinHash signatures of documents given as unit sequences.

    A document without units gets the all-``0xFFFFFFFF`` signature (datasketch's empty MinHash).
    """
    unit_offsets = np.ascontiguousarray(unit_offsets, np.int64)
    units = np.ascontiguousarray(units, np.uint64)
    sh_off = shingle_offsets(unit_offsets, n)
    if use_numba and HAVE_NUMBA:
        sigs, h32, exact = kernels()._nb_documents(units, unit_offsets, n, a, b, sh_off)
    else:
        h32, _ = shingle_hashes(units, unit_offsets, n)
        sigs = _np_signatures(h32, sh_off, a, b)
        exact = np.stack([fmix64(_segment_poly(units, unit_offsets, _POLY)),
                          fmix64(_segment_poly(units, unit_offsets, _POLY2))], axis=1)
    return DocumentHashes(exact, np.diff(unit_offsets), sigs, h32, sh_off)


@dataclass
class WordFeatures:
    """Everything dedup needs from a batch of texts with word shingles."""

    hashes: DocumentHashes
    band_keys: np.ndarray  # uint64[n, bands]


def word_features(folded: pa.Array, strip_punctuation: bool, n: int, a: np.ndarray, b: np.ndarray, bands: int,
                  rows: int, use_numba: bool = True) -> WordFeatures:
    """Tokens, exact keys, shingles, signatures and band keys of case-folded texts.

    The Numba path does it all in one pass per document; the fallback chains
    :func:`word_units`, :func:`document_hashes` and :func:`band_keys` (identical results).
    """
    if not (use_numba and HAVE_NUMBA):
        units, off = word_units(folded, strip_punctuation, use_numba=False)
        h = document_hashes(units, off, n, a, b, use_numba=False)
        return WordFeatures(h, band_keys(h.sigs, bands, rows))
    offsets, data = string_buffers(folded)
    cap = (np.diff(offsets) + 1) // 2 + 1
    cap_off = np.zeros(len(cap) + 1, np.int64)
    np.cumsum(cap, out=cap_off[1:])
    ndoc = len(cap)
    sigs = np.empty((ndoc, len(a)), np.uint32)
    exact = np.empty((ndoc, 2), np.uint64)
    keys = np.empty((ndoc, bands), np.uint64)
    counts = np.zeros((ndoc, 2), np.int64)  # tokens, shingles
    buf = np.empty(int(cap_off[-1]), np.uint32)
    k = kernels()
    driver = k._nb_word_par if int(offsets[-1] - offsets[0]) >= PARALLEL_MIN else k._nb_word_ser
    driver(data, offsets, char_classes(), strip_punctuation, n, a, b, bands, rows, cap_off, sigs, exact, keys, counts, buf)
    sh_off = np.zeros(ndoc + 1, np.int64)
    np.cumsum(counts[:, 1], out=sh_off[1:])
    shingles = _compact(buf, cap_off, counts[:, 1].copy(), sh_off)
    return WordFeatures(DocumentHashes(exact, counts[:, 0].copy(), sigs, shingles, sh_off), keys)


def gather_csr(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items of documents ``rows`` (in that order) from CSR ``values``/``offsets``."""
    rows = np.asarray(rows, np.int64)
    lengths = (offsets[rows + 1] - offsets[rows]).astype(np.int64)
    out_off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=out_off[1:])
    if HAVE_NUMBA:
        return _compact(values, np.ascontiguousarray(offsets[rows], np.int64), lengths, out_off), out_off
    if out_off[-1] == 0:
        return np.zeros(0, values.dtype), out_off
    starts = np.repeat(offsets[rows] - out_off[:-1], lengths)
    return values[np.arange(out_off[-1]) + starts], out_off


def signatures(h32: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, use_numba: bool = True) -> np.ndarray:
    """MinHash signatures uint32[ndoc, k] of given shingle hashes (CSR by ``offsets``)."""
    offsets = np.ascontiguousarray(offsets, np.int64)
    if use_numba and HAVE_NUMBA:
        return kernels()._nb_signatures(np.ascontiguousarray(h32, np.uint32), offsets, a, b)
    return _np_signatures(h32, offsets, a, b)


def sort_unique(values: np.ndarray, offsets: np.ndarray, use_numba: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sort each document's items and drop repeats (turns shingle lists into sets)."""
    offsets = np.ascontiguousarray(offsets, np.int64)
    values = np.ascontiguousarray(values, np.uint32)
    if use_numba and HAVE_NUMBA:
        counts = np.zeros(len(offsets) - 1, np.int64)
        tmp = np.empty_like(values)
        k = kernels()
        (k._nb_sort_par if values.size >= PARALLEL_MIN // 4 else k._nb_sort_ser)(values, offsets, tmp, counts)
        new_off = np.zeros(len(offsets), np.int64)
        np.cumsum(counts, out=new_off[1:])
        return _compact(tmp, offsets[:-1].copy(), counts, new_off), new_off
    ndoc = len(offsets) - 1
    doc = np.repeat(np.arange(ndoc, dtype=np.uint64), np.diff(offsets))
    key = np.unique((doc << np.uint64(32)) | values.astype(np.uint64))
    counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=ndoc)
    new_off = np.zeros(ndoc + 1, np.int64)
    np.cumsum(counts, out=new_off[1:])
    return (key & _MASK32).astype(np.uint32), new_off


def jaccard_of_pairs(
    sets: np.ndarray, offsets: np.ndarray, left: np.ndarray, right: np.ndarray, use_numba: bool = True
) -> np.ndarray:
    """Exact Jaccard of the sorted, distinct sets ``left[p]`` and ``right[p]`` (CSR by ``offsets``)."""
    left = np.ascontiguousarray(left, np.int64)
    right = np.ascontiguousarray(right, np.int64)
    offsets = np.ascontiguousarray(offsets, np.int64)
    if use_numba and HAVE_NUMBA:
        out = np.empty(len(left), np.float64)
        driver = kernels()._nb_jaccard_par if len(left) >= 4096 else kernels()._nb_jaccard_ser
        driver(np.ascontiguousarray(sets, np.uint32), offsets, left, right, out)
        return out
    out = np.empty(len(left), np.float64)
    for p, (i, j) in enumerate(zip(left, right)):
        x, y = sets[offsets[i] : offsets[i + 1]], sets[offsets[j] : offsets[j + 1]]
        inter = len(np.intersect1d(x, y, assume_unique=True))
        union = len(x) + len(y) - inter
        out[p] = inter / union if union else 0.0
    return out


def estimated_jaccard(sigs: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Share of equal signature slots for each pair (the MinHash estimate of Jaccard)."""
    out = np.empty(len(left), np.float64)
    for s in range(0, len(left), 65536):
        sl = slice(s, s + 65536)
        out[sl] = (sigs[left[sl]] == sigs[right[sl]]).mean(axis=1)
    return out


# --------------------------------------------------------------------------- banding


@dataclass(frozen=True)
class Banding:
    """``bands`` x ``rows`` LSH banding and its candidate probability at the threshold."""

    bands: int
    rows: int
    threshold: float
    p_at_threshold: float

    def p_candidate(self, j: float) -> float:
        """P(a pair with Jaccard ``j`` shares at least one band)."""
        return 1.0 - (1.0 - j**self.rows) ** self.bands


@lru_cache(maxsize=64)
def choose_banding(threshold: float, num_perm: int, min_recall: float) -> Banding:
    """The (bands, rows) with ``P(candidate | J = threshold) >= min_recall`` and the fewest false
    candidates (smallest integral of P over ``[0, threshold]``); bands * rows <= num_perm.

    datasketch weighs false positives and negatives equally and picks (9, 13) at t=0.8, k=128,
    where P(0.8) is only 0.40; we verify every candidate, so false candidates only cost time and
    we trade them for recall. (16, 8) at t=0.8: P(0.8)=0.947, P(0.85)=0.994, P(0.5)=0.061.
    """
    xs = np.linspace(0.0, threshold, 201)
    best: tuple[float, int, int, float] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p = 1.0 - (1.0 - threshold**rows) ** bands
        if p < min_recall:
            continue
        fp = float(np.trapezoid(1.0 - (1.0 - xs**rows) ** bands, xs))
        if best is None or fp < best[0]:
            best = (fp, bands, rows, p)
    if best is None:  # unreachable recall: one row per band is the most recall there is
        best = (0.0, num_perm, 1, 1.0 - (1.0 - threshold) ** num_perm)
    return Banding(bands=best[1], rows=best[2], threshold=threshold, p_at_threshold=best[3])


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64[ndoc, bands]: one hash per band of ``rows`` consecutive signature values."""
    out = np.empty((sigs.shape[0], bands), np.uint64)
    for band in range(bands):
        acc = np.full(sigs.shape[0], band + 1, np.uint64)
        for j in range(band * rows, (band + 1) * rows):
            acc = acc * _POLY + sigs[:, j].astype(np.uint64)
        out[:, band] = fmix64(acc)
    return out


def pairs_sharing_keys(keys: np.ndarray, docs: np.ndarray, max_bucket: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (left < right, as values of ``docs``) of documents with equal ``keys``.

    A bucket of up to ``max_bucket`` documents yields all its pairs; a larger one (many
    near-identical templates) yields a star to its first member plus a chain through the rest,
    so it costs O(m) pairs instead of O(m^2) while union-find still joins what verifies.
    """
    if len(keys) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Stable, so a bucket lists its documents in the order given (ascending): the pairs of a big
    # bucket then do not depend on what else is sorted with it (dedup's partitioned reduce).
    order = np.argsort(keys, kind="stable")
    sk, sd = keys[order], docs[order]
    starts = np.concatenate([[0], np.flatnonzero(sk[1:] != sk[:-1]) + 1])
    sizes = np.diff(np.concatenate([starts, [len(sk)]]))
    lefts, rights = [], []
    for m in np.unique(sizes[sizes >= 2]):
        st = starts[sizes == m]
        if m <= max_bucket:
            iu, ju = np.triu_indices(m, 1)
            lefts.append(sd[(st[:, None] + iu[None, :]).ravel()])
            rights.append(sd[(st[:, None] + ju[None, :]).ravel()])
        else:
            base = np.repeat(st, m - 1)
            step = np.tile(np.arange(1, m), len(st))
            lefts += [sd[base], sd[base + step - 1]]
            rights += [sd[base + step], sd[base + step]]
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left, right = np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    keep = lo != hi
    return lo[keep], hi[keep]


def unique_pairs(left: np.ndarray, right: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (left, right) pairs, sorted; values are below ``n``."""
    if len(left) == 0:
        return left.astype(np.int64), right.astype(np.int64)
    code = np.unique(left.astype(np.int64) * np.int64(n) + right.astype(np.int64))
    return code // n, code % n
