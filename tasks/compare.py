"""Compare trained models with intervals: per-document held-out losses and a paired bootstrap.

Two training recipes (two mixtures, a curation stage on or off) are compared on the *same*
held-out documents, each recipe trained with several seeds. :func:`document_bits` scores every
held-out document (or chunk) of a model on its own, through :func:`tasks.evaluate.run`, so the
numbers are the evaluate stage's. :func:`bootstrap_difference` then resamples documents within
each domain (the same draw for both recipes: paired) and seeds, and reports the difference in bits/byte per domain, of the mean over domains and of the worst domain,
with a percentile 95% interval. An interval that contains 0 is reported as "no measurable effect",
never as a bare number.

Seeds are paired too when both recipes ran the same seeds (:func:`seed_draws`): seed ``s`` of
every recipe starts from the same initialisation (same shape and tokenizer) and reads its
batches in the same seeded order, so a resample draws seed indices once for all recipes and the
init's luck, shared, cancels from the difference instead of widening its interval.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from tasks import evaluate
from tasks.common import BENCHMARK_SCHEMA
from winnow.errors import WinnowError

DOCS_SCHEMA = pa.schema([("key", pa.string()), ("domain", pa.string()), ("bits", pa.float64()), ("bytes", pa.int64())])
HALVES = ("dev", "test")
_HALF_SALT = b"winnow-dev-test\x00"


def heldout_half(heldout: pa.Table, half: str | None, group: str = "domain") -> pa.Table:
    """The ``dev`` or ``test`` half of the mixture's held-out split (``None``: all of it).

    ``group = "benchmark"`` splits a benchmark table's items the same way (per benchmark).

    Whole documents go to one half (all parts of a chunked document together): per domain, the
    distinct ids in order of a salted hash alternate between ``dev`` and ``test``, so the halves
    are balanced and each holds documents of every domain with two or more. A method tuned on
    ``dev`` (RegMix's and DoReMi's proxies are scored there) is then judged on ``test`` documents
    it never saw. A domain with a single held-out document keeps it in both halves.
    """
    if half is None:
        return heldout
    if half not in HALVES:
        raise WinnowError(f"held-out half {half!r}: use 'dev', 'test' or none")
    ids, domains = [str(i) for i in heldout["id"].to_pylist()], heldout[group].to_pylist()
    side: dict[tuple[str, str], int] = {}
    for d in set(domains):
        distinct = sorted({i for i, dd in zip(ids, domains) if dd == d},
                          key=lambda i: xxhash.xxh64_intdigest(_HALF_SALT + i.encode("utf-8")))
        for rank, i in enumerate(distinct):
            side[(d, i)] = -1 if len(distinct) == 1 else rank % 2
    want = HALVES.index(half)
    keep = [j for j, (i, d) in enumerate(zip(ids, domains)) if side[(d, i)] in (-1, want)]
    return heldout.take(pa.array(keep, pa.int64()))


def document_prefixes(heldout: pa.Table, max_bytes: int) -> pa.Table:
    """One row per held-out document: its first part cut to at most ``max_bytes`` UTF-8 bytes.

    A byte cap per domain over chunked documents (8 kB parts) lets two or three long documents
    fill a domain; with every document's prefix instead, a domain's bytes come from as many
    documents as fit, so its interval (documents resampled) rests on many documents.
    """
    first = {}
    for j, (i, p) in enumerate(zip(heldout["id"].to_pylist(), heldout["part"].to_pylist())):
        if i not in first or p < heldout["part"][first[i]].as_py():
            first[i] = j
    rows = heldout.take(pa.array(sorted(first.values()), pa.int64()))
    cut = [t.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore") for t in rows["text"].to_pylist()]
    return rows.set_column(rows.schema.get_field_index("text"), "text", pa.array(cut, pa.string()))


def document_bits(model_dir: Path, heldout: pa.Table, max_docs_per_domain: int | None = 20,
                  num_threads: int | None = 1, max_bytes_per_domain: int | None = None) -> pa.Table:
    """Total bits and UTF-8 bytes of each held-out row (:data:`DOCS_SCHEMA`), in a fixed order.

    Rows are the evaluate stage's hash-ordered subset (:func:`tasks.evaluate.capped`) of at most
    ``max_docs_per_domain`` rows and ``max_bytes_per_domain`` bytes per domain (None: no cap;
    the same rows for every model), each scored as its own "domain".
    """
    keys = [f"{i}#{p}" for i, p in zip(heldout["id"].to_pylist(), heldout["part"].to_pylist())]
    chosen = evaluate.capped(keys, heldout["domain"].to_pylist(), max_docs_per_domain, evaluate.Params().sample_salt,
                             [len(t.encode("utf-8")) for t in heldout["text"].to_pylist()], max_bytes_per_domain)
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


def benchmark_bits(model_dir: Path, benchmarks: pa.Table, max_per_benchmark: int | None = 100,
                   num_threads: int | None = 1) -> pa.Table:
    """Bits and UTF-8 bytes of each benchmark item's gold answer given its question (:data:`DOCS_SCHEMA`).

    A continuous benchmark score that moves long before accuracy leaves chance: the negative
    log-likelihood of the right choice (multiple choice) or of the target, as the evaluate stage
    scores it. ``domain`` is the benchmark, so :func:`bootstrap_difference` compares benchmarks
    as it compares domains (items resampled within each benchmark).
    """
    if benchmarks.num_rows == 0:
        return DOCS_SCHEMA.empty_table()
    one_doc = pa.table({"id": ["-"], "part": [0], "text": ["-"], "domain": ["-"]})  # evaluate needs a held-out row
    scored = evaluate.run(model_dir, one_doc, benchmarks, evaluate.Params(
        max_docs_per_domain=None, max_bytes_per_domain=None, max_examples_per_benchmark=max_per_benchmark,
        num_threads=num_threads)).tables["examples"]
    gold = {(r["benchmark"], r["id"]): r for r in benchmarks.to_pylist()}
    rows = []
    for ex in scored.to_pylist():
        item = gold[(ex["benchmark"], ex["id"])]
        if ex["kind"] == "multiple_choice":
            nll, text = -ex["logliks"][ex["answer"]], item["choices"][ex["answer"]]
        else:
            nll, text = -ex["logliks"][0], item["target"]
        rows.append({"key": str(ex["id"]), "domain": ex["benchmark"], "bits": nll / math.log(2),
                     "bytes": max(1, len(text.encode("utf-8")))})
    rows.sort(key=lambda r: (r["domain"], r["key"]))
    return pa.Table.from_pylist(rows, schema=DOCS_SCHEMA)


def seed_draws(rng: np.random.Generator, counts: list[int], paired: bool = True) -> list[np.ndarray]:
    """One bootstrap draw of seed indices per recipe (``counts``: seeds of each recipe).

    ``paired`` (and every recipe ran as many seeds): one draw shared by all recipes, so the
    ``j``-th seed of each is resampled together; otherwise an independent draw per recipe.
    """
    if paired and len(set(counts)) == 1:
        draw = rng.integers(counts[0], size=counts[0])
        return [draw] * len(counts)
    return [rng.integers(n, size=n) for n in counts]


def bootstrap_difference(a: list[pa.Table], b: list[pa.Table], n_boot: int = 2000, seed: int = 0,
                         pair_seeds: bool = True) -> list[dict[str, Any]]:
    """Bits/byte of recipe ``a`` minus recipe ``b`` (one :func:`document_bits` table per seed).

    ``a[j]`` and ``b[j]`` must be the same training seed when ``pair_seeds`` (:func:`seed_draws`);
    ``pair_seeds = False`` resamples each recipe's seeds on their own.

    Returns one row per domain plus ``mean`` (macro over domains) and ``worst`` (the highest
    domain): ``a``, ``b``, ``difference`` (negative: ``a`` is better), ``lo``, ``hi`` (95%
    percentile interval) and ``verdict``.
    """
    domains, dom, nbytes, (bits_a, bits_b) = _documents([a, b])
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
        s = stats(*seed_draws(rng, [len(a), len(b)], pair_seeds), idx)
        boots[k] = s[:, 0] - s[:, 1]
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    out = []
    for j, name in enumerate([*domains, "mean", "worst"]):
        diff = point[j, 0] - point[j, 1]
        out.append({"domain": name, "a": float(point[j, 0]), "b": float(point[j, 1]), "difference": float(diff),
                    "lo": float(lo[j]), "hi": float(hi[j]), "verdict": verdict(float(lo[j]), float(hi[j]))})
    return out


def _documents(recipes: list[list[pa.Table]]) -> tuple[list[str], np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-document totals of :func:`document_bits` tables: domains, each document's domain and
    bytes, and per recipe the bits as ``[seeds, documents]``.

    The document is the unit a bootstrap resamples: the parts of a chunked one ("id#part") are
    summed, since they are not independent evidence.
    """
    first = recipes[0][0]
    keys, key_domains = first["key"].to_pylist(), first["domain"].to_pylist()
    for t in (t for r in recipes for t in r):
        if t["key"].to_pylist() != keys:
            raise ValueError("compare: every table must score the same held-out rows")
    doc_keys = [(d, k.rsplit("#", 1)[0]) for d, k in zip(key_domains, keys)]
    docs = sorted(set(doc_keys))
    index = {d: j for j, d in enumerate(docs)}
    col = np.array([index[d] for d in doc_keys], dtype=np.int64)

    def total(values: list[float]) -> np.ndarray:
        return np.bincount(col, weights=np.asarray(values, dtype=np.float64), minlength=len(docs))

    bits = [np.array([total(t["bits"].to_pylist()) for t in r]) for r in recipes]
    return sorted({d for d, _ in docs}), np.array([d for d, _ in docs], dtype=object), total(first["bytes"].to_pylist()), bits


