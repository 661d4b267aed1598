"""Metric math of the evaluate stage: pure numpy over per-item numbers, no model involved.

* Multiple choice follows lm-evaluation-harness (``lm_eval/api/task.py``, ``process_results``):
  ``acc`` is the argmax of the choices' log-likelihoods, ``acc_norm`` the argmax of log-likelihood
  divided by the choice's length in **characters** (of the choice text, without the target
  delimiter), and ``acc_bytes`` the same per UTF-8 byte. Ties go to the first choice (``np.argmax``).
* Confidence = softmax over the choices' log-likelihoods (lm-eval's ``brier_score`` uses the same);
  ECE over equal-width bins (Guo et al. 2017) and the multi-class Brier score.
* Temperature scaling: one T > 0 fitted by minimising the NLL of softmax(ll / T) on a fit split.
* Intervals: percentile bootstrap (95%) over the units that were sampled (benchmark items,
  held-out documents), with a seed derived from the data's name, so the same inputs always give
  the same interval. lm-eval reports a standard error (``mean_stderr``) instead; for a mean the
  two agree to within the bootstrap's noise (checked in the tests).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import xxhash

#: The interval of log T that :func:`fit_temperature` searches.
LOG_TEMPERATURE_BOUNDS = (-6.0, 9.0)


def softmax(logliks: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """Probabilities from log-likelihoods divided by ``temperature`` (numerically stable)."""
    z = np.asarray(logliks, dtype=np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE = Σ_m (|B_m|/n)·|acc(B_m) − conf(B_m)| over equal-width bins (lo, hi] of confidence."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(confidence) == 0:
        return float("nan")
    return float(ece_bootstrap(confidence, np.asarray(correct), np.arange(len(confidence))[None, :], bins)[0])


def ece_bootstrap(confidence: np.ndarray, correct: np.ndarray, idx: np.ndarray, bins: int = 15) -> np.ndarray:
    """ECE of each resample ``idx[b]`` (rows of item indices), vectorised over resamples.

    Per bin, (|B_m|/n)·|acc − conf| = |Σ correct − Σ confidence| / n, so one ``bincount`` per sum
    over (resample, bin) pairs gives every resample's ECE at once.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    n_res, n = idx.shape
    flat = (np.arange(n_res)[:, None] * bins + which[idx]).ravel()
    gap = np.bincount(flat, weights=(correct[idx] - confidence[idx]).ravel(), minlength=n_res * bins)
    return np.abs(gap.reshape(n_res, bins)).sum(axis=1) / n


def brier_items(probs: Sequence[np.ndarray], answers: Sequence[int]) -> np.ndarray:
    """Per item Σ_k (p_k − 1[k = answer])²; choice counts may differ per item."""
    out = np.empty(len(answers))
    for i, (p, a) in enumerate(zip(probs, answers)):
        p = np.asarray(p, dtype=np.float64)
        out[i] = float((p**2).sum() - 2 * p[a] + 1.0)
    return out


def brier_score(probs: Sequence[np.ndarray], answers: Sequence[int]) -> float:
    """Mean multi-class Brier score (0 is perfect, 2 the worst)."""
    return float(brier_items(probs, answers).mean()) if len(answers) else float("nan")


def choice_scores(logliks: Sequence[float], choices: Sequence[str], answer: int) -> dict[str, Any]:
    """One multiple-choice item scored as lm-eval does: raw, per-character and per-byte argmax."""
    ll = np.asarray(logliks, dtype=np.float64)
    chars = np.array([float(len(c)) for c in choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    p = softmax(ll)
    pred, pred_norm, pred_bytes = int(np.argmax(ll)), int(np.argmax(ll / chars)), int(np.argmax(ll / nbytes))
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "pred_bytes": pred_bytes,
        "correct": pred == answer,
        "correct_norm": pred_norm == answer,
        "correct_bytes": pred_bytes == answer,
        "confidence": float(p[pred]),
        "prob_answer": float(p[answer]),
        "probs": p,
    }


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood in nats over ``n_bytes`` UTF-8 bytes, as bits per byte."""
    return nll_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")


# --- temperature scaling -------------------------------------------------------------------------


def fit_temperature(logliks: Sequence[Sequence[float]], answers: Sequence[int]) -> float:
    """T minimising the mean NLL of the right choice under softmax(ll / T) (Guo et al. 2017).

    The NLL is convex in 1/T, so a bounded scalar search over log T in [-6, 9] finds the optimum
    (T = e^9 ≈ 8100 is as good as uniform: a model whose choices' log-likelihoods carry no
    information fits there). With no items, T = 1 (no change).
    """
    if not len(answers):
        return 1.0
    from scipy.optimize import minimize_scalar

    width = max(len(ll) for ll in logliks)
    z = np.full((len(answers), width), -np.inf)  # ragged choice counts: -inf pads take no mass
    for i, ll in enumerate(logliks):
        z[i, : len(ll)] = ll
    gold = z[np.arange(len(answers)), np.asarray(answers)]

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        m = s.max(axis=1)
        return float(np.mean(m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - gold / math.exp(log_t)))

    found = minimize_scalar(nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


def at_upper_bound(temperature: float) -> bool:
    """True when a fitted T sits at the top of the search: softmax(ll / T) is then uniform, i.e.
    the choices' log-likelihoods carried no usable information."""
    return math.log(temperature) >= LOG_TEMPERATURE_BOUNDS[1] - 1e-3


def in_fit_split(ids: Sequence[str], salt: str, fraction: float = 0.5) -> np.ndarray:
    """True for the items whose salted xxh64 of the id falls below ``fraction``: the fit split."""
    s = salt.encode("utf-8") + b"\x00"
    cut = int(fraction * 2**64)
    return np.array([xxhash.xxh64_intdigest(s + i.encode("utf-8")) < cut for i in ids], dtype=bool)


# --- bootstrap intervals -------------------------------------------------------------------------


def resamples(n: int, iters: int, seed_key: str) -> np.ndarray:
    """``iters`` bootstrap resamples of ``n`` items (rows of indices), seeded by ``seed_key``."""
    rng = np.random.default_rng(xxhash.xxh64_intdigest(seed_key.encode("utf-8")))
    return rng.integers(0, n, size=(iters, n))


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap statistics (NaNs ignored)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0 or np.all(np.isnan(samples)):
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def mean_with_interval(values: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-item values over the resamples ``idx``."""
    values = np.asarray(values, dtype=np.float64)
    return (float(values.mean()), *percentile_interval(values[idx].mean(axis=1)))


def ratio_with_interval(num: np.ndarray, den: np.ndarray, idx: np.ndarray, scale: float = 1.0) -> tuple[float, float, float]:
    """(Σnum/Σden·scale, lo, hi): a micro-average such as bits/byte, resampling whole units."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return (float(num.sum() / den.sum() * scale), *percentile_interval(num[idx].sum(axis=1) / den[idx].sum(axis=1) * scale))
