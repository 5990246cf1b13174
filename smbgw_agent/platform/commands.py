"""Verbs a plugin adds to smbgwctl (`smbgwctl snapshot SHARE`, `smbgwctl verify SHARE`).

The core knows no plugin by name, so it cannot know their verbs either: a plugin declares
each one as a `Command`, smbgwctl builds its parser from them, and the agent runs them.
Running one is asking the agent, over its control socket, to start a job: `start` is
called on the reconcile thread between passes (so it sees the shares and plugin state of
the last pass without racing one) and returns the `Job` the core submits; the client gets
the job's outcome when it ends. A job id that is already running (a scheduled snapshot of
the same share) is refused, never run twice at once.

A verb may be `shared`: several plugins each do their part of it (`smbgwctl drain`: the
guest modes move their guests to another node, the address manager releases the node's
addresses and waits for sessions to end). The parts run one after another in plugin
order, as one job; each part's `start` may refuse (nothing has started then) or return
None when it has nothing to do on this node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smbgw_agent.platform.jobs import Job, JobProgress

if TYPE_CHECKING:
    from smbgw_agent.platform.context import PassContext

# The core's own verbs; a plugin cannot take them.
CORE_VERBS = frozenset({"validate", "plan", "status", "reconcile", "show", "import", "help"})
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
    start: Callable[[PassContext, Mapping[str, Any]], Job | None]
    arguments: tuple[str, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    shared: bool = False

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

    def names(self) -> set[str]:
        return set(self.arguments) | set(_names(self.flags)) | set(_names(self.options))

    def arguments_from(self, given: object) -> dict[str, Any]:
        """The request's arguments, checked: only the declared ones, a string for each
        positional, a boolean for each flag (absent: false), a string or null for each
        option (absent: null). The socket is root's, but a request is input."""
        if not isinstance(given, Mapping):
            raise CommandRefused("arguments must be a JSON object")
        known = self.names()
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


def join_parts(parts: list[tuple[str, Command]]) -> tuple[Command | None, list[str]]:
    """One verb out of the parts several plugins declare for it (in plugin order), and
    what keeps them from being joined: each must be `shared`, with the same positional
    arguments, and a switch of one name must be a flag in all or an option in all."""
    first = parts[0][1]
    if len(parts) == 1:
        return first, []
    problems = []
    if not all(command.shared for _plugin, command in parts):
        problems.append(f"smbgwctl verb {first.name!r} is claimed by plugins {', '.join(p for p, _ in parts)}; "
                        "only a verb every one of them declares shared can be joined")
    elif any(command.arguments != first.arguments for _plugin, command in parts):
        problems.append(f"smbgwctl verb {first.name!r}: its plugins declare different arguments")
    flags = {name: text for _p, c in reversed(parts) for name, text in c.flags}
    options = {name: text for _p, c in reversed(parts) for name, text in c.options}
    if set(flags) & set(options):
        problems.append(f"smbgwctl verb {first.name!r}: {', '.join(sorted(set(flags) & set(options)))} is a flag "
                        "for one plugin and an option for another")
    if problems:
        return None, problems
    helps = " ".join(dict.fromkeys(command.help.rstrip(".") + "." for _p, command in parts))

    def start(ctx: PassContext, arguments: Mapping[str, Any]) -> Job | None:
        jobs = []
        for plugin, command in parts:
            own = {name: value for name, value in arguments.items() if name in command.names()}
            job = command.start(ctx, own)
            if job is not None:
                jobs.append((plugin, job))
        return _joined(first.name, jobs)

    return Command(first.name, helps, start, first.arguments, tuple(flags.items()), tuple(options.items()),
                   shared=True), []


def _joined(verb: str, jobs: list[tuple[str, Job]]) -> Job | None:
    """The parts' jobs as one, run in order. A part that fails does not stop the later
    ones (a drain still releases addresses when one guest did not move); the joined job
    fails afterwards with every part's error."""
    if len(jobs) <= 1:
        return jobs[0][1] if jobs else None

    def run(progress: JobProgress) -> dict[str, Any]:
        results: dict[str, Any] = {}
        errors = []
        for plugin, job in jobs:
            try:
                results[plugin] = job.run(progress)
            except Exception as exc:  # reported below, with the others
                errors.append(f"{plugin}: {exc or type(exc).__name__}")
        if errors:
            raise RuntimeError("; ".join(errors))
        texts = [str(r.get("text")) for r in results.values() if isinstance(r, Mapping) and r.get("text")]
        return {"text": "; ".join(texts), "parts": results}

    return Job(verb, run, sum(job.timeout for _plugin, job in jobs), "", jobs[0][0])
