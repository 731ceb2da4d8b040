"""Validation of texts, text pairs, targets and prompt templates.

Everything here runs before any model is loaded, so bad input fails in milliseconds with a
message that names the offending row, never as a torch traceback from deep inside.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.utils import check_consistent_length, column_or_1d

SINGLE, PAIR = "single", "pair"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return type(value).__name__ in {"NAType", "NaTType"}  # pandas' missing markers


def _check_text(value: Any, where: str) -> str:
    if _is_missing(value):
        raise ValueError(
            f"{where} is missing ({value!r}). Drop or fill missing texts before fitting, "
            "e.g. X.fillna('')."
        )
    if not isinstance(value, str):
        raise TypeError(
            f"{where} is a {type(value).__name__} ({value!r:.50}), not a str. Convert the "
            "column to text first, e.g. X.astype(str)."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} contains invalid Unicode (a lone surrogate at character "
            f"{error.start}); clean it, e.g. text.encode('utf-8', 'replace').decode()."
        ) from None
    return value


def _rows(X: Any) -> tuple[list, int | None]:
    """Rows of ``X`` as a list, and its number of columns when it is 2-D (else None)."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # pandas DataFrame
        values = X.to_numpy(dtype=object)
        return list(values), values.shape[1]
    if hasattr(X, "to_numpy"):  # pandas Series
        return list(X.to_numpy(dtype=object)), None
    if isinstance(X, np.ndarray):
        if X.ndim == 1:
            return list(X), None
        if X.ndim == 2:
            return list(X), X.shape[1]
        raise ValueError(f"X must be 1-D (texts) or 2-D (text pairs); got shape {X.shape}.")
    if isinstance(X, Sequence):
        return list(X), None
    if isinstance(X, set | frozenset):  # no row order: predictions could not be matched up
        raise TypeError(
            f"X must be an ordered collection of texts; got a {type(X).__name__}, whose "
            "order is arbitrary. Pass a list, e.g. sorted(X)."
        )
    if hasattr(X, "__iter__") and not isinstance(X, dict):
        return list(X), None
    raise TypeError(
        f"X must be a list of texts, a list of (text_a, text_b) pairs, an array or a "
        f"DataFrame; got {type(X).__name__}."
    )


def check_texts(X: Any) -> tuple[list, str]:
    """Validate texts or text pairs.

    Returns
    -------
    texts : list of str, or list of (str, str)
    kind : "single" or "pair"
    """
    if isinstance(X, str | bytes):
        raise TypeError(
            "X must be a collection of texts, got a single string. Wrap it in a list: "
            "predict([text])."
        )
    rows, n_columns = _rows(X)
    if n_columns is None and rows and all(isinstance(r, tuple | list | np.ndarray) for r in rows):
        n_columns = len(rows[0])
        for i, row in enumerate(rows):
            if len(row) != n_columns:
                raise ValueError(
                    f"X row {i} has {len(row)} parts, row 0 has {n_columns}: every pair must "
                    "be (text_a, text_b)."
                )
    if n_columns is None:
        return [_check_text(row, f"X[{i}]") for i, row in enumerate(rows)], SINGLE
    if n_columns == 1:
        return [_check_text(row[0], f"X[{i}]") for i, row in enumerate(rows)], SINGLE
    if n_columns == 2:
        pairs = [
            (_check_text(row[0], f"X[{i}][0]"), _check_text(row[1], f"X[{i}][1]"))
            for i, row in enumerate(rows)
        ]
        return pairs, PAIR
    raise ValueError(
        f"X has {n_columns} columns; give one column of texts or two columns of text pairs."
    )


