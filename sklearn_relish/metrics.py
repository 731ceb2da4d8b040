"""The paper's evaluation metrics: Pearson, Spearman and NRMSE (RMSE over the target's range).

Correlations come from scipy.stats (installed with scikit-learn); a constant side gives NaN
rather than scipy's warning, as the paper's tables would show it.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn.metrics import r2_score
from sklearn.utils import check_consistent_length

__all__ = ["nrmse", "pearson_r", "regression_report", "spearman_r"]


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    try:
        check_consistent_length(y_true, y_pred)
    except ValueError:
        raise ValueError(
            f"y_true has {y_true.size} values but y_pred has {y_pred.size}."
        ) from None
    return y_true, y_pred


def _correlation(function, y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    if y_true.size < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return float("nan")  # undefined; scipy would warn and return NaN too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(function(y_true, y_pred).statistic)


def pearson_r(y_true, y_pred) -> float:
    """Pearson correlation; NaN when either side is constant."""
    return _correlation(stats.pearsonr, y_true, y_pred)


def spearman_r(y_true, y_pred) -> float:
    """Spearman rank correlation (tied values share their average rank); NaN if constant."""
    return _correlation(stats.spearmanr, y_true, y_pred)


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
