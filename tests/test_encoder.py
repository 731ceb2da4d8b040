"""LLMTextEncoder: pooled LLM states as scikit-learn features, sharing RELISH's cache."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import TARGETS, TEXTS, small_regressor
from sklearn.base import clone
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline

from sklearn_relish import LLMTextEncoder, cache_info
from sklearn_relish._featurizer import LLMFeaturizer


def states_of(backbone, texts, layer):
    return LLMFeaturizer(backbone, layer=layer, cache=False).transform(texts, "single")


def test_mean_and_last_pooling_are_what_they_say(tiny_llama):
    texts = ["good movie", "the plot was great", ""]
    states = states_of(tiny_llama, texts, -1)
    both = LLMTextEncoder(tiny_llama, layer=-1, pooling="mean+last").fit_transform(texts)
    width = states[0].shape[1]
    assert both.shape == (3, 2 * width) and both.dtype == np.float32
    for row, s in enumerate(states[:2]):
        np.testing.assert_allclose(both[row, :width], s.float().mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(both[row, width:], s[-1].float().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(both[2], 0)  # an empty text: zeros, not NaN


def test_several_layers_are_concatenated_with_names(tiny_llama):
    encoder = LLMTextEncoder(tiny_llama, layer=[0, 0.5, -1])
    features = encoder.fit_transform(TEXTS)
    names = encoder.get_feature_names_out()
    assert encoder.layers_ == [0, 1, 2]
    assert features.shape == (len(TEXTS), 3 * encoder.hidden_size_) == (len(TEXTS), len(names))
    assert names[0] == "mean_layer0_0" and names[-1] == f"mean_layer2_{encoder.hidden_size_ - 1}"
    middle = states_of(tiny_llama, TEXTS[:1], 1)[0].float().mean(0).numpy()
    np.testing.assert_allclose(features[0, 32:64], middle, rtol=1e-6)


def test_two_names_of_one_layer_are_refused(tiny_llama):
    # 0.5 and 1 are both hidden state 1 of the 2-layer backbone: its columns twice.
    with pytest.raises(ValueError, match="0.5 and 1 are both hidden state 1"):
        LLMTextEncoder(tiny_llama, layer=[0.5, 1]).fit(TEXTS)


def test_pooling_changed_after_fit_waits_for_the_next_fit(tiny_llama):
    # The layers and the PCA are fitted; so is the pooling: set_params alone must not
    # feed a fitted Ridge other features under the same names.
    encoder = LLMTextEncoder(tiny_llama, layer=-1, pooling="mean").fit(TEXTS)
    before, names = encoder.transform(TEXTS[:3]), encoder.get_feature_names_out()
    encoder.set_params(pooling="last")
    np.testing.assert_array_equal(encoder.transform(TEXTS[:3]), before)
    np.testing.assert_array_equal(encoder.get_feature_names_out(), names)
    assert encoder.fit(TEXTS).get_feature_names_out()[0].startswith("last_")


def test_feature_names_refuse_other_input_names(tiny_llama):
    encoder = LLMTextEncoder(tiny_llama).fit(pd.DataFrame({"review": TEXTS}))
    assert len(encoder.get_feature_names_out(["review"])) == encoder.hidden_size_
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        encoder.get_feature_names_out(["zzz"])


def test_pipeline_with_ridge_shares_the_regressors_cache(tiny_llama):
    small_regressor(tiny_llama, layer=0.5).fit(TEXTS, TARGETS)
    ran = cache_info()["llm_texts"]
    probe = make_pipeline(LLMTextEncoder(tiny_llama, layer=0.5), RidgeCV())
    search = GridSearchCV(probe, {"ridgecv__fit_intercept": [True, False]}, cv=KFold(3))
    search.fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == ran  # every text came from the regressor's cache
    assert search.predict(TEXTS[:3]).shape == (3,)


def test_distinct_texts_run_once(tiny_llama):
    LLMTextEncoder(tiny_llama).fit_transform(TEXTS[:4] * 5)
    assert cache_info()["llm_texts"] == 4


def test_pandas_output_keeps_the_index_and_names(tiny_llama):
    frame = pd.DataFrame({"review": TEXTS}, index=range(100, 100 + len(TEXTS)))
    encoder = LLMTextEncoder(tiny_llama, n_components=3).set_output(transform="pandas")
    out = encoder.fit_transform(frame)
    assert list(out.columns) == ["pc0", "pc1", "pc2"]
    assert list(out.index) == list(frame.index)
    assert list(encoder.feature_names_in_) == ["review"]
    pd.testing.assert_frame_equal(encoder.transform(frame), out, atol=1e-5)


def test_pca_needs_enough_texts_and_says_so_before_the_llm_runs(tiny_llama):
    with pytest.raises(ValueError, match="n_components=8 needs at least .* got 5 texts with "
                                         "64 features"):
        LLMTextEncoder(tiny_llama, n_components=8, pooling="mean+last").fit(TEXTS[:5])
    assert cache_info()["llm_texts"] == 0


def test_one_truncation_warning_whatever_the_number_of_layers(tiny_llama):
    encoder = LLMTextEncoder(tiny_llama, layer=[0, 1, -1], max_length=8)
    with pytest.warns(UserWarning, match="1 of 2 texts are longer") as caught:
        encoder.fit_transform(["very boring " * 20, "good"])
    assert len([w for w in caught if "longer than max_length" in str(w.message)]) == 1


def test_the_truncation_warning_points_at_the_users_line_through_a_cached_pipeline(
        tiny_llama, tmp_path):
    # Pipeline(memory=...) calls through joblib: the warning pointed at joblib/memory.py.
    pipeline = make_pipeline(LLMTextEncoder(tiny_llama, max_length=8), RidgeCV(),
                             memory=str(tmp_path))
    with pytest.warns(UserWarning, match="longer than max_length") as caught:
        pipeline.fit(["very boring " * 20, *TEXTS[:5]], TARGETS[:6])
    assert caught[0].filename == __file__


def test_a_long_first_text_of_a_joined_pair_is_said_to_cut_the_second(tiny_llama, minilm):
    # With a prompt (or a decoder's newline join) a pair is cut at its end: text_b went
    # first, entirely here, and the warning spoke of texts in general.
    pairs = [("very boring " * 20, "great"), ("good", "bad")]
    with pytest.warns(UserWarning, match=r"1 of 2 pairs are longer .* The cut falls on "
                                         r"text_b first"):
        LLMTextEncoder(tiny_llama, max_length=16).fit_transform(pairs)
    # The tokenizer's own pair encoding cuts both sides, and a prompt with text_b first
    # cuts text_a first: no such sentence.
    for encoder in (LLMTextEncoder(minilm, max_length=16),
                    LLMTextEncoder(tiny_llama, max_length=16, prompt="{text_b}\n{text_a}")):
        with pytest.warns(UserWarning, match="1 of 2 pairs are longer") as caught:
            encoder.fit_transform(pairs)
        assert "text_b" not in str(caught[0].message)


def test_no_texts_fit_is_refused_and_transform_is_empty(tiny_llama):
    with pytest.raises(ValueError, match="X has no texts"):
        LLMTextEncoder(tiny_llama).fit([])
    assert LLMTextEncoder(tiny_llama).fit(TEXTS).transform([]).shape == (0, 32)
    reduced = LLMTextEncoder(tiny_llama, n_components=2).fit(TEXTS)
    assert reduced.transform([]).shape == (0, 2)  # PCA itself refuses 0 samples


def test_pickles_without_weights_and_transforms_the_same(tiny_llama):
    encoder = LLMTextEncoder(tiny_llama, layer=[0.5, -1]).fit(TEXTS)
    buffer = io.BytesIO()
    joblib.dump(encoder, buffer)
    assert buffer.getbuffer().nbytes < 20_000  # identity only: the backbone never travels
    buffer.seek(0)
    restored = joblib.load(buffer)
    np.testing.assert_array_equal(restored.transform(TEXTS), encoder.transform(TEXTS))


def test_pairs_and_their_prompt(tiny_llama):
    pairs = list(zip(TEXTS, TEXTS[::-1], strict=True))
    encoder = LLMTextEncoder(tiny_llama, prompt="{text_a} || {text_b}").fit(pairs)
    joined = [f"{a} || {b}" for a, b in pairs]
    np.testing.assert_allclose(encoder.transform(pairs),
                               LLMTextEncoder(tiny_llama).fit_transform(joined), rtol=1e-6)
    with pytest.raises(ValueError, match="fitted on text pairs"):
        encoder.transform(TEXTS)


@pytest.mark.parametrize("params, match", [
    ({"layer": []}, "empty list"),
    ({"layer": [0.5, 2.5]}, "neither a whole number"),
    ({"pooling": "max"}, "pooling"),
    ({"prompt": "{text_a}"}, "prompt"),
])
def test_bad_parameters_fail_before_loading(params, match):
    with pytest.raises(ValueError, match=match):
        LLMTextEncoder("no-such-backbone", **params).fit(TEXTS)


def test_missing_text_names_the_row(tiny_llama):
    with pytest.raises(ValueError, match=r"X\[2\] is missing"):
        LLMTextEncoder(tiny_llama).fit(["a", "b", None])


def test_clone_and_params(tiny_llama):
    encoder = LLMTextEncoder(tiny_llama, layer=[1, -1], pooling="last").fit(TEXTS)
    copy = clone(encoder)
    assert copy.get_params() == encoder.get_params()
    assert not hasattr(copy, "featurizers_")


def test_transform_pools_one_chunk_of_texts_at_a_time(tiny_llama, monkeypatch):
    # Every text's token states were held at once before pooling: only pooled rows need to.
    from sklearn_relish import _featurizer

    texts = [f"{text} {i}" for i, text in enumerate(TEXTS * 3)]
    encoder = LLMTextEncoder(tiny_llama, layer=[-1, 1], pooling="mean+last").fit(texts)
    whole = encoder.transform(texts)
    sizes = []
    counted = LLMFeaturizer.transform_counted

    def spy(self, chunk, kind):
        sizes.append(len(chunk))
        return counted(self, chunk, kind)

    monkeypatch.setattr(LLMFeaturizer, "transform_counted", spy)
    monkeypatch.setattr(_featurizer, "PREDICT_CHUNK", 20)
    np.testing.assert_array_equal(encoder.transform(texts), whole)
    assert sizes == [20, 20, 8] * 2  # per layer


def test_pca_features_follow_the_encoders_output_setting_not_the_global_one(tiny_llama):
    # Under set_config(transform_output="pandas") the PCA inside returned its own frame
    # (pca0.., index 0..n): the encoder's set_output was overridden, the input's index
    # lost, and ColumnTransformer refused to join it with the other columns.
    from sklearn import config_context
    from sklearn.compose import make_column_transformer
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame({"text": TEXTS, "number": np.arange(len(TEXTS), dtype=float)},
                         index=np.arange(100, 100 + len(TEXTS)))
    encoder = LLMTextEncoder(tiny_llama, n_components=3)
    with config_context(transform_output="pandas"):
        joined = make_column_transformer((encoder, "text"), (StandardScaler(), ["number"]))
        out = joined.fit_transform(frame)
        assert list(out.index) == list(frame.index)
        assert [c.split("__")[-1] for c in out.columns] == ["pc0", "pc1", "pc2", "number"]
        plain = clone(encoder).set_output(transform="default")
        features = plain.fit_transform(frame["text"])
        assert type(features) is np.ndarray and features.dtype == np.float32
        assert type(plain.transform(frame["text"])) is np.ndarray


def test_fit_transform_refuses_fit_parameters_as_fit_does(tiny_llama):
    # A sample_weight routed to the encoder was silently ignored by fit_transform.
    encoder = LLMTextEncoder(tiny_llama)
    for method in (encoder.fit, encoder.fit_transform):
        with pytest.raises(TypeError, match="sample_weight"):
            method(TEXTS, None, sample_weight=np.ones(len(TEXTS)))


def test_the_dtype_tag_says_features_are_float32_whatever_the_input():
    assert LLMTextEncoder().__sklearn_tags__().transformer_tags.preserves_dtype == []
