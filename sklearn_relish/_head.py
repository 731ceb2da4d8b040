"""The RELISH head: a learned latent state refined by cross-attention over token states.

Plain torch, no scikit-learn: the module can be trained by any loop. The defaults are the
paper's configuration (Su & Lease, 2026): ``RelishHead(input_dim=4096)`` has exactly
3,418,625 trainable parameters.

Unlike the authors' code, padding positions are masked in every attention, so a text's
prediction does not depend on what else is in its batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._inputs import is_count

__all__ = ["RelishHead"]


class MaskedCrossAttention(nn.Module):
    """Multi-head attention from a few latent queries to many token keys/values.

    Written out rather than using ``nn.MultiheadAttention`` so that a row with no
    real token at all (an empty text) yields a zero update instead of NaN: softmax
    over an all-masked row is undefined, so the weights are multiplied by the mask
    after the softmax, which zeroes exactly those rows and leaves the others intact.
    The parameter count equals ``nn.MultiheadAttention``'s (q, k, v, out projections).

    With fewer queries than dimensions (one latent, eight heads: 8 against 256), keys
    and values are never computed per token. The key projection is folded into the
    queries (``q . (W_k t + b_k) = (W_k^T q) . t + q . b_k``) and the value projection
    applied after pooling (``sum_t a_t (W_v t + b_v) = W_v (sum_t a_t t) + b_v sum_t a_t``):
    the same function and gradients, at a fraction of the work on long texts.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"latent_dim={dim} must be divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.n_heads, dim // self.n_heads).transpose(1, 2)

    def _attend(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked softmax over tokens (the last axis); all-masked rows become zeros."""
        keep = mask[:, None, None, :]
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        return self.dropout(scores.softmax(dim=-1) * keep)

    def forward(
        self, latents: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        n_queries, dim = latents.shape[1] * self.n_heads, latents.shape[2]
        # Dropout on the attention weights would make sum_t a_t differ from 1, which the
        # folded form's value bias assumes: it is used without dropout only.
        if n_queries < dim and not (self.training and self.dropout.p > 0):
            return self.to_out(self._folded(latents, tokens, mask))
        return self.to_out(self._explicit(latents, tokens, mask))

    def _explicit(self, latents: torch.Tensor, tokens: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.to_q(latents))  # (B, h, L, dh)
        k = self._split_heads(self.to_k(tokens))  # (B, h, S, dh)
        v = self._split_heads(self.to_v(tokens))
        weights = self._attend(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, mask)
        return (weights @ v).transpose(1, 2).flatten(2)  # (B, L, D)

    def _folded(self, latents: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        batch, n_latents, dim = latents.shape
        heads, head_dim = self.n_heads, dim // self.n_heads
        q = self.to_q(latents).view(batch, n_latents, heads, head_dim)
        # W_k^T q per head and latent: queries of the full width that read tokens directly.
        # (q . b_k is the same for every token of a row, so the softmax drops it.)
        folded = torch.einsum("blhj,hjd->bhld", q, self.to_k.weight.view(heads, head_dim, dim))
        # A text without tokens keeps one position visible (softmax over nothing is NaN)
        # and its result is zeroed below: no tokens, no update, as in the explicit path.
        has_tokens = mask.any(dim=1)
        visible = mask | ~has_tokens[:, None] & (torch.arange(mask.shape[1], device=mask.device)
                                                 == 0)
        pooled = F.scaled_dot_product_attention(
            folded.flatten(1, 2), tokens, tokens, attn_mask=visible[:, None, :],
            scale=head_dim ** -0.5,
        ).view(batch, heads, n_latents, dim) * has_tokens[:, None, None, None]
        values = torch.einsum("bhld,hjd->blhj", pooled, self.to_v.weight.view(heads, head_dim, dim))
        # sum_t a_t is 1 for a text with tokens and 0 without.
        values = values + has_tokens[:, None, None, None] * self.to_v.bias.view(heads, head_dim)
        return values.flatten(2)  # (B, L, D)


class RefinementBlock(nn.Module):
    """One refinement step: cross-attend, add & norm, feed-forward, add & norm."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.attention = MaskedCrossAttention(dim, n_heads, dropout)
        self.norm_attention = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ff_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * dim, dim),
        )
        self.norm_feed_forward = nn.LayerNorm(dim)

    def forward(
        self, latents: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        latents = self.norm_attention(latents + self.attention(latents, tokens, mask))
        return self.norm_feed_forward(latents + self.feed_forward(latents))


class RelishHead(nn.Module):
    """Latent iterative state head: token states ``(B, S, d)`` in, one value per row out.

    Parameters
    ----------
    input_dim : int
        Hidden size ``d`` of the backbone's token states.
    n_latents : int, default=1
        Number of learned latent vectors; with several, they are mean-pooled before
        the output layer (as in the authors' code).
    latent_dim : int, default=256
        Size of the latent state and of the shared key/value down-projection.
    n_heads : int, default=8
        Attention heads in each block; must divide ``latent_dim``.
    n_iterations : int, default=3
        Number of refinement blocks applied in sequence.
    ff_mult : int, default=4
        Width of the feed-forward layer as a multiple of ``latent_dim``.
    dropout : float, default=0.0
        Dropout on attention weights and inside the feed-forward layer.
    share_weights : bool, default=False
        If True, one block is applied ``n_iterations`` times (weight tying); the
        paper's configuration gives each block its own weights.
    input_norm : bool, default=False
        Apply a learned LayerNorm to the token states before the down-projection.
        Not in the paper; it tames the massive activations of intermediate layers.
    n_outputs : int, default=1
        Values predicted per row (one per target); the output is ``(B,)`` for one,
        ``(B, n_outputs)`` for several.

    Examples
    --------
    >>> import torch
    >>> from sklearn_relish import RelishHead
    >>> head = RelishHead(input_dim=4096)
    >>> sum(p.numel() for p in head.parameters())
    3418625
    >>> states, mask = torch.randn(2, 5, 4096), torch.ones(2, 5, dtype=torch.bool)
    >>> head(states, mask).shape
    torch.Size([2])
    """

    def __init__(
        self,
        input_dim: int,
        n_latents: int = 1,
        latent_dim: int = 256,
        n_heads: int = 8,
        n_iterations: int = 3,
        ff_mult: int = 4,
        dropout: float = 0.0,
        share_weights: bool = False,
        input_norm: bool = False,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        sizes = {"input_dim": input_dim, "n_latents": n_latents, "latent_dim": latent_dim,
                 "n_heads": n_heads, "n_iterations": n_iterations, "ff_mult": ff_mult,
                 "n_outputs": n_outputs}
        for name, size in sizes.items():  # torch would fail deep inside, or give NaN
            if not is_count(size, 1):
                raise ValueError(f"RelishHead's {name} must be a positive int; got {size!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"RelishHead's dropout must be in [0, 1); got {dropout!r}.")
        self.input_norm = nn.LayerNorm(input_dim) if input_norm else nn.Identity()
        # One projection feeds both keys and values (the paper's "shared" down-projection).
        self.project = nn.Linear(input_dim, latent_dim)
        self.latents = nn.Parameter(torch.randn(1, n_latents, latent_dim) * 0.02)
        n_distinct = 1 if share_weights else n_iterations
        blocks = [RefinementBlock(latent_dim, n_heads, ff_mult, dropout) for _ in range(n_distinct)]
        self.blocks = nn.ModuleList(blocks)
        self.n_iterations = n_iterations
        self.output = nn.Linear(latent_dim, n_outputs)

    def _project(self, states: torch.Tensor) -> torch.Tensor:
        """``project(input_norm(states))``, with the norm's scale folded into the projection.

        ``LayerNorm(x) = g * x_hat + b``, so ``W LayerNorm(x) + c = (W g) x_hat + (W b + c)``:
        the normalised states need no gradient, and ``g``'s gradient follows from the
        projection's weight gradient instead of a backward pass through every token (the
        same function and gradients; a fifth less work per training step on the CPU).
        """
        norm = self.input_norm
        if (not isinstance(norm, nn.LayerNorm) or norm.weight is None
                or states.requires_grad):  # gradients for the states: the plain path
            return self.project(norm(states))
        with torch.no_grad():
            normalised = F.layer_norm(states, norm.normalized_shape, eps=norm.eps)
        weight = self.project.weight * norm.weight
        bias = self.project.bias
        if norm.bias is not None:
            bias = bias + self.project.weight @ norm.bias
        return F.linear(normalised, weight, bias)

    def forward(
        self, token_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict one value per row.

        Parameters
        ----------
        token_states : Tensor of shape (B, S, d)
            Token-level hidden states of any floating dtype (cast to the head's dtype).
        attention_mask : Tensor of shape (B, S), optional
            Non-zero/True for real tokens, zero/False for padding. All tokens are real
            when omitted.

        Returns
        -------
        Tensor of shape (B,), or (B, n_outputs) when ``n_outputs > 1``
        """
        tokens = self._project(token_states.to(self.project.weight.dtype))
        if attention_mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        else:
            mask = attention_mask.to(device=tokens.device, dtype=torch.bool)
            # Masked weights are 0, but 0 * NaN is NaN: whatever padding holds (the output
            # of trained blocks over an all-padding row can be NaN on some kernels) must
            # not reach the sums over tokens.
            tokens = tokens.masked_fill(~mask[..., None], 0.0)
        latents = self.latents.expand(tokens.shape[0], -1, -1)
        for step in range(self.n_iterations):
            block = self.blocks[step % len(self.blocks)]
            latents = block(latents, tokens, mask)
        out = self.output(latents.mean(dim=1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out
