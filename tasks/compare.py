"""Compare trained models with intervals: per-document held-out losses and a paired bootstrap.

Two training recipes (two mixtures, a curation stage on or off) are compared on the *same*
held-out documents, each recipe trained with several seeds. :func:`document_bits` scores every
held-out document (or chunk) of a model on its own, through :func:`tasks.evaluate.run`, so the
numbers are the evaluate stage's. :func:`bootstrap_difference` then resamples documents within
each domain (the same draw for both recipes: paired) and seeds (independently per recipe), and
reports the difference in bits/byte per domain, of the mean over domains and of the worst domain,
with a percentile 95% interval. An interval that contains 0 is reported as "no measurable effect",
never as a bare number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks import evaluate
from tasks.common import BENCHMARK_SCHEMA

DOCS_SCHEMA = pa.schema([("key", pa.string()), ("domain", pa.string()), ("bits", pa.float64()), ("bytes", pa.int64())])


def document_bits(model_dir: Path, heldout: pa.Table, max_docs_per_domain: int | None = 20,
                  num_threads: int | None = 1) -> pa.Table:
    """Total bits and UTF-8 bytes of each held-out row (:data:`DOCS_SCHEMA`), in a fixed order.

    Rows are the evaluate stage's hash-ordered subset of at most ``max_docs_per_domain`` per
    domain (the same rows for every model), each scored as its own "domain".
    """
    keys = [f"{i}#{p}" for i, p in zip(heldout["id"].to_pylist(), heldout["part"].to_pylist())]
    chosen = evaluate._capped(keys, heldout["domain"].to_pylist(), max_docs_per_domain, evaluate.Params().sample_salt,
                              [len(t.encode("utf-8")) for t in heldout["text"].to_pylist()], None)
    picked = heldout.take(pa.array(sorted(chosen), pa.int64()))
    picked_keys = [keys[i] for i in sorted(chosen)]
    one_each = pa.table({"id": picked_keys, "part": [0] * len(picked_keys), "text": picked["text"], "domain": picked_keys})
    scored = evaluate.run(model_dir, one_each, BENCHMARK_SCHEMA.empty_table(),
                          evaluate.Params(max_docs_per_domain=None, max_bytes_per_domain=None, num_threads=num_threads))
    per = {r["domain"]: r for r in scored.tables["data"].to_pylist()}
    domain_of = dict(zip(picked_keys, picked["domain"].to_pylist()))
    rows = [{"key": k, "domain": domain_of[k], "bits": per[k]["bits_per_byte"] * per[k]["bytes"], "bytes": per[k]["bytes"]}
            for k in sorted(picked_keys)]
    return pa.Table.from_pylist(rows, schema=DOCS_SCHEMA)


def bootstrap_difference(a: list[pa.Table], b: list[pa.Table], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Bits/byte of recipe ``a`` minus recipe ``b`` (one :func:`document_bits` table per seed).

    Returns one row per domain plus ``mean`` (macro over domains) and ``worst`` (the highest
    domain): ``a``, ``b``, ``difference`` (negative: ``a`` is better), ``lo``, ``hi`` (95%
    percentile interval) and ``verdict``.
    """
    keys = a[0]["key"].to_pylist()
    for t in [*a, *b]:
        if t["key"].to_pylist() != keys:
            raise ValueError("bootstrap_difference: every table must score the same held-out rows")
    domains = sorted(set(a[0]["domain"].to_pylist()))
    dom = np.array(a[0]["domain"].to_pylist(), dtype=object)
    nbytes = np.array(a[0]["bytes"].to_pylist(), dtype=np.float64)
    bits_a = np.array([t["bits"].to_pylist() for t in a])  # [seeds, docs]
    bits_b = np.array([t["bits"].to_pylist() for t in b])
    rows_of = [np.flatnonzero(dom == d) for d in domains]
    rng = np.random.default_rng(seed)

    def stats(sa: np.ndarray, sb: np.ndarray, idx: list[np.ndarray]) -> np.ndarray:
        """[domains + 2, 2]: bits/byte of a and b per domain, then mean and worst."""
        per = np.array([[bits_a[sa][:, i].sum(1).mean() / nbytes[i].sum(), bits_b[sb][:, i].sum(1).mean() / nbytes[i].sum()]
                        for i in idx])
        return np.vstack([per, per.mean(0), per.max(0)])

    point = stats(np.arange(len(a)), np.arange(len(b)), rows_of)
    boots = np.empty((n_boot, len(domains) + 2))
    for k in range(n_boot):
        idx = [r[rng.integers(len(r), size=len(r))] for r in rows_of]  # paired: same documents for a and b
        s = stats(rng.integers(len(a), size=len(a)), rng.integers(len(b), size=len(b)), idx)
        boots[k] = s[:, 0] - s[:, 1]
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    out = []
    for j, name in enumerate([*domains, "mean", "worst"]):
        diff = point[j, 0] - point[j, 1]
        out.append({"domain": name, "a": float(point[j, 0]), "b": float(point[j, 1]), "difference": float(diff),
                    "lo": float(lo[j]), "hi": float(hi[j]), "verdict": verdict(float(lo[j]), float(hi[j]))})
    return out


def verdict(lo: float, hi: float) -> str:
    """``better`` / ``worse`` (for a, lower bits/byte is better) or ``no measurable effect``."""
    if lo <= 0 <= hi or math.isnan(lo):
        return "no measurable effect"
    return "better" if hi < 0 else "worse"
