"""What the membership checks' tools say, read strictly. Pure: text in, findings out.

The health loop runs Samba's own tools and reads them here; each reading is a fact or a
typed reason, never a guess. Formats are Samba 4.17's (Debian 12) and 4.22's (Debian
13), from their sources (source3/utils/net_ads.c, nsswitch/wbinfo.c), confirmed on both
against a real Samba AD DC (captured in the AD lab: tests/unit/fixtures/ad/, read by
tests/unit/test_ad_checks_real.py).

- `net ads info --json`: one JSON object. "Server time" and "Server time offset" are
  whole seconds, the offset is server minus local (positive: the DC is ahead). A failed
  time query still exits 0 with both at 0 and "Failed to get server's current time!" on
  stderr: the offset is then unknown, not 0.
- `net ads testjoin`: "Join is OK" on stdout and exit 0, else a stderr line "Join to
  domain is not valid: <reason>" (after lines of its own: "ads_connect: ...",
  "kerberos_kinit_password ...") and exit 255; the reason's wording depends on Kerberos
  falling back to NTLM and on the release, so it is shown, never matched for a verdict.
- `wbinfo --ping-dc`: stdout `checking the NETLOGON for domain[D] dc connection to "X"
  succeeded|failed`, exit 0 or 1; stderr names the libwbclient error
  (WBC_ERR_WINBIND_NOT_AVAILABLE: winbindd is not running).
- `dig +short -t SRV NAME`: one "priority weight port target." per record, nothing when
  there is none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# The typed reasons of the contract, one per way membership breaks.
DC_UNREACHABLE = "dc_unreachable"
DNS = "dns"
CLOCK_SKEW = "clock_skew"
TRUST_BROKEN = "trust_broken"
WINBIND_DOWN = "winbind_down"
NOT_JOINED = "not_joined"
REASONS = (DC_UNREACHABLE, DNS, CLOCK_SKEW, TRUST_BROKEN, WINBIND_DOWN, NOT_JOINED)

KERBEROS_SKEW = 300  # seconds: Kerberos refuses tickets beyond it (krb5.conf clockskew default)
SKEW_WARNING = 60
MAX_OUTPUT = 1 << 20  # a tool that says more than this is not saying what these expect
_PASSWORD_CHANGED = "Last machine account password change"  # noqa: S105 (a JSON key)
_TIME_FAILED = "Failed to get server's current time!"
_PING_DC = re.compile(r'^checking the NETLOGON for domain\[([^\]]*)\] dc connection to "([^"]*)" (succeeded|failed)$')
_WBC_ERROR = re.compile(r"\b(WBC_ERR_[A-Z_]+)\b")
_SRV = re.compile(r"^(\d{1,5}) (\d{1,5}) (\d{1,5}) (\S+?)\.?$")


class UnexpectedOutput(ValueError):
    """A tool said something that is not its documented output."""


def _bounded(text: str, what: str) -> str:
    if len(text) > MAX_OUTPUT:
        raise UnexpectedOutput(f"{what}: {len(text)} characters of output")
    return text


@dataclass(frozen=True)
class AdsInfo:
    """`net ads info --json`: the DC this node talks to and the clock difference."""

    ldap_server: str
    ldap_server_name: str
    realm: str
    kdc_server: str
    offset: int | None  # seconds, server minus local; None when the DC's time could not be read
    server_time: int | None
    password_changed: int | None = None  # the machine password's last change (Unix time); 0: never joined

    def skew_level(self) -> str | None:
        """"error" beyond Kerberos' tolerance, "warning" beyond a minute, None otherwise
        (also when the offset is unknown)."""
        if self.offset is None:
            return None
        if abs(self.offset) > KERBEROS_SKEW:
            return "error"
        return "warning" if abs(self.offset) > SKEW_WARNING else None


def _string(document: dict[str, object], key: str, what: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value or len(value) > 1024 or not value.isprintable():
        raise UnexpectedOutput(f"{what}: {key!r} is not a name: {str(value)[:60]!r}")
    return value


def _integer(document: dict[str, object], key: str, what: str) -> int:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**40:
        raise UnexpectedOutput(f"{what}: {key!r} is not a number: {str(value)[:60]!r}")
    return value


def parse_ads_info(stdout: str, stderr: str = "") -> AdsInfo:
    what = "net ads info --json"
    try:
        document = json.loads(_bounded(stdout, what))
    except (ValueError, RecursionError) as exc:
        raise UnexpectedOutput(f"{what}: not JSON: {str(exc)[:100]}") from exc
    if not isinstance(document, dict):
        raise UnexpectedOutput(f"{what}: not a JSON object")
    server_time = _integer(document, "Server time", what)
    offset = _integer(document, "Server time offset", what)
    known = server_time > 0 and _TIME_FAILED not in stderr
    changed = _integer(document, _PASSWORD_CHANGED, what) if _PASSWORD_CHANGED in document else None
    return AdsInfo(_string(document, "LDAP server", what), _string(document, "LDAP server name", what),
                   _string(document, "Realm", what), _string(document, "KDC server", what),
                   offset if known else None, server_time if known else None, changed)


@dataclass(frozen=True)
class PingDc:
    """`wbinfo --ping-dc`: whether the domain's DC answered winbindd, and which DC."""

    ok: bool
    domain: str
    dc: str
    error: str | None  # the libwbclient error named on stderr (WBC_ERR_...), if any

    @property
    def winbind_down(self) -> bool:
        return self.error == "WBC_ERR_WINBIND_NOT_AVAILABLE"


