"""A share in its own container, for domain users: the node has `[ad]`, so the agent makes
the share's container a member of the domain of its own (plugins/ad/guest.py, run by
mode_lxc's job) and passes the domain's id ranges through the container's id map.

Two labs joined by one cable: the AD lab (tests/support/adlab.py: a Samba AD DC and a
client, on the switch of 10.213.44.0/24) and the `pct` stand-in's node (its bridge vmbr0
plugged into that switch, the node's resolver the DC). The container takes an address on
the lab's segment, gets the DC as its name server from the node (as Proxmox copies the
host's resolv.conf into a container that sets none), joins, and serves SMBGW\\alice by
NTLM and by Kerberos; a file she writes lands in the host directory owned by the uid the
domain's rid range gives her, which is the uid the container's winbind gives her too.
A computer account deleted in the domain is noticed by the container's check and the
container joins again. Removing the share file leaves the domain (the computer account is gone from the DC) and
destroys the container; the data stays.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.adlab import ADMIN_PASSWORD, DNS_DOMAIN, DOMAIN, REALM, SUBNET, USER_PASSWORD, AdLab, ad_lab
from tests.support.agent import AgentProcess, wait_for, write_share
from tests.support.cluster import in_namespace
from tests.support.pct_standin.node import FIRST_VMID, StandinNode, lxc_agent

pytestmark = pytest.mark.integration

NODE_HOST, CONTAINER_HOST = 12, 21
RID_RANGE, DEFAULT_RANGE = (2000000, 2999999), (1900000, 1909999)
PASSWORD_FILE = "/etc/smbgw/secrets/ad-join"
AD_TOML = f"""
[ad]
realm = "{REALM}"
workgroup = "{DOMAIN}"
join_user = "Administrator"
password_file = "{PASSWORD_FILE}"
idmap = {{ backend = "rid", range = [{RID_RANGE[0]}, {RID_RANGE[1]}] }}
idmap_default_range = [{DEFAULT_RANGE[0]}, {DEFAULT_RANGE[1]}]
health_interval = "10s"
"""
# The domain's ranges, granted to root for containers as an administrator adds them.
DOMAIN_SUBIDS = (f"root:{RID_RANGE[0]}:{RID_RANGE[1] - RID_RANGE[0] + 1}",
                 f"root:{DEFAULT_RANGE[0]}:{DEFAULT_RANGE[1] - DEFAULT_RANGE[0] + 1}")
COMPUTER = f"SMBGW-{FIRST_VMID}"


def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (LXC, network namespaces)")  # conftest.py: a failure under CI
    for tool in ("lxc-start", "newuidmap", "ip", "smbclient", "debootstrap", "systemd-nspawn"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install lxc uidmap iproute2 smbclient debootstrap "
                        "systemd-container)")


def _plug_into(ad: AdLab) -> Callable[[StandinNode, Sandbox], None]:
    """The node's vmbr0 on the AD lab's switch (a veth, both ends created in namespaces),
    with an address of the lab's segment on the node; the password file in the sandbox."""
    def prepare(lab: StandinNode, box: Sandbox) -> None:
        port = f"n{lab.octet}"
        in_namespace(ad.switch, "ip", "link", "add", port, "type", "veth", "peer", "name", "uplink", "netns",
                     lab.namespace, check=True)
        in_namespace(ad.switch, "ip", "link", "set", port, "master", "br0", "up", check=True)
        for argv in (("link", "set", "uplink", "master", "vmbr0", "up"),
                     ("addr", "add", f"{SUBNET}.{NODE_HOST}/24", "dev", "vmbr0")):
            in_namespace(lab.namespace, "ip", *argv, check=True)
        secret = box.root / PASSWORD_FILE.lstrip("/")
        secret.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret.write_text(ADMIN_PASSWORD + "\n")
        secret.chmod(0o600)
    return prepare


