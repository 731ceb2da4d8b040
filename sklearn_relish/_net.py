"""skorch glue: ragged token states as a dataset, padded per batch for the head.

Token states differ in length from text to text. Rather than padding the whole data set
to its longest text (memory) or to ``max_length`` (compute), each batch is padded to its
own longest text when the DataLoader collates it, with a mask marking the real tokens.
"""

from __future__ import annotations

import torch
from skorch import NeuralNetRegressor
from torch.utils.data import Dataset


class TokenStateDataset(Dataset):
    """Per-text token states ``(n_tokens_i, d)`` with their (standardised) targets."""

    def __init__(self, states: list[torch.Tensor], y: torch.Tensor | None = None) -> None:
        self.states = states
        self.y = torch.zeros(len(states)) if y is None else torch.as_tensor(y, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states[index], self.y[index]


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict, torch.Tensor]:
    """Pad a batch to its longest text; the mask is True on real tokens.

    At least one position is kept so that a batch of empty texts still has a shape the
    head accepts (fully masked rows give the head's "no evidence" prediction).
    """
    states, targets = zip(*batch, strict=True)
    longest = max(1, max(s.shape[0] for s in states))
    dim = states[0].shape[1]
    padded = torch.zeros(len(states), longest, dim, dtype=states[0].dtype)
    mask = torch.zeros(len(states), longest, dtype=torch.bool)
    for row, s in enumerate(states):
        padded[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = True
    return {"token_states": padded, "attention_mask": mask}, torch.stack(targets)


class RelishNet(NeuralNetRegressor):
    """``NeuralNetRegressor`` over :class:`TokenStateDataset`; 1-D targets, 1-D outputs.

    The head returns one value per row, so the loss compares ``(B,)`` with ``(B,)``; no
    2-D float32 target is asked of the user.
    """

    def get_loss(self, y_pred, y_true, X=None, training=False):
        return super().get_loss(y_pred.reshape(-1), y_true.reshape(-1), X=X, training=training)
