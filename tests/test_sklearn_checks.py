"""scikit-learn's full estimator checks, with each one that cannot apply named and explained.

Both estimators take text, so their tags say so, and scikit-learn then skips every check
(they all feed numeric arrays). To run the whole suite anyway, the checks get test-only
subclasses whose tags claim 2-D numeric input: the API checks (parameters, cloning,
repr, tags, unfitted errors, param validation...) then run for real, and every check that
feeds numbers is listed below with the reason it fails. Each of those behaviours is
tested on text instead, in the file named.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile

import pytest
from conftest import build_tiny_llama
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_relish import LLMTextEncoder, RelishTextRegressor


class _StableRepr:
    """Test ids are built from the estimator's repr: with the random temporary folder of
    the backbone in it, pytest-xdist's workers collected different ids and refused to run."""

    def __repr__(self, N_CHAR_MAX=700):
        return super().__repr__(N_CHAR_MAX).replace(_FOLDER, "<tiny-llama>")


class _NumericTagsRegressor(_StableRepr, RelishTextRegressor):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags


class _NumericTagsEncoder(_StableRepr, LLMTextEncoder):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags


NUMBERS = "feeds numeric X, which is refused with a TypeError/ValueError naming the row"
COMMON = {
    # -> tests/test_estimator.py and tests/test_conventions.py cover these on text (fit
    # idempotent, dict unchanged by predict, parameters untouched by fit: test_conventions)
    "check_fit_score_takes_y": NUMBERS,
    "check_estimators_overwrite_params": NUMBERS,
    "check_dont_overwrite_parameters": NUMBERS,
    "check_estimators_fit_returns_self": NUMBERS,
    "check_readonly_memmap_input": NUMBERS,
    "check_n_features_in_after_fitting": NUMBERS + "; n_features_in_ is 1 (texts) or 2 (pairs)",
    "check_n_features_in": NUMBERS,
    "check_positive_only_tag_during_fit": NUMBERS,
    "check_estimators_dtypes": NUMBERS,
    "check_dtype_object": NUMBERS,
    "check_pipeline_consistency": NUMBERS,
    "check_estimators_pickle": NUMBERS,
    "check_f_contiguous_array_estimator": NUMBERS,
    "check_methods_sample_order_invariance": NUMBERS,
    "check_methods_subset_invariance": NUMBERS,
    "check_fit2d_1feature": NUMBERS,
    "check_dict_unchanged": NUMBERS,
    "check_fit_idempotent": NUMBERS,
    "check_fit_check_is_fitted": NUMBERS,
    "check_fit1d": NUMBERS,
    "check_fit2d_predict1d": NUMBERS,
    # -> tests/test_input_contract.py covers these on text
    "check_complex_data": NUMBERS + " (complex numbers are not text either)",
    "check_estimators_empty_data_messages": "an empty list of texts has its own message",
    "check_fit2d_1sample": "fewer than 2 texts has its own message ('At least 2 texts')",
    "check_estimators_nan_inf": "missing texts (None, NaN, pd.NA) are refused naming the row",
}
EXPECTED_FAILURES = {
    "_NumericTagsRegressor": {
        **COMMON,
        "check_regressors_train": NUMBERS + "; learning is tested on VADER in benchmarks/",
        "check_regressor_data_not_an_array": "an object that only wraps an array is not text",
        "check_regressors_no_decision_function": NUMBERS,
        "check_supervised_y_2d": NUMBERS,
        "check_regressors_int": NUMBERS,
        "check_requires_y_none": NUMBERS,
        "check_regressor_multioutput": NUMBERS + "; several targets: tests/test_targets.py",
        # -> tests/test_targets.py covers sample weights on text
        "check_all_zero_sample_weights_error": NUMBERS,
        "check_sample_weight_equivalence_on_dense_data": NUMBERS,
        "check_sample_weights_list": NUMBERS,
        "check_sample_weights_not_an_array": NUMBERS,
        "check_sample_weights_not_overwritten": NUMBERS,
        "check_sample_weights_pandas_series": NUMBERS,
        "check_sample_weights_shape": NUMBERS,
    },
    "_NumericTagsEncoder": {
        **COMMON,
        "check_transformer_data_not_an_array": "an object that only wraps an array is not text",
        "check_transformer_general": NUMBERS,
        # check_transformer_preserve_dtypes is not run: the tags say features are float32.
    },
}

# parametrize_with_checks needs instances at collection time, before fixtures exist.
_FOLDER = tempfile.mkdtemp(prefix="sklearn-checks-")
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
_BACKBONE = build_tiny_llama(_FOLDER)
ESTIMATORS = [
    _NumericTagsRegressor(_BACKBONE, latent_dim=16, n_heads=2, n_iterations=1, max_epochs=2,
                          early_stopping=False, random_state=0),
    _NumericTagsEncoder(_BACKBONE),
]


@parametrize_with_checks(
    ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILURES[type(est).__name__]
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [RelishTextRegressor(), LLMTextEncoder()],
                         ids=lambda e: type(e).__name__)
def test_parameter_validation_check(estimator):
    # Not yielded by check_estimator; it reads _parameter_constraints for every parameter.
    estimator_checks.check_param_validation(type(estimator).__name__, estimator)


# How the package refuses numeric X (tests/test_input_contract.py): a check listed above
# must fail with one of these, or with scikit-learn's complaint about one of these.
REFUSAL = re.compile(r"X has \d+ columns; give one column of texts|"
                     r"X\[\d+(, \d+)?\]( \([^)]*\))? is a \w+( .*)?, not a str|"
                     r"X must be a list of texts")


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_every_expected_failure_still_fails_on_the_refusal(estimator):
    # An expected failure that starts passing would hide a check that now applies; one
    # that fails for another reason (a real bug) would hide behind its listing.
    results = {r["check_name"]: r for r in estimator_checks.check_estimator(
        estimator, on_fail=None) if r["status"] == "failed"}
    listed = set(EXPECTED_FAILURES[type(estimator).__name__])
    assert listed <= set(results), listed - set(results)
    for name in listed:
        error = results[name]["exception"]
        refusal = error if REFUSAL.search(str(error)) else error.__cause__ or error.__context__
        assert REFUSAL.search(str(refusal)), f"{name} failed otherwise: {error!r}"
