"""The VM template as docs/vm.md ("The template") tells an administrator to make it, and
a share served from it.

The `qm` commands are read from the page's shell block and run as written through the
`qm` test stand-in (tests/support/qm_standin, which takes Proxmox VE 8.4's argv and
refuses what qm refuses), with three substitutions only: the test node's VMID (the
page's 9000 is inside the tests' vmid_range), its dir storage `local` for `local-lvm`
(the stand-in allocates volumes on dir storages), and the test suite's guest image for
the downloaded cloud image. That image stands in for the `virt-customize` step, which
needs libguestfs and a download: the packages the page installs are checked to be in it.
Then a share file that names no template is served from this one, found by its tag.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import REPO, AgentProcess, wait_served, write_share
from tests.support.pct_standin.node import FIRST_VMID, NODE, StandinNode, smbclient
from tests.support.qemu import GUEST_PACKAGES, GuestImage
from tests.support.qm_standin import node as qmnode

pytestmark = [pytest.mark.integration, pytest.mark.long]
PAGE = REPO / "docs/vm.md"
PAGE_VMID, VMID = "9000", "8100"
CLOUD_IMAGE = "/root/debian-12-genericcloud-amd64.qcow2"


def documented_steps() -> tuple[list[list[str]], list[str]]:
    """The page's template block: its `qm` commands (continuation lines joined) and the
    packages its `virt-customize --install` adds."""
    text = PAGE.read_text()
    block = text.split("## The template", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    customize = next(argv for argv in commands if argv[0] == "virt-customize")
    installed = customize[customize.index("--install") + 1].split(",")
    return [argv for argv in commands if argv[0] == "qm"], installed


def test_the_page_installs_what_the_test_image_has() -> None:
    qm_steps, installed = documented_steps()
    assert [argv[1] for argv in qm_steps] == ["create", "set", "set", "template"], qm_steps
    assert {"qemu-guest-agent", "samba", "winbind", "libnss-winbind"} <= set(installed), installed
    missing = set(installed) - set(GUEST_PACKAGES)
    assert not missing, f"the test image lacks what docs/vm.md installs: {sorted(missing)}"


def _as_here(argv: list[str], image: Path) -> list[str]:
    return [arg.replace(PAGE_VMID, VMID).replace("local-lvm", "local").replace(CLOUD_IMAGE, str(image))
            for arg in argv]


@pytest.fixture
def node(qemu_guest_image: GuestImage) -> Iterator[tuple[StandinNode, AgentProcess, GuestImage]]:
    qmnode.require_vm_tools()
    with qmnode.vm_agent(qemu_guest_image, template=False) as (lab, agent):
        try:
            yield lab, agent, qemu_guest_image
        finally:
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-6000:])


def test_a_template_made_as_the_page_says_serves_a_share(node: tuple[StandinNode, AgentProcess, GuestImage]
                                                         ) -> None:
    lab, agent, image = node
    qm_steps, _installed = documented_steps()
    for argv in qm_steps:
        done = lab.qm(*_as_here(argv, image.base)[1:], timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
    conf = (lab.root / f"etc/pve/nodes/{NODE}/qemu-server/{VMID}.conf").read_text()
    for line in ("template: 1", "tags: smbgw-template", "agent: enabled=1",
                 f"ide2: local:{VMID}/vm-{VMID}-cloudinit.qcow2,media=cdrom",
                 f"scsi0: local:{VMID}/base-{VMID}-disk-0.raw,size="):
        assert line in conf, conf
    assert (lab.root / f"var/lib/vz/images/{VMID}/base-{VMID}-disk-0.raw").stat().st_size == \
        image.base.stat().st_size, "the imported disk is the image, converted"

    box = agent.box
    box.share_dir("docs")
    address = lab.address(76)
    write_share(box, "docs.toml", f'path = "/srv/smb/docs"\nmode = "vm"\nvalid_users = ["{box.user}"]\n\n'
                                  f'[vm]\naddress = "{address}/24"\nmemory = "1G"\n')
    served = wait_served(agent, "docs", timeout=420)
    clone = (lab.root / f"etc/pve/nodes/{NODE}/qemu-server/{FIRST_VMID + 9}.conf").read_text()
    assert f"local:{VMID}/base-{VMID}-disk-0.raw/{FIRST_VMID + 9}/" in clone, "a linked clone of the template"
    listed = smbclient(lab, agent, address, "docs", "ls")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    print(f"\n[vm] template made as docs/vm.md says; a share served from it after {served:.1f}s")
