"""Work plugins do inside a guest (a share's container or VM) that its mode plugin runs.

A guest is a machine of its own: joining it to a domain, say, happens inside it, with its
own tools, and only once the guest runs with its smb.conf written. The mode plugin knows
how to reach its guests (`pct exec`, the QEMU guest agent); the other plugins know what
to do there. So a plugin hands over `GuestStep`s while the pass plans (pure, like every
planning hook), and the mode plugin runs them in its job for that guest, through a
`GuestShell` of its own. Neither names the other.

A step is idempotent (it checks before it acts: a joined guest is not joined again), so
running it again is always safe. Its `inputs` digest says when it must run again: the
mode plugin records it after a run, and a different digest at a later pass (the
password file replaced, the realm changed) runs the step again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from smbgw_agent.effects.runner import RunsCommands
from smbgw_agent.platform.jobs import JobProgress


class GuestShell(RunsCommands, Protocol):
    """Commands and files inside one guest. `run` takes what the agent's runner takes,
    so a tool written for the host's runner runs inside a guest unchanged: `stdin` (a
    password) never reaches any argv, `secrets` are redacted from what is kept, `env` is
    the command's whole environment inside the guest."""

    target: str

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """`text` at `path` inside the guest, replaced whole."""
        ...


# What a step does: returns one line for the job's result and log.
StepAction = Callable[[GuestShell, JobProgress], str]
# Whether a step's effect still holds in a running guest: why not (the step must run
# again), or None. No evidence (a tool that cannot tell) is None, never a reason.
StepCheck = Callable[[GuestShell], "str | None"]


@dataclass(frozen=True)
class GuestStep:
    """One plugin's work inside a guest.

    `name` identifies the step across passes (``ad:join``); `inputs` is a digest of
    everything the step acts on (a change runs it again); `setup` runs after the guest
    started with its smb.conf; `teardown` (optional) runs while the guest still runs,
    before its mode plugin destroys it, and must not stop the destruction by failing
    for a reason outside the guest (the mode plugin logs what it raised and goes on).

    `check` (optional) is run by the mode plugin every `check_interval` seconds in each
    running guest, off the pass; a reason it returns is reported and runs `setup` again,
    but not again within `repair_min_interval` of the last run it caused: a repair that
    breaks again at once has a cause the step cannot fix, and is reported, not looped.
    """

    name: str
    inputs: str
    setup: StepAction
    teardown: StepAction | None = None
    what: str = ""  # for plans: "join the domain SMBGW.TEST"
    check: StepCheck | None = None
    check_interval: float = 60.0
    repair_min_interval: float = 3600.0


def check_steps(plugin: str, steps: Sequence[object]) -> list[GuestStep]:
    """`steps` as a plugin returned them: GuestSteps with unique names, or TypeError."""
    checked: list[GuestStep] = []
    for step in steps:
        if not isinstance(step, GuestStep):
            raise TypeError(f"smbgw_guest_steps gave {step!r}, not a GuestStep")
        if not step.name.startswith(f"{plugin}:"):
            raise TypeError(f"smbgw_guest_steps gave a step named {step.name!r}: it must start with {plugin + ':'!r}")
        checked.append(step)
    return checked
