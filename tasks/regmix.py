"""RegMix: learn domain weights by regression over proxy runs (Liu et al. 2024, sail-sg/regmix).

1. :func:`draw_mixtures` draws N mixtures from a Dirichlet around the prior (the training pool's
   byte distribution): ``alpha_i = concentration * k * prior_i``, seeded, rounded to 6 decimals
   so each mixture's fingerprint is stable. Each becomes one proxy entry (:mod:`tasks.proxy`).
2. :func:`run` (this stage) reads the proxies' per-domain held-out bits/byte and fits, per domain,
   a regression from the weights to that domain's bits/byte: LightGBM (the paper's model, with
   leaves small enough for tens of points) and a linear model. ``regression = "auto"`` keeps the
   one with the lower cross-validated error of the *target* (leave-one-out up to 40 proxies,
   5-fold above), measured here on held-out proxies; both errors are in the ``fit`` table.
3. The optimum, as in RegMix's simulation step: ``candidates`` mixtures from the same Dirichlet,
   those that break a constraint dropped (a weight under ``min_weight``; more than ``max_epochs``
   passes over a domain at the main run's ``train_bytes``), the target predicted for each, and the
   mean of the ``top_k`` best. The constraints are linear, so that mean satisfies them too.

Targets (``target``): ``mean`` bits/byte over domains, ``worst`` (the highest domain),
``domain:NAME``, or ``benchmark:NAME`` (bits/byte of a benchmark's gold answers given the
question: a continuous score that moves long before a small model's accuracy leaves chance; one
more regression over the proxies' ``benchmarks`` tables). Per-domain regressions make the first
three one aggregation of the same predictions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from tasks import proxy
from tasks.common import StageResult
from winnow.errors import WinnowError

STAGE = "regmix"
WEIGHTS_SCHEMA = pa.schema([("domain", pa.string()), ("weight", pa.float64()), ("prior", pa.float64()),
                            ("predicted_bits_per_byte", pa.float64())])


@dataclass(frozen=True)
class Params:
    """Parameters of the RegMix fit.

    Attributes:
        target: ``"mean"``, ``"worst"`` or ``"domain:NAME"`` held-out bits/byte (lower is better).
        regression: ``"auto"`` (the lower cross-validated target error), ``"lightgbm"`` or ``"linear"``.
        prior: domain -> prior weight (the pool's byte share); the centre of the candidate draw.
        pool_bytes: domain -> training-pool UTF-8 bytes, for the epoch cap.
        train_bytes: the main run's sampled bytes (``mixture.train_bytes``), for the epoch cap.
        min_weight: every domain gets at least this weight.
        max_epochs: no domain is sampled more than this many passes at ``train_bytes`` (None: no cap).
        concentration: Dirichlet spread around the prior (smaller: more extreme mixtures).
        candidates: mixtures scored by the fitted regression; top_k: how many best are averaged.
        seed: seeds the candidate draw and LightGBM.
    """

    target: str = "mean"
    regression: Literal["auto", "lightgbm", "linear"] = "auto"
    prior: dict[str, float] | None = None
    pool_bytes: dict[str, int] | None = None
    train_bytes: int = 2_000_000
    min_weight: float = 0.0
    max_epochs: float | None = None
    concentration: float = 1.0
    candidates: int = 20_000
    top_k: int = 100
    seed: int = 0


def draw_mixtures(prior: dict[str, float], n: int, seed: int, concentration: float = 1.0,
                  min_weight: float = 0.0) -> list[dict[str, float]]:
    """``n`` seeded Dirichlet mixtures around ``prior`` (each sums to exactly 1 at 6 decimals)."""
    domains = sorted(prior)
    draws = _dirichlet(np.array([prior[d] for d in domains]), n, seed, concentration)
    draws = _floor(draws, min_weight)
    out = []
    for w in draws:
        w = np.round(w, 6)
        w[int(np.argmax(w))] += 1.0 - w.sum()  # the rounding residue, so the proxy's sum check holds
        out.append({d: float(x) for d, x in zip(domains, w)})
    return out


def min_proxies(n_domains: int) -> int:
    """Proxies the regression needs: the linear model has ``k`` free coefficients (weights sum to
    1, plus an intercept), and leave-one-out needs one point more than that to be fitted at all."""
    return n_domains + 2


#: Prefix of a proxy's ``benchmarks`` table among :func:`run`'s inputs: ``bench_<proxy name>``.
BENCH_KEY = "bench_"


def run(params: Params, **proxies: pa.Table) -> StageResult:
    """Fit the regressions on the proxy results and return the optimal weights.

    Args:
        params: see :class:`Params`.
        proxies: the proxies' ``data`` tables (:data:`tasks.proxy.RESULT_SCHEMA`), by any names;
            for a ``benchmark:NAME`` target also each proxy's ``benchmarks`` table
            (:data:`tasks.proxy.BENCHMARK_RESULT_SCHEMA`) as ``bench_<its name>``.

    Returns:
        tables ``data`` (:data:`WEIGHTS_SCHEMA`), ``fit`` (cross-validated error per model and which
        was chosen), ``models`` (the fitted regression per domain and benchmark, as text) and
        ``proxies`` (every proxy's weights, per-domain bits/byte and target value).
    """
    benches = {k.removeprefix(BENCH_KEY): t for k, t in proxies.items() if k.startswith(BENCH_KEY)}
    proxies = {k: t for k, t in proxies.items() if not k.startswith(BENCH_KEY)}
    names = sorted(proxies)
    domains = sorted(proxies[names[0]]["domain"].to_pylist()) if names else []
    if len(names) < min_proxies(len(domains)):
        raise WinnowError(f"regmix: {len(names)} proxies, but {len(domains)} domains need at least {min_proxies(len(domains))}")
    X, Y = _matrix(proxies, names, domains)
    B, bench_names = _benchmark_matrix(benches, names)
    outputs = domains + [proxy.BENCHMARK_PREFIX + b for b in bench_names]
    Y = np.hstack([Y, B])
    y = np.array([proxy.target_value(dict(zip(outputs, row)), params.target) for row in Y])
    errors = {kind: _cv_error(kind, X, Y, outputs, params) for kind in ("linear", "lightgbm")}
    kind = min(errors, key=errors.get) if params.regression == "auto" else params.regression
    models = [_fit(kind, X, Y[:, j], params.seed) for j in range(len(outputs))]
    prior = np.array([(params.prior or {}).get(d, 1.0 / len(domains)) for d in domains])
    prior = prior / prior.sum()
    weights, predicted = _optimum(models, prior, domains, outputs, params)
    fit = pa.table({"model": list(errors), "cv_mae": [errors[k] for k in errors], "chosen": [k == kind for k in errors]})
    rows = [{"proxy": n, **{f"w_{d}": float(X[i, j]) for j, d in enumerate(domains)},
             **{f"bpb_{d}": float(Y[i, j]) for j, d in enumerate(outputs)}, "target": float(y[i])} for i, n in enumerate(names)]
    table = pa.table({"domain": domains, "weight": weights, "prior": prior,
                      "predicted_bits_per_byte": predicted[: len(domains)]}, schema=WEIGHTS_SCHEMA)
    best = int(np.argmin(y))
    metrics = {"method": "regmix", "target": params.target, "regression": kind, "proxies": len(names),
               "cv_mae": {k: round(v, 5) for k, v in errors.items()},
               "predicted_target": round(float(proxy.target_value(dict(zip(outputs, predicted)), params.target)), 5),
               "best_proxy_target": round(float(y[best]), 5), "target_spread": round(float(y.max() - y.min()), 5),
               "weights": {d: round(float(w), 6) for d, w in zip(domains, weights)}}
    fitted = pa.table({"domain": outputs, "model": [kind] * len(outputs), "fitted": [_serialise(m) for m in models]})
    return StageResult(tables={"data": table, "fit": fit, "models": fitted, "proxies": pa.Table.from_pylist(rows)},
                       metrics=metrics)


def _benchmark_matrix(benches: dict[str, pa.Table], names: list[str]) -> tuple[np.ndarray, list[str]]:
    """``[proxies, benchmarks]`` gold-answer bits/byte; every proxy must have scored the same benchmarks."""
    if not benches:
        return np.zeros((len(names), 0)), []
    missing = sorted(set(names) - set(benches))
    if missing:
        raise WinnowError(f"regmix: no benchmarks table for proxy(s) {', '.join(missing)}")
    bench_names = sorted(benches[names[0]]["benchmark"].to_pylist())
    B = np.zeros((len(names), len(bench_names)))
    for i, n in enumerate(names):
        row = dict(zip(benches[n]["benchmark"].to_pylist(), benches[n]["bits_per_byte"].to_pylist()))
        if sorted(row) != bench_names:
            raise WinnowError(f"regmix: proxy {n} scored benchmarks {sorted(row)}, expected {bench_names}")
        B[i] = [row[b] for b in bench_names]
    return B, bench_names


def _matrix(proxies: dict[str, pa.Table], names: list[str], domains: list[str]) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.zeros((len(names), len(domains))), np.zeros((len(names), len(domains)))
    for i, n in enumerate(names):
        t = proxies[n]
        if sorted(t["domain"].to_pylist()) != domains:
            raise WinnowError(f"regmix: proxy {n} has domains {sorted(t['domain'].to_pylist())}, expected {domains}")
        row = {r["domain"]: r for r in t.to_pylist()}
        X[i] = [row[d]["weight"] for d in domains]
        Y[i] = [row[d]["bits_per_byte"] for d in domains]
    return X, Y


def _fit(kind: str, X: np.ndarray, y: np.ndarray, seed: int) -> Any:
    if kind == "linear":
        return _Linear(X, y)
    import lightgbm as lgb

    # RegMix's regressor, with leaves small enough to split a few dozen points (LightGBM's default
    # min_data_in_leaf = 20 would fit a constant here).
    model = lgb.LGBMRegressor(n_estimators=200, learning_rate=0.05, num_leaves=7, min_child_samples=2,
                              min_child_weight=1e-3, subsample_freq=0, random_state=seed, deterministic=True,
                              force_row_wise=True, n_jobs=1, verbose=-1)
    return model.fit(X, y)


class _Linear:
    """Least squares on the weights with an intercept, lightly ridge-regularised (stable for few points)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, ridge: float = 1e-4) -> None:
        A = np.hstack([X, np.ones((len(X), 1))])
        self.coef = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ y)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([X, np.ones((len(X), 1))]) @ self.coef


