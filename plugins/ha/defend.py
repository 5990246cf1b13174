"""Watching the addresses we hold: ongoing conflict detection (RFC 5227 2.4, RFC 4862 5.4.4).

The probe proves an address free only at the moment it is claimed. A host configured
with the same address later (a copied network config, a VM restored from an old backup)
splits the clients between the two; nothing on the node notices until users call. The
defender listens on every interface that carries an address of ours for ARP packets and
neighbour advertisements in which another MAC uses one of them, and follows RFC 5227's
policy (b), made for hosts that should keep their address but must not fight for it:

- the first conflict is defended: one announcement, so clients and switches that just
  learnt the other MAC come back, and a host that follows the RFC gives way;
- another conflict after that announcement (the frames of the same announcement, within
  a second, do not count) and within DEFEND_INTERVAL (10 s) of the first means the other
  host insists: the address is
  ceded. The plugin releases it at its next pass and reports `vip conflict` with the
  other MAC; it is claimed again only when a probe finds it free (the retry with backoff).
  Two holders are worse than none: a client's TCP session moves between them at every
  ARP refresh.

One socket per interface and family, filtered in the kernel to ARP or to neighbour
advertisements, read by one thread that sleeps in `select` until a frame arrives.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..linkprobe import packets, probe

log = logging.getLogger(__name__)
DEFEND_INTERVAL = 10.0  # RFC 5227 section 1.1
RETRY = 5.0  # seconds before a listener that could not be opened is tried again


@dataclass(frozen=True)
class Held:
    """An address this node holds, on the interface with our `mac`."""

    address: str
    interface: str
    mac: bytes

    @property
    def ip(self) -> packets.Address:
        return ipaddress.ip_address(self.address)

    @property
    def key(self) -> tuple[str, int]:
        """The socket that hears conflicts for it: interface and EtherType."""
        return self.interface, packets.ethertype(self.ip)


class Policy:
    """RFC 5227's policy (b) as a decision per conflicting frame: "defend", "cede", or
    "same" (part of the announcement already defended against).

    One announcement is often several frames (a gratuitous ARP request and reply, a
    burst of three): frames within SAME_ANNOUNCEMENT of the defended one are that same
    announcement, not the other host insisting after it heard our answer.
    """

    SAME_ANNOUNCEMENT = 1.0

    def __init__(self, interval: float = DEFEND_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def decide(self, address: str, now: float) -> str:
        last = self._last.get(address)
        if last is not None and now - last < self.SAME_ANNOUNCEMENT:
            return "same"
        if last is not None and now - last < self.interval:
            self._last.pop(address, None)
            return "cede"
        self._last[address] = now
        return "defend"

    def forget(self, address: str) -> None:
        self._last.pop(address, None)


Announce = Callable[[str, str, bytes], None]
OnCede = Callable[[str, str], None]


class Defender:
    """The thread that listens for conflicts on held addresses. `watch()` says which
    addresses are held now (after every pass); `on_cede(address, other_mac)` is called
    on that thread when one must be given up."""

    def __init__(self, announce: Announce, on_cede: OnCede, clock: Callable[[], float] = time.monotonic,
                 open_listener: Callable[[str, int], socket.socket] = probe.listener) -> None:
        self._announce = announce
        self._on_cede = on_cede
        self._clock = clock
        self._open = open_listener
        self.policy = Policy()
        self._held: frozenset[Held] = frozenset()
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._stopped = self._closed = False
        self._thread: threading.Thread | None = None
        self.problems: dict[tuple[str, int], str] = {}  # sockets that could not be opened, and why

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="smbgw-vip-defend", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._wake_read)
                os.close(self._wake_write)

    def watch(self, held: Iterable[Held]) -> None:
        held = frozenset(held)
        with self._lock:
            if held == self._held:
                return
            for gone in self._held - held:
                self.policy.forget(gone.address)
            self._held = held
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake is pending anyway
                os.write(self._wake_write, b"x")

    # ---- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        sockets: dict[tuple[str, int], socket.socket] = {}
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        return
                    held = self._held
                self._sync(sockets, {entry.key for entry in held})
                keys = {sock.fileno(): key for key, sock in sockets.items()}
                # A socket that could not be opened (the interface is not there yet) is
                # tried again after RETRY; otherwise only a frame or a wake ends the wait.
                readable, _, _ = select.select([self._wake_read, *keys], [], [], RETRY if self.problems else None)
                for fd in readable:
                    if fd == self._wake_read:
                        os.read(self._wake_read, 4096)
                        continue
                    key = keys[fd]
                    try:
                        self._read(sockets[key], [entry for entry in held if entry.key == key])
                    except OSError as exc:  # the link went away or down: open it again later
                        sockets.pop(key).close()
                        self.problems[key] = f"reading {key[0]}: {exc.strerror or exc}"
                        log.warning("watching %s for address conflicts: %s", key[0], self.problems[key])
        except Exception:  # never let a bad frame or a vanished link end the watch silently
            log.exception("watching held addresses for conflicts stopped")
        finally:
            for sock in sockets.values():
                sock.close()

    def _sync(self, sockets: dict[tuple[str, int], socket.socket], wanted: set[tuple[str, int]]) -> None:
        for key in set(sockets) - wanted:
            sockets.pop(key).close()
        self.problems = {key: problem for key, problem in self.problems.items() if key in wanted}
        for key in wanted - set(sockets):
            try:
                sockets[key] = self._open(*key)
                self.problems.pop(key, None)
            except probe.ProbeError as exc:
                if self.problems.get(key) != str(exc):
                    log.warning("cannot watch %s for address conflicts: %s", key[0], exc)
                self.problems[key] = str(exc)

    def _read(self, sock: socket.socket, held: list[Held]) -> None:
        for frame in probe.pending(sock):
            for entry in held:
                other = packets.held_conflict(frame, entry.mac, entry.ip)
                if other is not None:
                    self.conflict(entry, other)

    def conflict(self, entry: Held, other: bytes) -> None:
        """Another host (`other`) uses `entry`'s address: defend it once, or cede it."""
        with self._lock:
            if entry not in self._held:  # ceded a frame ago, or released meanwhile
                return
        shown = packets.mac_text(other)
        decision = self.policy.decide(entry.address, self._clock())
        if decision == "same":
            return
        if decision == "defend":
            log.warning("address conflict: another host (%s) uses %s on %s, which this node holds; "
                        "defending it with an announcement", shown, entry.address, entry.interface)
            try:
                self._announce(entry.interface, entry.address, entry.mac)
            except probe.ProbeError as exc:
                log.warning("defending %s on %s: %s", entry.address, entry.interface, exc)
            return
        log.error("address conflict: %s keeps using %s on %s within %gs of being answered; ceding the "
                  "address (two holders split the clients)", shown, entry.address, entry.interface,
                  self.policy.interval)
        with self._lock:
            self._held = self._held - {entry}
        self._on_cede(entry.address, shown)
