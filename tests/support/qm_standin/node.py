"""TEST FIXTURE (TEST STAND-IN, never shipped): a Proxmox node for the VM mode: the pct
stand-in's StandinNode (root with /etc/pve, network namespace with the bridge vmbr0)
plus the qm and pvesh stand-ins and a VM template whose disk is the shared QEMU guest
image (tests/support/qemu.py).

The template (VMID 8000, outside the tests' vmid_range 9000-9009) is what `qm template`
leaves behind on Proxmox: `template: 1`, its disk a base volume `local:8000/
base-8000-disk-0.raw` (here a symbolic link to the cached, read-only base.raw), and
`ide2: local:8000/vm-8000-cloudinit.qcow2,media=cdrom`, the cloud-init drive as `qm set
--ide2 local:cloudinit` records it. Other shapes for bad-input tests: a template without
a cloud-init drive, and a VM that is not a template.

Teardown: every VM under the root is stopped (only the QEMU whose pid file and
/proc/PID/cmdline match it, see qm.py) and destroyed, and its taps removed, however the
test ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess
from tests.support.cloudinit_tool import ensure_cloud_init
from tests.support.pct_standin.node import NO_RESOLVER, NODE, PROXMOX, StandinNode, standin_node
from tests.support.procs import private_sandbox
from tests.support.qemu import GuestImage

from . import qm as qmmod

TEMPLATE_VMID = 8000
TEMPLATE_NAME = "smbgw-template"
TEMPLATE_TAG = "smbgw-template"


def require_vm_tools() -> None:
    """Skip (a failure under CI, conftest.py) without root or the tools a VM needs here."""
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU taps, network namespaces)")
    for tool in ("qemu-system-x86_64", "qemu-img", "cloud-localds", "ip", "smbclient"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install qemu-system-x86 qemu-utils cloud-image-utils "
                        "iproute2 smbclient)")


def _conf_dir(node: StandinNode) -> Path:
    path = node.root / f"etc/pve/nodes/{NODE}/qemu-server"
    path.mkdir(parents=True, exist_ok=True)
    link = node.root / "etc/pve/qemu-server"  # pmxcfs's link to this node's directory
    if not link.is_symlink():
        link.symlink_to(f"nodes/{NODE}/qemu-server")
    return path


def _register(node: StandinNode, vmid: int) -> None:
    qmmod.Node(node.root, NODE).register(vmid, NODE)


def _link_base_disk(node: StandinNode, vmid: int, image: GuestImage, name: str, storage: str = "local",
                    storage_path: str = "/var/lib/vz") -> str:
    images = node.root / storage_path.lstrip("/") / "images" / str(vmid)
    images.mkdir(parents=True, exist_ok=True)
    link = images / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(image.base)
    return f"{storage}:{vmid}/{name}"


def make_template(node: StandinNode, image: GuestImage, vmid: int = TEMPLATE_VMID, *, name: str = TEMPLATE_NAME,
                  cloudinit: bool = True, tags: str = TEMPLATE_TAG, storage: str = "local",
                  storage_path: str = "/var/lib/vz") -> int:
    """A template as `qm create` + `qm set --ide2 STORAGE:cloudinit` + `qm template` leave
    it, its disk on `storage` (a dir storage of storage.cfg at `storage_path`)."""
    disk = _link_base_disk(node, vmid, image, f"base-{vmid}-disk-0.raw", storage, storage_path)
    size = image.base.stat().st_size >> 30
    lines = [
        "agent: 1", "boot: order=scsi0", "cores: 2", "memory: 1024", "meta: creation-qemu=7.2.0,ctime=1700000000",
        f"name: {name}", "net0: virtio=BC:24:11:00:80:00,bridge=vmbr0", "ostype: l26",
        f"scsi0: {disk},size={size}G", "scsihw: virtio-scsi-single", "serial0: socket", f"tags: {tags}",
        "template: 1", "vga: serial0",
    ]
    if cloudinit:
        lines.append(f"ide2: {storage}:{vmid}/vm-{vmid}-cloudinit.qcow2,media=cdrom")
    (_conf_dir(node) / f"{vmid}.conf").write_text("".join(f"{line}\n" for line in sorted(lines)))
    _register(node, vmid)
    return vmid


def make_vm(node: StandinNode, image: GuestImage, vmid: int, *, name: str = "plain-vm") -> int:
    """A VM that is not a template (its own qcow2 disk over the image): `qm clone
    --full 0` from it must fail as Proxmox's does."""
    images = node.root / "var/lib/vz/images" / str(vmid)
    images.mkdir(parents=True, exist_ok=True)
    disk = images / f"vm-{vmid}-disk-0.qcow2"
    qmmod._qemu_img("create", "-q", "-f", "qcow2", "-b", str(image.base), "-F", "raw", str(disk))
    lines = ["boot: order=scsi0", "cores: 1", "memory: 512", f"name: {name}",
             "net0: virtio=BC:24:11:00:00:01,bridge=vmbr0", f"scsi0: local:{vmid}/vm-{vmid}-disk-0.qcow2,size=3G"]
    (_conf_dir(node) / f"{vmid}.conf").write_text("".join(f"{line}\n" for line in sorted(lines)))
    _register(node, vmid)
    return vmid


