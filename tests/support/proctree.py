"""The processes a test's agent started, so that stopping the agent stops them too.

The agent's runner starts every command in a session of its own (so a timeout can kill
the command's whole group). A command still running when the agent dies -- a hanging
fault script, a testparm cut off by SIGKILL -- therefore outlives it and is re-parented.
In production the unit's `KillMode=mixed` ends what is left in the cgroup; in a test
nothing would, so the test records the agent's descendants before it signals the agent
and kills those that remain afterwards. A pid is matched with its start time, so a pid
the kernel has given to another process since is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

Identity = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of `pid`, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> set[Identity]:
    """Every process below `pid`, each with its start time."""
    parents: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                parents.setdefault(found[0], []).append(int(entry.name))
                started[int(entry.name)] = found[1]
    result: set[Identity] = set()
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        if child in started:
            result.add((child, started[child]))
        todo += parents.get(child, [])
    return result


def kill_survivors(recorded: set[Identity]) -> list[int]:
    """SIGKILL each recorded process that still runs as the same process; their pids."""
    killed = []
    for pid, start in sorted(recorded):
        found = _stat(pid)
        if found is not None and found[1] == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed
