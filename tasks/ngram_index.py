"""Fast word tokenisation for n-gram matching, with character offsets on demand.

Used by :mod:`tasks.contamination`. Text is folded exactly like :func:`tasks.common.normalize_text`
(NFKC, lower case, punctuation and white space become separators) but without a Python loop over
documents or tokens:

* **ASCII documents** (most of a typical corpus): one ``bytes.translate`` over the batch's UTF-8
  buffer maps upper case to lower case and every non-word byte to a space.
* **Other documents**: the batch is decoded to code points (UTF-32) and each code point is folded
  through a lookup table built from ``normalize_text`` itself. Where folding a code point depends on
  its neighbours (combining marks compose with the letter before them, Hangul jamo compose, Greek
  capital sigma lowers to a final form at a word end) or expands to several characters (ligatures
  such as U+FB01, U+00BD), the table marks it *complex* and the word runs holding it go through
  ``normalize_text`` one by one.

Tokens are then split by Arrow (``ascii_split_whitespace``) and mapped to integer ids of the
benchmark vocabulary by Arrow's hash table (``index_in``): a token that is in no benchmark example
can be in no matching n-gram, so it becomes -1 and breaks every n-gram window it is in. N-gram keys
are polynomial hashes (mod 2**64) over the ids, passed through the splitmix64 finaliser.

Character offsets into the original text are only needed for documents that matched;
:meth:`Folder.offsets` recomputes them for one document with the same folding, so token ``i`` of the
fast path is token ``i`` there.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common import Normalization, normalize_text

U64 = np.uint64
COMPLEX = np.uint32(0xFFFFFFFF)
_WORD_RE = re.compile(r"\w", re.UNICODE)
_P_TOKEN = 0xC2B2AE3D27D4EB4F
_P_PAIR = 0x27D4EB2F165667C5
_LENGTH_SALT = 0x165667B19E3779F9
_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


UNKNOWN = np.uint32(0xFFFFFFFE)


def fold_code_point(cp: int, nfkc: bool = True, lowercase: bool = True) -> int:
    """How one code point folds: 0 = separator, :data:`COMPLEX` = context-dependent, else the
    folded code point.

    Code points past U+323AF (unassigned planes, private use, tags) are separators except the
    variation selectors U+E0100..U+E01EF, which are combining marks (complex).
    """
    if 0xD800 <= cp < 0xE000:
        return 0
    if cp >= 0x32400:
        return int(COMPLEX) if 0xE0100 <= cp < 0xE01F0 else 0
    ch = chr(cp)
    if unicodedata.category(ch).startswith("M") or 0x1100 <= cp < 0x1200 or 0xA960 <= cp < 0xA980 \
            or 0xD7B0 <= cp < 0xD800 or cp == 0x03A3:
        return int(COMPLEX)
    m = unicodedata.normalize("NFKC", ch) if nfkc else ch
    if lowercase:
        m = m.lower()
    if not _WORD_RE.search(m):
        return 0  # separator: punctuation, white space, symbols
    return ord(m) if len(m) == 1 else int(COMPLEX)


@functools.cache
def fold_table(nfkc: bool = True, lowercase: bool = True) -> np.ndarray:
    """Per-code-point fold (see :func:`fold_code_point`), filled lazily: :data:`UNKNOWN` until
    :func:`fold_lookup` meets the code point. Building all 1.1M entries up front cost 1.5 s per
    process (most of a short `winnow contamination` run); a corpus uses a few thousand."""
    table = np.full(0x110000, UNKNOWN, dtype=np.uint32)
    table[:128] = [fold_code_point(cp, nfkc, lowercase) for cp in range(128)]
    return table


def fold_lookup(table: np.ndarray, cps: np.ndarray, nfkc: bool, lowercase: bool) -> np.ndarray:
    """``table[cps]``, computing the entries not met before. Threads may fill the same entries at
    once; they write equal values."""
    out = table[cps]
    unknown = out == UNKNOWN
    if unknown.any():
        new = np.unique(cps[unknown])
        table[new] = [fold_code_point(cp, nfkc, lowercase) for cp in new.tolist()]
        out = table[cps]
    return out


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic)."""
    x ^= x >> U64(30)
    x *= U64(0xBF58476D1CE4E5B9)
    x ^= x >> U64(27)
    x *= U64(0x94D049BB133111EB)
    x ^= x >> U64(31)
    return x


