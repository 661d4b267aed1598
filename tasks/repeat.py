"""Repeat: the injected-repetition probe of the ablation receipts.

Hernandez et al. 2022 ("Scaling Laws and Interpretability of Learning from Repeated Data") found
that repeating a small share of the data many times hurts a model far more than its share. This
stage makes that visible on any corpus: a seeded ``fraction`` of the documents (at least one) is
copied ``times`` times under new ids (``<id>#rep<k>``). With dedup on, the copies are exact
duplicates and are removed; with dedup off they reach training, and the ablation receipt shows
what they cost. Every added row is in the ledger (action ``add``, reason ``injected_repeat``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.common import StageResult, ledger
from winnow.errors import WinnowError

STAGE = "repeat"


@dataclass(frozen=True)
class Params:
    """Parameters of the probe.

    Attributes:
        fraction: share of documents to repeat (default 0.001: 0.1%, the paper's regime).
        times: extra copies of each repeated document (default 100).
        seed: picks the documents.
    """

    fraction: float = 0.001
    times: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1 or self.times < 0:
            raise WinnowError(f"repeat: fraction must be in [0, 1] and times >= 0, got {self.fraction}, {self.times}")


def run(corpus: pa.Table, params: Params = Params()) -> StageResult:
    """``corpus`` plus ``times`` copies of a seeded ``fraction`` of its rows (original order, copies appended)."""
    if corpus.num_rows == 0:
        raise WinnowError("repeat: the corpus is empty")
    n = 0 if params.fraction == 0 or params.times == 0 else max(1, round(params.fraction * corpus.num_rows))
    picked = np.sort(np.random.default_rng(params.seed).choice(corpus.num_rows, size=n, replace=False)) if n else np.zeros(0, np.int64)
    copies = corpus.take(pa.array(np.repeat(picked, params.times), pa.int64()))
    ids = [f"{i}#rep{k % params.times}" for k, i in enumerate(copies["id"].to_pylist())] if n else []
    copies = copies.set_column(copies.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    out = pa.concat_tables([corpus, copies.cast(corpus.schema)])
    source = corpus["id"].take(pa.array(np.repeat(picked, params.times), pa.int64())).to_pylist() if n else []
    removed = ledger(ids, STAGE, "add", "injected_repeat", [{"copy_of": s} for s in source])
    metrics = {"repeated_docs": n, "copies": n * params.times, "rows_out": out.num_rows,
               "share_of_rows": round(n * params.times / max(1, out.num_rows), 6)}
    return StageResult(tables={"data": out}, removed=removed, metrics=metrics)
