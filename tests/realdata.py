"""Real text for tests, read from the bundled sample (``data/sample/corpus.parquet``).

Tests used to read the Debian ``fortunes*`` and ``linux-doc-*`` packages from ``/usr/share``. A fresh
Debian machine (CI) has neither, so those tests skipped or failed there. The sample holds the same
records, and it is always in the repository: every fortune of the 43 categories with at least 30
records, and the same kernel ``Documentation/`` paths taken from both linux-doc 6.1 and 6.12.

The sample splits fortune files on ``%`` lines and strips each record, as the tests did. For the
categories the tests use, its texts equal the old ``\\n%\\n`` split byte for byte. Only ``knghtbrd``,
``paradoxum`` and ``tao`` differ: the old split left a stray ``%`` at the start of a record. The
sample also leaves out the three small categories ``ascii-art``, ``pratchett`` and ``translate-me``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data" / "sample" / "corpus.parquet"


@functools.cache
def _domain(domain: str) -> dict[str, str]:
    """id -> text for one domain of the sample, in file order."""
    if not SAMPLE_CORPUS.exists():
        raise FileNotFoundError(f"bundled sample missing: {SAMPLE_CORPUS} (run `python data/build_sample.py`)")
    t = pq.read_table(SAMPLE_CORPUS, columns=["id", "text", "domain"])
    t = t.filter(pc.equal(t["domain"], domain))
    return dict(zip(t["id"].to_pylist(), t["text"].to_pylist()))


@functools.cache
def _fortunes_by_category() -> dict[str, tuple[str, ...]]:
    """Category -> its records in file order. Ids are ``quote:<category>:<record number>``."""
    recs: dict[str, list[tuple[int, str]]] = {}
    for id_, text in _domain("quotes").items():
        _, cat, num = id_.split(":")
        recs.setdefault(cat, []).append((int(num), text))
    return {cat: tuple(t for _, t in sorted(r)) for cat, r in sorted(recs.items())}


def fortune_categories() -> list[str]:
    """The fortune categories in the sample, sorted by name (the order of the files on disk)."""
    return list(_fortunes_by_category())


def fortunes(categories: Iterable[str] | None = None, per_category: int | None = None) -> list[tuple[str, str]]:
    """``(category, text)`` records of real Debian fortunes.

    Categories come in the order given (all of them, sorted by name, when None). Within a category
    the records keep their file order, and at most ``per_category`` of them are returned.
    """
    by_cat = _fortunes_by_category()
    cats = list(by_cat) if categories is None else list(categories)
    unknown = [c for c in cats if c not in by_cat]
    if unknown:
        raise KeyError(f"fortune categories not in the bundled sample: {unknown}")
    return [(c, text) for c in cats for text in by_cat[c][:per_category]]


def kernel_doc_pairs() -> list[tuple[str, str, str]]:
    """``(path, 6.1 text, 6.12 text)`` for each kernel Documentation path in the sample.

    These are natural duplicates: most files did not change between the two releases, and many
    changed only a little. Paths are relative to ``Documentation/`` and sorted.
    """
    docs = _domain("docs")
    old, new = "docs:linux-6.1/", "docs:linux-6.12/"
    return [(i[len(old) :], t, docs[new + i[len(old) :]]) for i, t in sorted(docs.items()) if i.startswith(old)]


def bible_verses(translation: str, chapter: str) -> list[str]:
    """The verses of one Bible chapter in the sample, in order: ``translation`` is ``kjv`` or ``web``,
    ``chapter`` an OSIS reference such as ``John.1``. The sample stores one verse per line."""
    prose = _domain("prose")
    key = f"{translation}:{chapter}"
    if key not in prose:
        raise KeyError(f"{key} is not in the bundled sample")
    return prose[key].splitlines()
