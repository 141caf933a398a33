"""Where the sources' messages wait for the pipeline: bounded in count and in bytes.

Lines are small and a count bounds them well; images are not (a few MB each), so the bytes
waiting are bounded too: a new message is refused (queue.Full, as when the count is reached)
while the waiting ones hold `max_bytes` or more. The check and the put are two steps, so
sources putting at the same moment may each add one message past the bound.
"""

from __future__ import annotations

import queue

Message = tuple[str, bytes]  # (format, raw bytes)


class Backlog(queue.Queue[Message]):
    def __init__(self, maxsize: int, max_bytes: int) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0  # of the messages waiting; changed under the queue's mutex

    def put_nowait(self, item: Message) -> None:
        with self.mutex:
            if self.bytes >= self.max_bytes:
                raise queue.Full
        super().put_nowait(item)

    def _put(self, item: Message) -> None:
        super()._put(item)
        self.bytes += len(item[1])

    def _get(self) -> Message:
        item = super()._get()
        self.bytes -= len(item[1])
        return item
