"""The node as a member of an Active Directory domain (agent.toml `[ad]`).

What the plugin keeps true, and how:

- **Globals**: the member server's smb.conf globals (`render.global_parameters`), merged
  into the host's smb.conf by the mode like every plugin's, and into every guest's.
- **Guests**: a share's container joins the domain as a computer of its own, through a
  step its mode plugin runs (`guest.py`), with the domain's id ranges passed through its
  id map, so that a domain user owns the same uid inside and on the node.
- **Kerberos**: /etc/krb5.conf (`render.krb5_conf`) unless `manage_krb5_conf = false`. An
  administrator's own file found there is kept once (``/var/lib/smbgw/krb5.conf.saved``)
  and put back when `[ad]` is removed.
- **Join**: when the health check finds the node not joined, a join job (worker thread)
  waits for the live smb.conf to say ``security = ADS``, checks that a DC answers and
  that the clocks agree (a join under a skewed clock works, and then Kerberos fails),
  runs ``net ads join`` with the password on stdin, then enables and restarts winbind and
  reloads smbd. A failed join is retried with a doubling delay (1 min up to
  `rejoin_min_interval`); one the domain refused for the account or password is not
  retried until the password file or a join setting changes (or `rejoin_min_interval`
  passes): a wrong password retried every minute would lock the account out. The rules
  are `join.join_due`.
- **Health**: every `health_interval` a check job reads the membership
  (`tool.read_membership`) and judges it (`health.assess`); status, metrics and
  recovery use the last judgement. A pass runs only when the judgement changed.
- **Recovery**: `winbind_down` -> start winbind (through a pass); `trust_broken` ->
  rejoin, at most once per `rejoin_min_interval`; `clock_skew`, `dc_unreachable` and
  `dns` are reported and never "fixed" by a rejoin that cannot help.
- **Removal**: without `[ad]` the globals return to standalone, krb5.conf to what it was,
  winbind is stopped and disabled, and the machine account stays in AD unless
  `leave_on_remove = true` (then ``net ads leave``, password on stdin, before the
  globals change).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from smbgw_agent.effects.fileio import atomic_write, read_back
from smbgw_agent.effects.secretfile import SecretFileError, read_secret
from smbgw_agent.effects.services import ServiceError
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.idranges import IdRange
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import DELETE, UPDATE, Change, Health, NodeResource
from smbgw_agent.platform.commands import Command, CommandRefused
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.guests import GuestStep
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import FINISHED, SUCCEEDED, Job, JobProgress, Schedule
from smbgw_agent.platform.parameters import HOST, Parameter

from . import guest, render, tool
from .checks import REASONS
from .health import CHECKS, OK, Membership, assess
from .join import CREDENTIALS_MARK, WINBIND_UNIT, join_due, join_inputs, run_join, shown_join
from .localfiles import generated_by_us, local_ids, write_system_file
from .report import status_text
from .table import SECTION, AdSettings, IdConflict, LoginDefs, local_id_conflicts, parse_agent_table, parse_login_defs

log = logging.getLogger(__name__)
PLUGIN = RESOURCE = SECTION
KRB5 = "/etc/krb5.conf"
KRB5_SAVED = "krb5.conf.saved"  # in the agent's state directory (/var/lib/smbgw)
JOIN_JOB, CHECK_JOB = "ad:join", "ad:check"
CHECK_TIMEOUT = 240.0
JOIN_JOB_TIMEOUT = 300.0
RECHECK_SOON = 5.0  # after a join or a recovery: see the result without waiting a whole interval
# Plugin state keys.
JOINED, LAST_JOIN, KRB5_MOVED = "joined", "last_join", "krb5_moved"
JOIN_SUBMITTED = "join_submitted"  # when this membership's join job was submitted (its record's stamp)


def configured(config: AgentConfig) -> bool:
    return SECTION in config.plugin_sections


def settings_of(config: AgentConfig) -> AdSettings:
    return AdSettings.from_config(config.plugin_sections)


class MembershipWatch:
    """The last judged round of checks, written by the check job, read by everyone."""

    def __init__(self) -> None:
        self.value: Membership | None = None
        self.error: str | None = None
        self.soon = False  # the next check is due in seconds, not a whole interval
        self.since = time.time()  # a check before this was another watch's (before a reload)
        self._lock = threading.Lock()

    def refresh(self, read: Callable[[], Membership]) -> bool:
        """Take a new reading; True when what it shows changed."""
        before = self.value.signature() if self.value is not None else None
        try:
            value, error = read(), None
        except Exception as exc:
            value, error = None, f"the checks could not run: {exc}"
        with self._lock:
            if value is not None:
                self.value = value
            self.error = error
            self.soon = False
        return (value.signature() if value is not None else None) != before or error is not None


class AdPlugin:
    def __init__(self) -> None:
        self._watch: MembershipWatch | None = None
        self._ever_joined = False
        self._view: dict[str, Any] = {}  # for metrics: what the last pass knew
        self._joining_kind = "join"
        self._last_joined = False

    # ---- tables ----------------------------------------------------------------------

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return [SECTION]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.DIRECTORY

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        return parse_agent_table(data) if section == SECTION else None

    @hookimpl
    def smbgw_global_parameters(self, ctx: PassContext, target: str) -> Sequence[Parameter]:
        """The member server's globals, for the node and for every guest (a share's
        container is a member of its own: `guest.py`)."""
        if not configured(ctx.config):
            return []
        settings = settings_of(ctx.config)
        if any(conflict.in_use for conflict in self._id_conflicts(ctx, settings)):
            # Fail closed: a domain user mapped onto a local account's uid would own its
            # files. The node stays (or goes back to) standalone until the range is moved;
            # the ad resource fails with the reason (`_check_ids`).
            return []
        return [Parameter(name, value) for name, value in render.global_parameters(settings)]

    @hookimpl
    def smbgw_guest_id_ranges(self, ctx: PassContext, target: str) -> Sequence[IdRange]:
        """The domain's idmap ranges, for a guest's smbd (a container's) to map a domain
        user to the same id as the host does, so files read the same owner on both."""
        if not configured(ctx.config) or target == HOST:
            return []
        return [id_range for _key, id_range in settings_of(ctx.config).id_ranges()]

    @hookimpl
    def smbgw_guest_steps(self, ctx: PassContext, target: str) -> Sequence[GuestStep]:
        """A guest joins the domain as a computer of its own (`guest.py`), once its
        globals say so: not while a local account holds a domain id (see
        `smbgw_global_parameters`)."""
        if not configured(ctx.config) or target == HOST or not self.smbgw_global_parameters(ctx, target):
            return []
        return [guest.join_step(settings_of(ctx.config), ctx.paths.host)]

    # ---- lifecycle -------------------------------------------------------------------

    @hookimpl
    def smbgw_startup(self, ctx: PassContext) -> None:
        self._watch = MembershipWatch() if configured(ctx.config) else None
        self._ever_joined = JOINED in ctx.plugin_state(PLUGIN)

    @hookimpl
    def smbgw_schedules(self, ctx: PassContext) -> Sequence[Schedule]:
        watch = self._watch
        if watch is None or not configured(ctx.config):
            return []
        settings = settings_of(ctx.config)
        runner, services, smb_conf = ctx.runner, ctx.services, ctx.paths.smb_conf
        ever_joined = self._ever_joined
        state = ctx.plugin_state(PLUGIN).snapshot()

        def next_run(last: float | None) -> float:
            # The job runner remembers the last check across reloads; a new watch (the
            # agent reloaded, or [ad] came back) checks at once instead of waiting out
            # the rest of an interval that began under the old configuration.
            if last is None or last < watch.since:
                return 0.0
            return last + (RECHECK_SOON if watch.soon else settings.health_interval)

        def read() -> Membership:
            readings = tool.read_membership(runner, smb_conf, settings.realm, services.is_active(WINBIND_UNIT))
            return assess(readings, settings.realm, ever_joined)

        def wake(changed: bool) -> bool:
            return bool(changed) or join_due(watch.value, settings, state.get(LAST_JOIN), time.time(),
                                             join_inputs(settings, ctx.paths.host, os.environ)) is not None

        return [Schedule(CHECK_JOB, next_run, lambda _progress: watch.refresh(read), timeout=CHECK_TIMEOUT,
                         resource=RESOURCE, plugin=PLUGIN, wake=wake)]

    # ---- the node resource -----------------------------------------------------------

    @hookimpl
    def smbgw_node_resources(self, ctx: PassContext) -> Sequence[NodeResource]:
        if not configured(ctx.config):
            return []
        settings = settings_of(ctx.config)
        spec: dict[str, Any] = {"realm": settings.realm, "workgroup": settings.workgroup,
                                "join_user": settings.join_user, "password_file": settings.password_file,
                                "credential": settings.credential, "leave_on_remove": settings.leave_on_remove,
                                "krb5": render.krb5_conf(settings) if settings.manage_krb5_conf else None}
        return [NodeResource(RESOURCE, spec)]

    def _absorb_join(self, ctx: PassContext) -> None:
        """Record the outcome of a join job that ended since the last pass."""
        record = ctx.jobs.record(JOIN_JOB) if ctx.jobs is not None else None
        state = ctx.plugin_state(PLUGIN)
        previous = state.get(LAST_JOIN) or {}
        # Recorded already (by this instance, or by the one a reload replaced)? Or a job
        # of an earlier membership ([ad] removed and added again since): the job runner
        # keeps the last record of every job id, and an old join is not this one's.
        if record is None or record.state not in FINISHED or record.finished == previous.get("finished"):
            return
        if record.submitted != state.get(JOIN_SUBMITTED):
            return
        result = record.result if isinstance(record.result, Mapping) else {}
        ok = record.state == SUCCEEDED
        error = record.error or record.state
        settings = settings_of(ctx.config)
        entry = {"at": record.started or record.finished, "finished": record.finished, "ok": ok,
                 "kind": self._joining_kind,
                 "said": str(result.get("text", "") if ok else error.removeprefix(CREDENTIALS_MARK))[:500],
                 "credentials": not ok and error.startswith(CREDENTIALS_MARK),
                 # What it was tried with, by digest: a refused join is not tried again with the same.
                 "inputs": join_inputs(settings, ctx.paths.host, os.environ),
                 "failures": 0 if ok else int(previous.get("failures") or 0) + 1}
        state.set(LAST_JOIN, entry)
        if ok:
            state.set(JOINED, {"since": record.finished})
            self._ever_joined = True
        else:
            log.error("ad: joining the domain failed: %s", record.error)
        if self._watch is not None:
            self._watch.soon = True

    @hookimpl
    def smbgw_plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> Sequence[Change]:
        if desired is None:
            return self._plan_removal(ctx, applied)
        self._absorb_join(ctx)
        settings = settings_of(ctx.config)
        self._check_ids(ctx, settings)
        changes = []
        krb5 = desired.spec.get("krb5")
        if krb5 is not None and read_back(ctx.paths.host(KRB5)) != krb5:
            changes.append(Change(RESOURCE, UPDATE, f"write {KRB5}"))
        membership = self._watch.value if self._watch is not None else None
        state = ctx.plugin_state(PLUGIN)
        if membership is not None and membership.joined and JOINED not in state:
            state.set(JOINED, {"since": membership.at})  # joined before the agent managed it
            self._ever_joined = True
        record = ctx.jobs.record(JOIN_JOB) if ctx.jobs is not None else None
        joining = record is not None and record.state not in FINISHED
        if not joining:
            why = join_due(membership, settings, state.get(LAST_JOIN), time.time(),
                           join_inputs(settings, ctx.paths.host, os.environ))
            if why:
                changes.append(Change(RESOURCE, UPDATE, f"{why} (as {settings.join_user})"))
            elif membership is not None and membership.joined and ctx.services.is_active(WINBIND_UNIT) is False:
                changes.append(Change(RESOURCE, UPDATE, f"start {WINBIND_UNIT}"))
        return changes

    def _plan_removal(self, ctx: PassContext, applied: NodeResource | None) -> Sequence[Change]:
        changes = []
        if read_back(ctx.paths.host(KRB5)) is not None and generated_by_us(read_back(ctx.paths.host(KRB5)) or ""):
            changes.append(Change(RESOURCE, DELETE, f"put back {KRB5} as it was"))
        if applied is not None and applied.spec.get("leave_on_remove"):
            changes.append(Change(RESOURCE, DELETE, "leave the domain (net ads leave)"))
        if ctx.services.is_active(WINBIND_UNIT):
            changes.append(Change(RESOURCE, DELETE, f"stop and disable {WINBIND_UNIT}"))
        if not changes and applied is not None:
            changes.append(Change(RESOURCE, DELETE, "forget the membership"))
        return changes

    def _check_ids(self, ctx: PassContext, settings: AdSettings) -> None:
        """Idmap ranges must not hold the ids of local accounts and groups (a domain user
        mapped there would own their files): that is an error, and the node's globals
        stay standalone (`smbgw_global_parameters`) until it is fixed. Crossing only the
        range useradd allocates from is a warning (see `smbgw_health`)."""
        conflicts = self._id_conflicts(ctx, settings)
        errors = [f"[ad] {c.key}: {c.message}" for c in conflicts if c.in_use]
        if errors:
            raise ValueError("; ".join(errors) + "; the node serves as a standalone server until then")

    def _id_conflicts(self, ctx: PassContext, settings: AdSettings) -> list[IdConflict]:
        """How the idmap ranges cross the node's own ids, read once a pass (plan and
        health both ask; the pass's scratch keeps the answer)."""
        scratch = ctx.plugin_scratch(PLUGIN)
        if "id_conflicts" not in scratch:
            scratch["id_conflicts"] = local_id_conflicts(
                settings.id_ranges(), local_ids(ctx.paths.host("/etc/passwd")), local_ids(ctx.paths.host("/etc/group")),
                self._login_defs(ctx))
        conflicts: list[IdConflict] = scratch["id_conflicts"]
        return conflicts

    @staticmethod
    def _login_defs(ctx: PassContext) -> LoginDefs:
        text = read_back(ctx.paths.host("/etc/login.defs"))
        return parse_login_defs(text) if text is not None else LoginDefs()

    @hookimpl
    def smbgw_apply_resource(self, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        ctx.plugin_scratch(PLUGIN)["staged"] = (dict(resource.spec), [c.detail for c in changes])

    @hookimpl
    def smbgw_remove_resource(
        self, ctx: PassContext, resource_id: str, applied: NodeResource | None, changes: Sequence[Change]
    ) -> None:
        """Leave (when asked) now, while the live smb.conf still names the domain; the
        rest at commit."""
        if applied is not None and applied.spec.get("leave_on_remove"):
            try:
                password = read_secret(applied.spec.get("password_file"), applied.spec.get("credential"),
                                       ctx.paths.host, os.environ)
                said = tool.leave(ctx.runner, ctx.paths.smb_conf, str(applied.spec.get("join_user")), password)
                log.info("ad: left the domain: %s", said)
            except (SecretFileError, tool.JoinError) as exc:
                # The node goes standalone either way; the account stays in AD for an admin.
                log.error("ad: leaving the domain failed, the machine account stays in AD: %s", exc)
                ctx.notes.append(f"ad: leaving the domain failed, the machine account stays in AD: {exc}")
        ctx.plugin_scratch(PLUGIN)["removed"] = True

    @hookimpl
    def smbgw_rollback_resource(self, ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
        ctx.plugin_scratch(PLUGIN).clear()

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        scratch = ctx.plugin_scratch(PLUGIN)
        try:
            if scratch.pop("removed", False):
                self._make_standalone(ctx)
                return {}
            staged = scratch.pop("staged", None)
            if staged is not None:
                self._make_live(ctx, *staged)
        except (OSError, ServiceError) as exc:
            log.error("ad: %s", exc)
            return {RESOURCE: str(exc)}
        return {}

    def _make_live(self, ctx: PassContext, spec: Mapping[str, Any], planned: Sequence[str]) -> None:
        krb5 = spec.get("krb5")
        target = ctx.paths.host(KRB5)
        if krb5 is not None and read_back(target) != krb5:
            current = read_back(target)
            state = ctx.plugin_state(PLUGIN)
            if current is not None and not generated_by_us(current) and KRB5_MOVED not in state:
                # A copy first: if anything fails, nothing has changed yet.
                atomic_write(ctx.paths.state_dir / KRB5_SAVED, target.read_bytes(), mode=0o600)
                state.set(KRB5_MOVED, True)
                log.info("ad: kept the administrator's %s as %s", KRB5, ctx.paths.state_dir / KRB5_SAVED)
            write_system_file(target, krb5)
            log.info("ad: wrote %s", KRB5)
        if any(detail.startswith(("join", "rejoin")) for detail in planned):
            self._joining_kind = "rejoin" if any(d.startswith("rejoin") for d in planned) else "join"
            if ctx.jobs is not None and ctx.jobs.submit(Job(JOIN_JOB, self._join_job(ctx), JOIN_JOB_TIMEOUT,
                                                            RESOURCE, PLUGIN)):
                submitted = ctx.jobs.record(JOIN_JOB)
                if submitted is not None:
                    ctx.plugin_state(PLUGIN).set(JOIN_SUBMITTED, submitted.submitted)
        elif any(detail == f"start {WINBIND_UNIT}" for detail in planned):
            ctx.services.ensure_enabled(WINBIND_UNIT)
            report = ctx.services.ensure_active(WINBIND_UNIT)
            log.warning("ad: %s was not running; started it: %s", WINBIND_UNIT, report.detail)
            if self._watch is not None:
                self._watch.soon = True

    def _make_standalone(self, ctx: PassContext) -> None:
        state = ctx.plugin_state(PLUGIN)
        target, saved = ctx.paths.host(KRB5), ctx.paths.state_dir / KRB5_SAVED
        current = read_back(target)
        if state.get(KRB5_MOVED) and saved.exists():
            write_system_file(target, saved.read_bytes())
            saved.unlink()
            log.info("ad: put the administrator's %s back", KRB5)
        elif current is not None and generated_by_us(current):
            try:
                target.unlink()
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EBUSY):
                    raise
                write_system_file(target, b"")  # the unit may write the file, not /etc: empty it
            log.info("ad: removed the generated %s", KRB5)
        if ctx.services.is_active(WINBIND_UNIT):
            ctx.services.stop(WINBIND_UNIT)
            ctx.services.disable(WINBIND_UNIT)
            log.info("ad: stopped and disabled %s", WINBIND_UNIT)
        for key in (KRB5_MOVED, JOINED, LAST_JOIN, JOIN_SUBMITTED):
            state.delete(key)
        self._ever_joined = False

    def _join_job(self, ctx: PassContext) -> Callable[[JobProgress], dict[str, Any]]:
        """Join on a worker thread: it takes seconds, and a DC that does not answer takes
        a minute to say so."""
        settings = settings_of(ctx.config)
        runner, services, smb_conf = ctx.runner, ctx.services, ctx.paths.smb_conf
        smbd_unit, host = ctx.config.smbd_unit, ctx.paths.host
        kind = self._joining_kind

        def run(progress: JobProgress) -> dict[str, Any]:
            try:
                return run_join(progress, runner, services, smb_conf, smbd_unit, settings, host, kind)
            except tool.JoinError as exc:
                mark = CREDENTIALS_MARK if exc.credentials else ""
                raise tool.JoinError(f"{mark}{exc}", exc.credentials) from None

        return run

    # ---- observing -------------------------------------------------------------------

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        if not configured(ctx.config):
            self._view = {}
            return {}
        settings = settings_of(ctx.config)
        state = ctx.plugin_state(PLUGIN)
        watch = self._watch
        membership = watch.value if watch is not None else None
        record = ctx.jobs.record(JOIN_JOB) if ctx.jobs is not None else None
        view: dict[str, Any] = {
            "realm": settings.realm, "workgroup": settings.workgroup,
            "joined_since": (state.get(JOINED) or {}).get("since"),
            "last_join": shown_join(state.get(LAST_JOIN)),
            "joining": record is not None and record.state not in FINISHED,
            "check_error": watch.error if watch is not None else None,
            "membership": membership.to_dict() if membership is not None else None,
        }
        self._view = view
        return view

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        if not configured(ctx.config):
            return []
        settings = settings_of(ctx.config)
        findings = []
        if ctx.config.workgroup and ctx.config.workgroup.upper() != settings.workgroup:
            findings.append(Health("ad-config", False, f"[samba] workgroup = {ctx.config.workgroup!r} disagrees with "
                                   f"[ad] workgroup = {settings.workgroup!r}: remove it from [samba]", RESOURCE))
        for conflict in self._id_conflicts(ctx, settings):
            if not conflict.in_use:
                findings.append(Health("ad-idmap", False, f"[ad] {conflict.key}: {conflict.message}", RESOURCE))
        watch = self._watch
        membership = watch.value if watch is not None else None
        if watch is not None and watch.error:
            findings.append(Health("ad", False, watch.error, RESOURCE))
        if membership is not None:
            for verdict in membership.verdicts:
                if verdict.state != OK:
                    if verdict.reason:
                        findings.append(Health(f"ad-{verdict.check}", False, f"{verdict.reason}: {verdict.detail}",
                                               RESOURCE))
                elif verdict.warning:
                    findings.append(Health(f"ad-{verdict.check}", False, f"warning: {verdict.detail}", RESOURCE))
        last = ctx.plugin_state(PLUGIN).get(LAST_JOIN)
        if isinstance(last, Mapping) and not last.get("ok") and last.get("at"):
            findings.append(Health("ad-join", False, f"the last {last.get('kind') or 'join'} failed: "
                                   f"{str(last.get('said', '')).removeprefix(CREDENTIALS_MARK)}", RESOURCE))
        return findings

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        if not configured(ctx.config):
            return []
        watch = self._watch
        membership = watch.value if watch is not None else None
        success = GaugeMetricFamily("smbgw_collector_success", "1 if the collector's last reading worked",
                                    labels=["collector"])
        success.add_metric([PLUGIN], 1.0 if watch is not None and watch.error is None and membership is not None
                           else 0.0)
        families: list[Metric] = [success]
        joined = GaugeMetricFamily("smbgw_ad_joined", "1 if this node's machine account works in the domain "
                                   "(0: not joined, or the domain no longer accepts it)")
        if membership is not None and membership.joined is not None:
            self._last_joined = membership.joined
        joined.add_metric([], 1.0 if self._last_joined else 0.0)  # while no DC answers: the last known
        families.append(joined)
        if membership is None:
            return families
        healthy = GaugeMetricFamily("smbgw_ad_healthy", "1 if every AD membership check passed")
        healthy.add_metric([], 1.0 if membership.healthy else 0.0)
        checks = GaugeMetricFamily("smbgw_ad_check_success", "1 if the AD membership check passed (0: failed, or "
                                   "not run because an earlier one failed)", labels=["check"])
        for check in CHECKS:
            checks.add_metric([check], 1.0 if membership.verdict(check).state == OK else 0.0)
        problem = GaugeMetricFamily("smbgw_ad_problem", "1 while the AD membership has this problem",
                                    labels=["reason"])
        for reason in REASONS:
            problem.add_metric([reason], 1.0 if reason in membership.reasons else 0.0)
        last = GaugeMetricFamily("smbgw_ad_last_check_timestamp_seconds", "When the AD membership was last checked")
        last.add_metric([], membership.at)
        families += [healthy, checks, problem, last]
        if membership.offset is not None:
            skew = GaugeMetricFamily("smbgw_ad_clock_skew_seconds", "The DC's clock minus this node's, in seconds "
                                     "(Kerberos refuses more than 300 either way)")
            skew.add_metric([], float(membership.offset))
            families.append(skew)
        join = self._view.get("last_join")
        if isinstance(join, Mapping) and join.get("at"):
            outcome = GaugeMetricFamily("smbgw_ad_last_join_success", "1 if the agent's last join or rejoin of "
                                        "the domain worked")
            outcome.add_metric([], 1.0 if join.get("ok") else 0.0)
            families.append(outcome)
        return families

    # ---- smbgwctl --------------------------------------------------------------------

    @hookimpl
    def smbgw_commands(self) -> Sequence[Command]:
        return [Command("ad", "the node's Active Directory membership: 'status' checks it now and shows every "
                        "check", self._start_command, arguments=("action",))]

    def _start_command(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job:
        if arguments["action"] != "status":
            raise CommandRefused(f"ad: unknown action {arguments['action']!r}; the action is: status")
        if not configured(ctx.config) or self._watch is None:
            raise CommandRefused("this node has no [ad] table in agent.toml: it is not a domain member")
        watch = self._watch
        settings = settings_of(ctx.config)
        runner, services, smb_conf = ctx.runner, ctx.services, ctx.paths.smb_conf
        ever_joined, view = self._ever_joined, dict(self._view)

        def run(progress: JobProgress) -> dict[str, Any]:
            progress.report(f"checking the membership of {settings.realm}")
            readings = tool.read_membership(runner, smb_conf, settings.realm, services.is_active(WINBIND_UNIT))
            membership = assess(readings, settings.realm, ever_joined)
            watch.refresh(lambda: membership)
            return {"text": status_text(settings, view, membership), **view, "membership": membership.to_dict()}

        return Job("ad:status", run, CHECK_TIMEOUT, RESOURCE, PLUGIN)


