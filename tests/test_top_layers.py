"""train_top_layers: the backbone's top blocks fine-tuned under the head.

The copies must reproduce the frozen model exactly before training (else the head trains
on something else than the backbone's states), leave the frozen backbone and the cache
untouched, pickle without any frozen weight, and keep a prediction independent of its
batch. Architectures whose blocks cannot be run apart are refused, not approximated.
"""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, _train_tokenizer, small_regressor

from sklearn_relish import LLMTextEncoder, _top_layers, cache_info
from sklearn_relish._backbones import load_backbone
from sklearn_relish._top_layers import moved_parameter

LONG = "the plot was great but the acting was awful and the ending dragged on for ages"


def _loaded(backbone):
    return load_backbone(backbone, device=torch.device("cpu"), dtype=torch.float32)


@torch.no_grad()
def _copy_error(top, loaded, first: int, n_blocks: int) -> float:
    """Relative error of the copied blocks against the frozen model's own hidden states,
    computed here rather than by the module's probe: one text at a time (no padding to
    get wrong), float32 states in, blocks ``first .. first + n_blocks - 1`` run."""
    errors = []
    for text in ["good", "the plot was great but the acting was awful", LONG]:
        encoded = loaded.tokenizer([text], return_tensors="pt")
        hidden = loaded.model(**encoded, output_hidden_states=True).hidden_states
        mask = encoded["attention_mask"].bool()
        got = _top_layers.run_top(top, hidden[first], mask)
        want = hidden[first + n_blocks]
        errors.append(float((got - want).norm() / want.norm()))
    return max(errors)


def _state_digest(model) -> float:
    return float(sum(p.double().sum() for p in model.parameters()))


@pytest.mark.parametrize("first,n_blocks", [(0, 2), (1, 1), (0, 1)])
def test_copied_blocks_reproduce_the_frozen_llama(tiny_llama, first, n_blocks):
    loaded = _loaded(tiny_llama)
    top = _top_layers.checked_top(loaded, first, n_blocks, torch.device("cpu"))
    # Checked against the frozen model here, not by checked_top's own probe, which decided
    # it was good enough.
    assert _copy_error(top, loaded, first, n_blocks) < 1e-4
    assert sum(p.requires_grad for p in top.parameters()) > 0


@pytest.mark.parametrize("architecture", ["gemma3", "qwen3", "mistral"])
def test_copied_blocks_reproduce_other_decoders(tmp_path, architecture):
    # Gemma 3 alternates sliding-window and full attention per layer: the copies must keep
    # their own layers' types (the window of 4 is shorter than the probe's texts).
    from transformers import (
        Gemma3TextConfig,
        Gemma3TextModel,
        MistralConfig,
        MistralModel,
        Qwen3Config,
        Qwen3Model,
    )

    tokenizer = _train_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    if architecture == "gemma3":
        model = Gemma3TextModel(Gemma3TextConfig(**common, sliding_window=4, layer_types=[
            "sliding_attention", "full_attention", "sliding_attention", "full_attention"]))
    elif architecture == "qwen3":
        model = Qwen3Model(Qwen3Config(**common))
    else:
        model = MistralModel(MistralConfig(**common))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = _loaded(str(tmp_path))
    for first, n_blocks in [(1, 2), (3, 1)]:
        top = _top_layers.checked_top(loaded, first, n_blocks, torch.device("cpu"))
        assert _copy_error(top, loaded, first, n_blocks) < 1e-4


def test_copied_blocks_reproduce_bert_without_its_embeddings(minilm):
    loaded = _loaded(minilm)
    top = _top_layers.checked_top(loaded, 4, 2, torch.device("cpu"))
    assert _copy_error(top, loaded, 4, 2) < 1e-4
    # Neither BERT's embeddings nor its pooler are copied.
    assert not any("embeddings" in name or "pooler" in name
                   for name, _ in top.named_parameters())


