"""Other plugins' checks inside the share guests (`GuestStep.check`), off the pass.

A step's effect can be undone between jobs: a guest's machine account deleted in the
domain, its winbind stopped. Each step with a check says how often to look
(`check_interval`); one scheduled job per guest mode, every `TICK` seconds, runs the
checks that are due in the guests that run, one after another, and keeps what they
found. A pass runs when that changes; it runs the step again for a guest whose check
found a reason (`GuestModePlugin._repairs`), at most once per `repair_min_interval`, and
the health check reports the reason meanwhile.

A check that raises is logged and counts as no evidence: a broken check must not make
the agent rejoin guests in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from smbgw_agent.platform.guests import GuestShell, GuestStep

log = logging.getLogger(__name__)
TICK = 10.0


@dataclass(frozen=True)
class CheckReading:
    at: float = 0.0
    broken: Mapping[int, Mapping[str, str]] = field(default_factory=dict)  # vmid -> step name -> reason


class GuestChecks:
    def __init__(self, guest: str = "guest") -> None:
        self.guest = guest  # "container", "VM": for the log
        self.value = CheckReading()
        self._checked: dict[tuple[int, str], tuple[float, str | None]] = {}  # last check and what it found
        self._lock = threading.Lock()

    def run(self, shell_for: Callable[[int], GuestShell], steps: Mapping[int, Sequence[GuestStep]],
            running: Collection[int], clock: float | None = None) -> bool:
        """The due checks of the guests that run; True when what they found changed."""
        now = time.time() if clock is None else clock
        broken: dict[int, dict[str, str]] = {}
        for vmid, found in sorted(steps.items()):
            if vmid not in running:
                continue
            for step in found:
                if step.check is None:
                    continue
                last = self._checked.get((vmid, step.name))
                if last is None or now - last[0] >= step.check_interval:
                    last = (now, self._check(step, shell_for, vmid))
                    self._checked[(vmid, step.name)] = last
                if last[1]:
                    broken.setdefault(vmid, {})[step.name] = last[1]
        wanted = {(vmid, step.name) for vmid, found in steps.items() for step in found}
        for key in set(self._checked) - wanted:
            del self._checked[key]
        with self._lock:
            before, self.value = self.value, CheckReading(now, broken)
        return dict(before.broken) != broken

    def _check(self, step: GuestStep, shell_for: Callable[[int], GuestShell], vmid: int) -> str | None:
        assert step.check is not None
        try:
            reason = step.check(shell_for(vmid))
        except Exception as exc:
            log.warning("%s %s: the check of %s failed: %s", self.guest, vmid, step.name, exc)
            return None
        if reason:
            log.warning("%s %s: %s: %s", self.guest, vmid, step.name, reason)
        return str(reason)[:300] if reason else None
