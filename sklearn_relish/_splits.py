"""The early-stopping hold-out and the interval folds, drawn over distinct inputs.

Data with one row per rating repeats each text. Split by row, copies of a training text
land in the hold-out: the head has seen them, so the hold-out's errors are small, early
stopping judges on a leak, and intervals calibrated on those errors are too narrow for
new texts (90% intervals covered 85 to 88% of new tweets' ratings where 400 tweets came
once per rating, 5 times each: ``benchmarks/repeated_texts.py``). Here every copy of an
input falls on the same side, and one copy, drawn at random, calibrates. Without repeats
the splits are exactly the row-wise ones scikit-learn's ``ShuffleSplit`` (as skorch's
``ValidSplit`` draws it) and ``KFold`` draw, so fits do not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch.utils.data
from sklearn.model_selection import KFold, ShuffleSplit
from skorch.dataset import ValidSplit

__all__ = ["DistinctTextSplit", "check_holdout", "describe_count", "distinct_ids", "fold_ids",
           "holdout_candidates", "holdout_size", "holdout_takes_all", "one_per_input",
           "release_split", "rows_of"]


def distinct_ids(texts: Sequence) -> np.ndarray:
    """The id of each row's input (a text or a pair), numbered in order of first appearance."""
    first: dict = {}
    return np.fromiter(
        (first.setdefault(tuple(t) if isinstance(t, list) else t, len(first)) for t in texts),
        dtype=np.int64, count=len(texts))


def renumbered(ids: np.ndarray) -> np.ndarray:
    """``ids`` of a subset of rows, renumbered 0..k-1 (their order of first appearance
    is kept: ids were numbered so, and a subset keeps the rows' order)."""
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def rows_of(ids: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The rows whose id is in ``chosen``: by the ids' order in ``chosen``, then by row.
    With one row per id this is ``chosen`` itself, so a shuffled split keeps its order."""
    rank = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
    rank[chosen] = np.arange(len(chosen))
    rows = np.flatnonzero(rank[ids] >= 0)
    return rows[np.argsort(rank[ids[rows]], kind="stable")]


def one_per_input(rows: Sequence[int], ids: np.ndarray, seed: int) -> list[int]:
    """One of ``rows`` for each input, drawn at random among its copies (``seed``), in
    order of first appearance: copies of a text would count its error once per copy, as
    if each were another text, and make intervals too narrow (a calibration set of 6
    texts rated 5 times each is 6 texts, not 30). Not the first copy: rows sorted by
    rating within each text made every calibration target its text's lowest rating."""
    copies: dict[int, list[int]] = {}
    for row in rows:
        copies.setdefault(int(ids[row]), []).append(int(row))
    rng = np.random.default_rng(seed)
    # The stream is drawn only for repeated inputs: without repeats nothing changes.
    return [found[0] if len(found) == 1 else found[int(rng.integers(len(found)))]
            for found in copies.values()]


def describe_count(n_rows: int, n_distinct: int, n_weighted: int | None = None) -> str:
    """"N texts", or "K distinct texts (of N)" when some repeat: what a split divides; and
    how many of them weigh more than 0 where not all do (only those are held out)."""
    counted = (f"{n_rows} texts" if n_distinct == n_rows
               else f"{n_distinct} distinct texts (of {n_rows})")
    if n_weighted is None or n_weighted == n_distinct:
        return counted
    return (f"{n_weighted} {'text' if n_weighted == 1 else 'texts'} of positive "
            f"sample_weight, among {counted}")


def holdout_candidates(ids: np.ndarray, weights: Any = None) -> np.ndarray:
    """The inputs (ids) early stopping may hold out: those whose copies weigh more than 0.

    A held-out text of weight 0 measures nothing. Drawn among all texts, a hold-out of
    mostly weight-0 texts had no weight at all for some seeds (a refusal) and one weighted
    text for others, so a grid search failed or not by luck.
    """
    n_distinct = int(ids.max()) + 1 if len(ids) else 0
    if weights is None:
        return np.arange(n_distinct)
    # In float32, as training holds them: a weight that float32 makes 0 is 0 everywhere.
    weights = torch.as_tensor(weights).detach().cpu().float().double().numpy()
    return np.flatnonzero(np.bincount(ids, weights=weights, minlength=n_distinct) > 0)


def holdout_size(n_distinct: int, fraction: float) -> int:
    """Distinct inputs held out: ``ShuffleSplit`` rounds the fraction up."""
    return math.ceil(n_distinct * fraction)


def holdout_takes_all(n_distinct: int, fraction: float) -> bool:
    """Whether early stopping's hold-out would leave no input to train on. A hold-out of
    fewer than 2 inputs is not this: early stopping is then skipped with a warning (so
    rows that all repeat one text still fit)."""
    held_out = holdout_size(n_distinct, fraction)
    return held_out >= 2 and held_out >= n_distinct


def check_holdout(fraction: float, n_rows: int, n_distinct: int,
                  n_weighted: int | None = None) -> None:
    """Refuse an early-stopping hold-out that would leave no input to train on (of those
    that weigh more than 0: ``n_weighted`` where some do not)."""
    if holdout_takes_all(n_distinct if n_weighted is None else n_weighted, fraction):
        raise ValueError(
            f"validation_fraction={fraction} of "
            f"{describe_count(n_rows, n_distinct, n_weighted)} holds out every one of "
            "them for early stopping, leaving none to train on; lower it or set "
            "early_stopping=False.")


def fold_ids(ids: np.ndarray | int, n_folds: int, seed: int) -> np.ndarray:
    """The fold (0..K-1) each row is left out of: shuffled K-fold over distinct inputs
    (an int ``n``: n rows, all distinct), fold sizes within one input of each other."""
    ids = np.arange(ids) if isinstance(ids, int | np.integer) else renumbered(np.asarray(ids))
    n_distinct = int(ids.max()) + 1 if len(ids) else 0
    by_input = np.empty(n_distinct, dtype=np.int64)
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, left_out) in enumerate(splitter.split(np.arange(n_distinct))):
        by_input[left_out] = fold
    return by_input[ids]


