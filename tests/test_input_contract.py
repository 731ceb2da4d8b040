"""The input contract: bad X, y and parameters fail fast, clearly and before any LLM work.

Every rejected input must raise the right exception type with a message that names the
problem (and the offending row), before a backbone is loaded or run: ``fit`` leaves the
backbone registry empty and ``cache_info()["llm_texts"]`` at zero. Accepted oddities
(empty, whitespace-only and control-character texts, pandas input, over-long texts) must
give finite predictions.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import TARGETS, TEXTS, WORDS, small_regressor
from sklearn.exceptions import DataConversionWarning

from sklearn_relish import _backbones, cache_info, clear_backbones, clear_cache

N = len(TEXTS)


def fit_fails(backbone, exception, match, X, y, **params):
    """Fit must raise ``exception`` matching ``match`` without loading or running a backbone."""
    clear_backbones()
    clear_cache()
    with pytest.raises(exception, match=match) as info:
        small_regressor(backbone, **params).fit(X, y)
    assert _backbones._REGISTRY == {}, "a backbone was loaded before the input was checked"
    assert cache_info()["llm_texts"] == 0
    return info


def predict_fails(model, exception, match, X):
    """Predict must raise ``exception`` matching ``match`` without running the backbone."""
    clear_cache()
    with pytest.raises(exception, match=match) as info:
        model.predict(X)
    assert cache_info()["llm_texts"] == 0
    return info


@pytest.fixture(scope="module")
def fitted(tiny_llama):
    return small_regressor(tiny_llama).fit(TEXTS, TARGETS)


# -- X: one string, missing values, non-strings ---------------------------------------------
def test_fit_single_string_names_the_fix(tiny_llama):
    fit_fails(tiny_llama, TypeError, r"single string.*\[text\]", "good movie", [1.0])


def test_predict_single_string_names_the_fix(fitted):
    predict_fails(fitted, TypeError, r"single string.*\[text\]", "good movie")


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA, pd.NaT],
                         ids=["None", "nan", "np.nan", "pd.NA", "pd.NaT"])
def test_fit_missing_text_names_the_row(tiny_llama, missing):
    X = [*TEXTS[:5], missing, *TEXTS[6:]]
    fit_fails(tiny_llama, ValueError, r"X\[5\] is missing", X, TARGETS)


def test_predict_missing_text_in_series_names_the_row(fitted):
    X = pd.Series(["good", "bad", None, "fine"], dtype="string")
    predict_fails(fitted, ValueError, r"X\[2\] is missing", X)


@pytest.mark.parametrize("value", [3, 2.5, b"bytes", ("a", "b"), ["a"]],
                         ids=["int", "float", "bytes", "tuple", "list"])
def test_fit_non_string_entry_names_the_row(tiny_llama, value):
    X = [*TEXTS[:3], value, *TEXTS[4:]]
    fit_fails(tiny_llama, TypeError, r"X\[3\] is a .*(not a str|but X\[0\] is a str)", X,
              TARGETS)


@pytest.mark.parametrize("pairs", [False, True])
def test_bytes_are_told_to_decode_not_astype_str(tiny_llama, pairs):
    # astype(str) turns b"good" into the text "b'good'"; as a pair's second cell the
    # message told the user to pass the text column alone.
    X = [(t, t) for t in TEXTS] if pairs else list(TEXTS)
    X[2] = (TEXTS[2], b"good") if pairs else b"good"
    info = fit_fails(tiny_llama, TypeError, r"X\[2(, 1)?\] is a bytes .* decode it first", X,
                     TARGETS)
    assert "astype" not in str(info.value) and "text pairs" not in str(info.value)


def test_predict_int_entries_name_the_row(fitted):
    predict_fails(fitted, TypeError, r"X\[1\] is a int", ["good", 7])


def test_unordered_set_is_rejected(tiny_llama):
    fit_fails(tiny_llama, TypeError, "ordered", set(TEXTS), TARGETS)


# -- X: pairs with the wrong shape -------------------------------------------------------------
def test_three_column_dataframe_is_rejected(tiny_llama):
    X = pd.DataFrame({"a": TEXTS, "b": TEXTS, "c": TEXTS})
    fit_fails(tiny_llama, ValueError, "3 columns", X, TARGETS)


def test_ragged_tuples_name_the_row(tiny_llama):
    X = [(t, t) for t in TEXTS]
    X[4] = (TEXTS[4], TEXTS[4], "extra")
    fit_fails(tiny_llama, ValueError, r"X\[4\] has 3 parts", X, TARGETS)


def test_pairs_mixed_with_single_texts_name_the_odd_row(tiny_llama):
    # The message had named X[0], a valid pair, and advised astype(str), which turns a
    # pair into the one text "('a', 'b')".
    X = [(t, t) for t in TEXTS]
    X[3] = TEXTS[3]
    info = fit_fails(tiny_llama, TypeError, r"X\[3\] is a str but X\[0\] is a tuple", X,
                     TARGETS)
    assert "astype(str)" not in str(info.value)


def test_a_one_column_frame_of_pairs_asks_for_two_columns(tiny_llama):
    X = pd.DataFrame({"pair": [(t, t) for t in TEXTS]})
    info = fit_fails(tiny_llama, TypeError, r"one column .* is a tuple: give text pairs as "
                     r"two columns", X, TARGETS)
    assert "astype(str)" not in str(info.value)


def test_a_bad_row_of_a_relabelled_series_is_named_with_its_label(tiny_llama):
    X = pd.Series(TEXTS, index=range(N - 1, -1, -1))
    X.iloc[2] = None
    fit_fails(tiny_llama, ValueError, rf"X\[2\] \(index label {N - 3}\) is missing", X,
              TARGETS)


def test_a_missing_index_label_neither_hides_the_problem_nor_refuses_valid_texts(fitted):
    # pd.NA == 2 is NA, whose truth value raised "boolean value of NA is ambiguous" while
    # naming every row, valid or not.
    index = pd.array([7, None, 9, 3], dtype="Int64")
    valid = pd.Series(TEXTS[:4], index=index)
    np.testing.assert_allclose(fitted.predict(valid), fitted.predict(TEXTS[:4]), atol=1e-6)
    bad = pd.Series([TEXTS[0], None, *TEXTS[2:4]], index=index)
    predict_fails(fitted, ValueError, r"X\[1\] \(index label <NA>\) is missing", bad)


def test_a_bad_cell_of_a_frame_of_pairs_names_its_column(tiny_llama):
    X = pd.DataFrame({"premise": TEXTS, "hypothesis": TEXTS[::-1]}, index=range(10, 10 + N))
    X.iloc[3, 1] = None
    fit_fails(tiny_llama, ValueError,
              r"X\[3, 1\] \(index label 13, column 'hypothesis'\) is missing", X, TARGETS)


def test_a_bad_cell_of_an_arrow_table_names_its_column_not_its_data(tiny_llama):
    pa = pytest.importorskip("pyarrow")
    X = pa.table({"premise": TEXTS, "hypothesis": [*TEXTS[:3], None, *TEXTS[4:]]})
    info = fit_fails(tiny_llama, ValueError, r"X\[3, 1\] \(column 'hypothesis'\) is missing",
                     X, TARGETS)
    assert "ChunkedArray" not in str(info.value)


def test_arrow_arrays_are_texts(fitted):
    pa = pytest.importorskip("pyarrow")
    expected = fitted.predict(TEXTS[:4])
    for X in (pa.array(TEXTS[:4]), pa.chunked_array([TEXTS[:2], TEXTS[2:4]])):
        np.testing.assert_allclose(fitted.predict(X), expected, atol=1e-6)


def test_predict_pairs_on_a_single_text_model(fitted):
    predict_fails(fitted, ValueError, r"X has 2 column\(s\) but .* fitted on single texts",
                  [("good", "bad"), ("fine", "okay")])


# -- y ----------------------------------------------------------------------------------------
def test_x_and_y_of_different_lengths(tiny_llama):
    fit_fails(tiny_llama, ValueError, rf"{N} texts but y has {N - 1} rows", TEXTS, TARGETS[:-1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None], ids=["nan", "inf", "-inf", "None"])
def test_non_finite_y_names_the_row(tiny_llama, bad):
    y = list(TARGETS)
    y[7] = bad
    fit_fails(tiny_llama, ValueError, r"first at y\[7\]", TEXTS, y)


@pytest.mark.parametrize("y, row", [
    (["high"] * N, 0),
    ([*TARGETS[:-1], "1.5"], N - 1),
    ([*TARGETS[:N - 3], 2j, *TARGETS[N - 2:]], N - 3),
], ids=["words", "numeric-string", "complex"])
def test_non_numeric_y_names_the_row(tiny_llama, y, row):
    fit_fails(tiny_llama, ValueError, rf"y must be real numbers; y\[{row}\]", TEXTS, y)


def test_three_dimensional_y_is_rejected(tiny_llama):
    y = np.asarray(TARGETS).reshape(-1, 1, 1)
    fit_fails(tiny_llama, ValueError, r"y must be 1-D .* or 2-D .*\(16, 1, 1\)", TEXTS, y)


def test_overflowing_y_is_rejected(tiny_llama):
    # Finite, but their sum (and so their mean) overflows float64. Targets like
    # TARGETS * 1e307, whose plain std overflows, are now standardised and learned.
    y = np.where(np.arange(len(TARGETS)) % 2, 1.7e308, 1.6e308)
    fit_fails(tiny_llama, ValueError, "too large to standardise", TEXTS, y)


def test_column_vector_y_is_ravelled_with_a_warning(tiny_llama):
    y = np.asarray(TARGETS).reshape(-1, 1)
    with pytest.warns(DataConversionWarning, match="column-vector y was passed"):
        model = small_regressor(tiny_llama).fit(TEXTS, y)
    reference = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    np.testing.assert_array_equal(model.predict(TEXTS), reference.predict(TEXTS))


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_samples(tiny_llama, n):
    fit_fails(tiny_llama, ValueError, rf"At least 2 texts.*got {n}", TEXTS[:n], TARGETS[:n])


def test_constant_y_predicts_the_constant(tiny_llama):
    model = small_regressor(tiny_llama).fit(TEXTS, [4.2] * N)
    np.testing.assert_allclose(model.predict(TEXTS[:5] + ["unseen text"]), 4.2, atol=1e-6)


# -- parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize("params, match", [
    ({"loss": "l1"}, "loss"),
    ({"lr": -1}, "'lr' parameter"),
    ({"max_length": 0}, "max_length"),
    ({"backbone_dtype": "float64"}, "backbone_dtype"),
    ({"prompt": "Review: no field"}, r"\{text\}"),
    ({"prompt": "{text} and {other}"}, r"other"),
    ({"latent_dim": 10, "n_heads": 3}, "divisible"),
], ids=["loss", "lr", "max_length", "dtype", "prompt-no-field", "prompt-extra-field", "heads"])
def test_invalid_parameters_fail_before_loading(tiny_llama, params, match):
    fit_fails(tiny_llama, ValueError, match, TEXTS, TARGETS, **params)


@pytest.mark.parametrize("name", ["n_heads", "max_epochs", "batch_size", "train_top_layers",
                                  "max_length", "interval_folds"])
def test_a_bool_is_not_a_count(tiny_llama, name):
    # True is an Integral: max_epochs=True had trained one epoch, n_heads=True failed
    # inside torch and train_top_layers=True inside transformers' config.
    fit_fails(tiny_llama, TypeError, f"'{name}' parameter .* must be an int", TEXTS, TARGETS,
              **{name: True})


def test_numpy_ints_work_as_counts_as_grid_search_passes_them(tiny_llama):
    model = small_regressor(tiny_llama, layer=-1, train_top_layers=np.int64(1),
                            max_epochs=np.int64(2), n_heads=np.int32(2))
    assert np.all(np.isfinite(model.fit(TEXTS, TARGETS).predict(TEXTS[:3])))


@pytest.mark.parametrize("delta", [np.float32(0.5), np.int64(2)])
def test_numpy_huber_delta_trains_as_the_float(tiny_llama, delta):
    # torch's HuberLoss refused numpy scalars, after the LLM had run (a grid's values).
    numpy_fit = small_regressor(tiny_llama, huber_delta=delta, random_state=0)
    plain_fit = small_regressor(tiny_llama, huber_delta=float(delta), random_state=0)
    np.testing.assert_array_equal(numpy_fit.fit(TEXTS, TARGETS).predict(TEXTS[:3]),
                                  plain_fit.fit(TEXTS, TARGETS).predict(TEXTS[:3]))


def test_invalid_device_string_is_a_value_error(tiny_llama):
    fit_fails(tiny_llama, ValueError, "device='gpu' is not a valid torch device", TEXTS,
              TARGETS, device="gpu")


# -- accepted oddities ------------------------------------------------------------------------
def test_empty_and_whitespace_texts_are_allowed(tiny_llama):
    X = ["", " ", "\t\n", "   ", *TEXTS[4:]]
    model = small_regressor(tiny_llama).fit(X, TARGETS)
    assert np.isfinite(model.predict(["", "  ", "\n", "good"])).all()


def test_control_characters_are_accepted(fitted):
    X = ["\x00", "nul\x00inside", "\x07bell", "\u202eright-to-left override", "\x1b[31m"]
    prediction = fitted.predict(X)
    assert prediction.shape == (5,) and np.isfinite(prediction).all()


def test_lone_surrogate_names_the_row(tiny_llama, fitted):
    X = [*TEXTS[:2], "ok \ud800 broken", *TEXTS[3:]]
    fit_fails(tiny_llama, ValueError, r"X\[2\] contains invalid Unicode", X, TARGETS)
    predict_fails(fitted, ValueError, r"X\[1\] contains invalid Unicode", ["ok", "\ud800"])


def test_lone_surrogate_in_the_prompt_is_refused(tiny_llama):
    # \ud800 failed deep in the tokenizer; \udc00, the pair mark, silently split every
    # single text into a tokenizer pair.
    for bad in ("Review \ud800 {text}", "Review \udc00 {text}"):
        fit_fails(tiny_llama, ValueError, "prompt contains invalid Unicode", TEXTS, TARGETS,
                  prompt=bad)


def test_mixed_column_names_are_refused_before_loading(tiny_llama):
    # scikit-learn's feature-name check ran only when fit published its attributes.
    frame = pd.DataFrame({"review": TEXTS, 1: TEXTS[::-1]})
    fit_fails(tiny_llama, TypeError, "Feature names are only supported if all input "
              "features have string names", frame, TARGETS)


def test_truncation_warning_counts_the_texts(fitted):
    long = "the plot was great but the acting was awful " * 20  # > 64 tokens
    X = ["good", long, "bad", long + "!", "fine"]
    with pytest.warns(UserWarning, match=r"2 of 5 texts are longer than max_length"):
        prediction = fitted.predict(X)
    assert np.isfinite(prediction).all()


def test_every_call_that_truncates_warns_at_the_callers_line(fitted):
    # The warning was filed under a line inside the package (predict's loop) or inside
    # scikit-learn's set_output wrapper: Python's default filter then showed the first
    # call's and hid every later one's, although the same texts were cut again.
    import warnings

    from sklearn_relish import LLMTextEncoder

    long = "the plot was great but the acting was awful " * 20
    encoder = LLMTextEncoder(fitted.backbone, max_length=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        fitted.predict([long, "fine"])
        fitted.predict([long, "fine"])
        encoder.fit_transform([long, "fine"])
        encoder.transform([long, "fine"])
    truncations = [w for w in caught if "were truncated" in str(w.message)]
    assert len(truncations) == 4
    assert {w.filename for w in truncations} == {__file__}


def test_a_max_length_beyond_the_model_says_so_when_texts_are_cut(tiny_llama):
    # The model holds 64 positions: asking for 100,000 cuts at 64, and "raise max_length"
    # was no advice to someone who had.
    from sklearn_relish import LLMTextEncoder

    with pytest.warns(UserWarning, match=r"max_length=64 tokens.*max_length=100000 is "
                                         r"beyond the model's 64 positions"):
        LLMTextEncoder(tiny_llama, max_length=100_000).fit_transform(["very boring " * 80])


def test_truncation_warning_on_fit(tiny_llama):
    X = list(WORDS[:N])  # one word each: a few tokens
    X[0] = X[1] = X[2] = "very boring " * 80
    with pytest.warns(UserWarning, match=rf"3 of {N} texts are longer than max_length=8"):
        small_regressor(tiny_llama, max_length=8).fit(X, TARGETS)


def test_million_character_text_keeps_its_start(fitted):
    huge = ("i love this film but the plot was dull " * 30_000)[:1_000_000]
    with pytest.warns(UserWarning, match="1 of 2 texts"):
        prediction = fitted.predict([huge, "good"])
    # Truncation keeps the first tokens: a 2,000-character prefix (also far over the
    # limit) reads the same tokens, so the same prediction.
    with pytest.warns(UserWarning, match="1 of 1 texts"):
        prefix = fitted.predict([huge[:2_000]])
    assert np.isfinite(prediction).all()
    np.testing.assert_allclose(prediction[0], prefix[0], atol=1e-6)


# -- pandas -----------------------------------------------------------------------------------
def test_pandas_series_and_one_column_frame_are_texts(fitted):
    expected = fitted.predict(TEXTS[:6])
    index = range(100, 106)  # a non-default index must not matter
    series = pd.Series(TEXTS[:6], index=index)
    frame = pd.DataFrame({"text": TEXTS[:6]}, index=index)
    np.testing.assert_allclose(fitted.predict(series), expected, atol=1e-6)
    np.testing.assert_allclose(fitted.predict(frame), expected, atol=1e-6)
    # Rows of one text, as frame.values.tolist() gives them, are texts too (they were
    # refused with "X has 1 columns; give one column of texts").
    for rows in (frame.to_numpy().tolist(), [(text,) for text in TEXTS[:6]]):
        np.testing.assert_allclose(fitted.predict(rows), expected, atol=1e-6)


def test_two_column_frame_is_pairs(tiny_llama):
    frame = pd.DataFrame({"a": TEXTS, "b": TEXTS[::-1]})
    y = pd.Series(TARGETS, index=range(50, 50 + N))
    model = small_regressor(tiny_llama).fit(frame, y)
    assert model.input_kind_ == "pair"
    tuples = list(zip(TEXTS[:4], TEXTS[::-1][:4], strict=True))
    np.testing.assert_allclose(model.predict(frame.head(4)), model.predict(tuples), atol=1e-6)
    with pytest.raises(ValueError, match=r"X has 1 column\(s\) but .* on text pairs"):
        model.predict(TEXTS[:2])
    # An empty list has no columns to disagree with: no pairs, no predictions. Nor has
    # an empty Series or 1-D array (a mask that selected nothing), which were refused.
    import pyarrow as pa

    for empty in ([], pd.Series([], dtype=object), np.array([], dtype=object),
                  pa.array([], pa.string()), pa.chunked_array([], pa.string())):
        assert model.predict(empty).shape == (0,)
    with pytest.raises(ValueError, match=r"yet now missing:\n- b"):
        model.predict(frame[["a"]].iloc[:0])  # an empty frame still has its one column


def test_a_numeric_second_column_is_not_advised_into_text(tiny_llama):
    # A text column beside a numeric one: astype(str), as advised, silently fitted a
    # model of (text, "3.0") pairs.
    X = pd.DataFrame({"text": TEXTS, "likes": np.arange(N, dtype=float)})
    info = fit_fails(tiny_llama, TypeError, r"column 'likes'\) is a float .* a two-column X "
                     r"is read as text pairs .* pass the text column alone", X, TARGETS)
    assert "astype(str)" not in str(info.value)


def test_no_warnings_for_clean_input(fitted):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted.predict(TEXTS[:3])
