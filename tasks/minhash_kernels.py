"""The Numba kernels of :mod:`tasks.minhash`, in a module of their own so that a command with
nothing to compute (a cached ``winnow dedup``) never imports Numba: :func:`tasks.minhash.kernels`
imports this on first use. Each kernel is bit-identical to its NumPy fallback in
:mod:`tasks.minhash` (tested).
"""

from __future__ import annotations

import numba
import numpy as np

from tasks.minhash import _FNV_OFFSET, _FNV_PRIME, _M1, _M2, _MASK32, _POLY, _POLY2  # noqa: F401


@numba.njit(inline="always")
def _nb_fmix64(h):  # pragma: no cover - compiled
    h ^= h >> np.uint64(33)
    h *= _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return h


@numba.njit(inline="always")
def _nb_fmix32(x):  # pragma: no cover - compiled
    h = np.uint64(x)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    h ^= h >> np.uint64(16)
    return np.uint32(h)


@numba.njit(inline="always")
def _nb_minhash_into(sig, hv, a, b):  # pragma: no cover - compiled
    # One shingle hash into a running MinHash signature: the permutations a*x+b, mod 2^32.
    x = _nb_fmix32(hv)
    for j in range(a.shape[0]):
        v = np.uint32(a[j] * x + b[j])
        sig[j] = min(sig[j], v)


