"""What every estimator of this package passes to the frozen LLM, in one place.

``RelishTextRegressor`` and ``LLMTextEncoder`` take the same flat, grid-searchable
parameters for the backbone (which model, which layer, prompt, truncation, batching,
cache, device). This mixin validates the texts, records the input's column names, builds
the featurizer from those parameters and keeps the settings that only change *how* the
LLM runs (batching, device, cache, progress) current after ``fit``, so that
``set_params(device="cpu")`` on a fitted model takes effect. No second copy of this
plumbing exists anywhere else.
"""

from __future__ import annotations

import copy
import os
from numbers import Integral, Real
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.utils.validation import validate_data

from ._backbones import absolute_if_folder
from ._featurizer import LLMFeaturizer
from ._inputs import PAIR, check_layer, check_texts
from ._sklearn_compat import Count, StrOptions, validate_parameter_constraints

LLM_CONSTRAINTS: dict = {
    "backbone": [str, os.PathLike],  # a pathlib.Path folder, as cache_dir takes one
    # check_layer gives the precise rule: one meaning per value, numpy scalars included.
    "layer": [Integral, Real],
    "max_length": [Count(1)],
    "prompt": [str, None],
    "featurize_batch_size": [Count(1), StrOptions({"auto"})],
    "cache": ["boolean"],
    "cache_dir": [str, os.PathLike, None],
    "device": [str],
    "backbone_dtype": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
    "trust_remote_code": ["boolean"],
    "backbone_kwargs": [dict, None],
    "verbose": ["verbose"],
}

# Parameter name -> featurizer attribute, for the settings that change how a text's
# states are computed (where, in which precision) or shown, not what they are: honoured
# when changed after fit. A head trained on bfloat16 states predicts from float32 ones as
# well, which is the way out of states that overflow at predict.
INFERENCE_ONLY = {
    "featurize_batch_size": "batch_size",
    "cache": "cache",
    "cache_dir": "cache_dir",
    "device": "device",
    "backbone_dtype": "dtype",
    # Where and how the weights are placed (device_map, quantisation): a revision naming
    # other weights is caught by the fingerprint check at the next load.
    "backbone_kwargs": "backbone_kwargs",
    "verbose": "verbose",
}


def store_folder(cache_dir: str | os.PathLike | None, name: str = "cache_dir") -> str | None:
    """``cache_dir`` as the absolute folder every process opens, or None for no store.

    Absolute because a featurizer sent to Dask workers, or a scheduler's job, runs in
    another working directory: a relative folder there is another store, filled while
    the client's stays empty. An empty name would mean "no store" to one caller and the
    working directory to another: it is refused.
    """
    if cache_dir is None:
        return None
    folder = os.fspath(cache_dir)
    if not isinstance(folder, str) or not folder.strip():
        raise ValueError(f"{name} must name a folder (or be None for no store); got "
                         f"{cache_dir!r}.")
    return os.path.abspath(os.path.expanduser(folder))


class LLMParamsMixin:
    """Texts in, featurizer out, for estimators that carry :data:`LLM_CONSTRAINTS`."""

    def _check_texts(self, X: Any, *, reset: bool) -> tuple[list, str]:
        """Validate texts or pairs; unless ``reset``, check them against the fitted columns.

        With ``reset`` nothing is recorded yet: :meth:`_record_columns` does that once fit
        has succeeded, so a failed refit leaves the fitted model's columns as they were.
        """
        texts, kind = check_texts(X)
        if reset:
            # DataFrame column names (all strings, or none) are checked before any model
            # loads, on a stand-in: this estimator records them only once fit succeeds.
            validate_data(BaseEstimator(), X, skip_check_array=True, reset=True,
                          ensure_2d=False)
        if not reset and not texts and getattr(X, "ndim", 1) == 1 and not (
                hasattr(X, "columns") or hasattr(X, "column_names")):
            # An empty list or 1-D array (a Series a mask emptied) has no columns to tell
            # texts from pairs: it is the fitted kind. An empty DataFrame keeps its columns.
            kind = PAIR if self.n_features_in_ == 2 else kind
        if not reset:
            # Column names of a DataFrame are checked against fit's, so swapped pair
            # columns are an error rather than silently reversed pairs.
            validate_data(self, X, skip_check_array=True, reset=False, ensure_2d=False)
            n_columns = 2 if kind == PAIR else 1
            if n_columns != self.n_features_in_:
                fitted = "text pairs" if self.n_features_in_ == 2 else "single texts"
                raise ValueError(
                    f"X has {n_columns} column(s) but this model was fitted on {fitted} "
                    f"({self.n_features_in_} column(s)); pass the same kind of X as in fit."
                )
        return texts, kind

    def _record_columns(self, X: Any, kind: str) -> None:
        """Record ``n_features_in_`` (1 for texts, 2 for pairs) and DataFrame column names."""
        validate_data(self, X, skip_check_array=True, reset=True, ensure_2d=False)
        self.n_features_in_ = 2 if kind == PAIR else 1

    def _make_featurizer(self, layer: int | float | None = None) -> LLMFeaturizer:
        return LLMFeaturizer(
            absolute_if_folder(self.backbone),  # what the fitted model records
            layer=check_layer(self.layer if layer is None else layer),
            max_length=self.max_length,
            prompt=self.prompt,
            batch_size=self.featurize_batch_size,
            device=self.device,
            dtype=self.backbone_dtype,
            trust_remote_code=self.trust_remote_code,
            # A copy: the user's dict edited in place and given back with set_params would
            # otherwise compare equal to itself, and the old placement be kept silently.
            backbone_kwargs=copy.deepcopy(self.backbone_kwargs),
            cache=self.cache,
            cache_dir=store_folder(self.cache_dir),
            verbose=self.verbose,
        )

    def _featurizer_to_train_on(self) -> LLMFeaturizer:
        """The featurizer whose states the head trains on: ``layer``, or with
        ``train_top_layers=k`` the layer ``k`` blocks below it (the trained blocks run
        on top of those states)."""
        featurizer = self._make_featurizer()
        n_blocks = getattr(self, "train_top_layers", 0)
        if not n_blocks:
            return featurizer
        read = featurizer.layer_index()  # from the config: no weights on a cluster's client
        if read < n_blocks:
            raise ValueError(
                f"train_top_layers={n_blocks} trains the blocks below the layer the head "
                f"reads, but layer={self.layer} is hidden state {read} of "
                f"{self.backbone!r}, which has only {read} block(s) below it; raise layer or "
                "lower train_top_layers."
            )
        return self._make_featurizer(layer=read - n_blocks)

    def _sync_inference_settings(self, featurizer: LLMFeaturizer) -> LLMFeaturizer:
        """Apply inference-only parameters changed since fit to a fitted featurizer.

        They are validated here as fit validates them: ``set_params`` checks nothing, and
        ``featurize_batch_size=0`` failed deep inside, ``cache="no"`` read as True.
        """
        validate_parameter_constraints(
            {param: LLM_CONSTRAINTS[param] for param in INFERENCE_ONLY},
            {param: getattr(self, param) for param in INFERENCE_ONLY},
            caller_name=type(self).__name__,
        )
        for param, attribute in INFERENCE_ONLY.items():
            value = getattr(self, param)
            if param == "cache_dir":
                value = store_folder(value)
            elif param == "backbone_kwargs":
                value = copy.deepcopy(value)
            if getattr(featurizer, attribute) != value:
                setattr(featurizer, attribute, value)
                if attribute in ("device", "dtype", "backbone_kwargs"):
                    featurizer._loaded = None  # re-resolved (and re-loaded) on next use
        return featurizer
