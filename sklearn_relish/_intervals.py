"""Prediction intervals by conformal prediction: split conformal on the early-stopping
hold-out, or out-of-fold errors over K folds of the training texts (CV, CV+).

Early stopping already holds out ``validation_fraction`` of the training texts; the head
never trains on them. After ``fit``, the model's errors on that hold-out (its
*conformity scores*) are kept, sorted. For a new text, ``predict_interval(coverage=c)``
widens the prediction by the ``ceil((n + 1) c)``-th smallest score: if the hold-out and
the new texts are exchangeable, the interval covers the true value with probability at
least ``c`` (Vovk et al. 2005; Lei et al. 2018), whatever the model. The hold-out also
chose the best epoch, which makes its errors slightly optimistic: on VADER, 3 of 12
test splits got under 88% coverage at 90% (``benchmarks/intervals.py``).

Four calibrations:

- ``"split"``: ``|y - prediction|``; intervals of one width everywhere.
- ``"cqr"``: conformalized quantile regression (Romano et al. 2019). The head gets two
  more outputs per target, trained with the pinball loss at the 5% and 95% quantiles,
  and the score ``max(low - y, y - high)`` corrects them; intervals adapt to each text
  (wider where the head is unsure). Any coverage can be asked for; it is sharpest
  near the 90% it was trained for.
- ``"cv+"``: CV+ (Barber et al. 2021, "Predictive inference with the jackknife+"). K
  more heads each train without one fold of the training texts (with early stopping
  inside the other folds), so every training text gets an honest out-of-fold error, not
  only the 10% hold-out, and no epoch was chosen on it. The interval for a new text is
  read off the K heads' predictions shifted by those errors. It costs K more head
  trainings (the token states are the same, so no LLM pass) and K head passes per
  prediction. The guarantee is coverage of at least ``2 c - 1`` (at least 80% for 90%);
  its calibration noise is that of n texts instead of the hold-out's n / 10. Where the
  heads disagree on a text its interval widens, which makes CV+ conservative for heads
  as seed-sensitive as RELISH's: 92-94% at 90% on VADER.
- ``"cv"``: the same K fold heads and out-of-fold errors, but the interval is the main
  head's prediction widened by their ``ceil((n + 1) c)``-th smallest (Barber et al.'s
  "CV" method), as in ``"split"``. No formal guarantee: the main head trains on more
  texts than any fold head, so its errors are usually no larger than those that
  calibrate it, but a main head that early stopping stops much sooner than the fold
  heads can err more and be covered less. The fold heads are dropped after ``fit``, so
  predictions cost nothing more and the pickle does not grow. On VADER it covered
  88.8-91.9% at 90% on all 12 test splits.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._console import user_stacklevel

QUANTILES = (0.05, 0.95)  # what the "cqr" head's extra outputs are trained to predict
METHODS = ("split", "cqr", "cv", "cv+")
# Scores that are absolute errors of the point head: one margin around every prediction.
ABSOLUTE = ("split", "cv")
# Below this many hold-out texts, predict_interval warns of the hold-out's double duty (it
# chose the epoch, then calibrates): 90% "split" intervals covered 86.5 +- 0.8% of new
# tweets with 20 texts held out (100 fits) and 87.9 +- 0.7% with 50 (58 fits), where the
# same heads calibrated on as many fresh tweets covered 90.9 and 89.0
# (benchmarks/intervals_small_n.py); on the full VADER corpora (300 to 850 held out) 88.3
# to 89.9 (benchmarks/intervals.py). 100 is a judgment between those, not a measurement.
FEW_CALIBRATION_TEXTS = 100


class PointAndQuantileLoss(nn.Module):
    """Point loss on output 0 of each target, pinball loss on outputs 1 and 2.

    ``y_pred`` is ``(B, 3 k)`` laid out as (point, low, high) per target, ``y`` is
    ``(B, k)``; returns the per-element loss ``(B, k)`` (the net weights and averages).
    """

    def __init__(self, point_loss: nn.Module) -> None:
        super().__init__()
        self.point_loss = point_loss

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows, n_targets = y.shape
        point, low, high = y_pred.reshape(rows, n_targets, 3).unbind(dim=-1)
        loss = self.point_loss(point, y)
        for quantile, guess in zip(QUANTILES, (low, high), strict=True):
            error = y - guess
            loss = loss + torch.maximum(quantile * error, (quantile - 1) * error)
        return loss


def outputs_per_target(method: str) -> int:
    return 3 if method == "cqr" else 1


def split_outputs(raw: np.ndarray, n_targets: int, method: str) -> tuple[np.ndarray, ...]:
    """(point,) or (point, low, high), each ``(n, k)``, from the head's raw outputs."""
    per_target = outputs_per_target(method)
    raw = np.asarray(raw, dtype=np.float64).reshape(len(raw), n_targets, per_target)
    return tuple(raw[:, :, j] for j in range(per_target))


