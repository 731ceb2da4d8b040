"""RelishTextRegressor keeps scikit-learn's contract wherever a regressor is used."""

import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import TARGETS, TEXTS, small_regressor
from sklearn.base import clone, is_regressor
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import FunctionTransformer, Pipeline

from sklearn_relish import RelishTextRegressor, cache_info


@pytest.fixture(scope="module")
def fitted(tiny_llama):
    return small_regressor(tiny_llama).fit(TEXTS, TARGETS)


def test_is_a_regressor_with_string_input_tags():
    estimator = RelishTextRegressor()
    assert is_regressor(estimator)
    tags = estimator.__sklearn_tags__()
    assert tags.estimator_type == "regressor"
    assert tags.input_tags.string and not tags.input_tags.two_d_array


def test_init_loads_nothing(monkeypatch):
    from sklearn_relish import _backbones, _featurizer

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing may be loaded before fit")

    # Where the featurizer looks it up (it imports the name), and at its source.
    monkeypatch.setattr(_featurizer, "load_backbone", forbidden)
    monkeypatch.setattr(_backbones, "load_backbone", forbidden)
    loads = _backbones.N_LOADS
    estimator = RelishTextRegressor("some/model-that-does-not-exist", lr=0.5)
    clone(estimator).set_params(lr=0.1)
    repr(estimator)
    pickle.loads(pickle.dumps(estimator))
    assert _backbones.N_LOADS == loads
    assert not any("model-that-does-not-exist" in key[0] for key in _backbones._REGISTRY)


def test_predict_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError):
        RelishTextRegressor().predict(["text"])


def test_predictions_are_float64_1d_and_fit_returns_self(tiny_llama):
    estimator = small_regressor(tiny_llama)
    assert estimator.fit(TEXTS, TARGETS) is estimator
    predictions = estimator.predict(TEXTS[:5])
    assert predictions.dtype == np.float64 and predictions.shape == (5,)
    assert np.isfinite(predictions).all()


def test_predictions_are_on_the_targets_scale(tiny_llama):
    # Targets standardised for training, un-standardised for output.
    shifted = [1000 + 10 * t for t in TARGETS]
    predictions = small_regressor(tiny_llama, max_epochs=30).fit(TEXTS, shifted).predict(TEXTS)
    assert 950 < predictions.mean() < 1050


def test_learns_the_training_data(tiny_llama):
    estimator = small_regressor(tiny_llama, max_epochs=60, lr=3e-3, latent_dim=32)
    estimator.fit(TEXTS, TARGETS)
    assert estimator.score(TEXTS, TARGETS) > 0.8


def test_predict_holds_the_states_of_one_chunk_of_texts_at_a_time(tiny_llama, monkeypatch):
    # predict featurized the whole input and then ran the head: a million texts held
    # every text's states at once, whatever the cache's limit.
    from sklearn_relish import _featurizer

    fitted = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25)
    fitted.fit(TEXTS, TARGETS)
    texts = [f"{text} {i}" for i, text in enumerate(TEXTS * 3)]  # 48 distinct texts
    whole = fitted.predict(texts)
    whole_bounds = fitted.predict_interval(texts, coverage=0.5)
    sizes = []
    counted = _featurizer.LLMFeaturizer.transform_counted

    def spy(self, chunk, kind):
        sizes.append(len(chunk))
        return counted(self, chunk, kind)

    monkeypatch.setattr(_featurizer.LLMFeaturizer, "transform_counted", spy)
    monkeypatch.setattr(_featurizer, "PREDICT_CHUNK", 20)
    np.testing.assert_allclose(fitted.predict(texts), whole, rtol=1e-6, atol=1e-7)
    assert sizes == [20, 20, 8]
    np.testing.assert_allclose(fitted.predict_interval(texts, coverage=0.5), whole_bounds,
                               rtol=1e-6, atol=1e-7)
    with pytest.warns(UserWarning, match="^3 of 41 texts are longer") as caught:
        fitted.predict(["word " * 3000] * 3 + texts[:38])  # the long ones in the first chunk
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1


