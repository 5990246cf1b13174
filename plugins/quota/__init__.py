"""Quotas: the file system that holds a share enforces its declared size.

Backends: btrfs (a qgroup limit on the share's subvolume), ZFS (`refquota` on the share's
dataset), XFS and ext4 (project quotas, one project id per share). `backend = "auto"`
picks one from the mount table. A share on anything else (tmpfs, NFS, ext4 without
project quotas) is refused with the reason, or served without a limit when its file says
`enforce = false`.

Lifecycle of a limit, as an administrator expects from TrueNAS's dataset quotas:
- a new share with `[quota]`: a missing directory is created as something that can carry
  a limit (a subvolume, a child dataset, a directory with its own project id), then limited;
- `size` changed: the limit changes in place (lowering it below what is used is
  allowed, and warned: the file system then refuses new writes);
- `[quota]` removed from the file: the limit is lifted;
- the share file deleted: the limit stays on the data (it is a property of the data).

Usage is read from the backends, one command per file system (not per share), in the
background; Windows sees the limit as the drive size through the dfree helper.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from smbgw_agent.effects.mounts import Mount, mount_of, parse_mountinfo, read_mountinfo
from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.observe.background import BackgroundReading
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, UPDATE, Change, share_resource
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.parameters import HOST, Parameter
from smbgw_agent.platform.pluginstate import PluginState

from .backend import Backend, Place, QuotaError, QuotasOff, Survey, human, human_round
from .btrfs import BtrfsBackend
from .dfree import dfree_helper, forget_figures, install_helper, write_figures
from .project import Ext4Backend, ProjectIds, XfsBackend
from .table import QuotaSettings, parse_agent_table, parse_share_table
from .zfs import ZfsBackend

log = logging.getLogger(__name__)
PLUGIN = "quota"
BACKEND_OF_FSTYPE = {"btrfs": "btrfs", "zfs": "zfs", "fuse.zfs": "zfs", "xfs": "xfs", "ext4": "ext4"}
SUPPORTED = ("btrfs", "zfs", "xfs", "ext4")


@dataclass(frozen=True)
class Usage:
    share: str
    backend: str
    limit: int
    used: int
    thresholds: Mapping[str, int]


@dataclass
class Target:
    """What commit does for one share."""

    place: Place
    backend: str
    size: int | None  # None: lift the limit
    previous: int | None = None  # the limit before this pass, restored on rollback
    enable_quotas: bool = False
    created: bool = False
    parent_times: tuple[int, int] | None = None
    limit_set: bool = False


@dataclass(frozen=True)
class Watched:
    """A share whose usage the background reading measures."""

    place: Place
    backend: str
    thresholds: Mapping[str, int]


def backend_name(quota: Mapping[str, Any], mount: Mount, path: str) -> str:
    """The backend the share's file asks for, checked against the file system that holds it."""
    found = BACKEND_OF_FSTYPE.get(mount.fstype)
    wanted = str(quota.get("backend", "auto"))
    if wanted == "auto":
        if found is None:
            raise QuotaError(f"{path} is on {mount.fstype} ({mount.source} at {mount.point}), which has no quotas "
                             "smbgw-agent can set: put the share on btrfs, ZFS, XFS or ext4 with project quotas, "
                             "or set enforce = false to serve it without a limit")
        return found
    if wanted != found:
        raise QuotaError(f"[quota] backend = {wanted!r}, but {path} is on {mount.fstype} ({mount.point})")
    return wanted


def make_backend(name: str, runner: Runner, paths: Paths, settings: QuotaSettings,
                 state: PluginState) -> Backend:
    if name == "btrfs":
        return BtrfsBackend(runner, settings.btrfs_enable_quotas)
    if name == "zfs":
        return ZfsBackend(runner)
    first, last = settings.project_id_range
    ids = ProjectIds(state, first, last, paths.host("/etc/projects"), paths.host("/etc/projid"))
    return XfsBackend(runner, ids) if name == "xfs" else Ext4Backend(runner, ids)


class Surveys:
    """One survey per backend and file system, taken on first use and kept for the pass."""

    def __init__(self) -> None:
        self._taken: dict[tuple[str, str], Survey | QuotaError] = {}

    def get(self, backend: Backend, place: Place) -> Survey:
        key = (backend.name, backend.survey_key(place))
        if key not in self._taken:
            try:
                self._taken[key] = backend.survey(place)
            except QuotaError as exc:
                self._taken[key] = exc
        taken = self._taken[key]
        if isinstance(taken, QuotaError):
            raise taken
        return taken