def _string_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets rebased to 0 as int64, UTF-8 bytes) of a string array, slices included."""
    n = len(arr)
    off_dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=off_dtype)[arr.offset: arr.offset + n + 1].astype(np.int64)
    buf = arr.buffers()[2]
    raw = np.frombuffer(buf, dtype=np.uint8)[offsets[0]: offsets[-1]] if buf is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], raw


def _string_array(offsets: np.ndarray, data: bytes) -> pa.Array:
    if offsets[-1] < 2**31 - 1:
        return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int64)),
                                            pa.py_buffer(data))


class Folder:
    """Folds text to space-separated word tokens; one instance per stage run."""

    def __init__(self, norm: Normalization = Normalization()) -> None:
        self.norm = norm
        self.table = fold_table(norm.nfkc, norm.lowercase)
        t = self.table[:128]
        self.ascii_translate = bytes(int(c) if c else 0x20 for c in t) + bytes(range(128, 256))

    def _fold(self, cps: np.ndarray) -> np.ndarray:
        return fold_lookup(self.table, cps, self.norm.nfkc, self.norm.lowercase)

    # -- whole batches ---------------------------------------------------------------------------

    def fold_array(self, arr: pa.Array) -> pa.Array:
        """Each string folded: word tokens in normalised form separated by ASCII spaces."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if len(arr) == 0:
            return pa.array([], pa.string())
        is_ascii = pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
        if is_ascii.all():
            return self._fold_ascii(arr)
        if not is_ascii.any():
            return self._fold_unicode(arr)
        a_idx, u_idx = np.flatnonzero(is_ascii), np.flatnonzero(~is_ascii)
        both = pa.concat_arrays([self._fold_ascii(arr.take(a_idx)).cast(pa.large_string()),
                                 self._fold_unicode(arr.take(u_idx)).cast(pa.large_string())])
        inv = np.empty(len(arr), np.int64)
        inv[np.concatenate((a_idx, u_idx))] = np.arange(len(arr))
        return both.take(inv)

    def tokens(self, arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
        """(token bounds per document, int64 ``len = n_docs + 1``; flat array of token strings)."""
        lists = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(self.fold_array(arr)))
        bounds = np.asarray(lists.offsets, dtype=np.int64)
        return bounds - bounds[0], lists.flatten()

    def hashed(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(token bounds per document, int64 ``len = n_docs + 1``; uint64 hash of every token).

        The same tokens as :meth:`tokens`, hashed straight from the folded UTF-8 bytes: each token
        is read 8 bytes at a time (unaligned loads from a padded buffer) and mixed with its length.
        ASCII and other documents are folded apart and their tokens put back in document order.
        """
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        n = len(arr)
        if n == 0:
            return np.zeros(1, np.int64), np.zeros(0, U64)
        is_ascii = pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
        if is_ascii.all():
            return _hash_buffer(*self._ascii_buffer(arr))
        if not is_ascii.any():
            return _hash_buffer(*self._unicode_buffer(arr))
        a_idx, u_idx = np.flatnonzero(is_ascii), np.flatnonzero(~is_ascii)
        ba, ha = _hash_buffer(*self._ascii_buffer(arr.take(a_idx)))
        bu, hu = _hash_buffer(*self._unicode_buffer(arr.take(u_idx)))
        counts = np.empty(n, np.int64)
        counts[a_idx], counts[u_idx] = np.diff(ba), np.diff(bu)
        src = np.empty(n, np.int64)
        src[a_idx], src[u_idx] = ba[:-1], bu[:-1] + ha.size
        bounds = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=bounds[1:])
        order = np.repeat(src - bounds[:-1], counts) + np.arange(int(bounds[-1]), dtype=np.int64)
        return bounds, np.concatenate((ha, hu))[order]

    def _ascii_buffer(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(byte offsets, folded bytes with 1 leading and 16 trailing spaces) of ASCII strings."""
        offsets, raw = _string_parts(arr)
        buf = bytearray(raw.size + 17)  # NUL padding folds to spaces
        buf[1:raw.size + 1] = raw.data
        return offsets, np.frombuffer(buf.translate(self.ascii_translate), np.uint8)

    def _unicode_buffer(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(byte offsets, folded UTF-8 with 1 leading and 16 trailing spaces) of any strings."""
        _, raw = _string_parts(arr)
        cps = np.frombuffer(raw.tobytes().decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
        char_bounds = np.zeros(len(arr) + 1, np.int64)
        np.cumsum(pc.utf8_length(arr).to_numpy(zero_copy_only=False), out=char_bounds[1:])
        fold = self._fold(cps)
        cplx = np.flatnonzero(fold == COMPLEX)
        if cplx.size:
            slow = set((np.searchsorted(char_bounds, cplx, side="right") - 1).tolist())
            pieces = []
            for d in range(len(arr)):
                lo, hi = char_bounds[d], char_bounds[d + 1]
                pieces.append(self._fold_slow(cps[lo:hi], fold[lo:hi])[0] if d in slow else fold[lo:hi])
            char_bounds = np.zeros(len(arr) + 1, np.int64)
            np.cumsum([p.size for p in pieces], out=char_bounds[1:])
            fold = np.concatenate(pieces)
        fold[fold == 0] = 0x20
        # UTF-8 length of each document: one byte per code point, plus the extra bytes of the
        # (few) non-ASCII ones
        wide = np.flatnonzero(fold >= 0x80)
        extra = 1 + (fold[wide] >= 0x800).astype(np.int64) + (fold[wide] >= 0x10000)
        per_doc = np.bincount(np.searchsorted(char_bounds, wide, side="right") - 1, weights=extra,
                              minlength=len(char_bounds) - 1).astype(np.int64)
        byte_bounds = char_bounds.copy()
        byte_bounds[1:] += np.cumsum(per_doc)
        data = b" " + fold.tobytes().decode("utf-32-le").encode("utf-8") + b" " * 16
        return byte_bounds, np.frombuffer(data, np.uint8)

    def _fold_ascii(self, arr: pa.Array) -> pa.Array:
        offsets, buf = self._ascii_buffer(arr)
        return _string_array(offsets, buf[1:-16].tobytes())

    def _fold_unicode(self, arr: pa.Array) -> pa.Array:
        offsets, buf = self._unicode_buffer(arr)
        return _string_array(offsets, buf[1:-16].tobytes())

    def _fold_slow(self, cps: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact folding of one document holding complex code points.

        Word runs with a complex code point go through ``normalize_text``; each token of such a run
        is given the run's character span. Returns (folded code points, 0 = separator; and for each,
        the original character span ``[start, end)`` it comes from).
        """
        nonsep = fold != 0
        edges = np.flatnonzero(np.diff(np.concatenate(([False], nonsep, [False])).astype(np.int8)))
        run_lo, run_hi = edges[::2], edges[1::2]
        # only the word runs that hold a complex code point
        hot = np.unique(np.searchsorted(run_lo, np.flatnonzero(fold == COMPLEX), side="right") - 1)
        f_out, s_out, e_out = [], [], []
        last = 0
        for lo, hi in zip(run_lo[hot].tolist(), run_hi[hot].tolist()):
            f_out.append(fold[last:lo])
            s_out.append(np.arange(last, lo, dtype=np.int64))
            e_out.append(np.arange(last + 1, lo + 1, dtype=np.int64))
            text = cps[lo:hi].tobytes().decode("utf-32-le")
            for tok in normalize_text(text, self.norm).split():
                t = np.frombuffer(tok.encode("utf-32-le"), dtype=np.uint32)
                f_out.append(np.append(t, np.uint32(0)))
                s_out.append(np.full(len(t) + 1, lo, dtype=np.int64))
                e_out.append(np.full(len(t) + 1, hi, dtype=np.int64))
            last = hi
        f_out.append(fold[last:])
        s_out.append(np.arange(last, len(fold), dtype=np.int64))
        e_out.append(np.arange(last + 1, len(fold) + 1, dtype=np.int64))
        return np.concatenate(f_out).astype(np.uint32), np.concatenate(s_out), np.concatenate(e_out)

    # -- one document, with offsets ---------------------------------------------------------------

    def offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Character (start, end) of every token of ``text``, in the order of :meth:`tokens`."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        fold = self._fold(cps)
        spans = None
        if (fold == COMPLEX).any():
            fold, *spans = self._fold_slow(cps, fold)
        word = np.concatenate(([False], fold != 0, [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(word))
        s, e = edges[::2], edges[1::2]
        if spans is None:
            return s.astype(np.int64), e.astype(np.int64)
        return spans[0][s], spans[1][e - 1]


def _hash_buffer(offsets: np.ndarray, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token bounds and hashes of folded text: ``buf`` is 1 space, the documents' folded bytes
    back to back (``offsets``), 16 spaces."""
    N = buf.size - 17
    word = buf[:N + 2] != 0x20
    edges = np.flatnonzero(word[1:] != word[:-1])  # alternately token start, token end
    s, e = edges[0::2], edges[1::2]
    # documents are adjacent in the buffer: split a token that runs across a boundary
    inner = offsets[1:-1]
    inner = inner[(inner > 0) & (inner < N)]
    cut = inner[word[inner] & word[inner + 1]]
    if cut.size:
        s = np.insert(s, np.searchsorted(s, cut), cut)
        e = np.insert(e, np.searchsorted(e, cut), cut)
    bounds = np.searchsorted(s, offsets, side="left").astype(np.int64)
    if s.size == 0:
        return bounds, np.zeros(0, U64)
    s1 = s + 1  # positions in buf
    load8 = np.ndarray(shape=(N + 10,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    length = e - s
    with np.errstate(over="ignore"):
        h = load8[s1] & _MASKS[np.minimum(length, 8)]
        h += length.astype(U64) * U64(_P_TOKEN)
        _mix64(h)
        c = 8
        idx = np.flatnonzero(length > c)
        while idx.size:
            w = load8[s1[idx] + c] & _MASKS[np.minimum(length[idx] - c, 8)]
            h[idx] = _mix64(h[idx] * U64(_P_TOKEN) + w)
            c += 8
            idx = idx[length[idx] > c]
    return bounds, h


class Vocab:
    """Hashes of the adjacent token pairs of the benchmark, as a bitmap.

    Every token pair inside an indexed n-gram is a benchmark pair, so a corpus window holding a pair
    that is not one can be skipped before hashing. Pairs are far more selective than single tokens
    (on 20 MB of web and docs text against 5k benchmark items: 26% of corpus pairs pass vs 77% of
    tokens). A bitmap answers "maybe" for a few pairs outside the set (about ``len/2**bits``); those
    only make the n-gram lookup check a few more windows.
    """

    def __init__(self, token_hashes: np.ndarray) -> None:
        uniq = np.unique(_pair_hashes(token_hashes))
        self.size = int(uniq.size)
        bits = int(min(26, max(12, np.ceil(np.log2(max(self.size, 1))) + 6)))
        self.shift = U64(64 - bits)
        self.bitmap = np.zeros(1 << bits, dtype=bool)
        self.bitmap[uniq >> self.shift] = True

    def __len__(self) -> int:
        return self.size

    def usable_pairs(self, token_hashes: np.ndarray) -> np.ndarray:
        """Bool per token: the pair (token, next token) may be in the benchmark (False for the last)."""
        out = np.zeros(token_hashes.size, bool)
        if token_hashes.size > 1:
            out[:-1] = self.bitmap[_pair_hashes(token_hashes) >> self.shift]
        return out


def _pair_hashes(th: np.ndarray) -> np.ndarray:
    # token hashes are already mixed: one multiply-xor keeps the top bits uniform for the bitmap
    with np.errstate(over="ignore"):
        out = th[:-1] * U64(_P_PAIR)
        out ^= th[1:]
        return out


def ngram_keys(th: np.ndarray, usable: np.ndarray, bounds: np.ndarray, lengths: list[int]
               ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Keys of every n-gram, for each n in ``lengths``, that lies in one document and whose token
    pairs are all ``usable``.

    ``th`` are token hashes (:meth:`Folder.hashed`), ``usable[k]`` says whether the pair of tokens
    k, k+1 may be in an n-gram (:meth:`Vocab.usable_pairs`; all True to hash every n-gram),
    ``bounds`` the token bounds of the documents. Returns ``{n: (uint64 keys, int64 index of each
    n-gram's first token)}``. One pass serves every length: the polynomial hash of a window is
    extended token by token and read off at each requested length.
    """
    lengths = sorted(set(lengths))
    T = th.size
    empty = (np.zeros(0, U64), np.zeros(0, np.int64))
    if T == 0:
        return {n: empty for n in lengths}
    # run[k]: tokens from k (k included) that chain through usable pairs, capped at the doc end
    idx = np.arange(T, dtype=np.int64)
    nxt = np.where(usable, T, idx)  # first unusable pair at or after k ends the chain after it
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    doc_end = np.repeat(bounds[1:], np.diff(bounds))
    run = np.minimum(nxt + 1, doc_end) - idx
    out = {}
    first = np.flatnonzero(run >= lengths[0])
    h = np.zeros(first.size, U64)
    done = 0
    with np.errstate(over="ignore"):
        for n in lengths:
            keep = run[first] >= n
            first, h = first[keep], h[keep]
            for j in range(done, n):  # Horner, one more token per step
                h *= U64(_P_TOKEN)
                h += th[first + j]
            done = n
            key = h + U64((n * _LENGTH_SALT) & 0xFFFFFFFFFFFFFFFF)
            out[n] = (_mix64(key), first)
    return out
