"""Batches of similar lengths: every text once per epoch, reproducible, order restored."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_relish._batching import BucketBatchSampler, fill_batches
from sklearn_relish._net import TokenStateDataset, build_net, predict_states


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 200), min_size=1, max_size=400), st.integers(1, 20))
def test_each_epoch_yields_every_text_once_in_batches_of_at_most_batch_size(lengths, size):
    sampler = BucketBatchSampler(lengths, size)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= size for b in batches)
    # Near-equal batches: a short remainder batch gave its texts (the pool's longest)
    # several times the weight of the others in the batch-mean loss, every epoch.
    assert max(map(len, batches)) - min(map(len, batches)) <= 1


def test_no_text_is_kept_in_a_short_batch_epoch_after_epoch():
    # 100 texts, 16 a batch: the 4 longest formed a batch of their own in every epoch.
    torch.manual_seed(0)
    lengths = [5] * 90 + [6, 7, 8, 9] + [4] * 6
    sampler = BucketBatchSampler(lengths, 16)
    weight = np.zeros(len(lengths))
    for _ in range(20):
        for batch in sampler:
            weight[batch] += 1 / len(batch)
    assert weight.max() / weight.min() < 1.1



def test_the_smaller_batches_do_not_always_hold_the_longest_texts():
    # 9 texts, 8 a batch: batches of 5 and 4, and the 4 were always the longest texts,
    # so each of them weighed 1/4 of a step against 1/5 for the shortest, every epoch.
    torch.manual_seed(0)
    sampler = BucketBatchSampler(list(range(9)), 8)
    sizes_of_longest = set()
    for _ in range(50):
        for batch in sampler:
            if 8 in batch:
                sizes_of_longest.add(len(batch))
    assert sizes_of_longest == {4, 5}

def test_buckets_cut_padding_and_stay_random_and_reproducible():
    rng = np.random.RandomState(0)
    lengths = rng.lognormal(3, 0.6, 2000).astype(int) + 1

    def epoch(seed):
        torch.manual_seed(seed)
        return list(BucketBatchSampler(lengths, 16))

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    random_batches = [list(b) for b in np.array_split(rng.permutation(2000), 125)]
    assert padded(epoch(0)) < 0.8 * padded(random_batches)
    assert epoch(0) == epoch(0) and epoch(0) != epoch(1)


def test_fill_batches_keeps_the_order_and_the_budget():
    lengths = [5, 1, 0, 9, 3, 3]
    batches = fill_batches(range(6), lengths, budget=10)
    assert [i for b in batches for i in b] == list(range(6))
    assert all(len(b) * max(max(lengths[i], 1) for i in b) <= 10 or len(b) == 1
               for b in batches)


def test_predictions_come_back_in_input_order_whatever_the_batching():
    class Params:  # the head and training parameters build_net reads
        n_latents, latent_dim, n_heads, n_iterations, ff_mult = 1, 8, 2, 1, 2
        dropout, share_weights, input_norm, loss, huber_delta = 0.0, False, True, "mse", 1.0
        lr, weight_decay, batch_size, max_epochs = 1e-3, 0.0, 2, 1
        early_stopping, validation_fraction, patience, intervals, verbose = (
            False, 0.1, 3, "split", 0)

    torch.manual_seed(0)
    states = [torch.randn(n, 6).half() for n in (3, 40, 1, 0, 17, 2, 40)]
    net = build_net(Params, 6, len(states), 0, "cpu")
    net.initialize()
    together = predict_states(net, states)
    alone = np.concatenate([predict_states(net, [s]) for s in states])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    raw = np.asarray(net.predict(TokenStateDataset(states)))  # skorch's own order
    np.testing.assert_allclose(together, raw, rtol=1e-5, atol=1e-6)
