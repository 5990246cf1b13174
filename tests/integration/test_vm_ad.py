"""A share in its own VM, for domain users: the node has `[ad]`, so the VM's smb.conf is a
member server's (the domain's idmap, the VM's own netbios name) and the agent makes the
VM a member of the domain of its own, through the guest agent (plugins/ad/guest.py, run
by mode_vm's job through `qm guest exec`).

Two labs joined by one cable, as for containers (test_lxc_ad.py): the AD lab
(tests/support/adlab.py: a Samba AD DC and a client, on the switch of 10.213.44.0/24) and
the `qm` stand-in's node (its bridge vmbr0 plugged into that switch, the node's resolver
the DC, which cloud-init gives the VM as Proxmox does for a VM that sets no name server).
The VM boots under QEMU (TCG), joins, and serves SMBGW\\alice by NTLM and by Kerberos; a
file she writes lands in the host directory (virtiofs, carried as 9p by the stand-in)
owned by the uid the domain's rid range gives her, which is the uid the VM's winbind
gives her too. A computer account deleted in the domain is noticed by the VM mode's
check job and the VM joins again. Removing the share file leaves the domain (the
computer account is gone from the DC) and destroys the VM; the data stays.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import adguest
from tests.support.adguest import AD_TOML, RID_RANGE, plug_into, resolver
from tests.support.adlab import ADMIN_PASSWORD, DOMAIN, REALM, SUBNET, AdLab, ad_lab
from tests.support.agent import AgentProcess, wait_for, wait_served, write_share
from tests.support.pct_standin.node import FIRST_VMID, NODE, StandinNode
from tests.support.qemu import GuestImage
from tests.support.qm_standin import node as qmnode

pytestmark = [pytest.mark.integration, pytest.mark.long]

NODE_HOST, VM_HOST = 13, 23
VMID = FIRST_VMID + 9  # the VM mode counts down from the top of vmid_range
COMPUTER = f"SMBGW-{VMID}"


def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU taps, network namespaces)")  # conftest.py: a failure under CI
    for tool in ("qemu-system-x86_64", "qemu-img", "cloud-localds", "ip", "smbclient", "systemd-nspawn"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install qemu-system-x86 qemu-utils cloud-image-utils "
                        "iproute2 smbclient systemd-container)")


@pytest.fixture
def labs(qemu_guest_image: GuestImage) -> Iterator[tuple[AdLab, StandinNode, AgentProcess]]:
    _requirements()
    with ad_lab("bookworm", install_deb=False) as ad, \
            qmnode.vm_agent(qemu_guest_image, AD_TOML, resolver(ad), plug_into(ad, NODE_HOST)) as (lab, agent):
        try:
            yield ad, lab, agent
        finally:
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-8000:])


def guest(lab: StandinNode, *argv: str) -> str:
    """What `argv` printed inside the VM (qm guest exec prints the agent's JSON)."""
    done = lab.qm("guest", "exec", str(VMID), "--", *argv)
    for _ in range(10):  # an emulated guest's agent can miss a ping on a loaded machine
        if "guest agent is not running" not in done.stderr:
            break
        time.sleep(2)
        done = lab.qm("guest", "exec", str(VMID), "--", *argv)
    if done.returncode != 0:
        return done.stderr
    result = json.loads(done.stdout)
    return str(result.get("out-data", "")) + str(result.get("err-data", ""))


def test_a_vm_joins_the_domain_and_serves_its_users(labs: tuple[AdLab, StandinNode, AgentProcess],
                                                     tmp_path: Path) -> None:
    ad, lab, agent = labs
    box = agent.box
    data = box.share_dir("finance")
    data.chmod(0o1777)  # domain users write here; 9p passes the owner's uid through
    body = (f'path = "/srv/smb/finance"\nmode = "vm"\nvalid_users = ["{DOMAIN}\\\\alice"]\n\n'
            f'[vm]\naddress = "{SUBNET}.{VM_HOST}/24"\nmemory = "1G"\n')
    write_share(box, "finance.toml", body)
    served_after = wait_served(agent, "finance", timeout=480)
    snippet = (lab.root / "var/lib/vz/snippets/smbgw-finance.yaml").read_text()
    assert ADMIN_PASSWORD not in snippet, "the join password never goes into the user-data"
    assert "Join is OK" in guest(lab, "net", "ads", "testjoin")
    smb_conf = guest(lab, "cat", "/etc/samba/smb.conf")
    assert f"netbios name = {COMPUTER}" in smb_conf and "security = ADS" in smb_conf, smb_conf
    assert smb_conf.count("server role =") == 1 and "server role = member server" in smb_conf, smb_conf
    assert f"idmap config {DOMAIN.lower()} : range = {RID_RANGE[0]}-{RID_RANGE[1]}" in smb_conf, smb_conf
    listed = ad.samba_tool("computer", "list").stdout
    assert f"{COMPUTER}$" in listed, listed

    print(f"\n[vm+ad] share file dropped -> VM booted, joined {REALM} and serving {served_after:.1f}s")
    landed = adguest.serves_domain_users(ad, agent, lambda *argv: guest(lab, *argv), COMPUTER, VM_HOST, data,
                                         tmp_path, "vm+ad")

    # Removed: the VM leaves the domain and is destroyed, the data stays.
    (box.shares_dir / "finance.toml").unlink()
    conf = lab.root / f"etc/pve/nodes/{NODE}/qemu-server/{VMID}.conf"
    wait_for(lambda: not conf.exists(), timeout=180, interval=0.5)
    listed = ad.samba_tool("computer", "list").stdout
    assert f"{COMPUTER}$" not in listed, listed
    assert landed.read_text().startswith("written by a domain user")
