"""The agent's only way to drive systemd units: the manager's D-Bus API, through pydbus.

Why D-Bus rather than ``systemctl``: the agent has to know whether a start or reload
*really* succeeded, and only the job's ``JobRemoved`` signal says so; parsing systemctl's
output and exit codes would be guesswork, and ``systemctl`` would need a timeout wrapper
of its own anyway.

Threading model -- why it looks the way it does: GDBus delivers a signal to the
*thread-default main context of the thread that subscribed*, at the time it subscribed.
The agent calls us from its reconcile thread, where nobody runs a main loop, and the
process-wide default context may belong to somebody else (or to nobody). So every
operation that waits for a signal creates its own ``GLib.MainContext``, pushes it as the
calling thread's default while it subscribes and waits, iterates only that context, and
pops it again. Nothing here touches the global default context, and several threads can
wait for their own jobs on one :class:`SystemdManager` at the same time (the underlying
``Gio.DBusConnection`` is thread-safe; ``call_sync`` needs no main loop).

Why a private connection instead of pydbus's ``SystemBus()``: the shared system-bus
singleton has exit-on-close set -- if the bus daemon restarted, GLib would terminate the
whole agent -- and it cannot be given a connect timeout or be closed by us.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from gi.repository import Gio, GLib
from pydbus.bus import Bus

from smbgw_agent.effects import deadline as pass_deadline

__all__ = [
    "SystemdError",
    "SystemdManager",
    "SystemdUnavailable",
    "UnitJobFailed",
    "UnitState",
]

_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
_UNIT_IFACE = "org.freedesktop.systemd1.Unit"
_PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
_JOB_MODE = "replace"
# One blocking D-Bus call's limit (see SystemdManager._call_limit); the unit's WatchdogSec
# is 30 s, three times this.
CALL_TIMEOUT = 10.0

# Remote error names that mean "nobody (sane) is answering", not "the unit is at fault".
_UNAVAILABLE_REMOTE_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
        "org.freedesktop.DBus.Error.NoServer",
        "org.freedesktop.DBus.Error.Timeout",
        "org.freedesktop.DBus.Error.TimedOut",
        "org.freedesktop.DBus.Error.LimitsExceeded",
    }
)


class SystemdError(Exception):
    """Common base, so callers that only care "systemd did not do it" catch one type."""


class SystemdUnavailable(SystemdError):
    """No bus, no systemd on it, or it stopped answering (retry later, not the unit's fault)."""


class UnitJobFailed(SystemdError):
    """systemd refused a job or the job did not finish with result ``done``.

    ``unit``, ``verb`` and ``result`` are kept as attributes so the reconciler can report
    them without parsing the message. ``result`` is systemd's job result (``failed``,
    ``canceled``, ``timeout``, ``dependency``, ``skipped``, ``invalid``), ``"timed out"``
    when we gave up waiting, or the D-Bus error name when systemd refused the call.
    """

    def __init__(
        self,
        message: str,
        *,
        unit: str | None = None,
        verb: str | None = None,
        result: str | None = None,
    ) -> None:
        super().__init__(message)
        self.unit = unit
        self.verb = verb
        self.result = result


@dataclass(frozen=True)
class UnitState:
    active_state: str
    sub_state: str
    # Lets callers tell "stopped" from "not installed" (LoadState "not-found"); defaulted so
    # code that builds a UnitState from the two states alone keeps working.
    load_state: str = "loaded"

    @property
    def is_active(self) -> bool:
        # A unit that is reloading is still serving; "activating" is not serving yet.
        return self.active_state in ("active", "reloading")


# --------------------------------------------------------------------------- GLib plumbing


@contextmanager
def _private_context() -> Iterator[Any]:
    """A fresh main context as this thread's default, so GDBus delivers our callbacks to it."""
    ctx = GLib.MainContext.new()
    ctx.push_thread_default()
    try:
        yield ctx
    finally:
        ctx.pop_thread_default()


def _iterate_until(ctx: Any, done: Callable[[], bool], timeout: float) -> bool:
    """Run ``ctx`` until ``done()`` or ``timeout`` seconds passed; True if done.

    A timeout source attached to the same context is what wakes a blocking iteration
    when nothing else arrives.
    """
    expired = False

    def on_timeout(*_args: Any) -> bool:
        nonlocal expired
        expired = True
        return False  # one-shot

    def on_tick(*_args: Any) -> bool:
        pass_deadline.beat()  # a pass waiting on a job is alive: keep the watchdog fed
        return True  # repeat

    source = GLib.timeout_source_new(max(0, math.ceil(timeout * 1000)))
    source.set_callback(on_timeout)
    source.attach(ctx)
    ticker = GLib.timeout_source_new(1000)
    ticker.set_callback(on_tick)
    ticker.attach(ctx)
    try:
        while not done():
            if expired:
                return False
            ctx.iteration(True)
        return True
    finally:
        ticker.destroy()
        source.destroy()


def _remote_name(error: Any) -> str | None:
    name = Gio.DBusError.get_remote_error(error)
    return str(name) if name else None


def _plain_message(error: Any) -> str:
    """The error text without GDBus's ``GDBus.Error:<name>:`` prefix."""
    message = str(error.message)
    name = _remote_name(error)
    prefix = f"GDBus.Error:{name}: "
    return message[len(prefix) :] if name and message.startswith(prefix) else message


def _is_transport_error(error: Any) -> bool:
    if _remote_name(error) in _UNAVAILABLE_REMOTE_ERRORS:
        return True
    io_codes = (
        Gio.IOErrorEnum.CLOSED,
        Gio.IOErrorEnum.TIMED_OUT,
        Gio.IOErrorEnum.CANCELLED,
        Gio.IOErrorEnum.BROKEN_PIPE,
        Gio.IOErrorEnum.NOT_CONNECTED,
        Gio.IOErrorEnum.CONNECTION_REFUSED,
    )
    return any(error.matches(Gio.io_error_quark(), code) for code in io_codes)


def _open_connection(address: str, timeout: float) -> Any:
    """Connect and say Hello within ``timeout``.

    Asynchronous on a private context so a socket that accepts but never answers (a hung
    or frozen bus daemon) costs ``timeout`` seconds, not forever.
    """
    try:
        if not Gio.dbus_is_supported_address(address):
            raise SystemdUnavailable(f"unsupported D-Bus address {address!r}")
    except GLib.Error as exc:
        raise SystemdUnavailable(f"invalid D-Bus address {address!r}: {exc.message}") from None
    flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    outcome: list[Any] = []

    def on_ready(_source: Any, result: Any, *_user_data: Any) -> None:
        try:
            outcome.append(Gio.DBusConnection.new_for_address_finish(result))
        except GLib.Error as exc:
            outcome.append(exc)

    with _private_context() as ctx:
        cancellable = Gio.Cancellable.new()
        Gio.DBusConnection.new_for_address(address, flags, None, cancellable, on_ready, None)
        if not _iterate_until(ctx, lambda: bool(outcome), timeout):
            cancellable.cancel()
            # Let the cancelled attempt report back, so it does not outlive its context.
            _iterate_until(ctx, lambda: bool(outcome), 2.0)
            if outcome and isinstance(outcome[0], Gio.DBusConnection):
                outcome[0].close_sync(None)
            raise SystemdUnavailable(f"D-Bus at {address} did not answer within {timeout:g}s")
    result = outcome[0]
    if isinstance(result, GLib.Error):
        raise SystemdUnavailable(f"cannot connect to D-Bus at {address}: {result.message}")
    return result


# --------------------------------------------------------------------------- the manager


class SystemdManager:
    """A connection to one systemd manager; safe to share between threads.

    Jobs are started in mode ``replace`` (what ``systemctl`` does), and every job method
    returns only once systemd reports the job finished. A job that we stopped waiting for
    is left to systemd: cancelling it could leave a half-started service, and the next
    reconcile pass will look at the unit's state anyway.
    """

    def __init__(self, bus: Any, *, address: str, timeout: float) -> None:
        self._bus = bus
        self._address = address
        self._timeout = timeout
        # Checked while waiting for a job (about once a second): True abandons the wait.
        self.cancelled: Callable[[], bool] = lambda: False
        try:
            manager_object = bus.get(_SYSTEMD, _MANAGER_PATH, timeout=self._call_limit(timeout))
            self._manager = manager_object[_MANAGER_IFACE]
        except GLib.Error as exc:
            raise SystemdUnavailable(f"systemd does not answer on {address}: {_plain_message(exc)}") from None
        except KeyError as exc:
            raise SystemdUnavailable(f"{_SYSTEMD} on {address} does not look like systemd: {exc}") from None
        try:
            # Without a subscriber systemd does not emit JobRemoved at all. The
            # subscription is per connection and lasts until it closes.
            self._manager.Subscribe(timeout=self._call_limit(timeout))
        except GLib.Error as exc:
            if _remote_name(exc) != "org.freedesktop.systemd1.AlreadySubscribed":
                raise SystemdUnavailable(f"cannot subscribe to systemd on {address}: {_plain_message(exc)}") from None

    @classmethod
    def connect(cls, address: str | None = None, timeout: float = 30.0) -> SystemdManager:
        """Connect to systemd on ``address`` (``None``: the system bus).

        ``timeout`` bounds every wait for a job; connecting and every single D-Bus call
        get at most CALL_TIMEOUT of it (a bus that accepts but never answers must not
        keep the agent from its watchdog longer than one call).
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if address is None:
            try:
                address = str(Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None))
            except GLib.Error as exc:
                raise SystemdUnavailable(f"no system bus: {exc.message}") from None
        connection = _open_connection(address, cls._call_limit(timeout))
        try:
            return cls(Bus(connection), address=address, timeout=timeout)
        except BaseException:
            _close_quietly(connection)
            raise

    @staticmethod
    def _call_limit(limit: float) -> float:
        """A single D-Bus call blocks without feeding the watchdog, so it gets at most
        CALL_TIMEOUT (systemd answers in milliseconds; only a hung bus takes longer).
        Waiting for a job to finish iterates and keeps the watchdog fed."""
        return min(limit, CALL_TIMEOUT)

    @property
    def address(self) -> str:
        return self._address

    @property
    def closed(self) -> bool:
        """True once the bus went away; the manager is then useless, connect() anew."""
        return bool(self._bus.con.is_closed())

    def _check_open(self, verb: str, unit: str) -> None:
        # Subscribing on a closed connection only logs GLib criticals; say it plainly.
        if self.closed:
            raise SystemdUnavailable(f"{verb} {unit}: connection to {self._address} is closed")

    def close(self) -> None:
        _close_quietly(self._bus.con)

    def __enter__(self) -> SystemdManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------

    def start(self, unit: str, *, timeout: float | None = None) -> None:
        self._run_job("start", "StartUnit", unit, timeout)

    def stop(self, unit: str, *, timeout: float | None = None) -> None:
        self._run_job("stop", "StopUnit", unit, timeout)

    def restart(self, unit: str, *, timeout: float | None = None) -> None:
        self._run_job("restart", "RestartUnit", unit, timeout)

    def reload(self, unit: str, *, timeout: float | None = None) -> None:
        self._run_job("reload", "ReloadUnit", unit, timeout)

    def _run_job(self, verb: str, method: str, unit: str, timeout: float | None) -> None:
        self._check_open(verb, unit)
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        finished: dict[str, str] = {}

        def on_job_removed(_job_id: int, job_path: str, _unit: str, result: str) -> None:
            finished[str(job_path)] = str(result)

        with _private_context() as ctx:
            # Subscribed before the call: a job that ends at once cannot slip past us.
            # Signals queue up in ctx until we iterate it, so none is lost either way.
            subscription = self._manager.JobRemoved.connect(on_job_removed)
            try:
                try:
                    job = str(getattr(self._manager, method)(unit, _JOB_MODE, timeout=self._call_limit(limit)))
                except GLib.Error as exc:
                    raise self._call_error(exc, verb, unit) from None
                remaining = deadline - time.monotonic()
                if not _iterate_until(ctx, lambda: job in finished or self.cancelled(), remaining):
                    raise UnitJobFailed(
                        f"{verb} {unit}: timed out after {limit:g}s waiting for job {job}",
                        unit=unit,
                        verb=verb,
                        result="timed out",
                    )
            finally:
                subscription.unsubscribe()
        if job not in finished:
            # Stopping: the job is left to systemd. Our own stop job may be what it waits
            # for (the unit is ordered after smbd), so waiting on would only deadlock.
            raise UnitJobFailed(
                f"{verb} {unit}: stopped waiting for job {job}: the agent is stopping",
                unit=unit, verb=verb, result="abandoned",
            )
        result = finished[job]
        if result != "done":
            raise UnitJobFailed(
                f"{verb} {unit}: job {job} finished with result {result!r}",
                unit=unit,
                verb=verb,
                result=result,
            )

    def enable(self, unit: str, *, timeout: float | None = None) -> bool:
        """Enable `unit` (and unmask it first if the package or an image masked it), as
        `systemctl enable` would, then have systemd reload its unit files. True if
        anything changed."""
        self._check_open("enable", unit)
        limit = self._call_limit(self._timeout if timeout is None else timeout)
        try:
            state = str(self._manager.GetUnitFileState(unit, timeout=limit))
            if state == "enabled":
                return False
            if state.startswith("masked"):
                self._manager.UnmaskUnitFiles([unit], False, timeout=limit)
            self._manager.EnableUnitFiles([unit], False, True, timeout=limit)
            self._manager.Reload(timeout=limit)
        except GLib.Error as exc:
            raise self._call_error(exc, "enable", unit) from None
        return True

    def disable(self, unit: str, *, timeout: float | None = None) -> bool:
        """Disable `unit` as `systemctl disable` would (it no longer starts at boot), then
        have systemd reload its unit files. True if it was enabled."""
        self._check_open("disable", unit)
        limit = self._call_limit(self._timeout if timeout is None else timeout)
        try:
            state = str(self._manager.GetUnitFileState(unit, timeout=limit))
            if state != "enabled":
                return False
            self._manager.DisableUnitFiles([unit], False, timeout=limit)
            self._manager.Reload(timeout=limit)
        except GLib.Error as exc:
            raise self._call_error(exc, "disable", unit) from None
        return True

    # -- state ----------------------------------------------------------------------------

    def state(self, unit: str, *, timeout: float | None = None) -> UnitState:
        """Both states from one GetAll, so they belong to the same moment."""
        self._check_open("state", unit)
        limit = self._call_limit(self._timeout if timeout is None else timeout)
        try:
            path = self._manager.LoadUnit(unit, timeout=limit)
            unit_object = self._bus.get(_SYSTEMD, path, timeout=limit)
            properties = unit_object[_PROPERTIES_IFACE].GetAll(_UNIT_IFACE, timeout=limit)
        except GLib.Error as exc:
            raise self._call_error(exc, "state", unit) from None
        except KeyError as exc:
            raise UnitJobFailed(f"state {unit}: unexpected unit object: {exc}", unit=unit, verb="state") from None
        return UnitState(
            active_state=str(properties.get("ActiveState", "")),
            sub_state=str(properties.get("SubState", "")),
            load_state=str(properties.get("LoadState", "")),
        )

    def _call_error(self, exc: Any, verb: str, unit: str) -> SystemdError:
        name = _remote_name(exc)
        message = _plain_message(exc)
        if _is_transport_error(exc):
            return SystemdUnavailable(f"{verb} {unit}: systemd on {self._address}: {message}")
        return UnitJobFailed(
            f"{verb} {unit}: {name + ': ' if name else ''}{message}",
            unit=unit,
            verb=verb,
            result=name or "error",
        )

    def __repr__(self) -> str:
        return f"<SystemdManager {self._address}>"


def _close_quietly(connection: Any) -> None:
    """Closing a connection whose peer is gone may fail; we are leaving anyway."""
    try:
        if not connection.is_closed():
            connection.close_sync(None)
    except GLib.Error:
        pass
