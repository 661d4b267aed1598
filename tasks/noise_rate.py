"""How many labels are wrong, which rows those are, and why: the label-noise stage's cut-off.

Confident learning (``cleanlab.filter.find_label_issues``) flags every row whose label the
classifier confidently contradicts. Where classes overlap (the news outlet of a headline, the
Debian section of a package) that is 1.5-2.5x as many rows as are mislabelled: the classifier's
own confusion is counted as noise. This module instead

1. **blends** the out-of-sample probabilities of several feature kinds with weights chosen by
   their log-loss against the given (noisy) labels: no true label is ever looked at;
2. **estimates the number of wrong labels** (:func:`estimate_errors`, with a bootstrap interval);
3. **ranks** rows by a score (:data:`RANKINGS`) and flags the estimated number of worst rows, or
   a fixed fraction when the user asks for one.

The estimate (``"mpe"``) is a mixture-proportion estimate that uses a property of out-of-sample
probabilities: a row's own label never trained the model that scored it, so had the row been
mislabelled as class ``j``, its score would have been exactly ``p_j(x)``, which we have. The
scores wrong labels would get are therefore simulated from every row's other-class
probabilities. The given labels' scores are a mixture ``(1 - pi) clean + pi wrong``; in the
``q`` tail of the simulated wrong scores few clean rows fall, so ``pi ~ P(score in tail) / q``
(clean rows that do fall there bias it upwards). Two versions (:func:`mpe_parts`): *uniform*,
wrong labels drawn uniformly and scored by self-confidence (lower tail); *structured*, wrong labels
drawn along cleanlab's calibrated flip matrix (two-way confusions discounted, :func:`flip_matrix`)
and scored by the probability of being wrong under it (upper tail), for noise that sends a
class's rows to a few others, which the classifier then learns (they no longer score low). Which one applies is tested without any true label: under
uniform-looking noise the uniform estimate hardly changes from ``q`` to ``3q``; otherwise it
grows (:data:`STRUCTURE_RATIO`). ``q``, the ratio and the rankings were chosen by measurement on
two of the six hard sets (BENCHMARKS.md ``## label_noise``).

Which labels are wrong is not identifiable from calibrated probabilities alone (natural class
overlap and injected noise can produce the same probabilities), so every estimator rests on an
assumption; this one's is that clean rows rarely score like a wrong label. The over-count grows as
the classifier gets weaker (out-of-fold, 20% noise: news outlets 1.99x with TF-IDF alone, 1.31x
with MiniLM, log-loss 1.95 / 1.85), so better probabilities shrink it; it is reported with its
interval. Calibrating it by injecting more known flips and re-fitting was tried and rejected
(BENCHMARKS.md ``## label_noise``).
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np

RANKINGS = ("auto", "self_confidence", "normalized_margin", "confident_joint")
ESTIMATORS = ("mpe", "posterior", "cleanlab")
#: Above this ratio of the uniform-simulation estimates at q=0.3 and q=0.1 the wrong labels do not
#: look uniform (chosen on the tuning sets news_outlet and package_section: 1.0-1.1 under uniform
#: noise, 1.6-6 under class-conditional noise).
STRUCTURE_RATIO = 1.25
CUTOFFS = ("estimate", "fraction", "detector")
#: Share of the reverse pair's confident-joint count taken off each flip count (3+ classes; see
#: :func:`flip_matrix`). Chosen on the class-conditional cells of news_outlet, package_section and
#: fortunes (estimate / true count at 0, 0.25, 0.5, 0.75, 1: 1.36 / 1.33 / 1.40 / 0.88 / 0.63 on
#: news outlets, 1.44 / 1.22 / 1.04 / 0.84 / 0.72 on fortunes; precision at the true count rose
#: with it, 0.42 -> 0.49 and 0.58 -> 0.65); health_tweets and tweet_sentiment were not looked at.
REVERSE_DISCOUNT = 0.75


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the given labels (clipped at 1e-12)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


def blend(members: dict[str, np.ndarray], y: np.ndarray, step: float = 0.1) -> tuple[np.ndarray, dict[str, float]]:
    """Weighted mean of the members' probabilities, weights on a ``step`` simplex grid by least log-loss.

    The log-loss is against the given labels ``y`` (the only labels there are): a member that
    predicts them better out of sample gets more weight. Ties keep the earlier, more even grid point.
    """
    names = list(members)
    if len(names) == 1:
        return members[names[0]], {names[0]: 1.0}
    ticks = int(round(1 / step))
    best: tuple[float, tuple[int, ...]] | None = None
    for combo in product(range(ticks + 1), repeat=len(names) - 1):
        if sum(combo) > ticks:
            continue
        w = (*combo, ticks - sum(combo))
        probs = sum(wi / ticks * members[n] for wi, n in zip(w, names))
        loss = log_loss(probs, y)
        # Prefer the even blend on (near) ties: it is the prior choice and the least tuned.
        loss += 1e-9 * np.var(w)
        if best is None or loss < best[0] - 1e-12:
            best = (loss, w)
    assert best is not None
    weights = {n: wi / ticks for n, wi in zip(names, best[1])}
    return sum(weights[n] * members[n] for n in names), weights


def error_score(probs: np.ndarray, y: np.ndarray, ranking: str = "self_confidence") -> np.ndarray:
    """How likely each row's label is wrong (higher = worse), by ``ranking`` (one of :data:`RANKINGS`).

    ``self_confidence``: 1 - p(given label). ``normalized_margin``: the best other class's
    probability minus the given one's, in [-1, 1]. ``confident_joint``: 1 - p(given) weighted by
    how often cleanlab's calibrated confident joint sees the given label replace the suggested one
    (rows whose confusion the noise structure explains rank higher).
    """
    n = len(y)
    own = probs[np.arange(n), y]
    if ranking == "self_confidence":
        return 1.0 - own
    other = probs.copy()
    other[np.arange(n), y] = -1.0
    if ranking == "normalized_margin":
        return other.max(1) - own
    if ranking == "confident_joint":
        return error_posterior(probs, flip_matrix(probs, y))[np.arange(n), y]
    raise ValueError(f"unknown ranking {ranking!r}")


def _stay(flip: np.ndarray) -> np.ndarray:
    """Per class, the share of its rows that keep their label (1 - sum of its off-diagonal flips)."""
    off = flip.copy()
    np.fill_diagonal(off, 0.0)
    return np.clip(1.0 - off.sum(1), 1e-6, 1.0)


def flip_matrix(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``F[a, j]``: share of class-``a`` rows whose label became ``j`` (off-diagonal only), from
    cleanlab's calibrated confident joint (rows: given label, columns: suggested true label), with
    :data:`REVERSE_DISCOUNT` of the reverse count taken off each pair for three or more classes.

    Why the discount: the confident joint also counts the classifier's own confusion, which goes
    both ways between two overlapping classes, while a class's rows flipped to a partner add to
    one direction only. Undiscounted, that two-way confusion spread the noise matrix over every
    overlapping pair and the structured estimate ran 1.36-1.44x the true count under
    class-conditional noise (news outlets, fortunes). With two classes both directions are the
    only pair there is, so nothing is taken off.
    """
    from cleanlab.count import compute_confident_joint

    k = probs.shape[1]
    cj = compute_confident_joint(y, probs, calibrate=True).astype(np.float64)
    joint = cj.T  # [true a, given j]
    if k >= 3:
        off = joint.copy()
        np.fill_diagonal(off, 0.0)
        kept = np.maximum(off - REVERSE_DISCOUNT * off.T, 0.0)
        # What is taken off a pair goes back to the diagonal: those rows count as correctly labelled.
        joint = kept + np.diag(np.diag(joint) + (off - kept).sum(1))
    flip = joint / np.maximum(joint.sum(1, keepdims=True), 1e-12)
    flip[np.arange(k), np.arange(k)] = 0.0
    return flip


