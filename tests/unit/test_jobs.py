"""Jobs, beyond the basics in test_platform.py: quiet jobs (`wake`) and following a job's
progress (`JobRunner.wait` with `on_progress`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent.daemon import Agent
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.jobs import FAILED, SUCCEEDED, TIMED_OUT, Job, JobRunner, Schedule


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Wakes:
    """Counts what a runner's job ends asked of the agent."""

    def __init__(self) -> None:
        self.passes = 0
        self.quiet = 0

    def runner(self, **kwargs: Any) -> JobRunner:
        return JobRunner(on_finished=self._pass, on_quiet=self._quiet, **kwargs)

    def _pass(self) -> None:
        self.passes += 1

    def _quiet(self) -> None:
        self.quiet += 1


def every(seconds: float) -> Any:
    return lambda last: 0.0 if last is None else last + seconds


def test_a_quiet_schedule_does_not_wake_the_agent_and_one_whose_wake_says_yes_does() -> None:
    wakes = Wakes()
    jobs = wakes.runner()
    jobs.set_schedules({
        "probe:quiet": Schedule("probe:quiet", every(2.0), lambda p: {"healthy": True}, 1.0,
                                resource="probe:quiet", wake=lambda result: not result["healthy"]),
        "probe:loud": Schedule("probe:loud", every(2.0), lambda p: {"healthy": True}, 1.0,
                               resource="probe:loud", wake=lambda result: result["healthy"]),
    })
    assert sorted(jobs.run_due()) == ["probe:loud", "probe:quiet"]
    for key in ("probe:quiet", "probe:loud"):
        record = jobs.wait(key, 10)
        assert record is not None and record.state == SUCCEEDED
    wait_for(lambda: wakes.passes + wakes.quiet == 2)
    assert (wakes.passes, wakes.quiet) == (1, 1)
    assert jobs.take_finished() == {"probe:loud"}, "only an end that woke the agent gets its resource planned"
    jobs.stop()


def test_a_quiet_schedule_still_runs_on_time() -> None:
    """`next_due` leaves out a schedule while its job runs; after a quiet end it must
    count again, or the loop would sleep past the next run."""
    wakes = Wakes()
    jobs = wakes.runner()
    ran = threading.Event()
    jobs.set_schedules({"probe": Schedule("probe", every(2.0), lambda p: ran.set(), 1.0, wake=lambda r: False)})
    assert jobs.run_due() == ["probe"]
    record = jobs.wait("probe", 10)
    assert record is not None and ran.is_set()
    wait_for(lambda: wakes.quiet == 1)
    assert wakes.passes == 0
    last = jobs.last_runs["probe"]
    assert jobs.next_due() == last + 2.0
    jobs.stop()


def test_a_job_that_failed_or_timed_out_wakes_the_agent_whatever_its_wake_says() -> None:
    wakes = Wakes()
    jobs = wakes.runner()

    def fail(progress: Any) -> None:
        raise RuntimeError("probe broke")

    def overrun(progress: Any) -> None:
        time.sleep(0.3)

    def broken_wake(result: Any) -> bool:
        raise KeyError("healthy")

    assert jobs.submit(Job("fail", fail, 5, resource="r:fail", wake=lambda r: False))
    assert jobs.submit(Job("slow", overrun, 0.1, resource="r:slow", wake=lambda r: False))
    assert jobs.submit(Job("odd", lambda p: None, 5, resource="r:odd", wake=broken_wake))
    states = {key: jobs.wait(key, 10) for key in ("fail", "slow", "odd")}
    assert {key: r.state for key, r in states.items() if r is not None} == {
        "fail": FAILED, "slow": TIMED_OUT, "odd": SUCCEEDED}
    wait_for(lambda: wakes.passes == 3)
    assert wakes.quiet == 0
    assert jobs.take_finished() == {"r:fail", "r:slow", "r:odd"}
    jobs.stop()


