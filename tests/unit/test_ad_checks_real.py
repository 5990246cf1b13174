"""The AD membership checks' readings (plugins/ad/checks.py) of what Samba's tools really
printed on a domain member: captured in the AD lab (tests/support/adlab.py) against a real
Samba AD DC, one directory a Debian release, by

    python -m tests.support.adlab capture RELEASE

The states: not-joined (smb.conf written, never joined), healthy (joined, winbind
running), winbind-stopped, dc-stopped (samba-ad-dc stopped on the DC), dc-back (right
after the DC answers LDAP again: the member's `net ads` may still skip it, from Samba's
negative connection cache), machine-deleted (the member's computer account
deleted on the DC). Each file is `<state>-<tool>.{stdout,stderr,rc}`.

Seen: Samba 4.17.12 (bookworm) and 4.22.11 (trixie) print what checks.py expects. They
differ in the words, not the shape: a never-joined testjoin says "NT code 0xfffffff6"
(4.17) or "{Access Denied} ..." (4.22); 4.22's `net ads info --json` adds "Workgroup";
testjoin's "Join to domain is not valid:" line follows other stderr lines ("ads_connect:
...", "kerberos_kinit_password ...", "net_ads_join_ok: ..."). After the DC's restart,
4.17's `net ads testjoin`/`info` kept failing ("No logon servers") for 38 s, 60 s after
their last failure (the NEG_CONN_CACHE entry in gencache); 4.22's for ~7 s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from smbgw_plugins.ad import checks

FIXTURES = Path(__file__).parent / "fixtures" / "ad"
RELEASES = sorted(path.name for path in FIXTURES.iterdir() if path.is_dir())
DC_NAME = "dc1.smbgw.test"
NO_DC = "No logon servers are currently available to service the logon request."


@dataclass(frozen=True)
class Output:
    stdout: str
    stderr: str
    rc: int


def output(release: str, state: str, tool: str) -> Output:
    stem = FIXTURES / release / f"{state}-{tool}"
    return Output(stem.with_suffix(".stdout").read_text(), stem.with_suffix(".stderr").read_text(),
                  int(stem.with_suffix(".rc").read_text()))


def info_of_the_lab(out: Output) -> checks.AdsInfo:
    assert out.rc == 0, out
    info = checks.parse_ads_info(out.stdout, out.stderr)
    assert (info.ldap_server_name, info.realm, info.ldap_server, info.kdc_server) == (
        DC_NAME, "SMBGW.TEST", "10.213.44.10", "10.213.44.10")
    assert info.offset is not None and abs(info.offset) <= 2 and info.skew_level() is None  # one host clock
    assert info.server_time is not None and info.server_time > 1_700_000_000
    return info


def never_joined(out: Output) -> None:
    assert info_of_the_lab(out).password_changed == 0  # what tells not_joined from trust_broken


def joined(out: Output) -> None:
    changed = info_of_the_lab(out).password_changed
    assert changed is not None and changed > 1_700_000_000


def join_ok(out: Output) -> None:
    assert checks.parse_testjoin(out.stdout, out.stderr, out.rc) == checks.Testjoin(True, "Join is OK")


def not_joined_testjoin(out: Output) -> None:
    verdict = checks.parse_testjoin(out.stdout, out.stderr, out.rc)
    assert not verdict.ok and out.rc == 255
    assert verdict.said and NO_DC not in verdict.said


def no_dc_testjoin(out: Output) -> None:
    verdict = checks.parse_testjoin(out.stdout, out.stderr, out.rc)
    assert not verdict.ok and verdict.said == NO_DC and out.rc == 255


def machine_deleted_testjoin(out: Output) -> None:
    verdict = checks.parse_testjoin(out.stdout, out.stderr, out.rc)
    assert not verdict.ok and out.rc == 255
    assert verdict.said and NO_DC not in verdict.said, verdict  # the DC answered: a trust problem


def ping_ok(out: Output) -> None:
    assert checks.parse_ping_dc(out.stdout, out.stderr, out.rc) == checks.PingDc(True, "SMBGW", DC_NAME, None)


def ping_winbind_down(out: Output) -> None:
    verdict = checks.parse_ping_dc(out.stdout, out.stderr, out.rc)
    assert not verdict.ok and verdict.winbind_down


def ping_dc_unreachable(out: Output) -> None:
    verdict = checks.parse_ping_dc(out.stdout, out.stderr, out.rc)
    assert not verdict.ok and not verdict.winbind_down and verdict.domain == "SMBGW"
    assert verdict.error is not None and verdict.error.startswith("WBC_ERR_")


def ping_reconnecting(out: Output) -> None:
    # Right after the DC's start, winbindd reconnects on its own schedule: 4.17's had (in
    # 0.3 s), 4.22's had not yet (it did ~7 s later). Either reading, never "winbind down".
    verdict = checks.parse_ping_dc(out.stdout, out.stderr, out.rc)
    if not verdict.ok:
        ping_dc_unreachable(out)


def info_no_dc(out: Output) -> None:
    # plugins/ad/tool.py reports a non-zero exit by what the tool said; the parser, given
    # the output anyway, refuses it rather than reading a DC out of it.
    assert out.rc != 0 and "Didn't find the ldap server!" in out.stderr
    with pytest.raises(checks.UnexpectedOutput):
        checks.parse_ads_info(out.stdout, out.stderr)


def srv_of_the_lab(out: Output) -> None:
    assert out.rc == 0
    assert checks.parse_srv(out.stdout) == [checks.SrvRecord(0, 100, 389, DC_NAME)]


def srv_no_server(out: Output) -> None:
    assert out.rc != 0  # dig's comments on stdout; tool.py reports the exit, the parser refuses them
    assert out.stdout.startswith(";;")
    with pytest.raises(checks.UnexpectedOutput):
        checks.parse_srv(out.stdout)


EXPECTED: dict[tuple[str, str], Callable[[Output], None]] = {
    ("not-joined", "testjoin"): not_joined_testjoin,
    ("not-joined", "info"): never_joined,
    ("healthy", "info"): joined,
    ("healthy", "testjoin"): join_ok,
    ("healthy", "ping-dc"): ping_ok,
    ("healthy", "dig"): srv_of_the_lab,
    ("winbind-stopped", "ping-dc"): ping_winbind_down,
    ("dc-stopped", "testjoin"): no_dc_testjoin,
    ("dc-stopped", "ping-dc"): ping_dc_unreachable,
    ("dc-stopped", "info"): info_no_dc,
    ("dc-stopped", "dig"): srv_no_server,
    ("dc-back", "testjoin"): no_dc_testjoin,
    ("dc-back", "info"): info_no_dc,
    ("dc-back", "ping-dc"): ping_reconnecting,
    ("machine-deleted", "testjoin"): machine_deleted_testjoin,
    ("machine-deleted", "info"): joined,
}


def test_every_release_has_every_capture_and_nothing_else() -> None:
    assert "bookworm" in RELEASES
    for release in RELEASES:
        stems = {path.name.rsplit(".", 1)[0] for path in (FIXTURES / release).iterdir()}
        assert stems == {f"{state}-{tool}" for state, tool in EXPECTED}, release
        for stem in stems:
            for suffix in ("stdout", "stderr", "rc"):
                assert (FIXTURES / release / f"{stem}.{suffix}").is_file(), (release, stem, suffix)


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(("state", "tool"), list(EXPECTED))
def test_the_real_output_reads_as_its_state(release: str, state: str, tool: str) -> None:
    EXPECTED[state, tool](output(release, state, tool))


@pytest.mark.parametrize("release", RELEASES)
def test_nothing_of_the_host_is_in_the_captures(release: str) -> None:
    for path in (FIXTURES / release).iterdir():
        text = path.read_text()
        assert "/var/tmp" not in text and "smbgwad" not in text and "/work" not in text, path
