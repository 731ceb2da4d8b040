"""``LLMTextEncoder``: a frozen LLM's pooled token states as features for any estimator."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
import torch
from sklearn import config_context
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from ._backbones import DEFAULT_BACKBONE
from ._inputs import check_layer, check_prompt
from ._llm_params import LLM_CONSTRAINTS, LLMParamsMixin
from ._persistence import PickleFormatMixin
from ._sklearn_compat import Count, StrOptions

_POOLINGS = {"mean": ("mean",), "last": ("last",), "mean+last": ("mean", "last")}


def pool(states: list[torch.Tensor], how: str) -> np.ndarray:
    """One float32 row per text: the mean of its token states, or its last token's.

    An empty text (no token) gets a row of zeros rather than NaN.
    """
    rows = np.zeros((len(states), states[0].shape[1] if states else 0), dtype=np.float32)
    for i, s in enumerate(states):
        if s.shape[0]:
            rows[i] = (s.float().mean(dim=0) if how == "mean" else s[-1].float()).numpy()
    return rows


class LLMTextEncoder(TransformerMixin, LLMParamsMixin, PickleFormatMixin, BaseEstimator):
    """Encode texts (or pairs) as pooled hidden states of a frozen LLM.

    The features that RELISH's head reads, pooled so that any scikit-learn estimator can
    use them: ``make_pipeline(LLMTextEncoder(), RidgeCV())`` is the "mean-pool + Ridge"
    probe. It shares the backbone, the prompt and pair handling, and the token-state cache
    with :class:`RelishTextRegressor`: a text featurized by either is never run through
    the LLM again by the other, in any fold of a search. Like skrub's ``TextEncoder``,
    the backbone loads lazily, stays out of the pickle, and identical texts are encoded
    once; ``n_components`` reduces the features with a PCA fitted in ``fit``.

    Parameters
    ----------
    backbone : str or path-like, default=DEFAULT_BACKBONE
        Hugging Face id, local folder or embedded backbone, as in
        :class:`RelishTextRegressor`.
    layer : int, float or list of them, default=0.5
        Hidden states to read, as in :class:`RelishTextRegressor`; a list concatenates
        the pooled features of several layers (one pass of the LLM per layer, each only as
        deep as its layer, and each layer's states cached on their own).
    pooling : {"mean", "last", "mean+last"}, default="mean"
        Mean over a text's tokens, its last token (what decoder LLMs summarise into), or
        both side by side.
    n_components : int or None, default=None
        Reduce the features to this many PCA components (fitted in ``fit``); None keeps
        all ``hidden_size x layers x poolings`` of them.
    max_length, prompt, featurize_batch_size, cache, cache_dir, device, backbone_dtype, \
trust_remote_code, backbone_kwargs, verbose
        As in :class:`RelishTextRegressor`.
    random_state : int, RandomState instance or None, default=None
        Seeds the PCA's randomized solver.

    Attributes
    ----------
    featurizers_ : list
        One featurizer per layer; each holds the backbone's identity, not its weights.
    layers_ : list of int
        The hidden-state indices read, once the backbone's depth is known.
    hidden_size_ : int
        Width of the backbone's hidden states.
    pooling_ : str
        The pooling fitted; ``transform`` keeps it until the next ``fit``, like the layers
        and the PCA (a ``set_params(pooling=...)`` alone would change the features' meaning).
    pca_ : sklearn.decomposition.PCA
        The fitted PCA, when ``n_components`` is set.
    n_features_in_ : int
        1 for texts, 2 for text pairs.
    feature_names_in_ : ndarray of str
        Column names of a DataFrame ``X`` in fit (absent otherwise).

    Examples
    --------
    >>> from sklearn.linear_model import RidgeCV
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_relish import LLMTextEncoder
    >>> probe = make_pipeline(LLMTextEncoder("embedded:all-MiniLM-L6-v2"), RidgeCV())
    >>> probe = probe.fit(["great", "awful", "fine", "terrible"], [3.0, -3.0, 1.0, -2.5])
    >>> probe.predict(["lovely"]).shape
    (1,)
    """

    _parameter_constraints: dict = {
        **LLM_CONSTRAINTS,
        "layer": [Integral, float, np.floating, list, tuple],
        "pooling": [StrOptions(set(_POOLINGS))],
        "n_components": [Count(1), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        layer: int | float | list = 0.5,
        pooling: str = "mean",
        n_components: int | None = None,
        max_length: int = 512,
        prompt: str | None = None,
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
        self.pooling = pooling
        self.n_components = n_components
        self.max_length = max_length
        self.prompt = prompt
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
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []  # float32 features, whatever the input
        return tags

    def _layer_list(self) -> list[int | float]:
        layers = list(self.layer) if isinstance(self.layer, list | tuple) else [self.layer]
        if not layers:
            raise ValueError("layer is an empty list; name at least one layer.")
        return [check_layer(layer) for layer in layers]

    def fit(self, X: Any, y: Any = None) -> LLMTextEncoder:
        """Check the input, resolve the layers and fit the PCA if ``n_components`` is set.

        Parameters
        ----------
        X : list of str, list of (str, str), array-like or DataFrame
            Texts or text pairs.
        y : None
            Ignored.

        Returns
        -------
        self : LLMTextEncoder
        """
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the features of ``X`` (the LLM runs once per distinct text and
        layer, each pass only as deep as its layer).

        It takes no fit parameters, as ``fit`` takes none: a ``sample_weight`` routed to it
        by a Pipeline is refused rather than silently ignored.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
        """
        self._validate_params()
        layers = self._layer_list()
        texts, kind = self._check_texts(X, reset=True)
        if not texts:
            raise ValueError("X has no texts: LLMTextEncoder needs at least one to fit.")
        check_prompt(self.prompt, kind)
        featurizers = [self._make_featurizer(layer) for layer in layers]
        indices = [f.layer_index(f.loaded) for f in featurizers]
        for i, index in enumerate(indices):
            if index in indices[:i]:
                first = layers[indices.index(index)]
                raise ValueError(
                    f"layer={self.layer!r}: {first!r} and {layers[i]!r} are both hidden "
                    f"state {index} of this backbone, so its features would appear twice; "
                    "name each layer once.")
        n_features = featurizers[0].hidden_size * len(featurizers) * len(_POOLINGS[self.pooling])
        if self.n_components is not None and min(len(texts), n_features) < self.n_components:
            # Known from the config: refused before the LLM's pass, not after it.
            raise ValueError(
                f"n_components={self.n_components} needs at least that many texts and "
                f"features; got {len(texts)} texts with {n_features} features."
            )
        features = self._encode(featurizers, texts, kind, self.pooling)
        pca = None
        if self.n_components is not None:
            pca, features = self._fit_pca(features)
        self._record_columns(X, kind)
        self.featurizers_ = featurizers
        self.layers_ = indices
        self.pooling_ = self.pooling
        self.hidden_size_ = featurizers[0].hidden_size
        if pca is not None:
            self.pca_ = pca
        elif hasattr(self, "pca_"):
            del self.pca_
        return features

    def _fit_pca(self, features: np.ndarray):
        from sklearn.decomposition import PCA

        pca = PCA(self.n_components, random_state=self.random_state)
        with config_context(transform_output="default"):  # see transform
            return pca, pca.fit_transform(features).astype(np.float32)

    def transform(self, X: Any) -> np.ndarray:
        """Features of ``X``: pooled hidden states, PCA-reduced if ``n_components`` is set.

        Parameters
        ----------
        X : list of str, list of (str, str), array-like or DataFrame
            Same kind of input as in ``fit``.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
        """
        check_is_fitted(self, "featurizers_")
        texts, kind = self._check_texts(X, reset=False)
        featurizers = [self._sync_inference_settings(f) for f in self.featurizers_]
        features = self._encode(featurizers, texts, kind, self._fitted_pooling())
        if hasattr(self, "pca_"):
            if not texts:  # PCA refuses 0 samples; no texts have no components either
                return np.zeros((0, self.pca_.n_components_), np.float32)
            # The PCA inside must return an array whatever set_config(transform_output=)
            # says: a frame of its own (pca0.., index 0..n) overrode this encoder's
            # set_output and lost the input's index, which ColumnTransformer then refused.
            with config_context(transform_output="default"):
                features = self.pca_.transform(features).astype(np.float32)
        return features

    def _fitted_pooling(self) -> str:
        return getattr(self, "pooling_", self.pooling)  # encoders pickled before pooling_

    @staticmethod
    def _encode(featurizers: list, texts: list, kind: str, pooling: str) -> np.ndarray:
        blocks = []
        for i, featurizer in enumerate(featurizers):
            width = featurizer.hidden_size
            if not texts:
                blocks += [np.zeros((0, width), np.float32) for _ in _POOLINGS[pooling]]
                continue
            # Pooled chunk by chunk: only the pooled rows outlive a chunk's states.
            pooled: list[list[np.ndarray]] = [[] for _ in _POOLINGS[pooling]]
            # The same texts are cut whatever the layer: one truncation warning, not one
            # per layer.
            for _, states in featurizer.transform_chunks(texts, kind, warn=i == 0):
                for rows, how in zip(pooled, _POOLINGS[pooling], strict=True):
                    rows.append(pool(states, how))
            blocks += [np.concatenate(rows) for rows in pooled]
        return np.hstack(blocks)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output features: ``pc0, pc1, ...`` after a PCA, else
        ``mean_layer15_0, ...`` (pooling, layer index, dimension).

        Returns
        -------
        feature_names_out : ndarray of str
        """
        check_is_fitted(self, "featurizers_")
        _check_feature_names_in(self, input_features)
        if hasattr(self, "pca_"):
            return np.asarray([f"pc{i}" for i in range(self.pca_.n_components_)], dtype=object)
        names = [f"{how}_layer{layer}_{i}" for layer in self.layers_
                 for how in _POOLINGS[self._fitted_pooling()]
                 for i in range(self.hidden_size_)]
        return np.asarray(names, dtype=object)
