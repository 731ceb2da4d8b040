"""Datasets for text regression.

Only standard library, numpy and scikit-learn are imported here, so that the data
can be prepared (``python -m sklearn_relish.datasets``) before the heavier
dependencies of the package are needed.
"""

from ._vader import load_vader

__all__ = ["load_vader"]
