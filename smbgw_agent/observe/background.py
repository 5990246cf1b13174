"""Slow readings refreshed off the scrape path.

A scrape must never wait on `smbstatus` or a directory walk: each slow reading runs in
its own thread on an interval, with a timeout, and the collector serves the last value
together with whether the last attempt succeeded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class BackgroundReading(Generic[T]):
    # Bumped by every refresh of any reading: the exporter's cache key.
    generation = 0
    # Called after any reading refreshed (the exporter re-renders in the background).
    listeners: ClassVar[list[Callable[[], None]]] = []

    def __init__(self, name: str, read: Callable[[], T], interval: float = 15.0) -> None:
        self.name = name
        self._read = read
        self.interval = interval
        self.value: T | None = None
        self.ok = False
        self.error: str | None = "not read yet"
        self.updated: float | None = None
        self.duration: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"reading-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh_soon(self) -> None:
        self._wake.set()

    def refresh_now(self) -> None:
        """Read synchronously (tests, and the first reading before the thread runs)."""
        started = time.monotonic()
        try:
            self.value = self._read()
            self.ok, self.error = True, None
        except Exception as exc:
            self.ok, self.error = False, str(exc) or type(exc).__name__
            log.warning("reading %s failed: %s", self.name, self.error)
        self.duration = time.monotonic() - started
        self.updated = time.time()
        BackgroundReading.generation += 1
        for listener in list(BackgroundReading.listeners):
            listener()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_now()
            self._wake.wait(self.interval)
            self._wake.clear()
