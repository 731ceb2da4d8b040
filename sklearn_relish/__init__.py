"""RELISH for scikit-learn: regression from text with a frozen LLM and a small trained head.

torch and transformers stay behind this boundary: ``import sklearn_relish`` loads no model;
a backbone is read from disk on the first ``fit`` or ``predict`` and then shared.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# ``sklearn_relish.datasets`` (the data, ``python -m sklearn_relish.datasets``) needs
# neither torch nor skorch, and ``import sklearn_relish`` stays quick.
_PUBLIC = {
    "DEFAULT_BACKBONE": "_backbones", "clear_backbones": "_backbones",
    "cache_info": "_cache", "clear_cache": "_cache", "set_cache_max_bytes": "_cache",
    "featurize_to_store": "_distributed", "LLMTextEncoder": "_encoder",
    "RelishTextRegressor": "_estimator", "BackboneMismatchError": "_featurizer",
    "RelishHead": "_head", "load_model": "_persistence", "save_model": "_persistence",
}

if TYPE_CHECKING:  # what static tools and IDEs should see
    from ._backbones import DEFAULT_BACKBONE, clear_backbones
    from ._cache import cache_info, clear_cache, set_cache_max_bytes
    from ._distributed import featurize_to_store
    from ._encoder import LLMTextEncoder
    from ._estimator import RelishTextRegressor
    from ._featurizer import BackboneMismatchError
    from ._head import RelishHead
    from ._persistence import load_model, save_model


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


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
