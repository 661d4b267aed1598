"""Label noise on hard real text: winnow's stage against cleanlab + TF-IDF LR and cleanlab + MiniLM LR.

    python -m benchmarks.bench_label_noise_hard                       # every hard set, 20% uniform + class-cond.
    python -m benchmarks.bench_label_noise_hard --datasets news_outlet --max-rows 3000
    python -m benchmarks.bench_label_noise_hard --report              # tables from earlier results

Hard sets (classes overlap, out-of-fold accuracy under 0.8 with the stage's best features; loaders
in :mod:`benchmarks.bench_label_noise`): news outlet of a headline, Debian section of a package
from its one-line synopsis, sarcasm headlines, fortune categories, health-news tweets by outlet
(links removed), tweet sentiment. Each set is cut to ``--max-rows`` (default 10,000, drawn at
random, seed 0: what the shared 2-core box handles in minutes), classes under 20 rows dropped,
split 80/20 stratified; noise goes into the 80% only (``inject`` of the main benchmark).

For every set and noise kind the peers and winnow see the same noisy labels:

* ``peer_tfidf`` / ``peer_minilm``: cleanlab ``find_label_issues`` (its default filter,
  ``prune_by_noise_rate``) on 5-fold out-of-sample probabilities of a logistic regression on
  TF-IDF / MiniLM features (the stage's own classifiers and folds).
* ``winnow``: the stage itself, ``tasks.label_noise.run`` with default parameters on the noisy
  80% (MiniLM and SmolLM2 vectors passed in as the ``embed`` and ``embed_lm`` stages would;
  default features ``tfidf+minilm+smollm2`` with both wheels installed).
* ``winnow_minilm``: the same with ``features="tfidf+minilm"``, the default before SmolLM2
  features (the "winnow before" column unless ``--before`` names an earlier run).

Columns: precision, recall, F1 of the flagged rows against the flipped ones, flagged count against
the true count, and the accuracy on the clean 20% of the stage's classifier (TF-IDF + MiniLM
ensemble) retrained on noisy / cleaned (flagged rows dropped) / true labels.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa

from benchmarks.bench_label_noise import DATASETS, HARD, OUT, cached_embeddings, inject, prf

RATE = 0.2
NOISES = ("uniform", "classcond")


def prepare(name: str, max_rows: int, seed: int) -> dict:
    """The set cut to ``max_rows``, split 80/20, with TF-IDF (fitted on the 80%) and MiniLM features."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import train_test_split

    from tasks import label_noise as ln
    from tasks.embeddings import LM_MODEL_NAME

    texts, labels = DATASETS[name]()
    counts = {c: labels.count(c) for c in set(labels)}
    keep = [i for i, c in enumerate(labels) if counts[c] >= 20]
    if len(keep) > max_rows:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_rows, replace=False).tolist())
    classes = sorted({labels[i] for i in keep})
    y = np.array([classes.index(labels[i]) for i in keep])
    texts = [texts[i] for i in keep]
    train, test = train_test_split(np.arange(len(keep)), test_size=0.2, random_state=seed, stratify=y)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=20_000, dtype=np.float32)
    t = time.perf_counter()
    emb = cached_embeddings(name, texts)
    lm = {}
    if ln.smollm2_available():
        X = cached_embeddings(name, texts, LM_MODEL_NAME)
        lm = {"smollm2": (X[train], X[test])}
    return {**lm,
        "name": name, "classes": classes, "texts": texts, "train": train, "test": test,
        "ytr": y[train], "yte": y[test], "emb_seconds": time.perf_counter() - t,
        "tfidf": (vec.fit_transform([texts[i] for i in train]), vec.transform([texts[i] for i in test])),
        "minilm": (emb[train], emb[test]),
    }


