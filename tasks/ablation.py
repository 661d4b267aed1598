"""Ablation receipt: what each curation stage did to the model, with 95% intervals.

For each ablated stage the flow (:mod:`flows.ablate`) trains the same model, at the same token
budget and for the same seeds, on the pipeline's output with that stage and without it
(``mixture`` off = the proportional mixture, i.e. the corpus as it is). This stage scores every
model on the *same* held-out rows (the full pipeline's held-out split) with
:func:`tasks.compare.document_bits`, and compares with / without by a paired bootstrap
(:func:`tasks.compare.bootstrap_difference`) for held-out bits/byte per domain, the mean and the
worst domain, and for each benchmark's accuracy (examples paired, and seeds: a variant's seed
``s`` and full's seed ``s`` are one seeded initialisation and batch order). A difference
whose interval contains zero is reported as "no measurable effect" with its interval.

Inputs are named ``model__<variant>__<seed>`` (a train entry's folder) and
``examples__<variant>__<seed>`` (its evaluate entry's ``examples`` table); ``<variant>`` is
``full`` or ``no_<stage>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks import compare
from tasks.common import StageResult
from winnow.errors import WinnowError

STAGE = "ablation"
RECEIPT_SCHEMA = pa.schema([
    ("stage", pa.string()), ("metric", pa.string()), ("subject", pa.string()), ("with_stage", pa.float64()),
    ("without_stage", pa.float64()), ("difference", pa.float64()), ("lo", pa.float64()), ("hi", pa.float64()),
    ("verdict", pa.string()),
])


@dataclass(frozen=True)
class Params:
    """Parameters of the receipt.

    Attributes:
        eval_docs: held-out rows scored per domain (hash-ordered, the same for every model), or
            None for all of them.
        eval_bytes: stop adding a domain's rows once this many UTF-8 bytes are scored (None: no
            cap). By bytes rather than a few documents: 20 documents per domain gave intervals as
            wide as the effects (BENCHMARKS.md ``## mixture``).
        n_boot: bootstrap resamples; seed: seeds them.
        num_threads: torch threads for scoring.
    """

    eval_docs: int | None = None
    eval_bytes: int | None = 30_000
    n_boot: int = 2000
    seed: int = 0
    num_threads: int = 1


def run(heldout: pa.Table, params: Params = Params(), **inputs: Any) -> StageResult:
    """Score every model on ``heldout`` and compare each ``no_<stage>`` variant with ``full``.

    Returns table ``data`` (:data:`RECEIPT_SCHEMA` rows: per ablated stage, each domain's and the
    mean / worst bits/byte, and each benchmark's accuracy, with / without / difference / interval
    / verdict) and ``docs`` (every model's per-row bits, for re-analysis).
    """
    runs = _group(inputs)
    if "full" not in runs or len(runs) < 2:
        raise WinnowError(f"ablation: needs the full pipeline and at least one ablated variant, got {sorted(runs)}")
    docs = {v: [compare.document_bits(Path(m), heldout, params.eval_docs, params.num_threads, params.eval_bytes) for m, _ in seeds]
            for v, seeds in runs.items()}
    rows = []
    for variant in sorted(v for v in runs if v != "full"):
        stage = variant.removeprefix("no_")
        for r in compare.bootstrap_difference(docs["full"], docs[variant], params.n_boot, params.seed):
            rows.append({"stage": stage, "metric": "bits_per_byte", "subject": r["domain"], "with_stage": r["a"],
                         "without_stage": r["b"], "difference": r["difference"], "lo": r["lo"], "hi": r["hi"],
                         "verdict": r["verdict"]})
        rows.extend(_accuracy_rows(stage, [e for _, e in runs["full"]], [e for _, e in runs[variant]], params))
    all_docs = pa.concat_tables([t.append_column("variant", pa.array([v] * t.num_rows)).append_column(
        "seed", pa.array([s] * t.num_rows, pa.int64())) for v, ts in docs.items() for s, t in enumerate(ts)])
    table = pa.Table.from_pylist(rows, schema=RECEIPT_SCHEMA)
    metrics = {"variants": sorted(runs), "seeds": len(runs["full"]),
               "summary": {f"{r['stage']}/{r['subject']}": _summary(r) for r in rows if r["subject"] in ("mean", "worst")
                           or r["metric"] == "accuracy"}}
    return StageResult(tables={"data": table, "docs": all_docs}, metrics=metrics)


def _group(inputs: dict[str, Any]) -> dict[str, list[tuple[Any, pa.Table]]]:
    """{variant: [(model folder, examples table) per seed]} from the ``kind__variant__seed`` inputs."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for name, value in inputs.items():
        kind, variant, seed = name.split("__")
        found.setdefault(variant, {}).setdefault(int(seed), {})[kind] = value
    out = {}
    for variant, seeds in found.items():
        for s, parts in seeds.items():
            if set(parts) != {"model", "examples"}:
                raise WinnowError(f"ablation: variant {variant} seed {s} lacks its model or examples input")
        out[variant] = [(seeds[s]["model"], seeds[s]["examples"]) for s in sorted(seeds)]
    return out


def _accuracy_rows(stage: str, full: list[pa.Table], without: list[pa.Table], params: Params) -> list[dict[str, Any]]:
    """Accuracy with - without per benchmark; examples and seeds paired (:func:`tasks.compare.seed_draws`)."""
    rows = []
    keyed = lambda t: {(r["benchmark"], r["id"]): r["correct"] for r in t.to_pylist() if r["kind"] == "multiple_choice"}  # noqa: E731
    a, b = [keyed(t) for t in full], [keyed(t) for t in without]
    rng = np.random.default_rng(params.seed)
    for bench in sorted({k[0] for k in a[0]}):
        keys = sorted(k for k in a[0] if k[0] == bench and all(k in t for t in [*a, *b]))
        if not keys:
            continue
        A = np.array([[t[k] for k in keys] for t in a], dtype=np.float64)
        B = np.array([[t[k] for k in keys] for t in b], dtype=np.float64)
        diff = A.mean() - B.mean()
        boots = np.empty(params.n_boot)
        for i in range(params.n_boot):
            idx = rng.integers(len(keys), size=len(keys))
            sa, sb = compare.seed_draws(rng, [len(A), len(B)])
            boots[i] = A[sa][:, idx].mean() - B[sb][:, idx].mean()
        lo, hi = np.percentile(boots, [2.5, 97.5])
        # Higher accuracy is better: the verdict of "without minus with" bits-style is flipped.
        v = compare.verdict(-hi, -lo)
        rows.append({"stage": stage, "metric": "accuracy", "subject": bench, "with_stage": float(A.mean()),
                     "without_stage": float(B.mean()), "difference": float(diff), "lo": float(lo), "hi": float(hi), "verdict": v})
    return rows


def _summary(r: dict[str, Any]) -> str:
    if math.isnan(r["difference"]):
        return "n/a"
    return f"{r['difference']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] {r['verdict']}"


def report_lines(table: pa.Table) -> list[str]:
    """The receipt as plain lines: one per stage and subject, 'no measurable effect' when the interval has 0."""
    lines = []
    for r in table.to_pylist():
        unit = "bits/byte" if r["metric"] == "bits_per_byte" else "accuracy"
        lines.append(f"{r['stage']:<13} {r['subject']:<14} {unit:<9} with {r['with_stage']:.4f} without {r['without_stage']:.4f} "
                     f"diff {_summary(r)}")
    return lines