def write_snippet(node: StandinNode, name: str, content: str) -> str:
    """ROOT/var/lib/vz/snippets/NAME; returns its volume id `local:snippets/NAME`."""
    path = node.root / "var/lib/vz/snippets" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return f"local:snippets/{name}"


def destroy_all_vms(node: StandinNode) -> None:
    """Every VM under the node's root stopped (by its verified pid) and destroyed."""
    qnode = qmmod.Node(node.root, NODE)
    for conf in sorted(qnode.conf_dir.glob("*.conf")) if qnode.conf_dir.is_dir() else []:
        if not conf.stem.isdigit():
            continue
        vmid = int(conf.stem)
        config = qmmod._load_quiet(qnode, vmid)
        if config is not None:
            if qmmod.running(qnode, vmid, config):
                node.qm("stop", str(vmid), timeout=120)
            if qmmod.running(qnode, vmid, config):
                qmmod.kill_vm(qnode, vmid, config)
        node.run(*_tap_cleanup(vmid))
        if node.qm("destroy", str(vmid), "--purge", "1").returncode != 0:
            conf.unlink(missing_ok=True)


def _tap_cleanup(vmid: int) -> list[str]:
    return ["sh", "-c", f"for t in /sys/class/net/tap{vmid}i*; do [ -e \"$t\" ] && ip link del \"${{t##*/}}\"; "
            "done; true"]


@contextlib.contextmanager
def qm_node(root: Path, image: GuestImage) -> Iterator[StandinNode]:
    """A StandinNode with the qm stand-in able to boot `image`, and the template 8000."""
    with standin_node(root, ()) as node:  # VMs map no ids: /etc/subuid is left alone
        node.qm_image_dir = image.path
        try:
            make_template(node, image)
            yield node
        finally:
            destroy_all_vms(node)


@contextlib.contextmanager
def vm_agent(image: GuestImage, agent_toml: str = "", resolv_conf: str = NO_RESOLVER,
             prepare: Callable[[StandinNode, Sandbox], None] | None = None,
             template: bool = True) -> Iterator[tuple[StandinNode, AgentProcess]]:
    """A sandbox node with the qm/pvesh stand-ins, the template 8000, `[proxmox]` (and
    `agent_toml`) in its agent.toml and the agent running in the node's namespace, with
    Debian's `cloud-init` (unpacked, tests/support/cloudinit_tool.py) on its PATH for
    `cloud-init schema`. `resolv_conf` is the node's resolver, which cloud-init gives the
    VMs as Proxmox does when a VM sets no name server; `prepare` runs before the agent
    starts; without `template` the node has none (a test makes its own). Every VM is
    destroyed at the end, whatever happened. VMs map no ids:
    /etc/subuid and /etc/subgid are left alone (no line added, none taken away from a
    container test running beside this one)."""
    cloud_init = ensure_cloud_init()
    with private_sandbox() as box, standin_node(box.root, (), resolv_conf) as lab:
        try:
            lab.qm_image_dir = image.path
            if template:
                make_template(lab, image)
            config = box.root / "etc/smbgw/agent.toml"
            config.write_text(config.read_text() + PROXMOX + agent_toml)
            if prepare is not None:
                prepare(lab, box)
            env = lab.env()
            env["PATH"] = f"{env['PATH']}:{cloud_init}"
            agent = AgentProcess(box, env=env, wrapper=lab.wrapper())
            agent.start()
            try:
                yield lab, agent
            finally:
                agent.stop()
        finally:
            destroy_all_vms(lab)