def parse_ping_dc(stdout: str, stderr: str, returncode: int) -> PingDc:
    what = "wbinfo --ping-dc"
    lines = [line for line in _bounded(stdout, what).splitlines() if line.strip()]
    matches = [m for m in (_PING_DC.match(line.strip()) for line in lines) if m]
    if len(matches) != 1:
        raise UnexpectedOutput(f"{what}: expected one 'checking the NETLOGON' line, found {len(matches)}")
    domain, dc, verdict = matches[0].groups()
    errors = _WBC_ERROR.findall(_bounded(stderr, what))
    ok = verdict == "succeeded"
    if ok != (returncode == 0):
        raise UnexpectedOutput(f"{what}: said {verdict} but exited {returncode}")
    return PingDc(ok, domain, dc, errors[-1] if errors else None)


@dataclass(frozen=True)
class Testjoin:
    """`net ads testjoin`: whether the machine account works; the reason as Samba said it.

    `refused`: the DC answered and refused the machine account (deleted, or its password
    reset): what a rejoin repairs. `unjoined`: this node has no machine account to try.
    Neither: it failed some other way (a DC still starting, a network error), which is
    no evidence of a broken trust and must never start a rejoin. The words are Samba
    4.17's and 4.22's, seen against a real DC (tests/unit/fixtures/ad/)."""

    ok: bool
    said: str
    refused: bool = False
    unjoined: bool = False


# The DC refused the machine account: deleted ("Client not found in Kerberos database",
# LDAP_INVALID_CREDENTIALS on both releases), password reset (logon failure).
_REFUSED = ("LDAP_INVALID_CREDENTIALS", "Client not found in Kerberos database", "NT_STATUS_LOGON_FAILURE",
            "The attempted logon is invalid", "Preauthentication failed", "NT_STATUS_NO_TRUST_SAM_ACCOUNT",
            "NT_STATUS_TRUSTED_RELATIONSHIP_FAILURE")
# No machine account here at all: 4.17 tries with no password ("NT code 0xfffffff6"), 4.22
# says so before it gives up.
_UNJOINED = ("NT code 0xfffffff6", "Failed to get machine credentials")


def parse_testjoin(stdout: str, stderr: str, returncode: int) -> Testjoin:
    what = "net ads testjoin"
    if returncode == 0:
        if "Join is OK" not in _bounded(stdout, what):
            raise UnexpectedOutput(f"{what}: exited 0 without 'Join is OK'")
        return Testjoin(True, "Join is OK")
    said = next((line.split(":", 1)[1].strip() for line in _bounded(stderr, what).splitlines()
                 if line.startswith("Join to domain is not valid:")), "")
    if not said:
        lines = [line.strip() for line in (stderr + "\n" + stdout).splitlines() if line.strip()]
        said = lines[-1][:200] if lines else f"exit {returncode}, no output"
    everything = stderr + "\n" + stdout
    unjoined = any(words in everything for words in _UNJOINED)
    refused = not unjoined and any(words in everything for words in _REFUSED)
    return Testjoin(False, said[:300], refused=refused, unjoined=unjoined)


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def parse_srv(stdout: str) -> list[SrvRecord]:
    """`dig +short -t SRV NAME`: the records, in the order given ([] when there is none)."""
    records = []
    for raw in _bounded(stdout, "dig SRV").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith(";"):  # dig's own comments (";; connection timed out ...")
            raise UnexpectedOutput(f"dig SRV: {line[:120]}")
        match = _SRV.match(line)
        if match is None or int(match.group(3)) > 65535:
            raise UnexpectedOutput(f"dig SRV: not a record: {line[:120]!r}")
        records.append(SrvRecord(int(match.group(1)), int(match.group(2)), int(match.group(3)), match.group(4)))
    return records
