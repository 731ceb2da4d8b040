"""The paper's evaluation metrics: Pearson, Spearman and NRMSE (RMSE over the target's range).

Correlations come from scipy.stats (installed with scikit-learn); a constant side gives NaN
rather than scipy's warning, as the paper's tables would show it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import r2_score

from ._console import user_stacklevel

__all__ = ["nrmse", "pearson_r", "regression_report", "spearman_r"]


def _columns(y_true, y_pred) -> list[tuple[np.ndarray, np.ndarray]]:
    """Matching (truth, prediction) columns: one for 1-D input, one per target for 2-D.

    Several targets are scored one by one and averaged (scikit-learn's
    ``multioutput="uniform_average"``, what ``score`` reports): pooled into one column,
    a target in other units would dominate every metric.
    """
    y_true = np.atleast_1d(np.asarray(y_true, dtype=np.float64))
    y_pred = np.atleast_1d(np.asarray(y_pred, dtype=np.float64))
    if y_true.ndim > 2 or y_pred.ndim > 2:
        raise ValueError(f"y_true and y_pred must be 1-D or 2-D (one column per target); "
                         f"got shapes {y_true.shape} and {y_pred.shape}.")
    y_true, y_pred = (a[:, 0] if a.ndim == 2 and a.shape[1] == 1 else a
                      for a in (y_true, y_pred))
    if y_true.shape[:1] != y_pred.shape[:1]:
        raise ValueError(f"y_true has {len(y_true)} values but y_pred has {len(y_pred)}.")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}: "
                         "one prediction column per target.")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        bad = np.flatnonzero(~np.isfinite(values.ravel()))
        if bad.size:  # one rule for every metric: r2_score raised here, pearsonr gave NaN
            where = np.unravel_index(bad[0], values.shape)
            raise ValueError(f"{name} must be finite; {name}[{', '.join(map(str, where))}] "
                             f"is {values[where]}.")
    if y_true.ndim == 1:
        return [(y_true, y_pred)]
    return [(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]


def _average(metric: Callable, columns: list) -> tuple[float, list[int]]:
    """``metric`` averaged over the target columns where it is defined, and the columns
    where it is not. One constant column made every averaged metric NaN, hiding the
    other targets' scores; a metric undefined on every column stays NaN."""
    values = np.array([metric(t, p) for t, p in columns])
    undefined = np.flatnonzero(np.isnan(values)).tolist()
    if len(columns) == 1 or len(undefined) in (0, len(values)):
        return float(np.mean(values)), []
    return float(np.nanmean(values)), undefined


def _warn_undefined(names: list[str], undefined: list[int], n_columns: int) -> None:
    warnings.warn(
        f"{', '.join(names[:-1])}{' and ' if len(names) > 1 else ''}{names[-1]} "
        f"{'is' if len(names) == 1 else 'are'} undefined for target "
        f"column(s) {undefined} (constant, in y_true or y_pred): averaged over the other "
        f"{n_columns - len(undefined)} of {n_columns}.",
        UserWarning, stacklevel=user_stacklevel())


def _averaged(metric: Callable) -> Callable:
    @functools.wraps(metric)
    def over_targets(y_true, y_pred) -> float:
        columns = _columns(y_true, y_pred)
        value, undefined = _average(metric, columns)
        if undefined:
            _warn_undefined([metric.__name__.lstrip("_")], undefined, len(columns))
        return value

    return over_targets


def _correlation(function, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if y_true.size < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return float("nan")  # undefined; scipy would warn and return NaN too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(function(y_true, y_pred).statistic)


@_averaged
def pearson_r(y_true, y_pred) -> float:
    """Pearson correlation; NaN when either side is constant. Averaged over targets."""
    return _correlation(stats.pearsonr, y_true, y_pred)


@_averaged
def spearman_r(y_true, y_pred) -> float:
    """Spearman rank correlation (tied values share their average rank); NaN if constant.
    Averaged over targets."""
    return _correlation(stats.spearmanr, y_true, y_pred)


@_averaged
def nrmse(y_true, y_pred) -> float:
    """Root mean squared error divided by ``max(y_true) - min(y_true)``; NaN without a
    range (no values, or a constant truth). Averaged over targets."""
    if y_true.size == 0:
        return float("nan")
    spread = y_true.max() - y_true.min()
    rmse = np.sqrt(np.mean((y_true - y_pred) ** 2))
    return float(rmse / spread) if spread > 0 else float("nan")


@_averaged
def _r2(y_true, y_pred) -> float:
    # A constant truth leaves R² undefined: NaN, as the correlations and NRMSE give there
    # (scikit-learn's force_finite would report 0.0 beside three NaNs).
    if y_true.size < 2 or not y_true.max() > y_true.min():
        return float("nan")
    return float(r2_score(y_true, y_pred))


def regression_report(y_true, y_pred) -> dict[str, float]:
    """Pearson, Spearman, NRMSE and R² in one dict (raw values, not x100), each averaged
    over targets for 2-D ``y`` (over those where it is defined, with one warning, when a
    column is constant)."""
    columns = _columns(y_true, y_pred)
    report, undefined = {}, {}
    for name, metric in (("pearson", pearson_r), ("spearman", spearman_r),
                         ("nrmse", nrmse), ("r2", _r2)):
        report[name], left_out = _average(metric.__wrapped__, columns)
        undefined.update({name: left_out} if left_out else {})
    for left_out in dict.fromkeys(tuple(cols) for cols in undefined.values()):
        _warn_undefined([name for name in undefined if tuple(undefined[name]) == left_out],
                        list(left_out), len(columns))
    return report
