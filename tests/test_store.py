"""The on-disk token-state store: shared by processes, damage detected, faults only warn."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, small_regressor

from sklearn_relish import cache_info, clear_cache, featurize_to_store
from sklearn_relish._cache import CachedStates
from sklearn_relish._featurizer import LLMFeaturizer
from sklearn_relish._store import (
    FILENAME,
    StoreUnavailable,
    TokenStateStore,
    _checksum,
    _encode,
)


def entry_for(i: int, n_tokens: int = 3, dim: int = 8) -> CachedStates:
    values = torch.arange(n_tokens * dim, dtype=torch.float32).reshape(n_tokens, dim) + i
    return CachedStates(values.to(torch.float16), truncated=bool(i % 2))


def test_round_trip_and_misses(tmp_path):
    store = TokenStateStore(tmp_path)
    store.put_many([("a", entry_for(1)), ("b", entry_for(2, n_tokens=0))])
    got = store.get_many(["a", "b", "c"])
    assert set(got) == {"a", "b"}
    assert torch.equal(got["a"].states, entry_for(1).states) and got["a"].truncated
    assert got["b"].states.shape == (0, 8)
    assert store.missing(["a", "c", "b"]) == ["c"]
    assert len(store) == 2


def _write_range(folder: str, start: int, stop: int) -> int:
    store = TokenStateStore(folder)
    for i in range(start, stop, 5):  # several small transactions, interleaving with others
        store.put_many((f"key{j}", entry_for(j)) for j in range(i, min(i + 5, stop)))
    return stop - start


def test_many_processes_write_at_once(tmp_path):
    # Four processes write overlapping ranges at the same time; every row arrives intact.
    ranges = [(0, 60), (30, 90), (60, 120), (0, 120)]
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        written = list(pool.map(_write_range, [str(tmp_path)] * 4, *zip(*ranges, strict=True)))
    assert sum(written) == 300
    store = TokenStateStore(tmp_path)
    got = store.get_many(f"key{j}" for j in range(120))
    assert len(got) == len(store) == 120
    assert all(torch.equal(got[f"key{j}"].states, entry_for(j).states) for j in range(120))
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]  # one file at rest


def test_damaged_row_is_a_miss_and_is_rewritten(tiny_llama, tmp_path):
    LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(["good"], "single")
    with sqlite3.connect(tmp_path / FILENAME) as connection:  # flip bytes, keep the length
        (payload,) = connection.execute("SELECT payload FROM states").fetchone()
        damaged = bytes(b ^ 0xFF for b in payload[:4]) + payload[4:]
        connection.execute("UPDATE states SET payload = ?", (damaged,))
    clear_cache()
    states = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(["good"], "single")
    assert cache_info()["llm_texts"] == 1  # not served: recomputed
    clear_cache()
    again = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(["good"], "single")
    assert cache_info()["llm_texts"] == 0  # the recomputed row replaced the damaged one
    assert torch.equal(states[0], again[0])


def test_missing_with_verify_counts_a_damaged_row_as_missing(tmp_path):
    store = TokenStateStore(tmp_path)
    store.put_many([("a", entry_for(1)), ("b", entry_for(2))])
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        (payload,) = connection.execute("SELECT payload FROM states WHERE key='b'").fetchone()
        connection.execute("UPDATE states SET payload = ? WHERE key = 'b'",
                           (bytes([payload[0] ^ 1]) + payload[1:],))
    assert store.missing(["a", "b", "c"]) == ["c"]  # the index alone cannot tell
    assert store.missing(["a", "b", "c"], verify=True) == ["b", "c"]



def test_a_row_with_text_in_a_number_column_is_a_miss_not_a_crash(tiny_llama, tmp_path):
    # SQLite keeps text in an INTEGER column as text: a row merged in by hand or damaged
    # made every read of it, and so the fit, fail with a TypeError from a bit operation.
    LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(["good"], "single")
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        connection.execute("UPDATE states SET truncated = 'garbled'")
    store = TokenStateStore(tmp_path)
    (key,) = [row[0] for row in sqlite3.connect(tmp_path / FILENAME).execute(
        "SELECT key FROM states")]
    assert store.get_many([key]) == {} and store.missing([key], verify=True) == [key]
    clear_cache()
    states = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(["good"], "single")
    assert cache_info()["llm_texts"] == 1 and states[0].shape[0] > 0  # recomputed


def test_states_handed_over_are_written_in_order_and_released(tmp_path):
    from sklearn_relish._store import handed_over

    computed = [entry_for(i) for i in range(5)]
    assert TokenStateStore(tmp_path).put_many(handed_over(list("abcde"), computed)) == 5
    assert computed == []  # the caller's list no longer holds the states
    got = TokenStateStore(tmp_path).get_many("abcde")
    assert all(torch.equal(got[k].states, entry_for(i).states) for i, k in enumerate("abcde"))
    assert TokenStateStore(tmp_path).put_many(iter([])) == 0

def test_states_filed_under_another_key_are_not_served(tmp_path):
    store = TokenStateStore(tmp_path)
    store.put_many([("a", entry_for(1)), ("b", entry_for(2)), ("c", entry_for(3))])
    with sqlite3.connect(tmp_path / FILENAME) as connection:  # swap a's and b's keys
        connection.execute("UPDATE states SET key = 'tmp' WHERE key = 'a'")
        connection.execute("UPDATE states SET key = 'a' WHERE key = 'b'")
        connection.execute("UPDATE states SET key = 'b' WHERE key = 'tmp'")
    assert set(store.get_many(["a", "b", "c"])) == {"c"}
    assert store.missing(["a", "b", "c"], verify=True) == ["a", "b"]


def test_rows_written_before_keyed_checksums_are_still_served(tmp_path):
    # Rows of earlier versions carry no key flag and a checksum without the key: a large
    # existing store must not be recomputed because of the newer format.
    from sklearn_relish._store import _KEYED, _encode
    store = TokenStateStore(tmp_path)
    store.put_many([("old", entry_for(2))])
    key, n_tokens, dim, flags, _, payload = _encode("old", entry_for(2))
    legacy = _checksum(n_tokens, dim, bool(flags & 1), payload)
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        connection.execute("UPDATE states SET truncated = ?, checksum = ?",
                           (flags & ~_KEYED, legacy))
    assert torch.equal(store.get_many(["old"])["old"].states, entry_for(2).states)


def test_a_store_of_a_newer_format_is_refused_by_name_and_never_read(tiny_llama, tmp_path):
    LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS[:3], "single")
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        connection.execute("PRAGMA user_version = 99")
    clear_cache()
    with pytest.warns(UserWarning, match="newer sklearn_relish"):
        LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS[:3], "single")
    assert cache_info()["llm_texts"] == 3  # its rows were not served


def test_a_row_with_flags_of_a_later_format_is_a_miss(tmp_path):
    from sklearn_relish._store import _encode
    store = TokenStateStore(tmp_path)
    store.put_many([("later", entry_for(1))])
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        connection.execute("UPDATE states SET truncated = truncated | 64")
    assert store.get_many(["later"]) == {} and store.missing(["later"], verify=True)
    assert _encode("x", entry_for(1))[3] < 8  # what this version writes stays readable


def test_a_cut_store_file_warns_once_and_featurizes_without_it(tiny_llama, tmp_path):
    expected = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
    path = tmp_path / FILENAME
    path.write_bytes(path.read_bytes()[:3000])  # as if a copy stopped halfway
    clear_cache()
    featurizer = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="cannot be used") as record:
        got = featurizer.transform(TEXTS, "single")
        featurizer.transform(TEXTS[:3], "single")
    assert len([w for w in record if "cannot be used" in str(w.message)]) == 1
    assert cache_info()["llm_texts"] == len(set(TEXTS))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_one_flipped_bit_in_the_schema_warns_and_featurizes_without_the_store(
        tiny_llama, tmp_path):
    # SQLite quotes a damaged schema's bytes in its message, and Python's sqlite3 fails to
    # decode them: a UnicodeDecodeError escaped as a bare traceback naming no file.
    expected = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
    with contextlib.closing(sqlite3.connect(tmp_path / FILENAME)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = tmp_path / FILENAME
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"CREATE TABLE states") + len("CREATE ")] ^= 0x80  # 'T' -> invalid UTF-8
    path.write_bytes(bytes(raw))
    clear_cache()
    with pytest.warns(UserWarning, match=f"cache_dir={str(tmp_path)!r} cannot be used"):
        got = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    with pytest.raises(ValueError, match="cannot be used"):
        featurize_to_store(TEXTS, str(tmp_path), backbone=tiny_llama)


def test_a_cache_dir_whose_path_cannot_even_be_checked_warns_and_predicts(tiny_llama,
                                                                          tmp_path):
    # Python's Path.is_file() raises where the OS refuses to look (a colleague's folder
    # the model names, a name over 255 bytes): predict crashed instead of warning.
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS)
    unusable = str(tmp_path / ("x" * 300) / "relish")
    model.set_params(cache_dir=unusable)
    model.featurizer_.cache_dir = unusable
    clear_cache()
    with pytest.warns(UserWarning, match="cannot be used"):
        got = model.predict(TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_cache_dir_that_is_a_file_warns_and_predicts(tiny_llama, tmp_path):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model.set_params(cache_dir=str(blocker))
    model.featurizer_.cache_dir = str(blocker)
    clear_cache()
    with pytest.warns(UserWarning, match="cannot be used"):
        got = model.predict(TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert blocker.read_text() == "not a folder"  # nothing of the user's overwritten


@contextlib.contextmanager
def read_only_folder(folder):
    """Make ``folder`` and its files unwritable, as a read-only share would be, even for root."""
    paths = [folder, *folder.iterdir()]
    if os.geteuid() == 0:  # root ignores permission bits; the immutable attribute binds it
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", *map(str, paths)], capture_output=True).returncode:
            pytest.skip("no way to make a folder read-only for root here")
        undo = ["chattr", "-i", *map(str, paths)]
    else:
        for path in paths:
            path.chmod(0o500 if path.is_dir() else 0o400)
        undo = None
    try:
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        for path in paths:
            path.chmod(0o700 if path.is_dir() else 0o600)


def test_read_only_cache_dir_warns_and_carries_on(tiny_llama, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only_folder(folder), pytest.warns(UserWarning, match="cannot be used"):
        states = LLMFeaturizer(tiny_llama, cache_dir=str(folder)).transform(TEXTS, "single")
    assert len(states) == len(TEXTS)
    assert list(folder.iterdir()) == []


def test_read_only_cache_dir_is_read_and_not_written(tiny_llama, tmp_path):
    # A store shipped on a read-only share (or handed out read-only to a team) was skipped
    # whole: every text went through the LLM again although its states were there.
    folder = tmp_path / "shared"
    LLMFeaturizer(tiny_llama, cache_dir=str(folder)).transform(TEXTS, "single")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    clear_cache()
    with read_only_folder(folder):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to write: no warning
            LLMFeaturizer(tiny_llama, cache_dir=str(folder)).transform(TEXTS, "single")
        assert cache_info()["llm_texts"] == 0  # every text read from the store
        assert len(TokenStateStore(folder)) == len(set(TEXTS))
        with pytest.warns(UserWarning, match="cannot be written"):
            states = LLMFeaturizer(tiny_llama, cache_dir=str(folder)).transform(
                [t + " again" for t in TEXTS], "single")
        assert len(states) == len(TEXTS)
        with pytest.raises(StoreUnavailable):
            TokenStateStore(folder).check_writable()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_read_only_store_with_rows_in_its_write_ahead_log_never_drops_them(tmp_path):
    # A store copied while a writer had it open carries rows in states.sqlite-wal. Read
    # with immutable=1, SQLite ignores the log: those rows were silently missing.
    source = tmp_path / "live"
    TokenStateStore(source).put_many([("a", entry_for(1))])
    writer = sqlite3.connect(source / FILENAME, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")  # "b" stays in the log
    writer.execute("INSERT INTO states VALUES (?, ?, ?, ?, ?, ?)", _encode("b", entry_for(2)))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (FILENAME, FILENAME + "-wal"):
        shutil.copy(source / name, copy / name)
    writer.close()
    with read_only_folder(copy):
        try:
            found = TokenStateStore(copy).get_many(["a", "b"])
        except StoreUnavailable:
            found = None  # refused out loud (the featurizer warns): acceptable
        assert found is None or set(found) == {"a", "b"}


def test_fill_store_refuses_a_read_only_store_before_running_the_llm(tiny_llama, tmp_path):
    folder = tmp_path / "shared"
    TokenStateStore(folder).put_many([("seed", entry_for(0))])
    featurizer = LLMFeaturizer(tiny_llama, cache_dir=str(folder), cache=False)
    with read_only_folder(folder), pytest.raises(StoreUnavailable):
        featurizer.fill_store(TEXTS, "single")
    assert cache_info()["llm_texts"] == 0


def test_fill_store_on_a_read_only_store_that_holds_every_text_has_nothing_to_do(
        tiny_llama, tmp_path):
    # A chunk already in the store needs no write: it must neither fail on a read-only
    # share nor wait for the write lock behind other workers.
    folder = tmp_path / "shared"
    LLMFeaturizer(tiny_llama, cache_dir=str(folder), cache=False).fill_store(TEXTS, "single")
    featurizer = LLMFeaturizer(tiny_llama, cache_dir=str(folder), cache=False)
    with read_only_folder(folder):
        assert featurizer.fill_store(TEXTS, "single") == 0


def test_full_disk_on_write_warns_and_carries_on(tiny_llama, tmp_path, monkeypatch):
    # A real full disk: cap the database at its current size so the next insert fails
    # inside SQLite with SQLITE_FULL, as ENOSPC would.
    TokenStateStore(tmp_path).put_many([("seed", entry_for(0))])
    original = TokenStateStore._connect

    def capped(self):
        connection = original(self)
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")
        return connection

    monkeypatch.setattr(TokenStateStore, "_connect", capped)
    with pytest.raises(StoreUnavailable, match="full"):
        TokenStateStore(tmp_path).put_many([("big", entry_for(1, n_tokens=4000))])
    with pytest.warns(UserWarning, match="cannot be written"):
        states = LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(
            [t * 3 for t in TEXTS], "single")
    assert len(states) == len(TEXTS)


def test_states_already_in_memory_are_written_to_cache_dir(tiny_llama, tmp_path):
    # Issue 14 item 6: a folder given after the texts were cached in memory still gets them.
    LLMFeaturizer(tiny_llama).transform(TEXTS, "single")
    folder = tmp_path / "later"
    LLMFeaturizer(tiny_llama, cache_dir=str(folder)).transform(TEXTS, "single")
    assert cache_info()["llm_texts"] == len(set(TEXTS))  # served from memory, not rerun
    assert len(TokenStateStore(folder)) == len(set(TEXTS))
    clear_cache()  # a new process reads them all from the folder
    LLMFeaturizer(tiny_llama, cache_dir=str(folder)).transform(TEXTS, "single")
    assert cache_info()["llm_texts"] == 0


def test_editing_transform_output_does_not_change_predictions(tiny_llama):
    # Issue 14 item 7: the cache hands out copies, never its own tensors.
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS[:3])
    for states in model.featurizer_.transform(TEXTS[:3], "single"):
        states.mul_(100).add_(7)
    np.testing.assert_array_equal(model.predict(TEXTS[:3]), expected)


def test_no_warning_when_the_store_works(tiny_llama, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
        clear_cache()
        LLMFeaturizer(tiny_llama, cache_dir=str(tmp_path)).transform(TEXTS, "single")
    assert cache_info()["llm_texts"] == 0


# -- featurize_to_store without a cluster: the pre-fill a fit then reads --------------
def test_a_verifying_prefill_repairs_damaged_rows(tiny_llama, tmp_path):
    featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama)
    with sqlite3.connect(tmp_path / FILENAME) as connection:  # one row's bytes flipped
        key, payload = connection.execute("SELECT key, payload FROM states").fetchone()
        connection.execute("UPDATE states SET payload = ? WHERE key = ?",
                           (bytes(b ^ 0xFF for b in payload[:4]) + payload[4:], key))
    assert featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama)["computed"] == 0  # index
    again = featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama, verify=True)
    assert again["computed"] == 1
    clear_cache()
    small_regressor(tiny_llama, cache_dir=str(tmp_path)).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == 0


@pytest.mark.parametrize("params", [
    {"backbone_kwargs": {"attn_implementation": "eager"}},
    {"train_top_layers": 1, "layer": -1},
])
def test_a_prefill_serves_fits_with_the_same_loading_and_trained_blocks(tiny_llama, tmp_path,
                                                                       params):
    # The keys must be the fit's: backbone_kwargs key the loaded backbone apart, and a fit
    # with trained blocks reads the states under them, not the layer its head sees.
    counts = featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama, **params)
    assert counts["computed"] == len(set(TEXTS))
    clear_cache()
    small_regressor(tiny_llama, cache_dir=str(tmp_path), **params).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == 0
