"""The paper's evaluation metrics: Pearson, Spearman and NRMSE (RMSE over the target's range).

numpy only, so the demo and the benchmarks need no scipy.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import r2_score

__all__ = ["nrmse", "pearson_r", "regression_report", "spearman_r"]


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}.")
    return y_true, y_pred


def pearson_r(y_true, y_pred) -> float:
    """Pearson correlation; NaN when either side is constant."""
    y_true, y_pred = _pair(y_true, y_pred)
    a, b = y_true - y_true.mean(), y_pred - y_pred.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Tied values share the mean of the ranks they span.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0 + 1, ends - starts)
    return ranks


def spearman_r(y_true, y_pred) -> float:
    """Spearman rank correlation (Pearson on average ranks, so ties are handled)."""
    y_true, y_pred = _pair(y_true, y_pred)
    return pearson_r(_average_ranks(y_true), _average_ranks(y_pred))


def nrmse(y_true, y_pred) -> float:
    """Root mean squared error divided by ``max(y_true) - min(y_true)``."""
    y_true, y_pred = _pair(y_true, y_pred)
    spread = y_true.max() - y_true.min()
    rmse = np.sqrt(np.mean((y_true - y_pred) ** 2))
    return float(rmse / spread) if spread > 0 else float("nan")


def regression_report(y_true, y_pred) -> dict[str, float]:
    """Pearson, Spearman, NRMSE and R² in one dict (raw values, not x100)."""
    return {
        "pearson": pearson_r(y_true, y_pred),
        "spearman": spearman_r(y_true, y_pred),
        "nrmse": nrmse(y_true, y_pred),
        "r2": float(r2_score(*_pair(y_true, y_pred))),
    }