def bootstrap_spearman(predicted: list[float], recipes: list[list[pa.Table]], target: str = "mean",
                       n_boot: int = 2000, seed: int = 0, pair_seeds: bool = True) -> tuple[float, float, float, list[float]]:
    """Rank agreement of ``predicted`` values with the measured ``target`` bits/byte of each recipe.

    ``recipes`` holds per recipe its :func:`document_bits` tables (one per seed). Returns
    Spearman's rho, its 95% percentile interval (documents resampled within domains and seeds by
    :func:`seed_draws`, each the same draw for every recipe) and the measured values.
    """
    from scipy.stats import spearmanr

    from tasks.proxy import target_value

    domains, dom, nbytes, bits = _documents(recipes)
    rows_of = [np.flatnonzero(dom == d) for d in domains]
    rng = np.random.default_rng(seed)

    def measured(idx: list[np.ndarray], seeds: list[np.ndarray]) -> list[float]:
        return [target_value({d: float(b[s][:, i].sum(1).mean() / nbytes[i].sum()) for d, i in zip(domains, idx)}, target)
                for b, s in zip(bits, seeds)]

    actual = measured(rows_of, [np.arange(len(b)) for b in bits])
    rho = float(spearmanr(predicted, actual).statistic)
    boots = []
    for _ in range(n_boot):
        idx = [r[rng.integers(len(r), size=len(r))] for r in rows_of]
        boots.append(spearmanr(predicted, measured(idx, seed_draws(rng, [len(b) for b in bits], pair_seeds))).statistic)
    lo, hi = np.nanpercentile(np.array(boots, dtype=np.float64), [2.5, 97.5])
    return rho, float(lo), float(hi), actual


def verdict(lo: float, hi: float) -> str:
    """``better`` / ``worse`` (for a, lower bits/byte is better) or ``no measurable effect``."""
    if lo <= 0 <= hi or math.isnan(lo):
        return "no measurable effect"
    return "better" if hi < 0 else "worse"