class QuotaPlugin:
    """Registered as the `quota` entry point."""

    def __init__(self) -> None:
        self._watched: dict[str, Watched] = {}
        self._ids: PluginState | None = None  # the project ids the background reading sees
        self._reading: BackgroundReading[dict[str, Usage]] | None = None
        self._stopped = False

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

    # ---- per pass -------------------------------------------------------------------

    @staticmethod
    def _scratch(ctx: PassContext) -> dict[str, Any]:
        return ctx.plugin_scratch(PLUGIN)

    def _mounts(self, ctx: PassContext, fresh: bool = False) -> list[Mount]:
        """The mount table, read once per pass (again after this pass created datasets)."""
        scratch = self._scratch(ctx)
        if fresh or "mounts" not in scratch:
            scratch["mounts"] = parse_mountinfo(read_mountinfo())
        mounts: list[Mount] = scratch["mounts"]
        return mounts

    def _backend(self, ctx: PassContext, name: str) -> Backend:
        backends: dict[str, Backend] = self._scratch(ctx).setdefault("backends", {})
        if name not in backends:
            settings = QuotaSettings.from_config(ctx.config.plugin_sections)
            backends[name] = make_backend(name, ctx.runner, ctx.paths, settings, ctx.plugin_state(PLUGIN))
        return backends[name]

    def _surveys(self, ctx: PassContext) -> Surveys:
        surveys: Surveys = self._scratch(ctx).setdefault("surveys", Surveys())
        return surveys

    def _place(self, ctx: PassContext, spec: ShareSpec) -> Place:
        host = ctx.paths.host(spec.path)
        mount = mount_of(host, self._mounts(ctx))
        if mount is None:
            raise QuotaError(f"cannot tell which file system holds {spec.path}")
        return Place(spec.name, spec.path, host, mount)

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
            return self._changes(ctx, name, desired, quota)
        except QuotaError as exc:
            if quota is not None and not quota.get("enforce", True):
                if not ctx.dry_run:
                    log.warning("share %s is served without its quota (enforce = false): %s", name, exc)
                return []
            if quota is None:
                return []  # the table is gone and nothing here can hold a limit: nothing to lift
            raise

    def _changes(self, ctx: PassContext, name: str, spec: ShareSpec,
                 quota: Mapping[str, Any] | None) -> list[Change]:
        place = self._place(ctx, spec)
        backend = self._backend(ctx, backend_name(quota or {}, place.mount, spec.path))
        size = int(quota["size"]) if quota else None
        exists = place.path.exists() or place.path.is_symlink()
        if exists and not place.path.is_dir():
            raise QuotaError(f"{spec.path} is not a directory")
        if exists:
            backend.check(place)
        if size is not None:
            self._check_size(backend, place, size)
        resource = share_resource(name)
        changes = []
        current: int | None = None
        if not exists:
            changes.append(Change(resource, CREATE, f"create {spec.path} as {backend.creates}"))
        else:
            try:
                current = backend.reading(self._surveys(ctx).get(backend, place), place).limit
            except QuotasOff as exc:
                if not exc.can_enable:
                    raise
                changes.append(Change(resource, UPDATE, f"enable {backend.name} quotas on {place.mount.point}"))
        wanted = backend.granted(size) if size is not None else None
        if current != wanted:
            verb = f"limit {spec.path} to {human(wanted)}" if wanted is not None else f"lift the limit on {spec.path}"
            holder = backend.holder(place) if exists or size is not None else backend.name
            changes.append(Change(resource, UPDATE, f"{verb} (was {human(current)}, {holder})"))
        return changes

    @staticmethod
    def _check_size(backend: Backend, place: Place, size: int) -> None:
        if backend.granted(size) <= 0:
            raise QuotaError(f"size {size} bytes is below what {backend.name} can limit to (1K)")
        total = backend.capacity(place)
        if total is not None and size > total:
            raise QuotaError(f"size {human(size)} is larger than the {place.mount.fstype} file system at "
                             f"{place.mount.point} ({human(total)} in all)")

    # ---- applying ---------------------------------------------------------------------

    @staticmethod
    def _staged(ctx: PassContext) -> dict[str, Target]:
        staged: dict[str, Target] = ctx.plugin_scratch(PLUGIN).setdefault("targets", {})
        return staged

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        quota = desired.sections.get(PLUGIN)
        place = self._place(ctx, desired)
        backend = self._backend(ctx, backend_name(quota or {}, place.mount, desired.path))
        target = Target(place, backend.name, int(quota["size"]) if quota else None)
        target.enable_quotas = any(c.detail.startswith(f"enable {backend.name} quotas") for c in changes)
        if not (place.path.exists() or place.path.is_symlink()):
            # Now, not in commit: the mode after this plugin would otherwise create a
            # plain directory here. Its parent must exist (storage present).
            if not place.path.parent.is_dir():
                raise QuotaError(f"{place.path.parent} does not exist: the storage is not there")
            parent = os.stat(place.path.parent)
            target.parent_times = (parent.st_atime_ns, parent.st_mtime_ns)
            self._staged(ctx)[name.casefold()] = target  # staged first: rollback undoes a half-done create
            backend.create(place)
            target.created = True
            log.info("share %s: created %s as %s", name, desired.path, backend.creates)
        elif not target.enable_quotas:
            target.previous = backend.reading(self._surveys(ctx).get(backend, place), place).limit
        self._staged(ctx)[name.casefold()] = target

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        target = self._staged(ctx).pop(name.casefold(), None)
        if target is None:
            return
        backend = self._backend(ctx, target.backend)
        if target.created:
            if target.place.path.is_dir() and not any(os.scandir(target.place.path)):
                backend.discard(target.place)  # made by this pass, still empty
            if target.parent_times is not None:  # as if it had never been there
                os.utime(target.place.path.parent, ns=target.parent_times)
        elif target.limit_set:
            try:
                backend.set_limit(self._fresh_place(ctx, target.place), target.previous)
            except QuotaError as exc:
                log.error("share %s: could not put its limit back to %s: %s", name, human(target.previous), exc)

    def _fresh_place(self, ctx: PassContext, place: Place) -> Place:
        """The place with the mount that holds it now (a dataset created in this pass is a
        mount of its own)."""
        mount = mount_of(place.path, self._mounts(ctx)) or place.mount
        return Place(place.share, place.declared, place.path, mount)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        """Set every staged limit, then read them back from the file system (one survey per
        file system): a limit is only live once the file system says so."""
        rejected: dict[str, str] = {}
        enabled: set[tuple[str, str]] = set()
        staged = self._staged(ctx)
        self._mounts(ctx, fresh=any(target.created for target in staged.values()))
        places: dict[str, Place] = {}
        for key, target in sorted(staged.items()):
            backend = self._backend(ctx, target.backend)
            place = self._fresh_place(ctx, target.place)
            try:
                if target.enable_quotas and (backend.name, place.mount.point) not in enabled:
                    backend.enable(place)
                    enabled.add((backend.name, place.mount.point))
                    log.warning("enabled %s quotas on %s (agent.toml allows it)", backend.name, place.mount.point)
                target.limit_set = True
                backend.set_limit(place, target.size)
                places[key] = place
            except QuotaError as exc:
                rejected[share_resource(key)] = f"setting the quota failed: {exc}"
        after = Surveys()
        for key, place in places.items():
            try:
                self._confirm(ctx, key, staged[key], place, after)
            except QuotaError as exc:
                rejected[share_resource(key)] = f"the quota could not be confirmed: {exc}"
            except OSError as exc:
                log.warning("share %s: the drive size Windows sees is not updated: %s", key, exc)
        if self._reading is not None:
            self._reading.refresh_soon()
        return rejected

    def _confirm(self, ctx: PassContext, key: str, target: Target, place: Place, after: Surveys) -> None:
        backend = self._backend(ctx, target.backend)
        reading = backend.reading(after.get(backend, place), place)
        wanted = backend.granted(target.size) if target.size is not None else None
        if reading.limit != wanted:
            raise QuotaError(f"after setting {human(wanted)}, {backend.name} reports {human(reading.limit)} "
                             f"for {place.declared}")
        if wanted is None:
            forget_figures(ctx.paths, place.path)
            return
        if reading.used > wanted:
            log.warning("share %s: the new limit %s is below what it uses (%s): writes will fail "
                        "until enough is deleted", key, human(wanted), human(reading.used))
        write_figures(ctx.paths, place.path, wanted, reading.used)

    # ---- what Windows and Prometheus see ---------------------------------------------------

    @hookimpl
    def smbgw_share_parameters(self, ctx: PassContext, share: ShareSpec, target: str) -> Sequence[Parameter]:
        quota = share.sections.get(PLUGIN)
        if not quota or target != HOST:
            return []
        return [Parameter("dfree command", str(dfree_helper(ctx.paths)))]

    @hookimpl
    def smbgw_startup(self, ctx: PassContext) -> None:
        install_helper(ctx.paths)
        self._stopped = False
        settings = QuotaSettings.from_config(ctx.config.plugin_sections)
        paths, runner = ctx.paths, ctx.runner
        self._reading = BackgroundReading(PLUGIN, lambda: self._read_all(paths, runner, settings),
                                          settings.refresh_interval)

    @hookimpl
    def smbgw_shutdown(self) -> None:
        self._stopped = True
        if self._reading is not None:
            self._reading.stop()

    def _read_all(self, paths: Paths, runner: Runner, settings: QuotaSettings) -> dict[str, Usage]:
        """One survey per file system (not per share); the limit shown is the one in force,
        not the declared one, which may not be applied yet. Writes the dfree figures."""
        watched, ids = self._watched, self._ids
        if ids is None:
            return {}
        backends: dict[str, Backend] = {}
        surveys = Surveys()
        found: dict[str, Usage] = {}
        for key, entry in sorted(watched.items()):
            if self._stopped:
                break
            if entry.backend not in backends:
                backends[entry.backend] = make_backend(entry.backend, runner, paths, settings, ids)
            backend = backends[entry.backend]
            reading = backend.reading(surveys.get(backend, entry.place), entry.place)
            if reading.limit is None:
                continue  # no limit in force (yet): nothing to show as a quota
            found[key] = Usage(entry.place.share, backend.name, reading.limit, reading.used, entry.thresholds)
            write_figures(paths, entry.place.path, reading.limit, reading.used)
        return found

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        """Remember which shares have a quota, for the background reading."""
        watched: dict[str, Watched] = {}
        for key, spec in ctx.desired.items():
            quota = spec.sections.get(PLUGIN)
            if not quota:
                continue
            try:
                place = self._place(ctx, spec)
                name = backend_name(quota, place.mount, spec.path)
            except QuotaError:
                continue  # refused or served without a limit: nothing to read
            if place.path.is_dir():
                watched[key] = Watched(place, name, dict(quota["thresholds"]))
        self._ids = ctx.plugin_state(PLUGIN).snapshot()
        if watched != self._watched:
            self._watched = watched
            if self._reading is not None:
                self._reading.refresh_soon()
        if self._reading is not None and not self._stopped and not ctx.dry_run:
            self._reading.start()
        usage = self._reading.value if self._reading is not None else None
        return {
            "backends": list(SUPPORTED),
            "shares": {u.share: {"backend": u.backend, "limit": u.limit, "used": u.used,
                                 "percent": round(100 * u.used / u.limit, 1),
                                 "text": f"{human_round(u.used)} of {human(u.limit)} used "
                                         f"({100 * u.used / u.limit:.1f} %), {u.backend}"}
                       for u in (usage or {}).values()},
            "reading_error": self._reading.error if self._reading is not None else None,
        }

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        quota = GaugeMetricFamily("smbgw_share_quota_bytes", "The share's quota in bytes ([quota] size)",
                                  labels=["share"])
        used = GaugeMetricFamily("smbgw_share_used_bytes", "Bytes the share uses (its quota backend's figure "
                                 "where a quota is set, else a directory walk)", labels=["share"])
        ratio = GaugeMetricFamily("smbgw_share_quota_threshold_ratio", "The share's quota alert levels as a "
                                  "fraction of its quota ([quota] thresholds)", labels=["share", "level"])
        backend = InfoMetricFamily("smbgw_quota_backend", "Which file system enforces the share's quota",
                                   labels=["share", "backend"])
        success = GaugeMetricFamily("smbgw_collector_success", "1 if the collector's last reading succeeded, else 0",
                                    labels=["collector"])
        reading = self._reading
        if reading is None:
            return [quota, used, ratio, backend]
        success.add_metric([PLUGIN], 1.0 if reading.ok or not self._watched else 0.0)
        for usage in sorted((reading.value or {}).values(), key=lambda u: u.share):
            quota.add_metric([usage.share], float(usage.limit))
            used.add_metric([usage.share], float(usage.used))
            backend.add_metric([usage.share, usage.backend], {})
            for level, percent in sorted(usage.thresholds.items()):
                ratio.add_metric([usage.share, level], percent / 100.0)
        return [quota, used, ratio, backend, success]
