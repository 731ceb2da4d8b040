"""The one place that touches scikit-learn's private parameter-validation module.

``_parameter_constraints`` with ``Interval``/``StrOptions`` is how scikit-learn's own
estimators declare their parameters, and its estimator checks (``check_param_validation``)
read them; but the module is private and may move in a minor release. The supported
range is pinned in pyproject.toml (tested in CI with the version it installs); outside it,
this import fails with a message that says what to do instead of an obscure traceback.
"""

from __future__ import annotations

from numbers import Integral

from ._inputs import is_count

try:
    from sklearn.utils._param_validation import (
        Interval,
        StrOptions,
        validate_parameter_constraints,
    )
except ImportError as error:  # pragma: no cover - only with an untested scikit-learn
    import sklearn

    raise ImportError(
        f"sklearn_relish needs scikit-learn's parameter validation "
        f"(sklearn.utils._param_validation), which scikit-learn {sklearn.__version__} does "
        "not provide; install a supported version: pip install 'scikit-learn>=1.6,<1.10'."
    ) from error

class Count(Interval):
    """An ``int`` of at least ``left``, numpy ints included and bools refused.

    ``Interval(Integral, ...)`` takes ``True`` for 1: ``max_epochs=True`` trained one epoch
    and ``n_heads=True`` failed inside torch. scikit-learn's own message names the rule.
    """

    def __init__(self, left: int) -> None:
        super().__init__(Integral, left, None, closed="left")

    def is_satisfied_by(self, val: object) -> bool:
        return is_count(val, self.left)


__all__ = ["Count", "Interval", "StrOptions", "validate_parameter_constraints"]
