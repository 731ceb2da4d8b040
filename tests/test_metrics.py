"""The paper's metrics against their textbook definitions."""

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
