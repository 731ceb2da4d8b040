"""Which errors calibrate the intervals: the early-stopping hold-out's or the folds'.

The maths of the intervals is in ``_intervals.py``; this produces the conformity scores
they read. ``"split"`` and ``"cqr"`` score the main head on its hold-out; ``"cv"`` and
``"cv+"`` train K fold heads on the token states the estimator already has (K more head
trainings, no LLM pass) and score each on the fold it never saw.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ._console import user_stacklevel
from ._intervals import calibrate
from ._net import (
    RelishNet,
    TokenStateDataset,
    drop_training_state,
    predict_states,
    train_head,
)
from ._splits import (
    describe_count,
    fold_ids,
    holdout_candidates,
    holdout_size,
    holdout_takes_all,
    one_per_input,
    release_split,
    renumbered,
)


def check_folds(groups: np.ndarray, params: Any, weights: np.ndarray, seed: int) -> None:
    """Refuse, before any LLM runs, folds whose heads could not train; warn once when
    they would train without early stopping.

    Each fold head needs at least 2 texts to train on and each fold 1 text to score;
    copies of a text share a fold, so it is distinct texts that count. With early
    stopping, each fold head's own hold-out (drawn among its texts of positive weight)
    must leave it texts to train on. Refused later, the error came after the main head's
    training and counted one fold's texts; and a fold head with too few weighted texts
    for a hold-out trained without early stopping under a warning that never said it was
    a fold head. The folds are the ones :func:`fit_fold_heads` draws (same ``seed``).
    """
    method, n_folds = params.intervals, params.interval_folds
    n_distinct = len(np.unique(groups))
    if n_distinct < 2 * n_folds:
        raise ValueError(
            f"intervals={method!r} with interval_folds={n_folds} needs at least {2 * n_folds} "
            f"texts (2 per fold); got {describe_count(len(groups), n_distinct)}. Lower "
            "interval_folds or use intervals='split'."
        )
    folds = fold_ids(groups, n_folds, seed)
    trained_on = []  # (distinct texts, of them weighted) each fold head trains on
    for fold in range(n_folds):
        train = folds != fold
        ids = renumbered(groups[train])
        trained_on.append((int(ids.max()) + 1, len(holdout_candidates(ids, weights[train]))))
        if trained_on[-1][1] == 0:
            raise ValueError(
                f"intervals={method!r} with interval_folds={n_folds}: fold {fold}'s head "
                "would train on texts of sample_weight 0 only; give more texts a positive "
                "weight or use intervals='split'."
            )
    if not params.early_stopping:
        return
    fraction = params.validation_fraction
    n_texts, n_weighted = min(trained_on, key=lambda counts: counts[1])
    if holdout_takes_all(n_weighted, fraction):
        raise ValueError(
            f"intervals={method!r} with interval_folds={n_folds}: a fold head trains on "
            f"{n_texts} distinct texts of {n_distinct}"
            f"{f' ({n_weighted} of positive sample_weight)' if n_weighted < n_texts else ''}"
            f", and validation_fraction={fraction} holds out every one of them for early "
            "stopping. Lower validation_fraction or interval_folds, or set "
            "early_stopping=False."
        )
    if holdout_size(n_weighted, fraction) < 2:
        warnings.warn(
            f"intervals={method!r} with interval_folds={n_folds}: a fold head trains on "
            f"{n_weighted} texts of positive weight, and validation_fraction={fraction} "
            "of them holds out fewer than 2 for early stopping: the fold heads that have "
            f"too few train for max_epochs={params.max_epochs} without it. Raise "
            "validation_fraction, lower interval_folds, or use intervals='split'.",
            UserWarning, stacklevel=user_stacklevel())


def fit_fold_heads(params: Any, input_dim: int, states: list[torch.Tensor],
                   scaled: np.ndarray, weights: np.ndarray, target: np.ndarray,
                   y_mean: Any, y_scale: Any, seed: int, device: torch.device,
                   n_outputs: int, featurizer: Any = None, groups: np.ndarray | None = None,
                   ) -> tuple[list[RelishNet], np.ndarray, np.ndarray]:
    """Train ``params.interval_folds`` heads, each without one fold.

    Returns the heads, the out-of-fold absolute errors ``(n_calibration, k)`` on the
    scale of ``y`` (sorted within each fold) and the fold of each of them. Texts of
    weight 0 train (with no influence) but do not calibrate, as in split conformal.
    """
    groups = np.arange(len(states)) if groups is None else groups
    folds = fold_ids(groups, params.interval_folds, seed)
    nets, scores, score_folds = [], [], []
    for fold in range(params.interval_folds):
        train = np.flatnonzero(folds != fold)
        left_out = one_per_input(np.flatnonzero((folds == fold) & (weights > 0)), groups,
                                 seed + fold)
        # A seed per fold: the heads differ as independent fits would.
        fold_seed = (seed + 1 + fold) % np.iinfo(np.int32).max
        net = train_head(params, input_dim, [states[i] for i in train], scaled[train],
                         weights[train], fold_seed, device, n_outputs, featurizer,
                         constant=not np.any(np.asarray(y_scale) > 0), groups=groups[train],
                         warn_without_holdout=False)  # check_folds warned once for all
        drop_training_state(net)
        release_split(net)
        nets.append(net)
        # The same absolute errors "split" takes on its hold-out, on the left-out fold.
        fold_scores = calibrate("cv", lambda rows, net=net: predict_states(
            net, [states[i] for i in rows]), left_out, target, y_mean, y_scale)
        if fold_scores is not None:
            scores.append(fold_scores)
            score_folds.append(np.full(len(fold_scores), fold))
    return nets, np.concatenate(scores), np.concatenate(score_folds)


def calibration_scores(params: Any, net: RelishNet, input_dim: int,
                       states: list[torch.Tensor], scaled: np.ndarray, weights: np.ndarray,
                       target: np.ndarray, y_mean: Any, y_scale: Any, seed: int,
                       device: torch.device, n_outputs: int, featurizer: Any = None,
                       groups: np.ndarray | None = None,
                       ) -> tuple[np.ndarray | None, list[RelishNet] | None, np.ndarray | None]:
    """The conformity scores of ``params.intervals`` for the trained main head ``net``.

    Returns ``(scores, fold_heads, folds)``; the fold heads and folds are kept for
    ``"cv+"`` only, whose intervals are read off them. Scores are None when there is
    nothing to calibrate on (no early-stopping hold-out with ``"split"`` or ``"cqr"``).
    """
    if params.intervals in ("cv", "cv+"):
        release_split(net)  # the main head's hold-out is not drawn again
        fold_nets, scores, folds = fit_fold_heads(
            params, input_dim, states, scaled, weights, target, y_mean, y_scale, seed,
            device, n_outputs, featurizer, groups)
        if params.intervals == "cv":  # the main head's margin: the fold heads can go
            return np.sort(scores, axis=0), None, None
        return scores, fold_nets, folds
    # Errors on the early-stopping hold-out (never trained on) calibrate the intervals;
    # a constant target is predicted exactly, so its scores are zeros.
    held_out = []
    if net.train_split is not None:
        _, valid = net.train_split(TokenStateDataset(states, scaled, weights))
        held_out = [int(i) for i in valid.indices if weights[i] > 0]
        if groups is not None:
            held_out = one_per_input(held_out, groups, seed)
        release_split(net)
    scores = calibrate(params.intervals, lambda rows: predict_states(
        net, [states[i] for i in rows]), held_out, target, y_mean, y_scale)
    return scores, None, None