class DistinctTextSplit(ValidSplit):
    """skorch's ``ValidSplit`` for a float ``cv``, drawn over distinct inputs.

    ``groups`` gives each row's input id (:func:`distinct_ids`); None means every row is
    distinct. The hold-out is ``ceil(cv * n_distinct)`` inputs with all their copies.
    ``groups`` is dropped after fit (:meth:`release`): it served the split only and
    would grow the pickle by 8 bytes a text.
    """

    def __init__(self, cv: float, random_state: int | None = None,
                 groups: np.ndarray | None = None) -> None:
        super().__init__(cv, random_state=random_state)
        self.groups = groups

    def __call__(self, dataset, y=None, groups=None):
        n_rows = len(dataset)
        ids = np.arange(n_rows) if self.groups is None else renumbered(self.groups)
        if len(ids) != n_rows:
            raise ValueError(f"The split knows {len(ids)} texts but was given {n_rows}.")
        n_distinct = int(ids.max()) + 1 if n_rows else 0
        candidates = holdout_candidates(ids, getattr(dataset, "weights", None))
        # The splitter ValidSplit builds for a float cv, over inputs instead of rows, and
        # over those of positive weight: the others always train (with no influence).
        splitter = ShuffleSplit(test_size=self.cv, random_state=self.random_state)
        train, valid = next(splitter.split(candidates))
        train = np.concatenate([candidates[train],
                                np.setdiff1d(np.arange(n_distinct), candidates)])
        return (torch.utils.data.Subset(dataset, rows_of(ids, train)),
                torch.utils.data.Subset(dataset, rows_of(ids, candidates[valid])))

    def release(self) -> None:
        self.groups = None


def release_split(net) -> None:
    """Drop a trained net's row ids (its split is not drawn again after fit)."""
    if isinstance(getattr(net, "train_split", None), DistinctTextSplit):
        net.train_split.release()
