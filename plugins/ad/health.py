"""One round of the membership checks, judged. Pure: readings in, verdicts out.

The health loop reads five things (`tool.read_membership`): the domain's SRV records in
DNS, the DC's answer to `net ads info` (which DC, its clock), `net ads testjoin` (does
the machine account work), whether winbindd runs, and `wbinfo --ping-dc` (does winbindd
reach the DC). One fault shows in several of them: with the DC down, testjoin and
ping-dc fail too; with a reset machine password, ping-dc fails as well. So each check's
verdict here names the one typed reason that explains it, and a check that could not be
judged because another failed first is "skipped", not failed a second time:

    dns      the _ldap._tcp.<realm> SRV records resolve          -> dns
    dc       the DC answers LDAP, and winbindd's NETLOGON to it   -> dc_unreachable
    clock    the DC's clock is within Kerberos' 5 minutes         -> clock_skew (warning at 1 min)
    trust    the machine account works (testjoin)                 -> trust_broken, not_joined
    winbind  winbindd runs and answers                            -> winbind_down

`trust` tells a node that never joined (`not_joined`: join it) from one whose account the
domain no longer accepts (`trust_broken`: rejoin it, rate-limited). Skew beyond Kerberos'
limit is reported as `clock_skew` even when testjoin fails with it, so that a clock
problem is never "fixed" by a rejoin that would not help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import (
    CLOCK_SKEW,
    DC_UNREACHABLE,
    DNS,
    KERBEROS_SKEW,
    NOT_JOINED,
    SKEW_WARNING,
    TRUST_BROKEN,
    WINBIND_DOWN,
    AdsInfo,
    PingDc,
    SrvRecord,
    Testjoin,
)

CHECKS = ("dns", "dc", "clock", "trust", "winbind")
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
# What testjoin says when it found no DC at all (its own words, not a trust problem).
_NO_DC_WORDS = ("No logon servers", "Didn't find the ldap server", "NT_STATUS_NO_LOGON_SERVERS",
                "Cannot contact any KDC", "NT_STATUS_IO_TIMEOUT", "Connection refused")


@dataclass(frozen=True)
class Readings:
    """What one round read; a string in place of a reading is why it could not be read."""

    at: float
    srv: Sequence[SrvRecord] | str
    info: AdsInfo | str
    testjoin: Testjoin | str
    winbind_active: bool | None  # None: no systemd to ask
    ping: PingDc | str | None  # None: not asked (winbindd is not running)


@dataclass(frozen=True)
class Verdict:
    check: str
    state: str  # ok | failed | skipped
    detail: str
    reason: str | None = None  # set when failed
    warning: bool = False  # ok, but worth a look (a clock a minute off)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "reason": self.reason, "warning": self.warning}


@dataclass(frozen=True)
class Membership:
    """The judged round: every check's verdict and what the status shows."""

    at: float
    verdicts: tuple[Verdict, ...]
    dc: str | None = None  # the DC answering (its DNS name)
    dc_address: str | None = None
    offset: int | None = None  # seconds, DC minus node
    joined: bool | None = None  # None: cannot tell (no DC answered)
    reasons: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not self.reasons

    def verdict(self, check: str) -> Verdict:
        return next(v for v in self.verdicts if v.check == check)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "healthy": self.healthy, "joined": self.joined, "reasons": list(self.reasons),
                "dc": self.dc, "dc_address": self.dc_address, "clock_offset": self.offset,
                "checks": {v.check: v.to_dict() for v in self.verdicts}}

    def signature(self) -> tuple[object, ...]:
        """What a change of calls for a pass (status, recovery): not the details' wording."""
        return (self.joined, self.reasons, self.dc, tuple((v.check, v.state, v.warning) for v in self.verdicts))


def _dns(readings: Readings, realm: str) -> Verdict:
    name = f"_ldap._tcp.{realm.lower()}"
    if isinstance(readings.srv, str):
        return Verdict("dns", FAILED, f"cannot look up {name}: {readings.srv}", DNS)
    if not readings.srv:
        return Verdict("dns", FAILED, f"{name} has no SRV record: this node's DNS server does not serve the "
                       "domain (point /etc/resolv.conf at the domain's DNS servers)", DNS)
    targets = ", ".join(sorted({record.target for record in readings.srv})[:5])
    return Verdict("dns", OK, f"{name}: {len(readings.srv)} record(s): {targets}")


def _no_dc(testjoin: Testjoin | str) -> bool:
    said = testjoin if isinstance(testjoin, str) else ("" if testjoin.ok else testjoin.said)
    return any(words.casefold() in said.casefold() for words in _NO_DC_WORDS)


