"""Quotas: the file system that holds a share enforces its declared size.

This version enforces quotas on btrfs (a qgroup limit on the share's subvolume). A share
whose file system has no backend here (ZFS, XFS and ext4 project quotas come next; tmpfs
or NFS never will) is refused with the reason, or served without a limit when its file
says `enforce = false`.

Lifecycle of a limit, as an administrator expects from TrueNAS's dataset quotas:
- a new share with `[quota]`: its directory is created as a subvolume, then limited;
- `size` changed: the limit changes in place (lowering it below what is used is
  allowed, and warned: the file system then refuses new writes);
- `[quota]` removed from the file: the limit is lifted;
- the share file deleted: the limit stays on the data (it is a property of the data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, UPDATE, Change, share_resource
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.hookspecs import hookimpl

from .btrfs import Btrfs, BtrfsError, QuotasDisabled, is_subvolume
from .mounts import Mount, mount_of
from .table import QuotaSettings, parse_agent_table, parse_share_table

log = logging.getLogger(__name__)
PLUGIN = "quota"
SUPPORTED = ("btrfs",)


class QuotaError(Exception):
    """Why a share's quota cannot be enforced, said so an administrator can act on it."""


def human(size: int | None) -> str:
    if size is None:
        return "no limit"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


@dataclass
class Target:
    """What commit does for one share."""

    path: Path
    mount: Mount
    size: int | None  # None: lift the limit
    enable_quotas: bool = False
    created: bool = False
    parent_times: tuple[int, int] | None = None


def backend_for(quota: Mapping[str, Any], mount: Mount | None, path: str) -> str:
    fstype = mount.fstype if mount else "unknown"
    wanted = str(quota.get("backend", "auto"))
    if wanted == "auto":
        wanted = {"btrfs": "btrfs", "zfs": "zfs", "xfs": "xfs", "ext4": "ext4"}.get(fstype, "")
        if not wanted:
            raise QuotaError(f"{path} is on {fstype}, which has no quotas smbgw-agent can set "
                             "(btrfs, ZFS, XFS or ext4 with project quotas can)")
    elif wanted != fstype:
        raise QuotaError(f"[quota] backend = {wanted!r}, but {path} is on {fstype}")
    if wanted not in SUPPORTED:
        raise QuotaError(f"{path} is on {fstype}: quotas on {fstype} are not available in this version "
                         f"of smbgw-agent (available: {', '.join(SUPPORTED)})")
    return wanted


