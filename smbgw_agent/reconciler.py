"""One level-triggered reconcile pass: read everything, plan, apply, commit, record.

`plan` and `apply` are one code path: a dry run stops after planning. Each share is
isolated: a plugin raising for one share rolls back that share only, records why, and
schedules a retry with backoff; every other share proceeds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from . import deadline as pass_deadline
from .backoff import Backoff
from .config import AgentConfig
from .context import PassContext
from .desired import Desired, resolve_desired
from .fileio import atomic_write
from .guard import STORAGE_MISSING, UNSAFE, Hold, ShareGuard
from .paths import Paths
from .pluginhost import PluginHost
from .runner import Runner
from .scanner import ShareScanner
from .services import ServiceControl
from .shares import ShareSpec
from .state import StateStore

log = logging.getLogger(__name__)


@dataclass
class ShareOutcome:
    name: str
    steps: list[str] = field(default_factory=list)
    result: str = "unchanged"  # unchanged | applied | removed | failed | waiting | planned
    error: str | None = None


@dataclass
class PassReport:
    started: float
    duration: float = 0.0
    dry_run: bool = False
    outcomes: dict[str, ShareOutcome] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    desired: Desired | None = None
    held: dict[str, Hold] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        """Share names (as declared) that this pass applied or removed."""
        return sorted(o.name for o in self.outcomes.values() if o.result in ("applied", "removed"))

    @property
    def failed(self) -> list[str]:
        """Share names that failed in this pass or are still waiting to be retried."""
        return sorted(o.name for o in self.outcomes.values() if o.result in ("failed", "waiting"))

    @property
    def ok(self) -> bool:
        """No share failed, nothing went wrong node-wide, and no share is held back."""
        return not self.failed and not self.errors and not self.held


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Reconciler:
    def __init__(
        self,
        paths: Paths,
        config: AgentConfig,
        plugins: PluginHost,
        services: ServiceControl,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        """`clock` is wall time, only for what people read (status, metrics); every delay
        and deadline uses `monotonic`, so a clock step never stalls a retry.
        `heartbeat` is called while a pass is alive and within its time budget."""
        self.paths = paths
        self.config = config
        self.plugins = plugins
        self.services = services
        self.runner = runner or Runner()
        self.clock = clock
        self.monotonic = monotonic
        self.heartbeat = heartbeat
        self.scanner = ShareScanner(paths, plugins, config)
        self.guard = ShareGuard(paths, config)
        self.state = StateStore(paths.state_dir, read_only=read_only)
        self.backoff = Backoff()
        # Node-wide problems (a reload that failed, a commit that raised) have no share to
        # retry them: a pass is scheduled again with the same capped backoff.
        self.pass_backoff = Backoff()
        self.recovered = False
        self.rebuilt: list[str] = []
        self.status_error: str | None = None
        self.internal_errors = 0
        self._guard_dirty: set[str] = set()
        self._logged_holds: dict[str, str] = {}
        self.last_report: PassReport | None = None
        self.last_success: float | None = None
        self.config_problems: list[str] = []
        self.passes = 0
        self.pass_errors = 0
        self.snapshot: dict[str, Any] | None = None
        self._logged_problems: dict[str, tuple[str, ...]] = {}
        for warning in self.state.load():
            log.warning("%s", warning)

    def replace_config(self, config: AgentConfig, plugins: PluginHost) -> None:
        self.config = config
        self.plugins = plugins
        self.scanner = ShareScanner(self.paths, plugins, config)
        self.guard = ShareGuard(self.paths, config)

    def forget(self) -> None:
        """Re-read and re-check everything on the next pass (forced and periodic passes)."""
        self.scanner.forget()
        self.guard.forget()

    def poll_guard(self) -> bool:
        """Cheap check between passes (one stat per share): True when a share's directory
        or storage changed, e.g. a directory swapped for a symbolic link; the next pass
        then plans those shares."""
        report = self.last_report
        if report is None or report.desired is None:
            return False
        specs = [*report.desired.shares.values(), *(h.spec for h in report.held.values())]
        changed = self.guard.poll(specs)
        self._guard_dirty |= changed
        return bool(changed)

    # ---- the pass -------------------------------------------------------------------

    def run_pass(self, dry_run: bool = False, force: bool = False, full: bool = True) -> PassReport:
        """One pass. `full` plans every share (drift repair); otherwise only shares whose
        declaration differs from what is applied, or that are being retried — which is
        what keeps a file event's pass proportional to the change. Periodic resyncs are full.
        `force` ignores backoff (an explicit request from the admin).
        """
        report = PassReport(started=self.clock(), dry_run=dry_run)
        began = self.monotonic()
        budget = pass_deadline.Deadline(self.config.pass_timeout, self.heartbeat, self.monotonic)
        with pass_deadline.bounded(budget):
            try:
                self._pass(report, dry_run, force, full)
            except Exception as exc:  # no exception may end the agent: count it, say where
                self.internal_errors += 1
                report.errors.append(f"internal error: {_describe(exc)} (see the log for the traceback)")
                log.error("internal error in a pass: %s", _describe(exc), exc_info=True)
                if not dry_run:
                    self.state.rollback()
        report.duration = self.monotonic() - began
        if not dry_run:
            if report.errors:
                self.pass_backoff.failed("pass", self.monotonic(), "; ".join(report.errors)[:500])
            else:
                self.pass_backoff.succeeded("pass")
            self.passes += 1
            if report.ok:
                self.last_success = self.clock()
            else:
                self.pass_errors += 1
            self.last_report = report
            try:
                self._observe_plugins(report)
            except Exception as exc:
                log.error("observing plugins failed: %s", _describe(exc))
            self.write_status()
        return report

    def _pass(self, report: PassReport, dry_run: bool, force: bool, full: bool) -> None:
        scan = self.scanner.scan()
        if not self.recovered:
            self._recover_live(dry_run)
        applied = dict(self.state.applied)
        desired = resolve_desired(
            scan, self.scanner.directory, self.state.lastgood, applied, self.config.node
        )
        if scan.directory_problem:
            # A missing shares.d (e.g. /etc/pve not mounted) must not remove every share.
            report.errors.append(f"{scan.directory_problem}; keeping the shares that are live")
            desired.shares = dict(applied)
            desired.lastgood_drops = []
        # Whatever spec a share would be served from, its path must still be safe and its
        # storage present; held shares are taken down (or not created) this pass.
        fresh = {
            name for name in self.scanner.fresh
            if name in desired.files and desired.files[name].serving == "current"
        }
        # Identity first: unchanged files yield the very objects that were applied.
        changed = {k for k, spec in desired.shares.items() if applied.get(k) is not spec and applied.get(k) != spec}
        if full:
            to_check: Mapping[str, ShareSpec] = desired.shares
        else:
            # A file event's pass checks what it touches, what is held back, what is being
            # retried and what the idle poll saw change: its cost follows the change.
            held_before = self.last_report.held if self.last_report else {}
            watch = set(held_before) | self._guard_dirty | set(self.backoff.attempts)
            watch |= changed
            to_check = {k: desired.shares[k] for k in watch if k in desired.shares}
        report.held = self.guard.check(to_check, self.scanner.admin_shares(), fresh, complete=full)
        for key in report.held:
            del desired.shares[key]
        self._hold_refused_files(desired, report)
        report.desired = desired
        if not dry_run:
            self._log_file_problems(desired)
            self._log_holds(report.held)
        ctx = PassContext(
            paths=self.paths, config=self.config, runner=self.runner, services=self.services,
            desired=desired.shares, applied=applied, dry_run=dry_run,
            hook=self.plugins.hook,
        )
        self._ctx = ctx
        now = self.monotonic()
        if full:
            keys = set(desired.shares) | set(applied)
        else:
            keys = changed & set(desired.shares)  # shares held back this pass are removals below
            keys |= set(applied) - set(desired.shares)
            keys |= set(self.backoff.attempts) & (set(desired.shares) | set(applied))
            keys |= self._guard_dirty & (set(desired.shares) | set(applied))
        self._guard_dirty = set()
        plans = self._plan(ctx, keys, desired.shares, applied, report)
        if not dry_run:
            try:
                for spec in desired.lastgood_updates:
                    self.state.set_lastgood(spec)
                for file in desired.lastgood_drops:
                    self.state.drop_lastgood(file)
                self._apply(ctx, plans, desired.shares, applied, report, now, force)
            finally:
                self.backoff.forget_missing(set(desired.shares) | set(self.state.applied))
                self.state.commit()
        if self.state.error and not dry_run:
            report.errors.append(self.state.error)

    def _hold_refused_files(self, desired: Desired, report: PassReport) -> None:
        """A file refused for a security problem takes its share down; show that share as
        refused (under its last good version), not as if it had never existed."""
        for name, status in desired.files.items():
            previous = self.state.lastgood.get(name)
            if status.serving != "refused" or previous is None:
                continue
            if previous.key in desired.shares or previous.key in report.held:
                continue
            reason = next((p.message for p in status.problems if p.security), "refused")
            report.held[previous.key] = Hold(previous, UNSAFE, reason)
            self.guard.remember(previous)

    def _recover_live(self, dry_run: bool) -> None:
        """Adopt what plugins serve but the state does not know (the database was lost,
        zeroed or restored from an older copy), so nothing live is removed as unknown."""
        self.recovered = True
        ctx = PassContext(
            paths=self.paths, config=self.config, runner=self.runner, services=self.services,
            desired={}, applied=dict(self.state.applied), dry_run=dry_run, hook=self.plugins.hook,
        )
        adopted: list[str] = []
        for plugin, specs, error in self.plugins.call_each("smbgw_live_shares", ctx=ctx):
            if error is not None:
                log.error("plugin %s could not report what it serves: %s", plugin, _describe(error))
                continue
            for spec in specs or ():
                if self.state.adopt(spec):
                    adopted.append(spec.name)
        if not adopted:
            return
        self.rebuilt = sorted(adopted)
        if self.state.lost:
            log.warning(
                "STATE LOST: %s; rebuilt %d live share(s) from what is served (%s): they keep "
                "being served, and a share whose file is invalid keeps its live version",
                self.state.lost, len(adopted), ", ".join(self.rebuilt),
            )
        else:
            log.warning(
                "the state database did not know %d live share(s) (%s); adopted them from what is served",
                len(adopted), ", ".join(self.rebuilt),
            )

    def _log_holds(self, held: Mapping[str, Hold]) -> None:
        current = {key: hold.reason for key, hold in held.items()}
        for key, hold in held.items():
            if self._logged_holds.get(key) != hold.reason:
                what = "REFUSED (unsafe)" if hold.kind == UNSAFE else "not served (storage missing)"
                log.error("share %s (%s): %s: %s", hold.spec.name, hold.spec.file, what, hold.reason)
        for key in set(self._logged_holds) - set(current):
            log.info("share %s: no longer held back", key)
        self._logged_holds = current

    def _log_file_problems(self, desired: Desired) -> None:
        """Log each invalid file once per change of its problems (not every pass)."""
        current: dict[str, tuple[str, ...]] = {}
        for name, status in desired.files.items():
            if status.valid:
                continue
            problems = tuple(str(p) for p in status.problems)
            current[name] = problems
            if self._logged_problems.get(name) != problems:
                keeping = {"last-good": "; serving its last good version", "applied": "; serving the live version"}
                for problem in problems:
                    log.error("invalid share file %s%s", problem, keeping.get(status.serving, ""))
        for name in set(self._logged_problems) - set(current):
            if name in desired.files:
                log.info("share file %s is valid again", name)
        self._logged_problems = current

    def _plan(
        self,
        ctx: PassContext,
        keys: set[str],
        desired: Mapping[str, ShareSpec],
        applied: Mapping[str, ShareSpec],
        report: PassReport,
    ) -> dict[str, list[str]]:
        plans: dict[str, list[str]] = {}
        for key in sorted(keys):
            pass_deadline.beat()
            want, have = desired.get(key), applied.get(key)
            if want is None and have is None:
                continue  # nothing declared and nothing live: nothing to plan
            name = (want or have).name  # type: ignore[union-attr]
            outcome = ShareOutcome(name)
            report.outcomes[key] = outcome
            try:
                results = self.plugins.hook.smbgw_plan_share(
                    ctx=ctx, name=name, desired=want, applied=have
                )
                outcome.steps = [step for steps in results for step in steps]
            except Exception as exc:
                error = f"planning failed: {_describe(exc)}"
                if ctx.dry_run:
                    outcome.result, outcome.error = "failed", error
                    log.error("share %s: %s", name, error)
                else:
                    self._fail(ctx, key, outcome, have, error, self.monotonic())
                continue
            if want is not None and have != want and not outcome.steps:
                outcome.steps = ["record the new declaration (nothing to change on the node)"]
            if want is None and have is not None and not outcome.steps:
                outcome.steps = [f"forget share {name}"]
            if outcome.steps:
                plans[key] = outcome.steps
                outcome.result = "planned"
        return plans

    def _apply(
        self,
        ctx: PassContext,
        plans: Mapping[str, list[str]],
        desired: Mapping[str, ShareSpec],
        applied: Mapping[str, ShareSpec],
        report: PassReport,
        now: float,
        force: bool,
    ) -> None:
        hook = self.plugins.hook
        touched: list[str] = []
        for key in plans:
            pass_deadline.beat()
            outcome = report.outcomes[key]
            want, have = desired.get(key), applied.get(key)
            if not force and self.backoff.waiting(key, now):
                attempt = self.backoff.attempts[key]
                outcome.result, outcome.error = "waiting", attempt.error
                continue
            try:
                if want is not None:
                    hook.smbgw_apply_share(ctx=ctx, name=outcome.name, desired=want)
                else:
                    hook.smbgw_remove_share(ctx=ctx, name=outcome.name, applied=have)
                touched.append(key)
            except Exception as exc:
                self._fail(ctx, key, outcome, have, f"{_describe(exc)}", now)
                log.debug("share %s: traceback", outcome.name, exc_info=True)
        rejected = self._commit(ctx, touched, report)
        report.errors.extend(ctx.notes)
        for key in touched:
            outcome = report.outcomes[key]
            want, have = desired.get(key), applied.get(key)
            if key in rejected:
                self._fail(ctx, key, outcome, have, rejected[key], now)
                continue
            self.backoff.succeeded(key)
            if want is not None:
                self.state.set_applied(want)
                outcome.result = "applied"
                log.info("share %s (%s): applied (%s)", outcome.name, want.file, "; ".join(outcome.steps))
            else:
                self.state.drop_applied(key)
                outcome.result = "removed"
                log.info("share %s: removed (data left in place)", outcome.name)

    def _commit(self, ctx: PassContext, touched: list[str], report: PassReport) -> dict[str, str]:
        """Call every plugin's commit separately, so one failing plugin does not skip the rest."""
        rejected: dict[str, str] = {}
        for plugin, result, error in self.plugins.call_each("smbgw_commit", ctx=ctx):
            if error is not None:
                message = f"{plugin}: commit failed: {_describe(error)}"
                log.error("%s", message)
                log.debug("%s: commit traceback", plugin, exc_info=error)
                report.errors.append(message)
                for key in touched:
                    rejected.setdefault(key, message)
                continue
            for name, reason in dict(result or {}).items():
                rejected.setdefault(name.casefold(), f"{plugin}: {reason}")
        return rejected

    def _fail(
        self, ctx: PassContext, key: str, outcome: ShareOutcome, have: ShareSpec | None,
        error: str, now: float,
    ) -> None:
        try:
            self.plugins.hook.smbgw_rollback_share(ctx=ctx, name=outcome.name, applied=have)
        except Exception as exc:
            error += f" (and rolling back failed: {_describe(exc)})"
        attempt = self.backoff.failed(key, now, error)
        outcome.result, outcome.error = "failed", error
        log.error(
            "share %s: %s; retry %d in %.0fs", outcome.name, error, attempt.failures,
            attempt.retry_at - now,
        )

    def retry_wall_time(self, retry_at: float) -> float:
        """A monotonic retry time as Unix time, for people and status.json."""
        return self.clock() + (retry_at - self.monotonic())

    # ---- status -----------------------------------------------------------------------

    def _observe_plugins(self, report: PassReport) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        self.observations: dict[str, Any] = {}
        for plugin, observed, error in self.plugins.call_each("smbgw_observe", ctx=ctx):
            self.observations[plugin] = {"error": _describe(error)} if error else dict(observed or {})

    def next_wakeup(self) -> float | None:
        """Monotonic time of the next retry (a share's, or a pass after node-wide errors)."""
        times = [t for t in (self.backoff.next_retry(), self.pass_backoff.next_retry()) if t is not None]
        return min(times, default=None)

    def degraded(self) -> dict[str, str]:
        """Conditions that keep the agent from doing its whole job, by reason."""
        reasons: dict[str, str] = {}
        if self.state.error:
            reasons["state"] = self.state.error
        if self.status_error:
            reasons["status"] = self.status_error
        return reasons

    def status(self) -> dict[str, Any]:
        report = self.last_report
        desired = report.desired if report else None
        held = report.held if report else {}
        shares: dict[str, Any] = {}
        keys = set(self.state.applied) | (set(desired.shares) if desired else set()) | set(held)
        for key in sorted(keys):
            applied = self.state.applied.get(key)
            want = desired.shares.get(key) if desired else None
            hold = held.get(key)
            spec = want or (hold.spec if hold else None) or applied
            assert spec is not None
            attempt = self.backoff.attempts.get(key)
            error = attempt.error if attempt else None
            if hold is not None:
                state = "refused" if hold.kind == UNSAFE else STORAGE_MISSING
                error = hold.reason
            elif attempt:
                state = "failed"
            elif want is not None and applied == want:
                state = "served"
            elif want is None:
                state = "removing"
            else:
                state = "pending"
            shares[spec.name] = {
                "file": spec.file,
                "mode": spec.mode,
                "path": spec.path,
                "state": state,
                "serving": "declared" if applied == want and applied else ("previous" if applied else "none"),
                "digest": spec.digest(),
                "error": error,
                "failures": attempt.failures if attempt else 0,
                "retry_at": self.retry_wall_time(attempt.retry_at) if attempt else None,
            }
        return {
            "version": __version__,
            "node": self.config.node,
            "root": str(self.paths.root),
            "updated": self.clock(),
            "config": {
                "file": self.config.source,
                "warnings": list(self.config.warnings),
                "problems": list(self.config_problems),
            },
            "shares_dir": str(self.scanner.directory),
            "pass": None if report is None else {
                "started": report.started,
                "duration_seconds": round(report.duration, 6),
                "ok": report.ok,
                "errors": report.errors,
                "changed": report.changed,
                "failed": report.failed,
            },
            "passes": self.passes,
            "pass_errors": self.pass_errors,
            "internal_errors": self.internal_errors,
            "last_success": self.last_success,
            "degraded": self.degraded(),
            "state": {
                "database": str(self.state.database),
                "saved": not self.state.unsaved,
                "error": self.state.error,
                "lost": self.state.lost or None,
                "rebuilt": list(self.rebuilt),
            },
            "shares": shares,
            "files": {n: s.to_dict() for n, s in sorted(desired.files.items())} if desired else {},
            "other_node": dict(desired.other_node) if desired else {},
            "services": {
                unit: {"control": r.control, "active": r.active, "detail": r.detail}
                for unit, r in self.services.reports.items()
            },
            "plugins": getattr(self, "observations", {}),
        }

    def write_status(self) -> None:
        """Publish a new snapshot for scrapes (a new object each pass, never mutated
        afterwards, so readers in other threads need no lock) and write status.json.

        A status file that cannot be written (a full /run, no file descriptors left) is
        reported as degraded and retried; it never stops the agent.
        """
        previous, self.status_error = self.status_error, None  # what the file will say if written
        snapshot = self.status()
        try:
            atomic_write(self.paths.status_file, json.dumps(snapshot, separators=(",", ":")))
        except OSError as exc:
            message = f"cannot write {self.paths.status_file}: {exc.strerror or exc}"
            if message != previous:
                log.error("%s; retrying", message)
            self.status_error = message
            self.snapshot = {**snapshot, "degraded": self.degraded()}
            return
        self.snapshot = snapshot
        if previous:
            log.warning("%s written again", self.paths.status_file)

    def status_missing(self) -> bool:
        """status.json was deleted (by hand, or by a tmpfs cleaner) or never written."""
        return self.snapshot is not None and not self.paths.status_file.exists()
