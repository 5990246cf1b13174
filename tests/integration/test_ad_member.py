"""The ad plugin against a real Samba AD DC (tests/support/adlab.py): the agent, installed
from the .deb on the member as on a node, joins the domain on its own from agent.toml
`[ad]` and a password file, serves domain users by NTLM and Kerberos, notices each way
the membership breaks, repairs what can be repaired and keeps local users working while
the DC is away.

The tests run in order on one lab (each starts from where the one before left the node),
as an administrator would meet these events on one node.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.adlab import (
    DOMAIN,
    USER_PASSWORD,
    AdLab,
    ad_lab,
)
from tests.support.cluster import wait_for
from tests.support.releases import RELEASES

pytestmark = pytest.mark.integration

JOIN_USER = "svc-join"
# Distinctive, so that finding it anywhere is a leak and never a coincidence.
JOIN_PASSWORD = "Jn-7f3a9c-Secret!"
PASSWORD_FILE = "/etc/smbgw/secrets/ad-join"
HEALTH_INTERVAL = 10
LOCAL_USER, LOCAL_PASSWORD = "bob", "Local-Passw0rd"
AGENT_TOML = f"""[agent]
allowed_roots = ["/srv"]

[ad]
realm = "SMBGW.TEST"
workgroup = "{DOMAIN}"
join_user = "{JOIN_USER}"
password_file = "{PASSWORD_FILE}"
idmap = {{ backend = "rid", range = [100000, 999999] }}
idmap_default_range = [70000, 79999]
health_interval = "{HEALTH_INTERVAL}s"
rejoin_min_interval = "10m"
"""
FINANCE = 'path = "/srv/finance"\nvalid_users = ["@SMBGW\\\\Finance"]\n'
LOCAL = f'path = "/srv/local"\nvalid_users = ["{LOCAL_USER}"]\n'
_METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9945/metrics", timeout=10).read().decode())
"""
# Runs inside the member during the join: every process's argv and environment, every 5 ms.
_SCANNER = r"""
import os, sys, time
needle = open(sys.argv[1], "rb").read().split(b"\n")[0]
out, until = sys.argv[2], time.time() + float(sys.argv[3])
seen, rounds = set(), 0
while time.time() < until:
    rounds += 1
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    if needle in f.read():
                        seen.add(f"{pid}/{part} " + open(f"/proc/{pid}/comm").read().strip())
            except OSError:
                pass
    time.sleep(0.005)
open(out, "w").write(f"{rounds}\n" + "\n".join(sorted(seen)))
"""


@pytest.fixture(scope="module", params=RELEASES)
def lab(request: pytest.FixtureRequest) -> Iterator[AdLab]:
    """One lab per release (Samba 4.17 on PVE 8, 4.22 on PVE 9), shared by the tests in order."""
    with ad_lab(request.param) as built:
        built.samba_tool("user", "create", JOIN_USER, JOIN_PASSWORD)
        built.samba_tool("group", "addmembers", "Domain Admins", JOIN_USER)
        yield built


def status(lab: AdLab) -> dict[str, Any]:
    text = lab.member.run("cat", "/run/smbgw/status.json", check=False).stdout
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def ad_view(lab: AdLab) -> dict[str, Any]:
    view = status(lab).get("plugins", {}).get("ad", {})
    return view if isinstance(view, dict) else {}


def membership(lab: AdLab) -> dict[str, Any]:
    found = ad_view(lab).get("membership") or {}
    return found if isinstance(found, dict) else {}


def metrics(lab: AdLab) -> str:
    return lab.member.run("python3", "-c", _METRICS, check=False).stdout


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return None


def diagnostics(lab: AdLab) -> str:
    out = [json.dumps(ad_view(lab), indent=1)[-4000:]]
    for argv in (["journalctl", "--no-pager", "-n", "60", "-u", "smbgw-agent"],
                 ["journalctl", "--no-pager", "-n", "20", "-u", "winbind"], ["testparm", "-s"]):
        result = lab.member.run(*argv, check=False, timeout=30)
        out.append(f"---- {' '.join(argv)}\n{result.stdout[-5000:]}{result.stderr[-1500:]}")
    return "\n".join(out)


