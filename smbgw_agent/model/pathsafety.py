"""Who could redirect a share: ownership along its path, as OpenSSH's `StrictModes` checks.

smbd follows the share path at every tree connect. A user who can write to any
directory above the share directory can rename the share directory away and put a
symbolic link (say, to `/etc`) in its place, and smbd serves the link's target. So
every existing component above the share directory must be writable by root alone:
owned by root, and not writable by a group other than root's or by everyone. The share
directory itself is left out: its owner is whoever the share belongs to.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from smbgw_agent.model.paths import Paths


def _writer(info: os.stat_result) -> str | None:
    """Who other than root can write to a directory with this stat, or None."""
    if info.st_uid != 0:
        return f"its owner (uid {info.st_uid})"
    if info.st_mode & stat.S_IWGRP and info.st_gid != 0:
        return f"group gid {info.st_gid}"
    if info.st_mode & stat.S_IWOTH:
        if info.st_mode & stat.S_ISVTX:
            return "everyone (sticky: anyone can still create a missing directory there)"
        return "everyone"
    return None


def writable_ancestors(
    declared: str, paths: Paths, seen: dict[str, str | None] | None = None
) -> list[str]:
    """Descriptions of the directories above the share directory that a non-root user
    could change, after resolving symbolic links. In a `--root` sandbox only the
    directories inside the sandbox are checked (its parents are the test machine's).
    `seen` memoises directories within one scan (shares usually share their parents)."""
    host = Path(os.path.realpath(paths.host(declared)))
    root = Path(os.path.realpath(paths.root))
    try:
        inside = host.relative_to(root)
    except ValueError:
        return []  # not below the root at all: the path checks already refuse it
    parts = PurePosixPath(inside).parts[:-1]  # the share directory itself is the owner's
    findings: list[str] = []
    current = root
    candidates = [root]
    for part in parts:
        current = current / part
        candidates.append(current)
    if paths.sandboxed:
        candidates = candidates[1:]  # the sandbox root is the test's, not the node's
    for directory in candidates:
        key = str(directory)
        if seen is not None and key in seen:
            writer = seen[key]
        else:
            try:
                info = os.stat(directory)
            except OSError:
                break  # does not exist yet: created by the agent (root) when needed
            writer = _writer(info)
            if seen is not None:
                seen[key] = writer
        if writer:
            shown = str(paths.declared(directory)) if paths.sandboxed else str(directory)
            findings.append(f"{shown} is writable by {writer}")
    return findings


def owner_message(declared: str, findings: list[str]) -> str:
    return (
        f"{'; '.join(findings)}: a user who can write there can replace {declared} with a "
        "symbolic link and make smbd serve another directory (make those directories "
        "owned and writable by root only)"
    )
