"""A pass's time budget, shared by every command it runs, and the watchdog heartbeat.

systemd restarts an agent that stops pinging its watchdog. A pass that legitimately
runs commands for a while must keep pinging, and a pass that hangs must not: so the
pings come from the pass's own thread, only while the pass is inside its budget. Every
command started under a deadline gets at most the time that is left; once the budget is
spent, no further command starts, so the pass ends promptly with the remaining work
failed (and retried with backoff) instead of stalling.

Time here is always `time.monotonic()`: a wall-clock step (NTP, an admin's `date -s`)
must not stretch or shorten a budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Deadline:
    def __init__(self, seconds: float, heartbeat: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.ends = clock() + seconds
        self._heartbeat = heartbeat

    def remaining(self) -> float:
        return max(0.0, self.ends - self.clock())

    @property
    def expired(self) -> bool:
        return self.clock() >= self.ends

    def beat(self) -> None:
        """Tell systemd the pass is alive, as long as it is within its budget."""
        if self._heartbeat is not None and not self.expired:
            self._heartbeat()


_current = threading.local()


def current() -> Deadline | None:
    """The deadline of the pass running on this thread (None elsewhere, e.g. background
    readings, which have their own timeouts and must not feed the watchdog)."""
    return getattr(_current, "deadline", None)


def beat() -> None:
    deadline = current()
    if deadline is not None:
        deadline.beat()


@contextmanager
def bounded(deadline: Deadline) -> Iterator[Deadline]:
    previous = current()
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = previous
