"""RELISH for scikit-learn: regression from text with a frozen LLM and a small trained head.

torch and transformers stay behind this boundary: ``import sklearn_relish`` loads no model;
a backbone is read from disk on the first ``fit`` or ``predict`` and then shared.
"""

from ._backbones import DEFAULT_BACKBONE, clear_backbones
from ._cache import cache_info, clear_cache, set_cache_max_bytes
from ._distributed import featurize_to_store
from ._encoder import LLMTextEncoder
from ._estimator import RelishTextRegressor
from ._featurizer import BackboneMismatchError
from ._head import RelishHead
from ._persistence import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneMismatchError",
    "LLMTextEncoder",
    "RelishHead",
    "RelishTextRegressor",
    "cache_info",
    "clear_backbones",
    "clear_cache",
    "featurize_to_store",
    "load_model",
    "save_model",
    "set_cache_max_bytes",
]
