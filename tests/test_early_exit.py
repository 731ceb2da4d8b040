"""Stopping the backbone at the layer read: same states, less work, safe fallback."""

import pytest
import torch

from sklearn_relish import _early_exit
from sklearn_relish._featurizer import LLMFeaturizer

TEXTS = ["good", "the acting was really great and fun to watch", "bad movie", ""]


def full_pass_states(featurizer, texts, layer):
    """The same texts through the whole model, read from ``hidden_states[layer]``."""
    featurizer = LLMFeaturizer(featurizer.backbone, layer=layer, cache=False)
    loaded = featurizer.loaded
    saved = dict(loaded.early_exit_ok)
    try:
        loaded.early_exit_ok.update({i: False for i in range(loaded.n_hidden_states)})
        return featurizer.transform(texts, "single")
    finally:
        loaded.early_exit_ok.clear()
        loaded.early_exit_ok.update(saved)


def blocks_of(featurizer):
    loaded = featurizer.loaded
    return _early_exit._blocks(loaded.model, loaded.n_hidden_states - 1)


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("layer", [0, 1, 3, 5])
def test_minilm_states_match_the_full_pass(minilm, layer):
    featurizer = LLMFeaturizer(minilm, layer=layer, cache=False)
    got = featurizer.transform(TEXTS, "single")
    expected = full_pass_states(featurizer, TEXTS, layer)
    assert featurizer.loaded.early_exit_ok[layer] is True
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backbone", ["tiny_llama", "minilm"])
def test_blocks_above_the_layer_do_not_run(backbone, request):
    featurizer = LLMFeaturizer(request.getfixturevalue(backbone), layer=1, cache=False)
    featurizer.transform(["warm up: the first batch is checked against a full pass"], "single")
    blocks = blocks_of(featurizer)
    first, h1 = count_calls(blocks[0])
    last, h2 = count_calls(blocks[-1])
    try:
        featurizer.transform(["a new text", "and another one"], "single")
    finally:
        h1.remove()
        h2.remove()
    assert first and not last


@pytest.mark.parametrize("backbone", ["tiny_llama", "minilm"])
def test_the_embeddings_run_no_block(backbone, request):
    featurizer = LLMFeaturizer(request.getfixturevalue(backbone), layer=0, cache=False)
    got = featurizer.transform(TEXTS, "single")
    assert featurizer.loaded.early_exit_ok[0] is True
    first, handle = count_calls(blocks_of(featurizer)[0])
    try:
        featurizer.transform(["a new text", "and another one"], "single")
    finally:
        handle.remove()
    assert not first
    for a, b in zip(got, full_pass_states(featurizer, TEXTS, 0), strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_the_last_layer_takes_the_full_pass(tiny_llama):
    featurizer = LLMFeaturizer(tiny_llama, layer=-1, cache=False)
    featurizer.loaded  # noqa: B018
    last, handle = count_calls(blocks_of(featurizer)[-1])
    try:
        featurizer.transform(["good movie"], "single")
    finally:
        handle.remove()
    assert last


def test_disagreeing_early_exit_falls_back_to_the_full_pass(tiny_llama, monkeypatch):
    real = _early_exit._early_exit

    def off_by_one(block, loaded, inputs):
        return real(block, loaded, inputs) + 1.0

    monkeypatch.setattr(_early_exit, "_early_exit", off_by_one)
    featurizer = LLMFeaturizer(tiny_llama, layer=1, cache=False)
    featurizer.loaded.early_exit_ok.pop(1, None)
    got = featurizer.transform(TEXTS, "single")
    assert featurizer.loaded.early_exit_ok[1] is False
    expected = full_pass_states(featurizer, TEXTS, 1)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    featurizer.loaded.early_exit_ok.pop(1)  # the shared backbone must not keep the verdict


def test_a_block_the_forward_pass_never_runs_falls_back(tiny_llama, monkeypatch):
    # An architecture whose only list of n_layers modules is not the one its forward uses.
    decoy = torch.nn.ModuleList(torch.nn.Identity() for _ in range(2))
    monkeypatch.setattr(_early_exit, "_blocks", lambda model, n_layers: decoy)
    featurizer = LLMFeaturizer(tiny_llama, layer=1, cache=False)
    featurizer.loaded.early_exit_ok.pop(1, None)
    got = featurizer.transform(TEXTS, "single")
    assert featurizer.loaded.early_exit_ok.pop(1) is False
    expected = full_pass_states(featurizer, TEXTS, 1)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_block_on_another_device_than_the_input_still_exits_early(tiny_llama):
    # Sharded with device_map="auto", the middle block runs on cuda:1 while the full pass
    # returns hidden states on the input's device: the early exit's states stayed on
    # cuda:1, and the check against the full pass failed ("Expected all tensors to be on
    # the same device") in every fit. Here a CPU model's block hands its output to CUDA.
    featurizer = LLMFeaturizer(tiny_llama, layer=1, cache=False, device="cpu")
    moved = []

    def to_cuda_once(module, args, output):
        if moved:
            return None
        moved.append(True)
        if isinstance(output, tuple):
            return (output[0].to("cuda"), *output[1:])
        return output.to("cuda")

    handle = blocks_of(featurizer)[0].register_forward_hook(to_cuda_once)
    try:
        got = featurizer.transform(TEXTS, "single")
    finally:
        handle.remove()
    assert moved and featurizer.loaded.early_exit_ok[1] is True
    for a, b in zip(got, full_pass_states(featurizer, TEXTS, 1), strict=True):
        assert a.device.type == "cpu"
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
