"""The one way the agent runs external commands.

Argument lists only (never a shell), a timeout on every call, output captured and
capped, and secrets redacted from anything that could reach a log or status. Secrets
go to the child on stdin, never on the command line, where `ps` would show them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from smbgw_agent.effects import deadline as pass_deadline

log = logging.getLogger(__name__)

MAX_OUTPUT = 1 << 20
REDACTED = "***"
# How often a waiting command lets the pass's heartbeat reach the watchdog.
HEARTBEAT_SLICE = 1.0
READ_CHUNK = 1 << 16
PIPE_CHUNK = 4096


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandError(Exception):
    """A command failed to start, timed out, or exited non-zero (when checked).

    `failed_to_run` tells a tool that did not give an answer (missing, hanging, killed
    by the pass deadline) from one that answered "no": callers that interpret answers
    (testparm) must not treat the first as a verdict on their input.
    """

    def __init__(self, message: str, result: Completed | None = None, failed_to_run: bool = False) -> None:
        super().__init__(message)
        self.result = result
        self.failed_to_run = failed_to_run


class RunsCommands(Protocol):
    """What a tool needs of a runner: `Runner` on the node, or a guest's shell
    (`smbgw_agent.platform.guests.GuestShell`) that runs the same argv inside a guest."""

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: str | None = None, secrets: Iterable[str] = (), env: dict[str, str] | None = None) -> Completed:
        ...


@dataclass
class Runner:
    default_timeout: float = 30.0
    secrets: set[str] = field(default_factory=set)

    def add_secret(self, secret: str) -> None:
        if secret:
            self.secrets.add(secret)

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: str | None = None,
        secrets: Iterable[str] = (),
        env: dict[str, str] | None = None,
        max_output: int = MAX_OUTPUT,
    ) -> Completed:
        """Run `argv`; raise CommandError on failure to start, timeout, or (if check) exit != 0.

        Under a pass deadline (see `deadline.bounded`) the timeout is cut to what is left
        of the pass, no command starts once it is spent, and the pass's heartbeat is fed
        while the command runs.
        """
        for secret in secrets:
            self.add_secret(secret)
        argv = tuple(argv)
        shown = self.redact(" ".join(argv))
        limit = self.default_timeout if timeout is None else timeout
        shown_limit = f"{limit:g}s"
        budget = pass_deadline.current()
        if budget is not None:
            if budget.expired:
                raise CommandError(
                    f"{shown}: not started: the pass used up its {budget.seconds:g}s", failed_to_run=True
                )
            if budget.remaining() < limit:
                limit = budget.remaining()
                shown_limit = f"{limit:.3g}s, what was left of the pass's {budget.seconds:g}s"
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                # Its own process group, so a timeout stops what it started as well.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(f"{argv[0]}: command not found", failed_to_run=True) from exc
        except OSError as exc:
            raise CommandError(f"{shown}: cannot run: {exc.strerror}", failed_to_run=True) from exc
        try:
            out, err = self._exchange(proc, stdin, started + limit, shown, shown_limit, max_output)
        finally:
            _stop(proc)
        stdout = out.decode("utf-8", errors="replace")
        stderr = err.decode("utf-8", errors="replace")
        result = Completed(
            argv=argv,
            returncode=proc.returncode,
            stdout=self.redact(stdout[:max_output]),
            stderr=self.redact(stderr[:MAX_OUTPUT]),
            duration=time.monotonic() - started,
        )
        log.debug("ran %s: exit %d in %.3fs", shown, result.returncode, result.duration)
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            raise CommandError(
                f"{shown}: exit {result.returncode}: {' / '.join(detail) or 'no output'}", result
            )
        return result

    @staticmethod
    def _exchange(
        proc: subprocess.Popen[bytes], stdin: str | None, ends: float, shown: str, limit: str,
        max_output: int,
    ) -> tuple[bytes, bytes]:
        """Feed stdin and read both pipes until the command exits, in slices that feed the
        pass's heartbeat; kill it at `ends`, or once it writes more than `max_output`
        bytes (a tool spewing garbage must not fill memory while its timeout runs)."""
        assert proc.stdout is not None and proc.stderr is not None
        received: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
        sizes = dict.fromkeys(received, 0)
        caps = {proc.stdout.fileno(): max_output, proc.stderr.fileno(): MAX_OUTPUT}
        pending = memoryview(stdin.encode("utf-8")) if stdin is not None else None
        input_fd = proc.stdin.fileno() if proc.stdin is not None else -1
        with selectors.DefaultSelector() as selector:
            for fd in received:
                selector.register(fd, selectors.EVENT_READ)
            if proc.stdin is not None:
                os.set_blocking(input_fd, False)
                selector.register(input_fd, selectors.EVENT_WRITE)
            while selector.get_map():
                left = ends - time.monotonic()
                if left <= 0:
                    raise CommandError(f"{shown}: timed out after {limit}", failed_to_run=True)
                exited = proc.poll() is not None
                ready = selector.select(min(0.05 if exited else HEARTBEAT_SLICE, left))
                if not ready and exited:
                    break  # exited; a process it left behind holds the pipes open
                for key, _events in ready:
                    fd = int(key.fd)
                    if fd == input_fd and proc.stdin is not None:
                        try:
                            written = os.write(fd, pending[:PIPE_CHUNK]) if pending else 0
                        except BrokenPipeError:
                            written, pending = 0, None
                        if pending is not None:
                            pending = pending[written:]
                        if not pending:
                            selector.unregister(fd)
                            proc.stdin.close()
                        continue
                    data = os.read(fd, READ_CHUNK)
                    if not data:
                        selector.unregister(fd)
                        continue
                    sizes[fd] += len(data)
                    if sizes[fd] > caps[fd]:
                        raise CommandError(
                            f"{shown}: wrote more than {caps[fd]} bytes of output; stopped it",
                            failed_to_run=True,
                        )
                    received[fd].append(data)
                pass_deadline.beat()
        try:
            proc.wait(max(0.0, ends - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise CommandError(f"{shown}: timed out after {limit}", failed_to_run=True) from None
        return b"".join(received[proc.stdout.fileno()]), b"".join(received[proc.stderr.fileno()])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command's process group if it still runs, reap it, close our pipe ends
    (under fd pressure every descriptor counts)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
