"""Ongoing conflict detection's decisions (plugins/ha/defend.py): RFC 5227's policy (b),
defend once and cede on a second conflict within DEFEND_INTERVAL. The listening itself,
on real sockets, is in tests/integration/test_ha_probe.py and test_ha_vip.py."""

from __future__ import annotations

import errno
import socket
import threading
import time

from smbgw_plugins.ha import defend
from smbgw_plugins.linkprobe import probe

OURS = bytes.fromhex("020000000001")
THEIRS = bytes.fromhex("020000000002")
HELD = defend.Held("192.0.2.50", "vmbr0", OURS)


def test_policy_defends_once_then_cedes_within_the_interval() -> None:
    policy = defend.Policy(10.0)
    assert policy.decide("a", 100.0) == "defend"
    # the rest of the same announcement (a gratuitous request and reply, a burst)
    assert policy.decide("a", 100.01) == "same"
    assert policy.decide("a", 100.9) == "same"
    assert policy.decide("a", 109.9) == "cede"
    # a third conflict after ceding starts over (the address is no longer held by then)
    assert policy.decide("a", 110.0) == "defend"


def test_policy_defends_again_after_the_interval() -> None:
    policy = defend.Policy(10.0)
    assert policy.decide("a", 100.0) == "defend"
    assert policy.decide("a", 110.0) == "defend"
    assert policy.decide("a", 125.0) == "defend"


def test_policy_keeps_addresses_apart_and_forgets() -> None:
    policy = defend.Policy(10.0)
    assert policy.decide("a", 100.0) == "defend"
    assert policy.decide("b", 101.0) == "defend"
    policy.forget("a")
    assert policy.decide("a", 102.0) == "defend"
    assert policy.decide("b", 103.0) == "cede"


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.announced: list[tuple[str, str, bytes]] = []
        self.ceded: list[tuple[str, str]] = []
        self.fail = fail

    def announce(self, interface: str, address: str, mac: bytes) -> None:
        self.announced.append((interface, address, mac))
        if self.fail:
            raise probe.ProbeError("interface vmbr0 is down")

    def cede(self, address: str, other: str) -> None:
        self.ceded.append((address, other))


def defender(recorder: Recorder, now: list[float]) -> defend.Defender:
    return defend.Defender(recorder.announce, recorder.cede, clock=lambda: now[0])


def test_the_first_conflict_is_answered_with_an_announcement_the_second_cedes() -> None:
    recorder, now = Recorder(), [50.0]
    guard = defender(recorder, now)
    try:
        guard.watch([HELD])
        guard.conflict(HELD, THEIRS)
        assert recorder.announced == [("vmbr0", "192.0.2.50", OURS)] and recorder.ceded == []
        now[0] = 50.01  # the reply that came with the same gratuitous ARP
        guard.conflict(HELD, THEIRS)
        assert len(recorder.announced) == 1 and recorder.ceded == []
        now[0] = 55.0
        guard.conflict(HELD, THEIRS)
        assert recorder.ceded == [("192.0.2.50", "02:00:00:00:00:02")]
        now[0] = 55.01  # the rest of that announcement: the address is given up already
        guard.conflict(HELD, THEIRS)
        assert len(recorder.announced) == 1 and len(recorder.ceded) == 1, "a ceded address is not announced"
    finally:
        guard.stop()


def test_a_failed_defence_is_logged_not_raised() -> None:
    recorder, now = Recorder(fail=True), [0.0]
    guard = defender(recorder, now)
    try:
        guard.watch([HELD])
        guard.conflict(HELD, THEIRS)
        assert recorder.announced and not recorder.ceded
    finally:
        guard.stop()


def test_an_address_released_and_held_again_starts_with_a_defence() -> None:
    recorder, now = Recorder(), [0.0]
    guard = defender(recorder, now)
    try:
        guard.watch([HELD])
        guard.conflict(HELD, THEIRS)
        guard.watch([])  # released (drained, moved) ...
        guard.watch([HELD])  # ... and claimed again: the earlier conflict does not count
        now[0] = 2.0
        guard.conflict(HELD, THEIRS)
        assert len(recorder.announced) == 2 and not recorder.ceded
    finally:
        guard.stop()


def test_conflicts_for_an_address_no_longer_watched_are_ignored() -> None:
    recorder = Recorder()
    guard = defender(recorder, [0.0])
    try:
        guard.conflict(HELD, THEIRS)  # a frame read just before the pass released the address
        assert not recorder.announced and not recorder.ceded
    finally:
        guard.stop()


def test_stop_is_safe_twice_and_watch_after_stop_does_nothing() -> None:
    guard = defender(Recorder(), [0.0])
    guard.start()
    guard.stop()
    guard.stop()
    guard.watch([HELD])  # a late pass after shutdown: no write to a closed descriptor


class VanishingLink:
    """A listener whose link goes away: readable, then its read fails as a packet
    socket's does when its interface goes down."""

    def __init__(self) -> None:
        self.inside, self.outside = socket.socketpair()
        self.closed = False

    def fileno(self) -> int:
        return self.inside.fileno()

    def recvmsg(self, *_args: object) -> object:
        raise OSError(errno.ENETDOWN, "Network is down")

    def close(self) -> None:
        self.closed = True
        self.inside.close()
        self.outside.close()


def test_a_link_that_goes_away_is_watched_again_not_given_up() -> None:
    opened: list[VanishingLink] = []
    reopened = threading.Event()

    def open_listener(_interface: str, _ethertype: int) -> socket.socket:
        link = VanishingLink()
        opened.append(link)
        if len(opened) == 2:
            reopened.set()
        return link  # type: ignore[return-value]

    guard = defend.Defender(Recorder().announce, Recorder().cede, open_listener=open_listener)
    guard.start()
    try:
        guard.watch([HELD])
        deadline = time.monotonic() + 5
        while not opened and time.monotonic() < deadline:
            time.sleep(0.01)
        opened[0].outside.send(b"a frame")  # readable; the read fails
        assert reopened.wait(5), "the watch stopped after a read error"
        assert opened[0].closed
    finally:
        guard.stop()