def wait_reasons(lab: AdLab, reasons: list[str], timeout: float, also: frozenset[str] = frozenset()) -> float:
    """Wait until the membership's reasons are `reasons`, plus at most those in `also`."""
    began = time.monotonic()

    def reached() -> bool:
        found = set(membership(lab).get("reasons") or [])
        return "reasons" in membership(lab) and set(reasons) <= found <= set(reasons) | also

    try:
        wait_for(f"AD reasons {reasons}", lambda: reached() or None, timeout=timeout, interval=0.5)
    except TimeoutError:
        print(diagnostics(lab))
        raise
    return time.monotonic() - began


def served(lab: AdLab, share: str, user: str, password: str, kerberos: bool = False) -> tuple[bool, str]:
    result = lab.smbclient(share, user, password, "ls", kerberos=kerberos)
    said = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, said[-1] if said else f"exit {result.returncode}"


def start_scanner(lab: AdLab, seconds: int) -> None:
    """Watch every process's argv and environment on the member for the join password,
    every 5 ms, for `seconds` (in the background; `assert_scanner_saw_nothing` reads it)."""
    lab.member.write_file("/tmp/scanner.py", _SCANNER)
    lab.member.run("rm", "-f", "/tmp/scan.txt")
    lab.member.run("sh", "-c", 'nohup python3 /tmp/scanner.py "$0" /tmp/scan.txt "$1" >/dev/null 2>&1 &',
                   PASSWORD_FILE, str(seconds))


def assert_scanner_saw_nothing(lab: AdLab) -> None:
    wait_for("the scanner's report", lambda: "\n" in lab.member.run("cat", "/tmp/scan.txt", check=False).stdout
             or None, timeout=150, interval=1.0)
    report = lab.member.run("cat", "/tmp/scan.txt").stdout.splitlines()
    assert int(report[0]) > 100, "the scanner ran"
    assert report[1:] == [], f"the join password was visible in {report[1:]}"


def test_the_agent_joins_on_its_own_and_serves_domain_users(lab: AdLab) -> None:
    member = lab.member
    member.run("mkdir", "-p", "/etc/smbgw/secrets", "/srv/finance", "/srv/local")
    member.run("chmod", "0777", "/srv/finance", "/srv/local")
    member.write_file(PASSWORD_FILE, JOIN_PASSWORD + "\n", mode=0o600)
    member.run("useradd", "--no-create-home", LOCAL_USER)
    member.run("smbpasswd", "-s", "-a", LOCAL_USER, input=f"{LOCAL_PASSWORD}\n{LOCAL_PASSWORD}\n")
    member.write_file("/etc/smbgw/shares.d/finance.toml", FINANCE)
    member.write_file("/etc/smbgw/shares.d/local.toml", LOCAL)
    start_scanner(lab, 30)
    began = time.monotonic()
    member.write_file("/etc/smbgw/agent.toml", AGENT_TOML)
    member.run("systemctl", "reload", "smbgw-agent")
    wait_reasons(lab, [], timeout=120)
    joined_after = time.monotonic() - began
    wait_for("alice served over NTLM", lambda: served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)[0] or None,
             timeout=60, interval=0.5)
    print(f"\n[ad] agent.toml written -> healthy member {joined_after:.1f}s, -> alice served "
          f"{time.monotonic() - began:.1f}s")
    ok, said = served(lab, "finance", "SMBGW\\alice", USER_PASSWORD, kerberos=True)
    if not ok:
        print(diagnostics(lab), lab.member.run("sh", "-c", "tail -n 40 /var/log/samba/log.smbd", check=False).stdout)
    assert ok, f"Kerberos: {said}"
    ok, said = served(lab, "finance", "SMBGW\\carol", USER_PASSWORD)
    assert not ok and "ACCESS_DENIED" in said, f"carol is not in Finance: {said}"
    ok, said = served(lab, "local", f"FS1\\{LOCAL_USER}", LOCAL_PASSWORD)
    assert ok, f"a local passdb user on a member: {said}"

    view = ad_view(lab)
    assert view["joined_since"] and view["last_join"]["ok"] and view["last_join"]["kind"] == "join"
    text = metrics(lab)
    assert metric(text, "smbgw_ad_joined") == 1.0 and metric(text, "smbgw_ad_healthy") == 1.0
    for check in ("dns", "dc", "clock", "trust", "winbind"):
        assert metric(text, "smbgw_ad_check_success", check=check) == 1.0, check
    assert abs(metric(text, "smbgw_ad_clock_skew_seconds") or 0.0) <= 2
    shown = member.run("smbgwctl", "ad", "status", timeout=120).stdout
    assert "HEALTHY" in shown and "dc1.smbgw.test" in shown, shown
    testparm = member.run("testparm", "-s", "--parameter-name", "security").stdout.strip()
    assert testparm == "ADS"

    # The password: nowhere but its file.
    time.sleep(1)
    places = {
        "the journal": "journalctl --no-pager -b -o verbose",
        "status.json": "cat /run/smbgw/status.json",
        "/metrics": f"python3 -c '{_METRICS.strip()}'",
        "the agent's state and run directories, Samba's logs": "cat /var/lib/smbgw/* /run/smbgw/* "
                                                                 "/var/log/samba/* 2>/dev/null",
    }
    # The password is never an argument here either: grep reads it from its file (-f).
    control = member.run("sh", "-c", f"cat {PASSWORD_FILE} | grep -caF -f {PASSWORD_FILE}").stdout.strip()
    assert control == "1", "the search finds the password where it is"
    leaks = [where for where, command in places.items()
             if member.run("sh", "-c", f"{command} | grep -caF -f {PASSWORD_FILE}", check=False,
                           timeout=60).stdout.strip() not in ("", "0")]
    assert not leaks, f"the join password leaked into: {leaks}"
    assert_scanner_saw_nothing(lab)