def test_a_job_without_wake_wakes_the_agent_as_before() -> None:
    wakes = Wakes()
    jobs = wakes.runner()
    jobs.set_schedules({"snap": Schedule("snap", every(3600.0), lambda p: None, 5, resource="share:a")})
    assert jobs.run_due() == ["snap"]
    assert jobs.wait("snap", 10) is not None
    wait_for(lambda: wakes.passes == 1)
    assert wakes.quiet == 0
    assert Schedule("x", every(1.0), lambda p: None, 1, wake=bool).job().wake is bool, "job() passes wake on"
    jobs.stop()


# ---- the agent's loop ---------------------------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    (tmp_path / "etc/smbgw/shares.d").mkdir(parents=True)
    (tmp_path / "etc/smbgw/agent.toml").write_text('[agent]\nnode = "n1"\n')
    agent = Agent(Paths.under(tmp_path), use_systemd=False)
    try:
        yield agent
    finally:
        agent.jobs.stop()


def test_the_agent_runs_no_pass_for_a_quiet_end_but_sleeps_only_until_the_next_run(agent: Agent) -> None:
    agent.next_resync = time.monotonic() + 3600  # no full pass due: only the schedule counts
    agent.jobs.set_schedules({"probe": Schedule("probe", every(1.0), lambda p: None, 1.0, resource="probe",
                                                wake=lambda r: False)})
    agent.wake.clear()
    assert agent.jobs.run_due() == ["probe"]
    assert agent.jobs.wait("probe", 10) is not None
    assert agent.wake.wait(5), "the loop is woken to look at its schedules again"
    assert not agent.job_finished, "...but no pass is asked for"
    assert agent.jobs.take_finished() == set()
    sleep = agent._timeout(time.monotonic())
    assert sleep <= 1.0, f"the next run is due within 1 s, the loop would sleep {sleep:.2f} s"


def test_the_agent_runs_a_pass_when_wake_says_yes(agent: Agent) -> None:
    agent.jobs.set_schedules({"probe": Schedule("probe", every(2.0), lambda p: "down", 1.0, resource="probe",
                                                wake=lambda r: r == "down")})
    assert agent.jobs.run_due() == ["probe"]
    assert agent.jobs.wait("probe", 10) is not None
    wait_for(lambda: agent.job_finished)
    assert agent.jobs.take_finished() == {"probe"}


# ---- following a job's progress -----------------------------------------------------------------


def test_wait_reports_each_new_progress_text_and_the_last_one_before_the_end() -> None:
    jobs = JobRunner()
    seen: list[str] = []
    got_one = threading.Event()

    def work(progress: Any) -> str:
        progress.report("one")
        assert got_one.wait(10)
        time.sleep(0.6)  # two polls that see no change: no repeated line
        progress.report("two")
        return "done"  # at once: only the look after the end can see "two"

    def on_progress(text: str) -> None:
        seen.append(text)
        if text == "one":
            got_one.set()

    assert jobs.submit(Job("drain", work, 30))
    record = jobs.wait("drain", 30, on_progress)
    assert record is not None and record.result == "done"
    assert seen == ["one", "two"]
    jobs.stop()


def test_wait_with_progress_still_gives_up_at_its_timeout_and_what_the_callback_raises_ends_it() -> None:
    jobs = JobRunner()
    release = threading.Event()

    def work(progress: Any) -> None:
        progress.report("waiting for 3 sessions to end")
        release.wait(10)

    assert jobs.submit(Job("drain", work, 30))
    started = time.monotonic()
    assert jobs.wait("drain", 0.3, lambda text: None) is None
    assert time.monotonic() - started < 2

    def gone(text: str) -> None:
        raise BrokenPipeError("client gone")

    with pytest.raises(BrokenPipeError):
        jobs.wait("drain", 10, gone)
    record = jobs.record("drain")
    assert record is not None and record.state == "running", "the job is not the client's to end"
    release.set()
    assert jobs.wait("drain", 10) is not None
    assert jobs.wait("unknown", 1, lambda text: None) is None
    jobs.stop()
