"""The one way the agent runs external commands.

Argument lists only (never a shell), a timeout on every call, output captured and
capped, and secrets redacted from anything that could reach a log or status. Secrets
go to the child on stdin, never on the command line, where `ps` would show them.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_OUTPUT = 1 << 20
REDACTED = "***"


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
    """A command failed to start, timed out, or exited non-zero (when checked)."""

    def __init__(self, message: str, result: Completed | None = None) -> None:
        super().__init__(message)
        self.result = result


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
        """Run `argv`; raise CommandError on failure to start, timeout, or (if check) exit != 0."""
        for secret in secrets:
            self.add_secret(secret)
        argv = tuple(argv)
        shown = self.redact(" ".join(argv))
        limit = self.default_timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=limit,
                env=env, check=False, errors="replace",
            )
        except FileNotFoundError as exc:
            raise CommandError(f"{argv[0]}: command not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"{shown}: timed out after {limit:g}s") from exc
        except OSError as exc:
            raise CommandError(f"{shown}: cannot run: {exc.strerror}") from exc
        result = Completed(
            argv=argv,
            returncode=proc.returncode,
            stdout=self.redact(proc.stdout[:max_output]),
            stderr=self.redact(proc.stderr[:MAX_OUTPUT]),
            duration=time.monotonic() - started,
        )
        log.debug("ran %s: exit %d in %.3fs", shown, result.returncode, result.duration)
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            raise CommandError(
                f"{shown}: exit {result.returncode}: {' / '.join(detail) or 'no output'}", result
            )
        return result
