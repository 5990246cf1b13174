"""One level-triggered reconcile pass: read everything, plan, apply, commit, record.

`plan` and `apply` are one code path: a dry run stops after planning. Each share is
isolated: a plugin raising for one share rolls back that share only, records why, and
schedules a retry with backoff; every other share proceeds.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .backoff import Backoff
from .config import AgentConfig
from .context import PassContext
from .desired import Desired, resolve_desired
from .fileio import atomic_write
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
        return not self.failed and not self.errors


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
    ) -> None:
        self.paths = paths
        self.config = config
        self.plugins = plugins
        self.services = services
        self.runner = runner or Runner()
        self.clock = clock
        self.scanner = ShareScanner(paths, plugins, config)
        self.state = StateStore(paths.state_dir, read_only=read_only)
        self.backoff = Backoff()
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

    # ---- the pass -------------------------------------------------------------------

    def run_pass(self, dry_run: bool = False, force: bool = False, full: bool = True) -> PassReport:
        """One pass. `full` plans every share (drift repair); otherwise only shares whose
        declaration differs from what is applied, or that are being retried — which is
        what keeps a file event's pass proportional to the change. Periodic resyncs are full.
        `force` ignores backoff (an explicit request from the admin).
        """
        report = PassReport(started=self.clock(), dry_run=dry_run)
        began = time.monotonic()
        scan = self.scanner.scan()
        applied = dict(self.state.applied)
        desired = resolve_desired(
            scan, self.scanner.directory, self.state.lastgood, applied, self.config.node
        )
        if scan.directory_problem:
            # A missing shares.d (e.g. /etc/pve not mounted) must not remove every share.
            report.errors.append(f"{scan.directory_problem}; keeping the shares that are live")
            desired.shares = dict(applied)
            desired.lastgood_drops = []
        report.desired = desired
        if not dry_run:
            self._log_file_problems(desired)
        ctx = PassContext(
            paths=self.paths, config=self.config, runner=self.runner, services=self.services,
            desired=desired.shares, applied=applied, dry_run=dry_run,
            hook=self.plugins.hook,
        )
        now = self.clock()
        if full:
            keys = set(desired.shares) | set(applied)
        else:
            # Identity first: unchanged files yield the very objects that were applied.
            keys = {k for k, spec in desired.shares.items() if applied.get(k) is not spec and applied.get(k) != spec}
            keys |= set(applied) - set(desired.shares)
            keys |= set(self.backoff.attempts)
        plans = self._plan(ctx, keys, desired.shares, applied, report)
        if not dry_run:
            try:
                for spec in desired.lastgood_updates:
                    self.state.set_lastgood(spec)
                for file in desired.lastgood_drops:
                    self.state.drop_lastgood(file)
                self._apply(ctx, plans, desired.shares, applied, report, now, force)
                self.backoff.forget_missing(set(desired.shares) | set(self.state.applied))
                self.state.commit()
            except BaseException:
                self.state.rollback()
                raise
        report.duration = time.monotonic() - began
        if not dry_run:
            self.passes += 1
            if report.ok:
                self.last_success = self.clock()
            else:
                self.pass_errors += 1
            self.last_report = report
            self._observe(ctx)
            self.write_status()
        return report

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
            want, have = desired.get(key), applied.get(key)
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
                    self._fail(ctx, key, outcome, have, error, self.clock())
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
                log.debug("%s", traceback.format_exc())
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
                log.debug("%s", "".join(traceback.format_exception(error)))
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

    # ---- status -----------------------------------------------------------------------

    def _observe(self, ctx: PassContext) -> None:
        self.observations: dict[str, Any] = {}
        for plugin, observed, error in self.plugins.call_each("smbgw_observe", ctx=ctx):
            self.observations[plugin] = {"error": _describe(error)} if error else dict(observed or {})

    def next_wakeup(self) -> float | None:
        return self.backoff.next_retry()

    def status(self) -> dict[str, Any]:
        report = self.last_report
        desired = report.desired if report else None
        shares: dict[str, Any] = {}
        keys = set(self.state.applied) | (set(desired.shares) if desired else set())
        for key in sorted(keys):
            applied = self.state.applied.get(key)
            want = desired.shares.get(key) if desired else None
            spec = want or applied
            assert spec is not None
            attempt = self.backoff.attempts.get(key)
            if attempt:
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
                "error": attempt.error if attempt else None,
                "failures": attempt.failures if attempt else 0,
                "retry_at": attempt.retry_at if attempt else None,
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
            "last_success": self.last_success,
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
        """Write status.json and publish the same snapshot for scrapes (a new object each
        pass, never mutated afterwards, so readers in other threads need no lock)."""
        snapshot = self.status()
        atomic_write(self.paths.status_file, json.dumps(snapshot, separators=(",", ":")))
        self.snapshot = snapshot
