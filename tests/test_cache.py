"""The token-state cache: correct reuse, no stale hits, bounded memory, disk sharing."""

from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, build_tiny_llama, small_regressor
from sklearn.ensemble import VotingRegressor
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_relish import cache_info, clear_cache, set_cache_max_bytes
from sklearn_relish._cache import ENTRY_OVERHEAD, CachedStates, TokenStateCache
from sklearn_relish._featurizer import LLMFeaturizer


def entry(n_tokens, dim=4):
    return CachedStates(torch.zeros(n_tokens, dim, dtype=torch.float16), False)


def test_lru_evicts_least_recently_used_under_a_byte_bound():
    cache = TokenStateCache(max_bytes=3 * (8 * 2 + ENTRY_OVERHEAD))  # three 2x4 fp16 entries
    for key in "abc":
        cache.put(key, entry(2))
    cache.get("a")  # a is now the most recent
    cache.put("d", entry(2))
    assert cache.get("b") is None
    assert all(cache.get(key) is not None for key in "acd")
    assert cache.nbytes <= cache.max_bytes


def test_the_bound_counts_what_each_entry_costs_beyond_its_states():
    # 100 one-token texts hold 800 bytes of states but about 100 KB of objects and keys.
    cache = TokenStateCache(max_bytes=100 * 8 + 10 * ENTRY_OVERHEAD)
    for i in range(100):
        cache.put(str(i), entry(1))
    assert len(cache) <= 11 and cache.nbytes <= cache.max_bytes


def test_entry_larger_than_the_bound_is_not_kept():
    cache = TokenStateCache(max_bytes=ENTRY_OVERHEAD + 10)
    cache.put("big", entry(100))
    assert len(cache) == 0 and cache.nbytes == 0


def test_memory_cache_stays_within_a_tiny_bound(tiny_llama):
    set_cache_max_bytes(3 * 1024 + 3 * ENTRY_OVERHEAD)
    LLMFeaturizer(tiny_llama).transform(TEXTS, "single")
    info = cache_info()
    assert 0 < info["bytes"] <= 3 * 1024 + 3 * ENTRY_OVERHEAD
    assert info["entries"] < len(TEXTS)


def test_storage_is_unpadded_half_precision(tiny_llama):
    states = LLMFeaturizer(tiny_llama).transform(TEXTS, "single")
    n_tokens = sum(s.shape[0] for s in states)
    assert cache_info()["bytes"] == n_tokens * 32 * 2 + len(set(TEXTS)) * ENTRY_OVERHEAD


def test_duplicates_are_featurized_once(tiny_llama):
    texts = ["good", "bad", "good", "good", "bad", "fine"]
    states = LLMFeaturizer(tiny_llama).transform(texts, "single")
    assert cache_info()["llm_texts"] == 3
    assert torch.equal(states[0], states[2]) and states[0] is not states[2]


def test_second_call_hits_the_cache(tiny_llama):
    featurizer = LLMFeaturizer(tiny_llama)
    first = featurizer.transform(TEXTS, "single")
    second = featurizer.transform(TEXTS[::-1], "single")
    assert cache_info()["llm_texts"] == len(TEXTS)
    assert all(torch.equal(a, b) for a, b in zip(first, second[::-1], strict=True))


def test_cache_off_runs_the_llm_every_time(tiny_llama):
    featurizer = LLMFeaturizer(tiny_llama, cache=False)
    featurizer.transform(TEXTS, "single")
    featurizer.transform(TEXTS, "single")
    assert cache_info()["llm_texts"] == 2 * len(TEXTS) and cache_info()["entries"] == 0


@pytest.mark.parametrize("change", [{"layer": 1}, {"prompt": "review: {text}"},
                                    {"max_length": 3}])
def test_changing_a_keyed_setting_never_returns_stale_states(tiny_llama, change):
    text = ["the acting was great"]
    before = LLMFeaturizer(tiny_llama).transform(text, "single")[0]
    with pytest.warns(UserWarning) if "max_length" in change else _no_warning():
        after = LLMFeaturizer(tiny_llama, **change).transform(text, "single")[0]
    assert cache_info()["llm_texts"] == 2
    assert after.shape != before.shape or not torch.equal(after, before)


def test_another_backbone_never_gets_stale_states(tiny_llama, tmp_path):
    other = build_tiny_llama(tmp_path / "other", seed=1)
    text = ["the acting was great"]
    before = LLMFeaturizer(tiny_llama).transform(text, "single")[0]
    after = LLMFeaturizer(other).transform(text, "single")[0]
    assert cache_info()["llm_texts"] == 2 and not torch.equal(before, after)


def test_predictions_are_equal_with_cache_on_and_off(tiny_llama):
    on = small_regressor(tiny_llama, cache=True).fit(TEXTS, TARGETS)
    off = small_regressor(tiny_llama, cache=False).fit(TEXTS, TARGETS)
    np.testing.assert_allclose(on.predict(TEXTS), off.predict(TEXTS), atol=1e-5)


def test_grid_search_runs_the_llm_once_per_distinct_text(tiny_llama):
    texts = TEXTS + TEXTS[:4]  # duplicates too
    targets = TARGETS + TARGETS[:4]
    search = GridSearchCV(
        small_regressor(tiny_llama),
        {"lr": [1e-3, 1e-2], "n_iterations": [1, 2], "loss": ["huber", "mse"]},
        cv=KFold(3, shuffle=True, random_state=0),
    )
    search.fit(texts, targets)
    assert cache_info()["llm_texts"] == len(set(texts))


def test_an_ensemble_of_seeds_runs_the_llm_once_and_averages_its_members(tiny_llama):
    # The README's recipe for averaging heads: extra members cost head trainings only.
    members = [(f"seed{seed}", small_regressor(tiny_llama, random_state=seed))
               for seed in range(3)]
    ensemble = VotingRegressor(members).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == len(set(TEXTS))
    alone = [small_regressor(tiny_llama, random_state=seed).fit(TEXTS, TARGETS).predict(TEXTS)
             for seed in range(3)]
    assert not np.allclose(alone[0], alone[1])  # the seeds do give different heads
    np.testing.assert_allclose(ensemble.predict(TEXTS), np.mean(alone, axis=0), atol=1e-6)


def test_disk_cache_serves_a_new_process_worth_of_memory(tiny_llama, tmp_path):
    computed = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
    clear_cache()  # as if a new process: empty memory, counters at zero
    states = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
    assert cache_info()["llm_texts"] == 0
    assert len(states) == len(TEXTS)
    for served, original in zip(states, computed, strict=True):  # each text's own states
        assert torch.equal(served, original)


def test_cache_is_not_pickled_with_the_estimator(tiny_llama, tmp_path):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    head_bytes = sum(p.numel() * 4 for p in model.net_.module_.parameters())
    backbone_bytes = (Path(tiny_llama) / "model.safetensors").stat().st_size
    # The head plus skorch's bookkeeping; neither the backbone nor its cached states.
    assert path.stat().st_size < min(head_bytes + 40_000, backbone_bytes)
    assert model.featurizer_._loaded is not None
    assert joblib.load(path).featurizer_._loaded is None


def test_set_cache_max_bytes_rejects_nonsense():
    with pytest.raises(ValueError, match="non-negative int"):
        set_cache_max_bytes(-1)


class _no_warning:
    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)