@pytest.mark.parametrize(("param", "value"), [("featurize_batch_size", 0),
                                              ("featurize_batch_size", 2.5),
                                              ("cache", "no"), ("verbose", -1)])
def test_inference_settings_changed_after_fit_are_validated_at_predict(fitted, param, value):
    # set_params checks nothing: featurize_batch_size=0 failed inside range(), cache="no"
    # was read as True.
    model = clone(fitted).set_params(**{param: value})
    model.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    with pytest.raises(ValueError, match=f"'{param}' parameter of RelishTextRegressor"):
        model.predict(TEXTS[:2])


def test_backbone_kwargs_edited_in_place_are_seen_at_predict(tiny_llama):
    # The fitted featurizer held the user's own dict: edited in place and given back with
    # set_params it compared equal to itself, and the old backbone was kept silently.
    kwargs = {"attn_implementation": "eager"}
    model = small_regressor(tiny_llama, backbone_kwargs=kwargs).fit(TEXTS, TARGETS)
    kwargs["num_hidden_layers"] = 1  # another model: refused, not ignored
    model.set_params(backbone_kwargs=kwargs, cache=False)
    with pytest.raises(ValueError, match="backbone"):
        model.predict(TEXTS[:2])


def test_set_params_changes_the_model(tiny_llama):
    estimator = small_regressor(tiny_llama).set_params(n_iterations=4, latent_dim=8)
    estimator.fit(TEXTS, TARGETS)
    assert len(estimator.net_.module_.blocks) == 4
    assert estimator.net_.module_.latents.shape[-1] == 8


@pytest.mark.parametrize("settings", [{}, {"early_stopping": True, "validation_fraction": 0.25},
                                      {"intervals": "cv", "interval_folds": 2}])
def test_fit_and_predict_leave_the_global_torch_seed_alone(tiny_llama, settings):
    # Early stopping and intervals predict inside fit (calibration); every DataLoader
    # iterated without a generator draws from torch's global stream.
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    model = small_regressor(tiny_llama, **settings).fit(TEXTS, TARGETS)
    model.predict(TEXTS[:3])
    assert torch.equal(torch.rand(1), expected)


def test_a_hold_out_of_every_text_names_validation_fraction(tiny_llama):
    # scikit-learn's splitter named its own test_size instead.
    with pytest.raises(ValueError, match="validation_fraction=0.97 of 16 texts holds out"):
        small_regressor(tiny_llama, early_stopping=True,
                        validation_fraction=0.97).fit(TEXTS, TARGETS)


def test_early_stopping_holds_out_and_restores_best(tiny_llama):
    texts = TEXTS * 2
    estimator = small_regressor(tiny_llama, early_stopping=True, validation_fraction=0.25,
                                patience=2, max_epochs=50, lr=0.05)
    estimator.fit(texts, TARGETS * 2)
    history = estimator.net_.history
    assert "valid_loss" in history[0]
    assert len(history) < 50  # stopped early
    best = int(np.argmin(history[:, "valid_loss"]))
    assert history[best, "valid_loss_best"]


def test_pipeline(tiny_llama):
    pipeline = Pipeline([
        ("lowercase", FunctionTransformer(lambda X: [x.lower() for x in X])),
        ("relish", small_regressor(tiny_llama)),
    ])
    pipeline.fit([t.upper() for t in TEXTS], TARGETS)
    direct = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    np.testing.assert_allclose(pipeline.predict(TEXTS), direct.predict(TEXTS), atol=1e-6)


def test_grid_search(tiny_llama):
    search = GridSearchCV(small_regressor(tiny_llama), {"n_iterations": [1, 2], "lr": [1e-3, 1e-2]},
                          cv=KFold(2, shuffle=True, random_state=0))
    search.fit(TEXTS, TARGETS)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and len(set(scores)) > 1  # the candidates differ
    assert search.best_score_ == scores.max()
    # The refit is an ordinary fit of the best candidate on all the data.
    best = small_regressor(tiny_llama, **search.best_params_).fit(TEXTS, TARGETS)
    np.testing.assert_allclose(search.predict(TEXTS), best.predict(TEXTS), atol=1e-6)


