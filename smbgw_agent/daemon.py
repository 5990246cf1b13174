"""The long-running agent: signals, watcher, control socket and the reconcile loop.

Only the main thread reconciles. Everything else (inotify events, signals, control
requests) just wakes it. The loop pings the systemd watchdog itself, so a pass that
hangs stops the pings and systemd restarts the agent.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from smbgw_agent import __version__
from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.control import ControlServer, OnProgress, Request
from smbgw_agent.effects.fileio import remove_stale_temporaries
from smbgw_agent.effects.poller import ShareDirPoller, watch_mode
from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.sdnotify import Notifier
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.effects.watcher import ShareDirWatcher
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.printable import printable
from smbgw_agent.observe.metrics import Exporter, MetricsConfigError
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.context import CollectContext
from smbgw_agent.platform.jobs import SUCCEEDED, JobRunner
from smbgw_agent.reconcile.reconciler import PassReport, Reconciler

log = logging.getLogger("smbgw_agent")
EXIT_CONFIG = 2
# How often the idle loop checks share paths and storage (one stat per share) and that
# status.json still exists: a swapped-in symbolic link is taken down within this time.
GUARD_INTERVAL = 2.0
# How much longer than a job's own limit smbgwctl waits for it (the job runner needs a
# moment to record a timed-out job).
FOLLOW_SLACK = 30.0


class JournalFormatter(logging.Formatter):
    """Prefix `<N>` (sd-daemon(3)) so journald records each line's real priority and
    `journalctl -p warning -u smbgw-agent` works; journald strips the prefix."""

    PRIORITIES: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines() or [""])


class PrintableFilter(logging.Filter):
    """Escape control characters in every message: a share file named with an ESC
    sequence or a newline must not rewrite a terminal or forge a journal line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(record.getMessage())
        record.args = None
        return True