def test_a_stopped_winbind_is_started_again(lab: AdLab) -> None:
    member = lab.member
    member.run("systemctl", "stop", "winbind")
    began = time.monotonic()
    wait_for("winbind started by the agent", lambda: member.run("systemctl", "is-active", "winbind",
                                                                 check=False).stdout.strip() == "active" or None,
             timeout=HEALTH_INTERVAL * 2 + 60, interval=0.5)
    print(f"\n[ad] winbind stopped -> started again by the agent after {time.monotonic() - began:.1f}s")
    assert "was not running; started it" in member.journal("smbgw-agent")
    wait_reasons(lab, [], timeout=HEALTH_INTERVAL * 2 + 60)
    assert served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)[0]


def test_a_stopped_dc_is_reported_and_local_users_keep_working(lab: AdLab) -> None:
    lab.stop_dc()
    try:
        # The DC is the domain's DNS server too: dns fails with it.
        seconds = wait_reasons(lab, ["dc_unreachable"], timeout=HEALTH_INTERVAL + 90, also=frozenset({"dns"}))
        print(f"\n[ad] DC stopped -> dc_unreachable after {seconds:.1f}s")
        text = metrics(lab)
        assert metric(text, "smbgw_ad_problem", reason="dc_unreachable") == 1.0
        assert metric(text, "smbgw_ad_healthy") == 0.0
        assert metric(text, "smbgw_ad_problem", reason="trust_broken") == 0.0, "no DC is no broken trust"
        ok, said = served(lab, "local", f"FS1\\{LOCAL_USER}", LOCAL_PASSWORD)
        assert ok, f"local fallback user while the DC is down: {said}"
        ok, said = served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)
        assert not ok, "a domain user's NTLM logon needs a DC to check the password (docs/ad.md says so)"
        print(f"[ad] DC down: local user served; domain user by NTLM refused: {said}")
    finally:
        lab.start_dc()
    seconds = wait_reasons(lab, [], timeout=HEALTH_INTERVAL + 120)
    print(f"[ad] DC back -> healthy after {seconds:.1f}s")
    assert served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)[0]


