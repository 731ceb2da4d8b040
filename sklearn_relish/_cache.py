"""A process-wide cache of token states, so the LLM runs once per distinct text.

Entries are keyed by everything that determines a text's states: the backbone's
fingerprint, the layer, ``max_length``, the compute dtype and the final prompted string.
They are stored unpadded in half precision, so memory is about
(tokens) x (hidden size) x 2 bytes. The in-memory part is bounded in bytes and evicts
the least recently used entries; an optional folder (``_store.TokenStateStore``) shares
states between processes (``GridSearchCV(n_jobs=...)`` workers, cluster workers) and
sessions.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ._inputs import is_count

DEFAULT_MAX_BYTES = 2 * 1024**3
# What an entry costs beyond its states: the tensor and entry objects, the 64-character
# key and the dictionary's slot (measured: 200,000 one-token entries of width 384 took
# 925 bytes each above their states). Without it, a cache of very short texts (labels,
# queries) held 2.2x its bound.
ENTRY_OVERHEAD = 1024


@dataclass(frozen=True)
class CachedStates:
    """One text's token states ``(n_tokens, d)`` and whether it was truncated.

    float16, or bfloat16 for a text whose states exceed float16's range (some backbones,
    Gemma among them, carry activations of 10^5 in intermediate layers).
    """

    states: torch.Tensor
    truncated: bool

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    @property
    def cost(self) -> int:
        """Bytes this entry holds in memory, its objects included."""
        return self.nbytes + ENTRY_OVERHEAD


def cache_key(fingerprint: str, layer: int, max_length: int, dtype: str, text: str) -> str:
    parts = (fingerprint, str(layer), str(max_length), dtype, text)
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


class TokenStateCache:
    """Least-recently-used store of :class:`CachedStates`, bounded in bytes. Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, CachedStates] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedStates | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: CachedStates) -> None:
        with self._lock:
            if entry.cost > self.max_bytes:
                return  # would evict everything else and still not fit
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.cost
            self._entries[key] = entry
            self.nbytes += entry.cost
            while self.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.cost

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = int(max_bytes)
            while self.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.cost

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = self.hits = self.misses = 0


_MEMORY_CACHE = TokenStateCache()
# Texts the LLM actually ran on, process-wide: lets tests and benchmarks prove reuse.
_COUNTERS = {"llm_texts": 0, "llm_calls": 0}


def memory_cache() -> TokenStateCache:
    return _MEMORY_CACHE


def count_forward(n_texts: int) -> None:
    _COUNTERS["llm_texts"] += n_texts
    _COUNTERS["llm_calls"] += 1


def set_cache_max_bytes(max_bytes: int) -> None:
    """Bound the in-memory token-state cache (default 2 GiB); evicts at once if needed."""
    if not is_count(max_bytes):
        raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}.")
    _MEMORY_CACHE.resize(max_bytes)


def clear_cache() -> None:
    """Empty the in-memory token-state cache and reset its counters."""
    _MEMORY_CACHE.clear()
    _COUNTERS["llm_texts"] = _COUNTERS["llm_calls"] = 0


def cache_info() -> dict[str, int]:
    """Entries, bytes, bound, hits and misses of the in-memory cache, and LLM work done.

    ``bytes`` counts each entry's states plus ``ENTRY_OVERHEAD`` (1 KiB) for its objects.

    ``llm_texts`` counts texts the backbone actually ran on in this process and
    ``llm_calls`` the featurization calls that needed the backbone at all.
    """
    cache = _MEMORY_CACHE
    return {
        "entries": len(cache),
        "bytes": cache.nbytes,
        "max_bytes": cache.max_bytes,
        "hits": cache.hits,
        "misses": cache.misses,
        **_COUNTERS,
    }