def raise_file_limit() -> None:
    """Use the hard limit of open files (systemd: 1024 soft, 524288 hard): a flood of
    connections must not leave the reconciler without descriptors. Each listener also
    caps its own connections (metrics_http, control)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 1 << 20), hard))


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PrintableFilter())
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class Agent:
    def __init__(self, paths: Paths, use_systemd: bool, notifier: Notifier | None = None) -> None:
        self.paths = paths
        self.notifier = notifier or Notifier()
        plugins, config = load_plugins_and_config(paths)
        for warning in config.warnings:
            log.warning("%s", warning)
        self.runner = Runner()
        self.services = ServiceControl(self.runner, use_systemd=use_systemd)
        self.services.cancelled = lambda: self.stop_requested
        self.wake = threading.Event()
        # A quiet job's end (`Job.wake` said no) only wakes the loop, which then looks at
        # the schedules again; it runs no pass.
        self.jobs = JobRunner(on_finished=self._on_job_finished, on_quiet=self.wake.set)
        self.reconciler = Reconciler(
            paths, config, plugins, self.services, self.runner, heartbeat=self._heartbeat, jobs=self.jobs,
        )
        self.dirty = threading.Event()
        # The share files inotify named since the last pass (None: unknown, list them all).
        self._changed_names: set[str] | None = None
        self._names_lock = threading.Lock()
        self.requests: queue.Queue[Request] = queue.Queue()
        self.stop_requested = False
        self.reload_requested = False
        self.job_finished = False
        self.watch_mode = ""
        self.watcher: ShareDirWatcher | ShareDirPoller = self._make_watcher()
        self.control = ControlServer(paths.control_socket, self.requests, self.wake)
        self.next_resync = 0.0
        self.next_guard = 0.0
        self._shown_jobs: dict[str, str] = {}  # the building jobs as status.json last showed them
        self.last_ping = 0.0
        self.exporter = Exporter(
            status=lambda: self.reconciler.snapshot,
            plugins=lambda: self.reconciler.plugins,
            context=self._collect_context,
            share_paths=self._share_paths,
        )

    def _make_watcher(self) -> ShareDirWatcher | ShareDirPoller:
        """inotify where it sees every change; polling where it cannot (`[agent] watch`,
        and `auto` on a FUSE file system such as /etc/pve: poller.py)."""
        directory = self.reconciler.scanner.directory
        mode, why = watch_mode(self.config.watch, directory)
        if mode != self.watch_mode:
            log.info("noticing changes in %s by %s: %s", directory,
                     f"polling every {self.config.poll_interval:g}s" if mode == "poll" else "inotify", why)
        self.watch_mode = mode
        if mode == "poll":
            return ShareDirPoller(directory, self._on_change, self.config.poll_interval)
        return ShareDirWatcher(directory, self._on_change)

    def _collect_context(self, status: Mapping[str, Any]) -> CollectContext:
        return CollectContext(self.paths, self.reconciler.config, self.runner, status)

    def _share_paths(self) -> dict[str, Path]:
        snapshot = self.reconciler.snapshot or {}
        return {name: self.paths.host(share["path"]) for name, share in snapshot.get("shares", {}).items()}

    def start_metrics(self) -> None:
        config = self.config
        if not config.metrics_enabled:
            return
        try:
            self.exporter.start(config, self.paths)
        except (MetricsConfigError, OSError) as exc:
            message = f"metrics endpoint not started: {exc}"
            log.error("%s", message)
            self.reconciler.config_problems.append(message)

    @property
    def config(self) -> AgentConfig:
        return self.reconciler.config

    def _on_change(self, names: Collection[str] | None = None) -> None:
        with self._names_lock:
            if names is None or self._changed_names is None:
                self._changed_names = None
            else:
                self._changed_names.update(names)
        self.dirty.set()
        self.wake.set()

    def _take_changed_names(self) -> set[str] | None:
        """The share files named by inotify since the last pass; None where the watcher
        cannot say (polling, shares.d not watched, an event about shares.d itself)."""
        with self._names_lock:
            names, self._changed_names = self._changed_names, set()
        if not isinstance(self.watcher, ShareDirWatcher) or not self.watcher.watching:
            return None
        return names

    def _on_job_finished(self) -> None:
        """A job's outcome is for its plugin's next plan to read: run a pass soon."""
        self.job_finished = True
        self.wake.set()

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_requested = True
        self.wake.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, self._signal)

    def reload_config(self) -> None:
        """SIGHUP: re-read agent.toml; keep the running configuration if the new one is bad."""
        self.notifier.reloading()
        try:
            plugins, config = load_plugins_and_config(self.paths)
        except ConfigError as exc:
            self.reconciler.config_problems = [str(p) for p in exc.problems]
            for problem in exc.problems:
                log.error("agent.toml not reloaded: %s", problem)
        else:
            self.reconciler.config_problems = []
            for warning in config.warnings:
                log.warning("%s", warning)
            self.reconciler.replace_config(config, plugins)
            self.watcher.stop()
            self.watcher = self._make_watcher()
            with self._names_lock:
                self._changed_names = None  # events the old watcher missed: list them all
            self.watcher.start()
            log.info("reloaded agent configuration")
        self.reconciler.scanner.forget()
        self.notifier.ready(self._status_line())

    def _status_line(self, report: PassReport | None = None) -> str:
        report = report or self.reconciler.last_report
        served = sum(1 for _ in self.reconciler.state.applied)
        if report is None:
            return f"{served} shares; waiting for the first pass"
        failed = len(report.failed)
        invalid = sum(1 for f in (report.desired.files.values() if report.desired else []) if not f.valid)
        return (
            f"{served} shares served, {failed} failing, {invalid} invalid files; "
            f"last pass {report.duration * 1000:.0f} ms"
        )

    def run_pass(self, force: bool = False, full: bool = True,
                 changed_files: Collection[str] | None = None) -> PassReport:
        self.watcher.ensure()
        report = self.reconciler.run_pass(force=force, full=full, changed_files=changed_files)
        self.exporter.observe_pass(report.duration)
        if report.changed and self.exporter.usage is not None:
            self.exporter.usage.refresh_soon()
        self.notifier.status(self._status_line(report))
        if report.changed or report.failed:
            log.info(
                "pass: %d changed, %d failed in %.0f ms", len(report.changed), len(report.failed),
                report.duration * 1000,
            )
        return report

    def _heartbeat(self) -> None:
        """Called from inside a pass that is alive and within its time budget."""
        self._ping(time.monotonic())

    def _ping(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval and now - self.last_ping >= interval / 4:
            self.notifier.watchdog()
            self.last_ping = now

    def _timeout(self, now: float) -> float:
        deadlines = [self.next_resync, now + GUARD_INTERVAL]
        retry = self.reconciler.next_wakeup()
        if retry is not None:
            deadlines.append(retry)
        if self.notifier.watchdog_interval:
            deadlines.append(self.last_ping + self.notifier.watchdog_interval / 4)
        scheduled = self.jobs.next_due()
        if scheduled is not None:
            deadlines.append(now + max(0.0, scheduled - time.time()))
        return max(0.0, min(deadlines) - now)

    def _debounce(self) -> None:
        """Wait for a burst of events (an editor's save, `cp -r`) to settle, up to 1 s."""
        quiet = self.config.debounce
        if quiet <= 0:
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            self.dirty.clear()
            if not self.dirty.wait(quiet):
                return

    def serve(self) -> int:
        self.install_signals()
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.paths.run_dir)
        self.control.start()
        self.watcher.start()
        self.reconciler.start_plugins()
        self.start_metrics()
        self.notifier.ready(self._status_line())
        log.info(
            "smbgw-agent %s on node %s: watching %s (root %s, services via %s)", __version__,
            self.config.node, self.reconciler.scanner.directory, self.paths.root,
            "systemd" if self.services.use_systemd else "direct signals",
        )
        self.dirty.set()
        try:
            while not self.stop_requested:
                try:
                    self._step()
                except Exception as exc:  # the loop outlives anything one round throws
                    self.reconciler.internal_errors += 1
                    log.error("internal error in the agent's loop: %s", exc, exc_info=True)
                    self.wake.wait(1.0)
        finally:
            self.notifier.stopping()
            log.info("stopping; shares stay served")
            self.jobs.stop()
            self.reconciler.stop_plugins()
            self.watcher.stop()
            self.control.stop()
            self.exporter.stop()
        return 0

    def _step(self) -> None:
        """One round of the loop: answer signals and requests, run a pass if one is due,
        otherwise sleep until something wakes the agent or a deadline comes."""
        now = time.monotonic()
        self._ping(now)
        force = False
        if self.reload_requested:
            self.reload_requested = False
            self.reload_config()
            self.next_resync = 0.0
            force = True
        requests = []
        commanded = False
        for request in self._drain_requests():
            if request.command == "run":
                # A verb may have changed what the next pass should do (`drain` records
                # that the node is drained): that pass comes now, not at the next resync.
                self._start_command(request)
                commanded = True
            else:
                requests.append(request)
        if requests:
            force = True
        resync_due = now >= self.next_resync
        self.jobs.run_due()
        job_finished, self.job_finished = self.job_finished, False
        changed_paths = False
        if now >= self.next_guard:
            self.next_guard = now + GUARD_INTERVAL
            changed_paths = self._between_passes()
        due = resync_due or requests or force or changed_paths or job_finished or commanded or self._retry_due()
        if self.dirty.is_set() or due:
            if self.dirty.is_set() and not resync_due:
                self._debounce()
            self.dirty.clear()
            if resync_due or force:
                # Forced passes (reconcile, SIGHUP) re-read and re-check everything.
                self.reconciler.forget()
            if resync_due:
                self.next_resync = time.monotonic() + self.config.resync_interval
            report = None
            try:
                report = self.run_pass(force=force, full=resync_due or force,
                                       changed_files=self._take_changed_names())
            finally:
                self._answer(requests, report)
            return
        self.wake.wait(self._timeout(time.monotonic()))
        self.wake.clear()

    def _retry_due(self) -> bool:
        retry = self.reconciler.next_wakeup()
        return retry is not None and retry <= time.monotonic()

    def _between_passes(self) -> bool:
        """Cheap checks while idle; True when they call for a pass."""
        if self.reconciler.status_error:
            self.reconciler.write_status()  # retried until it works (a full /run, EMFILE)
        elif self.reconciler.status_missing():
            log.warning("%s was removed; writing it again", self.paths.status_file)
            self.reconciler.write_status()
        elif self._jobs_moved():
            self.reconciler.write_status()  # a running job's progress, for smbgwctl status
        return self.reconciler.poll_guard()

    def _jobs_moved(self) -> bool:
        """A job that builds a resource moved on since the last look (its progress text
        changed, or it started or ended): status.json is otherwise written by passes only,
        and a container being created shows its progress there, every GUARD_INTERVAL at
        most, between passes."""
        busy = self.jobs.busy_resources()
        if busy == self._shown_jobs:
            return False
        self._shown_jobs = busy
        return True

    def _drain_requests(self) -> list[Request]:
        items = []
        while True:
            try:
                items.append(self.requests.get_nowait())
            except queue.Empty:
                return items

    def _start_command(self, request: Request) -> None:
        """A plugin verb: start its job now, between passes; the control thread that
        holds the client waits for the job (`follow`), never this loop."""
        verb = request.payload.get("verb")
        try:
            if not isinstance(verb, str):
                raise CommandRefused("a run request needs a verb")
            job_id, timeout = self.reconciler.start_command(verb, request.payload.get("arguments", {}))
        except CommandRefused as exc:
            request.reply = {"ok": False, "error": str(exc)}
            request.done.set()
            return
        log.info("smbgwctl %s: started job %s", verb, job_id)
        request.follow = follow_job(self.jobs, job_id, timeout)
        request.done.set()

    def _answer(self, requests: list[Request], report: PassReport | None) -> None:
        for request in requests:
            if report is None:
                request.reply = {"ok": False, "error": "the pass failed before it could report"}
                request.done.set()
                continue
            request.reply = {
                "ok": report.ok,
                "changed": report.changed,
                "failed": {
                    o.name: o.error for o in report.outcomes.values() if o.result in ("failed", "waiting")
                },
                "errors": report.errors,
                "held": {hold.spec.name: hold.reason for hold in report.held.values()},
                "duration_seconds": report.duration,
            }
            request.done.set()


