"""Guards for the agent's threads: an unexpected exception is logged and the thread goes on.

A daemon left alone for months must not lose its sender, its main loop, its updater or a
source to one bug or one odd moment of the world, and must not fill its log with the same
traceback a thousand times a minute either. `Failures` logs each distinct failure once with its
traceback (distinct: the exception's type and the line that raised it), then only says how
often it came back, at 10, 100, 1000... repeats. `run_guarded` runs a thread's body again
after a pause when it raised.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)


def _key(exc: BaseException) -> tuple[str, str]:
    """The exception's type and where it was raised (its innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return type(exc).__qualname__, where


class Failures:
    """What failed in one thread (`name`), and how often."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> bool:
        """Log `exc` if it is new (True), else count it and say so at each power of ten."""
        key = _key(exc)
        with self._lock:
            self.seen[key] += 1
            n = self.seen[key]
        if n == 1:
            log.error("%s failed, going on: %s", self.name, exc, exc_info=exc)
            return True
        if _power_of_ten(n):
            log.error("%s failed again (%d times so far): %s", self.name, n, exc)
        return False

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self.seen.values())


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def run_guarded(
    name: str, body: Callable[[], None], stop: threading.Event, pause: float = 0.5
) -> Failures:
    """Run `body` until it returns; when it raises, log (Failures) and run it again after
    `pause`, unless `stop` is set. Returns what failed on the way."""
    failures = Failures(name)
    while not stop.is_set():
        try:
            body()
            break
        except Exception as exc:  # the guard itself: anything but a stop signal
            failures.failed(exc)
            stop.wait(pause)
    return failures
