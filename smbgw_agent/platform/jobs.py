"""Work that must not run on the reconcile thread: long commands and scheduled tasks.

A pass must stay short (it holds the watchdog and every other share's latency). Work that
takes long (creating a container, booting a VM, a snapshot of a large tree) or that runs
on a schedule (a snapshot every hour, an AD health check every minute) is a job: it runs
on one of a few worker threads, under its own time budget (every command it starts
through the runner gets at most what is left of it, see `deadline`), reports progress,
and ends as succeeded, failed or timed out. Jobs never feed the watchdog: only the main
loop does, so a hung job cannot keep a hung agent alive, and a slow job cannot starve it.

When a job ends, the agent is woken; the owning plugin's next plan reads the outcome
(`JobRunner.record`) and decides what it means for its resource. A job whose `wake` says
its result needs nobody (a cheap health check every 2 s that found what it found last
time) ends quietly: no pass, only a look at the schedules, so the next one runs on time.
One job per id at a time: submitting an id that is still running is refused, so a
retrying pass cannot pile up copies of the same `pct create`. Jobs of one `group`
(off-host transfers, say) run at most `group_limit` at once: a due job whose group is
full waits, without taking a worker thread, until one of the group ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from smbgw_agent.effects import deadline as pass_deadline

log = logging.getLogger(__name__)
QUEUED, RUNNING, SUCCEEDED, FAILED, TIMED_OUT = "queued", "running", "succeeded", "failed", "timed-out"
FINISHED = (SUCCEEDED, FAILED, TIMED_OUT)
MAX_RECORDS = 1000
MAX_PROGRESS = 500
# How often `wait` looks at a job's progress for someone following it (`smbgwctl drain`):
# often enough for a line about once a second, rarely enough to cost nothing.
PROGRESS_POLL = 0.25


class JobProgress:
    """Handed to a job's function: report progress, and see whether to give up."""

    def __init__(self, record: JobRecord, budget: pass_deadline.Deadline) -> None:
        self._record = record
        self.budget = budget

    def report(self, message: str) -> None:
        self._record.progress = str(message)[:MAX_PROGRESS]

    @property
    def expired(self) -> bool:
        return self.budget.expired


@dataclass(frozen=True)
class Job:
    """`wake(result)`, when set, decides whether the job's end calls for a pass: it gets
    what `run` returned, and only a true answer wakes the agent (a job that failed or
    timed out always does). None: every end wakes it."""

    id: str
    run: Callable[[JobProgress], Any]
    timeout: float
    resource: str = ""
    plugin: str = ""
    group: str = ""
    group_limit: int = 0  # 0: no limit
    wake: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Schedule:
    """A job that recurs. `next_run(last)` gives the Unix time of the next run after the
    last one (None: never ran; a time in the past, such as 0, means due now). A run
    missed while the agent was down runs once at start, not once per missed slot: only
    the next time after the last run counts."""

    id: str
    next_run: Callable[[float | None], float]
    run: Callable[[JobProgress], Any]
    timeout: float
    resource: str = ""
    plugin: str = ""
    group: str = ""
    group_limit: int = 0
    wake: Callable[[Any], bool] | None = None  # as `Job.wake`

    def job(self) -> Job:
        return Job(self.id, self.run, self.timeout, self.resource, self.plugin, self.group, self.group_limit,
                   wake=self.wake)


def every_resource_of(plugin: str) -> str:
    """What `take_finished` reports for a job of `plugin` that names no resource."""
    return f"plugin:{plugin}"


@dataclass
class JobRecord:
    id: str
    plugin: str
    resource: str
    state: str = QUEUED
    submitted: float = 0.0
    started: float | None = None
    finished: float | None = None
    progress: str = ""
    error: str | None = None
    result: Any = None
    runs: int = 0
    group: str = ""
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin, "resource": self.resource, "state": self.state,
            "submitted": self.submitted, "started": self.started, "finished": self.finished,
            "progress": self.progress, "error": self.error, "runs": self.runs,
        }


