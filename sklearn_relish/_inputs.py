"""Validation of texts, text pairs and prompt templates (targets: ``_targets.py``).

Everything here runs before any model is loaded, so bad input fails in milliseconds with a
message that names the offending row, never as a torch traceback from deep inside.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

SINGLE, PAIR = "single", "pair"


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return type(value).__name__ in {"NAType", "NaTType"}  # pandas' missing markers


def _check_text(value: Any, where: str | Callable[[], str], in_pair: bool = False) -> str:
    """``value`` as a valid text, else an error naming it by ``where`` (or ``where()``:
    naming a row formats its index label, which a million valid rows should not pay for).
    ``in_pair``: the value is a cell of a two-column X, read as text pairs."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{_name(where)} contains invalid Unicode (a lone surrogate at character "
                f"{error.start}); clean it, e.g. text.encode('utf-8', 'replace').decode()."
            ) from None
        return value
    if is_missing(value):
        raise ValueError(
            f"{_name(where)} is missing ({value!r}). Drop or fill missing texts before "
            "fitting, e.g. X.fillna('') (pandas) or X.fill_null('') (polars)."
        )
    if isinstance(value, tuple | list | np.ndarray):  # astype(str) would make it "('a', 'b')"
        raise TypeError(
            f"{_name(where)} is a {type(value).__name__} ({value!r:.50}), not a str: give text "
            "pairs as (text_a, text_b) on every row, or as two columns, and single texts as str."
        )
    if isinstance(value, bytes | bytearray):  # astype(str) would make it "b'...'"
        raise TypeError(
            f"{_name(where)} is a {_short_type(value)}, not a str: decode it first, e.g. "
            "X.str.decode('utf-8') (pandas) or [b.decode('utf-8') for b in X]."
        )
    if in_pair:
        # A text column beside a numeric one (Ridge's habit): X.astype(str) would silently
        # fit a model of (text, "3.0") pairs.
        raise TypeError(
            f"{_name(where)} is a {_short_type(value)}, not a str: a two-column X is read as "
            "text pairs (text_a, text_b). To predict from a text column beside other "
            "features, pass the text column alone (X['text'], or a ColumnTransformer that "
            "selects it); convert the column to text only if it is the second text of each "
            "pair."
        )
    raise TypeError(
        f"{_name(where)} is a {_short_type(value)}, not a str. Convert the column to text "
        "first, e.g. X.astype(str)."
    )


def _name(where: str | Callable[[], str]) -> str:
    return where() if callable(where) else where


def _short_type(value: Any) -> str:
    """``float (nan)``, or the type alone where its repr would be long (a sparse row's
    repr is a paragraph, cut mid-word at any fixed width)."""
    shown = repr(value)
    return type(value).__name__ + (f" ({shown})" if len(shown) <= 50 else "")


def _library(X: Any) -> str:
    return type(X).__module__.partition(".")[0]


def _objects(X: Any) -> np.ndarray:
    try:
        return X.to_numpy(dtype=object)
    except TypeError:  # a to_numpy without pandas' signature
        raise TypeError(
            f"X is a {type(X).__module__}.{type(X).__name__} whose to_numpy() takes no dtype; "
            "pass a list of texts or a pandas object instead."
        ) from None


def _rows(X: Any) -> tuple[list, int | None]:
    """Rows of ``X`` as a list, and its number of columns when it is 2-D (else None)."""
    if _library(X) == "scipy" and hasattr(X, "tocsr"):
        # Numbers by construction (a TF-IDF matrix, say): say so, not "X[0] is a csr_array".
        raise TypeError(f"X is a sparse matrix ({type(X).__name__}); sparse input is not "
                        "supported: give texts, or text pairs.")
    if _library(X) in ("pyarrow", "polars") and hasattr(X, "to_pandas"):
        try:  # their to_numpy takes no dtype (and pyarrow's refuses strings without a flag)
            X = X.to_pandas()
        except ImportError as error:
            raise TypeError(
                f"X is a {_library(X)} {type(X).__name__}, which could not be converted to "
                f"pandas ({error}); pass a list of texts instead, e.g. X.to_list()."
            ) from None
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # a DataFrame (pandas, modin...)
        values = _objects(X)
        return list(values), values.shape[1]
    if hasattr(X, "to_numpy"):  # a Series or an Index
        return list(_objects(X)), None
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


class RowNames:
    """How messages name row i: ``X[i]``, with the pandas index label where it is not i
    (``s[2]`` means a label to a pandas user, not a position), and a DataFrame's column
    name for a cell. Formatted on demand only."""

    def __init__(self, X: Any, name: str = "X") -> None:
        index = getattr(X, "index", None) if _library(X) == "pandas" else None
        default = index is None or (type(index).__name__ == "RangeIndex"
                                    and index.start == 0 and index.step == 1)
        self.labels = None if default else index
        # A pyarrow Table's .columns are its data; its names are .column_names.
        columns = getattr(X, "column_names" if _library(X) == "pyarrow" else "columns", None)
        self.columns = None if columns is None else list(columns)
        self.name = name

    def _details(self, index: tuple[int, ...]) -> str:
        """`` (index label L, column 'c')``, each part only where it says something."""
        details = []
        if self.labels is not None:
            label = self.labels[index[0]]
            # pd.NA == i is NA, whose truth value raises: a missing label always shows.
            if is_missing(label) or not label == index[0]:
                # numpy 2 writes np.int64(15) as its repr; the user's index says 15.
                shown = label.item() if isinstance(label, np.generic) else label
                details.append(f"index label {shown!r}")
        if self.columns is not None and len(index) == 2 and index[1] < len(self.columns):
            details.append(f"column {self.columns[index[1]]!r}")
        return f" ({', '.join(details)})" if details else ""

    def place(self, index: tuple[int, ...]) -> str:
        """``y[3, 1] (index label 'b', column 'rating')``: positions, the row's label, the
        column's name."""
        return f"{self.name}[{', '.join(str(j) for j in index)}]{self._details(index)}"

    def __getitem__(self, i: int) -> str:
        return self.place((i,))


