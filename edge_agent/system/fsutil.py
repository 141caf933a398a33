"""Atomic file writes (temp file in the same folder, fsync, os.replace; cleaned up on failure),
and what a failed write means: `storage_error` turns the operating system's
complaint into the project's StorageError with a reason code (disk full, read-only, ...)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from edge_agent.errors import StorageError


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` by `data`: a reader sees the old bytes or the new, never part of them.
    `durable`: on disk before this returns (fsync of the file and its folder), so a power cut
    cannot take it back; without, a file the process rewrites anyway (a snapshot such as
    status.json) saves the two fsyncs, and after a power cut may be old or unreadable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path)
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


def _temp_file(path: Path) -> tuple[int, str]:
    """A new file beside `path`, `.<name>.<random>.tmp`, open for writing (tempfile.mkstemp's
    way, without tempfile: it loads shutil and random, memory the daemon keeps for its life)."""
    while True:
        tmp = str(path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue


def remove_folder(folder: Path) -> None:
    """Remove a folder of files (no subfolders), as far as it goes: what cannot be removed
    stays (shutil.rmtree's ignore_errors, without loading shutil)."""
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            with contextlib.suppress(OSError):
                path.unlink()
        folder.rmdir()


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


def storage_error(exc: OSError, where: Path) -> StorageError:
    """What a failed write to `where` means: by its errno, else by the state of the file
    system holding it (read-only, or full)."""
    reason = _ERRNO_REASONS.get(exc.errno or 0)
    detail = exc.strerror or str(exc)
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
