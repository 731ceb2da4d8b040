"""Prediction intervals: the conformal maths on numbers, then the estimator's contract."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, small_regressor
from sklearn.base import clone

from sklearn_relish import _intervals
from sklearn_relish._intervals import (
    PointAndQuantileLoss,
    conformity_scores,
    cv_plus_intervals,
    intervals,
    score_quantile,
)
from sklearn_relish._splits import distinct_ids, fold_ids


# -- the maths ------------------------------------------------------------------------------
def test_score_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 20, dtype=float).reshape(-1, 1)  # n = 19
    # ceil((19 + 1) * 0.9) = 18th smallest
    assert score_quantile(scores, 0.9)[0] == 18.0
    assert score_quantile(scores, 0.5)[0] == 10.0
    assert np.isinf(score_quantile(scores, 0.96)[0])  # needs rank 20 > n: not certifiable


@pytest.mark.parametrize(("n", "coverage", "rank"), [(74, 0.68, 51), (24, 0.56, 14),
                                                     (29, 0.9, 27), (99, 0.8, 80)])
def test_the_rank_survives_the_rounding_of_n_plus_one_times_coverage(n, coverage, rank):
    # 75 * 0.68 is 51.00000000000001 in floating point: a plain ceil takes the 52nd score,
    # a wider interval than the definition's; CV+ must use the same rank.
    scores = np.arange(1, n + 1, dtype=float).reshape(-1, 1)
    assert score_quantile(scores, coverage)[0] == rank
    folds, points = np.zeros(n, dtype=int), np.zeros((1, 1, 1))
    np.testing.assert_array_equal(cv_plus_intervals(points, scores, folds, coverage)[0, 0],
                                  [-rank, rank])


@pytest.mark.parametrize("method", ["split", "cqr"])
def test_split_conformal_covers_at_the_nominal_rate(method):
    # Exchangeable data, a deliberately poor model: coverage still holds on average,
    # the finite-sample guarantee (>= c, and < c + 1/(n+1) for continuous scores).
    rng = np.random.default_rng(0)
    n_cal, n_test, rounds, coverage = 99, 200, 200, 0.8
    covered = []
    for _ in range(rounds):
        x = rng.normal(size=n_cal + n_test)
        y = 2 * x + rng.standard_t(3, size=x.size) * (1 + np.abs(x))
        point = (1.5 * x).reshape(-1, 1)
        outputs = (point,) if method == "split" else (point, point - 1, point + 1)
        cal = tuple(o[:n_cal] for o in outputs)
        test = tuple(o[n_cal:] for o in outputs)
        scores = conformity_scores(method, cal, y[:n_cal])
        bounds = intervals(method, test, scores, coverage)[:, 0, :]
        covered.append(np.mean((bounds[:, 0] <= y[n_cal:]) & (y[n_cal:] <= bounds[:, 1])))
    assert coverage - 0.01 <= np.mean(covered) <= coverage + 1 / (n_cal + 1) + 0.01


def brute_force_cv_plus(points, scores, folds, coverage):
    """CV+ as Barber et al. (2021) write it, one new text and one target at a time."""
    n = len(scores)
    rank = int(np.ceil((n + 1) * coverage))
    bounds = np.empty((points.shape[1], points.shape[2], 2))
    for i in range(points.shape[1]):
        for j in range(points.shape[2]):
            up = np.sort(points[folds, i, j] + scores[:, j])
            down = np.sort(points[folds, i, j] - scores[:, j])
            bounds[i, j] = (down[n - rank], up[rank - 1]) if rank <= n else (-np.inf, np.inf)
            if bounds[i, j, 0] > bounds[i, j, 1]:  # below coverage 1/2 they can cross:
                bounds[i, j] = bounds[i, j].mean()  # the package returns the middle
    return bounds


@pytest.mark.parametrize("seed", range(10))
def test_cv_plus_equals_its_definition(seed):
    # Ties (rounded scores), an empty fold, several targets and scales of 1e-3 to 1e4, and
    # 1e16 and 1e20 (where one float64 step exceeds 1 and subtracting a shift rounds): the
    # bisection must land on the exact order statistic every time.
    rng = np.random.default_rng(seed)
    n_folds, n = rng.integers(2, 7), rng.integers(10, 80)
    scale = 10.0 ** ([16, 20][seed - 8] if seed >= 8 else rng.integers(-3, 5))
    folds = rng.integers(0, n_folds, size=n)
    folds[folds == 1] = 0  # fold 1 left nothing out
    scores = np.abs(rng.normal(size=(n, 2))).round(rng.integers(0, 3)) * scale
    points = rng.normal(size=(n_folds, 7, 2)) * scale
    for coverage in (0.1, 0.3, 0.8, 0.9, n / (n + 1), n / (n + 1) + 1e-9):
        bounds = cv_plus_intervals(points, scores, folds, coverage)
        np.testing.assert_allclose(bounds, brute_force_cv_plus(points, scores, folds, coverage),
                                   rtol=1e-12, atol=1e-12 * scale)
        assert np.all(bounds[..., 0] <= bounds[..., 1])


def test_cv_plus_covers_at_the_nominal_rate():
    # K deliberately different, poor models, each scored on the fold it did not see.
    rng = np.random.default_rng(1)
    n, n_test, n_folds, rounds, coverage = 100, 200, 5, 200, 0.8
    covered = []
    for _ in range(rounds):
        x = rng.normal(size=n + n_test)
        y = 2 * x + rng.standard_t(3, size=x.size) * (1 + np.abs(x))
        slopes = rng.uniform(1.0, 2.5, size=n_folds)
        folds = fold_ids(n, n_folds, int(rng.integers(1000)))
        scores = np.abs(y[:n] - slopes[folds] * x[:n]).reshape(-1, 1)
        points = (slopes[:, None] * x[None, n:])[:, :, None]
        bounds = cv_plus_intervals(points, scores, folds, coverage)[:, 0, :]
        covered.append(np.mean((bounds[:, 0] <= y[n:]) & (y[n:] <= bounds[:, 1])))
    # Guaranteed >= 2c - 1; in practice within a point or two of c.
    assert coverage - 0.02 <= np.mean(covered) <= coverage + 0.03


def test_folds_partition_the_texts_evenly():
    ids = fold_ids(23, 5, seed=0)
    assert sorted(np.bincount(ids)) == [4, 4, 5, 5, 5]
    assert not np.array_equal(ids, np.sort(ids))  # shuffled, not contiguous blocks
    np.testing.assert_array_equal(ids, fold_ids(23, 5, seed=0))


def test_crossed_quantiles_on_calibration_texts_do_not_inflate_cqr_intervals():
    # A head trained briefly outputs low > high on some texts. Prediction orders the pair
    # before widening it, so calibration must score the ordered pair too, or the margin
    # grows by up to half the crossing and the intervals cover far above what was asked.
    rng = np.random.default_rng(0)
    n_cal, n_test, rounds, coverage = 199, 400, 100, 0.8
    covered = []
    for _ in range(rounds):
        y = rng.normal(size=n_cal + n_test)
        point = np.zeros((y.size, 1))
        low, high = point - 1.3, point + 1.3
        swap = rng.random(y.size) < 0.3
        low[swap], high[swap] = high[swap], low[swap]
        outputs = (point, low, high)
        scores = conformity_scores("cqr", tuple(o[:n_cal] for o in outputs), y[:n_cal])
        bounds = intervals("cqr", tuple(o[n_cal:] for o in outputs), scores, coverage)[:, 0]
        covered.append(np.mean((bounds[:, 0] <= y[n_cal:]) & (y[n_cal:] <= bounds[:, 1])))
    assert coverage - 0.01 <= np.mean(covered) <= coverage + 1 / (n_cal + 1) + 0.01


def test_cqr_intervals_adapt_and_stay_ordered():
    point = np.zeros((4, 1))
    low, high = point - np.array([[1], [3], [0.1], [2]]), point + np.array([[1], [3], [0.1], [-5]])
    scores = np.sort(np.array([[0.5], [-0.2], [0.1]]), axis=0)
    bounds = intervals("cqr", (point, low, high), scores, 0.5)[:, 0, :]
    widths = bounds[:, 1] - bounds[:, 0]
    assert widths[1] > widths[0] > widths[2]  # wider where the quantiles are wider
    assert np.all(bounds[:, 0] <= bounds[:, 1])  # crossed quantiles are reordered


def test_pinball_loss_is_minimised_at_the_quantile():
    y = torch.linspace(-3, 3, 1001).reshape(-1, 1)
    loss = PointAndQuantileLoss(torch.nn.MSELoss(reduction="none"))

    def total(low: float) -> float:
        guess = torch.tensor([[0.0, low, 10.0]]).expand(len(y), 3)
        return float(loss(guess, y).sum())

    candidates = np.linspace(-3, 3, 121)
    best = candidates[np.argmin([total(c) for c in candidates])]
    assert best == pytest.approx(np.quantile(y.numpy(), 0.05), abs=0.06)


@pytest.mark.parametrize("coverage", [0, 1, 1.5, -0.1, float("nan")])
def test_coverage_outside_zero_one_is_refused(coverage):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        _intervals.check_coverage(coverage)
    with pytest.raises(TypeError):
        _intervals.check_coverage("0.9")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        _intervals.check_coverage(np.array(coverage))  # a 0-d array is its number


def test_a_zero_dimensional_array_is_a_coverage_as_numpy_scalars_are():
    # np.array(0.9) (a config file's value through numpy) was refused as not a number.
    assert _intervals.check_coverage(np.array(0.9)) == 0.9
    assert _intervals.check_coverage(np.float32(0.5)) == 0.5
    with pytest.raises(TypeError):
        _intervals.check_coverage(np.array([0.9]))


# -- the estimator ------------------------------------------------------------------------------
# 64 distinct texts: 4 copies of each of TEXTS would calibrate once each (16 texts held
# out would give 4 scores, too few for 90% bounds).
DISTINCT_64 = [f"{text} ({copy})" for copy in range(4) for text in TEXTS]


@pytest.fixture(scope="module")
def calibrated(tiny_llama):
    params = dict(early_stopping=True, validation_fraction=0.25, max_epochs=4)
    return small_regressor(tiny_llama, **params).fit(DISTINCT_64, TARGETS * 4)


def test_default_model_has_intervals_around_its_predictions(calibrated):
    bounds = calibrated.predict_interval(TEXTS[:5], coverage=0.9)
    pred = calibrated.predict(TEXTS[:5])
    assert bounds.shape == (5, 2)
    assert np.all(bounds[:, 0] <= pred) and np.all(pred <= bounds[:, 1])
    assert calibrated.calibration_scores_.shape == (16, 1)  # 25% of 64 texts held out
    narrow = calibrated.predict_interval(TEXTS[:5], coverage=0.5)
    assert np.all(narrow[:, 1] - narrow[:, 0] <= bounds[:, 1] - bounds[:, 0])


def test_calibration_uses_the_hold_out_errors(calibrated):
    # The margin is exactly the rank-ceil((n+1)c) absolute error on the hold-out.
    bounds = calibrated.predict_interval(TEXTS[:3], coverage=0.8)
    pred = calibrated.predict(TEXTS[:3])
    expected = score_quantile(calibrated.calibration_scores_, 0.8)[0]
    np.testing.assert_allclose(bounds[:, 1] - pred, expected)
    np.testing.assert_allclose(pred - bounds[:, 0], expected)


def test_too_high_a_coverage_for_the_hold_out_is_infinite_and_says_so(calibrated):
    # Honest bounds, but a silent column of inf left Python users guessing why.
    with pytest.warns(UserWarning, match=r"infinite for 2 interval\(s\): 16 calibration "
                                         r"texts certify a coverage of at most 0\.941") as got:
        bounds = calibrated.predict_interval(TEXTS[:2], coverage=0.99)  # 16 texts: 16/17
    assert np.all(np.isinf(bounds))
    assert got[0].filename == __file__  # the caller's line, not the package's
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite bounds: no warning of infinite ones
        warnings.filterwarnings("ignore", "These intervals are calibrated")  # below
        assert np.isfinite(calibrated.predict_interval(TEXTS[:2], coverage=0.9)).all()


def test_a_small_hold_out_says_split_covers_less_and_names_cv(calibrated, monkeypatch):
    # 16 texts both chose the epoch and calibrate: measured to under-cover (RESULTS.md).
    with pytest.warns(UserWarning, match=r"calibrated on 16 held-out texts, which also chose "
                                         r"the epoch.*refit with intervals='cv'") as got:
        calibrated.predict_interval(TEXTS[:2])
    assert got[0].filename == __file__
    import warnings

    with warnings.catch_warnings():  # no intervals, nothing to warn of; bad input: the error
        warnings.simplefilter("error")
        assert calibrated.predict_interval([]).shape == (0, 2)
        with pytest.raises(TypeError, match=r"X\[0\] is a int"):
            calibrated.predict_interval([1, 2])
    monkeypatch.setattr(_intervals, "FEW_CALIBRATION_TEXTS", 16)  # as if 16 were enough
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrated.predict_interval(TEXTS[:2])


def test_fold_calibrated_intervals_do_not_warn_of_a_small_hold_out(cv_plus):
    # CV+ calibrates on every training text (here 16) and chose no epoch on them.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cv_plus.predict_interval(TEXTS[:2])
    # Nor do they advise refitting with intervals='cv' when the bounds are infinite.
    with pytest.warns(UserWarning, match="16 calibration texts certify") as got:
        cv_plus.predict_interval(TEXTS[:2], coverage=0.99)
    assert "intervals='cv'" not in str(got[0].message)


@pytest.mark.parametrize("fitted", ["calibrated", "cv_plus"])
def test_intervals_survive_pickling(fitted, request):
    # CV+ keeps its fold heads in the pickle; both keep their calibration.
    model = request.getfixturevalue(fitted)
    np.testing.assert_array_equal(clone_fitted(model).predict_interval(TEXTS[:3]),
                                  model.predict_interval(TEXTS[:3]))


def test_without_a_hold_out_the_error_says_how_to_get_one(tiny_llama):
    model = small_regressor(tiny_llama, early_stopping=False).fit(TEXTS, TARGETS)
    assert model.calibration_scores_ is None
    with pytest.raises(ValueError, match="early_stopping=True.*intervals='cv'"):
        model.predict_interval(TEXTS[:2])


def test_without_a_hold_out_for_want_of_weighted_texts_the_error_says_so(tiny_llama):
    # 5 of 60 texts weighted: early stopping (and the hold-out) were skipped, and the
    # error advised early_stopping=True and a validation_fraction, as the user had set.
    texts = [f"text number {i}" for i in range(60)]
    weights = np.r_[np.ones(5), np.zeros(55)]
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.2)
    with pytest.warns(UserWarning, match="early_stopping needs at least 2"):
        model.fit(texts, np.arange(60.0), sample_weight=weights)
    with pytest.raises(ValueError, match="of positive sample_weight: texts of weight 0 are "
                                         "never held out"):
        model.predict_interval(texts[:2])


def test_fifteen_texts_keep_the_two_text_hold_out_the_split_makes(tiny_llama):
    # validation_fraction=0.1 of 15 texts: ShuffleSplit holds out ceil(1.5) = 2 texts,
    # enough for early stopping and split intervals; int(1.5) = 1 had turned both off
    # with a warning that said the fraction gave fewer than 2.
    import warnings

    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(TEXTS[:15], TARGETS[:15])
    assert model.calibration_scores_.shape == (2, 1)
    assert np.all(np.isfinite(model.predict_interval(TEXTS[:2], coverage=0.5)))


def test_cqr_head_has_three_outputs_and_the_same_point_contract(tiny_llama):
    model = small_regressor(tiny_llama, intervals="cqr", early_stopping=True,
                            validation_fraction=0.25, max_epochs=4)
    model.fit(TEXTS * 4, TARGETS * 4)
    assert model.net_.module_.output.out_features == 3
    assert model.predict(TEXTS[:4]).shape == (4,)
    bounds = model.predict_interval(TEXTS[:4], coverage=0.8)
    assert bounds.shape == (4, 2) and np.all(bounds[:, 0] <= bounds[:, 1])


@pytest.mark.parametrize("method", ["split", "cv+"])
def test_several_targets_get_bounds_per_target(tiny_llama, method):
    y = np.column_stack([TARGETS * 4, np.asarray(TARGETS * 4) * 10])
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25,
                            max_epochs=3, intervals=method).fit(DISTINCT_64, y)
    bounds = model.predict_interval(TEXTS[:3])
    assert bounds.shape == (3, 2, 2)
    widths = bounds[..., 1] - bounds[..., 0]
    assert np.all(widths[:, 1] > widths[:, 0])  # the second target is on a 10x scale


def test_interval_input_is_validated_like_predict(calibrated):
    with pytest.raises(TypeError, match="single string"):
        calibrated.predict_interval("one text")
    assert calibrated.predict_interval([]).shape == (0, 2)


@pytest.mark.parametrize("method", ["split", "cv", "cv+"])
def test_constant_target_has_zero_width_intervals(tiny_llama, method):
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25,
                            intervals=method)
    model.fit(TEXTS * 2, [1.5] * 32)
    # 8 hold-out texts certify at most 8/9 coverage (CV+: 32/33)
    np.testing.assert_array_equal(model.predict_interval(["anything"], coverage=0.8),
                                  [[1.5, 1.5]])


# -- CV+ on the estimator -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cv_plus(tiny_llama):
    return small_regressor(tiny_llama, intervals="cv+", interval_folds=4, early_stopping=True,
                           validation_fraction=0.25, max_epochs=3).fit(TEXTS * 2, TARGETS * 2)


def test_cv_plus_scores_every_training_text_out_of_fold(cv_plus):
    assert len(cv_plus.interval_nets_) == 4
    # All 16 texts (each given twice: one score per text), not a hold-out.
    assert cv_plus.calibration_scores_.shape == (16, 1)
    assert sorted(np.bincount(cv_plus.calibration_folds_)) == [4, 4, 4, 4]
    # Each score is the error of the head that did not see the text (nor its copy: each
    # text comes twice, and both copies share a fold). The folds are drawn from the fit's
    # seed, which random_state=0 gives as below.
    seed = np.random.RandomState(0).randint(np.iinfo(np.int32).max)
    y, texts = np.asarray(TARGETS), TEXTS
    text_folds = fold_ids(distinct_ids(TEXTS * 2), 4, seed)
    np.testing.assert_array_equal(text_folds[:16], text_folds[16:])
    text_folds = text_folds[:16]
    [(_, states, featurizer)] = cv_plus._token_state_chunks(texts)
    for fold, net in enumerate(cv_plus.interval_nets_):
        point = cv_plus._head_outputs(net, states, featurizer)[0][:, 0]
        left_out = text_folds == fold
        np.testing.assert_allclose(  # stored sorted within each fold
            cv_plus.calibration_scores_[cv_plus.calibration_folds_ == fold, 0],
            np.sort(np.abs(y[left_out] - point[left_out])), rtol=1e-6)


def test_cv_plus_intervals_come_from_the_fold_heads(cv_plus):
    texts = TEXTS[:4]
    [(_, states, featurizer)] = cv_plus._token_state_chunks(texts)
    points = np.stack([cv_plus._head_outputs(net, states, featurizer)[0]
                       for net in cv_plus.interval_nets_])
    expected = brute_force_cv_plus(points, cv_plus.calibration_scores_,
                                   cv_plus.calibration_folds_, 0.8)[:, 0, :]
    np.testing.assert_allclose(cv_plus.predict_interval(texts, coverage=0.8), expected)
    assert cv_plus.predict(texts).shape == (4,)  # the point is still the main head's


def test_cv_widens_the_main_head_by_the_cv_plus_out_of_fold_errors(tiny_llama, cv_plus):
    # Same seed, same folds: the same main head and out-of-fold errors as "cv+", then
    # one margin around the main prediction, and no fold heads kept.
    cv = clone(cv_plus).set_params(intervals="cv").fit(TEXTS * 2, TARGETS * 2)
    assert cv.interval_nets_ is None and cv.calibration_folds_ is None
    np.testing.assert_array_equal(cv.calibration_scores_,
                                  np.sort(cv_plus.calibration_scores_, axis=0))
    point = cv.predict(TEXTS[:5])
    np.testing.assert_array_equal(point, cv_plus.predict(TEXTS[:5]))
    margin = score_quantile(cv.calibration_scores_, 0.8)[0]
    np.testing.assert_allclose(cv.predict_interval(TEXTS[:5], coverage=0.8),
                               np.column_stack([point - margin, point + margin]))


def test_cv_plus_needs_no_early_stopping_hold_out(tiny_llama):
    model = small_regressor(tiny_llama, intervals="cv+", interval_folds=2,
                            early_stopping=False).fit(TEXTS, TARGETS)
    assert model.calibration_scores_.shape == (16, 1)
    assert np.all(np.isfinite(model.predict_interval(TEXTS[:2], coverage=0.8)))


def test_cv_plus_with_too_few_texts_for_its_folds_is_refused(tiny_llama):
    model = small_regressor(tiny_llama, intervals="cv+", interval_folds=5)
    with pytest.raises(ValueError, match="interval_folds=5 needs at least 10 texts"):
        model.fit(TEXTS[:9], TARGETS[:9])
    assert not hasattr(model, "net_")  # nothing half-fitted is left behind


def test_intervals_follow_the_fitted_method_not_a_later_set_params(calibrated):
    # intervals takes effect at the next fit; until then the fitted calibration answers.
    before = calibrated.predict_interval(TEXTS[:3])
    changed = clone_fitted(calibrated).set_params(intervals="cqr")
    np.testing.assert_array_equal(changed.predict_interval(TEXTS[:3]), before)
    np.testing.assert_array_equal(changed.predict(TEXTS[:3]), calibrated.predict(TEXTS[:3]))


def clone_fitted(model):
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    return joblib.load(buffer)