def error_posterior(probs: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """``P(wrong | x, given = j)`` for every row and every class ``j`` under the flip matrix.

    The noisy posterior stands in for the true-class one: a row labelled ``j`` is wrong with
    weight ``sum_a p_a(x) F[a, j]`` against right with weight ``p_j(x) (1 - sum F[j, :])``.
    """
    wrong = probs @ flip
    return wrong / np.maximum(wrong + probs * _stay(flip)[None, :], 1e-12)


def _simulated(values: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (row, other class) pair of ``values``: ``(row, value, weight)`` sorted by value,
    ``weights[given, j]`` the chance a row of the given class would have been flipped to ``j``."""
    n, k = values.shape
    mask = np.ones((n, k), dtype=bool)
    mask[np.arange(n), y] = False
    rows, vals, w = np.nonzero(mask)[0], values[mask], weights[y][mask]
    order = np.argsort(vals, kind="stable")
    return rows[order], vals[order], w[order]


def mpe_parts(probs: np.ndarray, y: np.ndarray, q: float = 0.1) -> dict[str, Any]:
    """The two mixture-proportion estimates and which one ``mpe`` uses (see :func:`estimate_errors`).

    ``uniform``: lower tail of the self-confidence against uniformly simulated wrong labels, at
    ``q`` and ``3q``; ``structured``: upper tail of :func:`error_posterior` against wrong labels
    simulated along the flip matrix. Returns the fractions and ``"structured": bool``.
    """
    n, k = probs.shape
    off = (np.ones((k, k)) - np.eye(k)) / (k - 1)
    own = probs[np.arange(n), y]
    sim_u = _simulated(probs, y, off)
    ones = np.ones(n)
    lo, hi = _tail_share(own, ones, sim_u, q, lower=True), _tail_share(own, ones, sim_u, 3 * q, lower=True)
    flip = flip_matrix(probs, y)
    rs = flip.sum(1, keepdims=True)
    along = np.where(rs > 0, flip / np.maximum(rs, 1e-12), off)
    post = error_posterior(probs, flip)
    own_post = post[np.arange(n), y]
    sim_s = _simulated(post, y, along)
    structured = hi > STRUCTURE_RATIO * max(lo, 1e-9)
    return {"uniform": lo, "uniform_3q": hi, "structured_estimate": _tail_share(own_post, ones, sim_s, q, lower=False),
            "structured": bool(structured), "own": own_post if structured else own, "sim": sim_s if structured else sim_u}


def _tail_share(own: np.ndarray, mult: np.ndarray, sim: tuple[np.ndarray, np.ndarray, np.ndarray], q: float,
                lower: bool) -> float:
    """Share of (``mult``-weighted) rows in the ``q`` tail of the simulated wrong scores, over ``q``."""
    rows, vals, w = sim
    cum = np.cumsum(w * mult[rows])
    target = q * cum[-1] if lower else (1 - q) * cum[-1]
    t = vals[min(int(np.searchsorted(cum, target)), len(vals) - 1)]
    inside = own <= t if lower else own >= t
    return float(np.clip(mult[inside].sum() / mult.sum() / q, 0.0, 1.0))


def estimate_errors(
    probs: np.ndarray, y: np.ndarray, *, method: str = "mpe", q: float = 0.1, n_boot: int = 200,
    level: float = 0.9, seed: int = 0, parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Estimated number of wrong labels among the rows, with a bootstrap interval.

    ``method="mpe"``: the mixture-proportion estimate of the module docstring at quantile ``q``;
    ``"cleanlab"``: cleanlab's calibrated off-diagonal of the confident joint (its
    ``num_label_issues``), for comparison. The interval resamples rows (``n_boot`` times, the
    percentile interval at ``level``); the simulated wrong scores are resampled with their rows.
    ``parts``: :func:`mpe_parts` of the same ``probs``, ``y`` and ``q`` when the caller has them
    (it is the costliest step at 30k rows and deterministic, so it is not computed twice).

    Returns ``{"estimate", "low", "high", "rate"}`` (counts rounded to rows, rate = estimate / n).
    """
    n = len(y)
    rng = np.random.default_rng(seed)
    if method == "cleanlab":
        from cleanlab.count import num_label_issues

        point = float(num_label_issues(y, probs, estimation_method="off_diagonal_calibrated"))
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            if len(np.unique(y[idx])) == probs.shape[1]:
                boots.append(num_label_issues(y[idx], probs[idx], estimation_method="off_diagonal_calibrated"))
    elif method == "posterior":
        post = error_score(probs, y, "confident_joint")
        point = float(post.sum())
        boots = [float(post[rng.integers(0, n, n)].sum()) for _ in range(n_boot)]
    elif method == "mpe":
        parts = parts if parts is not None else mpe_parts(probs, y, q)
        lower = not parts["structured"]
        point = (parts["uniform"] if lower else parts["structured_estimate"]) * n
        boots = []
        for _ in range(n_boot):
            mult = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            boots.append(_tail_share(parts["own"], mult, parts["sim"], q, lower) * n)
    else:
        raise ValueError(f"unknown estimator {method!r}")
    lo, hi = np.percentile(boots, [50 * (1 - level), 50 * (1 + level)]) if boots else (point, point)
    est = int(round(min(point, n)))
    return {"estimate": est, "low": int(round(min(lo, n))), "high": int(round(min(hi, n))), "rate": round(est / n, 4)}


def select(score: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` rows with the highest ``score`` (ties broken by row order)."""
    count = int(np.clip(count, 0, len(score)))
    flagged = np.zeros(len(score), dtype=bool)
    flagged[np.lexsort((np.arange(len(score)), -score))[:count]] = True
    return flagged


def cut(
    probs: np.ndarray, y: np.ndarray, *, cutoff: str, ranking: str, estimator: str, fraction: float,
    n_boot: int, seed: int,
) -> dict[str, Any]:
    """Which rows to flag: the ``ranking``'s worst rows, as many as the estimate (``cutoff="estimate"``)
    or ``fraction`` of the rows (``"fraction"``). Returns the flags, the score and the estimate."""
    structured, parts = None, None
    if ranking == "auto":
        parts = mpe_parts(probs, y)
        structured = parts["structured"]
        ranking = "confident_joint" if structured else "self_confidence"
    score = error_score(probs, y, ranking)
    est = estimate_errors(probs, y, method=estimator, n_boot=n_boot, seed=seed, parts=parts)
    count = est["estimate"] if cutoff == "estimate" else int(round(fraction * len(y)))
    return {"is_issue": select(score, count), "score": score, "estimate": est, "count": count, "ranking": ranking,
            "structured": structured}