class QuotaPlugin:
    """Registered as the `quota` entry point."""

    @hookimpl
    def smbgw_share_sections(self) -> Sequence[str]:
        return [PLUGIN]

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return [PLUGIN]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.STORAGE

    @hookimpl
    def smbgw_validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        return parse_share_table(data) if section == PLUGIN else None

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        return parse_agent_table(data) if section == PLUGIN else None

    # ---- planning ---------------------------------------------------------------------

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        quota = desired.sections.get(PLUGIN) if desired is not None else None
        had = applied.sections.get(PLUGIN) if applied is not None else None
        if desired is None:
            if had and not ctx.dry_run:
                log.info("share %s removed; the quota on %s stays with the data", name, applied.path)  # type: ignore[union-attr]
            return []
        if quota is None and had is None:
            return []
        try:
            target = self._target(ctx, desired, quota)
            return self._changes(ctx, name, desired, target)
        except QuotaError as exc:
            if quota is not None and not quota.get("enforce", True):
                if not ctx.dry_run:
                    log.warning("share %s is served without its quota (enforce = false): %s", name, exc)
                return []
            if quota is None:
                return []  # the table is gone and nothing here can hold a limit: nothing to lift
            raise

    def _target(self, ctx: PassContext, spec: ShareSpec, quota: Mapping[str, Any] | None) -> Target:
        host = ctx.paths.host(spec.path)
        mount = mount_of(host)
        if mount is None:
            raise QuotaError(f"cannot tell which file system holds {spec.path}")
        backend_for(quota or {"backend": "auto"}, mount, spec.path)
        size = int(quota["size"]) if quota else None
        if host.exists() and not is_subvolume(host):
            raise QuotaError(
                f"{spec.path} is a plain directory, not a btrfs subvolume, so no limit can be set on it. "
                f"Convert it: create a subvolume beside it (btrfs subvolume create {spec.path}.new), copy the "
                f"data with cp -a --reflink=always {spec.path}/. {spec.path}.new/, then swap the two names")
        return Target(host, mount, size)

    def _changes(self, ctx: PassContext, name: str, spec: ShareSpec, target: Target) -> list[Change]:
        resource = share_resource(name)
        settings = QuotaSettings.from_config(ctx.config.plugin_sections)
        btrfs = Btrfs(ctx.runner)
        changes = []
        if not target.path.exists():
            changes.append(Change(resource, CREATE, f"create {spec.path} as a btrfs subvolume"))
            current = None
        else:
            try:
                current = btrfs.qgroup(target.path).max_referenced
            except QuotasDisabled as exc:
                if not settings.btrfs_enable_quotas:
                    raise QuotaError(
                        f"quotas are not enabled on the btrfs file system at {target.mount.point}: run "
                        f"`btrfs quota enable {target.mount.point}` (or set btrfs_enable_quotas = true in "
                        "agent.toml [quota])") from exc
                changes.append(Change(resource, UPDATE, f"enable btrfs quotas on {target.mount.point}"))
                current = None
        if current != target.size:
            if target.size is None:
                changes.append(Change(resource, UPDATE, f"lift the limit on {spec.path} (was {human(current)})"))
            else:
                changes.append(Change(resource, UPDATE,
                                      f"limit {spec.path} to {human(target.size)} (was {human(current)})"))
        return changes

    # ---- applying ---------------------------------------------------------------------

    @staticmethod
    def _staged(ctx: PassContext) -> dict[str, Target]:
        staged: dict[str, Target] = ctx.plugin_scratch(PLUGIN).setdefault("targets", {})
        return staged

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        target = self._target(ctx, desired, desired.sections.get(PLUGIN))
        target.enable_quotas = any(c.detail.startswith("enable btrfs quotas") for c in changes)
        if not target.path.exists():
            # Now, not in commit: the mode after this plugin would otherwise create a
            # plain directory here. Its parent must exist (storage present).
            if not target.path.parent.is_dir():
                raise QuotaError(f"{target.path.parent} does not exist: the storage is not there")
            parent = os.stat(target.path.parent)
            target.parent_times = (parent.st_atime_ns, parent.st_mtime_ns)
            Btrfs(ctx.runner).create_subvolume(target.path)
            target.created = True
            log.info("share %s: created %s as a btrfs subvolume", name, desired.path)
        self._staged(ctx)[name.casefold()] = target

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        target = self._staged(ctx).pop(name.casefold(), None)
        if target is not None and target.created and not any(os.scandir(target.path)):
            Btrfs(ctx.runner).delete_subvolume(target.path)  # made by this pass, still empty
            if target.parent_times is not None:  # as if it had never been there
                os.utime(target.path.parent, ns=target.parent_times)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        btrfs = Btrfs(ctx.runner)
        rejected: dict[str, str] = {}
        enabled: set[str] = set()
        for key, target in sorted(self._staged(ctx).items()):
            try:
                if target.enable_quotas and target.mount.point not in enabled:
                    btrfs.enable_quotas(Path(target.mount.point))
                    enabled.add(target.mount.point)
                    log.warning("enabled btrfs quotas on %s (btrfs_enable_quotas = true)", target.mount.point)
                if target.size is not None:
                    used = btrfs.qgroup(target.path).referenced
                    if used > target.size:
                        log.warning("share %s: the new limit %s is below what it uses (%s): writes will fail "
                                    "until enough is deleted", key, human(target.size), human(used))
                btrfs.set_limit(target.path, target.size)
            except BtrfsError as exc:
                rejected[share_resource(key)] = f"setting the quota failed: {exc}"
        return rejected

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        return {"backends": list(SUPPORTED)}