def check_target(y: Any, n_samples: int) -> np.ndarray:
    """Validate a regression target: 1-D, numeric, finite, one value per text."""
    if y is None:
        raise ValueError("y is required: RelishTextRegressor is a supervised regressor.")
    values = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if values.dtype.kind in "US" and not hasattr(y, "dtype"):
        # A list mixing numbers and strings: numpy turned every entry into a string; keep
        # the entries as they were so the error below names the row that really is one.
        values = np.asarray(y, dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = column_or_1d(values, warn=True)  # with scikit-learn's DataConversionWarning
    if values.ndim != 1:
        raise ValueError(
            f"y must be 1-D (one target per text); got shape {values.shape}. "
            "RelishTextRegressor predicts a single number per text."
        )
    if values.dtype.kind == "c":
        non_real = np.flatnonzero(values.imag != 0)
        row = int(non_real[0]) if non_real.size else 0
        raise ValueError(
            f"y must be real numbers; y[{row}] is complex ({values[row]}). Pass the real "
            "part explicitly if that is what you mean, e.g. y.real."
        )
    if values.dtype.kind not in "biuf":
        # Like scikit-learn, refuse strings (even "1.5": a column read as text is a bug
        # upstream) and complex numbers (float() would silently drop the imaginary part).
        floats = np.empty(values.shape[0], dtype=np.float64)
        for i, value in enumerate(values):
            if _is_missing(value):
                floats[i] = np.nan  # reported as missing below, with its row
                continue
            if isinstance(value, str | bytes | complex | np.complexfloating):
                raise ValueError(
                    f"y must be real numbers; y[{i}] is a {type(value).__name__} "
                    f"({value!r:.50}). Convert y first, e.g. y.astype(float)."
                )
            try:
                floats[i] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"y must be real numbers; y[{i}] is a {type(value).__name__} "
                    f"({value!r:.50})."
                ) from None
        values = floats
    values = values.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"y contains {bad.size} missing, NaN or infinite value(s), first at y[{bad[0]}] "
            f"({values[bad[0]]}). Drop those rows before fitting."
        )
    spread = target_scale(values) if values.size else 0.0
    if not math.isfinite(spread):
        raise ValueError(
            f"y is too large to standardise in float64 (largest |y| is "
            f"{np.abs(values).max():.3g}); rescale it, e.g. y / 1e100."
        )
    try:
        check_consistent_length(values, np.empty(n_samples))
    except ValueError:
        raise ValueError(f"X has {n_samples} texts but y has {values.shape[0]} values.") from None
    return values


def target_scale(values: np.ndarray) -> float:
    """Standard deviation of ``values`` that neither underflows nor overflows needlessly.

    ``np.std`` squares the deviations, so targets around 1e-200 get a spread of exactly 0
    and would be taken for a constant; dividing by the largest deviation first keeps the
    squares near 1. Returns 0.0 only when all values are equal, inf when the deviations
    themselves overflow float64.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        deviations = values - values.mean()
        largest = float(np.max(np.abs(deviations)))
        if largest == 0.0 or not math.isfinite(largest):
            return largest
        return largest * float(np.std(deviations / largest))


_FIELDS = {SINGLE: {"text"}, PAIR: {"text_a", "text_b"}}


def check_prompt(prompt: str | None, kind: str) -> None:
    """A template must name exactly the fields of its input kind, ``{text}`` or both pair fields."""
    if prompt is None:
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    except ValueError as error:
        raise ValueError(f"prompt {prompt!r} is not a valid template: {error}.") from None
    expected = _FIELDS[kind]
    if fields != expected:
        wanted = " and ".join("{" + f + "}" for f in sorted(expected))
        raise ValueError(
            f"prompt for {kind} inputs must contain {wanted} and no other field; got fields "
            f"{sorted(fields)} in {prompt!r}. Write literal braces as {{{{ and }}}}."
        )
    # Fields can carry a format spec or conversion that fails on a str ("{text:d}"): try
    # it now, before any model loads, rather than deep inside featurization.
    try:
        prompt.format(**dict.fromkeys(expected, "text"))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(
            f"prompt {prompt!r} cannot be filled with text: {error}. Use plain fields such as "
            f"{'{'}text{'}'} without a format spec."
        ) from None


def format_texts(texts: list, kind: str, prompt: str | None, separator: str) -> list[str]:
    """The final strings the backbone reads: the prompt applied, pairs joined."""
    if kind == SINGLE:
        return list(texts) if prompt is None else [prompt.format(text=t) for t in texts]
    template = prompt if prompt is not None else "{text_a}" + separator + "{text_b}"
    return [template.format(text_a=a, text_b=b) for a, b in texts]
