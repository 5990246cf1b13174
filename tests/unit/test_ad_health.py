"""Judging a round of AD membership checks (plugins/ad/health.py) and deciding when to
join (plugins/ad/plugin.py): one typed reason per fault, never a rejoin for a clock or
a missing DC, and no retry storm with a refused password."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from smbgw_plugins.ad import checks, health, join, localfiles, plugin, report
from smbgw_plugins.ad.table import AdSettings, IdmapSettings

from smbgw_agent.effects.secretfile import SecretFileError, read_secret, secret_signature
from smbgw_agent.model.idranges import IdRange

REALM = "SMBGW.TEST"
INFO = checks.AdsInfo("10.97.0.10", "dc1.smbgw.test", REALM, "10.97.0.10", offset=-1, server_time=1_800_000_000,
                      password_changed=1_799_000_000)
SRV = [checks.SrvRecord(0, 100, 389, "dc1.smbgw.test")]
JOINED = checks.Testjoin(True, "Join is OK")
PING_OK = checks.PingDc(True, "SMBGW", "dc1.smbgw.test", None)
HEALTHY = health.Readings(at=1.0, srv=SRV, info=INFO, testjoin=JOINED, winbind_active=True, ping=PING_OK)
SETTINGS = AdSettings(REALM, "SMBGW", "svc-join", IdmapSettings("rid", IdRange(100000, 999999)),
                      password_file="/etc/smbgw/secrets/ad-join", health_interval=60.0, rejoin_min_interval=3600.0)


def judged(**changes: object) -> health.Membership:
    return health.assess(dataclasses.replace(HEALTHY, **changes), REALM, ever_joined=True)


def test_a_healthy_member() -> None:
    membership = judged()
    assert membership.healthy and membership.joined is True and membership.reasons == ()
    assert [v.state for v in membership.verdicts] == ["ok"] * 5
    assert membership.dc == "dc1.smbgw.test" and membership.offset == -1


def test_a_stopped_dc_is_dc_unreachable_and_nothing_else() -> None:
    membership = judged(info="Didn't find the ldap server!", testjoin=checks.Testjoin(False, "No logon servers are "
                        "currently available to service the logon request."),
                        ping=checks.PingDc(False, "SMBGW", "", "WBC_ERR_DOMAIN_NOT_FOUND"))
    assert membership.reasons == ("dc_unreachable",)
    assert membership.joined is None  # cannot tell without a DC
    assert membership.verdict("trust").state == "skipped" and membership.verdict("clock").state == "skipped"


def test_a_reset_machine_account_is_a_broken_trust_not_a_dc_problem() -> None:
    refused = checks.Testjoin(False, "LDAP_INVALID_CREDENTIALS", refused=True)
    membership = judged(testjoin=refused, ping=checks.PingDc(False, "SMBGW", "", "WBC_ERR_AUTH_ERROR"))
    assert membership.reasons == ("trust_broken",) and membership.joined is False


def test_a_testjoin_failure_without_evidence_is_never_taken_for_a_broken_trust() -> None:
    """Seen against a real DC just restarted: testjoin failed with neither a refused
    account nor "no logon servers". A rejoin then fails too and uses up the rejoin
    allowance that a real broken trust later needs."""
    membership = judged(testjoin=checks.Testjoin(False, "Operations error"))
    assert membership.reasons == ("dc_unreachable",) and membership.joined is None


FIXTURES = Path(__file__).parent / "fixtures" / "ad"


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_testjoin_as_real_samba_says_it(release: str) -> None:
    def read(state: str) -> checks.Testjoin:
        base = FIXTURES / release / f"{state}-testjoin"
        return checks.parse_testjoin(Path(f"{base}.stdout").read_text(), Path(f"{base}.stderr").read_text(),
                                     int(Path(f"{base}.rc").read_text()))

    deleted, never, stopped = read("machine-deleted"), read("not-joined"), read("dc-stopped")
    assert deleted.refused and not deleted.unjoined
    assert never.unjoined and not never.refused
    assert not stopped.refused and not stopped.unjoined


def test_a_node_that_never_joined_is_not_joined() -> None:
    never = dataclasses.replace(INFO, password_changed=0)
    membership = health.assess(dataclasses.replace(HEALTHY, info=never, testjoin=checks.Testjoin(False, "NT code "
                               "0xfffffff6"), winbind_active=False, ping=None), REALM, ever_joined=False)
    assert membership.reasons == ("not_joined",)
    assert membership.verdict("winbind").state == "skipped"  # winbindd cannot run before the join


def test_skew_beyond_kerberos_is_clock_skew_even_when_testjoin_fails_with_it() -> None:
    skewed = dataclasses.replace(INFO, offset=-600)
    membership = judged(info=skewed, testjoin=checks.Testjoin(False, "The time at the primary domain controller is "
                                                              "different ..."))
    assert membership.reasons == ("clock_skew",), "a clock problem must never look like a broken trust"
    winbind_refused = judged(info=skewed, ping=checks.PingDc(False, "SMBGW", "", "WBC_ERR_DOMAIN_NOT_FOUND"))
    assert winbind_refused.reasons == ("clock_skew",), "nor like a DC that is away (measured: 4.17 member, -10 min)"
    assert "600 s ahead of dc1.smbgw.test" in membership.verdict("clock").detail


def test_skew_over_a_minute_is_a_warning_only() -> None:
    membership = judged(info=dataclasses.replace(INFO, offset=90))
    assert membership.healthy and membership.verdict("clock").warning
    assert "90 s behind" in membership.verdict("clock").detail


def test_dns_without_records_and_dns_failing() -> None:
    assert judged(srv=[]).reasons == ("dns",)
    assert judged(srv="dig exit 9: ;; connection timed out; no servers could be reached").reasons == ("dns",)


def test_a_dc_that_answers_ldap_but_not_the_accounts_logon_is_dc_unreachable() -> None:
    membership = judged(testjoin=checks.Testjoin(False, "Cannot contact any KDC for requested realm"))
    assert membership.reasons == ("dc_unreachable",) and membership.verdict("trust").state == "failed"


def test_winbind_down() -> None:
    down = checks.PingDc(False, "", "", "WBC_ERR_WINBIND_NOT_AVAILABLE")
    assert judged(winbind_active=False, ping=None).reasons == ("winbind_down",)
    assert judged(ping=down).reasons == ("winbind_down",)


def test_winbind_that_cannot_reach_a_dc_answering_ldap_is_dc_unreachable() -> None:
    membership = judged(ping=checks.PingDc(False, "SMBGW", "", "WBC_ERR_DOMAIN_NOT_FOUND"))
    assert membership.reasons == ("dc_unreachable",)


def test_the_signature_ignores_wording_and_time() -> None:
    assert judged().signature() == dataclasses.replace(judged(), at=99.0).signature()
    assert judged().signature() != judged(srv=[]).signature()


# ---- when to join --------------------------------------------------------------------


def watch_with(membership: health.Membership) -> plugin.MembershipWatch:
    watch = plugin.MembershipWatch()
    watch.refresh(lambda: membership)
    return watch


NOT_JOINED = health.assess(dataclasses.replace(HEALTHY, info=dataclasses.replace(INFO, password_changed=0),
                                               testjoin=checks.Testjoin(False, "x"), ping=None), REALM, False)
BROKEN = judged(testjoin=checks.Testjoin(False, "LDAP_INVALID_CREDENTIALS", refused=True))


def due(watch: plugin.MembershipWatch, last: object, now: float = 10_000.0, password: str | None = "p1") -> str | None:
    return join.join_due(watch.value, SETTINGS, last, now, password)


def test_a_node_not_joined_joins_at_once_and_backs_off_after_failures() -> None:
    watch = watch_with(NOT_JOINED)
    assert due(watch, None) is not None
    failed = {"at": 10_000.0 - 30, "ok": False, "failures": 1, "credentials": False, "inputs": "p1"}
    assert due(watch, failed) is None, "30 s after a failure: wait"
    assert due(watch, {**failed, "at": 10_000.0 - 61}) is not None
    assert due(watch, {**failed, "failures": 3, "at": 10_000.0 - 200}) is None, "third failure: 4 min"
    assert due(watch, {**failed, "failures": 3, "at": 10_000.0 - 241}) is not None
    assert join.join_delay(50, 3600.0) == 3600.0


def test_new_inputs_are_tried_at_once_and_an_old_record_without_them_waits() -> None:
    watch = watch_with(NOT_JOINED)
    failed = {"at": 10_000.0 - 30, "ok": False, "failures": 4, "credentials": False, "inputs": "p1"}
    assert due(watch, failed, password="p1") is None
    assert "changed" in (due(watch, failed, password="p2") or ""), "the administrator changed something: try it"
    old = {key: value for key, value in failed.items() if key != "inputs"}
    assert due(watch, old, password="p2") is None, "no inputs recorded: keep the back-off"


def test_the_inputs_change_with_each_join_setting_and_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("one\n")
    secret.chmod(0o600)
    settings = dataclasses.replace(SETTINGS, password_file=str(secret))

    def host(path: str) -> Path:
        return Path(path)

    base = join.join_inputs(settings, host, {})
    assert base == join.join_inputs(settings, host, {}), "stable"
    variants = [dataclasses.replace(settings, ou="OU=Servers,DC=smbgw,DC=test"),
                dataclasses.replace(settings, dns_register=True),
                dataclasses.replace(settings, join_user="other"),
                dataclasses.replace(settings, realm="OTHER.TEST")]
    assert all(join.join_inputs(variant, host, {}) != base for variant in variants)
    assert join.join_inputs(dataclasses.replace(settings, health_interval=600.0), host, {}) == base, \
        "a setting the join does not use is no reason to try again"
    secret.write_text("two-longer\n")
    assert join.join_inputs(settings, host, {}) != base, "the password file rewritten"
    assert "two" not in join.join_inputs(settings, host, {}), "a digest, never the content"


def test_no_second_join_on_a_reading_taken_before_the_first_ended() -> None:
    stale = watch_with(dataclasses.replace(NOT_JOINED, at=500.0))
    joined = {"at": 400.0, "finished": 502.0, "ok": True, "kind": "join"}
    assert due(stale, joined) is None, "the reading predates the join: wait for a fresh one"
    assert due(watch_with(dataclasses.replace(NOT_JOINED, at=510.0)), joined) is not None


def test_a_refused_password_is_not_tried_again_until_it_changes() -> None:
    watch = watch_with(NOT_JOINED)
    refused = {"at": 10_000.0 - 1000, "ok": False, "failures": 1, "credentials": True, "inputs": "p1"}
    assert due(watch, refused, password="p1") is None
    assert due(watch, refused, password="p2") is not None, "a new password file is tried"
    assert due(watch, refused, now=10_000.0 + 3600, password="p1") is not None, "after rejoin_min_interval"


def test_a_broken_trust_is_rejoined_at_most_once_per_interval() -> None:
    watch = watch_with(BROKEN)
    assert due(watch, {"at": 1.0, "ok": True, "kind": "rejoin"}) is not None
    assert due(watch, {"at": 10_000.0 - 5, "ok": True, "kind": "join"}) is not None, "the first join is no rejoin"
    assert due(watch, {"at": 10_000.0 - 600, "ok": True, "kind": "rejoin"}) is None, \
        "rejoined 10 min ago: report, do not loop"
    assert due(watch, {"at": 10_000.0 - 600, "ok": False, "kind": "rejoin", "failures": 1}) is None, \
        "a failed rejoin counts too"
    refused = {"at": 10_000.0 - 600, "ok": False, "kind": "rejoin", "failures": 1, "credentials": True,
               "inputs": "p1"}
    assert due(watch, refused, password="p1") is None
    assert due(watch, refused, password="p2") is not None, "the administrator fixed the password: try it now"


@pytest.mark.parametrize("membership", [judged(), judged(info="no DC"), judged(info=dataclasses.replace(
    INFO, offset=900), testjoin=checks.Testjoin(False, "time difference"))])
def test_no_join_for_a_healthy_node_a_missing_dc_or_a_clock(membership: health.Membership) -> None:
    assert due(watch_with(membership), None) is None


def test_status_text_names_every_check() -> None:
    text = report.status_text(SETTINGS, {"joined_since": 1_800_000_000.0}, BROKEN)
    assert "PROBLEMS: trust_broken" in text and "DC in use: dc1.smbgw.test (10.97.0.10)" in text
    assert all(f"  {check}" in text for check in health.CHECKS)


def test_local_ids_are_read_tolerantly(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/bash\ngarbage\nbob:x:1001:1001::/home/bob:/bin/sh\nx:y:99999999999:\n")
    assert localfiles.local_ids(passwd) == [0, 1001]
    assert localfiles.local_ids(tmp_path / "missing") == []


# ---- the password file ---------------------------------------------------------------------


def test_the_password_is_the_first_line_of_a_root_only_file(tmp_path: Path) -> None:
    secret = tmp_path / "ad-join"
    secret.write_text("S3cret pass\nignored\n")
    secret.chmod(0o600)
    host = lambda declared: tmp_path / Path(declared).name  # noqa: E731
    assert read_secret("/etc/ad-join", None, host, {}) == "S3cret pass"
    before = secret_signature("/etc/ad-join", None, host, {})
    secret.write_text("another one, longer\n")
    assert secret_signature("/etc/ad-join", None, host, {}) != before


def _private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: None, "does not exist"),
    (lambda p: _private(p, b""), "is empty"),
    (lambda p: (p.write_text("pw\n"), p.chmod(0o644)), "chmod 0600"),
    (lambda p: (p.write_text("pw\n"), p.chmod(0o640)), "chmod 0600"),
    (lambda p: p.mkdir(mode=0o700), "is a directory"),
    (lambda p: _private(p, b"\npw\n"), "first line is empty"),
    (lambda p: _private(p, b"\xff\xfe\n"), "not UTF-8"),
    (lambda p: _private(p, b"x" * (65 << 10)), "not a password file"),
    (lambda p: os.symlink("/etc/hostname", p), "symbolic link"),
    (lambda p: os.mkfifo(p, 0o600), "not a regular file"),
])
def test_a_bad_password_file_is_refused_with_what_to_do(tmp_path: Path, make: Callable[[Path], object],
                                                        words: str) -> None:
    secret = tmp_path / "ad-join"
    make(secret)
    with pytest.raises(SecretFileError, match=words):
        read_secret(str(secret), None, Path, {})


def test_a_credential_needs_the_units_credentials_directory(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="LoadCredential=ad-join"):
        read_secret(None, "ad-join", Path, {})
    (tmp_path / "ad-join").write_text("pw\n")
    (tmp_path / "ad-join").chmod(0o600)
    assert read_secret(None, "ad-join", Path, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "pw"