def test_a_reset_machine_account_is_rejoined_without_an_admin(lab: AdLab) -> None:
    start_scanner(lab, 60)
    began = time.monotonic()
    lab.samba_tool("computer", "delete", "FS1")
    wait_reasons(lab, ["trust_broken"], timeout=HEALTH_INTERVAL + 60)
    seconds = wait_reasons(lab, [], timeout=HEALTH_INTERVAL * 3 + 120)
    print(f"\n[ad] machine account deleted on the DC -> rejoined and healthy after {seconds:.1f}s")
    assert ad_view(lab)["last_join"]["kind"] == "rejoin" and ad_view(lab)["last_join"]["ok"]
    wait_for("alice served again", lambda: served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)[0] or None,
             timeout=60, interval=0.5)
    assert time.monotonic() - began < 300
    assert_scanner_saw_nothing(lab)


def test_a_skewed_clock_is_clock_skew(lab: AdLab) -> None:
    """The member's clock ten minutes behind for Samba: libfaketime under winbind and smbd
    (systemd drop-ins) and under the `net` the agent runs (a wrapper first in its PATH,
    /usr/local/sbin). The agent itself, Python, runs on the real clock: libfaketime turns
    its time.sleep into EINVAL."""
    member = lab.member
    before = ad_view(lab)["last_join"]
    lib = member.run("sh", "-c", "ls /usr/lib/*/faketime/libfaketime.so.1").stdout.strip()
    skewed = f"LD_PRELOAD={lib} FAKETIME=-10m"
    member.write_file("/usr/local/sbin/net", f'#!/bin/sh\n{skewed} exec /usr/bin/net "$@"\n', mode=0o755)
    dropins = [f"/etc/systemd/system/{unit}.service.d/faketime.conf" for unit in ("winbind", "smbd")]
    for dropin in dropins:
        member.run("mkdir", "-p", os.path.dirname(dropin))
        member.write_file(dropin, f"[Service]\nEnvironment={skewed}\n")
    member.run("systemctl", "daemon-reload")
    member.run("systemctl", "restart", "winbind", "smbd")
    try:
        assert member.run("net", "ads", "info", "--json", check=False).stdout, "the wrapper runs net"
        seconds = wait_reasons(lab, ["clock_skew"], timeout=HEALTH_INTERVAL + 120)
        print(f"\n[ad] member clock -10 min -> clock_skew after {seconds:.1f}s")
        skew = metric(metrics(lab), "smbgw_ad_clock_skew_seconds") or 0.0
        assert 590 <= skew <= 610, skew
        assert metric(metrics(lab), "smbgw_ad_problem", reason="clock_skew") == 1.0
        time.sleep(HEALTH_INTERVAL * 2)
        assert ad_view(lab)["last_join"] == before, "a clock is never 'fixed' by a rejoin"
        assert membership(lab)["reasons"] == ["clock_skew"]
    finally:
        member.run("rm", "-f", "/usr/local/sbin/net", *dropins)
        member.run("systemctl", "daemon-reload")
        member.run("systemctl", "restart", "winbind", "smbd")
    wait_reasons(lab, [], timeout=HEALTH_INTERVAL + 120)


def test_removing_ad_returns_the_node_to_standalone_and_leaves(lab: AdLab) -> None:
    member = lab.member
    member.write_file("/etc/smbgw/agent.toml", AGENT_TOML + "leave_on_remove = true\n")
    member.run("systemctl", "reload", "smbgw-agent")
    time.sleep(3)
    member.write_file("/etc/smbgw/agent.toml", '[agent]\nallowed_roots = ["/srv"]\n')
    member.run("systemctl", "reload", "smbgw-agent")
    try:
        wait_for("standalone globals", lambda: member.run("testparm", "-s", "--parameter-name", "server role",
                                                           check=False).stdout.strip() == "standalone server"
                 or None, timeout=60)
    except TimeoutError:
        print(diagnostics(lab))
        raise
    assert member.run("testparm", "-s", "--parameter-name", "security").stdout.strip() != "ADS"
    wait_for("winbind stopped", lambda: member.run("systemctl", "is-active", "winbind",
                                                   check=False).stdout.strip() != "active" or None, timeout=60)
    assert lab.samba_tool("computer", "show", "FS1", check=False).returncode != 0, "left: the account is gone"
    assert "# Generated by smbgw-agent" not in member.read_file("/etc/krb5.conf"), "krb5.conf put back"
    ok, said = served(lab, "local", LOCAL_USER, LOCAL_PASSWORD)
    assert ok, f"a standalone node serves its local users: {said}"


