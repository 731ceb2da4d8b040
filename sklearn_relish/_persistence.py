"""Saving and loading fitted estimators with clear errors and without clobbering files.

``joblib.dump``/``joblib.load`` work as for any estimator; these two helpers add what a
pickle cannot: an atomic write that never replaces a user's file unless asked, and a
checksum, so that a damaged or truncated file is refused with a ValueError instead of
loading and predicting nonsense (a pickle with a few flipped bytes often still loads).

A file written by :func:`save_model` is joblib's bytes, then one trailer line::

    \\nsklearn_relish-model 2 sha256=<hex digest of 'sklearn_relish-model 2 ' + joblib's bytes>\\n

so ``joblib.load`` reads it as any joblib file (unpickling stops before the trailer) and
:func:`load_model` checks it. Format 1 (sklearn_relish before 2026-12-05) put the line
first, where it kept ``joblib.load`` from reading the file; such files still load here.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import warnings
from pathlib import Path
from typing import IO, Any

import joblib

from ._embedded import rename_legacy_backbone
from ._files import write_atomically


class PickleFormatMixin:
    """Stamps pickles with a format number, so an older sklearn_relish refuses a newer model
    with a clear message instead of an AttributeError from deep inside unpickling.

    The pickle holds the head, the target scaling and the backbone's identity; the
    backbone's weights never travel (the featurizer drops them) and are re-loaded lazily.
    """

    _PICKLE_FORMAT = 1

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_relish_pickle_format"] = self._PICKLE_FORMAT
        state["_relish_versions"] = dict(package_versions())  # not the memoised dict itself
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        found = state.pop("_relish_pickle_format", None)
        if found is not None and found > self._PICKLE_FORMAT:
            raise ValueError(
                f"This model was saved by a newer sklearn_relish (pickle format {found}); "
                "upgrade sklearn_relish to load it."
            )
        _warn_if_saved_with_other_versions(state.pop("_relish_versions", None),
                                           type(self).__name__)
        rename_legacy_backbone(state)
        # Parameters added since the pickle was written take their defaults, so that
        # get_params, clone and predict work on an older model.
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                state.setdefault(name, parameter.default)
        super().__setstate__(state)


# What a fitted model's behaviour depends on: scikit-learn does not stamp third-party
# estimators (its InconsistentVersionWarning never fired for ours), so the pickle says.
_VERSIONED = ("sklearn_relish", "scikit-learn", "torch", "transformers", "skorch")


@functools.cache
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in _VERSIONED:
        try:
            # The public version: a CPU and a CUDA build of torch 2.13.0 load the same model.
            found[name] = version(name).partition("+")[0]
        except PackageNotFoundError:  # a source checkout without its metadata
            found[name] = "unknown"
    return found


def _warn_if_saved_with_other_versions(saved: dict[str, str] | None, kind: str) -> None:
    if not isinstance(saved, dict):  # pickled before versions were recorded
        return
    here = package_versions()
    changed = [f"{name} {saved[name]} (here {here.get(name, 'missing')})"
               for name in _VERSIONED if name in saved and saved[name] != here.get(name)]
    if changed:
        warnings.warn(
            f"This {kind} was saved with {', '.join(changed)}; it may not load or predict "
            "as it did. Install those versions, or refit it here.",
            UserWarning,
            stacklevel=3,
        )


_MAGIC = b"sklearn_relish-model"
_FORMAT = 2
_HEADER_FORMAT = 1  # the line came first in format 1
_CHUNK = 1 << 20
_MAX_HEADER = 128  # the checksum line is 95 or 96 bytes; a longer one is not ours
_TRAILER = re.compile(rb"\n" + _MAGIC + rb" (\d+) sha256=([0-9a-f]{64})\n\Z")
_PICKLE_START, _PICKLE_STOP = b"\x80", b"."  # joblib's uncompressed files: pickle protocol 2+


def save_model(model: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` with joblib, atomically and with a checksum.

    The file is written under a temporary name, flushed to disk and renamed into place, so
    a crash or a full disk never leaves half a model where a good one was. An existing file
    is kept unless ``overwrite=True``. Read it back with :func:`load_model`, which checks
    the checksum; ``joblib.load`` reads it too, unchecked.

    Parameters
    ----------
    model : object
        A fitted estimator: a regressor, a transformer such as :class:`LLMTextEncoder`,
        a Pipeline (any picklable object with ``predict`` or ``transform``).
    path : str or path-like
        Where to write.
    overwrite : bool, default=False
        Replace an existing file at ``path``.

    Returns
    -------
    path : Path
    """
    _check_is_model(model)
    path = Path(path).expanduser()
    if path.is_dir():  # overwrite=True failed renaming the temporary file onto it
        raise IsADirectoryError(f"cannot save to {path}: it is a folder; give a file name.")
    # lexists: a link to nothing is still something of the user's at that name.
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"cannot save to {path}: {path.parent} is a file, not a "
                                 "folder.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: the folder {path.parent} does not exist.")

    def write(tmp: str) -> None:
        with open(tmp, "r+b") as stream:
            joblib.dump(model, stream)
            size = stream.tell()
            digest = _digest(stream, 0, size, _signed_part(b"%d" % _FORMAT))
            stream.seek(size)
            stream.write(b"\n%s %d sha256=%s\n" % (_MAGIC, _FORMAT, digest.encode()))

    try:
        write_atomically(path, write, overwrite)
    except FileExistsError:  # it appeared while the model was being written
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.") from None
    return path


