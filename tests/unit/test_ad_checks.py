"""The AD membership checks' readings of Samba's tools (plugins/ad/checks.py). Samples are
the formats in Samba 4.17/4.22's sources (net_ads.c, wbinfo.c), the not-joined and
no-DC cases as seen on 4.17; the AD lab confirms them against a real DC."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smbgw_plugins.ad import checks

INFO = {"LDAP server": "10.97.0.10", "LDAP server name": "dc1.smbgw.test", "Realm": "SMBGW.TEST",
        "Bind Path": "dc=SMBGW,dc=TEST", "LDAP port": 389, "Server time": 1796275954, "KDC server": "10.97.0.10",
        "Server time offset": -2, "Last machine account password change": 1796270000}


def test_ads_info_reads_the_dc_and_the_clock_difference() -> None:
    info = checks.parse_ads_info(json.dumps(INFO) + "\n")
    assert (info.ldap_server_name, info.realm, info.offset) == ("dc1.smbgw.test", "SMBGW.TEST", -2)
    assert info.skew_level() is None
    with_workgroup = {**INFO, "Workgroup": "SMBGW"}  # 4.21 and later add it
    assert checks.parse_ads_info(json.dumps(with_workgroup)).offset == -2


@pytest.mark.parametrize(("offset", "level"), [(0, None), (60, None), (61, "warning"), (-300, "warning"),
                                               (301, "error"), (-600, "error")])
def test_skew_levels(offset: int, level: str | None) -> None:
    assert checks.parse_ads_info(json.dumps({**INFO, "Server time offset": offset})).skew_level() == level


def test_a_dc_time_that_could_not_be_read_is_unknown_not_zero() -> None:
    unread = {**INFO, "Server time": 0, "Server time offset": 0}
    info = checks.parse_ads_info(json.dumps(unread), "Failed to get server's current time!\n")
    assert info.offset is None and info.skew_level() is None


@pytest.mark.parametrize("text", ["", "null", "[]", '{"Realm": "X"}', json.dumps({**INFO, "Server time offset": "2"}),
                                  json.dumps({**INFO, "Realm": ""}), json.dumps({**INFO, "Realm": "A\nB"}),
                                  json.dumps({**INFO, "Server time offset": True}), "[" * 100_000])
def test_ads_info_refuses_what_is_not_its_output(text: str) -> None:
    with pytest.raises(checks.UnexpectedOutput):
        checks.parse_ads_info(text)


def test_ping_dc() -> None:
    ok = checks.parse_ping_dc('checking the NETLOGON for domain[SMBGW] dc connection to "dc1.smbgw.test" '
                              "succeeded\n", "", 0)
    assert ok == checks.PingDc(True, "SMBGW", "dc1.smbgw.test", None)
    down = checks.parse_ping_dc('checking the NETLOGON for domain[] dc connection to "" failed\n',
                                "could not obtain winbind interface details: WBC_ERR_WINBIND_NOT_AVAILABLE\n"
                                "could not obtain winbind domain name!\n"
                                "failed to call wbcPingDc: WBC_ERR_WINBIND_NOT_AVAILABLE\n", 1)
    assert not down.ok and down.winbind_down
    unreachable = checks.parse_ping_dc('checking the NETLOGON for domain[SMBGW] dc connection to "" failed\n',
                                       "failed to call wbcPingDc: WBC_ERR_DOMAIN_NOT_FOUND\n", 1)
    assert not unreachable.ok and not unreachable.winbind_down and unreachable.error == "WBC_ERR_DOMAIN_NOT_FOUND"


@pytest.mark.parametrize(("stdout", "code"), [
    ("", 0), ("garbage\n", 1),
    ('checking the NETLOGON for domain[X] dc connection to "d" succeeded\n', 1),  # verdict and exit disagree
    ('checking the NETLOGON for domain[X] dc connection to "d" succeeded\n' * 2, 0),
])
def test_ping_dc_refuses_what_is_not_its_output(stdout: str, code: int) -> None:
    with pytest.raises(checks.UnexpectedOutput):
        checks.parse_ping_dc(stdout, "", code)


def test_testjoin() -> None:
    assert checks.parse_testjoin("Join is OK\n", "", 0) == checks.Testjoin(True, "Join is OK")
    broken = checks.parse_testjoin("", "Join to domain is not valid: The attempted logon is invalid. This is "
                                       "either due to a bad username or authentication information.\n", 255)
    assert not broken.ok and broken.said.startswith("The attempted logon is invalid")
    not_joined = checks.parse_testjoin("", "Join to domain is not valid: NT code 0xfffffff6\n", 255)  # 4.17, seen
    assert not_joined.said == "NT code 0xfffffff6"
    silent = checks.parse_testjoin("", "", 255)
    assert not silent.ok and "255" in silent.said
    with pytest.raises(checks.UnexpectedOutput):
        checks.parse_testjoin("something else\n", "", 0)


def test_srv_records() -> None:
    assert checks.parse_srv("0 100 389 dc1.smbgw.test.\n10 50 389 dc2.smbgw.test.\n") == [
        checks.SrvRecord(0, 100, 389, "dc1.smbgw.test"), checks.SrvRecord(10, 50, 389, "dc2.smbgw.test")]
    assert checks.parse_srv("") == []
    for bad in (";; connection timed out; no servers could be reached\n", "0 100 dc1.\n", "0 100 70000 dc1.\n"):
        with pytest.raises(checks.UnexpectedOutput):
            checks.parse_srv(bad)


@given(st.text(max_size=2000), st.text(max_size=500), st.integers(-1, 256))
def test_no_reading_raises_anything_but_unexpected_output(stdout: str, stderr: str, code: int) -> None:
    for read in (lambda: checks.parse_ads_info(stdout, stderr), lambda: checks.parse_ping_dc(stdout, stderr, code),
                 lambda: checks.parse_testjoin(stdout, stderr, code), lambda: checks.parse_srv(stdout)):
        with contextlib.suppress(checks.UnexpectedOutput):
            read()
