"""The quality benchmark's data: the VADER corpora, the seeds' splits, cached LLM features.

Every benchmark that compares with ``quality.py``'s rows (``intervals.py``,
``top_layers_select.py``, ``head_speed.py``, ``tune_defaults.py``) takes its corpora and
80/20 splits from here, so a seed means the same test texts everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from quality_methods import TEST_SIZE, short  # benchmarks/ is on sys.path

CORPORA = ("tweets", "nyt", "movies", "amazon")
# The token-state cache every benchmark shares: the LLM runs once per text and layer.
DEFAULT_CACHE_DIR = Path("~/.cache/sklearn_relish/states")


@dataclass
class Corpus:
    name: str
    texts: list[str]
    y: np.ndarray
    n_total: int  # size of the full corpus, before any --quick subsampling


def load_corpus(name: str, n_texts: int | None) -> Corpus:
    from sklearn_relish.datasets import load_vader

    texts, y = load_vader(name, return_X_y=True)
    n_total = len(texts)
    if n_texts is not None and n_texts < n_total:
        # A fixed subsample (independent of the seed), so all seeds share the same texts.
        keep = np.sort(np.random.RandomState(12345).permutation(n_total)[:n_texts])
        texts, y = [texts[i] for i in keep], y[keep]
    return Corpus(name, texts, y, n_total)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's 80/20 train/test split, shared by every method."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(n), test_size=TEST_SIZE, random_state=seed)


class FeatureStore:
    """Token states of a corpus, computed once per (backbone, layer) and pooled once.

    Warming the package's token-state cache here, before any fit is timed, keeps the LLM's
    forward pass out of every method's fit seconds; RELISH then reads the same cache entries
    (memory, or the disk folder shared with later runs).
    """

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._pooled: dict[tuple, dict[str, np.ndarray]] = {}
        self._warm: set[tuple] = set()

    def featurizer(self, backbone: str, layer: int):
        from sklearn_relish._featurizer import LLMFeaturizer

        return LLMFeaturizer(backbone, layer=layer, max_length=512, cache=True,
                             cache_dir=self.cache_dir)

    def states(self, corpus: Corpus, backbone: str, layer: int) -> list:
        from sklearn_relish import cache_info

        featurizer = self.featurizer(backbone, layer)
        start = time.perf_counter()
        featurizer.loaded  # noqa: B018 -- load the backbone now, outside the texts/s timing
        if time.perf_counter() - start > 1:
            print(f"  loaded {short(backbone)} in {time.perf_counter() - start:.1f} s",
                  flush=True)
        before, start = cache_info()["llm_texts"], time.perf_counter()
        states = featurizer.transform(corpus.texts, "single")
        seconds, ran = time.perf_counter() - start, cache_info()["llm_texts"] - before
        if (corpus.name, backbone, layer) not in self._warm:
            self._warm.add((corpus.name, backbone, layer))
            rate = f", {ran / seconds:.0f} texts/s" if ran else ""
            print(f"  featurized {corpus.name} with {short(backbone)} layer {layer}: "
                  f"{len(states)} texts, {ran} through the LLM, {len(states) - ran} cached, "
                  f"{seconds:.1f} s{rate}", flush=True)
        return states

    def forget_pooled(self) -> None:
        self._pooled.clear()

    def warm(self, corpus: Corpus, backbone: str, layer: int) -> None:
        if (corpus.name, backbone, layer) not in self._warm:
            self.states(corpus, backbone, layer)

    def pooled(self, corpus: Corpus, backbone: str, pooling: str,
               layer: int | float = -1) -> np.ndarray:
        """(n_texts, d) float32: mean over tokens, or the last token (zeros if empty)."""
        key = (corpus.name, backbone, layer)
        if key not in self._pooled:
            states = self.states(corpus, backbone, layer)
            d = states[0].shape[1]
            zeros = np.zeros(d, dtype=np.float32)
            self._pooled[key] = {
                "mean": np.stack([s.float().mean(0).numpy() if len(s) else zeros
                                  for s in states]),
                "last": np.stack([s[-1].float().numpy() if len(s) else zeros
                                  for s in states]),
            }
        return self._pooled[key][pooling]