def _signed_part(version: bytes) -> bytes:
    # The digest also covers the format number, so a flipped digit there reads as damage.
    return b"%s %s " % (_MAGIC, version)


def _digest(stream: IO[bytes], start: int, end: int | None, prefix: bytes) -> str:
    """sha256 of ``prefix`` and the bytes from ``start`` to ``end`` (None: the end)."""
    stream.seek(start)
    sha = hashlib.sha256(prefix)
    left = end - start if end is not None else None
    while chunk := stream.read(_CHUNK if left is None else min(_CHUNK, left)):
        sha.update(chunk)
        if left is not None:
            left -= len(chunk)
    return sha.hexdigest()


def load_model(path: str | os.PathLike, *,
               moved_backbones: dict[str, str] | None = None) -> Any:
    """Load a model written by :func:`save_model` (checksum verified) or ``joblib.dump``.

    Only load files you trust: like any pickle, a model file can run code when loaded.

    Parameters
    ----------
    path : str or path-like
        The model file.
    moved_backbones : dict, default=None
        Backbone folders that have moved since the model was fitted, ``{recorded folder:
        new folder}`` (another machine, a renamed disk). Every fitted part of the model
        that names a recorded folder reads the new one instead; when the backbone is first
        loaded, its weights are checked to be the ones the model was fitted on
        (``BackboneMismatchError`` otherwise).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        The file is damaged, truncated, or does not hold a model; or ``moved_backbones``
        names a folder the model does not record, or a new folder that does not exist.
    """
    moves = _check_moves(moved_backbones)
    path = Path(path).expanduser()
    if path.is_dir():  # still "no model file": FileNotFoundError, as before
        raise FileNotFoundError(f"No model file at {path}: it is a folder; name the file "
                                "save_model wrote.")
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    with open(path, "rb") as stream:
        if stream.read(len(_MAGIC)) == _MAGIC:
            _verify_header(stream, path)  # format 1
            verified = True
        else:
            verified = _verify_trailer(stream, path)
            stream.seek(0)  # joblib stops at the pickle's end, before any trailer
        model = _unpickle(stream, path, verified)
    if not _is_model(model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a fitted model.")
    if moves:
        _relocate(model, moves, path)
    return model


def _check_moves(moved_backbones: Any) -> dict[str, str]:
    """``{recorded: new}`` with each new folder checked and made absolute, before reading."""
    if moved_backbones is None:
        return {}
    if not isinstance(moved_backbones, dict):
        raise TypeError("moved_backbones must be a dict {recorded folder: new folder}; got "
                        f"a {type(moved_backbones).__name__}.")
    moves = {}
    for old, new in moved_backbones.items():
        new_folder = Path(os.fspath(new)).expanduser()
        if not new_folder.is_dir():
            raise ValueError(f"moved_backbones[{old!r}]={os.fspath(new)!r} is not a folder.")
        moves[os.fspath(old)] = os.path.abspath(new_folder)
    return moves


def _featurizers(obj: Any, seen: set[int]) -> list[Any]:
    """Every LLMFeaturizer reachable from a loaded model: its own, a Pipeline's steps', a
    search's best estimator's, a VotingRegressor's members', trained blocks' modules'."""
    import numpy as np
    import torch

    from ._featurizer import LLMFeaturizer

    if id(obj) in seen or isinstance(obj, str | bytes | int | float | np.ndarray
                                     | torch.Tensor | type):
        return []
    seen.add(id(obj))
    if isinstance(obj, LLMFeaturizer):
        return [obj]
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple | set):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    return [found for child in children for found in _featurizers(child, seen)]


def _relocate(model: Any, moves: dict[str, str], path: Path) -> None:
    featurizers = _featurizers(model, set())
    recorded = {featurizer.backbone for featurizer in featurizers}
    unknown = [old for old in moves if old not in recorded]
    if unknown:
        raise ValueError(
            f"moved_backbones names {unknown[0]!r}, but the model in {path} was not fitted "
            f"on it; it records {sorted(recorded) or 'no backbone'}.")
    for featurizer in featurizers:
        if featurizer.backbone in moves:
            featurizer.backbone = moves[featurizer.backbone]
            featurizer._loaded = None  # read from the new folder, fingerprint checked then


def _is_model(model: Any) -> bool:
    return hasattr(model, "predict") or hasattr(model, "transform")