def test_cross_val_score(tiny_llama):
    scores = cross_val_score(small_regressor(tiny_llama), TEXTS, TARGETS, cv=3,
                             scoring="neg_mean_absolute_error")
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert cache_info()["llm_texts"] == len(set(TEXTS))


def test_transformed_target_regressor(tiny_llama):
    model = TransformedTargetRegressor(small_regressor(tiny_llama), func=np.expm1,
                                       inverse_func=np.log1p)
    positive = np.log1p(np.exp(np.asarray(TARGETS)))
    model.fit(TEXTS, positive)
    assert np.isfinite(model.predict(TEXTS)).all()


def test_pandas_series_and_dataframe_input(tiny_llama, fitted):
    series = pd.Series(TEXTS, index=np.arange(100, 100 + len(TEXTS)))
    np.testing.assert_allclose(fitted.predict(series), fitted.predict(TEXTS))
    frame = pd.DataFrame({"review": TEXTS})
    np.testing.assert_allclose(fitted.predict(frame), fitted.predict(TEXTS))
    small_regressor(tiny_llama).fit(series, pd.Series(TARGETS))


def test_text_pairs_in_every_form(tiny_llama):
    pairs = [(a, b) for a, b in zip(TEXTS, TEXTS[::-1], strict=True)]
    model = small_regressor(tiny_llama, prompt="{text_a} | {text_b}").fit(pairs, TARGETS)
    expected = model.predict(pairs)
    as_array = np.array(pairs, dtype=object)
    as_frame = pd.DataFrame(pairs, columns=["a", "b"])
    np.testing.assert_allclose(model.predict(as_array), expected)
    np.testing.assert_allclose(model.predict(as_frame), expected)
    assert model.input_kind_ == "pair"
    with pytest.raises(ValueError, match="fitted on text pairs"):
        model.predict(TEXTS)


def test_pairs_are_ordered(tiny_llama):
    pairs = [("good movie", "awful plot")]
    model = small_regressor(tiny_llama).fit([(a, b) for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1],
                                                                     strict=True)], TARGETS)
    assert model.predict(pairs)[0] != model.predict([(b, a) for a, b in pairs])[0]


def test_verbose_shows_progress(tiny_llama, capsys, monkeypatch):
    # Captured output is no terminal: the epoch table comes without colour codes (piped
    # to a log file, every line had them); where colour shows, skorch's colours stay.
    monkeypatch.delenv("NO_COLOR", raising=False)
    small_regressor(tiny_llama, verbose=1, early_stopping=True).fit(TEXTS, TARGETS)
    captured = capsys.readouterr()
    assert "Featurizing" in captured.err
    assert "train_loss" in captured.out and "valid_loss" in captured.out
    assert "\x1b[" not in captured.out
    monkeypatch.setattr("sklearn_relish._console.colours_shown", lambda: True)
    small_regressor(tiny_llama, verbose=1, early_stopping=True).fit(TEXTS, TARGETS)
    assert "\x1b[" in capsys.readouterr().out
    small_regressor(tiny_llama, verbose=0).fit(TEXTS, TARGETS)
    assert capsys.readouterr().out == ""  # the sink never bypasses verbose=0


def test_mse_loss_and_options_train(tiny_llama):
    model = small_regressor(tiny_llama, loss="mse", n_latents=2, share_weights=True,
                            input_norm=True, dropout=0.1)
    assert np.isfinite(model.fit(TEXTS, TARGETS).predict(TEXTS)).all()
    assert isinstance(model.net_.criterion_, __import__("torch").nn.MSELoss)


def test_paper_configuration_is_one_switch_away(tiny_llama):
    def head_params(**params):
        model = RelishTextRegressor(tiny_llama, max_epochs=1, early_stopping=False, **params)
        return sum(p.numel() for p in model.fit(TEXTS, TARGETS).net_.module_.parameters())

    paper = 32 * 256 + 256 + 256 + 3 * 789_760 + 257
    assert head_params(layer=-1, input_norm=False) == paper
    assert head_params() == paper + 2 * 32  # the default input LayerNorm's weight and bias
