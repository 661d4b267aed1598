"""dedup's map task: the features of one shard of the corpus (exact keys, MinHash signatures, band
keys, shingle hashes), as a store entry of its own.

Each shard's entry is fingerprinted by the shard's content, dedup's parameters and this code, so
a corpus that gains a shard (a nightly run on a grown corpus) computes only that shard's features;
the reduce (:func:`tasks.dedup.run` with ``features=``) reads every shard's entry. The map tasks
are independent, so a Dask task runner runs them on the cluster's workers.
"""

from __future__ import annotations

import pyarrow as pa

from tasks import dedup
from tasks.common import RowRules, StageResult, Timings, check_rows

Params = dedup.Params


def run(shard: pa.Table, params: Params = Params()) -> StageResult:
    """Features of every row of ``shard`` (same order): :func:`tasks.dedup.features_table`."""
    timings = Timings()
    params.check()
    # Ids are checked unique across the whole corpus by the reduce; a shard checks its own rows.
    check_rows(shard, "dedup shard", RowRules(utf8=True))
    with timings.phase("featurize"):
        feats = dedup.featurize(shard.column("text"), params, params.banding())
    return StageResult(tables={"data": dedup.features_table(feats)},
                       metrics={"rows": shard.num_rows, "timings_s": timings.rounded(),
                                "docs_per_s": round(shard.num_rows / max(timings.total(), 1e-9), 1)})
