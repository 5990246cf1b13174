"""A recycle bin for shares: the worked example of docs/plugins.md (test plugin, not shipped).

A share file asks for it with a table:

    [recycle]
    keep = "7d"                  # how long deleted files stay in the bin
    repository = ".recycle"      # the bin, a directory inside the share (default)
    exclude = ["*.tmp", "~$*"]   # never kept

and agent.toml may set `[recycle] purge_interval = "1h"`. The plugin uses every part of
the platform an add-on needs:

- a share table with the field kit (every problem with its line);
- share parameters: Samba's `vfs_recycle` in `vfs objects` (ranked) and its options;
- a node resource, `recycle:purge`: the purge schedule of every share with a bin;
- a scheduled job: the purge itself, on a worker thread with its own time budget;
- persistent plugin state: the schedule in force and when the purge last ran, so a
  restart neither forgets the schedule nor purges again at once;
- health: whether the last purge worked.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Mapping, Sequence
from typing import Any

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import Table
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, Health, NodeResource, share_resource
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import JobProgress, Schedule
from smbgw_agent.platform.parameters import Parameter

PLUGIN = "recycle"
PURGE = "recycle:purge"
DEFAULT_INTERVAL = 3600.0
VFS_RANK = 70  # after modules that rewrite names (catia, fruit), before storing ones


def _repository(value: object) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", "..") or "%" in value:
        raise FieldError("must be a directory name inside the share (no '/', '%', '.' or '..')")
    return value


def _pattern(value: object) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "|/\n") or len(value) > 64:
        raise FieldError("must be a file name pattern without '|' or '/'")
    return value


class RecyclePlugin:
    def __init__(self) -> None:
        self.shutdowns = 0

    # ---- what it owns ---------------------------------------------------------------

    @hookimpl
    def smbgw_share_sections(self) -> Sequence[str]:
        return [PLUGIN]

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return [PLUGIN]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.DATA_PROTECTION

    @hookimpl
    def smbgw_validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        if section != PLUGIN:
            return None
        table = Table(data)
        keep = table.duration("keep", minimum=3600.0, maximum=3650 * 86400.0)
        repository = table.value("repository", _repository, ".recycle")
        exclude = table.list_of("exclude", _pattern, default=())
        table.done()
        return {"keep": keep, "repository": repository, "exclude": list(exclude)}

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        if section != PLUGIN:
            return None
        table = Table(data)
        interval = table.duration("purge_interval", DEFAULT_INTERVAL, minimum=60.0, maximum=7 * 86400.0)
        table.done()
        return {"purge_interval": interval}

    # ---- the share's smb.conf section ---------------------------------------------------

    @hookimpl
    def smbgw_share_parameters(self, ctx: PassContext, share: ShareSpec, target: str) -> Sequence[Parameter]:
        settings = share.sections.get(PLUGIN)
        if not settings:
            return []
        parameters = [
            Parameter("vfs objects", "recycle", rank=VFS_RANK),
            Parameter("recycle:repository", f"{settings['repository']}/%U"),
            Parameter("recycle:keeptree", "yes"),
            Parameter("recycle:versions", "yes"),
            Parameter("recycle:touch", "yes"),  # the bin's age is the time of deletion
        ]
        if settings["exclude"]:
            parameters.append(Parameter("recycle:exclude", "|".join(settings["exclude"])))
        return parameters

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        """The bin directory itself: made when a share gets a bin, never removed (it is data)."""
        settings = desired.sections.get(PLUGIN) if desired is not None else None
        if not settings:
            return []
        bin_dir = ctx.paths.host(desired.path) / settings["repository"]  # type: ignore[union-attr]
        if bin_dir.is_dir():
            return []
        return [Change(share_resource(name), CREATE, f"create the recycle bin {bin_dir.name}/")]

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        ctx.plugin_scratch(PLUGIN).setdefault("bins", {})[name.casefold()] = desired

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        ctx.plugin_scratch(PLUGIN).setdefault("bins", {}).pop(name.casefold(), None)

    # ---- the purge schedule: a node resource ---------------------------------------------

    @staticmethod
    def _interval(ctx: PassContext) -> float:
        settings = ctx.config.plugin_sections.get(PLUGIN) or {}
        return float(settings.get("purge_interval", DEFAULT_INTERVAL))

    @hookimpl
    def smbgw_node_resources(self, ctx: PassContext) -> Sequence[NodeResource]:
        bins = {
            spec.name: {"path": spec.path, **spec.sections[PLUGIN]}
            for spec in ctx.desired.values() if spec.sections.get(PLUGIN)
        }
        if not bins:
            return []
        return [NodeResource(PURGE, {"shares": bins, "interval": self._interval(ctx)})]

    @hookimpl
    def smbgw_plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> Sequence[Change]:
        state = ctx.plugin_state(PLUGIN)
        active = state.get("schedule")
        changes = []
        if desired is None:
            if active is not None:
                changes.append(Change(PURGE, DELETE, "stop purging recycle bins (the bins stay)"))
        elif active != dict(desired.spec):
            count = len(desired.spec["shares"])
            action = CREATE if active is None else UPDATE
            changes.append(Change(PURGE, action, f"purge {count} recycle bin(s) every {desired.spec['interval']:g}s"))
        record = ctx.jobs.record(PURGE) if ctx.jobs is not None else None
        if record is not None and record.finished and record.finished != state.get("last_purge_finished"):
            changes.append(Change(PURGE, UPDATE, f"record the purge that {record.state} at {record.finished:.0f}"))
        return changes

    @hookimpl
    def smbgw_apply_resource(self, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        ctx.plugin_scratch(PLUGIN)["schedule"] = dict(resource.spec)

    @hookimpl
    def smbgw_remove_resource(
        self, ctx: PassContext, resource_id: str, applied: NodeResource | None, changes: Sequence[Change]
    ) -> None:
        ctx.plugin_scratch(PLUGIN)["schedule"] = None

    @hookimpl
    def smbgw_rollback_resource(self, ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
        ctx.plugin_scratch(PLUGIN).pop("schedule", "keep")

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        scratch, state = ctx.plugin_scratch(PLUGIN), ctx.plugin_state(PLUGIN)
        rejected = {}
        for key, spec in scratch.get("bins", {}).items():
            bin_dir = ctx.paths.host(spec.path) / spec.sections[PLUGIN]["repository"]
            try:
                bin_dir.mkdir(mode=0o1777, exist_ok=True)  # users' deleted files land here
            except OSError as exc:
                rejected[share_resource(key)] = f"cannot create {bin_dir}: {exc.strerror}"
        if "schedule" in scratch:
            if scratch["schedule"] is None:
                state.delete("schedule")
            else:
                state.set("schedule", scratch["schedule"])
        record = ctx.jobs.record(PURGE) if ctx.jobs is not None else None
        if PURGE in resources and record is not None and record.finished:
            state.set("last_purge_finished", record.finished)
            state.set("last_purge", {"state": record.state, "started": record.started, "result": record.result,
                                     "error": record.error})
        return rejected

    # ---- the purge job ---------------------------------------------------------------

    @hookimpl
    def smbgw_schedules(self, ctx: PassContext) -> Sequence[Schedule]:
        schedule = ctx.plugin_state(PLUGIN).get("schedule")
        if not schedule:
            return []
        interval = float(schedule["interval"])
        last = (ctx.plugin_state(PLUGIN).get("last_purge") or {}).get("started")
        paths = ctx.paths

        def next_run(ran: float | None) -> float:
            latest = max(t for t in (ran, last, 0.0) if t is not None)
            return latest + interval if latest else 0.0  # never purged: due now

        def run(progress: JobProgress) -> dict[str, int]:
            removed = 0
            for name, share in sorted(schedule["shares"].items()):
                if progress.expired:
                    break
                progress.report(f"purging {name}")
                bin_dir = paths.host(share["path"]) / share["repository"]
                removed += purge(bin_dir, float(share["keep"]), exclude=share["exclude"])
            return {"removed": removed}

        return [Schedule(PURGE, next_run, run, timeout=300.0, resource=PURGE)]

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        last = ctx.plugin_state(PLUGIN).get("last_purge")
        if not last:
            return []
        ok = last.get("state") == "succeeded"
        detail = f"removed {last['result']['removed']} file(s)" if ok and last.get("result") else str(last.get("error"))
        return [Health("purge", ok, detail, resource=PURGE)]

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        state = ctx.plugin_state(PLUGIN)
        return {"schedule": state.get("schedule"), "last_purge": state.get("last_purge")}

    @hookimpl
    def smbgw_shutdown(self) -> None:
        self.shutdowns += 1


def purge(bin_dir: os.PathLike[str] | str, keep: float, now: float | None = None,
          exclude: Sequence[str] = ()) -> int:
    """Delete regular files in the bin older than `keep` seconds; never follows links,
    never leaves the bin, never touches anything else. Returns how many it deleted."""
    cutoff = (now or time.time()) - keep
    removed = 0
    root = os.path.realpath(bin_dir)
    if not os.path.isdir(root) or os.path.islink(bin_dir):
        return 0
    for directory, _dirs, files in os.walk(root, followlinks=False):
        if os.path.realpath(directory) != directory or not directory.startswith(root):
            continue
        for name in files:
            if any(fnmatch.fnmatch(name, p) for p in exclude):
                continue
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                os.unlink(path)
                removed += 1
    return removed
