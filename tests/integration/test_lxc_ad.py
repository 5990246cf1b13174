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
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import adguest
from tests.support.adguest import AD_TOML, DEFAULT_RANGE, RID_RANGE, plug_into, resolver
from tests.support.adlab import DOMAIN, REALM, SUBNET, AdLab, ad_lab
from tests.support.agent import AgentProcess, wait_for, write_share
from tests.support.pct_standin.node import FIRST_VMID, StandinNode, lxc_agent

pytestmark = [pytest.mark.integration, pytest.mark.long]

NODE_HOST, CONTAINER_HOST = 12, 21
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


@pytest.fixture
def labs() -> Iterator[tuple[AdLab, StandinNode, AgentProcess]]:
    _requirements()
    with ad_lab("bookworm", install_deb=False) as ad, \
            lxc_agent(AD_TOML, DOMAIN_SUBIDS, resolver(ad), plug_into(ad, NODE_HOST)) as (lab, agent):
        try:
            yield ad, lab, agent
        finally:
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-6000:])


def share_state(agent: AgentProcess, name: str) -> tuple[str | None, str]:
    share = ((agent.status() or {}).get("shares") or {}).get(name) or {}
    return share.get("state"), str(share.get("error") or share.get("last_error") or "")


def smbclient(ad: AdLab, user: str, *commands: str, kerberos: bool = False) -> tuple[int, str]:
    return adguest.smbclient(ad, COMPUTER, CONTAINER_HOST, user, *commands, kerberos=kerberos)


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

    print(f"\n[lxc+ad] share file dropped -> container joined {REALM} and serving {served_after:.1f}s")
    landed = adguest.serves_domain_users(ad, agent, lambda *argv: lab.pct("exec", vmid, "--", *argv).stdout,
                                         COMPUTER, CONTAINER_HOST, data, tmp_path, "lxc+ad")

    # Removed: the container leaves the domain and is destroyed, the data stays.
    (box.shares_dir / "finance.toml").unlink()
    wait_for(lambda: not lab.config(FIRST_VMID).exists(), timeout=120, interval=0.5)
    listed = ad.samba_tool("computer", "list").stdout
    assert f"{COMPUTER}$" not in listed, listed
    assert landed.read_text().startswith("written by a domain user")


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