def test_a_wrong_password_is_not_retried_until_it_changes(lab: AdLab) -> None:
    """[ad] again on the standalone node (the test before left the domain), its password
    file wrong: the join is refused once and not tried again until the file changes."""
    member = lab.member
    member.write_file(PASSWORD_FILE, "Wrong-Passw0rd\n", mode=0o600)
    member.write_file("/etc/smbgw/agent.toml", AGENT_TOML)
    member.run("systemctl", "reload", "smbgw-agent")
    wait_for("the join refused", lambda: (ad_view(lab).get("last_join") or {}).get("wrong_credentials") or None,
             timeout=HEALTH_INTERVAL * 3 + 120, interval=0.5)
    attempts = len(re.findall("joining the domain failed", member.journal("smbgw-agent")))
    time.sleep(HEALTH_INTERVAL * 3)
    again = len(re.findall("joining the domain failed", member.journal("smbgw-agent")))
    assert again == attempts, "a refused password is not tried again (no lockout storm)"
    assert membership(lab).get("reasons") == ["not_joined"]
    assert metric(metrics(lab), "smbgw_ad_last_join_success") == 0.0
    member.write_file(PASSWORD_FILE, JOIN_PASSWORD + "\n", mode=0o600)
    seconds = wait_reasons(lab, [], timeout=HEALTH_INTERVAL * 3 + 120)
    print(f"\n[ad] password file fixed -> joined after {seconds:.1f}s")
    wait_for("alice served", lambda: served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)[0] or None,
             timeout=60, interval=0.5)


def test_a_second_broken_trust_within_the_interval_is_reported_not_rejoined(lab: AdLab) -> None:
    lab.samba_tool("computer", "delete", "FS1")
    wait_reasons(lab, ["trust_broken"], timeout=HEALTH_INTERVAL + 60)
    wait_reasons(lab, [], timeout=HEALTH_INTERVAL * 3 + 120)  # the first: rejoined
    rejoined = ad_view(lab)["last_join"]
    assert rejoined["kind"] == "rejoin" and rejoined["ok"]
    lab.samba_tool("computer", "delete", "FS1")
    wait_reasons(lab, ["trust_broken"], timeout=HEALTH_INTERVAL + 60)
    time.sleep(HEALTH_INTERVAL * 3)
    assert ad_view(lab)["last_join"] == rejoined, "at most one rejoin per rejoin_min_interval"
    assert membership(lab)["reasons"] == ["trust_broken"]
    assert metric(metrics(lab), "smbgw_ad_problem", reason="trust_broken") == 1.0  # SmbgwAdTrustBroken fires


OU = "OU=FileServers,DC=smbgw,DC=test"
CREDENTIAL = "adjoin"
CREDENTIAL_DROPIN = "/etc/systemd/system/smbgw-agent.service.d/ad-credential.conf"


