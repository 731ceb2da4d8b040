"""RelishHead: the paper's configuration, shapes and padding masks."""

import pytest
import torch

from sklearn_relish import RelishHead


def n_params(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_paper_configuration_has_the_papers_parameter_count():
    assert n_params(RelishHead(input_dim=4096)) == 3_418_625


@pytest.mark.parametrize("d", [384, 576, 4096])
def test_parameter_count_follows_the_papers_formula(d):
    # projection + latent + 3 blocks + output layer, as in the authors' code
    assert n_params(RelishHead(input_dim=d)) == d * 256 + 256 + 256 + 3 * 789_760 + 257


def test_shared_weights_keep_one_block_but_iterate():
    shared = RelishHead(input_dim=64, n_iterations=5, share_weights=True)
    single = RelishHead(input_dim=64, n_iterations=1)
    assert n_params(shared) == n_params(single)
    assert shared(torch.randn(2, 3, 64)).shape == (2,)


def test_options_change_the_architecture():
    head = RelishHead(input_dim=32, n_latents=4, latent_dim=16, n_heads=2, n_iterations=2,
                      ff_mult=2, dropout=0.1, input_norm=True)
    assert head.latents.shape == (1, 4, 16)
    assert len(head.blocks) == 2
    assert isinstance(head.input_norm, torch.nn.LayerNorm)
    assert head.blocks[0].feed_forward[0].out_features == 32
    assert head(torch.randn(3, 7, 32)).shape == (3,)


def test_latent_is_initialised_small():
    torch.manual_seed(0)
    head = RelishHead(input_dim=8)
    assert 0.01 < head.latents.std().item() < 0.03


def test_latent_dim_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        RelishHead(input_dim=8, latent_dim=10, n_heads=3)


@pytest.mark.parametrize("size", ["n_latents", "latent_dim", "n_heads", "n_iterations",
                                  "ff_mult", "n_outputs", "input_dim"])
def test_sizes_below_one_are_refused_by_name(size):
    # n_latents=0 had predicted NaN silently, n_heads=0 divided by zero.
    params = {"input_dim": 8, "latent_dim": 8, "n_heads": 2, size: 0}
    with pytest.raises(ValueError, match=f"{size} must be a positive int; got 0"):
        RelishHead(**params)


def test_padding_does_not_change_the_output():
    torch.manual_seed(0)
    head = RelishHead(input_dim=16, latent_dim=16, n_heads=2).eval()
    short = torch.randn(1, 3, 16)
    padded = torch.cat([short, 100 * torch.randn(1, 5, 16)], dim=1)  # loud garbage padding
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]])
    alone = head(short)
    in_batch = head(padded, mask)
    torch.testing.assert_close(alone, in_batch, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n_latents", [1, 4])  # the folded and the explicit attention
def test_non_finite_padding_does_not_reach_the_output(n_latents):
    # Masked attention weights are 0, and 0 * NaN is NaN: trained blocks can leave NaN or
    # inf at padded positions (an all-padding row on some GPU kernels).
    torch.manual_seed(0)
    head = RelishHead(input_dim=16, n_latents=n_latents, latent_dim=16, n_heads=2).eval()
    states = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    clean = head(states.masked_fill(~mask[..., None], 0.0), mask)
    states[0, 3:], states[1, :2], states[1, 2:] = float("nan"), float("inf"), float("-inf")
    torch.testing.assert_close(head(states, mask), clean)


def test_all_padding_row_is_finite_and_does_not_affect_others():
    torch.manual_seed(0)
    head = RelishHead(input_dim=16, latent_dim=16, n_heads=2).eval()
    states = torch.randn(2, 4, 16)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = head(states, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], head(states[:1, :2])[0])


def test_all_padding_row_has_finite_gradients():
    head = RelishHead(input_dim=16, latent_dim=16, n_heads=2)
    out = head(torch.randn(2, 4, 16), torch.zeros(2, 4, dtype=torch.bool))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_half_precision_states_are_accepted():
    head = RelishHead(input_dim=16, latent_dim=16, n_heads=2)
    out = head(torch.randn(2, 3, 16, dtype=torch.float16))
    assert out.dtype == torch.float32


def test_head_learns_a_token_level_target_that_generalises():
    # The target is the largest value of feature 0 over the tokens: it needs attention
    # to single out one token, and is judged on held-out rows.
    torch.manual_seed(0)
    states = torch.randn(768, 6, 8)
    target = states[..., 0].amax(dim=1)
    train, test = slice(0, 512), slice(512, None)
    head = RelishHead(input_dim=8, latent_dim=32, n_heads=4, n_iterations=2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(head(states[train]), target[train]).backward()
        optimizer.step()
    with torch.no_grad():
        test_error = torch.nn.functional.mse_loss(head(states[test]), target[test])
    assert test_error.item() < 0.3 * target[test].var().item()


def _copies(n_latents, dropout=0.0, input_norm=True):
    torch.manual_seed(0)
    head = RelishHead(24, n_latents=n_latents, latent_dim=16, n_heads=4, n_iterations=2,
                      dropout=dropout, input_norm=input_norm).double()
    with torch.no_grad():  # non-trivial norm scale and biases, so folding them is tested
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return head


def _explicit(monkeypatch):
    # The reference: keys and values projected per token, the norm applied to the states.
    from sklearn_relish._head import MaskedCrossAttention

    monkeypatch.setattr(MaskedCrossAttention, "forward", lambda self, latents, tokens, mask:
                        self.to_out(self._explicit(latents, tokens, mask)))
    monkeypatch.setattr(RelishHead, "_project",
                        lambda self, states: self.project(self.input_norm(states)))


@pytest.mark.parametrize("n_latents", [1, 2, 3])
def test_folded_attention_and_norm_equal_the_explicit_computation(n_latents, monkeypatch):
    # Up to 3 latents x 4 heads stay below latent_dim=16: the folded path throughout.
    states = torch.randn(3, 6, 24, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0] * 6], dtype=torch.bool)
    results = []
    for explicit in (False, True):
        head = _copies(n_latents)
        if explicit:
            _explicit(monkeypatch)
        out = head(states, mask)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in head.named_parameters()
                                       if p.grad is not None}))
        monkeypatch.undo()
    (folded, folded_grads), (explicit, explicit_grads) = results
    torch.testing.assert_close(folded, explicit)
    for name, grad in explicit_grads.items():
        if name.endswith("to_k.bias"):
            # q . b_k shifts every score of a row alike, which the softmax ignores: the
            # folded form leaves it out, and its gradient is zero up to rounding anyway.
            assert name not in folded_grads
            torch.testing.assert_close(grad, torch.zeros_like(grad))
        else:
            torch.testing.assert_close(folded_grads[name], grad, msg=name)


def test_many_latents_and_dropout_take_the_explicit_path(monkeypatch):
    from sklearn_relish._head import MaskedCrossAttention

    calls = []
    original = MaskedCrossAttention._explicit
    monkeypatch.setattr(MaskedCrossAttention, "_explicit",
                        lambda *a: calls.append(1) or original(*a))
    states, mask = torch.randn(2, 5, 24, dtype=torch.float64), torch.ones(2, 5, dtype=bool)
    _copies(n_latents=4)(states, mask)  # 4 latents x 4 heads = latent_dim: no gain
    assert len(calls) == 2  # one per block
    _copies(n_latents=1, dropout=0.5).train()(states, mask)
    assert len(calls) == 4
    _copies(n_latents=1, dropout=0.5).eval()(states, mask)
    assert len(calls) == 4  # no dropout at inference: folded again
