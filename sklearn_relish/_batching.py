"""Which texts share a batch: similar lengths together, so little work goes into padding.

Used twice: by the featurizer (a forward pass of the LLM per batch) and by the head
(a training step per batch). Both fill batches by length; only the head's training
batches are shuffled, and only within pools of similar length, as Hugging Face's
``group_by_length`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Training batches are drawn from pools of this many batches' worth of shuffled texts,
# sorted by length within the pool: padding shrinks while batches stay random enough.
POOL_BATCHES = 50
# Padded elements (tokens x hidden size) per inference batch of the head: 64 MB in float32.
HEAD_INFERENCE_ELEMENTS = 1 << 24


def fill_batches(order: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Cut ``order`` into consecutive batches of at most ``budget`` padded tokens.

    A batch's padded size is its number of texts times its longest text (at least 1:
    an empty text still takes a row). A text longer than the budget gets a batch alone.
    """
    batches: list[list[int]] = []
    width = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        if batches and (len(batches[-1]) + 1) * max(width, n) <= budget:
            batches[-1].append(i)
            width = max(width, n)
        else:
            batches.append([i])
            width = n
    return batches


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices ordered by decreasing length (ties in input order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled training batches of ``batch_size`` texts of similar length.

    Each epoch: shuffle all texts, sort each pool of about ``POOL_BATCHES * batch_size``
    of them by length, cut the pools into batches and shuffle the batches. Draws come from
    torch's global generator, which ``fit`` seeds, so fits stay reproducible.

    Pools and batches are cut into near-equal sizes (differing by at most one text).
    Cutting ``batch_size`` at a time left the remainder as a short last batch, which in a
    sorted pool always held its longest texts: the loss being a batch mean, those texts
    weighed up to ``batch_size`` times more than the others, in every epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int) -> None:
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size

    def _pools(self) -> list[int]:
        return _near_equal(len(self.lengths), self.batch_size * POOL_BATCHES)

    def __len__(self) -> int:
        return sum(-(-pool // self.batch_size) for pool in self._pools())

    def __iter__(self) -> Iterator[list[int]]:
        shuffled = torch.randperm(len(self.lengths)).tolist()
        batches, start = [], 0
        for pool in self._pools():
            members = sorted(shuffled[start:start + pool], key=lambda i: self.lengths[i])
            start += pool
            sizes = _near_equal(pool, self.batch_size)
            # In a random order: the smaller batches (one text fewer) would otherwise
            # always hold the pool's longest texts, a little more weight in every epoch.
            for k in torch.randperm(len(sizes)).tolist():
                batches.append(members[:sizes[k]])
                members = members[sizes[k]:]
        for b in torch.randperm(len(batches)).tolist():
            yield batches[b]


def _near_equal(n: int, most: int) -> list[int]:
    """Sizes of the fewest parts of at most ``most`` that ``n`` items split into, as equal
    as they can be (the larger ones first)."""
    parts = -(-n // most)
    return [n // parts + (k < n % parts) for k in range(parts)]


def inference_budget(hidden_size: int, batch_size: int, longest: int) -> int:
    """Padded tokens per inference batch of the head: never fewer than a training batch."""
    return max(HEAD_INFERENCE_ELEMENTS // max(hidden_size, 1), batch_size * max(longest, 1))