@pytest.fixture
def labs() -> Iterator[tuple[AdLab, StandinNode, AgentProcess]]:
    _requirements()
    with ad_lab("bookworm", install_deb=False) as ad:
        resolver = f"search {DNS_DOMAIN}\nnameserver {ad.dc.address}\n"
        with lxc_agent(AD_TOML, DOMAIN_SUBIDS, resolver, _plug_into(ad)) as (lab, agent):
            try:
                yield ad, lab, agent
            finally:
                print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-6000:])


def share_state(agent: AgentProcess, name: str) -> tuple[str | None, str]:
    share = ((agent.status() or {}).get("shares") or {}).get(name) or {}
    return share.get("state"), str(share.get("error") or share.get("last_error") or "")


def smbclient(ad: AdLab, user: str, *commands: str, kerberos: bool = False) -> tuple[int, str]:
    address = f"{SUBNET}.{CONTAINER_HOST}"
    name = f"{COMPUTER.lower()}.{DNS_DOMAIN}"
    login = f"{user}@{REALM}" if kerberos else f"{DOMAIN}\\{user}"
    result = ad.client("smbclient", "-s", str(ad.client_smb_conf), f"//{name}/finance", "-I", address, "-U",
                       f"{login}%{USER_PASSWORD}", "-m", "SMB3", f"--use-kerberos={'required' if kerberos else 'off'}",
                       "-c", "; ".join(commands), timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_a_container_joins_the_domain_and_serves_its_users(labs: tuple[AdLab, StandinNode, AgentProcess],
                                                            tmp_path: Path) -> None:
    ad, lab, agent = labs
    box = agent.box
    data = box.share_dir("finance")
    data.chmod(0o1777)  # domain users write here; the owner's uid is passed through as ever
    body = (f'path = "/srv/smb/finance"\nmode = "lxc"\nvalid_users = ["{DOMAIN}\\\\alice"]\n\n'
            f'[lxc]\naddress = "{SUBNET}.{CONTAINER_HOST}/24"\nmemory = "256M"\n')
    began = time.monotonic()
    write_share(box, "finance.toml", body)
    try:
        wait_for(lambda: share_state(agent, "finance")[0] == "served", timeout=240, interval=0.5)
    except AssertionError:
        print((agent.status() or {}).get("shares"), (agent.status() or {}).get("jobs"))
        raise
    served_after = time.monotonic() - began
    vmid = str(FIRST_VMID)
    conf = lab.config(FIRST_VMID).read_text()
    for low, high in (RID_RANGE, DEFAULT_RANGE):
        assert f"lxc.idmap: u {low} {low} {high - low + 1}" in conf, conf
        assert f"lxc.idmap: g {low} {low} {high - low + 1}" in conf, conf
    testjoin = lab.pct("exec", vmid, "--", "net", "ads", "testjoin")
    assert "Join is OK" in testjoin.stdout, testjoin.stdout + testjoin.stderr
    smb_conf = lab.pct("exec", vmid, "--", "cat", "/etc/samba/smb.conf").stdout
    assert f"netbios name = {COMPUTER}" in smb_conf and "security = ADS" in smb_conf, smb_conf
    assert smb_conf.count("server role =") == 1 and "server role = member server" in smb_conf, smb_conf
    listed = ad.samba_tool("computer", "list").stdout
    assert f"{COMPUTER}$" in listed, listed

    # alice, by NTLM: her file lands on the host with her domain uid.
    payload = tmp_path / "payload.txt"
    payload.write_text("written by a domain user into the container's share\n")
    code, said = wait_for(lambda: (r := smbclient(ad, "alice", f"put {payload} alice.txt"))[0] == 0 and r,
                          timeout=60, interval=1.0)
    landed = data / "alice.txt"
    assert landed.read_text() == payload.read_text()
    sid = lab.pct("exec", vmid, "--", "wbinfo", "--name-to-sid", f"{DOMAIN}\\alice").stdout.split()[0]
    rid = int(sid.rsplit("-", 1)[1])
    inside = lab.pct("exec", vmid, "--", "wbinfo", "--sid-to-uid", sid).stdout.strip()
    assert landed.stat().st_uid == RID_RANGE[0] + rid == int(inside), (landed.stat().st_uid, rid, inside)
    print(f"\n[lxc+ad] share file dropped -> container joined {REALM} and serving {served_after:.1f}s; "
          f"alice's file owned by uid {landed.stat().st_uid} on the host (rid {rid})")

    # alice by Kerberos, to the name the join registered in the domain's DNS.
    code, said = smbclient(ad, "alice", "ls", kerberos=True)
    assert code == 0 and "alice.txt" in said, said
    # carol is a domain user but not in valid_users.
    code, said = smbclient(ad, "carol", "ls")
    assert code != 0 and re.search(r"NT_STATUS_(ACCESS_DENIED|LOGON_FAILURE)", said), said
    # The computer account deleted in the domain: the container's check finds the trust
    # refused and the agent joins it again.
    ad.samba_tool("computer", "delete", COMPUTER)
    began = time.monotonic()
    wait_for(lambda: "no longer accepts its machine account" in agent.log_text(), timeout=90, interval=1.0)
    noticed = time.monotonic() - began
    wait_for(lambda: f"{COMPUTER}$" in ad.samba_tool("computer", "list").stdout
             and "Join is OK" in lab.pct("exec", vmid, "--", "net", "ads", "testjoin").stdout, timeout=120,
             interval=1.0)
    code, said = wait_for(lambda: (r := smbclient(ad, "alice", "ls"))[0] == 0 and r, timeout=60, interval=1.0)
    assert "alice.txt" in said
    print(f"[lxc+ad] computer account deleted -> noticed {noticed:.1f}s, rejoined and serving alice "
          f"{time.monotonic() - began:.1f}s")

    # The join password is nowhere the agent writes.
    for place in (box.root / "agent.log", box.root / "run/smbgw/status.json"):
        assert ADMIN_PASSWORD not in place.read_text(errors="replace"), f"the join password is in {place}"

    # Removed: the container leaves the domain and is destroyed, the data stays.
    (box.shares_dir / "finance.toml").unlink()
    wait_for(lambda: not lab.config(FIRST_VMID).exists(), timeout=120, interval=0.5)
    listed = ad.samba_tool("computer", "list").stdout
    assert f"{COMPUTER}$" not in listed, listed
    assert landed.read_text() == payload.read_text()


def test_a_join_while_the_dc_is_away_fails_the_share_until_it_is_back(
        labs: tuple[AdLab, StandinNode, AgentProcess]) -> None:
    """The DC stopped before the share is dropped: the container is made, the join inside
    fails (the share fails with net's words, its data untouched) and is retried with
    back-off; once the DC is back the next retry joins it and the share is served."""
    ad, _lab, agent = labs
    box = agent.box
    data = box.share_dir("finance")
    data.chmod(0o1777)
    (data / "kept.txt").write_text("here before\n")
    ad.stop_dc()
    body = (f'path = "/srv/smb/finance"\nmode = "lxc"\nvalid_users = ["{DOMAIN}\\\\alice"]\n\n'
            f'[lxc]\naddress = "{SUBNET}.{CONTAINER_HOST}/24"\nmemory = "256M"\n')
    write_share(box, "finance.toml", body)
    state, error = wait_for(lambda: (r := share_state(agent, "finance"))[0] == "failed" and r, timeout=240,
                            interval=1.0)
    print(f"\n[lxc+ad] DC stopped: share {state}: {error}")
    assert "net ads join" in error or "SMBGW.TEST" in error, error
    assert (data / "kept.txt").read_text() == "here before\n"
    began = time.monotonic()
    ad.start_dc()
    wait_for(lambda: share_state(agent, "finance")[0] == "served", timeout=420, interval=1.0)
    print(f"[lxc+ad] DC started -> container joined and share served after {time.monotonic() - began:.1f}s")
    _code, said = wait_for(lambda: (r := smbclient(ad, "alice", "ls"))[0] == 0 and r, timeout=60, interval=1.0)
    assert "kept.txt" in said, said
