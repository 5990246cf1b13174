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


class PathMemo:
    """What one scan learned about directories: where each really leads, and who other
    than root may write to it.

    Shares usually sit side by side under a few parents, and `os.path.realpath` costs one
    lstat per component: at 10,000 shares resolving every share path from `/` three times
    was a fifth of a cold start. A memo lives for one scan only, so a link changed later
    is seen by the next scan (and the guard checks again, unmemoised, before serving)."""

    def __init__(self) -> None:
        self._directories: dict[str, str] = {}
        self.writers: dict[str, str | None] = {}

    def directory(self, host: str) -> str:
        """`os.path.realpath(host)`, memoised: for directories many shares have in common."""
        real = self._directories.get(host)
        if real is None:
            real = self._directories[host] = os.path.realpath(host)
        return real

    def realpath(self, host: str) -> str:
        """`os.path.realpath(host)`, resolving the parent through the memo: the same
        result, with one lstat for the last component instead of one per component."""
        parent, name = os.path.split(host)
        if not parent or name in ("", ".", ".."):
            return os.path.realpath(host)
        candidate = os.path.join(self.directory(parent), name)
        return os.path.realpath(candidate) if os.path.islink(candidate) else candidate


def writable_ancestors(declared: str, paths: Paths, memo: PathMemo | None = None) -> list[str]:
    """Descriptions of the directories above the share directory that a non-root user
    could change, after resolving symbolic links. In a `--root` sandbox only the
    directories inside the sandbox are checked (its parents are the test machine's).
    `memo` is the scan's (shares usually share their parents). Plain strings, not
    pathlib: this runs for every share of a cold start."""
    memo = memo if memo is not None else PathMemo()
    host = memo.realpath(str(paths.host(declared)))
    root = memo.directory(str(paths.root))
    prefix = root if root.endswith("/") else root + "/"
    if host == root:
        parts: list[str] = []
    elif host.startswith(prefix):
        parts = host[len(prefix):].split("/")[:-1]  # the share directory itself is the owner's
    else:
        return []  # not below the root at all: the path checks already refuse it
    candidates = [root]
    current = root
    for part in parts:
        current = os.path.join(current, part)
        candidates.append(current)
    if paths.sandboxed:
        candidates = candidates[1:]  # the sandbox root is the test's, not the node's
    findings: list[str] = []
    for directory in candidates:
        if directory in memo.writers:
            writer = memo.writers[directory]
        else:
            try:
                info = os.stat(directory)
            except OSError:
                break  # does not exist yet: created by the agent (root) when needed
            writer = memo.writers[directory] = _writer(info)
        if writer:
            shown = "/" + directory[len(prefix):] if paths.sandboxed else directory
            findings.append(f"{shown} is writable by {writer}")
    return findings


def owner_message(declared: str, findings: list[str]) -> str:
    return (
        f"{'; '.join(findings)}: a user who can write there can replace {declared} with a "
        "symbolic link and make smbd serve another directory (make those directories "
        "owned and writable by root only)"
    )
