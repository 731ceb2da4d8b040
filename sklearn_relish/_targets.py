"""Validation and standardisation of regression targets and sample weights.

Runs before any model is loaded: a bad target fails in milliseconds with a message that
names the offending entry, never as a torch traceback from deep inside.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse
from sklearn.utils import check_consistent_length, column_or_1d

from ._console import user_stacklevel
from ._inputs import RowNames, is_missing


def _as_floats(values: np.ndarray, rows: RowNames) -> np.ndarray:
    """Entries that are not numbers already: converted one by one, each refusal named."""
    floats = np.empty(values.shape, dtype=np.float64)
    for index, value in np.ndenumerate(values):
        if is_missing(value):
            floats[index] = np.nan  # reported as missing by the caller, with its place
            continue
        # Like scikit-learn, refuse strings (even "1.5": a column read as text is a bug
        # upstream) and complex numbers (float() would silently drop the imaginary part).
        if isinstance(value, str | bytes | complex | np.complexfloating):
            raise ValueError(
                f"{rows.name} must be real numbers; {rows.place(index)} is a "
                f"{type(value).__name__} ({value!r:.50}). Convert {rows.name} first, e.g. "
                f"{rows.name}.astype(float)."
            )
        try:
            floats[index] = float(value)
        except OverflowError:
            raise ValueError(
                f"{rows.name} must fit float64; {rows.place(index)} ({value!r:.50}) is too "
                "large for it."
            ) from None
        except (TypeError, ValueError):
            raise ValueError(
                f"{rows.name} must be real numbers; {rows.place(index)} is a "
                f"{type(value).__name__} ({value!r:.50})."
            ) from None
    return floats


def _check_integers_survive_float64(integers: np.ndarray, values: np.ndarray) -> None:
    """Refuse integers that differ only beyond float64's 53 bits (ids near 2**62, say):
    as floats they were equal, and the target was fitted as a constant without a word."""
    for column, floats in zip(integers.reshape(len(integers), -1).T,
                              values.reshape(len(values), -1).T, strict=True):
        if floats.min() == floats.max() and column.min() != column.max():
            raise ValueError(
                f"y's integers (e.g. {column.min()} and {column.max()}) differ by less than "
                "float64 can resolve at their size, so they would all become one value; "
                "subtract an offset first, e.g. y - y.min()."
            )


def check_target(y: Any, n_samples: int) -> np.ndarray:
    """Validate a regression target: numeric, finite, one row per text.

    Returns shape ``(n,)`` for one target, ``(n, k)`` for ``k >= 2`` targets; a column
    vector ``(n, 1)`` is ravelled with scikit-learn's DataConversionWarning.
    """
    if y is None:
        raise ValueError("y is required: RelishTextRegressor is a supervised regressor.")
    if scipy.sparse.issparse(y):  # np.asarray would wrap it as one opaque object
        raise TypeError(
            f"y must be dense; got a sparse matrix of shape {y.shape}. Use y.toarray().")
    values = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    rows = RowNames(y, "y")  # a pandas y's rows are named by their labels too, as X's are
    if values.dtype.kind in "US" and not hasattr(y, "dtype"):
        # A list mixing numbers and strings: numpy turned every entry into a string; keep
        # the entries as they were so the error below names the entry that really is one.
        values = np.asarray(y, dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = column_or_1d(values, warn=True)  # with scikit-learn's DataConversionWarning
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] == 0):
        raise ValueError(
            f"y must be 1-D (one target per text) or 2-D (one column per target); got "
            f"shape {values.shape}."
        )
    if values.dtype.kind == "c":
        non_real = np.argwhere(values.imag != 0)
        index = tuple(int(i) for i in non_real[0]) if non_real.size else (0,) * values.ndim
        raise ValueError(
            f"y must be real numbers; {rows.place(index)} is complex ({values[index]}). Pass "
            "the real part explicitly if that is what you mean, e.g. y.real."
        )
    if values.dtype.kind not in "biuf":
        values = _as_floats(values, rows)
    integers = values if values.dtype.kind in "iu" else None
    values = values.astype(np.float64)
    if integers is not None and values.size:
        _check_integers_survive_float64(integers, values)
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"y contains {len(bad)} missing, NaN or infinite value(s), first at "
            f"{rows.place(first)} ({values[first]}). Drop those rows before fitting."
        )
    scale = target_scale(values) if values.size else np.zeros(1)
    if not np.all(np.isfinite(scale)):
        raise ValueError(
            f"y is too large to standardise in float64 (largest |y| is "
            f"{np.abs(values).max():.3g}); rescale it, e.g. y / 1e100."
        )
    try:
        check_consistent_length(values, np.empty(n_samples))
    except ValueError:
        raise ValueError(f"X has {n_samples} texts but y has {values.shape[0]} rows.") from None
    return values


def target_names(y: Any) -> np.ndarray | None:
    """Column name(s) of a pandas target, so outputs can be labelled; None without names."""
    names = list(y.columns) if hasattr(y, "columns") else [getattr(y, "name", None)]
    if all(isinstance(name, str) for name in names):
        return np.asarray(names, dtype=object)
    return None


def target_mean(values: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """Weighted mean, per column for 2-D ``values``; exactly the value of a constant column.

    A weighted mean of equal values can miss them by an ulp (sixteen 1/3s at uneven
    weights average to 0.33333333333333326), and a constant target is predicted as its mean.
    """
    if values.ndim == 2:
        return np.array([target_mean(column, weights) for column in values.T])
    kept = values if weights is None else values[weights > 0]
    if kept.size and np.all(kept == kept[0]):
        return float(kept[0])
    return float(np.average(values, weights=weights))


# How many times the standard deviation may exceed the one left once the 1% of values
# farthest from the median (at least one) are set aside: 1.01 to 1.05 for the four VADER
# corpora and for normal data, 1.13 for exponential, 1.4 for lognormal (sigma 1) targets;
# 31 for 300 VADER tweets with one rating typed as 1000. A ratio, not quartiles: ties at
# a quartile (many exact zeros) made an IQR test fire or not as one row was added.
_DOMINATED = 3.0


def warn_if_few_values_set_the_scale(values: np.ndarray, weights: np.ndarray,
                                     spread: float | np.ndarray) -> None:
    """Warn where a few extreme targets set the standard deviation the head learns in.

    Targets are standardised, and Huber's delta is counted in standard deviations: one
    rating typed as 1000 among 300 VADER tweets' ratings (-4..4) took the scale from 1.9
    to 58 and squeezed every other target into a sliver of it; with MiniLM, test Pearson
    fell from 0.82 / 0.83 to 0.35 / 0.42 (seeds 0 / 1), without a word.
    """
    kept = weights > 0
    n_kept = int(kept.sum())
    n_aside = max(1, n_kept // 100)
    if n_kept - n_aside < 2:  # nothing left to compare with
        return
    columns = values[kept].reshape(n_kept, -1)
    for j, column in enumerate(columns.T):
        scale = float(np.ravel(spread)[j])
        middle = float(np.median(column))
        order = np.argsort(np.abs(column - middle), kind="stable")
        rest = order[:-n_aside]
        without = float(target_scale(column[rest], weights[kept][rest]))
        if not scale > _DOMINATED * without:
            continue
        worst = column[order[-1]]
        name = "y" if columns.shape[1] == 1 else f"y[:, {j}]"
        found = (f"{name}'s standard deviation ({scale:.3g}) is {scale / without:.0f} times "
                 f"what it is without its {n_aside} value(s) farthest from the median "
                 f"({without:.3g})" if without > 0 else
                 f"{name} is constant but for its {n_aside} value(s) farthest from the median")
        warnings.warn(
            f"{found}: a few extreme values, such as {worst:.6g} (the median is {middle:.6g}), set "
            "the scale the head learns in and squeeze the other targets. Check them for "
            "entry errors; for a heavy-tailed target, fit through "
            "sklearn.compose.TransformedTargetRegressor (func=np.log1p with "
            "inverse_func=np.expm1 for values above -1, or transformer="
            "QuantileTransformer(output_distribution='normal')).",
            UserWarning, stacklevel=user_stacklevel())


def target_scale(values: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """(Weighted) standard deviation, per column for 2-D ``values``, that does not underflow.

    ``np.std`` squares the deviations, so targets around 1e-200 get a spread of exactly 0
    and would be taken for a constant; dividing by the largest deviation first keeps the
    squares near 1. 0.0 only where all (positively weighted) values are equal; inf where
    the deviations themselves overflow float64.
    """
    if values.ndim == 2:
        return np.array([target_scale(column, weights) for column in values.T])
    if weights is not None:  # a text of weight 0 (a huge sentinel, say) must not count
        kept = weights > 0
        values, weights = values[kept], weights[kept]
    if values.size == 0 or np.all(values == values[0]):
        return 0.0  # exactly: a weighted mean of equal values can differ from them by an ulp
    with np.errstate(over="ignore", invalid="ignore"):
        deviations = values - np.average(values, weights=weights)
        largest = float(np.max(np.abs(deviations)))
        if largest == 0.0 or not math.isfinite(largest):
            return largest
        return largest * math.sqrt(np.average((deviations / largest) ** 2, weights=weights))


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """Validate per-text weights: 1-D, finite, non-negative, not all zero, one per text.

    Returns the weights divided by their mean, so that the loss keeps its scale (and the
    default learning rate its meaning) whatever the units of the weights.
    """
    if sample_weight is None:
        return np.ones(n_samples)
    weights = np.asarray(
        sample_weight.to_numpy() if hasattr(sample_weight, "to_numpy") else sample_weight
    )
    rows = RowNames(sample_weight, "sample_weight")
    if weights.ndim == 0:
        weights = np.full(n_samples, weights)
    if weights.ndim == 1 and weights.dtype.kind == "O":  # Decimals, a None: as y's are read
        weights = _as_floats(weights, rows)
    if weights.ndim != 1 or weights.dtype.kind not in "biuf":
        raise ValueError(
            f"sample_weight must be a 1-D array of numbers; got shape {weights.shape} of "
            f"dtype {weights.dtype}."
        )
    if weights.shape[0] != n_samples:
        raise ValueError(f"X has {n_samples} texts but sample_weight has {weights.shape[0]}.")
    weights = weights.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ValueError(
            f"sample_weight must be finite and non-negative; {rows[int(bad[0])]} is "
            f"{weights[bad[0]]}."
        )
    if not weights.max(initial=0.0) > 0:
        raise ValueError("sample_weight sums to 0: at least one text needs a positive weight.")
    # Scaled by the largest first: the sum of weights near float64's maximum overflows to
    # inf, and dividing by it would make every weight 0.
    weights = weights / weights.max()
    return weights / weights.mean()
