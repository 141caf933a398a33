"""Where the sources' messages wait for the pipeline: bounded in count and in bytes.

Lines are small and a count bounds them well; images are not (a few MB each), so the bytes
waiting are bounded too: a new message is refused (queue.Full, as when the count is reached)
while the waiting ones hold `max_bytes` or more.

The main loop takes a micro-batch with `get_batch`: one lock for the batch, not one per message
(and `put_nowait` takes the lock once), which at a sensor line's size is a good share of the
line's cost.

Where messages were refused, the first one taken in after them is preceded by `GAP` (beyond the
count bound, by one): the pipeline then knows that lines are missing there, and a window model's
framer starts its window again rather than span the hole (edge_agent.inference.pipeline).

A source that can hold off reading (a file, a folder: `Source.waits`) is not refused: it waits
with `put_waiting` while `WAITING_ROOM` messages, or half of either bound, wait. The deep bound
is for what cannot wait (a serial port's few kilobytes of kernel buffer, a broker's messages),
and the half left keeps room for them beside a file read at full speed; a file read ahead by
thousands of lines only costs the device memory, and a file longer than the bound read at full
speed lost its lines past it.
"""

from __future__ import annotations

import queue
import threading

Message = tuple[str, bytes]  # (format, raw bytes)
GAP: Message = ("gap", b"")  # messages were refused here
WAITING_ROOM = 256  # messages a waiting source may have queued: 16 micro-batches of 16
_POLL_S = 0.2  # the longest a waiting source goes without looking at its stop event


class Backlog(queue.Queue[Message]):
    def __init__(self, maxsize: int, max_bytes: int) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0  # of the messages waiting; changed under the queue's mutex
        self._lost = False  # a message was refused since the last one taken in

    def put_nowait(self, item: Message) -> None:
        """`queue.Queue.put_nowait`, refusing too when the waiting messages hold max_bytes."""
        with self.mutex:
            if self.bytes >= self.max_bytes or 0 < self.maxsize <= self._qsize():
                self._lost = True
                raise queue.Full
            self._accept(item)

    def put_waiting(self, item: Message, stop: threading.Event) -> bool:
        """For a source that can hold off reading: wait while WAITING_ROOM messages, or half
        of the count or byte bound, wait, then queue `item`. False (not queued) when `stop`
        was set first."""
        room = min(WAITING_ROOM, max(self.maxsize // 2, 1)) if self.maxsize > 0 else WAITING_ROOM
        with self.not_full:
            while self.bytes >= self.max_bytes // 2 or self._qsize() >= room:
                if stop.is_set():
                    return False
                self.not_full.wait(_POLL_S)
            self._accept(item)
        return True

    def _accept(self, item: Message) -> None:
        """Queue `item` (the mutex held), after a GAP if messages were refused before it."""
        if self._lost:
            self._put(GAP)
            self.unfinished_tasks += 1
            self._lost = False
        self._put(item)
        self.unfinished_tasks += 1
        self.not_empty.notify()

    def get_batch(self, most: int, timeout: float) -> list[Message]:
        """Up to `most` messages in order, waiting up to `timeout` seconds for the first (an
        empty list if none came)."""
        with self.not_empty:
            if not self._qsize():
                self.not_empty.wait(timeout)
                if not self._qsize():  # the time is up (or a spurious wake-up: the caller loops)
                    return []
            batch = [self._get() for _ in range(min(most, self._qsize()))]
            self.not_full.notify(len(batch))
            return batch

    def wake(self) -> None:
        """Wake a `get_batch` waiting for its first message (it returns what it has, perhaps
        nothing) and the sources waiting for room (they look at their stop event). Safe from
        a signal handler: should the interrupted thread hold the lock, it is not waiting, and
        it is not waited for here beyond a moment."""
        if self.mutex.acquire(timeout=0.05):
            try:
                self.not_empty.notify_all()
                self.not_full.notify_all()
            finally:
                self.mutex.release()

    def _put(self, item: Message) -> None:
        super()._put(item)
        self.bytes += len(item[1])

    def _get(self) -> Message:
        item = super()._get()
        self.bytes -= len(item[1])
        return item
