"""scikit-learn conventions: column names, training diagnostics, settings changed after fit,
one meaning per ``layer`` value, and no training for a constant target."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TARGETS, TEXTS, small_regressor

from sklearn_relish import _net, cache_info
from sklearn_relish._inputs import check_layer

PAIRS = pd.DataFrame({"premise": TEXTS, "hypothesis": TEXTS[::-1]})


# -- columns ------------------------------------------------------------------------------
def test_dataframe_columns_are_recorded_and_checked(tiny_llama):
    model = small_regressor(tiny_llama, prompt="{text_a} | {text_b}").fit(PAIRS, TARGETS)
    assert model.n_features_in_ == 2
    assert list(model.feature_names_in_) == ["premise", "hypothesis"]
    swapped = PAIRS[["hypothesis", "premise"]]
    with pytest.raises(ValueError, match="feature names should match"):
        model.predict(swapped)  # silently reversed pairs before
    np.testing.assert_allclose(model.predict(PAIRS.head(3)),
                               model.predict(list(PAIRS.head(3).itertuples(index=False))))


def test_texts_have_one_feature_and_lists_no_names(tiny_llama):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    assert model.n_features_in_ == 1
    assert not hasattr(model, "feature_names_in_")


# -- diagnostics --------------------------------------------------------------------------
def test_training_diagnostics_without_early_stopping(tiny_llama):
    model = small_regressor(tiny_llama, max_epochs=4).fit(TEXTS, TARGETS)
    assert model.n_iter_ == 4 == model.best_iteration_
    assert len(model.loss_curve_) == 4 and all(np.isfinite(model.loss_curve_))
    assert model.validation_loss_curve_ is None
    assert model.loss_curve_ == list(model.net_.history[:, "train_loss"])


def test_training_diagnostics_with_early_stopping(tiny_llama):
    texts = TEXTS * 3
    model = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25,
                            patience=2, max_epochs=30).fit(texts, TARGETS * 3)
    assert len(model.loss_curve_) == len(model.validation_loss_curve_) == model.n_iter_
    best = int(np.argmin(model.validation_loss_curve_)) + 1
    assert model.best_iteration_ == best
    assert model.n_iter_ >= best


def test_constant_target_needs_no_training(tiny_llama, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a constant target was trained on")

    monkeypatch.setattr(_net.RelishNet, "fit", no_training)
    model = small_regressor(tiny_llama).fit(TEXTS, [2.5] * len(TEXTS))
    np.testing.assert_array_equal(model.predict(["anything", ""]), [2.5, 2.5])
    assert model.n_iter_ == 0 and model.loss_curve_ == []


# -- scikit-learn's API checks, on text (their numeric versions: test_sklearn_checks.py) --
def test_fit_again_on_the_same_data_gives_the_same_model(tiny_llama):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    first = model.predict(TEXTS)
    np.testing.assert_array_equal(model.fit(TEXTS, TARGETS).predict(TEXTS), first)


def test_predict_leaves_the_fitted_state_alone(tiny_llama):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    before = dict(model.__dict__)
    model.predict(TEXTS[:3])
    assert model.__dict__.keys() == before.keys()
    assert all(model.__dict__[k] is before[k] for k in before), \
        [k for k in before if model.__dict__[k] is not before[k]]


def test_fit_leaves_the_parameters_alone(tiny_llama):
    model = small_regressor(tiny_llama, backbone_kwargs={"revision": None})
    before = {k: joblib.hash(v) for k, v in model.get_params().items()}
    public = {k for k in vars(model) if not k.startswith("_")}
    model.fit(TEXTS, TARGETS)
    assert {k: joblib.hash(v) for k, v in model.get_params().items()} == before
    added = {k for k in vars(model) if not k.startswith("_")} - public
    assert added and all(k.endswith("_") for k in added), added  # fitted state ends in _


# -- inference-only settings honoured after fit ------------------------------------------
def test_inference_settings_changed_after_fit_take_effect(tiny_llama, tmp_path, capsys):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS[:4])

    model.set_params(cache=False)
    before = cache_info()["llm_texts"]
    np.testing.assert_allclose(model.predict(TEXTS[:4]), expected, atol=1e-6)
    assert cache_info()["llm_texts"] == before + 4  # ran the LLM: the cache is off now

    model.set_params(cache=True, cache_dir=tmp_path / "states", featurize_batch_size=1,
                     verbose=1)
    # A new text (featurized, one per batch, into the new disk cache) and known ones.
    predicted = model.predict(["a new text", *TEXTS[:4]])
    np.testing.assert_allclose(predicted[1:], expected, atol=1e-6)
    assert model.featurizer_.batch_size == 1
    assert "Featurizing" in capsys.readouterr().err
    assert any((tmp_path / "states").iterdir())  # the disk cache was used

    model.set_params(device="cpu", verbose=0)
    np.testing.assert_allclose(model.predict(TEXTS[:4]), expected, atol=1e-6)
    assert str(model.net_.device) == "cpu"

    # The way out of states that overflow at predict, as the error advises: it was ignored.
    model.set_params(backbone_dtype="bfloat16")
    in_bfloat16 = model.predict(TEXTS[:4])
    assert model.featurizer_.loaded.dtype == torch.bfloat16
    assert not np.array_equal(in_bfloat16, expected)
    np.testing.assert_allclose(in_bfloat16, expected, atol=0.1)


def test_settings_that_change_states_are_not_inference_only(tiny_llama):
    # layer, max_length, prompt, backbone change what the head was trained on: changing
    # them after fit does nothing until the next fit (as for any scikit-learn parameter).
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS[:4])
    model.set_params(layer=0, max_length=3, prompt="x {text}")
    np.testing.assert_array_equal(model.predict(TEXTS[:4]), expected)


# -- one meaning per layer value -----------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    (1, 1), (1.0, 1), (np.int64(1), 1), (np.float32(1.0), 1), (-1, -1), (-1.0, -1),
    (0, 0), (0.0, 0), (0.5, 0.5), (np.float32(0.5), 0.5), (np.float64(0.25), 0.25),
])
def test_layer_has_one_meaning_per_value(value, expected):
    resolved = check_layer(value)
    assert resolved == expected and type(resolved) is type(expected)


@pytest.mark.parametrize("value", [1.5, -0.5, float("nan"), float("inf"), True, "middle"])
def test_layer_values_without_a_meaning_are_refused(value):
    with pytest.raises(ValueError, match=r"^layer( must be|=)"):
        check_layer(value)


def test_numpy_layer_is_a_share_not_an_index(tiny_llama):
    # np.float32(0.5) used to pass validation and then be used as an index.
    as_numpy = small_regressor(tiny_llama, layer=np.float32(0.5)).fit(TEXTS, TARGETS)
    as_float = small_regressor(tiny_llama, layer=0.5).fit(TEXTS, TARGETS)
    np.testing.assert_array_equal(as_numpy.predict(TEXTS), as_float.predict(TEXTS))
    assert as_numpy.featurizer_.layer == 0.5 and type(as_numpy.featurizer_.layer) is float


def test_int_and_float_whole_layer_are_the_same_layer(tiny_llama):
    one = small_regressor(tiny_llama, layer=1).fit(TEXTS, TARGETS)
    one_float = small_regressor(tiny_llama, layer=1.0).fit(TEXTS, TARGETS)
    np.testing.assert_array_equal(one.predict(TEXTS), one_float.predict(TEXTS))


def test_bad_layer_fails_before_loading(tiny_llama):
    with pytest.raises(ValueError, match="neither a whole number"):
        small_regressor("no-such-backbone", layer=1.5).fit(TEXTS, TARGETS)
