"""Vectorised word tokenisation and n-gram hashing that keeps character offsets.

Used by :mod:`tasks.contamination`. The corpus is scanned in Arrow batches without a Python loop
over documents or tokens: the UTF-8 buffer of a batch is turned into one array of code points, each
code point is folded through a lookup table (NFKC, lower case, punctuation and white space become
separators: the same folding as :func:`tasks.common.normalize_text`), and tokens are the maximal
runs of word characters. Token hashes are polynomial hashes over the folded code points computed
from one prefix sum (mod 2**64), n-gram hashes are polynomial hashes over token hashes, both passed
through the splitmix64 finaliser so every bit is usable for the bitmap prefilter.

Why a lookup table per code point instead of ``normalize_text`` on the whole text: it keeps the
position of every token in the original text (needed to report hits and to mask spans), and it is
~50x faster. Where folding a code point depends on its neighbours (combining marks compose with the
letter before them, Hangul jamo compose, Greek capital sigma lowers to a final form at a word end)
or expands to several characters (ligatures such as U+FB01, U+00BD), the table marks it *complex*
and the documents holding such code points go through :func:`_fold_slow`, which applies
``normalize_text`` to the affected word runs. Benchmark text and corpus text use exactly the same
functions, so a token folds to the same hash on both sides.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.common import Normalization, normalize_text

U64 = np.uint64
COMPLEX = np.uint32(0xFFFFFFFF)
_WORD_RE = re.compile(r"\w", re.UNICODE)

# Odd multipliers (random 64-bit constants) for the two polynomial hashes; their inverses mod 2**64
# re-base a window's sum to position 0.
_P_CHAR = 0x9E3779B97F4A7C15
_P_TOKEN = 0xC2B2AE3D27D4EB4F
_LENGTH_SALT = 0x165667B19E3779F9


def _inv(x: int) -> int:
    return pow(x, -1, 1 << 64)


@functools.cache
def fold_table(nfkc: bool = True, lowercase: bool = True) -> np.ndarray:
    """Per-code-point fold: 0 = separator, :data:`COMPLEX` = context-dependent, else folded code point.

    Code points past U+323AF (unassigned planes, private use, tags) are separators except the
    variation selectors U+E0100..U+E01EF, which are combining marks (complex). Built once per
    process (~0.3 s).
    """
    top = 0x32400
    table = np.zeros(0x110000, dtype=np.uint32)
    for cp in range(top):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        if unicodedata.category(ch).startswith("M") or 0x1100 <= cp < 0x1200 or 0xA960 <= cp < 0xA980 \
                or 0xD7B0 <= cp < 0xD800 or cp == 0x03A3:
            table[cp] = COMPLEX
            continue
        m = unicodedata.normalize("NFKC", ch) if nfkc else ch
        if lowercase:
            m = m.lower()
        words = [bool(_WORD_RE.match(c)) for c in m]
        if not any(words):
            continue  # separator: punctuation, white space, symbols
        if len(m) == 1:
            table[cp] = ord(m)
        else:
            table[cp] = COMPLEX
    table[0xE0100:0xE01F0] = COMPLEX
    return table


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic)."""
    x ^= x >> U64(30)
    x *= U64(0xBF58476D1CE4E5B9)
    x ^= x >> U64(27)
    x *= U64(0x94D049BB133111EB)
    x ^= x >> U64(31)
    return x


