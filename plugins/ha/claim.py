"""Taking an address and letting the network know: probe, add, announce; and giving it back.

Claiming follows RFC 5227 (IPv4) and RFC 4862 (IPv6): probe first and never take an
address another host answers for, then add it, then announce it at once (gratuitous
ARP / unsolicited neighbour advertisement) so switches and clients that cached the
previous holder's MAC move over now rather than when their caches expire. The first
announcement goes out before the claim returns; the rest of the burst and a repeat a
few seconds later (for a switch port that was still coming up) come from a background
thread that is cancelled when the address is released.

Several addresses claimed in one pass are probed at the same time, so a pass that
claims ten addresses waits one probe window, not ten.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from smbgw_agent.effects import netlink
from smbgw_agent.effects.netlink import Link

from ..linkprobe import probe
from ..linkprobe.packets import mac_text
from .table import VipSettings
from .vips import Vip

log = logging.getLogger(__name__)
BURST_SPACING = 0.1


class ClaimError(Exception):
    """An address could not be claimed; `conflict` is the other holder's MAC, if that is why."""

    def __init__(self, message: str, conflict: str | None = None) -> None:
        super().__init__(message)
        self.conflict = conflict


@dataclass(order=True)
class _Due:
    when: float
    address: str = field(compare=False)
    interface: str = field(compare=False)
    mac: bytes = field(compare=False)
    generation: int = field(compare=False)


class Announcer:
    """Sends the announcements that follow a claim, off the reconcile thread."""

    def __init__(self, settings: VipSettings, send: Callable[[str, str, bytes], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._send = send or announce_now
        self._clock = clock
        self._queue: list[_Due] = []
        self._generation: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="smbgw-vip-announce", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def claimed(self, address: str, interface: str, mac: bytes) -> None:
        """The first announcement now (on the caller's thread), the rest scheduled."""
        self._send(interface, address, mac)
        self.sent += 1
        now = self._clock()
        times = [now + BURST_SPACING * i for i in range(1, self.settings.announce_count)]
        if self.settings.announce_repeat > 0:
            start = now + self.settings.announce_repeat
            times += [start + BURST_SPACING * i for i in range(self.settings.announce_count)]
        with self._cond:
            generation = self._generation.get(address, 0) + 1
            self._generation[address] = generation
            for when in times:
                heapq.heappush(self._queue, _Due(when, address, interface, mac, generation))
            self._cond.notify_all()

    def cancel(self, address: str) -> None:
        """The address was released: announcing it now would pull clients to a node that
        no longer answers."""
        with self._cond:
            self._generation[address] = self._generation.get(address, 0) + 1

    def _next(self) -> _Due | None:
        with self._cond:
            while not self._stopped:
                if not self._queue:
                    self._cond.wait()
                    continue
                due = self._queue[0]
                wait = due.when - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._queue)
                if self._generation.get(due.address) == due.generation:
                    return due
            return None

    def _run(self) -> None:
        while (due := self._next()) is not None:
            try:
                self._send(due.interface, due.address, due.mac)
                self.sent += 1
            except probe.ProbeError as exc:
                log.warning("announcing %s on %s: %s", due.address, due.interface, exc)


def announce_now(interface: str, address: str, mac: bytes) -> None:
    probe.announce(interface, ipaddress.ip_address(address), mac)


def _probe(vip: Vip, link: Link, settings: VipSettings) -> None:
    if settings.probe_window <= 0:
        return
    try:
        other = probe.probe(link.name, vip.ip, link.mac, window=settings.probe_window, probes=settings.probes)
    except probe.ProbeError as exc:
        raise ClaimError(str(exc)) from exc
    if other is not None:
        shown = mac_text(other)
        raise ClaimError(f"vip conflict: another host ({shown}) answers for {vip.address} on {link.name}; "
                         "the address is not claimed", conflict=shown)


def probe_all(claims: Sequence[tuple[Vip, Link]], settings: VipSettings) -> dict[str, ClaimError | None]:
    """Probe every address at once; the outcome per address (None: free)."""
    if not claims:
        return {}
    outcomes: dict[str, ClaimError | None] = {}
    with ThreadPoolExecutor(max_workers=min(16, len(claims)), thread_name_prefix="smbgw-vip-probe") as pool:
        futures = {vip.address: pool.submit(_probe, vip, link, settings) for vip, link in claims}
        for address, future in futures.items():
            error = future.exception()
            outcomes[address] = error if error is None or isinstance(error, ClaimError) else \
                ClaimError(f"probing {address} failed: {error}")
    return outcomes


def add(vip: Vip, link: Link, probed: bool) -> None:
    """Add the address; an IPv6 address we probed ourselves skips the kernel's second DAD
    (which would hold it tentative, unusable, for another second)."""
    try:
        netlink.add_address(link.index, vip.address, vip.prefixlen, link.name, nodad=probed and vip.ip.version == 6)
    except netlink.NetlinkError as exc:
        raise ClaimError(str(exc)) from exc


def release(vip: Vip, link: Link, prefixlen: int) -> bool:
    try:
        return netlink.remove_address(link.index, vip.address, prefixlen, link.name)
    except netlink.NetlinkError as exc:
        raise ClaimError(str(exc)) from exc