def follow_job(jobs: JobRunner, job_id: str, timeout: float) -> Callable[[OnProgress], dict[str, Any]]:
    """How the control thread that holds a `run` client waits for its job: passing on
    each new progress text (the control server decides whether the client gets it), then
    the reply with the job's outcome."""
    def follow(on_progress: OnProgress) -> dict[str, Any]:
        record = jobs.wait(job_id, timeout + FOLLOW_SLACK, on_progress)
        if record is None:
            return {"ok": False, "job": job_id, "error": f"job {job_id} did not end within {timeout:g}s"}
        result = record.result if isinstance(record.result, dict) else {}
        return {"ok": record.state == SUCCEEDED, "job": job_id, "state": record.state,
                "error": record.error, "result": result,
                "duration_seconds": (record.finished or 0.0) - (record.started or 0.0)}
    return follow


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="smbgw-agent", description="Serve the SMB shares declared in shares.d on this node."
    )
    parser.add_argument("--root", help="sandbox: resolve every managed path under this directory")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--once", action="store_true", help="run one pass and exit (1 if it failed)")
    parser.add_argument(
        "--no-systemd", action="store_true",
        help="never talk to systemd; signal daemons directly (implied by --root)",
    )
    parser.add_argument("--version", action="version", version=f"smbgw-agent {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A pass over thousands of shares is CPU-bound Python; a shorter switch interval lets
    # the metrics and control threads answer within milliseconds meanwhile.
    sys.setswitchinterval(0.001)
    configure_logging(args.log_level)
    raise_file_limit()
    paths = Paths.under(args.root)
    use_systemd = not (args.no_systemd or paths.sandboxed)
    try:
        agent = Agent(paths, use_systemd)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        log.error("refusing to start with an invalid %s", paths.agent_config)
        return EXIT_CONFIG
    if args.once:
        agent.reconciler.start_plugins()
        try:
            report = agent.run_pass(force=True)
        finally:
            agent.jobs.stop()
            agent.reconciler.stop_plugins()
        return 0 if report.ok else 1
    return agent.serve()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
