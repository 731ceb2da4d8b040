"""Writing a user's file whole or not at all, with the permissions any new file gets.

``tempfile.mkstemp`` creates files readable by their owner only (0600), and ``mkdtemp``
such folders (0700), so a model, a table or a converted backbone written through them, then
renamed into place, was private where ``joblib.dump`` or ``DataFrame.to_csv`` would have
made it readable by others. Creating them with modes 0666 and 0777 lets the kernel apply the
process's umask, as it does to every other file.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def is_disk_full(error: OSError) -> bool:
    """A full disk or quota, which a library's write reports naming no file: callers
    re-raise it saying where they were writing and how to write elsewhere."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)

def new_temp_file(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """An open descriptor and the path of a new, empty file in ``folder`` (umask applies)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def new_temp_dir(folder: str | os.PathLike, prefix: str) -> Path:
    """A new, empty folder in ``folder`` with the permissions ``mkdir`` gives (umask applies)."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def give_new_file_permissions(folder: Path) -> None:
    """Give the files in ``folder`` the mode a new file gets here (some writers, such as
    safetensors', make theirs 0600). The mode is read off a probe file, not ``os.umask``,
    whose read-by-setting would briefly change it for every thread."""
    handle, probe = new_temp_file(folder, prefix=".mode-")
    os.close(handle)
    try:
        mode = os.stat(probe).st_mode & 0o777
    finally:
        os.unlink(probe)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def publish(tmp: str | os.PathLike, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``path``; without ``overwrite``, never onto a file.

    ``os.link`` fails if ``path`` exists, so checking and moving are one step: a file that
    appears at ``path`` while ours was being written is kept, and ``FileExistsError`` says so.
    """
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        # NFSv3 can answer a retried LINK with EEXIST although the first one made it.
        # (A link to nothing at ``path`` exists too, and is not our file.)
        if not (os.path.exists(path) and os.path.samefile(tmp, path)):
            raise FileExistsError(f"{path} exists") from None
    except OSError:  # a file system without hard links: check, then move
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any],
                     overwrite: bool) -> Path:
    """``write(tmp)`` into a new temporary file beside ``path``, sync it, then :func:`publish` it.

    A crash, a power cut, a full disk or an interrupt leaves ``path`` as it was, and the
    temporary file never outlives the call. An overwritten file keeps its permissions; a
    symlink keeps pointing where it did, at the new contents. ``FileExistsError`` as
    :func:`publish` raises it.
    """
    given = Path(path)
    # Overwriting through a symlink (current.joblib -> v3.joblib) updates the file it
    # points to: renaming onto the link would replace the link and leave v3 as it was.
    target = Path(os.path.realpath(given)) if overwrite and given.is_symlink() else given
    # At most 64 bytes of the name: the whole of a legal 255-byte name plus the temporary
    # name's 18 characters was too long for the file system.
    short = os.fsencode(target.name)[:64].decode(errors="ignore")
    handle, tmp = new_temp_file(target.parent, prefix=f".{short}.")
    os.close(handle)
    try:
        try:
            write(tmp)
        except OSError as error:
            # A full disk raised inside a library's write names no file: the CLI printed
            # "[Errno 28] No space left on device" and nothing said which file failed.
            if error.filename is None and error.errno is not None:
                raise OSError(error.errno, error.strerror, str(given)) from error
            raise
        # On disk before the rename: else a power cut can leave the new name on an empty
        # or partial file (ext4 and XFS may commit the rename before the data). Before the
        # chmod below too, which may take away the write access Windows' fsync needs.
        sync_to_disk(tmp)
        if overwrite and target.exists():  # a private (0600) file stays private
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        publish(tmp, target, overwrite)
        sync_to_disk(target.parent)  # the rename itself, where the system allows it
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return given


def sync_to_disk(path: str | os.PathLike) -> None:
    """``fsync`` a file or a folder (macOS: ``F_FULLFSYNC``, its ``fsync`` leaves the data
    in the drive's cache). Folders cannot be opened on Windows and some network file
    systems refuse to sync them; the write itself has happened, so that is let be."""
    folder = os.path.isdir(path)
    # POSIX syncs through a read-only descriptor (a 0444 file can be synced); Windows'
    # fsync (_commit) needs write access.
    try:
        handle = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        if hasattr(fcntl, "F_FULLFSYNC"):
            try:
                fcntl.fcntl(handle, fcntl.F_FULLFSYNC)
                return
            except OSError:
                pass  # not every macOS file system has it: a plain fsync then
        os.fsync(handle)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(handle)


def write_record(path: Path, value: Any) -> None:
    """Replace the JSON record ``path`` atomically; a record is only a cache of what can
    be recomputed, so a read-only folder or a full disk costs recomputing it later."""
    import json

    def write(tmp: str) -> None:
        with open(tmp, "w") as stream:
            json.dump(value, stream)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, write, overwrite=True)
    except OSError:
        pass
