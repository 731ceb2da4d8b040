"""Several targets at once, and per-text sample weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import TARGETS, TEXTS, small_regressor
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_relish import _net
from sklearn_relish._targets import check_sample_weight, check_target

Y = np.asarray(TARGETS)
TWO = np.column_stack([Y, -100 * Y + 7])  # a second target on another scale


# -- several targets -----------------------------------------------------------------------
def test_two_targets_give_two_columns_each_on_its_scale(tiny_llama):
    model = small_regressor(tiny_llama, max_epochs=30, latent_dim=32, n_heads=4)
    pred = model.fit(TEXTS, TWO).predict(TEXTS)
    assert pred.shape == (len(TEXTS), 2) and pred.dtype == np.float64
    assert model.y_mean_.shape == model.y_scale_.shape == (2,)
    np.testing.assert_allclose(model.y_scale_, TWO.std(axis=0), rtol=1e-9)
    for column in range(2):
        assert np.corrcoef(pred[:, column], TWO[:, column])[0, 1] > 0.6
    assert model.predict([]).shape == (0, 2)


def test_one_target_stays_one_dimensional(tiny_llama):
    model = small_regressor(tiny_llama).fit(TEXTS, Y)
    assert model.predict(TEXTS[:3]).shape == (3,)
    assert isinstance(model.y_mean_, float)


def test_a_constant_column_is_predicted_exactly(tiny_llama):
    y = np.column_stack([Y, np.full(len(Y), 4.25)])
    pred = small_regressor(tiny_llama).fit(TEXTS, y).predict(["anything", ""])
    np.testing.assert_array_equal(pred[:, 1], [4.25, 4.25])


def test_an_int_beyond_float64_is_named():
    with pytest.raises(ValueError, match=r"y\[1\] \(1000.*\) is too large"):
        check_target([1, 10**400], 2)


def test_a_sparse_target_is_refused_by_name():
    import scipy.sparse

    with pytest.raises(TypeError, match=r"y must be dense; got a sparse matrix of shape \(2, 1\)"):
        check_target(scipy.sparse.csr_matrix([[1.0], [2.0]]), 2)


def test_bad_entry_in_a_two_column_target_is_named():
    y = TWO.astype(object)
    y[5, 1] = "n/a"
    with pytest.raises(ValueError, match=r"y\[5, 1\] is a str"):
        check_target(y, len(TEXTS))
    y = TWO.copy()
    y[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"first at y\[3, 0\]"):
        check_target(y, len(TEXTS))


def test_grid_search_scores_several_targets(tiny_llama):
    search = GridSearchCV(small_regressor(tiny_llama), {"n_iterations": [1, 2]}, cv=KFold(2))
    search.fit(TEXTS, TWO)
    assert search.predict(TEXTS[:2]).shape == (2, 2)


# -- sample weights ------------------------------------------------------------------------
@pytest.mark.parametrize("unweighted_value", [None, 1e300])
def test_zero_weight_texts_do_not_count(tiny_llama, unweighted_value):
    # Texts of weight 0 have no influence at all (standardisation included): changing
    # their targets changes no prediction, while the same change at weight 1 does. A huge
    # sentinel at weight 0 made every other deviation round to 0: "constant" y, one value.
    weights = np.r_[np.ones(10), np.zeros(6)]
    changed = Y.copy()
    changed[10:] = changed[10:] * -5 if unweighted_value is None else unweighted_value
    a = small_regressor(tiny_llama).fit(TEXTS, Y, sample_weight=weights)
    b = small_regressor(tiny_llama).fit(TEXTS, changed, sample_weight=weights)
    # Finite first: assert_allclose takes NaN for equal to NaN, and the sentinel once
    # overflowed float32 in the loss (inf * 0 = NaN), so both fits predicted NaN.
    assert np.isfinite(b.predict(TEXTS)).all()
    assert np.isfinite(b.loss_curve_).all()
    assert np.isfinite(b.validation_loss_curve_ or [0.0]).all()
    np.testing.assert_allclose(a.predict(TEXTS), b.predict(TEXTS), rtol=1e-6, atol=1e-6)
    c = small_regressor(tiny_llama).fit(TEXTS, changed)
    assert not np.allclose(a.predict(TEXTS), c.predict(TEXTS), atol=1e-3)
    assert a.y_mean_ == pytest.approx(Y[:10].mean())


def test_a_constant_weighted_target_is_predicted_exactly(tiny_llama):
    # The weighted mean of sixteen 1/3s is not 1/3 to the last bit: the spread came out
    # 6e-17, not 0, and a head was trained on rounding noise.
    y = np.full(len(TEXTS), 1 / 3)
    weights = np.random.RandomState(3).uniform(0.1, 3, len(TEXTS))
    model = small_regressor(tiny_llama).fit(TEXTS, y, sample_weight=weights)
    assert model.y_scale_ == 0.0
    np.testing.assert_array_equal(model.predict(["anything", ""]), [1 / 3, 1 / 3])


def test_batches_of_zero_weight_texts_train_without_diverging(tiny_llama):
    # 13 of 16 texts weigh 0, so most batches of 2 hold no weight at all. Such a batch adds
    # nothing (it used to be 0/0: NaN gradients and a "training diverged" error), and the
    # fit equals one on the 3 weighted texts alone in its mean; the weighted texts' targets
    # still matter.
    weights = np.r_[np.zeros(13), np.ones(3)]
    model = small_regressor(tiny_llama, batch_size=2).fit(TEXTS, Y, sample_weight=weights)
    assert np.isfinite(model.predict(TEXTS)).all()
    assert model.y_mean_ == pytest.approx(Y[13:].mean())
    changed = Y.copy()
    changed[:13] *= -5
    same = small_regressor(tiny_llama, batch_size=2).fit(TEXTS, changed, sample_weight=weights)
    np.testing.assert_allclose(model.predict(TEXTS), same.predict(TEXTS), rtol=1e-6, atol=1e-6)


def test_a_light_batch_counts_less_than_a_heavy_one(tiny_llama, monkeypatch):
    # The loss is the batch's weighted sum over its rows, not its weighted mean: a batch of
    # light texts must not pull as hard as a batch of heavy ones.
    losses = []
    original = _net.RelishNet.get_loss

    def spy(self, y_pred, y_true, X=None, training=False):
        loss = original(self, y_pred, y_true, X=X, training=training)
        if training:
            per_text = self.criterion_(y_pred.reshape(len(y_pred), -1),
                                       y_true[0].reshape(len(y_pred), -1)).mean(dim=1)
            losses.append((loss.item(), (per_text * y_true[1]).mean().item()))
        return loss

    monkeypatch.setattr(_net.RelishNet, "get_loss", spy)
    weights = np.geomspace(0.1, 10, 16)
    small_regressor(tiny_llama, max_epochs=1).fit(TEXTS, Y, sample_weight=weights)
    assert len(losses) == 2
    for loss, weighted_mean in losses:
        assert loss == pytest.approx(weighted_mean, rel=1e-5)


def test_the_hold_out_takes_only_texts_of_positive_weight(tiny_llama, monkeypatch):
    # A held-out text of weight 0 measures nothing. Drawn among all texts, the hold-out
    # had no weight at all for some seeds (a refusal) and not for others.
    held_out = []
    original = _net.RelishNet.get_split_datasets

    def spy(self, X, y=None, **fit_params):
        train, valid = original(self, X, y, **fit_params)
        if valid is not None:
            held_out.append(list(valid.indices))
        return train, valid

    monkeypatch.setattr(_net.RelishNet, "get_split_datasets", spy)
    params = dict(early_stopping=True, validation_fraction=0.25, max_epochs=2)
    small_regressor(tiny_llama, **params).fit(TEXTS, Y)  # the split, found out
    weights = np.ones(len(TEXTS))
    weights[held_out[0]] = 0.0
    small_regressor(tiny_llama, **params).fit(TEXTS, Y, sample_weight=weights)
    assert len(held_out[1]) == 3  # ceil(0.25 * 12 texts of positive weight)
    assert not set(held_out[1]) & set(held_out[0])
    # 4 texts of positive weight give a hold-out of 1: early stopping is skipped, as for
    # any data that small, instead of holding out texts that weigh nothing.
    with pytest.warns(UserWarning, match="of 4 texts of positive sample_weight, among 16 texts"):
        small_regressor(tiny_llama, **params).fit(TEXTS, Y, sample_weight=1.0 - weights)
    assert len(held_out) == 2


def test_weights_scale_the_loss_per_text(tiny_llama, monkeypatch):
    seen = []
    original = _net.RelishNet.get_loss

    def spy(self, y_pred, y_true, X=None, training=False):
        seen.append(y_true[1].detach().clone())
        return original(self, y_pred, y_true, X=X, training=training)

    monkeypatch.setattr(_net.RelishNet, "get_loss", spy)
    weights = np.arange(1, len(TEXTS) + 1, dtype=float)
    small_regressor(tiny_llama, max_epochs=1, batch_size=len(TEXTS)).fit(
        TEXTS, Y, sample_weight=weights)
    np.testing.assert_allclose(np.sort(seen[0].numpy()), np.sort(weights / weights.mean()),
                               rtol=1e-6)


def test_integer_weights_equal_repeated_texts(tiny_llama):
    # A text of weight 2 trains like the same text given twice: in the loss, the target's
    # mean and scale. One batch holds every row, so the order of rows plays no part.
    params = dict(max_epochs=3, batch_size=64)
    weights = np.ones(len(TEXTS))
    weights[0] = 2
    weighted = small_regressor(tiny_llama, **params).fit(TEXTS, Y, sample_weight=weights)
    repeated = small_regressor(tiny_llama, **params).fit(TEXTS + TEXTS[:1], np.r_[Y, Y[:1]])
    np.testing.assert_allclose(weighted.predict(TEXTS), repeated.predict(TEXTS), rtol=1e-5,
                               atol=1e-6)
    unweighted = small_regressor(tiny_llama, **params).fit(TEXTS, Y)
    assert not np.allclose(unweighted.predict(TEXTS), weighted.predict(TEXTS), atol=1e-4)


def test_uniform_weights_are_scale_free(tiny_llama):
    # Weight 2 on every text is the same as weight 1: only relative weights matter.
    params = dict(max_epochs=3)
    plain = small_regressor(tiny_llama, **params).fit(TEXTS, Y)
    doubled = small_regressor(tiny_llama, **params).fit(TEXTS, Y, sample_weight=2 * np.ones(16))
    np.testing.assert_allclose(plain.predict(TEXTS), doubled.predict(TEXTS), rtol=1e-5, atol=1e-6)


def test_early_stopping_hold_out_keeps_its_weights(tiny_llama, monkeypatch):
    seen = []
    original = _net.RelishNet.get_loss

    def spy(self, y_pred, y_true, X=None, training=False):
        if not training:
            seen.append(y_true[1].detach().clone())
        return original(self, y_pred, y_true, X=X, training=training)

    monkeypatch.setattr(_net.RelishNet, "get_loss", spy)
    texts, y = TEXTS * 2, np.r_[Y, Y]
    weights = np.arange(1, 33, dtype=float)
    small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25, max_epochs=1,
                    batch_size=64).fit(texts, y, sample_weight=weights)
    held_out = seen[0].numpy()
    assert len(held_out) == 8 and len(set(held_out.round(5))) == 8  # distinct: not all ones
    normalised = weights / weights.mean()
    assert all(np.min(np.abs(normalised - w)) < 1e-5 for w in held_out)


@pytest.mark.parametrize("weights, match", [
    (np.ones(15), "16 texts but sample_weight has 15"),
    (np.r_[np.ones(15), -1.0], r"sample_weight\[15\] is -1.0"),
    (np.r_[np.ones(15), np.nan], "finite and non-negative"),
    (np.zeros(16), "sums to 0"),
    (np.ones((16, 2)), "1-D array of numbers"),
    (np.array(["1"] * 16), "1-D array of numbers"),
])
def test_bad_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        check_sample_weight(weights, 16)


def test_weights_are_normalised_to_mean_one():
    np.testing.assert_allclose(check_sample_weight([2.0, 6.0], 2), [0.5, 1.5])
    np.testing.assert_array_equal(check_sample_weight(None, 3), [1.0, 1.0, 1.0])


def test_huge_and_tiny_finite_weights_keep_their_ratios():
    # Their sum overflowed to inf, and every weight became 0 (then a ZeroDivisionError).
    np.testing.assert_allclose(check_sample_weight([1e308] * 3, 3), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(check_sample_weight([1.5e308, 0.5e308], 2), [1.5, 0.5])
    np.testing.assert_allclose(check_sample_weight([3e-320, 1e-320], 2), [1.5, 0.5], rtol=1e-3)


def test_weights_of_the_user_are_not_changed_and_series_work(tiny_llama):
    import pandas as pd

    weights = pd.Series(np.linspace(1, 2, 16), index=range(100, 116))
    before = weights.copy()
    model = small_regressor(tiny_llama, max_epochs=1).fit(TEXTS, Y, sample_weight=weights)
    pd.testing.assert_series_equal(weights, before)
    assert model.predict(TEXTS[:2]).shape == (2,)


def test_a_bad_entry_of_a_relabelled_series_is_named_by_its_label_too():
    # y.iloc[0] is NaN, but for this Series y[0] is a valid 1.5 (label 0 is the last row):
    # "first at y[0]" pointed a pandas user at the wrong row.
    pd = pytest.importorskip("pandas")
    y = pd.Series([float("nan"), 2.0, 1.5], index=[2, 1, 0])
    with pytest.raises(ValueError, match=r"first at y\[0\] \(index label 2\) \(nan\)"):
        check_target(y, 3)
    weights = pd.Series([1.0, -1.0, 1.0], index=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"sample_weight\[1\] \(index label 'b'\) is -1.0"):
        check_sample_weight(weights, 3)
    # Plain positions stay as they were; numpy labels read as the user's index shows them.
    with pytest.raises(ValueError, match=r"first at y\[0\] \(nan\)"):
        check_target(np.array([float("nan"), 1.0]), 2)
    labelled = pd.Series([1.0, float("inf")], index=np.array([7, 9], dtype=np.int64))
    with pytest.raises(ValueError, match=r"y\[1\] \(index label 9\) \(inf\)"):
        check_target(labelled, 2)


def test_a_few_extreme_targets_that_set_the_scale_are_warned_of(tiny_llama):
    # One rating typed as 1000 multiplied the scale by 23 and silently ruined the fit.
    y = np.array(Y, dtype=float)
    y[5] = 1000.0
    with pytest.warns(UserWarning, match=r"y's standard deviation .* times .* such as 1000 "
                                         r".*TransformedTargetRegressor.*inverse_func"
                      ) as caught:
        small_regressor(tiny_llama, max_epochs=1).fit(TEXTS, y)
    assert caught[0].filename == __file__  # the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_regressor(tiny_llama, max_epochs=1).fit(TEXTS, Y)  # ordinary targets
        weights = np.ones(len(TEXTS))
        weights[5] = 0.0  # a sentinel of weight 0 sets nothing
        small_regressor(tiny_llama, max_epochs=1).fit(TEXTS, y, sample_weight=weights)
    with pytest.warns(UserWarning, match=r"y\[:, 1\]'s standard deviation"):
        small_regressor(tiny_llama, max_epochs=1).fit(TEXTS, np.c_[Y, y])


def test_the_scale_warning_is_not_set_off_by_ties():
    # Quartile-based, it fired on 51 exact zeros among 100 bounded values and not on 50
    # or 52: one tied row switched it on or off.
    from sklearn_relish._targets import target_scale, warn_if_few_values_set_the_scale

    rng = np.random.default_rng(0)
    for n_zeros in (50, 51, 52):
        y = np.r_[-rng.uniform(0.05, 0.95, 24), np.zeros(n_zeros),
                  rng.uniform(0.05, 0.95, 76 - n_zeros)]
        ones = np.ones(len(y))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warn_if_few_values_set_the_scale(y, ones, target_scale(y, ones))


def test_weights_of_object_dtype_are_read_as_numbers_like_y():
    # Decimals (a database column) or an object array were refused as "not numbers",
    # though the same values are accepted as y and by scikit-learn.
    from decimal import Decimal

    expected = check_sample_weight([1.5, 2.0, 1.0], 3)
    for weights in ([Decimal("1.5"), Decimal(2), 1], np.array([1.5, 2, 1], dtype=object)):
        np.testing.assert_array_equal(check_sample_weight(weights, 3), expected)
    with pytest.raises(ValueError, match=r"sample_weight\[1\] is nan"):
        check_sample_weight([1.0, None, 2.0], 3)
    with pytest.raises(ValueError, match=r"sample_weight must be real numbers; "
                                         r"sample_weight\[2\] is a complex"):
        check_sample_weight(np.array([1.0, 2.0, 1j], dtype=object), 3)


def test_integers_that_float64_cannot_tell_apart_are_refused():
    # 2**62 + i are distinct ints but one float64: fitted as a constant, silently.
    for y in (np.arange(16, dtype=np.int64) + 2**62, np.arange(16, dtype=np.uint64) + 2**63):
        with pytest.raises(ValueError, match=r"differ by less than float64 .* y - y.min\(\)"):
            check_target(y, 16)
    np.testing.assert_array_equal(check_target(np.arange(16) + 2**40, 16),
                                  np.arange(16) + 2.0**40)  # resolvable: accepted as is
    np.testing.assert_array_equal(check_target(np.full(16, 2**62), 16), 2.0**62)  # constant