def test_no_join_under_a_skewed_clock_or_without_a_dc_then_a_join_by_credential_into_its_ou(lab: AdLab) -> None:
    """A node that is not joined meets a clock 10 minutes off, then a stopped DC: each is
    reported and no join is tried (no computer account appears). With both fixed, the
    password now coming from a systemd credential (LoadCredential=) and the table naming
    an OU and asking for DNS registration, the agent joins on its own: the account is in
    the OU and the node's name resolves in the domain's DNS."""
    member = lab.member
    member.write_file("/etc/smbgw/agent.toml", '[agent]\nallowed_roots = ["/srv"]\n')
    member.run("systemctl", "reload", "smbgw-agent")
    wait_for("standalone globals", lambda: member.run("testparm", "-s", "--parameter-name", "server role",
                                                       check=False).stdout.strip() == "standalone server" or None,
             timeout=60)
    lab.samba_tool("computer", "delete", "FS1", check=False)
    if lab.samba_tool("ou", "create", OU, check=False).returncode != 0:
        lab.samba_tool("ou", "add", OU)  # the newer spelling, where create is gone
    assert lab.samba_tool("ou", "list").stdout.count("OU=FileServers") == 1
    assert member.run("dig", "+short", "fs1.smbgw.test", "A").stdout.strip() == "", "not in DNS before the join"

    # 1. The clock: net under libfaketime (as in the skew test above).
    lib = member.run("sh", "-c", "ls /usr/lib/*/faketime/libfaketime.so.1").stdout.strip()
    member.write_file("/usr/local/sbin/net", f'#!/bin/sh\nLD_PRELOAD={lib} FAKETIME=-10m exec /usr/bin/net "$@"\n',
                      mode=0o755)
    try:
        member.write_file("/etc/smbgw/agent.toml", AGENT_TOML + f'ou = "{OU}"\n')
        member.run("systemctl", "reload", "smbgw-agent")
        seconds = wait_reasons(lab, ["clock_skew"], timeout=HEALTH_INTERVAL + 120, also=frozenset({"winbind_down"}))
        print(f"\n[ad] not joined, clock -10 min -> clock_skew after {seconds:.1f}s, no join")
        time.sleep(HEALTH_INTERVAL * 2)
        assert not (ad_view(lab).get("last_join") or {}).get("at"), "no join under a skewed clock"
        assert lab.samba_tool("computer", "show", "FS1", check=False).returncode != 0
    finally:
        member.run("rm", "-f", "/usr/local/sbin/net")

    # 2. No DC.
    lab.stop_dc()
    try:
        seconds = wait_reasons(lab, ["dc_unreachable"], timeout=HEALTH_INTERVAL + 90,
                               also=frozenset({"dns", "winbind_down"}))
        print(f"[ad] not joined, DC stopped -> dc_unreachable after {seconds:.1f}s, no join")
        time.sleep(HEALTH_INTERVAL)
        assert not (ad_view(lab).get("last_join") or {}).get("at"), "no join without a DC"
    finally:
        lab.start_dc()
    assert lab.samba_tool("computer", "show", "FS1", check=False).returncode != 0

    # 3. Both fixed; the password from a systemd credential, DNS registration asked for.
    member.run("mkdir", "-p", os.path.dirname(CREDENTIAL_DROPIN))
    member.write_file(CREDENTIAL_DROPIN, f"[Service]\nLoadCredential={CREDENTIAL}:{PASSWORD_FILE}\n")
    by_credential = AGENT_TOML.replace(f'password_file = "{PASSWORD_FILE}"', f'credential = "{CREDENTIAL}"')
    assert by_credential != AGENT_TOML
    member.write_file("/etc/smbgw/agent.toml", by_credential + f'ou = "{OU}"\ndns_register = true\n')
    start_scanner(lab, 40)
    began = time.monotonic()
    member.run("systemctl", "daemon-reload")
    member.run("systemctl", "restart", "smbgw-agent", timeout=120)
    seconds = wait_reasons(lab, [], timeout=HEALTH_INTERVAL * 3 + 120)
    print(f"[ad] clock and DC fixed, password by credential -> joined and healthy after {seconds:.1f}s")
    assert ad_view(lab)["last_join"]["ok"]
    shown = lab.samba_tool("computer", "show", "FS1").stdout
    assert f"dn: CN=FS1,{OU}" in shown, shown[:400]
    wait_for("fs1 registered in the domain's DNS",
             lambda: member.run("dig", "+short", "fs1.smbgw.test", "A").stdout.strip() == member.address or None,
             timeout=60, interval=1.0)
    wait_for("alice served", lambda: served(lab, "finance", "SMBGW\\alice", USER_PASSWORD)[0] or None,
             timeout=60, interval=0.5)
    assert time.monotonic() - began < 300
    assert_scanner_saw_nothing(lab)