@dataclass
class JobRunner:
    """Runs jobs and schedules. `on_finished` is called when a job's end calls for a pass
    (its plugin has an outcome to record), `on_quiet` when it does not (`Job.wake` said
    no): the loop need not reconcile then, but it must look at the schedules again,
    because `next_due` leaves out a schedule while its job runs."""

    workers: int = 4
    on_finished: Callable[[], None] = lambda: None
    on_quiet: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.time
    records: dict[str, JobRecord] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    last_runs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = False
        self._finished: set[str] = set()

    def submit(self, job: Job) -> bool:
        """Start `job` unless one with its id is queued or running, or its group is full;
        True if started."""
        with self._lock:
            if self._stopped:
                return False
            current = self.records.get(job.id)
            if current is not None and current.state not in FINISHED:
                return False
            if job.group and job.group_limit > 0 and self._busy(job.group) >= job.group_limit:
                return False
            record = JobRecord(job.id, job.plugin, job.resource, submitted=self.clock(), group=job.group)
            record.runs = (current.runs if current else 0) + 1
            self.records[job.id] = record
            self._trim()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="smbgw-job")
            pool = self._pool
        pool.submit(self._run, job, record)
        return True

    def _busy(self, group: str) -> int:
        return sum(1 for r in self.records.values() if r.group == group and r.state not in FINISHED)

    def wait(self, job_id: str, timeout: float,
             on_progress: Callable[[str], None] | None = None) -> JobRecord | None:
        """The job's record once it has finished, or None if it does not within `timeout`
        (or is unknown): how `smbgwctl snapshot` waits for the snapshot it asked for.

        `on_progress` is called with the job's progress text each time it is seen to have
        changed (every PROGRESS_POLL seconds, and once more at the end, so the last word
        before the outcome is not lost); changes in between are not replayed. What it
        raises ends the wait (the client is gone), never the job."""
        record = self.records.get(job_id)
        if record is None:
            return None
        if on_progress is None:
            return record if record.done.wait(timeout) else None
        deadline = time.monotonic() + timeout
        shown = ""
        while True:
            ended = record.done.wait(max(0.0, min(PROGRESS_POLL, deadline - time.monotonic())))
            text = record.progress
            if text and text != shown:
                shown = text
                on_progress(text)
            if ended:
                return record
            if time.monotonic() >= deadline:
                return None

    def _trim(self) -> None:
        if len(self.records) <= MAX_RECORDS:
            return
        done = sorted((r.finished or 0.0, key) for key, r in self.records.items() if r.state in FINISHED)
        for _finished, key in done[: len(self.records) - MAX_RECORDS]:
            del self.records[key]

    def _run(self, job: Job, record: JobRecord) -> None:
        budget = pass_deadline.Deadline(job.timeout)  # no heartbeat: jobs never feed the watchdog
        record.state, record.started = RUNNING, self.clock()
        try:
            with pass_deadline.bounded(budget):
                record.result = job.run(JobProgress(record, budget))
            record.state = TIMED_OUT if budget.expired else SUCCEEDED
            if budget.expired:
                record.error = f"ran longer than its {job.timeout:.0f} s"
        except Exception as exc:
            record.state = TIMED_OUT if budget.expired else FAILED
            record.error = str(exc) or type(exc).__name__
            log.error("job %s (%s) %s: %s", job.id, job.plugin, record.state, record.error)
        finally:
            record.finished = self.clock()
            if job.id in self.schedules:
                self.last_runs[job.id] = record.started or record.finished
            loud = self._calls_for_pass(job, record)
            if loud and (job.resource or job.plugin):
                with self._lock:
                    self._finished.add(job.resource or every_resource_of(job.plugin))
            record.done.set()
        try:
            (self.on_finished if loud else self.on_quiet)()
        except Exception:  # a wake-up that fails must not lose the record
            log.exception("waking the agent after job %s failed", job.id)

    @staticmethod
    def _calls_for_pass(job: Job, record: JobRecord) -> bool:
        """Does this end need a pass? Always after a failure or a timeout (someone must
        see it), otherwise as the job's `wake` says; a `wake` that raises counts as yes,
        so a broken one costs a pass, never a lost outcome."""
        if job.wake is None or record.state != SUCCEEDED:
            return True
        try:
            return bool(job.wake(record.result))
        except Exception as exc:
            log.error("job %s (%s): its wake check failed, waking the agent: %s", job.id, job.plugin, exc)
            return True

    def take_finished(self) -> set[str]:
        """Resources whose jobs finished since the last call: the next pass plans them,
        so their plugins can record the outcome even when nothing else changed. A job
        that names no resource (a plugin's watch over all of its addresses) stands for
        every node resource of its plugin (`every_resource_of`)."""
        with self._lock:
            finished, self._finished = self._finished, set()
        return finished

    def record(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def busy_resources(self) -> dict[str, str]:
        """Resources with a job queued or running, and its progress: a share whose mode
        is still building what serves it (a container starting) is pending, not served."""
        with self._lock:
            return {record.resource: record.progress or record.state for record in self.records.values()
                    if record.state not in FINISHED and record.resource}

    # ---- schedules -----------------------------------------------------------------

    def set_schedules(self, schedules: Mapping[str, Schedule]) -> None:
        """Replace the schedules (after each pass). What a plugin knows of earlier runs (its
        persistent state) belongs in its `next_run`, so a restart does not run everything
        again (docs/plugins.md, "A scheduled job")."""
        with self._lock:
            self.schedules = dict(schedules)

    def _waiting(self, schedule: Schedule) -> bool:
        """Can this schedule not start now whatever its time says? (Its job still runs, or
        its group is full.) Such a schedule is looked at again when a job ends, which
        wakes the loop (`on_finished`, or `on_quiet` for a quiet end): counting it here
        would make the loop spin until then."""
        with self._lock:
            current = self.records.get(schedule.id)
            if current is not None and current.state not in FINISHED:
                return True
            return bool(schedule.group and schedule.group_limit > 0
                        and self._busy(schedule.group) >= schedule.group_limit)

    def next_due(self) -> float | None:
        """Unix time of the next scheduled run that could start, or None."""
        times = []
        for key, schedule in list(self.schedules.items()):
            if self._waiting(schedule):
                continue
            try:
                times.append(schedule.next_run(self.last_runs.get(key)))
            except Exception as exc:
                log.error("schedule %s cannot say when it runs next: %s", key, exc)
        return min(times, default=None)

    def run_due(self) -> list[str]:
        """Start every scheduled job whose time has come; returns their ids. The longest
        overdue first, then the one that ran least recently: when a group is full, every
        waiting schedule gets its turn instead of the first one taking every slot."""
        now = self.clock()
        due = []
        for key, schedule in list(self.schedules.items()):
            try:
                when = schedule.next_run(self.last_runs.get(key))
            except Exception as exc:
                log.error("schedule %s cannot say when it runs next: %s", key, exc)
                continue
            if when <= now:
                due.append((when, self.last_runs.get(key, float("-inf")), key, schedule))
        started = []
        for _when, _last, key, schedule in sorted(due, key=lambda item: item[:3]):
            if self.submit(schedule.job()):
                started.append(key)
        return started

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            records = dict(self.records)
        result = {key: record.to_dict() for key, record in sorted(records.items())}
        for key, schedule in self.schedules.items():
            entry = result.setdefault(key, {"plugin": schedule.plugin, "resource": schedule.resource,
                                            "state": "scheduled", "runs": 0})
            last = self.last_runs.get(key)
            entry["last_run"] = last
            try:
                entry["next_run"] = schedule.next_run(last)
            except Exception as exc:
                entry["next_run"], entry["error"] = None, str(exc)
        return result

    def stop(self, wait: float = 5.0) -> None:
        """No new jobs; give running ones `wait` seconds (their commands are bounded by
        their own budgets); threads that do not finish are left to end on their own."""
        with self._lock:
            self._stopped = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait
        for thread in list(getattr(pool, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
