"""Property-based tests (hypothesis) of the estimator's contract, on the tiny backbone.

One model is fitted per module, with the token-state cache off so that every ``predict``
really runs the LLM on the batch it is given: texts of different lengths are padded
together, which is exactly what batch invariance has to survive.
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import joblib
import numpy as np
import pytest
from conftest import TARGETS, TEXTS, WORDS, small_regressor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

# Hypothesis texts may run past the tiny model's 64 positions; truncation is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*longer than max_length:UserWarning")

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

word_texts = st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join)
any_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
texts = st.one_of(word_texts, any_texts)
batches = st.lists(texts, min_size=1, max_size=8)


@pytest.fixture(scope="module")
def model(tiny_llama):
    return small_regressor(tiny_llama, cache=False).fit(TEXTS, TARGETS)


@contextmanager
def batch_sizes(fitted, llm: int, head: int):
    """Temporarily change how many texts the LLM and the head see per forward pass."""
    old = fitted.featurizer_.batch_size, fitted.net_.batch_size
    fitted.featurizer_.batch_size, fitted.net_.batch_size = llm, head
    try:
        yield fitted
    finally:
        fitted.featurizer_.batch_size, fitted.net_.batch_size = old


@settings(max_examples=15, **SETTINGS)
@given(batch=batches, others=st.lists(texts, max_size=6),
       llm_batch=st.integers(1, 8), head_batch=st.integers(1, 8))
def test_prediction_does_not_depend_on_the_batch(model, batch, others, llm_batch, head_batch):
    # Each text on its own: no padding at all.
    alone = np.array([model.predict([text])[0] for text in batch])
    together = model.predict(batch)
    with batch_sizes(model, llm_batch, head_batch):
        mixed = model.predict(others + batch)[len(others):]
    # Masked attention makes this exact in real arithmetic; 1e-5 leaves room for float
    # reassociation over different padded shapes and the float16 rounding of states.
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed, alone, rtol=0, atol=1e-5)


@settings(max_examples=15, **SETTINGS)
@given(data=st.data(), batch=st.lists(texts, min_size=2, max_size=8))
def test_shuffling_x_shuffles_the_predictions(model, data, batch):
    order = data.draw(st.permutations(range(len(batch))))
    expected = model.predict(batch)[order]
    shuffled = model.predict([batch[i] for i in order])
    np.testing.assert_allclose(shuffled, expected, rtol=0, atol=1e-5)


@settings(max_examples=5, **SETTINGS)
@given(seed=st.integers(0, 2**31 - 2))
def test_same_random_state_same_predictions(tiny_llama, seed):
    def fit_predict(random_state):
        # Early stopping too: its validation split must follow random_state as well.
        reg = small_regressor(tiny_llama, random_state=random_state, early_stopping=True,
                              validation_fraction=0.25)
        return reg.fit(TEXTS, TARGETS).predict(TEXTS)

    first, again, other = fit_predict(seed), fit_predict(seed), fit_predict(seed + 1)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4, "random_state does not change the fit"


@settings(max_examples=10, **SETTINGS)
@given(a=st.floats(1e-3, 1e3), b=st.floats(-1e4, 1e4))
def test_affine_change_of_target_units(model, tiny_llama, a, b):
    y = np.asarray(TARGETS)
    rescaled = small_regressor(tiny_llama, cache=False).fit(TEXTS, a * y + b)
    probe = [*TEXTS[:4], "an unseen text", ""]
    # Standardised targets (y - mean) / std are the same for y and a*y+b up to float64
    # rounding, so the float32 head is trained on (nearly always bit-)identical data and
    # predict maps back exactly; only float64 rounding of the affine map remains. 1e-6 of
    # the target's spread would still absorb a one-ulp float32 difference in a target.
    np.testing.assert_allclose((rescaled.predict(probe) - b) / a, model.predict(probe),
                               rtol=0, atol=1e-6 * y.std())
    assert rescaled.y_scale_ == pytest.approx(a * y.std(), rel=1e-9)


@settings(max_examples=10, **SETTINGS)
@given(batch=batches)
def test_pickle_round_trip_predicts_the_same(model, batch):
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    restored = joblib.load(buffer)
    assert restored.featurizer_._loaded is None  # the backbone did not travel
    np.testing.assert_array_equal(restored.predict(batch), model.predict(batch))


def test_clone_of_a_fitted_model_is_unfitted(model):
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    assert not hasattr(fresh, "net_") and not hasattr(fresh, "featurizer_")
    with pytest.raises(NotFittedError):
        fresh.predict(["good movie"])
    assert np.isfinite(model.predict(["good movie"])).all()  # the original is untouched
