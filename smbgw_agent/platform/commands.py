"""Verbs a plugin adds to smbgwctl (`smbgwctl snapshot SHARE`, `smbgwctl verify SHARE`).

The core knows no plugin by name, so it cannot know their verbs either: a plugin declares
each one as a `Command`, smbgwctl builds its parser from them, and the agent runs them.
Running one is asking the agent, over its control socket, to start a job: `start` is
called on the reconcile thread between passes (so it sees the shares and plugin state of
the last pass without racing one) and returns the `Job` the core submits; the client gets
the job's outcome when it ends. A job id that is already running (a scheduled snapshot of
the same share) is refused, never run twice at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smbgw_agent.platform.context import PassContext
    from smbgw_agent.platform.jobs import Job

# The core's own verbs; a plugin cannot take them.
CORE_VERBS = frozenset({"validate", "plan", "status", "reconcile", "show", "help"})
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_ARGUMENT = 1024


class CommandRefused(Exception):
    """The command cannot start (an unknown share, a share without the plugin's table);
    the message is shown to whoever ran smbgwctl."""


@dataclass(frozen=True)
class Command:
    """One smbgwctl verb. `arguments` are positional strings (their names, e.g. `share`),
    `flags` boolean options as (name, help), e.g. ("local", "skip the off-host copy")."""

    name: str
    help: str
    start: Callable[[PassContext, Mapping[str, Any]], Job]
    arguments: tuple[str, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()

    def problems(self) -> list[str]:
        found = []
        for what, name in [("verb", self.name), *(("argument", a) for a in self.arguments),
                           *(("flag", f) for f, _help in self.flags)]:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                found.append(f"{what} {name!r} is not 1 to 32 lower-case letters, digits or dashes")
        if self.name in CORE_VERBS:
            found.append(f"verb {self.name!r} belongs to the core")
        return found

    def arguments_from(self, given: object) -> dict[str, Any]:
        """The request's arguments, checked: exactly the declared ones, strings for
        positionals and booleans for flags (the socket is root's, but a request is input)."""
        if not isinstance(given, Mapping):
            raise CommandRefused("arguments must be a JSON object")
        known = set(self.arguments) | {flag for flag, _help in self.flags}
        unknown = sorted(str(key)[:40] for key in given if key not in known)
        if unknown:
            raise CommandRefused(f"{self.name}: unknown argument(s) {', '.join(unknown)}")
        checked: dict[str, Any] = {}
        for name in self.arguments:
            value = given.get(name)
            if not isinstance(value, str) or not value or len(value) > MAX_ARGUMENT or not value.isprintable():
                raise CommandRefused(f"{self.name}: {name} must be a printable string of 1 to {MAX_ARGUMENT} "
                                     "characters")
            checked[name] = value
        for flag, _help in self.flags:
            value = given.get(flag, False)
            if not isinstance(value, bool):
                raise CommandRefused(f"{self.name}: --{flag} is a switch (true or false)")
            checked[flag] = value
        return checked
