"""Saving and loading fitted estimators with clear errors and without clobbering files.

``joblib.dump``/``joblib.load`` work as for any estimator; these two helpers add what a
pickle cannot: an atomic write that never replaces a user's file unless asked, and a
load that turns a truncated or damaged file into a ValueError that says so.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import joblib


def save_model(model: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` with joblib, atomically.

    The file is written under a temporary name and renamed into place, so a crash never
    leaves half a model where a good one was. An existing file is kept unless
    ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    handle, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        joblib.dump(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_model(path: str | os.PathLike) -> Any:
    """Load a model written by :func:`save_model` or ``joblib.dump``.

    Only load files you trust: like any pickle, a model file can run code when loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    try:
        model = joblib.load(path)
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError,
            AttributeError, OSError, RuntimeError) as error:
        if isinstance(error, ValueError) and "sklearn_relish" in str(error):
            raise  # our own, already clear message (e.g. a newer format)
        raise ValueError(
            f"{path} is not a readable model file: it looks truncated or corrupted "
            f"({type(error).__name__}: {error}). Re-save the model from its source."
        ) from error
    if not hasattr(model, "predict"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a fitted model.")
    return model