def _check_is_model(model: Any) -> None:
    """Refused before writing: load_model would refuse the file it wrote, and an unfitted
    estimator (a search's ``estimator`` saved for its ``best_estimator_``) was written
    and loaded without a word, to fail only at predict on the serving machine."""
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not _is_model(model):
        raise TypeError(f"save_model saves fitted estimators (with predict or transform); "
                        f"got a {type(model).__name__}.")
    if isinstance(model, BaseEstimator):
        try:
            check_is_fitted(model)
        except NotFittedError:
            raise NotFittedError(
                f"save_model saves fitted models, and this {type(model).__name__} is not "
                "fitted: fit it first (from a search, save its best_estimator_).") from None


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path} is damaged or truncated ({why}); it was not loaded. Re-save the model "
        "from its source or restore a backup."
    )


# How joblib's files begin: an uncompressed pickle, or one of its compressors' prefixes.
_JOBLIB_STARTS = (_PICKLE_START, b"x", b"\x1f\x8b", b"BZ", b"]\x00", b"\xfd7zXZ",
                  b'\x04"M\x18')


def _not_a_model(path: Path) -> ValueError:
    # A table given as the model (swapped arguments) was called damaged, and its owner
    # told to restore a backup.
    return ValueError(f"{path} is not a model file (it begins as neither a pickle nor a "
                      "compressed joblib file does), or is damaged or truncated.")


def _verify_header(stream: IO[bytes], path: Path) -> None:
    """Format 1: check the header and the checksum; leave ``stream`` at the payload."""
    stream.seek(0)
    line = stream.readline(_MAX_HEADER)
    parts = line.rstrip(b"\n").split(b" ")
    if not line.endswith(b"\n") or len(parts) != 3 or not parts[2].startswith(b"sha256="):
        raise _damaged(path, "its header is unreadable")
    expected = parts[2][len(b"sha256="):].decode("ascii", "replace")
    intact = _digest(stream, len(line), None, _signed_part(parts[1])) == expected
    # Later formats put the line last: a header of another format is not ours to read.
    _check_format(parts[1], _HEADER_FORMAT, intact, path)
    stream.seek(len(line))


def _verify_trailer(stream: IO[bytes], path: Path) -> bool:
    """Check the trailer of a format-2 file; False for a plain joblib file (no checksum).

    A file that names sklearn_relish near its end is one of ours whatever the damage, and
    so is an uncompressed pickle that ends in anything but the pickle's STOP (a newline
    included): a damaged trailer must not make a file pass for an unchecked joblib file.
    Compressed joblib files end in any byte and are left to joblib.
    """
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - _MAX_HEADER))
    tail = stream.read()
    stream.seek(0)
    head = stream.read(8)
    first = head[:1]
    found = _TRAILER.search(tail)
    if found is None:
        if _MAGIC in tail:
            raise _damaged(path, "its checksum line is unreadable")
        if not head.startswith(_JOBLIB_STARTS):
            raise _not_a_model(path)
        if first != _PICKLE_START:
            return False  # a compressed joblib file: its last bytes are any bytes
        if tail.endswith(b"\n"):
            raise _damaged(path, "its checksum line is unreadable")
        if not tail.endswith(_PICKLE_STOP):
            raise _damaged(path, "it ends before its pickle does")
        return False  # a plain joblib file
    payload_end = size - (len(tail) - found.start())
    version, expected = found.group(1), found.group(2).decode()
    intact = _digest(stream, 0, payload_end, _signed_part(version)) == expected
    _check_format(version, _FORMAT, intact, path)
    return True


def _check_format(version: bytes, readable: int, intact: bool, path: Path) -> None:
    if version.isdigit() and int(version) > _FORMAT:
        # Refused whether or not its digest matches: an intact file of a later format
        # must not be read as this one.
        damaged = "" if intact else ", or it is damaged or truncated"
        raise ValueError(
            f"{path} was written by a newer sklearn_relish (model file format "
            f"{int(version)}){damaged}; upgrade sklearn_relish and try again."
        )
    if not intact or version != b"%d" % readable:
        raise _damaged(path, "its checksum does not match its contents")


def _unpickle(stream: IO[bytes], path: Path, verified: bool) -> Any:
    try:
        return joblib.load(stream)
    except ValueError as error:
        if "sklearn_relish" in str(error):
            raise  # our own, already clear message (e.g. a newer pickle format)
        failure = error
    except Exception as error:  # struct.error, EOFError, UnpicklingError, ModuleNotFoundError...
        failure = error
    why = f"{type(failure).__name__}: {failure}"
    if verified:
        # The checksum matched, so the bytes are the ones save_model wrote: the cause is
        # this environment (a missing package, an incompatible version), not damage.
        raise ValueError(
            f"{path} is intact but cannot be loaded here ({why}); install the packages and "
            "versions it was saved with."
        ) from failure
    raise _damaged(path, why) from failure
