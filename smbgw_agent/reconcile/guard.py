"""The last check before a share is served: is its path still safe, is its storage there?

A share file is validated when it is read, but what its path points at can change
without the file changing: a local user swaps the share directory for a symbolic link
to `/etc`, a pool is not imported, an NFS mount is gone. So every pass checks each share
it would serve, whatever spec it comes from (the file's, its last good version, the one
that is live), and holds back the ones that fail:

- **unsafe**: the path now escapes its allowed roots or lands in a system directory,
  its name is one the administrator's own smb.conf defines, or (with
  `strict_path_owners`) a non-root user could redirect it. The share goes down at once.
- **storage missing**: a `require_mounts` mount point is not mounted, or the share
  directory is missing and so is its parent. Nothing is created (a directory made on
  the root file system would be served empty and hidden later by the mount); the share
  is down until the storage is back, and comes back by itself.

Checking is cheap when nothing changed: the result is kept per share with the identity
(device, inode) of the directory it resolved to, so a full pass costs one `stat` per
share; a pass for a file event checks only the shares it touches, those held back and
those `poll()` saw change. The daemon polls every 2 s (one `stat` per share), so a swap
is noticed within seconds, not at the next resync.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import FieldError, UnsafeValueError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.pathsafety import owner_message, writable_ancestors
from smbgw_agent.model.shares import ShareSpec, admin_name_message, check_share_path
from smbgw_agent.model.smbconf import AdminShares

UNSAFE = "unsafe"
MAX_REMEMBERED = 20000
STORAGE_MISSING = "storage-missing"


@dataclass(frozen=True)
class Hold:
    """Why a declared share is not served right now."""

    spec: ShareSpec
    kind: str  # UNSAFE | STORAGE_MISSING
    reason: str


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


Signature = tuple[object, ...]


class ShareGuard:
    def __init__(self, paths: Paths, config: AgentConfig) -> None:
        self.paths = paths
        self.config = config
        self._verdicts: dict[str, tuple[Signature, str, Hold | None]] = {}
        self._seen: dict[str, Signature] = {}
        self._admin: AdminShares | None = None
        self._hosts: dict[str, str] = {}

    def forget(self) -> None:
        """Check everything from scratch (forced and periodic full passes)."""
        self._verdicts.clear()

    def _mounted(self) -> dict[str, bool]:
        return {m: os.path.ismount(self.paths.host(m)) for m in self.config.require_mounts}

    def _host(self, declared: str) -> str:
        """The host path of a declared path, memoised: a pass asks for every share's."""
        host = self._hosts.get(declared)
        if host is None:
            if len(self._hosts) > 4 * MAX_REMEMBERED:
                self._hosts.clear()
            host = self._hosts[declared] = str(self.paths.host(declared))
        return host

    def _signature(self, spec: ShareSpec, mounted: Mapping[str, bool]) -> Signature:
        """What changes when the share's directory is swapped, removed or comes back:
        its identity, or while it is missing, its parent's; and its mounts' state."""
        host = self._host(spec.path)
        identity: object = None
        parent: object = None
        try:
            info = os.stat(host)
            identity = (info.st_dev, info.st_ino)
        except OSError:
            try:
                above = os.stat(os.path.dirname(host))
                parent = (above.st_dev, above.st_ino)
            except OSError:
                parent = None
        if not mounted:
            return (spec.path, identity, parent)
        mounts = tuple(sorted(m for m, up in mounted.items() if up and _within(spec.path, m)))
        return (spec.path, identity, parent, mounts)

    def _storage_problem(self, spec: ShareSpec, mounted: Mapping[str, bool]) -> str | None:
        for mount, up in mounted.items():
            if not up and _within(spec.path, mount):
                return f"storage missing: {mount} is not mounted (it is listed in [agent] require_mounts)"
        host = self._host(spec.path)
        if os.path.isdir(host):
            return None
        parent = Path(host).parent
        if not os.path.isdir(parent):
            shown = self.paths.declared(parent) if self.paths.sandboxed else parent
            return (
                f"storage missing: {shown} does not exist, so {spec.path} is not created "
                "(is the file system that holds it mounted?)"
            )
        return None

    def _unsafe_problem(self, spec: ShareSpec, admin: AdminShares) -> str | None:
        clash = admin_name_message(spec.name, admin)
        if clash:
            return clash
        try:
            check_share_path(spec.path, self.config, self.paths)
        except UnsafeValueError as exc:
            return str(exc)
        except FieldError:
            return None  # an ordinary problem (e.g. not a directory): the apply step reports it
        if self.config.strict_path_owners:
            findings = writable_ancestors(spec.path, self.paths)
            if findings:
                return owner_message(spec.path, findings)
        return None

    def check(
        self, specs: Mapping[str, ShareSpec], admin: AdminShares, fresh: Set[str] = frozenset(),
        complete: bool = True,
    ) -> dict[str, Hold]:
        """The shares among `specs` that must not be served now, with why. `fresh` names
        the share files parsed (and so path-checked) in this very pass: only their storage
        is checked here. `complete`: `specs` are all the shares there are (a full pass);
        otherwise only those a pass touches, and what is known of the others is kept."""
        if admin is not self._admin:  # the admin's smb.conf was read again: names may clash now
            self._verdicts.clear()
            self._admin = admin
        mounted = self._mounted()
        holds: dict[str, Hold] = {}
        verdicts: dict[str, tuple[Signature, str, Hold | None]] = {}
        for key, spec in specs.items():
            signature = self._signature(spec, mounted)
            cached = self._verdicts.get(key)
            digest = spec.digest()
            if cached and cached[0] == signature and cached[1] == digest and signature[1] is not None:
                verdict = cached[2]
            else:
                verdict = None
                unsafe = None if spec.file in fresh else self._unsafe_problem(spec, admin)
                if unsafe:
                    verdict = Hold(spec, UNSAFE, unsafe)
                else:
                    storage = self._storage_problem(spec, mounted)
                    if storage:
                        verdict = Hold(spec, STORAGE_MISSING, storage)
            verdicts[key] = (signature, digest, verdict)
            if verdict is not None:
                holds[key] = verdict
        if complete:
            self._verdicts = verdicts
            self._seen = {key: v[0] for key, v in verdicts.items()}
        else:
            self._verdicts.update(verdicts)
            self._seen.update((key, v[0]) for key, v in verdicts.items())
        return holds

    def remember(self, spec: ShareSpec) -> None:
        """Watch a share held back for another reason (a refused file) like a checked one."""
        self._seen[spec.key] = self._signature(spec, self._mounted())

    def poll(self, specs: Iterable[ShareSpec]) -> set[str]:
        """Keys whose path or storage changed since the last check (one stat each)."""
        mounted = self._mounted()
        return {spec.key for spec in specs if self._seen.get(spec.key) != self._signature(spec, mounted)}