def _trust(readings: Readings, info_ok: bool, skewed: bool, ever_joined: bool) -> Verdict:
    testjoin = readings.testjoin
    if isinstance(testjoin, Testjoin) and testjoin.ok:
        return Verdict("trust", OK, "the machine account works (net ads testjoin: Join is OK)")
    said = testjoin if isinstance(testjoin, str) else testjoin.said
    if not info_ok:
        return Verdict("trust", SKIPPED, f"no DC to ask ({said})")
    if _no_dc(testjoin):
        return Verdict("trust", FAILED, f"a DC answers LDAP, but the machine account's logon found no KDC or "
                       f"DC ({said})", DC_UNREACHABLE)
    if skewed:
        return Verdict("trust", FAILED, f"Kerberos refuses the clock difference ({said})", CLOCK_SKEW)
    never = isinstance(readings.info, AdsInfo) and readings.info.password_changed == 0
    unjoined = isinstance(testjoin, Testjoin) and testjoin.unjoined
    if never or unjoined or not ever_joined:
        return Verdict("trust", FAILED, f"this node is not joined to the domain ({said})", NOT_JOINED)
    if isinstance(testjoin, Testjoin) and testjoin.refused:
        return Verdict("trust", FAILED, f"the domain no longer accepts this node's machine account ({said})",
                       TRUST_BROKEN)
    # No evidence either way (a DC that is starting, a network error): report, never rejoin.
    return Verdict("trust", FAILED, f"the machine account could not be checked ({said})", DC_UNREACHABLE)


def _clock(info: AdsInfo | str) -> tuple[Verdict, bool]:
    if isinstance(info, str):
        return Verdict("clock", SKIPPED, "no DC to compare with"), False
    if info.offset is None:
        return Verdict("clock", FAILED, f"{info.ldap_server_name} answered, but its time could not be read "
                       "(LDAP over TCP port 389 blocked?)", DC_UNREACHABLE), False
    offset = info.offset
    shown = f"{abs(offset)} s {'behind' if offset > 0 else 'ahead of'} {info.ldap_server_name}"
    level = info.skew_level()
    if level == "error":
        return Verdict("clock", FAILED, f"this node's clock is {shown}, beyond Kerberos' {KERBEROS_SKEW} s: "
                       "fix its time synchronisation (chrony, systemd-timesyncd)", CLOCK_SKEW), True
    if level == "warning":
        return Verdict("clock", OK, f"this node's clock is {shown} (more than {SKEW_WARNING} s: check its time "
                       "synchronisation before it reaches 5 minutes)", warning=True), False
    return Verdict("clock", OK, f"within {abs(offset)} s of {info.ldap_server_name}"), False


def _dc(readings: Readings, trust: Verdict, skewed: bool) -> Verdict:
    info = readings.info
    if isinstance(info, str):
        return Verdict("dc", FAILED, f"no domain controller answers: {info}", DC_UNREACHABLE)
    ping = readings.ping
    if (isinstance(ping, PingDc) and not ping.ok and not ping.winbind_down and trust.state == OK):
        said = f"{info.ldap_server_name} answers LDAP, but winbindd cannot reach its NETLOGON " \
               f"({ping.error or 'wbinfo --ping-dc failed'})"
        if skewed:  # winbindd's Kerberos refuses the clock: the skew, not the DC
            return Verdict("dc", FAILED, f"{said}: Kerberos refuses the clock difference", CLOCK_SKEW)
        return Verdict("dc", FAILED, said, DC_UNREACHABLE)
    return Verdict("dc", OK, f"{info.ldap_server_name} ({info.ldap_server}) answers")


def _winbind(readings: Readings, trust: Verdict) -> Verdict:
    if trust.reason == NOT_JOINED:
        return Verdict("winbind", SKIPPED, "winbindd runs once the node is joined")
    ping = readings.ping
    if readings.winbind_active is False or (isinstance(ping, PingDc) and ping.winbind_down):
        return Verdict("winbind", FAILED, "winbindd is not running: domain users cannot log on", WINBIND_DOWN)
    if isinstance(ping, str):
        return Verdict("winbind", FAILED, f"winbindd does not answer: {ping}", WINBIND_DOWN)
    return Verdict("winbind", OK, "winbindd runs")


def assess(readings: Readings, realm: str, ever_joined: bool) -> Membership:
    """Judge one round. `ever_joined`: the agent joined this node (or found it joined)
    before, so a machine account that stops working is a broken trust, not a node that
    was never joined."""
    info_ok = isinstance(readings.info, AdsInfo)
    dns = _dns(readings, realm)
    clock, skewed = _clock(readings.info)
    trust = _trust(readings, info_ok, skewed, ever_joined)
    dc = _dc(readings, trust, skewed)
    winbind = _winbind(readings, trust)
    verdicts = (dns, dc, clock, trust, winbind)
    reasons = tuple(sorted({v.reason for v in verdicts if v.state == FAILED and v.reason}))
    joined = True if trust.state == OK else False if trust.reason in (NOT_JOINED, TRUST_BROKEN) else None
    info = readings.info if isinstance(readings.info, AdsInfo) else None
    return Membership(readings.at, verdicts, info.ldap_server_name if info else None,
                      info.ldap_server if info else None, info.offset if info else None, joined, reasons)
