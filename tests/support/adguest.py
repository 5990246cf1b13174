"""The AD lab joined to a test node whose share guests (containers, VMs) join the domain:
the node's `[ad]` table, the cable from the node's vmbr0 to the lab's switch, and a
domain user's smbclient against a guest's share, by NTLM or Kerberos
(tests/integration/test_lxc_ad.py, test_vm_ad.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from devtools.sandbox import Sandbox
from tests.support.adlab import ADMIN_PASSWORD, DNS_DOMAIN, DOMAIN, REALM, SUBNET, USER_PASSWORD, AdLab
from tests.support.agent import AgentProcess, wait_for
from tests.support.cluster import in_namespace
from tests.support.pct_standin.node import StandinNode

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


def resolver(ad: AdLab) -> str:
    """The node's resolv.conf: the lab's DC, which the guests get from the node."""
    return f"search {DNS_DOMAIN}\nnameserver {ad.dc.address}\n"


def plug_into(ad: AdLab, node_host: int) -> Callable[[StandinNode, Sandbox], None]:
    """The node's vmbr0 on the AD lab's switch (a veth, both ends created in namespaces),
    with the address SUBNET.`node_host` on the node; the password file in the sandbox."""
    def prepare(lab: StandinNode, box: Sandbox) -> None:
        port = f"n{lab.octet}"
        in_namespace(ad.switch, "ip", "link", "add", port, "type", "veth", "peer", "name", "uplink", "netns",
                     lab.namespace, check=True)
        in_namespace(ad.switch, "ip", "link", "set", port, "master", "br0", "up", check=True)
        for argv in (("link", "set", "uplink", "master", "vmbr0", "up"),
                     ("addr", "add", f"{SUBNET}.{node_host}/24", "dev", "vmbr0")):
            in_namespace(lab.namespace, "ip", *argv, check=True)
        secret = box.root / PASSWORD_FILE.lstrip("/")
        secret.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret.write_text(ADMIN_PASSWORD + "\n")
        secret.chmod(0o600)
    return prepare


def smbclient(ad: AdLab, computer: str, host: int, user: str, *commands: str,
              kerberos: bool = False) -> tuple[int, str]:
    """`user` of the domain at share `finance` of the guest SUBNET.`host`, by the name its
    join registered (`computer` in the domain's DNS zone)."""
    name = f"{computer.lower()}.{DNS_DOMAIN}"
    login = f"{user}@{REALM}" if kerberos else f"{DOMAIN}\\{user}"
    result = ad.client("smbclient", "-s", str(ad.client_smb_conf), f"//{name}/finance", "-I", f"{SUBNET}.{host}",
                       "-U", f"{login}%{USER_PASSWORD}", "-m", "SMB3",
                       f"--use-kerberos={'required' if kerberos else 'off'}", "-c", "; ".join(commands), timeout=60)
    return result.returncode, result.stdout + result.stderr


def serves_domain_users(ad: AdLab, agent: AgentProcess, inside: Callable[..., str], computer: str, host: int,
                        data: Path, tmp_path: Path, tag: str) -> Path:
    """What a guest that joined the domain must show, whatever the guest (`inside(*argv)`
    is what argv prints in it): alice writes by NTLM and her file is on the host owned by
    the uid the rid range gives her, the uid the guest's winbind gives her too; she reads
    by Kerberos to the name the join registered; carol (not in valid_users) is refused;
    the computer account deleted in the domain is noticed by the guest's check and the
    guest joins again; the join password is nowhere the agent writes. The file alice
    wrote, for the caller's removal checks."""
    payload = tmp_path / "payload.txt"
    payload.write_text(f"written by a domain user into the share in {tag}\n")
    wait_for(lambda: (r := smbclient(ad, computer, host, "alice", f"put {payload} alice.txt"))[0] == 0 and r,
             timeout=90, interval=1.0)
    landed = data / "alice.txt"
    assert landed.read_text() == payload.read_text()
    sid = inside("wbinfo", "--name-to-sid", f"{DOMAIN}\\alice").split()[0]
    rid = int(sid.rsplit("-", 1)[1])
    uid = inside("wbinfo", "--sid-to-uid", sid).strip()
    assert landed.stat().st_uid == RID_RANGE[0] + rid == int(uid), (landed.stat().st_uid, rid, uid)
    print(f"[{tag}] alice's file owned by uid {landed.stat().st_uid} on the host (rid {rid})")

    code, said = smbclient(ad, computer, host, "alice", "ls", kerberos=True)
    assert code == 0 and "alice.txt" in said, said
    code, said = smbclient(ad, computer, host, "carol", "ls")
    assert code != 0 and re.search(r"NT_STATUS_(ACCESS_DENIED|LOGON_FAILURE)", said), said

    ad.samba_tool("computer", "delete", computer)
    began = time.monotonic()
    wait_for(lambda: "no longer accepts its machine account" in agent.log_text(), timeout=120, interval=1.0)
    noticed = time.monotonic() - began
    wait_for(lambda: f"{computer}$" in ad.samba_tool("computer", "list").stdout
             and "Join is OK" in inside("net", "ads", "testjoin"), timeout=180, interval=1.0)
    code, said = wait_for(lambda: (r := smbclient(ad, computer, host, "alice", "ls"))[0] == 0 and r, timeout=90,
                          interval=1.0)
    assert "alice.txt" in said
    print(f"[{tag}] computer account deleted -> noticed {noticed:.1f}s, rejoined and serving alice "
          f"{time.monotonic() - began:.1f}s")

    for place in (agent.box.root / "agent.log", agent.box.root / "run/smbgw/status.json"):
        assert ADMIN_PASSWORD not in place.read_text(errors="replace"), f"the join password is in {place}"
    return landed