class _Powers:
    """Growing tables of P**i and P**-i mod 2**64 (shared read-only across threads once grown)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.inv = _inv(base)
        self.pow = np.ones(1, dtype=U64)
        self.ipow = np.ones(1, dtype=U64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pow) < n:
            size = max(n, 2 * len(self.pow))
            with np.errstate(over="ignore"):
                p = np.full(size, self.base, dtype=U64)
                p[0] = 1
                ip = np.full(size, self.inv, dtype=U64)
                ip[0] = 1
                self.pow = np.cumprod(p, dtype=U64)
                self.ipow = np.cumprod(ip, dtype=U64)
        return self.pow[:n], self.ipow[:n]


@dataclass
class Tokens:
    """Tokens of a set of documents, in document order.

    Attributes:
        hash: uint64 token hashes (folded text, mixed).
        start, end: character offsets of each token in its document's original text.
        doc_bounds: int64, ``len = n_docs + 1``; tokens of document ``d`` are
            ``doc_bounds[d]:doc_bounds[d+1]``.
    """

    hash: np.ndarray
    start: np.ndarray
    end: np.ndarray
    doc_bounds: np.ndarray


class Tokenizer:
    """Folds and hashes text; one instance per stage run (it caches power tables)."""

    def __init__(self, norm: Normalization = Normalization()) -> None:
        self.norm = norm
        self.table = fold_table(norm.nfkc, norm.lowercase)
        self.table_ascii = self.table[:128].astype(np.uint8)
        self.char_pow = _Powers(_P_CHAR)
        self.token_pow = _Powers(_P_TOKEN)
        # Grow once up front so threads only ever read these arrays.
        self.char_pow.get(1 << 16)
        self.token_pow.get(1 << 14)

    # -- text to folded code points ---------------------------------------------------------------

    def tokens_of_array(self, arr: pa.Array) -> Tokens:
        """Tokenise every string of a (non-null) Arrow string array."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        n = len(arr)
        if n == 0:
            return Tokens(*(np.zeros(0, dtype=t) for t in (U64, np.int64, np.int64)), np.zeros(1, np.int64))
        off_dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=off_dtype)[arr.offset : arr.offset + n + 1].astype(np.int64)
        data_buf = arr.buffers()[2]
        raw = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]] if data_buf is not None \
            else np.zeros(0, np.uint8)
        byte_bounds = offsets - offsets[0]
        if raw.size == 0 or int(raw.max()) < 0x80:
            fold = self.table_ascii[raw]
            return self._tokens(fold, byte_bounds, None)
        cps = np.frombuffer(raw.tobytes().decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
        not_cont = (raw & 0xC0) != 0x80
        cum = np.zeros(raw.size + 1, dtype=np.int64)
        np.cumsum(not_cont, out=cum[1:])
        bounds = cum[byte_bounds]
        fold = self.table[cps]
        cplx = np.flatnonzero(fold == COMPLEX)
        if cplx.size == 0:
            return self._tokens(fold, bounds, None)
        # Documents with context-dependent code points: fold them exactly, one by one.
        slow_docs = np.unique(np.searchsorted(bounds, cplx, side="right") - 1)
        slow = set(slow_docs.tolist())
        pieces, pos_pieces, new_bounds = [], [], [0]
        prev = 0
        for d in range(n):
            lo, hi = bounds[d], bounds[d + 1]
            if d in slow:
                f, p = self._fold_slow(cps[lo:hi], fold[lo:hi])
            else:
                f, p = fold[lo:hi], np.arange(0, hi - lo, dtype=np.int64)
            pieces.append(f)
            pos_pieces.append(p)
            prev += len(f)
            new_bounds.append(prev)
        return self._tokens(np.concatenate(pieces), np.asarray(new_bounds, np.int64), np.concatenate(pos_pieces))

    def tokens_of_texts(self, texts: list[str]) -> Tokens:
        """Tokenise Python strings (benchmark side)."""
        return self.tokens_of_array(pa.array(texts, pa.string()))

    def _fold_slow(self, cps: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact folding of one document: word runs holding complex code points go through
        ``normalize_text``; every token of such a run is given the run's character span."""
        nonsep = fold != 0
        edges = np.flatnonzero(np.diff(np.concatenate(([False], nonsep, [False])).astype(np.int8)))
        run_lo, run_hi = edges[::2], edges[1::2]
        f_out, p_out = [], []
        last = 0
        for lo, hi in zip(run_lo.tolist(), run_hi.tolist()):
            seg = fold[lo:hi]
            if not (seg == COMPLEX).any():
                continue
            # untouched stretch before this run
            f_out.append(fold[last:lo])
            p_out.append(np.arange(last, lo, dtype=np.int64))
            text = cps[lo:hi].tobytes().decode("utf-32-le")
            for tok in normalize_text(text, self.norm).split():
                t = np.frombuffer(tok.encode("utf-32-le"), dtype=np.uint32)
                p = np.full(len(t), lo, dtype=np.int64)
                p[-1] = hi - 1  # so the token spans the whole run in the original text
                f_out.append(np.concatenate((t, [0])).astype(np.uint32))
                p_out.append(np.concatenate((p, [hi - 1])))
            last = hi
        f_out.append(fold[last:])
        p_out.append(np.arange(last, len(fold), dtype=np.int64))
        return np.concatenate(f_out).astype(np.uint32), np.concatenate(p_out)

    # -- folded code points to token hashes -------------------------------------------------------

    def _tokens(self, fold: np.ndarray, bounds: np.ndarray, pos: np.ndarray | None) -> Tokens:
        n_docs = len(bounds) - 1
        N = fold.size
        word = fold != 0
        # a token starts at a word char whose predecessor is not a word char or is in another doc
        prev = np.empty(N, dtype=bool)
        if N:
            prev[0] = False
            prev[1:] = word[:-1]
        nxt = np.empty(N, dtype=bool)
        if N:
            nxt[-1] = False
            nxt[:-1] = word[1:]
        starts_at = bounds[:-1][bounds[:-1] < N]
        prev[starts_at] = False
        ends_at = bounds[1:][bounds[1:] > 0] - 1
        nxt[ends_at] = False
        s = np.flatnonzero(word & ~prev)
        e = np.flatnonzero(word & ~nxt) + 1
        pw, ipw = self.char_pow.get(N + 1)
        with np.errstate(over="ignore"):
            h = np.zeros(N + 1, dtype=U64)
            np.cumsum(fold.astype(U64) * pw[:N], out=h[1:])
            th = (h[e] - h[s]) * ipw[s]
            th += (e - s).astype(U64)  # length in, so zero-padded folds never collide
        _mix64(th)
        doc_bounds = np.searchsorted(s, bounds, side="left").astype(np.int64)
        tok_doc = np.repeat(np.arange(n_docs), np.diff(doc_bounds))
        if pos is None:
            start = s - bounds[:-1][tok_doc]
            end = e - bounds[:-1][tok_doc]
        else:
            start = pos[s]
            end = pos[e - 1] + 1
        return Tokens(th, start.astype(np.int64), end.astype(np.int64), doc_bounds)

    # -- token hashes to n-gram hashes ------------------------------------------------------------

    def ngrams(self, tokens: Tokens, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every n-gram that lies inside one document, and the index of its first token."""
        T = tokens.hash.size
        if T < n:
            return np.zeros(0, U64), np.zeros(0, np.int64)
        pw, ipw = self.token_pow.get(T + 1)
        with np.errstate(over="ignore"):
            g = np.zeros(T + 1, dtype=U64)
            np.cumsum(tokens.hash * pw[:T], out=g[1:])
            k = T - n + 1
            ng = (g[n:] - g[:k]) * ipw[:k]
            ng += U64((n * _LENGTH_SALT) & 0xFFFFFFFFFFFFFFFF)
        _mix64(ng)
        # keep n-grams whose last token is in the same document as the first
        db = tokens.doc_bounds
        counts = np.maximum(np.diff(db) - n + 1, 0)
        if counts.sum() == k:
            return ng, np.arange(k, dtype=np.int64)
        first = np.repeat(db[:-1], counts) + _ranges(counts)
        return ng[first], first


def _ranges(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])`` without the loop."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
