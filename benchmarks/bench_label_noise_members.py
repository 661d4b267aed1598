"""Candidate ensemble members for the label-noise stage, measured on out-of-fold log-loss and on the
ranking's precision at the true error count (issue #15, tuning sets only).

    python -m benchmarks.bench_label_noise_members --datasets news_outlet sarcasm

Per set and noise kind (20%, as in ``bench_label_noise_hard``): the stage's TF-IDF and MiniLM
logistic-regression members (C chosen by out-of-fold log-loss, as the stage does), a leave-one-out
cosine kNN member on the MiniLM vectors for several k, and the blends with weights chosen by
log-loss against the given labels. Reported: each member's log-loss against the given labels (what
can be chosen on), and, against the truth (what it is judged on), precision of self-confidence at
the true count and precision / recall / flagged of the stage's estimate-driven cut.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.bench_label_noise import OUT, inject, prf
from benchmarks.bench_label_noise_hard import NOISES, RATE, prepare

KS = (10, 30, 100)


def knn_probs(X: np.ndarray, y: np.ndarray, n_classes: int, k: int, chunk: int = 1024) -> np.ndarray:
    """Leave-one-out class shares among each row's ``k`` most cosine-similar other rows, smoothed
    towards the class prior with one pseudo-neighbour (no row's own label is used for itself)."""
    U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    U = U.astype(np.float32)
    prior = np.bincount(y, minlength=n_classes) / len(y)
    out = np.zeros((len(y), n_classes))
    for s in range(0, len(y), chunk):
        S = U[s : s + chunk] @ U.T
        S[np.arange(S.shape[0]), np.arange(s, s + S.shape[0])] = -np.inf
        top = np.argpartition(-S, k - 1, axis=1)[:, :k]
        counts = np.zeros((S.shape[0], n_classes))
        np.add.at(counts, (np.repeat(np.arange(S.shape[0]), k), y[top].ravel()), 1.0)
        out[s : s + chunk] = (counts + prior) / (k + 1.0)
    return out


def evaluate(name: str, seed: int = 0) -> list[dict]:
    """Every member and blend on one set, both noise kinds."""
    from tasks import label_noise as ln
    from tasks.noise_rate import blend, cut, log_loss, select

    prep = prepare(name, 10_000, seed)
    K = len(prep["classes"])
    params = ln.Params()
    rows = []
    for noise in NOISES:
        noisy = inject(prep["ytr"], K, noise, RATE, seed)
        truth = noisy != prep["ytr"]
        m = {kind: ln.regularised_probs(prep[kind][0], noisy, K, params, kind)[0] for kind in ("tfidf", "minilm")}
        knn = {k: knn_probs(prep["minilm"][0], noisy, K, k) for k in KS}
        kbest = min(KS, key=lambda k: log_loss(knn[k], noisy))
        cands = {"tfidf": {"tfidf": m["tfidf"]}, "minilm": {"minilm": m["minilm"]},
                 f"knn{kbest}": {"knn": knn[kbest]}, "tfidf+minilm": m,
                 f"tfidf+minilm+knn{kbest}": {**m, "knn": knn[kbest]}}
        for label, members in cands.items():
            probs, w = blend(members, noisy)
            d = cut(probs, noisy, cutoff="estimate", ranking="auto", estimator="mpe", fraction=0.1, n_boot=0, seed=0)
            p_true = prf(select(1 - probs[np.arange(len(noisy)), noisy], int(truth.sum())), truth)["precision"]
            row = {"dataset": name, "noise": noise, "members": label, "weights": w,
                   "log_loss_given": round(log_loss(probs, noisy), 4), "prec_at_true_count_sc": p_true,
                   "ranking": d["ranking"], **prf(d["is_issue"], truth), "flagged": int(d["is_issue"].sum()),
                   "true": int(truth.sum()), "knn_log_loss": {k: round(log_loss(knn[k], noisy), 4) for k in KS}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        rows += neighbourhood_rankings(name, noise, m, knn[kbest], noisy, truth)
    return rows


def neighbourhood_rankings(name: str, noise: str, members: dict, knn: np.ndarray, noisy: np.ndarray,
                           truth: np.ndarray) -> list[dict]:
    """Datalab-style: the stage's ranking score mixed (by rank, share ``w``) with the neighbourhood's
    disagreement with the given label (1 - kNN share of it); same count as the stage's estimate."""
    from scipy.stats import rankdata

    from tasks.noise_rate import blend, cut, select

    probs, _ = blend(members, noisy)
    d = cut(probs, noisy, cutoff="estimate", ranking="auto", estimator="mpe", fraction=0.1, n_boot=0, seed=0)
    own = 1.0 - knn[np.arange(len(noisy)), noisy]
    out = []
    for w in (0.0, 0.25, 0.5):
        score = (1 - w) * rankdata(d["score"]) + w * rankdata(own)
        row = {"dataset": name, "noise": noise, "members": f"rank mix w={w}", "ranking": d["ranking"],
               **prf(select(score, d["count"]), truth), "flagged": d["count"],
               "prec_at_true_count": prf(select(score, int(truth.sum())), truth)["precision"]}
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["news_outlet", "package_section", "sarcasm", "fortunes"])
    args = ap.parse_args()
    for name in args.datasets:
        (OUT / f"label_noise_members_{name}.json").write_text(json.dumps(evaluate(name), indent=1))


if __name__ == "__main__":
    main()