def conformity_scores(method: str, outputs: tuple[np.ndarray, ...], y: np.ndarray) -> np.ndarray:
    """Sorted scores ``(n_calibration, k)`` on the original scale of ``y``."""
    y = y.reshape(len(y), -1)
    if method in ABSOLUTE:
        scores = np.abs(y - outputs[0])
    else:
        low, high = _ordered(*outputs[1:])
        scores = np.maximum(low - y, y - high)
    return np.sort(scores, axis=0)


def _ordered(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two trained quantiles in order: they can cross on a text, most often early in
    training. Calibration and prediction must score the same ordered pair, or a crossed
    calibration text inflates the margin added to intervals that are already ordered."""
    return np.minimum(low, high), np.maximum(low, high)


def conformal_rank(n: int, coverage: float) -> int:
    """``ceil((n + 1) coverage)``, immune to the rounding of the product: 75 * 0.68 is
    51.00000000000001 in floating point, and a plain ceil would take the 52nd score."""
    return math.ceil((n + 1) * coverage * (1 - 1e-12))


def check_coverage(coverage: float) -> float:
    if isinstance(coverage, np.ndarray) and coverage.ndim == 0:  # np.float64(x)'s array form
        coverage = coverage[()]
    numbers = int | float | np.integer | np.floating
    if isinstance(coverage, bool) or not isinstance(coverage, numbers):
        raise TypeError(f"coverage must be a number in (0, 1); got {coverage!r}.")
    if not 0.0 < float(coverage) < 1.0:
        raise ValueError(f"coverage must be strictly between 0 and 1; got {coverage!r}.")
    return float(coverage)


def score_quantile(scores: np.ndarray, coverage: float) -> np.ndarray:
    """The ``ceil((n + 1) coverage)``-th smallest score per column; inf if n is too small.

    With ``n`` calibration texts, coverages above ``n / (n + 1)`` cannot be certified:
    the bound is then infinite rather than a quietly too-narrow interval.
    """
    n = scores.shape[0]
    rank = conformal_rank(n, coverage)
    if rank > n:
        return np.full(scores.shape[1], np.inf)
    return scores[rank - 1]


def intervals(method: str, outputs: tuple[np.ndarray, ...], scores: np.ndarray,
              coverage: float) -> np.ndarray:
    """Lower and upper bounds ``(n, k, 2)``."""
    margin = score_quantile(scores, coverage)
    if method in ABSOLUTE:
        low = high = outputs[0]
    else:
        low, high = _ordered(*outputs[1:])
    return _uncrossed(low - margin, high + margin)


def _uncrossed(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``(..., 2)`` bounds, where an interval narrowed past its middle is that middle.

    A negative CQR margin, or CV+ at a coverage below one half, can put the lower bound
    above the upper one: such an interval shrinks to a point rather than inverting.
    """
    crossed = lower > upper
    with np.errstate(invalid="ignore"):  # inf - inf where the bounds are infinite
        middle = np.where(crossed, (lower + upper) / 2, 0.0)
    return np.stack([np.where(crossed, middle, lower), np.where(crossed, middle, upper)],
                    axis=-1)


def calibrate(method: str, predict_raw, held_out: list[int], target: np.ndarray,
              y_mean: np.ndarray, y_scale: np.ndarray) -> np.ndarray | None:
    """Sorted conformity scores on the hold-out texts ``held_out`` (None if there are none).

    ``predict_raw(indices)`` returns the head's raw (standardised) outputs for those texts.
    """
    if not held_out:
        return None
    n_targets = 1 if target.ndim == 1 else target.shape[1]
    outputs = split_outputs(predict_raw(held_out), n_targets, method)
    return conformity_scores(method, unscale(outputs, y_mean, y_scale), target[held_out])


def cv_plus_intervals(fold_points: np.ndarray, scores: np.ndarray, folds: np.ndarray,
                      coverage: float) -> np.ndarray:
    """CV+ bounds ``(m, k, 2)`` for ``m`` new texts.

    ``fold_points`` ``(K, m, k)`` are the K fold heads' predictions, ``scores`` ``(n, k)``
    the out-of-fold absolute errors of the n calibration texts and ``folds`` ``(n,)`` the
    fold each of them was left out of. The upper bound is the ``ceil((n + 1) c)``-th
    smallest of ``fold_points[folds[i]] + scores[i]`` over i; the lower bound mirrors it.
    """
    n_folds, n_new, n_targets = fold_points.shape
    rank = conformal_rank(len(scores), coverage)
    bounds = np.empty((n_new, n_targets, 2))
    if rank > len(scores):  # not certifiable with n texts: infinite, as for split
        bounds[..., 0], bounds[..., 1] = -np.inf, np.inf
        return bounds
    for target in range(n_targets):
        per_fold = [np.sort(scores[folds == f, target]) for f in range(n_folds)]
        points = fold_points[:, :, target]
        bounds[:, target] = _uncrossed(-_rank_in_union(per_fold, -points, rank),
                                       _rank_in_union(per_fold, points, rank))
    return bounds


def _rank_in_union(sorted_scores: list[np.ndarray], shifts: np.ndarray, rank: int) -> np.ndarray:
    """Per column of ``shifts`` ``(K, m)``: the ``rank``-th smallest of the union over folds
    f of ``shifts[f] + sorted_scores[f]`` (each sum rounded as float64 rounds it).

    Bisection on the value, counting exactly (:func:`_count_at_most`): O(m K log n) per
    step, so a million training texts never meet a million new ones in one (m, n) matrix.
    It runs until ``low`` and ``high`` are neighbouring floats: no value lies between them,
    so ``high``, where the count first reaches ``rank``, is that candidate itself.
    """
    folds = [f for f, scores in enumerate(sorted_scores) if len(scores)]

    def count_at_most(value: np.ndarray) -> np.ndarray:
        return sum(_count_at_most(sorted_scores[f], shifts[f], value) for f in folds)

    smallest = np.min([shifts[f] + sorted_scores[f][0] for f in folds], axis=0)
    low = np.nextafter(smallest, -np.inf)  # no candidate at or below: count 0 < rank
    high = np.max([shifts[f] + sorted_scores[f][-1] for f in folds], axis=0)  # all of them
    for _ in range(4200):  # bisection by value ends within ~2,100 steps for any float64s
        with np.errstate(over="ignore"):
            middle = (low + high) / 2
        middle = np.where(np.isfinite(middle), middle, low / 2 + high / 2)
        between = (low < middle) & (middle < high)
        if not between.any():
            break
        enough = count_at_most(middle) >= rank
        high = np.where(between & enough, middle, high)
        low = np.where(between & ~enough, middle, low)
    return high


def _count_at_most(scores: np.ndarray, shift: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per column, how many ``shift + s`` (float64 sums) over sorted ``scores`` are <= value.

    A binary search on the sums themselves: ``searchsorted(scores, value - shift)`` rounds
    where ``|shift|`` dwarfs the scores (targets of 1e15 and more), and counted the largest
    candidate out, which made CV+ intervals too narrow.
    """
    low = np.zeros(value.shape, dtype=np.intp)
    high = np.full(value.shape, len(scores), dtype=np.intp)
    while np.any(low < high):
        middle = (low + high) // 2
        within = shift + scores[np.minimum(middle, len(scores) - 1)] <= value
        active = low < high
        low = np.where(active & within, middle + 1, low)
        high = np.where(active & ~within, middle, high)
    return low


def unscale(outputs: tuple[np.ndarray, ...], y_mean, y_scale) -> tuple[np.ndarray, ...]:
    """Standardised head outputs back on the scale of y (a constant target: its value)."""
    scale, shift = np.reshape(y_scale, (1, -1)), np.reshape(y_mean, (1, -1))
    return tuple(output * scale + shift for output in outputs)


class IntervalMixin:
    """``predict_interval`` for an estimator that keeps ``calibration_scores_`` (and, for
    CV+, ``interval_nets_`` and ``calibration_folds_``)."""

    def _interval_method(self) -> str:
        # What the model was fitted with; a model pickled before interval_method_ existed
        # could only have been fitted with its own ``intervals``.
        return getattr(self, "interval_method_", self.intervals)

    def predict_interval(self, X: Any, coverage: float = 0.9) -> np.ndarray:
        """Prediction intervals meant to cover the true value with probability ``coverage``.

        Conformal prediction calibrated in ``fit``: on the early-stopping hold-out
        (``intervals="split"`` or ``"cqr"``) or on out-of-fold errors over folds of the
        training texts (``"cv"``, ``"cv+"``). Coverage assumes that new texts are
        exchangeable with the training texts; the hold-out also chose the epoch, so
        ``"split"`` and ``"cqr"`` cover less than asked when it is small (tens of texts):
        fit with ``intervals="cv"`` for intervals you report.

        Parameters
        ----------
        X : list of str, list of (str, str), array-like or DataFrame
            Same kind of input as in ``fit``.
        coverage : float, default=0.9
            Probability, strictly between 0 and 1. With ``n`` calibration texts, a
            coverage above ``n / (n + 1)`` cannot be certified: its bounds are infinite.
            Any coverage can be asked of a model, whichever it was fitted for.

        Returns
        -------
        bounds : ndarray of shape (n, 2), or (n, n_targets, 2) for several targets
            Lower and upper bounds.
        """
        check_is_fitted(self, "net_")
        coverage = check_coverage(coverage)
        if self.calibration_scores_ is None:
            raise ValueError(
                "This model kept no calibration hold-out, so it has no intervals: fit it "
                "with early_stopping=True (the default) and a validation_fraction that "
                "holds out at least 2 texts (of positive sample_weight: texts of weight 0 "
                "are never held out), or with intervals='cv' (no hold-out needed); see the "
                "README's 'Prediction intervals'."
            )
        method = self._interval_method()
        n_scores = len(self.calibration_scores_)
        chunks = []
        for offset, states, featurizer in self._token_state_chunks(X):
            if method == "cv+":
                points = np.stack([self._head_outputs(net, states, featurizer, offset)[0]
                                   for net in self.interval_nets_])
                chunks.append(cv_plus_intervals(points, self.calibration_scores_,
                                                self.calibration_folds_, coverage))
            else:
                outputs = self._head_outputs(self.net_, states, featurizer, offset)
                chunks.append(intervals(method, outputs, self.calibration_scores_, coverage))
        if not chunks:
            return np.zeros((0, *np.shape(self.y_mean_), 2))
        # After the input is checked and found not empty: intervals to warn about.
        if method in ("split", "cqr") and n_scores < FEW_CALIBRATION_TEXTS:
            warnings.warn(
                f"These intervals are calibrated on {n_scores} held-out texts, which also "
                f"chose the epoch; with fewer than {FEW_CALIBRATION_TEXTS}, "
                f"intervals='{method}' covers less than asked (90% 'split' intervals "
                "covered 86.5% of new texts with 20 held out, 87.9% with 50; README, "
                "'Prediction intervals'). For intervals you report, refit with "
                "intervals='cv', which calibrates on every training text.",
                UserWarning, stacklevel=user_stacklevel())
        bounds = np.concatenate(chunks)
        if not np.isfinite(bounds).all():
            # Honest, not an error; but a silent column of inf surprised users of the
            # Python API (the command line already said why).
            warnings.warn(
                f"The bounds are infinite for {int((~np.isfinite(bounds)).any(axis=-1).sum())} "
                f"interval(s): {n_scores} calibration texts certify a coverage of at most "
                f"{n_scores / (n_scores + 1):.3f}, below coverage={coverage}. Lower coverage, "
                "or refit on more texts" + (
                    "." if method in ("cv", "cv+") else  # these calibrate on every text
                    " (or with intervals='cv', which calibrates on every training text)."),
                UserWarning, stacklevel=user_stacklevel())
        return bounds[:, 0, :] if np.ndim(self.y_mean_) == 0 else bounds
