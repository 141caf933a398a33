"""A transfer in progress, kept on disk so that a restarted agent resumes where it stopped.

    STATE/xfer/{sha256 of the target}/
        meta.json   what is being fetched: target path, signed length and sha256
        data.part   the chunks, each at its offset (a sparse file until complete)
        bitmap      one bit per chunk that is in data.part and checked

The bitmap is only written after data.part is flushed to disk (`checkpoint`), so it never
claims a chunk that a power cut could lose; a crash between checkpoints costs the chunks since
the last one, not the transfer. Nothing here is trusted: the assembled bytes are checked
against the signed hash before install, and a folder that does not match what is being fetched
is discarded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_agent.errors import BundleRejected
from edge_agent.protocol.reasons import Reason
from edge_agent.protocol.transfer import Reassembly, chunk_bounds
from edge_agent.system.fsutil import atomic_write, remove_folder


class PartialTransfer:
    def __init__(self, root: Path, target: str, length: int, sha256: str) -> None:
        self.folder = root / sha256
        self._meta = {"target": target, "length": length, "sha256": sha256}
        self._data = self.folder / "data.part"
        self._bitmap = self.folder / "bitmap"
        self._fd: int | None = None  # data.part, open for writing while chunks arrive

    def restore(self, reassembly: Reassembly) -> int:
        """Put what an earlier attempt kept into `reassembly`; how many chunks that was."""
        if not self._matches():
            self.discard()
            return 0
        try:
            bits = self._bitmap.read_bytes()
            kept = self._data.stat().st_size
        except OSError:
            self.discard()
            return 0
        for index in range(reassembly.total):
            _, end = chunk_bounds(index, reassembly.size, reassembly.chunk_size)
            if index // 8 < len(bits) and bits[index // 8] >> (index % 8) & 1 and end <= kept:
                reassembly.restore(index)
        return reassembly.resumed

    def read(self, reassembly: Reassembly) -> bytes:
        """The whole target, once every chunk is in (checkpointed first by the caller)."""
        reassembly.check_complete()
        try:
            with self._data.open("rb") as f:
                data = f.read(reassembly.size)
        except FileNotFoundError:
            data = b""  # nothing on disk: said below, unless the target is empty
        if len(data) != reassembly.size:
            raise BundleRejected(
                Reason.TRUNCATED,
                f"{reassembly.target}: {len(data)} of {reassembly.size} bytes on disk",
            )
        return data

    def write(self, index: int, data: bytes, chunk_size: int) -> None:
        """Store one checked chunk at its offset (durable at the next checkpoint). data.part
        stays open until `close`: one system call per chunk, not four."""
        if self._fd is None:
            if not self.folder.exists():
                self.folder.mkdir(parents=True, mode=0o700)
                # not fsynced (the checkpoints' bitmap writes sync this folder's entries): a
                # meta.json that a power cut lost or emptied makes `restore` discard the
                # folder, which costs the resume, never keeps bytes of another target
                meta = json.dumps(self._meta).encode()
                atomic_write(self.folder / "meta.json", meta, durable=False)
            self._fd = os.open(self._data, os.O_WRONLY | os.O_CREAT, 0o600)
        os.pwrite(self._fd, data, index * chunk_size)

    def close(self) -> None:
        """Close data.part (what was written stays; a checkpoint makes it durable)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def checkpoint(self, reassembly: Reassembly) -> None:
        """Flush the chunks written so far, then record them in the bitmap."""
        self.save(reassembly.bitmap())

    def save(self, bits: bytes) -> None:
        """Flush data.part, then record `bits` (a bitmap of chunks written before this call)."""
        if self._fd is not None:
            os.fsync(self._fd)
        elif not self._data.exists():
            return
        else:
            fd = os.open(self._data, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        atomic_write(self._bitmap, bits)

    def discard(self) -> None:
        self.close()
        remove_folder(self.folder)

    def _matches(self) -> bool:
        try:
            meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(meta == self._meta)
