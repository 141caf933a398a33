"""Atomic file writes (temp file in the same folder, fsync, os.replace; cleaned up on failure),
and what a failed write means: `storage_error` turns the operating system's or SQLite's
complaint into the project's StorageError with a reason code (disk full, read-only, ...)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import StorageError

if TYPE_CHECKING:  # a type only: the processes that never open a database do not load SQLite
    import sqlite3


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` by `data`: a reader sees the old bytes or the new, never part of them.
    `durable`: on disk before this returns (fsync of the file and its folder), so a power cut
    cannot take it back; without, a file the process rewrites anyway (a snapshot such as
    status.json) saves the two fsyncs, and after a power cut may be old or unreadable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def remove_leftovers(folder: Path) -> list[str]:
    """Remove the temp files an `atomic_write` in `folder` left when its process was killed
    (SIGKILL, power cut) between writing and renaming; returns their names. Only for a folder
    that no other process writes (a state folder at start): they are nobody's then, and on a
    tight disk they are space the device needs."""
    gone = []
    with contextlib.suppress(OSError):  # a folder we cannot list or write: nothing to do now
        for path in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
                gone.append(path.name)
    return gone


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ERRNO_REASONS = {
    errno.ENOSPC: "disk-full",
    errno.EDQUOT: "disk-full",
    errno.EROFS: "read-only",
    errno.EPERM: "permission",
    errno.EACCES: "permission",
    errno.EIO: "io-error",
}
DISK_ERRNOS = frozenset(_ERRNO_REASONS)  # what a disk says when it refuses a write
# SQLite's primary result codes (the low byte of an extended one)
_SQLITE_REASONS = {
    3: "permission",  # SQLITE_PERM
    8: "read-only",  # SQLITE_READONLY
    10: "io-error",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "disk-full",  # SQLITE_FULL
    26: "corrupt",  # SQLITE_NOTADB
}


def storage_error(exc: OSError | sqlite3.Error, where: Path) -> StorageError:
    """What a failed write to `where` means. SQLite says only "unable to open database file"
    when its folder is read-only or full: then the folder's file system tells which."""
    if isinstance(exc, OSError):
        reason = _ERRNO_REASONS.get(exc.errno or 0)
        detail = exc.strerror or str(exc)
    else:
        code = getattr(exc, "sqlite_errorcode", None)
        reason = _SQLITE_REASONS.get(code & 0xFF) if isinstance(code, int) else None
        detail = str(exc)
    return StorageError(reason or _folder_state(where.parent) or "write-failed", str(where), detail)


def _folder_state(folder: Path) -> str | None:
    """ "read-only" or "disk-full" when the file system holding `folder` is so, else None."""
    for place in (folder, *folder.parents):  # the nearest folder that exists
        try:
            fs = os.statvfs(place)
        except OSError:
            continue
        if fs.f_flag & os.ST_RDONLY:
            return "read-only"
        if fs.f_bavail == 0 or fs.f_favail == 0:
            return "disk-full"
        return None
    return None
