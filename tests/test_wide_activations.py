"""States beyond float16's range: kept in bfloat16, never cached as inf.

Some backbones (Gemma 3 among them) carry activations near 10^5 in intermediate layers;
cast to float16 (max 65,504) those became inf, and the head's training "diverged". Each
text whose states do not fit float16 is kept in bfloat16, decided per text (so a text's
states do not depend on its batch), in memory and in the on-disk store alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, build_tiny_llama, small_regressor

from sklearn_relish._cache import CachedStates
from sklearn_relish._featurizer import LLMFeaturizer
from sklearn_relish._store import TokenStateStore, _checksum

LOUD = "awful"
QUIET = "a quiet film"


@pytest.fixture(scope="module")
def loud_llama(tmp_path_factory):
    """A tiny Llama whose embedding of one word is 10^7 times too large."""
    from transformers import AutoTokenizer, LlamaModel

    folder = tmp_path_factory.mktemp("loud-llama")
    build_tiny_llama(folder)
    model = LlamaModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # Only pieces of the loud word that the quiet text does not share.
    loud_ids = sorted(set(tokenizer(f"an {LOUD} film").input_ids)
                      - set(tokenizer(QUIET).input_ids))
    assert loud_ids
    with torch.no_grad():
        model.embed_tokens.weight[loud_ids] *= 1e7
    model.save_pretrained(folder)
    return str(folder)


def _reference(backbone: str, text: str) -> torch.Tensor:
    featurizer = LLMFeaturizer(backbone, layer=0, cache=False)
    loaded = featurizer.loaded
    ids = loaded.tokenizer(text, return_tensors="pt")
    return loaded.model(**ids, output_hidden_states=True).hidden_states[0][0]


def test_loud_texts_are_kept_in_bfloat16_and_quiet_ones_in_float16(loud_llama):
    texts = [f"an {LOUD} film", QUIET]
    loud, quiet = LLMFeaturizer(loud_llama, layer=0, cache=False).transform(texts, "single")
    assert loud.dtype == torch.bfloat16 and quiet.dtype == torch.float16
    assert torch.isfinite(loud.float()).all()
    reference = _reference(loud_llama, texts[0])
    assert reference.abs().max() > 65504  # the premise: float16 would overflow
    torch.testing.assert_close(loud.float(), reference, rtol=1e-2, atol=1e-2)


def test_a_quiet_text_does_not_change_with_a_loud_batchmate(loud_llama):
    featurizer = LLMFeaturizer(loud_llama, layer=0, cache=False, batch_size=8)
    alone = featurizer.transform([QUIET], "single")[0]
    together = featurizer.transform([f"an {LOUD} film", QUIET], "single")[1]
    assert alone.dtype == together.dtype == torch.float16
    assert torch.equal(alone, together)


def test_the_store_keeps_bfloat16_rows_and_older_readers_reject_them(tmp_path):
    states = (torch.randn(3, 4) * 1e5).to(torch.bfloat16)
    store = TokenStateStore(str(tmp_path))
    store.put_many([("loud", CachedStates(states, True))])
    entry = store.get_many(["loud"])["loud"]
    assert entry.states.dtype == torch.bfloat16 and entry.truncated
    assert torch.equal(entry.states, states)
    # A reader that knew only float16 payloads checksummed the plain header: it must see a
    # mismatch (a miss, so it recomputes) rather than bfloat16 bits read as float16.
    payload = states.view(torch.int16).numpy().tobytes()
    assert _checksum(3, 4, True, payload) != _checksum(3, 4, True, payload, bfloat16=True)


def test_fit_on_loud_states_trains_instead_of_diverging(loud_llama, tmp_path):
    model = small_regressor(loud_llama, layer=0, cache_dir=str(tmp_path))
    model.fit(TEXTS, TARGETS)  # raised "Training diverged" when the states were inf
    assert np.isfinite(model.predict(TEXTS)).all()


def test_float16_rows_with_inf_from_older_versions_are_store_misses(tmp_path):
    # sklearn_relish before bfloat16 rows stored overflowed states as float16 inf.
    store = TokenStateStore(str(tmp_path))
    overflowed = torch.tensor([[1.0, float("inf")], [2.0, 3.0]], dtype=torch.float16)
    store.put_many([("old", CachedStates(overflowed, False)),
                    ("fine", CachedStates(overflowed.nan_to_num(posinf=4.0), False))])
    assert set(store.get_many(["old", "fine"])) == {"fine"}


def test_blocks_are_trained_above_states_beyond_float16(tmp_path):
    # The check that copied blocks reproduce the backbone fed them float16 states: inf
    # for such a backbone, so train_top_layers refused it ("relative error nan") although
    # the cache keeps those states in bfloat16 and training on them works.
    from transformers import LlamaModel

    folder = build_tiny_llama(tmp_path / "loud-everywhere")
    model = LlamaModel.from_pretrained(folder)
    with torch.no_grad():
        model.embed_tokens.weight *= 1e7
    model.save_pretrained(folder)
    regressor = small_regressor(folder, layer=1, train_top_layers=1).fit(TEXTS, TARGETS)
    assert np.isfinite(regressor.predict(TEXTS)).all()
    assert regressor.score(TEXTS, TARGETS) > 0  # it learnt something, not a constant


def test_states_that_overflow_the_load_dtype_are_an_error_that_says_so(loud_llama):
    # In float16 the loud word's embedding is inf, and the layers above turn it into NaN.
    # The encoder returned all-NaN features without a word, and fit blamed the lr.
    from sklearn_relish import LLMTextEncoder, clear_cache

    # The loud text is not the batch's first (the longest): the message names it anyway.
    texts = [f"{QUIET} quiet film quiet film", f"an {LOUD} film", QUIET]
    advice = (r"infinite or NaN for the text 'an awful film'.*overflow float16\. Try "
              r"backbone_dtype='bfloat16' or 'float32'")
    with pytest.raises(ValueError, match=advice):
        LLMTextEncoder(loud_llama, backbone_dtype="float16").fit_transform(texts)
    with pytest.raises(ValueError, match=advice):
        small_regressor(loud_llama, backbone_dtype="float16").fit(texts, [1.0, 2.0, 3.0])
    # Nothing was cached: asked again, the LLM runs again and refuses again (a cached
    # NaN would have come back without a word), and the quiet text alone is finite.
    with pytest.raises(ValueError, match=advice):
        LLMFeaturizer(loud_llama, dtype="float16").transform(texts[1:2], "single")
    quiet = LLMFeaturizer(loud_llama, dtype="float16").transform_counted([QUIET], "single")
    assert torch.isfinite(quiet[0][0].float()).all()
    clear_cache()
    features = LLMTextEncoder(loud_llama, backbone_dtype="float32").fit_transform(texts)
    assert np.isfinite(features).all()
