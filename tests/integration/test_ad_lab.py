"""The AD lab (tests/support/adlab.py), proved by hand: a Samba AD DC answers, a member
joined by hand with an smb.conf written here (not by the agent) serves a share to a domain
user over NTLM and over Kerberos, and `valid users` with a domain group refuses a domain
user outside it. The agent's own AD tests build on this lab.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.support import debpkg
from tests.support.adlab import (
    DC_HOST,
    DOMAIN,
    SUBNET,
    USER_PASSWORD,
    AdLab,
    ad_lab,
    member_smb_conf,
    missing_requirements,
)
from tests.support.releases import RELEASES

pytestmark = pytest.mark.integration

SHARES = (
    f'[data]\n\tpath = /srv/data\n\tread only = no\n\tvalid users = @"{DOMAIN}\\Finance"\n'
    "[common]\n\tpath = /srv/common\n\tread only = yes\n"
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the AD lab cannot run under CI: {reason}")
    pytest.skip(f"the AD lab cannot run here: {reason}")


@pytest.fixture(scope="module", params=RELEASES)
def lab(request: pytest.FixtureRequest) -> Iterator[AdLab]:
    """The lab on Debian 12 (Samba 4.17) and on Debian 13 (Samba 4.22)."""
    missing = missing_requirements() + [f"{tool} not found" for tool in debpkg.have_tools("tar", "smbclient")]
    if missing:
        _unavailable("; ".join(missing))
    with ad_lab(release=request.param) as built:
        yield built


def test_a_hand_joined_member_serves_domain_users_over_ntlm_and_kerberos(lab: AdLab) -> None:
    assert lab.dc_ready()
    assert lab.dc.address == f"{SUBNET}.{DC_HOST}"
    member = lab.member
    member.run("install", "-d", "-m", "1777", "/srv/data")
    member.run("install", "-d", "-m", "0755", "/srv/common")
    member.write_file("/srv/data/ledger.txt", "figures\n")
    member.write_file("/srv/common/notice.txt", "hello\n")
    # auth_audit:5 logs each session's authorization, its method included ("[SMB2,krb5]").
    member.write_file("/etc/samba/smb.conf", member_smb_conf(SHARES, "\tlog level = 1 auth_audit:5\n"))
    began = time.monotonic()
    lab.join()
    joined = time.monotonic() - began
    assert member.run("net", "ads", "testjoin", check=False).stdout.strip() == "Join is OK"
    winbind = lab.start_member_services()
    # The domain's users and groups resolve on the member (winbind in nsswitch.conf).
    assert member.run("getent", "passwd", f"{DOMAIN}\\alice").stdout.startswith(f"{DOMAIN}\\alice:")
    assert f"{DOMAIN}\\finance".lower() in member.run("id", "-Gn", f"{DOMAIN}\\alice").stdout.lower()
    print(f"\njoin {joined:.1f}s, winbind reaching the DC {winbind:.1f}s", flush=True)

    alice = f"{DOMAIN}\\alice"
    ntlm = lab.smbclient("data", alice, USER_PASSWORD, "ls")
    assert ntlm.returncode == 0 and "ledger.txt" in ntlm.stdout, ntlm.stdout + ntlm.stderr
    kerberos = lab.smbclient("data", alice, USER_PASSWORD, "ls", kerberos=True)
    assert kerberos.returncode == 0 and "ledger.txt" in kerberos.stdout, kerberos.stdout + kerberos.stderr
    # Each was what it says: the member's smbd logged how it authenticated alice.
    authz = member.run("grep", "-rh", "Successful AuthZ", "/var/log/samba").stdout
    assert f"[SMB2,NTLMSSP] user [{DOMAIN}]\\[alice]" in authz, authz
    assert f"[SMB2,krb5] user [{DOMAIN}]\\[alice]" in authz, authz

    carol = f"{DOMAIN}\\carol"
    refused = lab.smbclient("data", carol, USER_PASSWORD, "ls")
    assert refused.returncode != 0 and "NT_STATUS_ACCESS_DENIED" in refused.stdout + refused.stderr, refused
    # ...by `valid users`, not for her password: the share without it serves her.
    common = lab.smbclient("common", carol, USER_PASSWORD, "ls")
    assert common.returncode == 0 and "notice.txt" in common.stdout, common.stdout + common.stderr