@numba.njit(inline="always")
def _nb_char(data, i):  # pragma: no cover - compiled
    b0 = np.int64(data[i])
    if b0 < 0x80:
        return b0, 1
    if b0 < 0xE0:
        return ((b0 & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
    if b0 < 0xF0:
        return ((b0 & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), 3
    return (((b0 & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12)
            | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)), 4


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_count_tokens(data, offsets, classes, strip):  # pragma: no cover - compiled
    ndoc = offsets.shape[0] - 1
    counts = np.zeros(ndoc, np.int64)
    for d in numba.prange(ndoc):
        i, end, c, inside = offsets[d], offsets[d + 1], 0, False
        while i < end:
            cp, width = _nb_char(data, i)
            k = classes[cp]
            tok = k == 1 or (k == 2 and not strip)
            if tok and not inside:
                c += 1
            inside = tok
            i += width
        counts[d] = c
    return counts


@numba.njit(cache=True, nogil=True)
def _nb_tokenize(data, i, end, classes, strip, out, t):  # pragma: no cover - compiled
    # The tokenizer rule, once: the hash of each token of data[i:end] (UTF-8 bytes) into out[t:];
    # returns the index after the last one written.
    inside = False
    h = _FNV_OFFSET
    while i < end:
        cp, width = _nb_char(data, i)
        cl = classes[cp]
        is_tok = cl == 1 or (cl == 2 and not strip)
        if is_tok:
            if not inside:
                h = _FNV_OFFSET
            for j in range(i, i + width):
                h = (h ^ np.uint64(data[j])) * _FNV_PRIME
        elif inside:
            out[t] = _nb_fmix64(h)
            t += 1
        inside = is_tok
        i += width
    if inside:
        out[t] = _nb_fmix64(h)
        t += 1
    return t


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_token_hashes(data, offsets, classes, strip, tok_off):  # pragma: no cover - compiled
    ndoc = offsets.shape[0] - 1
    out = np.empty(tok_off[ndoc], np.uint64)
    for d in numba.prange(ndoc):
        _nb_tokenize(data, offsets[d], offsets[d + 1], classes, strip, out, tok_off[d])
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_documents(units, uoff, n, a, b, sh_off):  # pragma: no cover - compiled
    ndoc = uoff.shape[0] - 1
    k = a.shape[0]
    sigs = np.empty((ndoc, k), np.uint32)
    h32 = np.empty(sh_off[ndoc], np.uint32)
    exact = np.empty((ndoc, 2), np.uint64)
    for d in numba.prange(ndoc):
        u0, u1 = uoff[d], uoff[d + 1]
        e1 = np.uint64(u1 - u0)
        e2 = e1
        for i in range(u0, u1):
            e1 = e1 * _POLY + units[i]
            e2 = e2 * _POLY2 + units[i]
        exact[d, 0] = _nb_fmix64(e1)
        exact[d, 1] = _nb_fmix64(e2)
        width = min(n, u1 - u0)
        sig = np.full(k, np.uint32(0xFFFFFFFF), np.uint32)
        for s in range(sh_off[d + 1] - sh_off[d]):
            acc = np.uint64(0)
            for j in range(width):
                acc = acc * _POLY + units[u0 + s + j]
            hv = np.uint32(_nb_fmix64(acc) >> np.uint64(32))
            h32[sh_off[d] + s] = hv
            _nb_minhash_into(sig, hv, a, b)
        sigs[d, :] = sig
    return sigs, h32, exact

# Each kernel below is a per-item body plus two drivers, one parallel (prange) and one
# serial: waking the thread pool costs more than a small input takes (and, on a loaded
# machine, a scheduler time slice), so inputs under ~1 MB run serially. The bodies are
# compiled once and called from both drivers (inlining them doubled the compile time).


@numba.njit(cache=True, nogil=True)
def _nb_word_doc(d, data, offsets, classes, strip, n, a, b, bands, rows, cap_off, sigs, exact, keys, counts,
                 shbuf):  # pragma: no cover - compiled
    # Everything for one document in one pass while its bytes are in cache: tokenize and
    # hash, exact key, shingles, MinHash, band keys. Shingles go to a buffer with room for
    # the most a text of that length can have ((bytes + 1) // 2 + 1), compacted afterwards.
    k = a.shape[0]
    tok = np.empty(cap_off[d + 1] - cap_off[d], np.uint64)
    t = _nb_tokenize(data, offsets[d], offsets[d + 1], classes, strip, tok, 0)
    e1 = np.uint64(t)
    e2 = e1
    for j in range(t):
        e1 = e1 * _POLY + tok[j]
        e2 = e2 * _POLY2 + tok[j]
    exact[d, 0] = _nb_fmix64(e1)
    exact[d, 1] = _nb_fmix64(e2)
    nsh = t - n + 1 if t >= n else (1 if t > 0 else 0)
    width = min(n, t)
    sig = np.full(k, np.uint32(0xFFFFFFFF), np.uint32)
    base = cap_off[d]
    for s in range(nsh):
        acc = np.uint64(0)
        for j in range(width):
            acc = acc * _POLY + tok[s + j]
        hv = np.uint32(_nb_fmix64(acc) >> np.uint64(32))
        shbuf[base + s] = hv
        _nb_minhash_into(sig, hv, a, b)
    sigs[d, :] = sig
    for band in range(bands):
        acc = np.uint64(band + 1)
        for j in range(band * rows, (band + 1) * rows):
            acc = acc * _POLY + np.uint64(sig[j])
        keys[d, band] = _nb_fmix64(acc)
    counts[d, 0] = t
    counts[d, 1] = nsh


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_word_par(data, offsets, classes, strip, n, a, b, bands, rows, cap_off, sigs, exact, keys, counts,
                 shbuf):  # pragma: no cover - compiled
    for d in numba.prange(offsets.shape[0] - 1):
        _nb_word_doc(d, data, offsets, classes, strip, n, a, b, bands, rows, cap_off, sigs, exact, keys, counts,
                     shbuf)


@numba.njit(cache=True, nogil=True)
def _nb_word_ser(data, offsets, classes, strip, n, a, b, bands, rows, cap_off, sigs, exact, keys, counts,
                 shbuf):  # pragma: no cover - compiled
    for d in range(offsets.shape[0] - 1):
        _nb_word_doc(d, data, offsets, classes, strip, n, a, b, bands, rows, cap_off, sigs, exact, keys, counts,
                     shbuf)


@numba.njit(cache=True, nogil=True)
def _nb_copy_doc(d, buf, starts, lengths, out_off, out):  # pragma: no cover - compiled
    out[out_off[d] : out_off[d + 1]] = buf[starts[d] : starts[d] + lengths[d]]


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_compact_par(buf, starts, lengths, out_off, out):  # pragma: no cover - compiled
    for d in numba.prange(lengths.shape[0]):
        _nb_copy_doc(d, buf, starts, lengths, out_off, out)


@numba.njit(cache=True, nogil=True)
def _nb_compact_ser(buf, starts, lengths, out_off, out):  # pragma: no cover - compiled
    for d in range(lengths.shape[0]):
        _nb_copy_doc(d, buf, starts, lengths, out_off, out)


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_signatures(h, offsets, a, b):  # pragma: no cover - compiled
    ndoc = offsets.shape[0] - 1
    k = a.shape[0]
    out = np.empty((ndoc, k), np.uint32)
    for d in numba.prange(ndoc):
        sig = np.full(k, np.uint32(0xFFFFFFFF), np.uint32)
        for i in range(offsets[d], offsets[d + 1]):
            _nb_minhash_into(sig, h[i], a, b)
        out[d, :] = sig
    return out


@numba.njit(cache=True, nogil=True)
def _nb_jaccard_pair(p, values, offsets, left, right, out):  # pragma: no cover - compiled
    i0, i1 = offsets[left[p]], offsets[left[p] + 1]
    j0, j1 = offsets[right[p]], offsets[right[p] + 1]
    size = (i1 - i0) + (j1 - j0)
    inter = 0
    while i0 < i1 and j0 < j1:
        x, y = values[i0], values[j0]
        if x == y:
            inter += 1
            i0 += 1
            j0 += 1
        elif x < y:
            i0 += 1
        else:
            j0 += 1
    out[p] = inter / (size - inter) if size > inter else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_jaccard_par(values, offsets, left, right, out):  # pragma: no cover - compiled
    for p in numba.prange(left.shape[0]):
        _nb_jaccard_pair(p, values, offsets, left, right, out)


@numba.njit(cache=True, nogil=True)
def _nb_jaccard_ser(values, offsets, left, right, out):  # pragma: no cover - compiled
    for p in range(left.shape[0]):
        _nb_jaccard_pair(p, values, offsets, left, right, out)


@numba.njit(cache=True, nogil=True)
def _nb_radix_sort_u32(x):  # pragma: no cover - compiled
    # LSD radix sort, 3 passes of 11 bits: ~5x faster than np.sort on random 32-bit hashes
    # of a few hundred or more.
    src = x.copy()
    dst = np.empty_like(x)
    counts = np.empty(2048, np.int64)
    for shift in (0, 11, 22):
        counts[:] = 0
        for v in src:
            counts[(v >> shift) & 0x7FF] += 1
        total = 0
        for i in range(2048):
            c = counts[i]
            counts[i] = total
            total += c
        for v in src:
            digit = (v >> shift) & 0x7FF
            dst[counts[digit]] = v
            counts[digit] += 1
        src, dst = dst, src
    return src


@numba.njit(cache=True, nogil=True)
def _nb_sort_doc(d, values, offsets, tmp, counts):  # pragma: no cover - compiled
    seg = values[offsets[d] : offsets[d + 1]]
    if seg.shape[0] > 32:
        s = _nb_radix_sort_u32(seg)
    else:  # insertion sort: tiny sets, and no need to compile np.sort
        s = seg.copy()
        for i in range(1, s.shape[0]):
            v = s[i]
            j = i - 1
            while j >= 0 and s[j] > v:
                s[j + 1] = s[j]
                j -= 1
            s[j + 1] = v
    c = 0
    for i in range(s.shape[0]):
        if i == 0 or s[i] != s[i - 1]:
            tmp[offsets[d] + c] = s[i]
            c += 1
    counts[d] = c


@numba.njit(parallel=True, cache=True, nogil=True)
def _nb_sort_par(values, offsets, tmp, counts):  # pragma: no cover - compiled
    for d in numba.prange(offsets.shape[0] - 1):
        _nb_sort_doc(d, values, offsets, tmp, counts)


@numba.njit(cache=True, nogil=True)
def _nb_sort_ser(values, offsets, tmp, counts):  # pragma: no cover - compiled
    for d in range(offsets.shape[0] - 1):
        _nb_sort_doc(d, values, offsets, tmp, counts)