def _cv_error(kind: str, X: np.ndarray, Y: np.ndarray, domains: list[str], params: Params) -> float:
    """Mean absolute error of the predicted target on proxies left out of the fit."""
    n = len(X)
    folds = np.arange(n) if n <= 40 else np.arange(n) % 5
    errors = []
    for f in np.unique(folds):
        test, fit = folds == f, folds != f
        pred = np.column_stack([_fit(kind, X[fit], Y[fit, j], params.seed).predict(X[test]) for j in range(len(domains))])
        for p, actual in zip(pred, Y[test]):
            errors.append(abs(proxy.target_value(dict(zip(domains, p)), params.target)
                              - proxy.target_value(dict(zip(domains, actual)), params.target)))
    return float(np.mean(errors))


def _optimum(models: list[Any], prior: np.ndarray, domains: list[str], outputs: list[str],
             params: Params) -> tuple[np.ndarray, np.ndarray]:
    cand = _floor(_dirichlet(prior, params.candidates, params.seed + 1, params.concentration), params.min_weight)
    if params.max_epochs is not None and params.pool_bytes:
        cap = params.max_epochs * np.array([params.pool_bytes[d] for d in domains], dtype=np.float64) / params.train_bytes
        cand = cand[(cand <= cap + 1e-12).all(axis=1)]
        if len(cand) == 0:
            raise WinnowError(f"regmix: no mixture meets max_epochs = {params.max_epochs} at train_bytes = {params.train_bytes}; "
                              "raise max_epochs or lower mixture.train_bytes")
    pred = np.column_stack([m.predict(cand) for m in models])
    score = np.array([proxy.target_value(dict(zip(outputs, p)), params.target) for p in pred])
    best = np.argsort(score, kind="stable")[: params.top_k]
    weights = cand[best].mean(axis=0)
    weights = weights / weights.sum()
    predicted = np.array([float(m.predict(weights[None, :])[0]) for m in models])
    return weights, predicted


