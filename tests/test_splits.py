"""The early-stopping hold-out and the interval folds never split the copies of a text.

Data with one row per rating repeats every text; split by row, the head was judged and
calibrated on copies of texts it had trained on (90% intervals covered 85 to 88% of new
tweets' ratings in benchmarks/repeated_texts.py). Without repeats the splits must stay
exactly the row-wise ones, so fits on distinct texts do not change.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, small_regressor
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.model_selection import KFold
from skorch.dataset import ValidSplit

from sklearn_relish import _calibration, cache_info
from sklearn_relish._splits import DistinctTextSplit, distinct_ids, fold_ids, one_per_input

SEEDS = st.integers(0, 2**31 - 2)


def _rows(n: int) -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(torch.arange(n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 400), fraction=st.floats(0.05, 0.6), seed=SEEDS)
def test_without_repeats_the_hold_out_is_skorchs_row_for_row(n, fraction, seed):
    assume(math.ceil(n * fraction) < n)
    expected = ValidSplit(fraction, random_state=seed)(_rows(n))
    for groups in (None, np.arange(n)):
        got = DistinctTextSplit(fraction, random_state=seed, groups=groups)(_rows(n))
        for part, reference in zip(got, expected, strict=True):
            assert list(part.indices) == list(reference.indices)  # same rows, same order


class _Weighted(torch.utils.data.TensorDataset):
    def __init__(self, weights: np.ndarray) -> None:
        super().__init__(torch.arange(len(weights)))
        self.weights = torch.as_tensor(weights, dtype=torch.float32)


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]), min_size=12, max_size=200),
       fraction=st.floats(0.05, 0.4), seed=SEEDS)
def test_the_hold_out_is_drawn_among_texts_of_positive_weight(weights, fraction, seed):
    weights = np.asarray(weights)
    positive = np.flatnonzero(weights > 0)
    assume(2 <= math.ceil(len(positive) * fraction) < len(positive))
    train, valid = DistinctTextSplit(fraction, random_state=seed)(_Weighted(weights))
    assert len(valid) == math.ceil(len(positive) * fraction)
    assert (weights[list(valid.indices)] > 0).all()
    assert sorted([*train.indices, *valid.indices]) == list(range(len(weights)))
    # Positive weights everywhere: the same draw as without weights, row for row.
    ones = DistinctTextSplit(fraction, random_state=seed)(_Weighted(np.ones(len(weights))))
    plain = DistinctTextSplit(fraction, random_state=seed)(_rows(len(weights)))
    for part, reference in zip(ones, plain, strict=True):
        assert list(part.indices) == list(reference.indices)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.sampled_from("abcdefghijkl"), min_size=4, max_size=80),
       fraction=st.floats(0.1, 0.5), seed=SEEDS)
def test_every_copy_of_a_text_falls_on_one_side(texts, fraction, seed):
    n_distinct = len(set(texts))
    assume(math.ceil(n_distinct * fraction) < n_distinct)
    train, valid = DistinctTextSplit(fraction, random_state=seed,
                                     groups=distinct_ids(texts))(_rows(len(texts)))
    assert sorted([*train.indices, *valid.indices]) == list(range(len(texts)))
    trained = {texts[i] for i in train.indices}
    held_out = {texts[i] for i in valid.indices}
    assert trained.isdisjoint(held_out)
    assert len(held_out) == math.ceil(n_distinct * fraction)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.sampled_from("abcdefghijkl"), min_size=6, max_size=80),
       n_folds=st.integers(2, 5), seed=SEEDS)
def test_copies_share_a_fold_and_distinct_texts_get_kfolds_folds(texts, n_folds, seed):
    assume(len(set(texts)) >= n_folds)
    folds = fold_ids(distinct_ids(texts), n_folds, seed)
    for text in set(texts):
        assert len({int(folds[i]) for i, t in enumerate(texts) if t == text}) == 1
    # Distinct texts: KFold's own folds, so fits without repeats are unchanged.
    n = len(texts)
    expected = np.empty(n, dtype=int)
    for fold, (_, left_out) in enumerate(
            KFold(n_folds, shuffle=True, random_state=seed).split(np.arange(n))):
        expected[left_out] = fold
    np.testing.assert_array_equal(fold_ids(n, n_folds, seed), expected)
    np.testing.assert_array_equal(fold_ids(np.arange(n), n_folds, seed), expected)


def test_a_pair_is_its_own_input_and_order_matters():
    ids = distinct_ids([("a", "b"), ("a", "b"), "a", ("b", "a"), ["a", "b"], "a"])
    np.testing.assert_array_equal(ids, [0, 0, 1, 2, 0, 1])


def test_a_fit_calibrates_only_on_texts_it_never_trained_on(tiny_llama, monkeypatch):
    # Three copies of each text, as with one row per rating.
    texts, targets = TEXTS * 3, TARGETS * 3
    seen = {}
    calibrate = _calibration.calibrate

    def spy(method, predict_raw, held_out, *args, **kwargs):
        seen["held_out"] = list(held_out)
        return calibrate(method, predict_raw, held_out, *args, **kwargs)

    monkeypatch.setattr(_calibration, "calibrate", spy)
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25)
    model.fit(texts, targets)
    assert model.net_.train_split.groups is None  # served the split; not pickled
    # The fit's split, drawn again from its seed with the row ids it had.
    split = model.net_.train_split
    split.groups = distinct_ids(texts)
    train, valid = split(_rows(len(texts)))
    trained = {texts[i] for i in train.indices}
    held_out = {texts[i] for i in valid.indices}
    assert len(held_out) == 4 and held_out.isdisjoint(trained)  # ceil(0.25 * 16) texts
    assert len(valid.indices) == 12  # with all their copies
    # Each held-out text calibrates once: its 3 copies are one text, not 3 exchangeable
    # ones (counted 3 times, 4 texts passed for 12 and the intervals came out too narrow).
    assert set(seen["held_out"]) <= set(valid.indices)
    assert {texts[i] for i in seen["held_out"]} == held_out
    assert model.calibration_scores_.shape == (4, 1)


def test_a_hold_out_of_every_distinct_text_is_refused_by_count(tiny_llama):
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.6)
    with pytest.raises(ValueError, match=r"of 2 distinct texts \(of 4\) holds out every one"):
        model.fit(["good", "bad", "good", "bad"], [1.0, -1.0, 1.5, -1.5])


def test_rows_that_all_repeat_one_text_fit_without_early_stopping(tiny_llama):
    # One distinct text cannot be split: early stopping is skipped with a warning, as
    # for any hold-out under 2 texts, rather than refused with advice that cannot help.
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.01)
    with pytest.warns(UserWarning, match="early_stopping needs at least 2 validation texts"):
        model.fit(["good movie"] * 10, [1.0, 2.0, 3.0] * 3 + [1.0])
    assert np.isfinite(model.predict(["good movie"])).all()


def test_folds_whose_heads_would_hold_out_everything_are_refused_before_the_llm(tiny_llama):
    # 4 distinct texts in 2 folds: each fold head trains on 2, and a fraction of 0.6
    # holds out both. Refused after the main head's training, the error counted one
    # fold's texts and never named the folds.
    texts = ["a b", "c d", "e f", "g h"] * 3
    before = cache_info()["llm_texts"]
    model = small_regressor(tiny_llama, intervals="cv", interval_folds=2,
                            early_stopping=True, validation_fraction=0.6)
    with pytest.raises(ValueError, match=r"interval_folds=2: a fold head trains on 2 distinct "
                                         r"texts of 4, and validation_fraction=0.6"):
        model.fit(texts, np.arange(12.0))
    assert cache_info()["llm_texts"] == before


def _fold_of_each_text(texts: list[str], n_folds: int, random_state: int) -> np.ndarray:
    """The folds fit draws for ``texts`` (its seed is drawn from ``random_state`` so)."""
    seed = int(np.random.RandomState(random_state).randint(np.iinfo(np.int32).max))
    return fold_ids(distinct_ids(texts), n_folds, seed)


def test_a_fold_head_with_only_weight_0_texts_is_refused_before_the_llm(tiny_llama):
    # Every weighted text in fold 0: the head that leaves fold 0 out trains on weight-0
    # texts only. This was refused after the LLM had run and the main head had trained.
    texts = [f"text {i}" for i in range(12)]
    weights = (_fold_of_each_text(texts, 2, random_state=0) == 0).astype(float)
    before = cache_info()["llm_texts"]
    model = small_regressor(tiny_llama, intervals="cv", interval_folds=2)
    with pytest.raises(ValueError, match=r"fold 0's head would train on texts of "
                                         r"sample_weight 0 only"):
        model.fit(texts, np.arange(12.0), sample_weight=weights)
    assert cache_info()["llm_texts"] == before


def test_fold_heads_count_only_weighted_texts_for_their_hold_out(tiny_llama):
    # 40 texts, 6 weighted, 2 folds: the main head holds out 5 of its 6 weighted texts
    # (0.7), but a fold head trains on 20 texts of which 3 weigh anything; its hold-out
    # is drawn among those 3 and takes them all. Counting all 20 let this through to a
    # refusal after the main head had trained.
    texts = [f"text {i}" for i in range(40)]
    folds = _fold_of_each_text(texts, 2, random_state=0)
    weights = np.zeros(40)
    weights[np.flatnonzero(folds == 0)[:3]] = weights[np.flatnonzero(folds == 1)[:3]] = 1.0
    before = cache_info()["llm_texts"]
    model = small_regressor(tiny_llama, intervals="cv", interval_folds=2,
                            early_stopping=True, validation_fraction=0.7)
    with pytest.raises(ValueError, match=r"a fold head trains on 20 distinct texts of 40 "
                                         r"\(3 of positive sample_weight\), and "
                                         r"validation_fraction=0.7 holds out every one"):
        model.fit(texts, np.arange(40.0), sample_weight=weights)
    assert cache_info()["llm_texts"] == before


def test_fold_heads_without_a_hold_out_warn_once_and_say_they_are_fold_heads(tiny_llama):
    # 12 of 48 texts weighted: the main head holds out 2 of them (0.1) and stops early;
    # a fold head of 3 folds has about 8, a hold-out of 1, and trains without early
    # stopping. The warning came once per fold, counting one fold's texts, and never
    # said it was about the fold heads.
    texts = [f"text {i}" for i in range(48)]
    weights = np.zeros(48)
    weights[:12] = 1.0
    folds = _fold_of_each_text(texts, 3, random_state=0)
    assert all(weights[folds != fold].sum() <= 10 for fold in range(3))
    model = small_regressor(tiny_llama, intervals="cv+", interval_folds=3,
                            early_stopping=True, validation_fraction=0.1)
    with pytest.warns(UserWarning) as caught:
        model.fit(texts, np.arange(48.0), sample_weight=weights)
    messages = [str(w.message) for w in caught if "early" in str(w.message)]
    assert len(messages) == 1, messages
    assert messages[0].startswith("intervals='cv+' with interval_folds=3: a fold head "
                                  "trains on")
    assert "early_stopping" in dict(model.net_.callbacks)
    assert all("early_stopping" not in dict(net.callbacks or [])
               for net in model.interval_nets_)
    assert model.calibration_scores_.shape[0] == 12  # each weighted text calibrates once


@pytest.mark.parametrize("intervals", ["split", "cv", "cv+", "cqr"])
def test_no_row_ids_outlive_the_fit(tiny_llama, intervals):
    # The ids served the splits only; "cv" and "cv+" kept the main head's in the pickle
    # (8 bytes a row).
    model = small_regressor(tiny_llama, intervals=intervals, interval_folds=2,
                            early_stopping=True, validation_fraction=0.25)
    model.fit(TEXTS * 2, TARGETS * 2)
    for net in [model.net_, *(model.interval_nets_ or [])]:
        assert getattr(net.train_split, "groups", None) is None


def test_the_copy_that_calibrates_is_drawn_not_the_first():
    # Rows sorted by rating within each text (a groupby's order) made every calibration
    # target its text's lowest rating.
    ids = np.repeat(np.arange(200), 5)
    rows = np.arange(1000)
    picked = one_per_input(rows, ids, seed=0)
    assert sorted(ids[picked]) == list(range(200))  # each text once, in its own rows
    positions = np.asarray(picked) % 5
    assert np.bincount(positions, minlength=5).min() >= 20  # about 40 each, not all 0
    assert one_per_input(rows, ids, seed=0) == picked  # seeded
    assert one_per_input(rows, ids, seed=1) != picked
    # Without repeats every row is kept, in order, and no draw is made.
    assert one_per_input([7, 3, 5], np.arange(8), seed=0) == [7, 3, 5]