def check_texts(X: Any) -> tuple[list, str]:
    """Validate texts or text pairs.

    Returns
    -------
    texts : list of str, or list of (str, str)
    kind : "single" or "pair"
    """
    if isinstance(X, str | bytes):
        raise TypeError(
            "X must be a collection of texts, got a single "
            f"{'string' if isinstance(X, str) else 'bytes object'}. Wrap it in a list: [text]."
        )
    rows, n_columns = _rows(X)
    where = RowNames(X)
    if n_columns == 1:
        rows, n_columns = [row[0] for row in rows], None
        if rows and isinstance(rows[0], tuple | list | np.ndarray):
            # Its one column name would stand for two texts: give the pairs two columns.
            raise TypeError(
                f"X has one column whose {where[0]} is a {type(rows[0]).__name__}: give "
                "text pairs as two columns (text_a, text_b), or pass that column as a "
                "Series or list of pairs."
            )
    is_pair = [isinstance(r, tuple | list | np.ndarray) for r in rows]
    if n_columns is None and rows and any(is_pair):
        if not all(is_pair):
            odd = is_pair.index(not is_pair[0])
            raise TypeError(
                f"{where[odd]} is a {type(rows[odd]).__name__} but {where[0]} is a "
                f"{type(rows[0]).__name__}: X mixes text pairs with single texts; give "
                "(text_a, text_b) on every row, or a str on every row."
            )
        n_columns = len(rows[0])
        for i, row in enumerate(rows):
            if len(row) != n_columns:
                raise ValueError(
                    f"{where[i]} has {len(row)} parts, {where[0]} has {n_columns}: every "
                    "pair must be (text_a, text_b)."
                )
    if n_columns is None:
        return [_check_text(row, lambda i=i: where[i]) for i, row in enumerate(rows)], SINGLE
    if n_columns == 1:  # [["a"], ["b"]], as df[["text"]].values.tolist() gives: one column
        return [_check_text(row[0], lambda i=i: where.place((i, 0)))
                for i, row in enumerate(rows)], SINGLE
    if n_columns == 2:
        pairs = [
            (_check_text(row[0], lambda i=i: where.place((i, 0)), in_pair=True),
             _check_text(row[1], lambda i=i: where.place((i, 1)), in_pair=True))
            for i, row in enumerate(rows)
        ]
        return pairs, PAIR
    raise ValueError(
        f"X has {n_columns} columns; give one column of texts or two columns of text pairs."
    )


def check_layer(layer: Any) -> int | float:
    """One meaning per value: a whole number is an index, a fraction is a share of depth.

    ``1``, ``1.0`` and ``np.int64(1)`` all name hidden state 1 (the first block's
    output; 0 is the embeddings, -1 the last layer). A non-integral number strictly
    between 0 and 1 (``0.5``, ``np.float32(0.25)``) is a share of the backbone's depth,
    so one default means "the middle" for any backbone. Returns a plain ``int`` or
    ``float`` (numpy scalars would otherwise slip through ``isinstance(x, float)``).
    """
    if isinstance(layer, bool) or not isinstance(layer, Real):
        raise ValueError(f"layer must be an int or a float; got {layer!r}.")
    value = float(layer)
    if not math.isfinite(value):
        raise ValueError(f"layer must be finite; got {layer!r}.")
    if value.is_integer():
        return int(value)
    if 0.0 < value < 1.0:
        return value
    raise ValueError(
        f"layer={layer!r} is neither a whole number (a hidden-state index, -1 for the last "
        "layer) nor a share of depth strictly between 0 and 1 (0.5 for the middle)."
    )


_FIELDS = {SINGLE: {"text"}, PAIR: {"text_a", "text_b"}}


def check_prompt(prompt: str | None, kind: str) -> None:
    """A template must name exactly the fields of its input kind, ``{text}`` or both pair fields."""
    if prompt is None:
        return
    _check_text(prompt, "prompt")  # a lone surrogate: \udc00 is the pair mark itself
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


# Joins a pair that the tokenizer itself will encode as a pair. A lone surrogate never
# occurs in a validated text (check_texts refuses them), so the join is unambiguous, and
# it keeps pairs apart from any single text in the cache's keys.
PAIR_MARK = "\udc00"


def format_texts(texts: list, kind: str, prompt: str | None, separator: str | None) -> list[str]:
    """The final strings the backbone reads: the prompt applied, pairs joined.

    With no prompt, pairs are joined by ``separator``; a ``separator`` of None marks them
    for the tokenizer's own pair encoding (``[CLS] a [SEP] b [SEP]`` with segment ids
    for BERT-like models), split again at tokenization.
    """
    if kind == SINGLE:
        return list(texts) if prompt is None else [prompt.format(text=t) for t in texts]
    if prompt is None:
        join = PAIR_MARK if separator is None else separator
        return [a + join + b for a, b in texts]
    return [prompt.format(text_a=a, text_b=b) for a, b in texts]


def is_count(value: Any, minimum: int = 0) -> bool:
    """An int (numpy's too) of at least ``minimum``; a bool is an int to Python, never a count."""
    return (isinstance(value, Integral) and not isinstance(value, bool | np.bool_)
            and value >= minimum)
