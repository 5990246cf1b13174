"""inotify on shares.d (via watchdog), turned into "these names changed" hints.

Each event names the files in shares.d it touched (both names of a rename), and the
agent's next pass reads only those (scanner.py). Every kind of save works: in-place
writes, editors' write-then-rename, `mv` in or out, deletes. An event about shares.d
itself being created, removed or moved says `None`, "anything may have changed": the
next pass lists the directory again (the parent is watched too, and `ensure()` re-arms
the watch when shares.d's inode changes). So do the poller's hints, and the periodic
full pass lists the directory whatever the events said.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)
# Newer watchdog releases also report opens and read-only closes; they change nothing.
IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})


# What an event about shares.d itself (not a file in it) means: when it was only
# "modified", a file in it changed, and that file's own event names it.
DIRECTORY_CONTENT_EVENTS = frozenset({"modified"})
Notify = Callable[[Collection[str] | None], None]  # the names that changed; None: any


class _Handler(FileSystemEventHandler):
    def __init__(self, directory: Path, notify: Notify) -> None:
        self.directory = str(directory)
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED_EVENTS:
            return  # the agent reading its own files must not wake it again
        paths = [os.fsdecode(event.src_path)]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(os.fsdecode(dest))
        names: set[str] = set()
        for path in paths:
            if path == self.directory:
                if event.event_type not in DIRECTORY_CONTENT_EVENTS:
                    self.notify(None)
                    return
                names.add("")  # wakes the agent, names no file
            elif os.path.dirname(path) == self.directory:
                names.add(os.path.basename(path))
        if names:
            self.notify(names - {""})


class ShareDirWatcher:
    def __init__(self, directory: Path, notify: Notify) -> None:
        self.directory = directory
        self.notify = notify
        self._observer: Any = None
        self._watches: dict[str, tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self.ensure()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    @property
    def watching(self) -> bool:
        return str(self.directory) in self._watches

    def ensure(self) -> None:
        """(Re)arm watches so they follow shares.d and its parent across re-creation."""
        if self._observer is None:
            return
        with self._lock:
            for path in (self.directory.parent, self.directory):
                self._arm(path)

    def _arm(self, path: Path) -> None:
        key = str(path)
        try:
            inode = os.stat(path).st_ino if path.is_dir() else -1
        except OSError:
            inode = -1
        current = self._watches.get(key)
        if current and current[1] == inode and inode != -1:
            return
        if current:
            with contextlib.suppress(KeyError, OSError, ValueError):
                self._observer.unschedule(current[0])
            del self._watches[key]
        if inode == -1:
            return
        try:
            watch = self._observer.schedule(_Handler(self.directory, self.notify), key, recursive=False)
            self._watches[key] = (watch, inode)
            log.debug("watching %s", key)
        except OSError as exc:
            log.warning("cannot watch %s: %s; relying on periodic resync", key, exc)
