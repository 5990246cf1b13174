"""Bytes used below each share path: a bounded directory walk, run in the background.

This is the fallback when no quota backend reports usage; it counts allocated blocks
(what `du` shows), visits each distinct path once even when many shares point at it,
never follows symbolic links and never leaves the file system it started on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

MAX_ENTRIES_PER_PATH = 500_000
MAX_SECONDS_PER_ROUND = 60.0


class UsageIncomplete(Exception):
    """A walk hit its entry or time budget; the partial number is not reported."""


def disk_usage(top: Path, deadline: float, max_entries: int = MAX_ENTRIES_PER_PATH) -> int:
    total = 0
    entries = 0
    device = os.lstat(top).st_dev
    stack = [str(top)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as iterator:
                for entry in iterator:
                    entries += 1
                    if entries > max_entries or time.monotonic() > deadline:
                        raise UsageIncomplete(f"{top}: more than {max_entries} entries or out of time")
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False) and info.st_dev == device:
                        stack.append(entry.path)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
    return total + os.lstat(top).st_blocks * 512


def usage_by_share(
    share_paths: Mapping[str, Path], budget: float = MAX_SECONDS_PER_ROUND
) -> tuple[dict[str, int], list[str]]:
    """({share: bytes} for every share whose walk finished, [why others did not])."""
    deadline = time.monotonic() + budget
    by_path: dict[Path, int] = {}
    failures: list[str] = []
    result: dict[str, int] = {}
    for share, path in sorted(share_paths.items()):
        if path not in by_path:
            try:
                by_path[path] = disk_usage(path, deadline)
            except (UsageIncomplete, OSError) as exc:
                failures.append(str(exc))
                by_path[path] = -1
        if by_path[path] >= 0:
            result[share] = by_path[path]
    return result, failures