def _tiny_encoder(folder, minilm, architecture: str) -> str:
    """A random DistilBERT, or an ELECTRA whose embeddings are narrower than its blocks
    (as electra-small's: projected up after the embeddings), with MiniLM's tokenizer."""
    from transformers import (
        AutoTokenizer,
        DistilBertConfig,
        DistilBertModel,
        ElectraConfig,
        ElectraModel,
    )

    from sklearn_relish._embedded import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(minilm))
    torch.manual_seed(0)
    if architecture == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=len(tokenizer), dim=32,
                                                 hidden_dim=64, n_layers=3, n_heads=4))
    else:
        model = ElectraModel(ElectraConfig(
            vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, intermediate_size=64,
            num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_distilbert_blocks_take_the_states_it_passes_by_position(tmp_path, minilm):
    # DistilBERT calls embeddings(input_ids, inputs_embeds, ...): the stand-in read the
    # keyword only and said "token ids" were passed, refusing a backbone it can run.
    loaded = _loaded(_tiny_encoder(tmp_path, minilm, "distilbert"))
    top = _top_layers.checked_top(loaded, 1, 2, torch.device("cpu"))
    assert _copy_error(top, loaded, 1, 2) < 1e-4


def test_blocks_that_fail_when_run_apart_are_refused_before_the_llm_runs(tmp_path, minilm):
    # ELECTRA projects its embeddings after the stand-in: the states are already wide, so
    # torch's "mat1 and mat2 shapes cannot be multiplied" came out of fit, after the LLM
    # had featurized every training text.
    folder = _tiny_encoder(tmp_path, minilm, "electra")
    before = cache_info()["llm_texts"]
    model = small_regressor(folder, layer=-1, train_top_layers=1)
    with pytest.raises(ValueError, match=r"train_top_layers=1 is not supported for "
                                         r"ElectraModel: its blocks cannot be run apart"):
        model.fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == before
    small_regressor(folder, layer=-1).fit(TEXTS, TARGETS)  # frozen, it is a fine backbone


def test_offloaded_blocks_are_refused_by_name_before_the_llm_runs(tiny_llama, tmp_path):
    # Offloaded by device_map, a block's weights live outside the module until each
    # forward: copying it raised torch's "Cannot copy out of meta tensor" after the LLM
    # pass. Blocks kept on a device still train.
    device_map = {"embed_tokens": "cpu", "layers.0": "cpu", "layers.1": "disk",
                  "norm": "cpu", "rotary_emb": "cpu"}
    kwargs = {"device_map": device_map, "offload_folder": str(tmp_path / "offload")}
    before = cache_info()["llm_texts"]
    model = small_regressor(tiny_llama, layer=-1, train_top_layers=1, backbone_kwargs=kwargs)
    with pytest.raises(ValueError, match=r"device_map offloads layers\.0\..*place those "
                                         r"blocks on a device"):
        model.fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == before
    on_cpu = small_regressor(tiny_llama, layer=1, train_top_layers=1, backbone_kwargs=kwargs)
    assert np.isfinite(on_cpu.fit(TEXTS, TARGETS).predict(TEXTS[:2])).all()


def test_blocks_that_cannot_be_run_apart_are_refused(tiny_llama, monkeypatch):
    # Without a way to leave out Llama's final norm, layer 1's states cannot be reproduced:
    # that must be an error naming the option, not a head trained on other states.
    monkeypatch.setattr(_top_layers, "_final_norms", lambda model: [])
    with pytest.raises(ValueError, match="train_top_layers=1 is not supported"):
        _top_layers.checked_top(_loaded(tiny_llama), 0, 1, torch.device("cpu"))
    # fit finds out before the LLM pass over its texts, not after it.
    model = small_regressor(tiny_llama, layer=1, train_top_layers=1)
    with pytest.raises(ValueError, match="train_top_layers=1 is not supported"):
        model.fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == 0


def test_quantised_backbones_are_refused_with_the_way_out(tiny_llama, monkeypatch):
    model = _loaded(tiny_llama).model
    monkeypatch.setattr(model, "is_quantized", True, raising=False)
    with pytest.raises(ValueError, match="without quantization_config"):
        _top_layers.copy_top(model, 0, 1, final_norm=True)


def test_too_many_top_layers_for_the_layer_read(tiny_llama):
    model = small_regressor(tiny_llama, layer=1, train_top_layers=2)
    with pytest.raises(ValueError, match="train_top_layers=2 .* hidden state 1"):
        model.fit(TEXTS, TARGETS)


def test_fit_trains_copies_and_leaves_backbone_and_cache_alone(tiny_llama):
    loaded = _loaded(tiny_llama)
    before = _state_digest(loaded.model)
    encoder = LLMTextEncoder(tiny_llama, layer=1, pooling="mean")
    reference = encoder.fit_transform(TEXTS)
    model = small_regressor(tiny_llama, layer=-1, train_top_layers=1, top_layers_lr=1e-2)
    llm_before = cache_info()["llm_texts"]
    model.fit(TEXTS, TARGETS)
    # Layer 1 (under the trained block) was already cached: the LLM ran on no text.
    assert cache_info()["llm_texts"] == llm_before
    assert _state_digest(loaded.model) == before
    np.testing.assert_array_equal(encoder.transform(TEXTS), reference)
    copied = model.net_.module_.top.layers[0].mlp.up_proj.weight
    frozen = loaded.model.layers[1].mlp.up_proj.weight
    assert copied.shape == frozen.shape and not torch.equal(copied, frozen)


def test_prediction_does_not_depend_on_the_batch(minilm):
    # An encoder: its tokens attend both ways, so unmasked padding would change them.
    model = small_regressor(minilm, layer=-1, train_top_layers=1).fit(TEXTS, TARGETS)
    alone = model.predict(TEXTS[:3])
    padded = model.predict([*TEXTS[:3], LONG, LONG[:30]])[:3]
    np.testing.assert_allclose(alone, padded, rtol=1e-5, atol=1e-5)


def test_pickle_holds_the_trained_blocks_and_no_frozen_weight(minilm):
    model = small_regressor(minilm, layer=-1, train_top_layers=1).fit(TEXTS, TARGETS)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    block = _loaded(minilm).model.encoder.layer[5]
    block_bytes = sum(p.numel() * 4 for p in block.parameters())
    head_bytes = sum(p.numel() * 4 for p in model.net_.module_.head.parameters())
    # The block and the head once each (the optimizer's references are the same objects);
    # the 47 MB of embeddings and the five frozen blocks stay out.
    assert block_bytes < buffer.tell() < 1.1 * (block_bytes + head_bytes) + 200_000
    buffer.seek(0)
    loaded = joblib.load(buffer)
    np.testing.assert_array_equal(loaded.predict(TEXTS), model.predict(TEXTS))


def test_a_model_loaded_on_another_device_pickles_its_trained_blocks_again(
        tiny_llama, monkeypatch):
    # Fitted on a laptop, loaded on a CUDA server: the trained weights are restored onto
    # the other device inside predict (no_grad), where a copying .to() gives plain tensors.
    # Emulated here by making Parameter.to copy, as a cross-device move does.
    model = small_regressor(tiny_llama, layer=-1, train_top_layers=1).fit(TEXTS, TARGETS)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    copying_to = lambda self, *args, **kwargs: torch.Tensor.to(self, *args, **kwargs).clone()  # noqa: E731
    monkeypatch.setattr(torch.nn.Parameter, "to", copying_to, raising=False)
    predictions = loaded.predict(TEXTS)
    monkeypatch.undo()
    trained = [p for p in loaded.net_.module_.top.parameters() if p.requires_grad]
    assert trained and all(isinstance(p, torch.nn.Parameter) for p in trained)
    again = io.BytesIO()
    joblib.dump(loaded, again)
    again.seek(0)
    np.testing.assert_array_equal(joblib.load(again).predict(TEXTS), predictions)


def test_a_moved_trained_weight_stays_the_same_trainable_parameter():
    weight = torch.nn.Parameter(torch.randn(3))
    with torch.no_grad():  # as in predict
        moved = moved_parameter(weight, torch.device("meta"))
    assert isinstance(moved, torch.nn.Parameter) and moved.requires_grad
    assert moved.device.type == "meta"
    assert moved_parameter(weight, weight.device) is weight


def test_a_damaged_set_of_trained_weights_is_refused(tiny_llama):
    model = small_regressor(tiny_llama, train_top_layers=1).fit(TEXTS, TARGETS)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    weights = loaded.net_.module_.__dict__["_top_weights"]
    weights.pop(next(iter(weights)))
    for _ in range(2):  # refused again, as clearly, on a second try
        with pytest.raises(ValueError, match="do not match the backbone's blocks"):
            loaded.predict(TEXTS[:2])


def test_the_layer_under_trained_blocks_is_found_without_loading_weights(tiny_llama):
    # featurize_to_store(train_top_layers=...) loaded the whole backbone on a cluster's
    # client just to count its layers: an 8B model's weights for one integer.
    from sklearn_relish import _backbones

    _backbones.clear_backbones()
    before = _backbones.N_LOADS
    featurizer = small_regressor(tiny_llama, layer=-1, train_top_layers=1)
    below = featurizer._featurizer_to_train_on()
    assert _backbones.N_LOADS == before
    assert below.layer == 1  # the tiny Llama has 2 blocks: hidden state 2 less one
    with pytest.raises(ValueError, match="only 2 block"):
        small_regressor(tiny_llama, layer=-1, train_top_layers=3)._featurizer_to_train_on()
    assert _backbones.N_LOADS == before


def test_the_layer_count_honours_config_overrides_in_backbone_kwargs(tiny_llama):
    # from_pretrained(num_hidden_layers=1) builds a 1-block model: the config alone said 2,
    # and the head would have read the loaded model's last layer as the one under it.
    model = small_regressor(tiny_llama, layer=-1, train_top_layers=1,
                            backbone_kwargs={"num_hidden_layers": 1})
    assert model._featurizer_to_train_on().layer == 0
