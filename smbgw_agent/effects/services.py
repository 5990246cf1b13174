"""Keeping services running and reloading them: systemd over D-Bus, or a fallback.

On a node the agent talks to systemd (pydbus) so that units stay under systemd's
control. Inside a container without systemd, or in the `--root` sandbox, there is no
manager to ask; the agent then signals the daemon directly (e.g. `smbcontrol ...
reload-config`) and says so in status, so nobody mistakes one path for the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.effects.systemd import SystemdError, SystemdManager, SystemdUnavailable, UnitState

log = logging.getLogger(__name__)
T = TypeVar("T")
# After systemd could not be reached, how long the direct fallback is used before it is
# asked again: a bus that accepts but never answers costs one connect timeout per
# interval, not one per call (a pass makes several).
RECONNECT_INTERVAL = 30.0


class ServiceError(Exception):
    """A service could not be started or reloaded."""


@dataclass
class ServiceReport:
    unit: str
    control: str  # "systemd" or "direct"
    active: bool | None
    detail: str = ""


class ServiceControl:
    def __init__(
        self,
        runner: Runner,
        use_systemd: bool = True,
        connect: Callable[[], SystemdManager] = SystemdManager.connect,
    ) -> None:
        self.runner = runner
        self.use_systemd = use_systemd
        self._connect = connect
        self._manager: SystemdManager | None = None
        self.unavailable_reason = "disabled (sandbox)" if not use_systemd else ""
        self.reports: dict[str, ServiceReport] = {}
        # True once the agent is stopping: waits for systemd jobs are abandoned at once.
        self.cancelled: Callable[[], bool] = lambda: False
        self._retry_at = 0.0  # monotonic; no new connection attempt before it

    def manager(self) -> SystemdManager | None:
        if not self.use_systemd:
            return None
        if self._manager is not None and self._manager.closed:
            self._manager = None  # the bus went away (dbus restarted): reconnect
        if self._manager is None:
            if time.monotonic() < self._retry_at:
                return None
            try:
                self._manager = self._connect()
            except SystemdUnavailable as exc:
                self._lost(str(exc))
                return None
            self._manager.cancelled = self._stopping
            if self.unavailable_reason:
                log.info("systemd answers on D-Bus again: services are controlled through it")
            self.unavailable_reason = ""
        return self._manager

    def _lost(self, reason: str) -> None:
        """systemd cannot be reached: use the direct fallback, say so once, ask again later."""
        if not self.unavailable_reason:
            log.warning("systemd cannot be reached (%s): services are controlled directly, asking systemd "
                        "again every %.0fs", reason, RECONNECT_INTERVAL)
        self.unavailable_reason = reason
        self._manager = None
        self._retry_at = time.monotonic() + RECONNECT_INTERVAL

    def _stopping(self) -> bool:
        return self.cancelled()  # looked up at call time: the daemon sets `cancelled` later

    @property
    def mode(self) -> str:
        return "systemd" if self.manager() else "direct"

    def ensure_active(self, unit: str) -> ServiceReport:
        """Start `unit` through systemd if it is not active; without systemd only report."""
        manager = self.manager()
        if manager is None:
            report = ServiceReport(unit, "direct", None, f"no systemd: {self.unavailable_reason}")
        else:
            try:
                state: UnitState = manager.state(unit)
                if not state.is_active:
                    log.warning("%s is %s/%s; starting it", unit, state.active_state, state.sub_state)
                    manager.start(unit)
                    state = manager.state(unit)
                report = ServiceReport(unit, "systemd", state.is_active, state.sub_state)
            except SystemdUnavailable as exc:
                # Nobody answers: nothing is known about the unit (never "inactive").
                self._lost(str(exc))
                report = ServiceReport(unit, "direct", None, f"no systemd: {exc}")
            except SystemdError as exc:
                report = ServiceReport(unit, "systemd", False, str(exc))
        self.reports[unit] = report
        return report

    def ensure_enabled(self, unit: str) -> bool | None:
        """Enable `unit` through systemd (it then starts at boot); None without systemd.
        True if it was not enabled before."""
        return self._call("enabling", unit, lambda manager: manager.enable(unit))

    def stop(self, unit: str) -> None:
        """Stop `unit` through systemd (nothing without systemd)."""
        self._call("stopping", unit, lambda manager: manager.stop(unit))

    def disable(self, unit: str) -> bool | None:
        """Disable `unit` through systemd; None without systemd, True if it was enabled."""
        return self._call("disabling", unit, lambda manager: manager.disable(unit))

    def _call(self, verb: str, unit: str, call: Callable[[SystemdManager], T]) -> T | None:
        manager = self.manager()
        if manager is None:
            return None
        try:
            return call(manager)
        except SystemdError as exc:
            if isinstance(exc, SystemdUnavailable):
                self._lost(str(exc))
            raise ServiceError(f"{verb} {unit} through systemd failed: {exc}") from exc

    def restart(self, unit: str) -> None:
        """Restart `unit` through systemd (nothing without systemd)."""
        self._call("restarting", unit, lambda manager: manager.restart(unit))

    def is_active(self, unit: str) -> bool | None:
        """Whether `unit` is active, without changing anything (None: no systemd to ask)."""
        manager = self.manager()
        if manager is None:
            return None
        try:
            state = manager.state(unit)
        except SystemdUnavailable as exc:
            # Not an answer about the unit: a bus that times out must not read as
            # "smbd (or winbind, ctdb) is down" and have its addresses released.
            self._lost(str(exc))
            self.reports[unit] = ServiceReport(unit, "direct", None, f"no systemd: {exc}")
            return None
        except SystemdError as exc:
            self.reports[unit] = ServiceReport(unit, "systemd", False, str(exc))
            return False
        self.reports[unit] = ServiceReport(unit, "systemd", state.is_active, state.sub_state)
        return state.is_active

    def reload(self, unit: str, direct_argv: Sequence[str]) -> str:
        """Reload through systemd when there is one, else run `direct_argv`. Returns how."""
        manager = self.manager()
        if manager is not None:
            try:
                manager.reload(unit)
                return "systemd"
            except SystemdError as exc:
                if isinstance(exc, SystemdUnavailable):
                    self._lost(str(exc))
                raise ServiceError(f"reloading {unit} through systemd failed: {exc}") from exc
        try:
            result = self.runner.run(direct_argv, timeout=15)
        except CommandError as exc:
            raise ServiceError(f"reloading {unit} failed: {exc}") from exc
        said = (result.stdout.strip() or result.stderr.strip()).splitlines()
        if said:
            # A reload command says nothing when it worked (`smbcontrol ... reload-config`);
            # anything else is not a confirmation, so the reload is tried again.
            raise ServiceError(f"reloading {unit}: {direct_argv[0]} answered {said[0][:200]!r}, not silence")
        return "direct"
