"""skorch glue: ragged token states as a dataset, padded per batch for the head.

Token states differ in length from text to text. Rather than padding the whole data set
to its longest text (memory) or to ``max_length`` (compute), each batch is padded to its
own longest text when the DataLoader collates it, with a mask marking the real tokens.
Training batches group texts of similar length (``_batching.py``); inference batches
hold as many texts as a budget of padded elements allows, in the order given, so
:func:`predict_states` sorts by length first and restores the order after.
"""

from __future__ import annotations

import threading
import warnings
from numbers import Real
from typing import Any

import numpy as np
import torch
from skorch import NeuralNetRegressor
from skorch.callbacks import EarlyStopping
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Subset

from ._batching import BucketBatchSampler, fill_batches, inference_budget, longest_first
from ._console import print_epoch_line
from ._head import RelishHead
from ._intervals import PointAndQuantileLoss, outputs_per_target
from ._sklearn_compat import Count, Interval, StrOptions
from ._splits import (
    DistinctTextSplit,
    check_holdout,
    describe_count,
    holdout_candidates,
    holdout_size,
)

# torch has one random stream per process: fits that overlap in threads would seed and
# restore it over each other (another fit's initialisation, batch order and dropout), so
# they take turns. Each already uses torch's intra-op threads; processes still run at once.
_TRAINING_LOCK = threading.RLock()

LOSSES = {"huber": torch.nn.HuberLoss, "mse": torch.nn.MSELoss}

