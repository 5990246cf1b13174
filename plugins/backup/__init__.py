"""Snapshots, Windows Previous Versions and off-host backups of shares.

A share file's `[backup]` asks for read-only snapshots of the share's data on a schedule
(systemd's OnCalendar syntax), pruned by a `keep` policy with restic's semantics, shown
to Windows as Previous Versions (`vfs_shadow_copy2`), and optionally sent to an off-host
target (restic, Proxmox Backup Server) after each snapshot: the bar is TrueNAS's periodic
snapshot tasks with `shadow_copy_zfs`, and PBS's retention.

Who does what, and on which thread:
- scheduled jobs (worker threads): `backup:snapshot:SHARE` takes a snapshot;
  `backup:offhost:SHARE` sends the newest one not yet sent (at most `max_parallel` at
  once on the node); `backup:verify:SHARE` restores from the off-host copy and compares.
  A failed run is retried with a capped exponential backoff, never later than the next
  slot of the schedule;
- the pass (reconcile thread): records each job's outcome in plugin state (so a restart
  knows the last run: a run missed while the agent was down happens once at start),
  and prunes. Prune is planned like every other change (`smbgwctl plan` lists the
  snapshots it would delete) and never runs while a job of the share does;
- smbgwctl: `snapshot SHARE` and `verify SHARE` start the same jobs now.

Snapshots are data: removing `[backup]` or the share file stops the schedule and keeps
every snapshot (the log says how to delete them). Only snapshots whose names this agent
makes are ever pruned (`names`); an administrator's own are never touched.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from smbgw_agent.effects.mounts import mount_of, parse_mountinfo, read_mountinfo
from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, Health, share_resource
from smbgw_agent.platform.commands import Command, CommandRefused
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import FINISHED, SUCCEEDED, Job, JobProgress, JobRunner, Schedule
from smbgw_agent.platform.parameters import Parameter

from . import names
from .retention import decide
from .snapshots import Place, SnapshotError, Snapshots, kind_of, make_snapshots, wrong_filesystem
from .table import BackupSettings, keep_policy, parse_agent_table, parse_share_table, schedule_of
from .transfer import OffhostRun, VerifyRun

log = logging.getLogger(__name__)
PLUGIN = "backup"
SNAPSHOT, OFFHOST, VERIFY = "snapshot", "offhost", "verify"
KINDS = (SNAPSHOT, OFFHOST, VERIFY)
OFFHOST_GROUP = "backup-offhost"
STATE_PREFIX = "share:"


# "Not by this schedule": a time no schedule reaches (status and metrics leave it out).
NEVER = 253402300799.0  # 9999-12-31


def backoff(settings: BackupSettings, failures: int, cap: float) -> float:
    """1 min, 2, 4, ... (agent.toml retry_initial), at most retry_max and `cap`."""
    return float(min(settings.retry_initial * 2.0 ** min(failures - 1, 30), settings.retry_max, cap))


@functools.lru_cache(maxsize=1024)
def typical_interval(schedule: str, hour: int) -> float | None:
    """Seconds between the schedule's next two slots, as of `hour` (hours since the epoch):
    for the "two intervals without a snapshot" alert. Once per schedule and hour, not per
    share and pass."""
    return schedule_of(schedule).typical_interval(hour * 3600.0)


def job_id(kind: str, key: str) -> str:
    return f"backup:{kind}:{key}"


def _when(stamp: float | None) -> str:
    return "never" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


@dataclass(frozen=True)
class ShareView:
    """What status, smbgwctl show and the metrics say about one share (built after each pass)."""

    share: str
    snapshots: int
    newest: str | None
    runs: Mapping[str, Mapping[str, Any]]  # kind -> last_attempt, last_success, duration, failures, error
    counts: Mapping[str, int]  # "kind:reason" -> failures so far
    next_runs: Mapping[str, float | None]
    interval: float | None
    target: str | None
    target_type: str | None
    since: float

    def as_status(self) -> dict[str, Any]:
        snapshot = self.runs.get(SNAPSHOT, {})
        text = (f"{self.snapshots} snapshot(s), last {_when(snapshot.get('last_success'))}, "
                f"next {_when(self.next_runs.get(SNAPSHOT))}")
        if snapshot.get("error"):
            text += f"; last run FAILED: {snapshot['error']}"
        if self.target:
            offhost = self.runs.get(OFFHOST, {})
            text += f"; off-host {self.target}: last {_when(offhost.get('last_success'))}"
            if offhost.get("error"):
                text += f", FAILING: {offhost['error']}"
        return {"snapshots": self.snapshots, "newest": self.newest, "last_run": snapshot.get("last_attempt"),
                "last_success": snapshot.get("last_success"), "next_run": self.next_runs.get(SNAPSHOT),
                "offhost": dict(self.runs.get(OFFHOST, {})), "verify": dict(self.runs.get(VERIFY, {})),
                "text": text}


class BackupPlugin:
    """Registered as the `backup` entry point."""

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}  # job id -> reason of its last failure (written by job threads)
        self._counts: dict[str, int] = {}  # share key -> snapshots of ours, as last listed
        self._newest: dict[str, str] = {}  # share key -> newest snapshot of ours, as last listed
        self._views: dict[str, ShareView] = {}
        self._schedules: dict[str, tuple[str, list[Schedule]]] = {}  # share key -> (its inputs, its schedules)

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
        return parse_share_table(data) if section == PLUGIN else None

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        return parse_agent_table(data) if section == PLUGIN else None

    @hookimpl
    def smbgw_validate_share(self, share: ShareSpec, config: AgentConfig) -> Sequence[str]:
        wanted = share.sections.get(PLUGIN)
        if not wanted or not wanted.get("target"):
            return []
        if BackupSettings.from_config(config.plugin_sections).target(wanted["target"]) is None:
            return [f"[backup] target = {wanted['target']!r} names no [backup.targets.{wanted['target']}] "
                    "table in agent.toml"]
        return []

    # ---- where a share's snapshots are -------------------------------------------------

    @staticmethod
    def _place(ctx: PassContext, spec: ShareSpec) -> Place:
        scratch = ctx.plugin_scratch(PLUGIN)
        if "mounts" not in scratch:
            scratch["mounts"] = parse_mountinfo(read_mountinfo())
        host = ctx.paths.host(spec.path)
        mount = mount_of(host, scratch["mounts"])
        if mount is None:
            raise SnapshotError(f"cannot tell which file system holds {spec.path}")
        return Place(spec.name, spec.path, host, mount)

    @staticmethod
    def _snapshots(ctx: PassContext, place: Place) -> Snapshots:
        kind = kind_of(place.mount)
        if kind is None:
            raise SnapshotError(wrong_filesystem(place))
        backends: dict[str, Snapshots] = ctx.plugin_scratch(PLUGIN).setdefault("backends", {})
        if kind not in backends:
            backends[kind] = make_snapshots(kind, ctx.runner)
        return backends[kind]

    # ---- planning ---------------------------------------------------------------------

    @staticmethod
    def _record(ctx: PassContext, key: str) -> dict[str, Any] | None:
        value = ctx.plugin_state(PLUGIN).get(STATE_PREFIX + key)
        return value if isinstance(value, dict) else None

    @staticmethod
    def _busy(jobs: JobRunner | None, key: str) -> bool:
        if jobs is None:
            return False
        return any((r := jobs.record(job_id(kind, key))) is not None and r.state not in FINISHED for kind in KINDS)

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        key = name.casefold()
        resource = share_resource(name)
        wanted = desired.sections.get(PLUGIN) if desired is not None else None
        record = self._record(ctx, key)
        if wanted is None:
            if record is None:
                return []
            path = (desired or applied).path if (desired or applied) is not None else "?"  # type: ignore[union-attr]
            verb = DELETE if desired is None else UPDATE
            return [Change(resource, verb, f"stop taking snapshots of {name}; the snapshots in {path} stay")]
        assert desired is not None
        place = self._place(ctx, desired)
        snaps = self._snapshots(ctx, place)
        snaps.check(place)
        if not (place.path.exists() or place.path.is_symlink()) and "quota" not in desired.sections:
            # The mode would create a plain directory, which can never be snapshotted on its
            # own; the quota plugin (ranked before the modes) creates a subvolume or dataset.
            make = (f"btrfs subvolume create {desired.path}" if snaps.kind == "btrfs"
                    else f"zfs create -o mountpoint={desired.path} POOL/DATASET")
            raise SnapshotError(f"{desired.path} does not exist, and [backup] needs it to be a {snaps.kind} "
                                f"{'subvolume' if snaps.kind == 'btrfs' else 'dataset'}: create it ({make}), or "
                                "add [quota], which creates it as one")
        changes: list[Change] = []
        if record is None:
            spec = schedule_of(wanted["schedule"])
            changes.append(Change(resource, CREATE if applied is None else UPDATE,
                                  f"take snapshots {spec.normalized}, keep {keep_policy(wanted['keep']).describe()}"))
        changes.extend(self._outcomes(ctx, key, record or {}, resource))
        if not place.path.is_dir():
            return changes
        listed = snaps.names(place)
        ours = names.ours(listed)
        self._counts[key] = len(ours)
        if ours:
            self._newest[key] = max(ours, key=lambda n: ours[n])
        else:
            self._newest.pop(key, None)
        if record and record.get(SNAPSHOT, {}).get("last_success") and snaps.snapdir_missing(place):
            changes.append(Change(resource, UPDATE, f"recreate {place.declared}/{snaps.snapdir} (it was removed "
                                                    "by hand, and the snapshots in it with it)"))
        if self._busy(ctx.jobs, key):
            return changes  # never prune under a running snapshot or transfer; planned again when it ends
        decision = decide(ours.items(), keep_policy(wanted["keep"]))
        for doomed in sorted(decision.remove):
            changes.append(Change(resource, UPDATE, f"prune snapshot {doomed} (no keep rule wants it)"))
        return changes

    def _outcomes(self, ctx: PassContext, key: str, record: Mapping[str, Any], resource: str) -> list[Change]:
        """Jobs of this share that ended since their outcome was last recorded."""
        changes = []
        for kind in KINDS:
            job = ctx.jobs.record(job_id(kind, key)) if ctx.jobs is not None else None
            if job is None or job.state not in FINISHED or job.finished is None:
                continue
            if job.finished <= float(record.get(kind, {}).get("recorded", 0.0)):
                continue
            what = job.result.get("text") if job.state == SUCCEEDED and isinstance(job.result, dict) else job.error
            changes.append(Change(resource, UPDATE, f"record the {kind} run of {_when(job.started)}: "
                                                    f"{job.state} ({what})"))
        return changes

    # ---- applying ---------------------------------------------------------------------

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        """Everything irreversible (deleting snapshots) waits for commit; here only what
        commit needs is staged."""
        staged: dict[str, Any] = ctx.plugin_scratch(PLUGIN).setdefault("staged", {})
        prune = [c.detail.split()[2] for c in changes if c.detail.startswith("prune snapshot ")]
        staged[name.casefold()] = {"spec": desired, "prune": prune,
                                   "recreate": any(c.detail.startswith("recreate ") for c in changes)}

    @hookimpl
    def smbgw_remove_share(self, ctx: PassContext, name: str, applied: ShareSpec | None,
                           changes: Sequence[Change]) -> None:
        staged: dict[str, Any] = ctx.plugin_scratch(PLUGIN).setdefault("staged", {})
        staged[name.casefold()] = {"spec": None, "path": applied.path if applied else None}

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        ctx.plugin_scratch(PLUGIN).setdefault("staged", {}).pop(name.casefold(), None)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        rejected: dict[str, str] = {}
        state = ctx.plugin_state(PLUGIN)
        for key, work in sorted(ctx.plugin_scratch(PLUGIN).get("staged", {}).items()):
            spec: ShareSpec | None = work["spec"]
            if spec is None or not spec.sections.get(PLUGIN):
                if state.get(STATE_PREFIX + key) is not None:
                    state.delete(STATE_PREFIX + key)
                    shown = spec.path if spec is not None else work.get("path")
                    log.info("share %s: no more snapshots are taken; the existing ones stay in %s (delete one with "
                             "`btrfs subvolume delete PATH` or `zfs destroy DATASET@NAME`)", key, shown)
                continue
            try:
                self._commit_share(ctx, key, spec, work)
            except (SnapshotError, OSError) as exc:
                rejected[share_resource(spec.name)] = str(exc)
        return rejected

    def _commit_share(self, ctx: PassContext, key: str, spec: ShareSpec, work: Mapping[str, Any]) -> None:
        state = ctx.plugin_state(PLUGIN)
        record = self._record(ctx, key) or {"since": time.time()}
        for kind in KINDS:
            job = ctx.jobs.record(job_id(kind, key)) if ctx.jobs is not None else None
            if job is not None and job.state in FINISHED and job.finished is not None:
                self._note(record, kind, job, self._reasons.get(job.id, "failed"))
        state.set(STATE_PREFIX + key, record)
        place = self._place(ctx, spec)
        snaps = self._snapshots(ctx, place)
        if work["recreate"]:
            log.warning("share %s: %s/%s was removed by hand; recreating it (the snapshots in it are gone)",
                        spec.name, spec.path, snaps.snapdir)
            (place.path / snaps.snapdir).mkdir(mode=0o755, exist_ok=True)
        for name in work["prune"]:
            snaps.delete(place, name)
            log.info("share %s: pruned snapshot %s", spec.name, name)
        if work["prune"]:
            self._counts[key] = max(0, self._counts.get(key, 0) - len(work["prune"]))

    @staticmethod
    def _note(record: dict[str, Any], kind: str, job: Any, reason: str) -> None:
        run = dict(record.get(kind, {}))
        if job.finished <= float(run.get("recorded", 0.0)):
            return
        run["recorded"] = job.finished
        run["last_attempt"] = job.started or job.finished
        run["duration"] = (job.finished or 0.0) - (job.started or job.finished)
        if job.state == SUCCEEDED:
            run.update(last_success=job.started or job.finished, failures=0, error=None, reason=None)
            result = job.result if isinstance(job.result, dict) else {}
            for field in ("name", "remote", "snapshot"):
                if field in result:
                    run[field] = result[field]
        else:
            reason = "timeout" if job.state != "failed" else reason
            run.update(failures=int(run.get("failures", 0)) + 1, error=job.error, reason=reason)
            counts = dict(record.get("counts", {}))
            counts[f"{kind}:{reason}"] = int(counts.get(f"{kind}:{reason}", 0)) + 1
            record["counts"] = counts
        record[kind] = run

    # ---- Windows Previous Versions ---------------------------------------------------------

    @hookimpl
    def smbgw_share_parameters(self, ctx: PassContext, share: ShareSpec, target: str) -> Sequence[Parameter]:
        wanted = share.sections.get(PLUGIN)
        if not wanted or not wanted.get("previous_versions", True):
            return []
        try:
            place = self._place(ctx, share)
        except SnapshotError:
            return []
        kind = kind_of(place.mount)
        if kind is None:
            return []  # planning fails the share with the reason
        snapdir = make_snapshots(kind, ctx.runner).snapdir
        parameters = [
            Parameter("vfs objects", "shadow_copy2", rank=40),
            Parameter("shadow:snapdir", snapdir),
            Parameter("shadow:format", names.SHADOW_FORMAT),
            Parameter("shadow:localtime", "no"),
            Parameter("shadow:sort", "desc"),
        ]
        if kind == "btrfs":
            # The share's users must not rename or fill .snapshots (it is in their root).
            parameters.append(Parameter("veto files", f"/{snapdir}/"))
        return parameters

    # ---- jobs ---------------------------------------------------------------------------

    def _job_settings(self, ctx: PassContext) -> tuple[BackupSettings, Runner, Paths, str]:
        return BackupSettings.from_config(ctx.config.plugin_sections), ctx.runner, ctx.paths, ctx.config.node

    def _snapshot_job(self, ctx: PassContext, spec: ShareSpec) -> Callable[[JobProgress], Any]:
        place = self._place(ctx, spec)
        kind = kind_of(place.mount)
        runner = ctx.runner
        jid = job_id(SNAPSHOT, spec.name.casefold())

        def run(progress: JobProgress) -> dict[str, Any]:
            try:
                snaps = make_snapshots(kind or "", runner)
                existing = snaps.names(place)
                name, when, behind = names.next_name(time.time(), existing)
                if behind:
                    log.warning("share %s: the clock is behind the newest snapshot; naming this one %s so that "
                                "names keep rising and retention keeps the newest data", spec.name, name)
                progress.report(f"taking {name}")
                snaps.take(place, name)
                if name not in snaps.names(place):
                    raise SnapshotError(f"{name} is not there after it was taken")
            except SnapshotError as exc:
                self._reasons[jid] = exc.reason
                raise
            except OSError as exc:
                self._reasons[jid] = "disk_full" if "No space" in str(exc) else "failed"
                raise
            text = f"{spec.name}: snapshot {name} taken"
            if behind:
                text += " (the clock was behind the newest snapshot)"
            return {"name": name, "time": when.timestamp(), "clock_behind": behind, "text": text}

        return run

    def _next_run(self, spec_text: str, run: Mapping[str, Any], since: float,
                  settings: BackupSettings) -> Callable[[float | None], float]:
        """When a kind of job of a share runs next: the schedule's next slot after the last
        run (so a run missed while the agent was down is due at once, and only once), or
        sooner after a failure (capped backoff), never later than that next slot."""
        spec = schedule_of(spec_text)
        cache: dict[tuple[float, int], float] = {}

        def next_run(last: float | None) -> float:
            attempt = max(float(run.get("last_attempt") or 0.0), last or 0.0)
            failures = int(run.get("failures") or 0) if attempt <= float(run.get("last_attempt") or 0.0) else 0
            key = (attempt, failures)
            if key not in cache:
                base = attempt or since
                slot = spec.next_after(base)
                when = slot if slot is not None else NEVER
                if failures:
                    interval = spec.typical_interval(base) or settings.retry_max
                    when = min(when, attempt + backoff(settings, failures, interval / 2))
                cache.clear()
                cache[key] = when
            return float(cache[key])

        return next_run

    @hookimpl
    def smbgw_schedules(self, ctx: PassContext) -> Sequence[Schedule]:
        """Every share's schedules, asked after each pass. A share whose inputs did not
        change keeps its schedule objects (and what they computed): at 200 shares,
        rebuilding them all after every pass cost more than the pass."""
        settings = BackupSettings.from_config(ctx.config.plugin_sections)
        schedules: list[Schedule] = []
        kept: dict[str, tuple[str, list[Schedule]]] = {}
        for key, spec in sorted(ctx.desired.items()):
            wanted = spec.sections.get(PLUGIN)
            record = self._record(ctx, key)
            if not wanted or record is None:
                continue  # a share whose [backup] was never applied has no schedule yet
            try:
                place = self._place(ctx, spec)
            except SnapshotError:
                continue
            inputs = json.dumps([spec.name, wanted, record, str(place.path), place.mount.point, place.mount.fstype,
                                 self._newest.get(key), ctx.config.node, repr(settings)], sort_keys=True, default=str)
            cached = self._schedules.get(key)
            share_schedules = cached[1] if cached is not None and cached[0] == inputs else \
                self._share_schedules(ctx, key, spec, place, wanted, record, settings)
            kept[key] = (inputs, share_schedules)
            schedules.extend(share_schedules)
        if not ctx.dry_run:
            self._schedules = kept
        return schedules

    def _share_schedules(self, ctx: PassContext, key: str, spec: ShareSpec, place: Place, wanted: Mapping[str, Any],
                         record: Mapping[str, Any], settings: BackupSettings) -> list[Schedule]:
        runner, paths, node = ctx.runner, ctx.paths, ctx.config.node
        since = float(record.get("since", time.time()))
        resource = share_resource(spec.name)
        every = self._next_run(wanted["schedule"], record.get(SNAPSHOT, {}), since, settings)
        schedules = [Schedule(job_id(SNAPSHOT, key), every, self._snapshot_job(ctx, spec), settings.snapshot_timeout,
                              resource)]
        target = wanted.get("target")
        target_settings = settings.target(target) if target else None
        if target_settings is None:
            return schedules
        offhost = record.get(OFFHOST, {})
        newest = self._newest.get(key)
        if newest is not None and newest != offhost.get("snapshot"):
            transfer = OffhostRun(spec.name, place, target_settings, runner, paths, node, settings,
                                  self._reasons, job_id(OFFHOST, key), wanted["keep"])
            schedules.append(Schedule(job_id(OFFHOST, key), self._retry_only(offhost, settings), transfer.run,
                                      settings.timeout, resource, group=OFFHOST_GROUP,
                                      group_limit=settings.max_parallel))
        if wanted.get("verify"):
            verify = VerifyRun(spec.name, place, target_settings, runner, paths, node, settings,
                               self._reasons, job_id(VERIFY, key))
            checks = self._next_run(wanted["verify"], record.get(VERIFY, {}), since, settings)
            schedules.append(Schedule(job_id(VERIFY, key), checks, verify.run, settings.timeout, resource,
                                      group=OFFHOST_GROUP, group_limit=settings.max_parallel))
        return schedules

    @staticmethod
    def _retry_only(run: Mapping[str, Any], settings: BackupSettings) -> Callable[[float | None], float]:
        """An off-host transfer is due as soon as there is a snapshot it has not sent; after
        a failure, after the backoff."""
        def next_run(last: float | None) -> float:
            attempt = float(run.get("last_attempt") or 0.0)
            failures = int(run.get("failures") or 0)
            if last is not None and last > attempt:
                return NEVER  # ran since the pass that made this schedule: that pass's successor decides
            if not failures:
                return 0.0
            return attempt + backoff(settings, failures, settings.retry_max)
        return next_run

    # ---- smbgwctl snapshot / verify -----------------------------------------------------

    @hookimpl
    def smbgw_commands(self) -> Sequence[Command]:
        return [
            Command("snapshot", "take a snapshot of a share now (as its schedule would)", self._start_snapshot,
                    arguments=("share",)),
            Command("verify", "restore from a share's latest off-host backup and compare it with the snapshot "
                              "it came from", self._start_verify, arguments=("share",)),
        ]

    def _share(self, ctx: PassContext, arguments: Mapping[str, Any]) -> tuple[str, ShareSpec, Mapping[str, Any]]:
        key = str(arguments["share"]).casefold()
        spec = ctx.desired.get(key)
        if spec is None:
            raise CommandRefused(f"no share named {arguments['share']!r} on this node")
        wanted = spec.sections.get(PLUGIN)
        if not wanted:
            raise CommandRefused(f"share {spec.name} has no [backup] table")
        return key, spec, wanted

    def _start_snapshot(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job:
        key, spec, _wanted = self._share(ctx, arguments)
        try:
            place = self._place(ctx, spec)
            self._snapshots(ctx, place).check(place)
        except SnapshotError as exc:
            raise CommandRefused(str(exc)) from exc
        settings = BackupSettings.from_config(ctx.config.plugin_sections)
        return Job(job_id(SNAPSHOT, key), self._snapshot_job(ctx, spec), settings.snapshot_timeout,
                   share_resource(spec.name))

    def _start_verify(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job:
        key, spec, wanted = self._share(ctx, arguments)
        settings, runner, paths, node = self._job_settings(ctx)
        target = settings.target(wanted["target"]) if wanted.get("target") else None
        if target is None:
            raise CommandRefused(f"share {spec.name} has no off-host target to verify")
        try:
            place = self._place(ctx, spec)
        except SnapshotError as exc:
            raise CommandRefused(str(exc)) from exc
        verify = VerifyRun(spec.name, place, target, runner, paths, node, settings, self._reasons,
                           job_id(VERIFY, key))
        return Job(job_id(VERIFY, key), verify.run, settings.timeout, share_resource(spec.name),
                   group=OFFHOST_GROUP, group_limit=settings.max_parallel)

    # ---- what status and Prometheus see ------------------------------------------------------

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        views: dict[str, ShareView] = {}
        settings = BackupSettings.from_config(ctx.config.plugin_sections)
        jobs = ctx.jobs.snapshot() if ctx.jobs is not None and not ctx.dry_run else {}
        for key, spec in sorted(ctx.desired.items()):
            wanted = spec.sections.get(PLUGIN)
            record = self._record(ctx, key)
            if not wanted or record is None:
                continue
            next_runs = {kind: when for kind in KINDS
                         if isinstance(when := jobs.get(job_id(kind, key), {}).get("next_run"), float) and when < NEVER}
            interval = typical_interval(wanted["schedule"], int(time.time() // 3600))
            views[key] = ShareView(spec.name, self._counts.get(key, 0), self._newest.get(key),
                                   {kind: dict(record.get(kind, {})) for kind in KINDS if kind in record},
                                   dict(record.get("counts", {})), next_runs, interval, wanted.get("target"),
                                   (settings.target(wanted["target"]) or {}).get("type") if wanted.get("target")
                                   else None, float(record.get("since", 0.0)))
        if not ctx.dry_run:
            self._views = views
        return {"shares": {view.share: view.as_status() for view in views.values()}}

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        findings = []
        for view in self._views.values():
            for kind, run in view.runs.items():
                if run.get("failures"):
                    findings.append(Health(kind, False, f"{run.get('failures')} failed run(s) in a row: "
                                                        f"{run.get('error')}", share_resource(view.share)))
        return findings

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        labels = ["share", "kind"]
        success = GaugeMetricFamily("smbgw_backup_last_success_timestamp_seconds",
                                    "When the last successful run started (kind: snapshot, offhost, verify)",
                                    labels=labels)
        attempt = GaugeMetricFamily("smbgw_backup_last_attempt_timestamp_seconds",
                                    "When the last run started, successful or not", labels=labels)
        duration = GaugeMetricFamily("smbgw_backup_duration_seconds", "How long the last run took", labels=labels)
        failures = CounterMetricFamily("smbgw_backup_failures", "Failed runs, by reason",
                                       labels=["share", "kind", "reason"])
        count = GaugeMetricFamily("smbgw_share_snapshots", "Snapshots of the share made by this agent",
                                  labels=["share"])
        interval = GaugeMetricFamily("smbgw_backup_interval_seconds",
                                     "Seconds between two runs of the share's snapshot schedule", labels=["share"])
        next_run = GaugeMetricFamily("smbgw_backup_next_run_timestamp_seconds", "When the next run is due",
                                     labels=labels)
        since = GaugeMetricFamily("smbgw_backup_enabled_timestamp_seconds",
                                  "When the agent started taking snapshots of the share", labels=["share"])
        last_ok = GaugeMetricFamily("smbgw_backup_last_run_success",
                                    "1 if the last run of this kind succeeded, else 0", labels=labels)
        target = GaugeMetricFamily("smbgw_backup_target_info", "The off-host target a share is sent to",
                                   labels=["share", "target", "type"])
        for view in sorted(self._views.values(), key=lambda v: v.share):
            count.add_metric([view.share], float(view.snapshots))
            if view.interval is not None:
                interval.add_metric([view.share], view.interval)
            for kind, run in sorted(view.runs.items()):
                if run.get("last_success"):
                    success.add_metric([view.share, kind], float(run["last_success"]))
                if run.get("last_attempt"):
                    attempt.add_metric([view.share, kind], float(run["last_attempt"]))
                if run.get("duration") is not None:
                    duration.add_metric([view.share, kind], float(run["duration"]))
                if run.get("last_attempt"):
                    last_ok.add_metric([view.share, kind], 0.0 if run.get("failures") else 1.0)
            if view.target:
                target.add_metric([view.share, view.target, view.target_type or ""], 1.0)
            for kind, when in sorted(view.next_runs.items()):
                if when is not None and when < NEVER:
                    next_run.add_metric([view.share, kind], float(when))
            for label, total in sorted(view.counts.items()):
                kind, _, reason = label.partition(":")
                failures.add_metric([view.share, kind, reason], float(total))
            since.add_metric([view.share], view.since)
        return [success, attempt, duration, failures, count, interval, next_run, since, last_ok, target]

