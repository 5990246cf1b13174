"""The agent's control socket and job runner without the rest of the agent.

`JobLoop` serves a real `ControlServer` on a Unix socket and stands in for the agent's
main loop: it takes each `run` request, submits the job a test gave it and follows it
the way the agent does (`daemon.follow_job`). Tests of smbgwctl's plugin verbs and of
the control protocol talk to it exactly as to the agent, with no plugins, share files
or passes in the way.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smbgw_agent.control import ControlServer, OnProgress, Request
from smbgw_agent.daemon import follow_job
from smbgw_agent.platform.jobs import Job, JobRunner


class JobLoop:
    def __init__(self, path: Path, job: Job) -> None:
        self.job = job
        self.jobs = JobRunner()
        self.requests: queue.Queue[Request] = queue.Queue()
        self.server = ControlServer(path, self.requests, threading.Event())
        self.payloads: list[dict[str, Any]] = []
        # How each follow ended: "replied", or the name of what it raised.
        self.follows: list[str] = []
        self.followed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._stopping = False

    def start(self) -> None:
        self.server.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.server.stop()
        self._thread.join(5)
        self.jobs.stop(wait=1.0)

    def _loop(self) -> None:
        while not self._stopping:
            try:
                request = self.requests.get(timeout=0.1)
            except queue.Empty:
                continue
            self.payloads.append(dict(request.payload))
            assert self.jobs.submit(self.job)
            request.follow = self._recorded(follow_job(self.jobs, self.job.id, self.job.timeout))
            request.done.set()

    def _recorded(self, follow: Callable[[OnProgress], dict[str, Any]]) -> Callable[[OnProgress], dict[str, Any]]:
        def recorded(on_progress: OnProgress) -> dict[str, Any]:
            try:
                reply = follow(on_progress)
            except BaseException as exc:
                self.follows.append(type(exc).__name__)
                raise
            else:
                self.follows.append("replied")
                return reply
            finally:
                self.followed.set()
        return recorded


@contextlib.contextmanager
def short_directory() -> Iterator[Path]:
    """A directory whose socket paths stay well under the 108 bytes of sun_path (pytest's
    tmp_path need not)."""
    directory = Path(tempfile.mkdtemp(prefix="smbgw-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def job_loop(path: Path, job: Job) -> Iterator[JobLoop]:
    loop = JobLoop(path, job)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
