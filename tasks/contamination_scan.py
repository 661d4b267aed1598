"""contamination's map task: one shard of the corpus scanned against the benchmark index.

Each shard's entry holds the shard's benchmark n-gram hits and short-span document counts
(:func:`tasks.contamination.scan_shard`), fingerprinted by the shard's content, the
``contamination_index`` entry's content and this code. It has no parameters of its own: what the
scan depends on (folding, n-gram lengths, caps) is in the index, which is itself keyed by
contamination's index settings, so a new threshold or action reuses every shard's scan, and a
corpus that gains a shard (a nightly run on a grown corpus) scans only that shard. The reduce,
:func:`tasks.contamination.run` with ``scans=``, scores the examples and acts on the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks import contamination
from tasks.common import StageResult, Timings


@dataclass(frozen=True)
class Params:
    """None: see the module docstring. The map tasks run in parallel on the task runner, so each
    scans its shard on one thread."""


def run(shard: pa.Table, index: pa.Table, params: Params = Params()) -> StageResult:
    """The hits (``data``) and short-span document counts (``df``) of every row of ``shard``."""
    timings = Timings()
    # Ids are checked unique across the whole corpus by the reduce; a shard checks its own rows.
    contamination._check_corpus(shard)
    with timings.phase("scan"):
        hits, df, _ = contamination.scan_shard(shard.column("text"), index)
    mb = pc.sum(pc.binary_length(shard.column("text"))).as_py() / 1e6
    return StageResult(tables={"data": hits, "df": df},
                       metrics={"rows": shard.num_rows, "hits": hits.num_rows, "mb_scanned": round(mb, 3),
                                "timings_s": timings.rounded(),
                                "mb_per_s": round(mb / max(timings.total(), 1e-9), 2)})
