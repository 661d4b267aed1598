"""The ``contamination_index`` stage: the benchmark side of contamination as its own store entry.

Folding and hashing every benchmark example and building its n-gram index is a third of a short
`winnow contamination` run and depends only on the benchmarks and the index settings
(:func:`tasks.contamination.index_params`). As an entry of its own, keyed by the benchmarks'
content and those settings, it is built once: a nightly run whose benchmarks did not change reads
it instead (the contamination stage's ``prepare`` hook, ``flows.graph.benchmark_index``).
"""

from __future__ import annotations

from tasks.contamination import Params, build_index

__all__ = ["Params", "run"]

run = build_index