def retrained_accuracy(prep: dict, labels: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Clean-test accuracy of the stage's TF-IDF + MiniLM ensemble trained on ``labels`` (rows ``keep``)."""
    from tasks import label_noise as ln

    keep = np.ones(len(labels), dtype=bool) if keep is None else keep
    probs = np.zeros((len(prep["yte"]), len(prep["classes"])))
    for kind in ("tfidf", "minilm"):
        Xtr, Xte = prep[kind]
        model = ln.make_classifier(kind != "tfidf", ln.DEFAULT_C[kind], 0).fit(Xtr[keep], labels[keep])
        probs[:, model.classes_] += model.predict_proba(Xte)
    return round(float((probs.argmax(1) == prep["yte"]).mean()), 4)


def peer_flags(prep: dict, noisy: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's default filter on out-of-sample LR probabilities of one feature kind, and the probabilities."""
    from cleanlab.filter import find_label_issues

    from tasks import label_noise as ln

    probs = ln.out_of_sample_probs(prep[kind][0], noisy, len(prep["classes"]), 5, ln.DEFAULT_C[kind], 0,
                                   dense=kind != "tfidf")
    return np.asarray(find_label_issues(noisy, probs, n_jobs=1), dtype=bool), probs


def winnow_flags(prep: dict, noisy: np.ndarray, overrides: dict | None = None) -> tuple[np.ndarray, dict]:
    """The stage with default parameters (plus ``overrides``) on the noisy training part."""
    from tasks import label_noise as ln
    from tasks.embeddings import text_fingerprint

    from tasks.embeddings import LM_MODEL_NAME, MODEL_NAME

    texts = [prep["texts"][i] for i in prep["train"]]
    ids = [f"r{i}" for i in range(len(texts))]
    table = pa.table({"id": ids, "text": texts, "label": [prep["classes"][k] for k in noisy]})

    def cache(kind: str, model: str) -> pa.Table | None:
        # The vectors the embed / embed_lm stage would hand over, one row per distinct text.
        if kind not in prep:
            return None
        emb = prep[kind][0]
        t = pa.table({"text_fingerprint": [text_fingerprint(x, model) for x in texts],
                      "vector": pa.array(list(emb), pa.list_(pa.float32(), emb.shape[1]))})
        _, first = np.unique(t["text_fingerprint"].to_numpy(zero_copy_only=False), return_index=True)
        return t.take(pa.array(first))

    res = ln.run(table, ln.Params(**(overrides or {})), embeddings=cache("minilm", MODEL_NAME),
                 lm_embeddings=cache("smollm2", LM_MODEL_NAME))
    scores = res.tables["scores"]
    issue_of = dict(zip(scores["id"].to_pylist(), scores["is_issue"].to_pylist()))
    return np.array([bool(issue_of[i]) for i in ids]), res.metrics


def bench_set(name: str, max_rows: int, seed: int) -> list[dict]:
    """Every method on one set at 20% uniform and class-conditional noise; one result row each."""
    prep = prepare(name, max_rows, seed)
    acc_true = retrained_accuracy(prep, prep["ytr"])
    rows = []
    for noise in NOISES:
        noisy = inject(prep["ytr"], len(prep["classes"]), noise, RATE, seed)
        truth = noisy != prep["ytr"]
        base = {"dataset": name, "rows": len(noisy), "classes": len(prep["classes"]), "noise": noise, "rate": RATE,
                "true_errors": int(truth.sum()), "acc_noisy": retrained_accuracy(prep, noisy), "acc_true": acc_true}
        found, oof = {}, {}
        for kind in ("tfidf", "minilm"):
            t = time.perf_counter()
            issue, probs = peer_flags(prep, noisy, kind)
            oof[kind] = probs
            found[f"peer_{kind}"] = (issue, {"seconds": round(time.perf_counter() - t, 1),
                                             "oof_accuracy_true": round(float((probs.argmax(1) == prep["ytr"]).mean()), 4)})
        # Kept so that scoring rules can be compared offline on exactly these probabilities.
        np.savez(OUT / f"oof_{name}_{noise}.npz", noisy=noisy, truth=truth, ytr=prep["ytr"], **oof)
        keep = ("estimated_errors", "estimated_errors_low", "estimated_errors_high", "cv_accuracy", "ranking", "chosen_C",
                "blend_weights", "features")
        # "winnow_minilm": the stage with the previous default features, in the same run.
        for method, overrides in (("winnow_minilm", {"features": "tfidf+minilm"}), ("winnow", {})):
            t = time.perf_counter()
            issue, metrics = winnow_flags(prep, noisy, overrides)
            found[method] = (issue, {"seconds": round(time.perf_counter() - t, 1),
                                     **{k: metrics[k] for k in keep if k in metrics}})
        for method, (issue, info) in found.items():
            row = dict(base, method=method, **prf(issue, truth), **info,
                       acc_cleaned=retrained_accuracy(prep, noisy, ~issue))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], before: list[dict] = ()) -> str:
    """The BENCHMARKS.md table: one line per set x noise, peers and winnow side by side; ``before``:
    an earlier run's rows (another ``--tag``), whose ``winnow_minilm`` F1 is shown as the "before"
    column (else this run's)."""
    # The previous default (tfidf+minilm) of this run, or of the ``--before`` run where it has one.
    prior = {(r["dataset"], r["noise"]): r for r in [*rows, *before] if r["method"] == "winnow_minilm"}
    out = ["| set | rows / classes | noise | true errors | OOF acc (TF-IDF / MiniLM, true labels) | peer TF-IDF F1 (P / R, flagged) "
           "| peer MiniLM F1 (P / R, flagged) | winnow before F1 (P / R, flagged) | winnow F1 (P / R, flagged) "
           "| winnow estimate [90% interval] | F1 - better peer | acc noisy / cleaned (TF-IDF peer, MiniLM peer, winnow) / true |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["noise"]), {})[r["method"]] = r
    for (d, noise), c in cells.items():
        pt, pm, w = c["peer_tfidf"], c["peer_minilm"], c["winnow"]

        def f(r):
            return f"{r['f1']:.2f} ({r['precision']:.2f} / {r['recall']:.2f}, {r['flagged']})"

        est = (f"{w['estimated_errors']} [{w['estimated_errors_low']}, {w['estimated_errors_high']}]"
               if "estimated_errors" in w else "")
        out.append(f"| {d} | {w['rows']} / {w['classes']} | {noise} | {w['true_errors']} | "
                   f"{pt['oof_accuracy_true']:.3f} / {pm['oof_accuracy_true']:.3f} | {f(pt)} | {f(pm)} | "
                   f"{f(prior[(d, noise)]) if (d, noise) in prior else ''} | {f(w)} | {est} | "
                   f"{w['f1'] - max(pt['f1'], pm['f1']):+.2f} | {w['acc_noisy']:.3f} / {pt['acc_cleaned']:.3f}, "
                   f"{pm['acc_cleaned']:.3f}, {w['acc_cleaned']:.3f} / {w['acc_true']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(HARD), choices=list(DATASETS))
    ap.add_argument("--max-rows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="hard", help="results go to benchmarks/out/label_noise_<tag>_<set>.json")
    ap.add_argument("--report", action="store_true", help="only print the table from earlier results")
    ap.add_argument("--before", default=None, help="tag of an earlier run whose winnow rows are shown as 'before'")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for name in args.datasets:
            rows = bench_set(name, args.max_rows, args.seed)
            (OUT / f"label_noise_{args.tag}_{name}.json").write_text(json.dumps(rows, indent=1))
    rows = [r for name in args.datasets if (f := OUT / f"label_noise_{args.tag}_{name}.json").exists()
            for r in json.loads(f.read_text())]
    before = [r for name in args.datasets if args.before and (f := OUT / f"label_noise_{args.before}_{name}.json").exists()
              for r in json.loads(f.read_text())]
    print(table(rows, before))


if __name__ == "__main__":
    main()
