"""Tests for sklearn_relish.datasets (VADER ground truth).

Most tests build a small fake sdist with the real layout in ``tmp_path`` and
patch the expected checksums, so they need no network and run in milliseconds.
The real-data tests use the default data home prepared by
``python -m sklearn_relish.datasets`` and are skipped when it is absent.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import get_data_home

from sklearn_relish.datasets import _vader, load_vader
from sklearn_relish.datasets.__main__ import main

EXPECTED_SIZES = {"tweets": 4200, "nyt": 5190, "movies": 10605, "amazon": 3708}

# Fake ground truth in the real format: CRLF line ends, no final newline, and
# texts with a tab, a leading space, non-ASCII and U+2028 (which str.splitlines
# would wrongly split on).
FAKE_ROWS = {
    "tweets": [("1", "2.5", "Great day :)"), ("2", "-3.75", "awful\tawful £5")],
    "nyt": [("1_1", "0.4", "On Dec. 19, around noon"), ("1_2", "-0.2", "Line\u2028sep")],
    "movies": [("1", "3.94117647059", "Café crème"), ("2", "0", "meh"), ("3", "-1", "bad")],
    "amazon": [("1_1", "-0.9", " check out !")],
}


def _targz(files: dict[str, bytes]) -> bytes:
    """Return a gzipped tarball holding ``files`` (name -> content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
    """Write a fake sdist into ``tmp_path/home`` and patch the checksums to match it.

    Returns the data home.
    """
    files = {"_README_.txt": b"fake readme \x96 in cp1252\r\n", "LICENSE.txt": b"MIT\n"}
    for corpus, rows in FAKE_ROWS.items():
        lines = ["\t".join(row) for row in rows]
        files[_vader._CORPORA[corpus][0]] = "\r\n".join(lines).encode("utf-8")
    inner = _targz(
        {_vader._INNER_PREFIX + name: data for name, data in files.items() if name != "LICENSE.txt"}
    )
    outer = _targz(
        {
            _vader._INNER_MEMBER: inner,
            _vader._LICENSE_MEMBER: files["LICENSE.txt"],
            "vaderSentiment-3.3.2/setup.py": b"# not extracted\n",
        }
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / _vader._SDIST_NAME).write_bytes(outer)
    monkeypatch.setattr(_vader, "_SDIST_SHA256", hashlib.sha256(outer).hexdigest())
    monkeypatch.setattr(
        _vader,
        "_FILE_SHA256",
        {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    )
    return home


@pytest.mark.parametrize("corpus", sorted(FAKE_ROWS))
def test_fake_sdist_parses(fake_sdist, corpus):
    bunch = load_vader(corpus, data_home=fake_sdist, download_if_missing=False)
    rows = FAKE_ROWS[corpus]
    assert bunch.ids == [r[0] for r in rows]
    assert bunch.data == [r[2] for r in rows]  # verbatim, file order
    assert bunch.target.dtype == np.float64
    np.testing.assert_array_equal(bunch.target, [float(r[1]) for r in rows])
    assert bunch.corpus == corpus
    assert f":Number of instances: {len(rows)}" in bunch.DESCR
    assert "Hutto, C.J. & Gilbert, E.E. (2014)" in bunch.DESCR
    assert "MIT" in bunch.DESCR
    # Only the needed files end up in vader/, and no temporary folder is left.
    assert {p.name for p in fake_sdist.iterdir()} == {_vader._SDIST_NAME, "vader"}
    assert sorted(p.name for p in (fake_sdist / "vader").iterdir()) == sorted(_vader._FILE_SHA256)


def test_return_X_y(fake_sdist):
    X, y = load_vader("movies", return_X_y=True, data_home=fake_sdist)
    assert isinstance(X, list) and all(isinstance(x, str) for x in X)
    assert y.shape == (len(X),) == (3,)


def test_as_frame_gives_the_same_rows_as_pandas_objects(fake_sdist):
    pd = pytest.importorskip("pandas")
    plain = load_vader("movies", data_home=fake_sdist)
    bunch = load_vader("movies", as_frame=True, data_home=fake_sdist)
    assert isinstance(bunch.data, pd.DataFrame) and list(bunch.data.columns) == ["text"]
    assert list(bunch.data["text"]) == plain.data and list(bunch.data.index) == plain.ids
    assert bunch.target.name == "sentiment"
    np.testing.assert_array_equal(bunch.target.to_numpy(), plain.target)
    assert list(bunch.frame.columns) == ["text", "sentiment"] and bunch.frame.index.name == "id"
    X, y = load_vader("movies", as_frame=True, return_X_y=True, data_home=fake_sdist)
    pd.testing.assert_frame_equal(X, bunch.data)
    pd.testing.assert_series_equal(y, bunch.target)


def test_unknown_corpus_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="amazon.*movies.*nyt.*tweets"):
        load_vader("imdb", data_home=tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"a_file: it is a file, not a folder"):
        load_vader("tweets", data_home=tmp_path / "a_file")
    with pytest.raises(TypeError, match=r"one name of .* got list \['tweets'\]"):
        load_vader(["tweets"], data_home=tmp_path)  # was "unhashable type: 'list'"


def test_checksum_mismatch_raises_and_extracts_nothing(fake_sdist, monkeypatch):
    monkeypatch.setattr(_vader, "_SDIST_SHA256", "0" * 64)
    sdist = fake_sdist / _vader._SDIST_NAME
    with pytest.raises(OSError) as excinfo:
        load_vader("tweets", data_home=fake_sdist)
    message = str(excinfo.value)
    assert str(sdist) in message
    assert "0" * 64 in message
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() in message
    assert sorted(p.name for p in fake_sdist.iterdir()) == [_vader._SDIST_NAME]


def test_missing_data_without_download_raises(tmp_path):
    with pytest.raises(OSError, match="python -m sklearn_relish.datasets"):
        load_vader("tweets", data_home=tmp_path / "empty", download_if_missing=False)
    assert not (tmp_path / "empty").exists()


def test_extracted_cache_is_used_without_sdist(fake_sdist):
    first = load_vader("nyt", data_home=fake_sdist)
    (fake_sdist / _vader._SDIST_NAME).unlink()
    second = load_vader("nyt", data_home=fake_sdist, download_if_missing=False)
    assert second.data == first.data
    np.testing.assert_array_equal(second.target, first.target)


def test_damaged_cache_without_sdist_is_called_damaged_not_missing(fake_sdist):
    load_vader("amazon", data_home=fake_sdist)
    (fake_sdist / _vader._SDIST_NAME).unlink()
    (fake_sdist / "vader" / _vader._CORPORA["amazon"][0]).write_bytes(b"1_1\t4\ttampered")
    with pytest.raises(OSError, match="is damaged"):
        load_vader("amazon", data_home=fake_sdist, download_if_missing=False)


def test_corrupted_cache_is_reextracted(fake_sdist):
    load_vader("amazon", data_home=fake_sdist)
    cached = fake_sdist / "vader" / _vader._CORPORA["amazon"][0]
    cached.write_bytes(b"1_1\t4\ttampered")
    assert load_vader("amazon", data_home=fake_sdist).data == [" check out !"]


def test_an_extraction_killed_midway_is_cleaned_up_a_day_later(fake_sdist):
    # SIGKILL skips the finally that removes the temporary folder: it stayed for good.
    import os
    import time

    old, fresh = fake_sdist / ".vader-extract-old", fake_sdist / ".vader-extract-now"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "half.tsv").write_text("1\t2\tpart")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert load_vader("tweets", data_home=fake_sdist).data == ["Great day :)",
                                                               "awful\tawful £5"]
    assert not old.exists()
    assert fresh.exists()  # another process may be extracting into it right now


