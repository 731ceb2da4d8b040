"""The paper's metrics against their textbook definitions."""

import warnings

import numpy as np
import pytest

from sklearn_relish.metrics import nrmse, pearson_r, regression_report, spearman_r


def test_pearson_matches_numpy():
    rng = np.random.RandomState(0)
    a, b = rng.randn(50), rng.randn(50)
    assert pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_spearman_is_rank_based_and_handles_ties():
    assert spearman_r([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    # ties: ranks [1.5, 1.5, 3] vs [1, 2, 3] -> Pearson of those ranks
    expected = np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1]
    assert spearman_r([5, 5, 7], [1, 2, 3]) == pytest.approx(expected)


def test_nrmse_divides_rmse_by_the_target_range():
    assert nrmse([0, 4], [1, 3]) == pytest.approx(1 / 4)


def test_constant_inputs_give_nan_not_errors():
    assert np.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    assert np.isnan(nrmse([2, 2], [1, 3]))


def test_report_and_length_check():
    report = regression_report([1, 2, 3], [1, 2, 3])
    assert report == pytest.approx({"pearson": 1.0, "spearman": 1.0, "nrmse": 0.0, "r2": 1.0})
    with pytest.raises(ValueError, match="3 values but y_pred has 2"):
        pearson_r([1, 2, 3], [1, 2])


def test_several_targets_are_scored_one_by_one_and_averaged():
    # Pooled into one column, the target in larger units decided every metric: the
    # report said r2 0.9996 where score() (scikit-learn's r2_score) said 0.37.
    rng = np.random.RandomState(0)
    truth = np.column_stack([rng.randn(200), 100 + 10 * rng.randn(200)])
    pred = truth + rng.randn(200, 2)
    from sklearn.metrics import r2_score

    report = regression_report(truth, pred)
    assert report["r2"] == pytest.approx(r2_score(truth, pred))
    per_column = [pearson_r(truth[:, j], pred[:, j]) for j in range(2)]
    assert report["pearson"] == pytest.approx(np.mean(per_column))
    assert nrmse(truth, pred) == pytest.approx(np.mean([nrmse(truth[:, j], pred[:, j])
                                                        for j in range(2)]))
    # A column vector is one target, like a 1-D array.
    assert pearson_r(truth[:, :1], pred[:, 0]) == pytest.approx(per_column[0])


@pytest.mark.parametrize("y_pred", [np.zeros((3, 2)), np.zeros((2, 3, 1))])
def test_other_shapes_of_the_same_size_are_refused(y_pred):
    with pytest.raises(ValueError, match=r"y_pred (has|must)"):
        regression_report(np.zeros((2, 3)), y_pred)


@pytest.mark.parametrize("metric", [pearson_r, spearman_r, nrmse, regression_report])
def test_non_finite_values_are_refused_by_every_metric_alike(metric):
    # regression_report raised (from r2_score) where pearson_r alone returned NaN.
    with pytest.raises(ValueError, match=r"y_pred must be finite; y_pred\[2\] is nan"):
        metric([1.0, 2.0, 3.0], [1.0, 2.0, np.nan])
    with pytest.raises(ValueError, match=r"y_true must be finite; y_true\[0, 1\] is inf"):
        metric([[1.0, np.inf], [2.0, 3.0]], [[1.0, 2.0], [2.0, 3.0]])


def test_a_constant_target_column_is_left_out_of_the_average_with_a_warning():
    # One constant column of two made every averaged metric NaN, hiding the other's.
    y_true = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    y_pred = np.array([[1.1, 4.0], [1.9, 5.0], [3.2, 6.0], [3.9, 5.5]])
    with pytest.warns(UserWarning) as caught:
        report = regression_report(y_true, y_pred)
    assert len(caught) == 1  # one warning, not one per metric
    assert str(caught[0].message) == (
        "pearson, spearman, nrmse and r2 are undefined for target column(s) [1] "
        "(constant, in y_true or y_pred): averaged over the other 1 of 2.")
    assert caught[0].filename == __file__  # the user's line, not the package's
    with pytest.warns(UserWarning, match=r"^pearson_r is undefined for target column"):
        assert pearson_r(y_true, y_pred) == pytest.approx(report["pearson"])
    alone = regression_report(y_true[:, 0], y_pred[:, 0])
    assert report == pytest.approx(alone)
    # Undefined everywhere stays NaN, with no warning and no numpy "mean of empty slice".
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(pearson_r(np.ones((3, 2)), y_pred[:3]))


def test_no_values_give_nan_not_a_numpy_error():
    assert all(np.isnan(value) for value in regression_report([], []).values())
