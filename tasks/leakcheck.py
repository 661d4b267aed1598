"""Model-side leak check: does a model predict benchmark items better than perturbed copies of them?

A model that saw an item in training has learnt its exact word order, so its loss on the item is
much lower than on a copy whose words are slightly reordered; a model that never saw it pays for the
reordering too, but less (the idea of "Benchmarking Benchmark Leakage in Large Language Models",
arXiv 2404.18824, with word-order perturbations instead of model-written paraphrases). For each item
(question + target, the text contamination searches):

* ``bpb_original``: bits per UTF-8 byte of the item's text, scored as ``evaluate`` scores text
  (:func:`tasks.evaluate.loaded_scorer`: after the prefix token, in windows past the context);
* ``bpb_perturbed``: the mean over ``perturbations`` copies, each with about ``swap_share`` of its
  adjacent word pairs swapped (same words, same bytes, seeded by the item id);
* ``gap = bpb_perturbed - bpb_original``.

Per benchmark, by evaluate's own metrics (:func:`tasks.evaluate.leak_metrics`, the columns of
evaluate's benchmarks table): ``leak_gap``, the mean gap with a bootstrap interval, and, when
``reference`` texts are given (rows of the same style known to be unseen, e.g. held-out items or
the held-out split), ``reference_gap`` and ``leak_excess`` (benchmark minus reference) with its
interval: an interval above 0 says the model knows these items better than text it never saw. The
gap alone also rises with how well a model knows the language, so compare models on the same
items, or use a reference.

Pure function over a model folder (``save_pretrained`` layout, as written by ``tasks.train``) and a
benchmark table; no Prefect, nothing written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa

from tasks.common import StageResult
from winnow.errors import WinnowError

if TYPE_CHECKING:
    from tasks import evaluate

ITEMS_SCHEMA = pa.schema([("id", pa.string()), ("benchmark", pa.string()), ("bytes", pa.int64()),
                          ("bpb_original", pa.float64()), ("bpb_perturbed", pa.float64()), ("gap", pa.float64())])
SUMMARY_SCHEMA = pa.schema([("benchmark", pa.string()), ("items", pa.int64()), ("leak_gap", pa.float64()),
                            ("leak_gap_lo", pa.float64()), ("leak_gap_hi", pa.float64()),
                            ("reference_gap", pa.float64()), ("leak_excess", pa.float64()),
                            ("leak_excess_lo", pa.float64()), ("leak_excess_hi", pa.float64())])


@dataclass(frozen=True)
class Params:
    """Settings of the leak check (each one evaluate's setting of the same role).

    Attributes:
        perturbations: perturbed copies per item; their mean bits/byte is compared.
        swap_share: share of adjacent word pairs swapped in a copy (at least one swap).
        bootstrap: resamples for the 95% intervals.
        seed: seeds the perturbations (with each item's id) and the bootstrap.
        batch_size: scoring batch size.
        device: ``cpu``, ``cuda`` or ``auto``.
        num_threads: CPU threads for torch; None = the CPUs this process may use.
    """

    perturbations: int = 3
    swap_share: float = 0.15
    bootstrap: int = 2000
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.perturbations < 1 or not 0 < self.swap_share <= 0.5 or self.bootstrap < 1:
            raise WinnowError("leakcheck: perturbations and bootstrap must be >= 1, swap_share in (0, 0.5]")

    def evaluate_params(self) -> "evaluate.Params":
        """The same settings as evaluate's parameters."""
        from tasks import evaluate

        return evaluate.Params(leak_perturbations=self.perturbations, leak_swap_share=self.swap_share,
                               bootstrap_iters=self.bootstrap, bootstrap_seed=str(self.seed),
                               batch_size=self.batch_size, device=self.device, num_threads=self.num_threads)


def perturb(text: str, share: float, rng: np.random.Generator) -> str:
    """``text`` with about ``share`` of its adjacent word pairs swapped (non-overlapping)."""
    words = text.split(" ")
    n_pairs = len(words) - 1
    if n_pairs < 1:
        return text
    k = max(1, round(share * n_pairs))
    for i in sorted(rng.choice(n_pairs, size=min(k, n_pairs), replace=False).tolist()):
        if words[i] != words[i + 1]:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def item_text(question: str | None, target: str | None) -> str:
    """The text of an item the check scores: question and target, whitespace collapsed."""
    return " ".join(f"{question or ''} {target or ''}".split())


def perturbed_copies(keys: list[str], texts: list[str], perturbations: int, share: float, seed: int) -> list[str]:
    """``perturbations`` copies of each text (grouped per text), seeded by ``seed`` and its key."""
    copies = []
    for key, t in zip(keys, texts):
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little"))
        copies.extend(perturb(t, share, rng) for _ in range(perturbations))
    return copies


def score_gaps(keys: list[str], texts: list[str], bpb: Callable[[list[str]], np.ndarray], perturbations: int,
               share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bits/byte of each text and the mean over its perturbed copies, scored by ``bpb`` in one call.

    ``bpb`` maps texts to bits per byte under a model; evaluate passes its own scorer (the model
    already loaded), :func:`run` loads one.
    """
    copies = perturbed_copies(keys, texts, perturbations, share, seed)
    scores = np.asarray(bpb(texts + copies), dtype=np.float64)
    return scores[: len(texts)], scores[len(texts):].reshape(len(texts), perturbations).mean(axis=1)


def reference_texts(heldout: pa.Table, n: int, words: int) -> list[str]:
    """Up to ``n`` held-out documents cut to their first ``words`` words: unseen text of about an
    item's length, the baseline the benchmark items' gap is compared with."""
    out = []
    for text in heldout["text"].to_pylist()[:n]:
        cut = " ".join(str(text).split()[:words])
        if len(cut.split()) >= 2:
            out.append(cut)
    return out


def run(model_dir: str | Path, benchmarks: pa.Table, params: Params = Params(),
        reference: pa.Table | None = None) -> StageResult:
    """Score every benchmark item and its perturbed copies; summarise the gap per benchmark.

    ``benchmarks`` needs ``id``, ``benchmark``, ``question`` and ``target`` (BENCHMARK_SCHEMA);
    ``reference`` (optional) needs ``text``. Returns ``tables={"items": ITEMS_SCHEMA,
    "benchmarks": SUMMARY_SCHEMA}``.
    """
    model_dir = Path(model_dir)
    for name, table, need in (("benchmarks", benchmarks, ("id", "benchmark", "question", "target")),
                              ("reference", reference, ("text",))):
        missing = [c for c in need if table is not None and c not in table.column_names]
        if missing:
            raise WinnowError(f"leakcheck {name}: missing column(s) {missing} (have: {', '.join(table.column_names)})")
    if not (model_dir / "config.json").is_file():
        raise WinnowError(f"leakcheck: {model_dir} is not a model folder (no config.json)")
    ids, names = benchmarks["id"].to_pylist(), benchmarks["benchmark"].to_pylist()
    texts = [item_text(q, t) for q, t in zip(benchmarks["question"].to_pylist(), benchmarks["target"].to_pylist())]
    empty = [i for i, t in zip(ids, texts) if not t]
    if empty:
        raise WinnowError(f"leakcheck benchmarks: item(s) with no text: {empty[:5]}")
    ref_texts = [" ".join(str(t).split()) for t in reference["text"].to_pylist()] if reference is not None else []
    keys = ids + [f"reference/{i}" for i in range(len(ref_texts))]
    from tasks import evaluate

    eparams = params.evaluate_params()
    with evaluate.loaded_scorer(model_dir, eparams) as scorer:
        orig, pert = score_gaps(keys, texts + ref_texts, scorer.bpb, params.perturbations, params.swap_share,
                                params.seed)
    gap = pert - orig
    n = len(texts)
    items = pa.table({"id": ids, "benchmark": names, "bytes": [len(t.encode()) for t in texts],
                      "bpb_original": orig[:n], "bpb_perturbed": pert[:n], "gap": gap[:n]}, schema=ITEMS_SCHEMA)
    reference_gap = evaluate.leak_reference(gap[n:], eparams)
    rows = []
    for b in sorted(set(names)):
        row: dict = {"benchmark": b, "subset": "all", "items": names.count(b),
                     "reference_gap": reference_gap[0] if reference_gap else None}
        evaluate.leak_metrics(row, gap[:n][np.array(names) == b], reference_gap, eparams)
        rows.append(row)
    summary = pa.Table.from_pylist([{k: r.get(k) for k in SUMMARY_SCHEMA.names} for r in rows], schema=SUMMARY_SCHEMA)
    return StageResult(tables={"items": items, "benchmarks": summary},
                       metrics={"items": n, "reference_texts": len(ref_texts)})