def test_download_moves_sdist_into_data_home(fake_sdist, tmp_path, monkeypatch):
    """The pip code path, with pip replaced by a copy of the fake sdist."""
    source = tmp_path / _vader._SDIST_NAME
    shutil.move(fake_sdist / _vader._SDIST_NAME, source)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        shutil.copy(source, Path(cmd[cmd.index("-d") + 1]) / _vader._SDIST_NAME)
        return _vader.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(_vader.subprocess, "run", fake_run)
    assert len(load_vader("tweets", data_home=fake_sdist).data) == 2
    assert calls and "vaderSentiment==3.3.2" in calls[0] and "--no-binary=:all:" in calls[0]
    assert (fake_sdist / _vader._SDIST_NAME).read_bytes() == source.read_bytes()
    assert {p.name for p in fake_sdist.iterdir()} == {_vader._SDIST_NAME, "vader"}


def test_main_prints_sizes(fake_sdist, capsys):
    assert main(["--data-home", str(fake_sdist)]) == 0
    out = capsys.readouterr().out
    assert "tweets" in out and "movies" in out and "total" in out and " 8 texts" in out


def test_main_prints_one_line_for_a_damaged_sdist(fake_sdist, monkeypatch, capsys):
    # make install runs it: a checksum failure printed a runpy traceback.
    monkeypatch.setattr(_vader, "_SDIST_SHA256", "0" * 64)
    assert main(["--data-home", str(fake_sdist)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m sklearn_relish.datasets: error: ")
    assert "Traceback" not in err and "0" * 64 in err and len(err.splitlines()) == 1


def test_a_full_disk_while_extracting_names_the_folder_and_leaves_nothing(fake_sdist,
                                                                         monkeypatch):
    # write_bytes' ENOSPC names no file: the bare "[Errno 28]" left users guessing where.
    import errno

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match=r"cannot extract the VADER data into .*vader "
                                      r"\(No space left on device\).*SCIKIT_LEARN_DATA") as got:
        load_vader("tweets", data_home=fake_sdist)
    assert got.value.errno == errno.ENOSPC
    assert sorted(p.name for p in fake_sdist.iterdir()) == [_vader._SDIST_NAME]


def _check_real(data_home):
    for corpus, size in EXPECTED_SIZES.items():
        bunch = load_vader(corpus, data_home=data_home, download_if_missing=False)
        assert len(bunch.data) == len(bunch.ids) == bunch.target.shape[0] == size
        assert len(set(bunch.ids)) == size
        assert bunch.target.dtype == np.float64
        assert bunch.target.min() >= -4 and bunch.target.max() <= 4
        assert f":Number of instances: {size:,}" in bunch.DESCR


def test_real_data_default_home():
    data_home = Path(get_data_home()) / "sklearn_relish"
    if not _vader._cache_is_valid(data_home / "vader"):
        pytest.skip(
            f"VADER data not prepared in {data_home}; run `python -m sklearn_relish.datasets`"
        )
    _check_real(data_home)


def test_real_sdist_copy(tmp_path):
    # Extracting from a fresh copy of the sdist that `make install` left in the data home
    # (honours SCIKIT_LEARN_DATA) proves the checksums and the parser on the real file.
    sdist = Path(get_data_home()) / "sklearn_relish" / _vader._SDIST_NAME
    if not sdist.is_file():
        pytest.skip(f"no real sdist at {sdist}; `make install` downloads it there")
    shutil.copy(sdist, tmp_path / _vader._SDIST_NAME)
    _check_real(tmp_path)


def test_the_data_needs_neither_torch_nor_skorch():
    # ``make install`` prepares the data with ``python -m sklearn_relish.datasets``, also
    # under -OO (no docstrings); importing the package's estimators there was 4 s of torch.
    code = ("import sys, sklearn_relish.datasets.__main__ as m; m.main(['--help'])")
    result = subprocess.run([sys.executable, "-OO", "-c", code + "\n"], capture_output=True,
                            text=True)
    assert "--data-home" in result.stdout, result.stderr
    code = ("import sys, sklearn_relish.datasets, sklearn_relish.metrics; "
            "print(sorted({'torch', 'skorch', 'transformers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr

