"""A token-state store on disk that many processes share: one SQLite file of checksummed rows.

Why SQLite rows rather than per-text files or hand-made shards (measured in
``benchmarks/scale.py``, see ``benchmarks/RESULTS.md``, "## Scale"):

- **Files at rest**: ``states.sqlite`` only (its ``-wal``/``-shm`` companions exist while a
  process has it open), whatever the number of texts; per-text files made one file per text.
- **Many writers, many readers, processes included**: SQLite's own file locks serialize
  writers (each ``put_many`` is one ``BEGIN IMMEDIATE`` transaction, waited for up to
  ``BUSY_TIMEOUT_S``) and write-ahead logging lets readers go on while one writes. A
  transaction is atomic: a writer killed midway leaves no row, never half a row.
- **Bounded memory when read**: a lookup reads the rows asked for through the primary-key
  index, nothing else; there is no shard to load whole.
- **Damage detected**: every row carries a CRC-32 of its key, shape, flags and payload; a row
  whose checksum or length does not match (a payload changed, or states filed under another
  text's key), or a file SQLite cannot read, is a miss, never served.
- Standard library only: nothing to install, nothing compiled.

Limit: SQLite needs working POSIX file locks, so a store shared by several machines must sit
on a file system that has them (a local disk per machine, or a cluster file system such as
Lustre or GPFS; not every NFS mount qualifies).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ._cache import CachedStates

FILENAME = "states.sqlite"
BUSY_TIMEOUT_S = 300.0  # a writer waits this long for another's transaction before failing
_CHUNK = 500  # keys per IN (...) query: under SQLite's smallest variable limit (999)
_SCHEMA = """CREATE TABLE IF NOT EXISTS states (
    key TEXT PRIMARY KEY, n_tokens INTEGER NOT NULL, dim INTEGER NOT NULL,
    truncated INTEGER NOT NULL, checksum INTEGER NOT NULL, payload BLOB NOT NULL)"""

_WARNED: set[str] = set()  # one warning per store folder and process
_WARNED_LOCK = threading.Lock()


class StoreUnavailable(OSError):
    """The store cannot be used (not a folder, not writable, damaged, disk full, newer)."""


# The ``truncated`` column is a set of flags: bit 0 truncated, bit 1 bfloat16 payload,
# bit 2 the checksum covers the key. A row with any other bit comes from a later format.
_BFLOAT16 = 2
_KEYED = 4
_KNOWN_FLAGS = 1 | _BFLOAT16 | _KEYED
# PRAGMA user_version of the stores this version writes (0: written before it was set,
# the same layout). A store stamped higher is refused rather than half used.
FORMAT = 1
_COLUMNS = "key, n_tokens, dim, truncated, checksum, payload"
# What SQLite raises on a fault. A damaged schema page makes SQLite quote the damaged bytes
# in its message, and Python's sqlite3 then raises UnicodeDecodeError decoding it: that
# escaped every ``except sqlite3.Error`` as a bare traceback naming no file.
_SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def _checksum(n_tokens: int, dim: int, truncated: bool, payload: bytes,
              bfloat16: bool = False, key: str | None = None) -> int:
    header = struct.pack("<qq?", n_tokens, dim, truncated)
    # bfloat16 rows checksum a longer header, so a reader that only knows float16 payloads
    # (sklearn_relish before this format) finds a mismatch and recomputes the text rather
    # than reading bfloat16 bits as float16.
    if bfloat16:
        header += b"bfloat16"
    # Covering the key makes a row whose key changed (a damaged page, a hand-merged store)
    # a miss instead of another text's states. Rows written before carry no _KEYED flag and
    # are still served, so a large existing store is not recomputed; readers from before
    # this flag see a mismatch on new rows and recompute them.
    if key is not None:
        encoded = key.encode()
        header += struct.pack("<q", len(encoded)) + encoded
    return zlib.crc32(payload, zlib.crc32(header))


class TokenStateStore:
    """Token states of many texts in one SQLite file under ``folder``, keyed by ``cache_key``.

    Every method opens its own short-lived connection, so a store object is cheap, pickles
    as a path, and is safe across threads, forked processes and cluster workers.
    Methods raise :class:`StoreUnavailable` on any fault; the featurizer turns that into
    one warning and carries on without the store.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.path = self.folder / FILENAME

    def _connect_to_read(self) -> sqlite3.Connection:
        """A connection for reading: read-write if possible, else read-only.

        A store on a read-only share, or handed out read-only, cannot be opened read-write
        (write-ahead logging creates files beside it), yet its rows are as good as any.
        """
        try:
            return self._connect()
        except StoreUnavailable as error:
            if not _is_file(self.path):
                raise
            first_error = error
        # immutable=1 tells SQLite that nobody writes the file, so it needs no -shm file
        # (which a folder nobody can write to cannot hold). Only claimed when the folder is
        # not writable and holds no write-ahead log: immutable reads ignore the log, so rows
        # still in one (a writer killed, a store copied while open) would be missing.
        wal = self.path.with_name(FILENAME + "-wal")
        immutable = not os.access(self.folder, os.W_OK) and not wal.exists()
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        uri = f"{self.path.absolute().as_uri()}?{flags}"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None)
        except _SQLITE_ERRORS:
            raise first_error from None
        try:
            _check_format(connection, self.path)
        except (*_SQLITE_ERRORS, StoreUnavailable) as error:
            connection.close()
            if isinstance(error, StoreUnavailable):
                raise
            raise first_error from None
        return connection

    def _connect(self) -> sqlite3.Connection:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None)  # we open transactions ourselves
        except (OSError, *_SQLITE_ERRORS) as error:
            raise StoreUnavailable(f"cannot open {self.path}: {error}") from error
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                connection.execute("PRAGMA synchronous=NORMAL")  # atomic; last commits may be lost
                connection.execute(_SCHEMA)
                _check_format(connection, self.path)
                return connection
            except sqlite3.OperationalError as error:
                # Processes opening a new store at once: switching it to WAL can answer
                # "locked" at once, without SQLite's busy wait. Wait here instead.
                if "locked" not in str(error) or time.monotonic() > deadline:
                    connection.close()
                    raise StoreUnavailable(f"cannot use {self.path}: {error}") from error
                time.sleep(0.05)
            except _SQLITE_ERRORS as error:
                connection.close()
                raise StoreUnavailable(f"cannot use {self.path}: {error}") from error
            except StoreUnavailable:
                connection.close()
                raise

    def check_writable(self) -> None:
        """Raise :class:`StoreUnavailable` unless a row can be written (none is kept).

        Opening and reading succeed on a read-only file or under another writer's lock;
        only an insert, rolled back, shows that writes will work.
        """
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(f"INSERT OR REPLACE INTO states ({_COLUMNS}) "
                               "VALUES ('', 0, 0, 0, 0, x'')")
            connection.execute("ROLLBACK")
        except _SQLITE_ERRORS as error:
            raise StoreUnavailable(f"cannot write {self.path}: {error}") from error
        finally:
            connection.close()

    def __len__(self) -> int:
        connection = self._connect_to_read()
        try:
            return connection.execute("SELECT COUNT(*) FROM states").fetchone()[0]
        except _SQLITE_ERRORS as error:
            raise StoreUnavailable(f"cannot read {self.path}: {error}") from error
        finally:
            connection.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedStates]:
        """The intact entries among ``keys``; missing or damaged ones are left out."""
        keys = list(keys)
        found: dict[str, CachedStates] = {}
        if not keys:
            return found
        connection = self._connect_to_read()
        try:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    f"SELECT {_COLUMNS} FROM states WHERE key IN ({marks})", chunk)
                for row in rows:
                    entry = _decode(*row)
                    if entry is not None:
                        found[row[0]] = entry
        except _SQLITE_ERRORS as error:
            raise StoreUnavailable(f"cannot read {self.path}: {error}") from error
        finally:
            connection.close()
        return found

    def missing(self, keys: Iterable[str], verify: bool = False) -> list[str]:
        """Those of ``keys`` that have no row; with ``verify``, or a damaged one.

        Without ``verify`` this is an index-only query (no payload is read); with it each
        row is read and checked as :meth:`get_many` would serve it, one row at a time, and
        none is kept.
        """
        keys = list(keys)
        present: set[str] = set()
        if not keys:
            return []
        columns = _COLUMNS if verify else "key"
        connection = self._connect_to_read()
        try:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                rows = connection.execute(
                    f"SELECT {columns} FROM states WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk)
                present.update(row[0] for row in rows
                               if not verify or _decode(*row) is not None)
        except _SQLITE_ERRORS as error:
            raise StoreUnavailable(f"cannot read {self.path}: {error}") from error
        finally:
            connection.close()
        return [key for key in keys if key not in present]

    def put_many(self, entries: Iterable[tuple[str, CachedStates]]) -> int:
        """Write entries in one transaction (replacing damaged rows); returns how many.

        Each entry is encoded as SQLite takes it, so a caller that hands its states over
        one at a time never holds them and their encoded copies all at once.
        """
        entries = iter(entries)
        first = next(entries, None)
        if first is None:
            return 0  # no transaction, so no wait for the write lock
        written = 0

        def rows():
            nonlocal written
            for key, entry in itertools.chain([first], entries):
                written += 1
                yield _encode(key, entry)

        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
            connection.executemany(
                f"INSERT OR REPLACE INTO states ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows())
            connection.execute("COMMIT")
        except _SQLITE_ERRORS as error:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except _SQLITE_ERRORS:
                    pass  # closing the connection discards the transaction all the same
            raise StoreUnavailable(f"cannot write {self.path}: {error}") from error
        finally:
            connection.close()
        return written


def handed_over(keys: list[str], computed: list[CachedStates]):
    """``(key, states)`` pairs for :meth:`TokenStateStore.put_many`, each dropped from
    ``computed`` as it is handed over: a chunk of 1,000 long texts of an 8B backbone is
    about 4 GB of states, which were held whole beside their encoded copies (8 GB more)
    until the transaction ended."""
    if len(keys) != len(computed):  # checked before the first row: no partial transaction
        raise ValueError(f"{len(keys)} keys for {len(computed)} states")
    computed.reverse()  # popped from the end, handed over in order
    for key in keys:
        yield key, computed.pop()


def _encode(key: str, entry: CachedStates) -> tuple:
    bfloat16 = entry.states.dtype == torch.bfloat16
    dtype = torch.bfloat16 if bfloat16 else torch.float16
    states = entry.states.detach().to("cpu", dtype).contiguous()
    n_tokens, dim = states.shape
    # numpy has no bfloat16: its bits travel as int16.
    payload = (states.view(torch.int16) if bfloat16 else states).numpy().tobytes()
    truncated = bool(entry.truncated)
    flags = int(truncated) | (_BFLOAT16 if bfloat16 else 0) | _KEYED
    checksum = _checksum(n_tokens, dim, truncated, payload, bfloat16, key)
    return key, n_tokens, dim, flags, checksum, payload


def _intact(key: str, n_tokens: int, dim: int, flags: int, checksum: int,
            payload: bytes) -> bool:
    """Whether a row has its length and checksum (written whole, unchanged, under its key)."""
    # SQLite keeps text in an INTEGER column as text: a row merged in by hand or damaged
    # must be a miss, not a TypeError in the middle of a fit.
    if not all(type(value) is int for value in (n_tokens, dim, flags, checksum)):
        return False
    if n_tokens < 0 or dim < 0:
        return False
    truncated, bfloat16 = bool(flags & 1), bool(flags & _BFLOAT16)
    if flags & ~_KNOWN_FLAGS:
        return False  # a later format's row: recomputed, not misread
    if not isinstance(payload, bytes) or len(payload) != 2 * n_tokens * dim:
        return False
    covered_key = key if flags & _KEYED else None
    return _checksum(n_tokens, dim, truncated, payload, bfloat16, covered_key) == checksum


def _decode(key: str, n_tokens: int, dim: int, flags: int, checksum: int,
            payload: bytes) -> CachedStates | None:
    if not _intact(key, n_tokens, dim, flags, checksum, payload):
        return None
    truncated, bfloat16 = bool(flags & 1), bool(flags & _BFLOAT16)
    # One copy into memory the tensor owns (frombuffer on bytes would be read-only).
    array = np.frombuffer(payload, dtype=np.int16 if bfloat16 else np.float16)
    if not bfloat16 and not np.isfinite(array).all():
        # Written before states beyond float16's range were kept in bfloat16: its inf
        # would train a NaN head. A miss, so the text is featurized again.
        return None
    states = torch.from_numpy(array.reshape(n_tokens, dim).copy())
    return CachedStates(states.view(torch.bfloat16) if bfloat16 else states, truncated)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where it cannot be told: Python raises on a permission
    error (a colleague's cache_dir a model names) or an over-long name, which turned a
    store to skip with a warning into a crash of predict."""
    try:
        return path.is_file()
    except OSError:
        return False


def _check_format(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > FORMAT:
        raise StoreUnavailable(
            f"{path} was written by a newer sklearn_relish (store format {version}; this "
            f"version reads format {FORMAT} and below); upgrade, or use another cache_dir")
    if version < FORMAT:
        try:
            connection.execute(f"PRAGMA user_version={FORMAT}")
        except _SQLITE_ERRORS:
            pass  # a read-only store: stamped by its next writer


def warn_once(store: TokenStateStore, error: Exception, *, writing: bool = False) -> None:
    """Say once per folder and process that the store is skipped (or not written), and why."""
    key = f"{store.folder}|{writing}"  # a store that becomes unreadable later still says so
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    if writing:
        message = (f"cache_dir={str(store.folder)!r} cannot be written ({error}); the states "
                   "it holds are still read, new ones are cached in memory only.")
    else:
        message = (f"cache_dir={str(store.folder)!r} cannot be used ({error}); featurizing "
                   "without it. Token states are still cached in memory.")
    warnings.warn(message, UserWarning, stacklevel=4)
