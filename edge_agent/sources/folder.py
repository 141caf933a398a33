"""A folder as a source of images: each file that appears in it is one message.

The folder is listed every `poll_s` seconds (a poll is a directory listing and a stat per
file, cheap next to an image's inference). What decides which file to take, and when, is
`FolderScan`, plain logic fed listings; `FolderSource` does the disk work around it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from edge_agent.checks import positive_float, positive_int
from edge_agent.errors import ConfigError, TransportError
from edge_agent.protocol.frozen import frozen
from edge_agent.sources.base import DEFAULT_IMAGE_BYTES, ThreadedSource, transport_error

log = logging.getLogger(__name__)

AFTER = ("keep", "delete", "move")
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")  # files still being written


@frozen
class Listed:
    """One regular file of a listing: its name and what tells a finished file from one still
    growing (size and modification time, in nanoseconds)."""

    name: str
    size: int
    mtime_ns: int


class FolderScan:
    """Which files of a folder to take, from one listing to the next (pure: no I/O).

    A file is taken once it is complete: listed twice in a row with the same size and
    modification time (so a file still being written waits for the next poll), not hidden (a
    leading dot) and not named like a partial download (PARTIAL_SUFFIXES): a writer that
    writes under such a name and renames the finished file in is never read half-written.
    Each version of a file is taken once, oldest first. What was taken is remembered only while
    its file is still listed (what `keep` leaves in the folder), so memory follows the
    folder's size.
    """

    def __init__(self, pattern: str = "*") -> None:
        self.pattern = pattern
        self._last: dict[str, Listed] = {}  # the previous listing's candidates
        self._taken: dict[str, Listed] = {}

    def wanted(self, name: str) -> bool:
        return (
            not name.startswith(".")
            and not name.lower().endswith(PARTIAL_SUFFIXES)
            and fnmatch.fnmatchcase(name, self.pattern)
        )

    def due(self, listing: Iterable[Listed]) -> list[Listed]:
        """The files of this listing to take now, oldest first (they count as taken)."""
        now = {f.name: f for f in listing if self.wanted(f.name)}
        last, taken = self._last, self._taken
        ready = [f for f in now.values() if last.get(f.name) == f and taken.get(f.name) != f]
        self._last = now
        self._taken = {name: f for name, f in self._taken.items() if name in now}
        ready.sort(key=lambda f: (f.mtime_ns, f.name))
        for f in ready:
            self._taken[f.name] = f
        return ready


class FolderSource(ThreadedSource):
    """Images from files appearing in `path`: each complete file (see `FolderScan`) is
    delivered once, as its bytes, then by `after`: "keep" (leave it; a restarted agent takes
    it again), "delete" (remove it) or "move" (into the sub-folder `done_folder`, created when
    needed). Files matching `pattern` (a glob on the name, default every file) are taken;
    sub-folders are not entered.

    A file larger than `max_image_bytes` is cut: its first `max_image_bytes + 1` bytes are
    delivered (and refused by the framer as a truncated image) and counted `oversize`. A
    folder that is missing or unreadable is reported (`error`, `open` false) and listed again
    every poll until it is back; a file that vanishes or cannot be read is skipped and counted
    `unreadable`.
    """

    waits = True  # the files wait in their folder (and are not deleted or moved before)

    def __init__(
        self,
        path: str | Path,
        *,
        pattern: str = "*",
        poll_s: float = 0.5,
        after: str = "keep",
        done_folder: str = "done",
        name: str | None = None,
        max_image_bytes: int = DEFAULT_IMAGE_BYTES,
    ) -> None:
        where = "folder source"
        if not isinstance(path, str | Path) or str(path) == "":
            raise ConfigError(f"{where}: 'path' expected a folder path, found {path!r}")
        if not isinstance(pattern, str) or not pattern or "/" in pattern:
            raise ConfigError(
                f"{where}: 'pattern' expected a file name pattern such as '*.png', "
                f"found {pattern!r}"
            )
        if after not in AFTER:
            raise ConfigError(
                f"{where}: 'after' expected one of {', '.join(AFTER)}, found {after!r}"
            )
        if not isinstance(done_folder, str) or not done_folder or "/" in done_folder:
            raise ConfigError(
                f"{where}: 'done_folder' expected a sub-folder name, found {done_folder!r}"
            )
        max_image_bytes = positive_int(where, "max_image_bytes", max_image_bytes)
        super().__init__(name or f"folder:{path}", max_image_bytes, where)
        self.path = Path(path)
        self.poll_s = positive_float(where, "poll_s", poll_s)
        self.after = after
        self.done = self.path / done_folder
        self.error: TransportError | None = None
        self._scan = FolderScan(pattern)
        self._stats.update({"files": 0, "unreadable": 0})

    def _input_open(self) -> bool:
        return self.running and self.error is None

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            listing = self._list()
            if listing is not None:
                for listed in self._scan.due(listing):
                    if stop.is_set():
                        return
                    self._take(listed)
            stop.wait(self.poll_s)

    def _list(self) -> list[Listed] | None:
        """The folder's regular files, or None (reported once) when it cannot be listed."""
        try:
            with os.scandir(self.path) as entries:
                found = []
                for entry in entries:
                    try:
                        if entry.is_file():
                            st = entry.stat()
                            found.append(Listed(entry.name, st.st_size, st.st_mtime_ns))
                    except OSError:  # it went away between the listing and the stat
                        continue
        except OSError as exc:
            if self.error is None:
                self.error = transport_error(f"folder {str(self.path)!r}: cannot list", exc)
                log.warning("source %s: %s", self.name, self.error)
            return None
        if self.error is not None:
            log.info("source %s: folder readable again", self.name)
            self.error = None
        return found

    def _take(self, listed: Listed) -> None:
        file = self.path / listed.name
        limit = self._max_line_bytes
        try:
            with open(file, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            self._count("unreadable")
            log.warning("source %s: %s", self.name, transport_error(f"cannot read {file}", exc))
            return
        self._count("files")
        if len(data) > limit:
            self._count("oversize")
        # disposed of only once taken: a file not taken (stopping) stays for the next start, and
        # one the callback raised on stays too (counted as a callback error), never deleted
        if self._hand(data):
            self._dispose(file)

    def _dispose(self, file: Path) -> None:
        try:
            if self.after == "delete":
                file.unlink(missing_ok=True)
            elif self.after == "move":
                self.done.mkdir(exist_ok=True)
                os.replace(file, self.done / file.name)
        except OSError as exc:
            log.warning(
                "source %s: %s", self.name, transport_error(f"cannot {self.after} {file}", exc)
            )
