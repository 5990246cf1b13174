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
# Names smbgwctl's parser already uses for a verb's own switches (`--json`, `-h/--help`)
# or as destinations of its own (`--root`, the verb itself): an argument, flag or option
# of that name would clash, or silently overwrite them (a positional `root` would point
# smbgwctl at another agent's socket).
RESERVED_NAMES = frozenset({"json", "help", "root", "command"})
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_ARGUMENT = 1024


class CommandRefused(Exception):
    """The command cannot start (an unknown share, a share without the plugin's table);
    the message is shown to whoever ran smbgwctl."""


@dataclass(frozen=True)
class Command:
    """One smbgwctl verb. `arguments` are positional strings (their names, e.g. `share`),
    `flags` boolean switches as (name, help), e.g. ("local", "skip the off-host copy"),
    `options` switches that take a string as (name, help), e.g. ("timeout", "give up
    after this long"): `smbgwctl drain NODE --timeout 5m`. `start` gets every declared
    name: a string for each positional, a bool for each flag, a string or None (not
    given) for each option."""

    name: str
    help: str
    start: Callable[[PassContext, Mapping[str, Any]], Job]
    arguments: tuple[str, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()

    def problems(self) -> list[str]:
        """What is wrong with the declaration; checked when the plugins are loaded, so a
        bad verb stops the agent at start rather than breaking smbgwctl's parser."""
        named = [("verb", self.name), *(("argument", a) for a in self.arguments),
                 *(("flag", f) for f in _names(self.flags)), *(("option", o) for o in _names(self.options))]
        found = [f"{what} {name!r} is not 1 to 32 lower-case letters, digits or dashes"
                 for what, name in named if not isinstance(name, str) or not _NAME.fullmatch(name)]
        if isinstance(self.arguments, str) or not _pairs(self.flags) or not _pairs(self.options):
            found.append(f"verb {self.name!r}: arguments must be a tuple of names, flags and options tuples "
                         "of (name, help) pairs of strings")
        if self.name in CORE_VERBS:
            found.append(f"verb {self.name!r} belongs to the core")
        return found + self._clashes([name for _what, name in named[1:] if isinstance(name, str)])

    def _clashes(self, names: list[str]) -> list[str]:
        """Names smbgwctl cannot tell apart: one name twice (arguments, flags and options
        become attributes of one parsed namespace), or one of smbgwctl's own."""
        found = [f"{name!r} of verb {self.name!r} is smbgwctl's own" for name in names if name in RESERVED_NAMES]
        twice = sorted({name for name in names if names.count(name) > 1})
        return found + [f"{name!r} of verb {self.name!r} is declared more than once (arguments, flags and "
                        "options share one namespace)" for name in twice]

    def arguments_from(self, given: object) -> dict[str, Any]:
        """The request's arguments, checked: only the declared ones, a string for each
        positional, a boolean for each flag (absent: false), a string or null for each
        option (absent: null). The socket is root's, but a request is input."""
        if not isinstance(given, Mapping):
            raise CommandRefused("arguments must be a JSON object")
        known = set(self.arguments) | set(_names(self.flags)) | set(_names(self.options))
        unknown = sorted(str(key)[:40] for key in given if key not in known)
        if unknown:
            raise CommandRefused(f"{self.name}: unknown argument(s) {', '.join(unknown)}")
        checked: dict[str, Any] = {}
        for name in self.arguments:
            checked[name] = self._text(given.get(name), name)
        for flag in _names(self.flags):
            value = given.get(flag, False)
            if not isinstance(value, bool):
                raise CommandRefused(f"{self.name}: --{flag} is a switch (true or false)")
            checked[flag] = value
        for option in _names(self.options):
            value = given.get(option)
            checked[option] = None if value is None else self._text(value, f"--{option}")
        return checked

    def _text(self, value: object, what: str) -> str:
        """A string that is safe to log and show: printable, 1 to MAX_ARGUMENT characters."""
        if not isinstance(value, str) or not value or len(value) > MAX_ARGUMENT or not value.isprintable():
            raise CommandRefused(f"{self.name}: {what} must be a printable string of 1 to {MAX_ARGUMENT} "
                                 "characters")
        return value


def _pairs(entries: object) -> bool:
    """Is `entries` a sequence of (name, help) string pairs?"""
    return isinstance(entries, (tuple, list)) and all(
        isinstance(entry, (tuple, list)) and len(entry) == 2 and all(isinstance(part, str) for part in entry)
        for entry in entries)


def _names(entries: object) -> list[Any]:
    """The names of (name, help) pairs; a malformed entry gives itself, which `problems`
    then reports, so a bad declaration is a message and never a crash."""
    if not isinstance(entries, (tuple, list)):
        return []
    return [entry[0] if isinstance(entry, (tuple, list)) and len(entry) == 2 else entry for entry in entries]