# The head's and the training loop's parameters, as RelishTextRegressor declares them.
HEAD_CONSTRAINTS: dict = {
    "n_latents": [Count(1)],
    "latent_dim": [Count(1)],
    "n_heads": [Count(1)],
    "n_iterations": [Count(1)],
    "ff_mult": [Count(1)],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    "share_weights": ["boolean"],
    "input_norm": ["boolean"],
    "loss": [StrOptions(set(LOSSES))],
    "huber_delta": [Interval(Real, 0, None, closed="neither")],
    "lr": [Interval(Real, 0, None, closed="neither")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "batch_size": [Count(1)],
    "max_epochs": [Count(1)],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "patience": [Count(1)],
    "train_top_layers": [Count(0)],
    "top_layers_lr": [Interval(Real, 0, None, closed="neither")],
}


class TokenStateDataset(Dataset):
    """Per-text token states ``(n_tokens_i, d)`` with their (standardised) targets and weights.

    Each item is ``(states, (target, weight))``: the weight travels with its text through
    skorch's validation split, so the early-stopping loss is weighted too.
    """

    def __init__(self, states: list[torch.Tensor], y: Any = None, weights: Any = None) -> None:
        self.states = states
        n = len(states)
        self.y = torch.zeros(n) if y is None else torch.as_tensor(y, dtype=torch.float32)
        self.weights = (torch.ones(n) if weights is None
                        else torch.as_tensor(weights, dtype=torch.float32))

    def __len__(self) -> int:
        return len(self.states)

    @property
    def lengths(self) -> list[int]:
        return [int(s.shape[0]) for s in self.states]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.states[index], (self.y[index], self.weights[index])


def dataset_lengths(dataset: Dataset) -> list[int]:
    """Token counts of a :class:`TokenStateDataset` or of skorch's subset of one."""
    if isinstance(dataset, Subset):
        lengths = dataset_lengths(dataset.dataset)
        return [lengths[i] for i in dataset.indices]
    return dataset.lengths


def pad_collate(batch: list) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """Pad a batch to its longest text; the mask is True on real tokens.

    At least one position is kept so that a batch of empty texts still has a shape the
    head accepts (fully masked rows give the head's "no evidence" prediction).
    """
    states, labels = zip(*batch, strict=True)
    targets, weights = zip(*labels, strict=True)
    if len({s.dtype for s in states}) > 1:  # float16 and bfloat16 texts (see CachedStates)
        states = [s.float() for s in states]
    padded = pad_sequence(list(states), batch_first=True)
    if padded.shape[1] == 0:
        padded = padded.new_zeros(len(states), 1, padded.shape[2])
    lengths = torch.tensor([s.shape[0] for s in states], device=padded.device)
    mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return ({"token_states": padded, "attention_mask": mask},
            (torch.stack(targets), torch.stack(weights)))


class _EarlyStop(KeyboardInterrupt):
    """skorch's EarlyStopping ends training by raising KeyboardInterrupt; this subclass lets
    ``RelishNet.fit_loop`` tell that planned stop from the user's Ctrl-C."""


class RelishEarlyStopping(EarlyStopping):
    """skorch's EarlyStopping, raising :class:`_EarlyStop` (not a bare KeyboardInterrupt)."""

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            if self.misses_ == self.patience:  # its own signal, not a Ctrl-C
                raise _EarlyStop from None
            raise


def make_early_stopping(patience: int) -> RelishEarlyStopping:
    """Early stopping on the validation loss, restoring the best epoch's weights."""
    return RelishEarlyStopping(monitor="valid_loss", patience=patience, load_best=True)


class _Interrupted(Exception):
    """Carries a KeyboardInterrupt past skorch's handler (see ``RelishNet.fit_loop``)."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__()
        self.interrupt = interrupt


class RelishNet(NeuralNetRegressor):
    """``NeuralNetRegressor`` over :class:`TokenStateDataset`, with per-text weights.

    The head returns ``(B,)`` or ``(B, k)``; the loss reshapes both sides alike, so no
    2-D float32 target is asked of the user.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A head trained on "cuda:1" (or on "cuda" while GPU 1 was current) names that GPU;
        # skorch would load it there and fail on a machine with one GPU, with a message
        # about torch.load. It goes to this machine's current GPU instead (no GPU at all:
        # skorch maps it to the CPU).
        device = state.get("device")
        if isinstance(device, str) and device.startswith("cuda:") and \
                torch.cuda.is_available():
            index = torch.device(device).index
            if index is not None and index >= torch.cuda.device_count():
                state["device"] = "cuda"
        super().__setstate__(state)

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # skorch's partial_fit swallows KeyboardInterrupt and returns a half-trained net;
        # a scikit-learn fit must let Ctrl-C through (cross_val_score would carry on with
        # the next fold). Smuggle it past skorch's handler and re-raise it in partial_fit.
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except _EarlyStop:
            raise  # skorch catches it and restores the best epoch, as designed
        except KeyboardInterrupt as interrupt:
            raise _Interrupted(interrupt) from interrupt

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        try:
            return super().partial_fit(X, y, classes=classes, **fit_params)
        except _Interrupted as carried:
            raise carried.interrupt from None

    def get_split_datasets(self, X, y=None, **fit_params):
        # A part whose texts all weigh 0 measures nothing: its loss is 0 whatever the head
        # does, so early stopping would keep the first epoch (or nothing would train).
        train, valid = super().get_split_datasets(X, y, **fit_params)
        for part, dataset in (("trained on", train), ("held out for early stopping", valid)):
            if not isinstance(dataset, Subset) or not isinstance(dataset.dataset,
                                                                  TokenStateDataset):
                continue
            if not bool(dataset.dataset.weights[list(dataset.indices)].sum() > 0):
                raise ValueError(
                    f"sample_weight is 0 on every one of the {len(dataset)} texts "
                    f"{part} (validation_fraction={self.train_split.cv}); give some of them "
                    "weight, or set early_stopping=False."
                )
        return train, valid

    def get_iterator(self, dataset, training=False):
        # Training: shuffled batches of similar lengths. Inference: the given order, cut
        # into batches of a padded-size budget (much larger than a training batch).
        lengths = dataset_lengths(dataset)
        if training:
            batches = BucketBatchSampler(lengths, self.batch_size)
        else:
            budget = inference_budget(self.module__input_dim, self.batch_size,
                                      max(lengths, default=1))
            batches = fill_batches(range(len(lengths)), lengths, budget)
            # Every DataLoader draws a seed when iterated, from torch's global stream
            # unless given a generator: a predict (or a fit's calibration pass) would move
            # the user's stream and the stream a fit in another thread is seeded on.
            return DataLoader(dataset, batch_sampler=batches, collate_fn=pad_collate,
                              generator=torch.Generator())
        return DataLoader(dataset, batch_sampler=batches, collate_fn=pad_collate)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        # The criterion is built with reduction="none": average over targets, then weight
        # each text. Weights were scaled to mean 1 over the texts given to fit (about 1 on
        # the part trained on), so the batch's sum over its rows estimates the weighted
        # mean loss of the whole set without bias (unweighted fits get the plain mean) and
        # the lr keeps its meaning. Dividing by the batch's own weight sum instead would
        # scale light batches up to full strength and give 0/0 on a batch of zero weights.
        from skorch.utils import to_tensor

        targets, weights = to_tensor(y_true, device=self.device)
        rows = targets.shape[0]
        per_text = self.criterion_(y_pred.reshape(rows, -1), targets.reshape(rows, -1))
        per_text = per_text.mean(dim=1)
        return (per_text * weights).sum() / rows


def build_net(params: Any, input_dim: int, n_samples: int, seed: int, device,
              n_outputs: int = 1, featurizer: Any = None,
              groups: np.ndarray | None = None, weights: np.ndarray | None = None,
              warn_without_holdout: bool = True) -> RelishNet:
    """The skorch training loop for a head configured by an estimator's parameters.

    ``params`` is the estimator (anything with its head and training attributes): the
    estimator keeps flat, grid-searchable parameters and this turns them into skorch's.
    With ``params.train_top_layers``, ``featurizer`` reads the states below the trained
    blocks and the module is a :class:`TopLayersHead`. ``groups`` (:func:`distinct_ids`)
    keeps every copy of a repeated text on one side of the early-stopping hold-out, which
    takes only texts of positive ``weights``.
    """
    early_stopping = params.early_stopping
    ids = np.arange(n_samples) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_distinct = int(ids.max()) + 1 if n_samples else 0
    n_weighted = len(holdout_candidates(ids.reshape(-1), weights))
    counted = describe_count(n_samples, n_distinct, n_weighted)
    if early_stopping:
        check_holdout(params.validation_fraction, n_samples, n_distinct, n_weighted)
    if early_stopping and holdout_size(n_weighted, params.validation_fraction) < 2:
        if warn_without_holdout:
            warnings.warn(
                f"early_stopping needs at least 2 validation texts, but "
                f"validation_fraction={params.validation_fraction} of {counted} gives "
                f"fewer; training for max_epochs={params.max_epochs} without it.",
                UserWarning,
                stacklevel=4,
            )
        early_stopping = False
    callbacks = []
    if early_stopping:
        callbacks.append(("early_stopping", make_early_stopping(params.patience)))
    # A plain float: torch's HuberLoss refuses numpy scalars (a GridSearchCV grid's).
    delta = {"delta": float(params.huber_delta)} if params.loss == "huber" else {}
    point_loss = LOSSES[params.loss](reduction="none", **delta)
    if params.intervals == "cqr":  # two more outputs per target: the 5% and 95% quantiles
        criterion = {"criterion": PointAndQuantileLoss, "criterion__point_loss": point_loss}
        n_outputs *= outputs_per_target("cqr")
    else:
        criterion = {"criterion": type(point_loss), "criterion__reduction": "none",
                     **{f"criterion__{name}": value for name, value in delta.items()}}
    module: dict[str, Any] = {"module": RelishHead}
    if getattr(params, "train_top_layers", 0):
        from ._top_layers import TopLayersHead

        module = {"module": TopLayersHead, "module__featurizer": featurizer,
                  "module__first_block": featurizer.layer,
                  # a plain int: transformers' strict configs refuse numpy's (GridSearchCV's)
                  "module__n_blocks": int(params.train_top_layers),
                  # Pretrained blocks want a fine-tuning learning rate, the new head its own.
                  "optimizer__param_groups": [("top.*", {"lr": params.top_layers_lr})]}
    return RelishNet(
        **module,
        module__input_dim=input_dim,
        module__n_latents=params.n_latents,
        module__latent_dim=params.latent_dim,
        module__n_heads=params.n_heads,
        module__n_iterations=params.n_iterations,
        module__ff_mult=params.ff_mult,
        module__dropout=params.dropout,
        module__share_weights=params.share_weights,
        module__input_norm=params.input_norm,
        module__n_outputs=n_outputs,
        **criterion,
        optimizer=torch.optim.AdamW,
        optimizer__weight_decay=params.weight_decay,
        # One kernel for all parameters instead of a Python loop over them: on the CPU the
        # loop cost as much as the backward pass of a 16-text step.
        optimizer__fused=True,
        lr=params.lr,
        batch_size=params.batch_size,
        max_epochs=params.max_epochs,
        train_split=(
            DistinctTextSplit(params.validation_fraction, random_state=seed, groups=groups)
            if early_stopping else None
        ),
        callbacks=callbacks,
        device=str(device),
        verbose=params.verbose,
        # A sink other than print prints whatever verbose says: set only when verbose.
        **({"callbacks__print_log__sink": print_epoch_line} if params.verbose else {}),
    )


def train_head(params: Any, input_dim: int, states: list[torch.Tensor], scaled: np.ndarray,
               weights: np.ndarray, seed: int, device: torch.device, n_outputs: int,
               featurizer: Any = None, constant: bool = False,
               groups: np.ndarray | None = None, warn_without_holdout: bool = True
               ) -> RelishNet:
    """Build a net for ``params`` and train it on ``states`` with standardised targets.

    A ``constant`` target (scale 0 over the whole training set) is not trained: the
    estimator predicts its value exactly whatever the head outputs. The user's global
    torch seed is neither used nor disturbed: training draws from a private stream
    seeded with ``seed``, which fits in other threads wait to share (``_TRAINING_LOCK``).
    """
    net = build_net(params, input_dim, len(states), seed, device, n_outputs, featurizer,
                    groups, weights, warn_without_holdout)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with _TRAINING_LOCK, torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if not constant:
            net.fit(TokenStateDataset(states_for_training(states, device), scaled, weights),
                    y=None)
        else:
            net.initialize()  # constant targets are predicted exactly: nothing to learn
    check_trained_head(net, params.lr, getattr(params, "train_top_layers", 0) and
                       params.top_layers_lr)
    return net


def states_for_training(states: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The states where the head trains: on the accelerator when they take at most half
    of its free memory (each batch is then padded there, with no host-to-device copy per
    step), else where they are."""
    if device.type != "cuda":
        return states
    free, _ = torch.cuda.mem_get_info(device)
    if sum(s.nbytes for s in states) > free // 2:
        return states
    return [s.to(device, non_blocking=True) for s in states]


def predict_states(net: RelishNet, states: list[torch.Tensor]) -> np.ndarray:
    """The head's raw outputs for ``states``, in their order, batched longest first."""
    order = longest_first([s.shape[0] for s in states])
    raw = np.asarray(net.predict(TokenStateDataset([states[i] for i in order])))
    restored = np.empty_like(raw)
    restored[order] = raw
    return restored


def training_diagnostics(net: RelishNet) -> dict[str, Any]:
    """scikit-learn-style training attributes from skorch's history.

    ``n_iter_`` epochs run, ``loss_curve_`` and ``validation_loss_curve_`` per epoch (the
    latter None without early stopping), ``best_iteration_`` the 1-based epoch whose
    weights were kept (the last one without early stopping; 0 when nothing was trained).
    """
    history = net.history
    n_epochs = len(history)
    losses = [float(v) for v in history[:, "train_loss"]] if n_epochs else []
    has_validation = n_epochs and "valid_loss" in history[-1]
    best = max((getattr(cb, "best_epoch_", 0) for _, cb in net.callbacks_), default=0)
    return {
        "n_iter_": n_epochs,
        "loss_curve_": losses,
        "validation_loss_curve_": (
            [float(v) for v in history[:, "valid_loss"]] if has_validation else None
        ),
        "best_iteration_": int(best) if best else n_epochs,
    }


def sync_net_device(net: RelishNet, device: str) -> None:
    """Move a fitted head to the device the estimator's ``device`` names now."""
    from ._backbones import resolve_device

    target = str(resolve_device(device))
    if str(net.device) != target:
        net.module_.to(target)
        net.device = target


def check_trained_head(net: Any, lr: float, top_layers_lr: float | None = None) -> None:
    """Refuse a head whose training diverged: its predictions would be NaN or garbage.

    With trained blocks (``top_layers_lr``) either rate may be the culprit: both named.
    """
    params = net.module_.parameters()
    if all(bool(torch.isfinite(p).all()) for p in params):
        return
    if top_layers_lr:
        raise ValueError(
            f"Training diverged: the weights became NaN or infinite (lr={lr:g} for the head, "
            f"top_layers_lr={top_layers_lr:g} for the trained blocks). Lower top_layers_lr "
            "(1e-4 suits pretrained blocks) or lr (the default is 3e-4), or check the "
            "targets for extreme values.")
    raise ValueError(
        f"Training diverged: the head's weights became NaN or infinite (lr={lr:g}). Lower lr "
        "(the default is 3e-4) or check the targets for extreme values."
    )


def drop_training_state(net: Any) -> None:
    # The head is final after fit: Adam's two moment buffers and early stopping's copy of
    # the best weights would triple the pickle and serve no prediction.
    net.optimizer_.state.clear()
    for _, callback in net.callbacks_:
        if hasattr(callback, "best_model_weights_"):
            callback.best_model_weights_ = None
