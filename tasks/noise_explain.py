"""Per-row explanations of a label-noise flag: what a reviewer needs to check it by eye.

For every flagged row: the suggested label and its out-of-sample probability (from the caller),
which signals flagged it, and its nearest *unflagged* neighbours labelled with the given label and
with the suggested one (cosine similarity on the stage's features). If the neighbours with the
suggested label are much closer than those with the given one, the flag is easy to believe.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _unit_rows(X: Any) -> Any:
    """Rows scaled to unit L2 norm (dense or sparse); zero rows stay zero."""
    if hasattr(X, "tocsr"):
        from sklearn.preprocessing import normalize

        return normalize(X.tocsr().astype(np.float32))
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def nearest_by_class(
    X: Any, y: np.ndarray, flagged: np.ndarray, suggested: np.ndarray, k: int = 3, chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each flagged row, its ``k`` most similar unflagged rows of the given and of the suggested class.

    Returns ``(given_idx, given_sim, suggested_idx, suggested_sim)``, each ``(n_flagged, k)``, in
    the order of ``np.flatnonzero(flagged)``; ``-1`` / ``nan`` where a class has fewer than ``k``
    unflagged rows. Exact (brute force, ``chunk`` flagged rows at a time).
    """
    U = _unit_rows(X)
    rows = np.flatnonzero(flagged)
    ok = ~flagged
    out = [np.full((len(rows), k), -1, dtype=np.int64), np.full((len(rows), k), np.nan),
           np.full((len(rows), k), -1, dtype=np.int64), np.full((len(rows), k), np.nan)]
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        S = U[part] @ U.T
        S = np.asarray(S.todense() if hasattr(S, "todense") else S, dtype=np.float32)
        for slot, cls in ((0, y[part]), (2, suggested[part])):
            masked = np.where(ok[None, :] & (y[None, :] == cls[:, None]), S, -np.inf)
            kk = min(k, masked.shape[1])
            top = np.argpartition(-masked, kk - 1, axis=1)[:, :kk]
            sims = np.take_along_axis(masked, top, 1)
            order = np.argsort(-sims, axis=1)
            top, sims = np.take_along_axis(top, order, 1), np.take_along_axis(sims, order, 1)
            valid = np.isfinite(sims)
            out[slot][start : start + len(part), :kk] = np.where(valid, top, -1)
            out[slot + 1][start : start + len(part), :kk] = np.where(valid, sims, np.nan)
    return out[0], out[1], out[2], out[3]


def neighbour_lists(ids: list[str], idx: np.ndarray, sim: np.ndarray) -> list[list[dict[str, Any]]]:
    """``[{"id", "similarity"}, ...]`` per row from :func:`nearest_by_class` output (missing ones left out)."""
    return [[{"id": ids[j], "similarity": round(float(s), 4)} for j, s in zip(r, q) if j >= 0] for r, q in zip(idx, sim)]
