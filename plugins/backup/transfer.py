"""Off-host runs of a share: send the newest snapshot to its target, and verify a backup.

Both run as jobs on worker threads. A transfer always reads a snapshot (a consistent,
read-only view), never the live share; it sends the newest snapshot of ours, so a
transfer retried after a failure catches up in one go instead of replaying every slot
it missed. After a successful transfer the target is pruned with the target's `keep`
(or the share's).

Verification restores from the newest off-host backup whose snapshot is still here and
compares bytes with that snapshot: every file of a small share, a random sample of a
large one. A difference is a failed run with reason `mismatch` (and an alert).
"""

from __future__ import annotations

import filecmp
import os
import random
import stat
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.jobs import JobProgress

from . import names
from .snapshots import Place, SnapshotError, kind_of, make_snapshots
from .table import BackupSettings
from .targets import Target, TargetError, make_target, password_path

# A share with at most this many files and bytes is verified whole; a larger one by sample.
WHOLE_FILES = 1000
WHOLE_BYTES = 256 << 20
SAMPLE = 32
VERIFY_DIR = "/var/lib/smbgw/verify"
CACHE_DIR = "/var/cache/smbgw/restic"


@dataclass
class _Run:
    share: str
    place: Place
    target_settings: Mapping[str, Any]
    runner: Runner
    paths: Paths
    node: str
    settings: BackupSettings
    reasons: MutableMapping[str, str]
    job_id: str
    keep: Mapping[str, int] | None = None

    def _target(self) -> Target:
        password = password_path(self.target_settings.get("password_file"), self.target_settings.get("credential"),
                                 self.paths.host, os.environ)
        cache = self.paths.host(CACHE_DIR)
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = dict(self.target_settings)
        if settings.get("type") == "restic" and str(settings.get("repository", "")).startswith("/"):
            settings["repository"] = str(self.paths.host(settings["repository"]))  # a local path, under --root
        return make_target(str(settings["name"]), settings, self.runner, password, self.node, cache)

    def _ours(self) -> dict[str, Any]:
        kind = kind_of(self.place.mount)
        if kind is None:
            raise TargetError(f"{self.place.declared} is not on btrfs or ZFS", "failed")
        try:
            return names.ours(make_snapshots(kind, self.runner).names(self.place))
        except SnapshotError as exc:
            raise TargetError(str(exc), exc.reason) from exc

    def _view(self, name: str) -> Path:
        kind = kind_of(self.place.mount) or ""
        view = make_snapshots(kind, self.runner).view(self.place, name)
        if not view.is_dir():
            raise TargetError(f"snapshot {name} cannot be read at {view} (a ZFS snapshot must be visible under "
                              ".zfs/snapshot)", "snapshot_missing")
        return view

    def run(self, progress: JobProgress) -> dict[str, Any]:
        try:
            return self._run(progress)
        except TargetError as exc:
            self.reasons[self.job_id] = exc.reason
            raise
        except OSError as exc:
            self.reasons[self.job_id] = "disk_full" if exc.errno == 28 else "failed"
            raise

    def _run(self, progress: JobProgress) -> dict[str, Any]:
        raise NotImplementedError


class OffhostRun(_Run):
    def _run(self, progress: JobProgress) -> dict[str, Any]:
        ours = self._ours()
        if not ours:
            raise TargetError("no snapshot to send yet", "no_snapshot")
        newest = max(ours, key=lambda name: ours[name])
        view = self._view(newest)
        target = self._target()
        progress.report(f"sending {newest} to {target.name}")
        remote = target.backup(self.share, view, newest, ours[newest], timeout=progress.budget.remaining())
        keep = self.target_settings.get("keep") or self.keep
        if keep:
            progress.report(f"pruning {target.name}")
            target.forget(self.share, keep, timeout=progress.budget.remaining())
        return {"snapshot": newest, "remote": remote.id,
                "text": f"{self.share}: {newest} sent to {target.name} ({target.kind} {remote.id})"}


class VerifyRun(_Run):
    def _run(self, progress: JobProgress) -> dict[str, Any]:
        target = self._target()
        progress.report(f"listing {target.name}")
        remotes = target.snapshots(self.share, timeout=progress.budget.remaining())
        if not remotes:
            raise TargetError(f"{target.name} has no backup of {self.share} yet", "no_backup")
        ours = self._ours()
        candidates = [remote for remote in reversed(remotes) if remote.snapshot in ours]
        if not candidates:
            raise TargetError(f"the snapshots {target.name}'s backups of {self.share} were made from are no longer "
                              "here: nothing to compare with", "no_snapshot")
        remote = candidates[0]
        view = self._view(remote.snapshot)
        files, whole = sample(view)
        scratch = self.paths.host(VERIFY_DIR)
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=f"{self.share[:40]}-") as into:
            progress.report(f"restoring {len(files)} file(s) of {remote.snapshot} from {target.name}")
            root = target.restore(self.share, remote, None if whole else files, Path(into),
                                  timeout=progress.budget.remaining())
            differ = compare(view, root, files, whole)
        if differ:
            raise TargetError(f"{len(differ)} of {len(files)} file(s) restored from {target.name} ({remote.id}) "
                              f"differ from snapshot {remote.snapshot}, first: {differ[0]}", "mismatch")
        return {"snapshot": remote.snapshot, "remote": remote.id, "files": len(files), "whole": whole,
                "text": f"{self.share}: {len(files)} file(s) of {remote.snapshot} restored from {target.name} "
                        f"and equal{' (the whole snapshot)' if whole else ' (a sample)'}"}


def regular_files(root: Path) -> list[tuple[str, int]]:
    """(path relative to root, size) of every regular file, not following links."""
    found = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(directory, name)
            info = os.lstat(full)
            if stat.S_ISREG(info.st_mode):
                found.append((os.path.relpath(full, root), info.st_size))
    return found


def sample(view: Path, rng: random.Random | None = None) -> tuple[list[str], bool]:
    """The files to compare, and whether that is all of them."""
    files = regular_files(view)
    if len(files) <= WHOLE_FILES and sum(size for _path, size in files) <= WHOLE_BYTES:
        return [path for path, _size in files], True
    chosen = (rng or random.SystemRandom()).sample(files, SAMPLE)
    return sorted(path for path, _size in chosen), False


def compare(view: Path, restored: Path, files: Sequence[str], whole: bool) -> list[str]:
    """Relative paths that differ (or are missing, or, for a whole restore, extra)."""
    differ = [path for path in files
              if not (restored / path).is_file() or not filecmp.cmp(view / path, restored / path, shallow=False)]
    if whole:
        extra = sorted({path for path, _size in regular_files(restored)} - set(files))
        differ.extend(f"{path} (not in the snapshot)" for path in extra)
    return differ