def _dirichlet(prior: np.ndarray, n: int, seed: int, concentration: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    alpha = np.maximum(concentration * len(prior) * prior, 1e-3)
    return rng.dirichlet(alpha, size=n)


def _floor(draws: np.ndarray, min_weight: float) -> np.ndarray:
    """Mix each draw with uniform just enough that every weight is >= min_weight (a linear map)."""
    k = draws.shape[1]
    if min_weight <= 0:
        return draws
    if min_weight * k > 1:
        raise WinnowError(f"min_weight = {min_weight} x {k} domains exceeds 1")
    return min_weight + (1 - min_weight * k) * draws


def predict(models: pa.Table, weights: dict[str, float]) -> dict[str, float]:
    """Per-domain bits/byte that a fitted entry's ``models`` table predicts for ``weights``.

    This is how a proxy search ranks mixtures it never trained on (the transfer check compares
    that ranking with main-size runs).
    """
    outputs = models["domain"].to_pylist()
    domains = [d for d in outputs if not d.startswith(proxy.BENCHMARK_PREFIX)]
    missing = sorted(set(domains) - set(weights))
    if missing:
        raise WinnowError(f"regmix: no weight for domain(s) {', '.join(missing)}")
    x = np.array([[weights[d] for d in domains]])
    out = {}
    for d, kind, text in zip(outputs, models["model"].to_pylist(), models["fitted"].to_pylist()):
        if kind == "linear":
            coef = json.loads(text)
            out[d] = float(x[0] @ np.array(coef["coef"]) + coef["intercept"])
        else:
            import lightgbm as lgb

            out[d] = float(lgb.Booster(model_str=text).predict(x)[0])
    return out


def _serialise(model: Any) -> str:
    """The fitted regression as text: LightGBM's model string, or the linear coefficients as JSON."""
    if isinstance(model, _Linear):
        return json.dumps({"coef": model.coef[:-1].tolist(), "intercept": float(model.coef[-1])})
    return model.booster_.model_to_string()
