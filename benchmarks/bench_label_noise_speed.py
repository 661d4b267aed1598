"""Speed of the label-noise stage at 30k rows of real text with cached MiniLM and SmolLM2 features (issue #15).

    python -m benchmarks.bench_label_noise_speed                 # 30,000 rows, default parameters
    python -m benchmarks.bench_label_noise_speed --rows 10000

The set: ``--dataset`` (default ``fortunes_sarcasm``: fortunes by file plus sarcasm headlines,
45k rows, 48 classes) cut to ``--rows`` rows at random (``--seed``), 20% of the labels flipped
uniformly. MiniLM and SmolLM2 vectors come from ``benchmarks/out/emb_*.parquet`` and
``lmemb_*.parquet`` (computed once, as the ``embed`` and ``embed_lm`` stages would cache them)
and are passed in, so the timing is the stage alone. Prints
wall seconds, CPU seconds of this process (user + system, all threads), the load average before
and after, and the stage's per-step seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import pyarrow as pa

from benchmarks.bench_label_noise import DATASETS, cached_embeddings, inject


def build(dataset: str, rows: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """``(texts, noisy labels, truth mask)`` of the speed set (see the module docstring)."""
    texts, labels = DATASETS[dataset]()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(texts), min(rows, len(texts)), replace=False))
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    noisy = inject(y, len(classes), "uniform", 0.2, seed)
    return texts, [classes[k] for k in noisy], noisy != y


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    from tasks import label_noise as ln
    from tasks.embeddings import LM_MODEL_NAME, MODEL_NAME, text_fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fortunes_sarcasm", choices=sorted(DATASETS))
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="Params override KEY=JSON")
    args = ap.parse_args()
    texts, noisy, truth = build(args.dataset, args.rows, args.seed)
    caches = {}
    for arg, kind, model in (("embeddings", "minilm", MODEL_NAME), ("lm_embeddings", "smollm2", LM_MODEL_NAME)):
        if kind == "smollm2" and not ln.smollm2_available():
            continue
        t = time.perf_counter()
        emb = cached_embeddings(args.dataset, texts, model)
        print(f"{kind} vectors: {time.perf_counter() - t:.1f} s (cached ones read, missing ones embedded)", flush=True)
        fps = [text_fingerprint(x, model) for x in texts]
        _, first = np.unique(fps, return_index=True)
        caches[arg] = pa.table({"text_fingerprint": [fps[i] for i in first],
                                "vector": pa.array(list(emb[first]), pa.list_(pa.float32(), emb.shape[1]))})
    table = pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts, "label": noisy})
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    load0 = os.getloadavg()
    c0, t0 = cpu_seconds(), time.perf_counter()
    res = ln.run(table, ln.Params(**overrides), **caches)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    issue_of = dict(zip(res.tables["scores"]["id"].to_pylist(), res.tables["scores"]["is_issue"].to_pylist()))
    flagged = np.array([bool(issue_of[f"r{i}"]) for i in range(len(texts))])
    tp = int((flagged & truth).sum())
    steps = {k: v for k, v in res.metrics.items() if k.startswith("seconds")}
    print(json.dumps({"rows": len(texts), "features": res.metrics["features"], "classes": res.metrics["classes"], "wall_s": round(wall, 1),
                      "cpu_s": round(cpu, 1), "load_before": [round(x, 2) for x in load0],
                      "load_after": [round(x, 2) for x in os.getloadavg()], "steps": steps,
                      "chosen_C": res.metrics["chosen_C"], "blend_weights": res.metrics["blend_weights"],
                      "true_errors": int(truth.sum()), "flagged": int(flagged.sum()),
                      "precision": round(tp / max(flagged.sum(), 1), 4), "recall": round(tp / truth.sum(), 4)}))


if __name__ == "__main__":
    main()
