"""The qm/pvesh TEST STAND-IN (never shipped) over real QEMU (TCG): a linked clone of the
template boots Debian's kernel with systemd, cloud-init (NoCloud seed from a user-data
snippet) writes a file and starts smbd on a static address, the guest agent answers
`qm guest cmd`/`qm guest exec`, a directory mapping reaches the guest (as 9p under the
`virtiofs0` tag) and is served over SMB to a client in the node's namespace; stop and
destroy clean up. One VM boot (~1-2 min under TCG).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plugins.mode_vm import qmout
from tests.support import qemu
from tests.support.pct_standin.node import NODE, StandinNode
from tests.support.qemu import GuestImage
from tests.support.qm_standin import node as qmnode

pytestmark = [pytest.mark.integration, pytest.mark.long]
VMID = 9001
NAME = "smbgw-vm1"
PASSWORD = "Qm-standin-1"


def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU taps, network namespaces)")  # conftest.py fails this under CI
    for tool in ("qemu-system-x86_64", "qemu-img", "cloud-localds", "ip", "smbclient"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install qemu-system-x86 qemu-utils cloud-image-utils "
                        "iproute2 smbclient)")


@pytest.fixture
def lab(qemu_guest_image: GuestImage) -> Iterator[StandinNode]:
    _requirements()
    # Short root: the agent and QMP sockets live under it (unix socket paths <= 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="smbgw-qm-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    try:
        with qmnode.qm_node(root, qemu_guest_image) as node:
            yield node
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


USER_DATA = f"""#cloud-config
hostname: {NAME}
write_files:
  - path: /etc/smbgw-cloudinit-ran
    content: "user-data ran\\n"
  - path: /etc/samba/smb.conf
    content: |
      [global]
      server role = standalone server
      disable netbios = yes
      smb ports = 445
      [share]
      path = /srv/share
      read only = no
runcmd:
  - [mkdir, -p, /srv/share]
  - [mount, -t, virtiofs, smbgwshare, /srv/share]
  - [sh, -c, "printf '%s\\\\n%s\\\\n' '{PASSWORD}' '{PASSWORD}' | smbpasswd -s -a root"]
  - [systemctl, enable, smbd]
  - [systemctl, restart, smbd]
"""


def _wait(what: str, probe: Callable[[], bool], timeout: float, lab: StandinNode) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(2)
    console = lab.root / f"var/log/qemu-server/{VMID}.console.log"
    tail = console.read_text(errors="replace")[-4000:] if console.exists() else ""
    pytest.fail(f"{what} not within {timeout}s\n--- console ---\n{tail}")


def test_a_linked_clone_boots_with_cloud_init_answers_the_agent_and_serves_the_mapped_dir(lab: StandinNode) -> None:
    timings: dict[str, float] = {}
    share = lab.root / "srv/mapped"
    share.mkdir(parents=True)
    (share / "from-the-host.txt").write_text("hello\n")
    snippet = qmnode.write_snippet(lab, "smbgw-9001.yaml", USER_DATA)
    address = lab.address(50)

    version = json.loads(_ok(lab.pvesh("get", "/version", "--output-format", "json")))
    assert version["release"] == "8.4"
    _ok(lab.pvesh("create", "/cluster/mapping/dir", "--id", "smbgwshare", "--map", f"node={NODE},path={share}"))
    mapping = json.loads(_ok(lab.pvesh("get", "/cluster/mapping/dir/smbgwshare", "--output-format", "json")))
    assert mapping["map"] == [f"node={NODE},path={share}"]

    _ok(lab.qm("clone", str(qmnode.TEMPLATE_VMID), str(VMID), "--name", NAME, "--full", "0"))
    _ok(lab.qm("set", str(VMID), "--cores", "2", "--memory", "1024", "--net0", "virtio,bridge=vmbr0",
               "--ipconfig0", f"ip={address}/24,gw={lab.gateway}", "--nameserver", lab.gateway,
               "--searchdomain", "smbgw.test", "--agent", "enabled=1", "--cicustom", f"user={snippet}",
               "--virtiofs0", "smbgwshare", "--tags", "smbgw;Share", "--description", "smbgw: test VM"))
    config = _ok(lab.qm("config", str(VMID)))
    assert "template" not in config and "tags: share;smbgw\n" in config
    assert f"ide2: local:{VMID}/vm-{VMID}-cloudinit.qcow2,media=cdrom\n" in config
    assert f"scsi0: local:8000/base-8000-disk-0.raw/{VMID}/vm-{VMID}-disk-0.qcow2," in config
    assert "description: smbgw%3A test VM%0A\n" in config  # the `#` lines end in a newline (parse_vm_config)

    started = time.monotonic()
    _ok(lab.qm("start", str(VMID)))
    timings["qm start returned"] = time.monotonic() - started
    assert qmout.parse_status(_ok(lab.qm("status", str(VMID)))) == "running"
    listed = qmout.parse_list(_ok(lab.qm("list")))
    assert listed[VMID].status == "running" and listed[VMID].name == NAME and listed[VMID].pid > 0
    assert listed[qmnode.TEMPLATE_VMID].status == "stopped"

    _wait("guest-ping", lambda: lab.qm("guest", "cmd", str(VMID), "ping", timeout=60).returncode == 0, 300, lab)
    timings["start -> guest-ping answers"] = time.monotonic() - started

    def serving() -> bool:
        done = lab.run("smbclient", f"//{address}/share", "-U", f"root%{PASSWORD}", "-m", "SMB3", "-c", "ls",
                       timeout=30)
        return done.returncode == 0 and "from-the-host.txt" in done.stdout

    _wait("smbd serving the mapped directory", serving, 300, lab)
    timings["start -> smbd serves the mapped dir on 445"] = time.monotonic() - started

    hostname = qmout.parse_exec(_ok(lab.qm("guest", "exec", str(VMID), "--", "cat", "/etc/hostname")))
    assert hostname.ok and hostname.out.strip() == NAME
    ran = qmout.parse_exec(_ok(lab.qm("guest", "exec", str(VMID), "--", "cat", "/etc/smbgw-cloudinit-ran")))
    assert ran.out == "user-data ran\n"
    piped = qmout.parse_exec(_ok(lab.qm("guest", "exec", str(VMID), "--pass-stdin", "1", "--timeout", "30", "--",
                                        "sh", "-c", "cat > /srv/share/from-the-guest.txt && wc -c "
                                        "/srv/share/from-the-guest.txt", stdin="through stdin\n")))
    assert piped.ok and piped.out.startswith("14 ")
    assert (share / "from-the-guest.txt").read_text() == "through stdin\n"
    failing = qmout.parse_exec(_ok(lab.qm("guest", "exec", str(VMID), "--", "sh", "-c", "echo no >&2; exit 3")))
    assert failing.exitcode == 3 and failing.err == "no\n"
    interfaces = json.loads(_ok(lab.qm("guest", "cmd", str(VMID), "network-get-interfaces")))
    assert any(a.get("ip-address") == address for i in interfaces for a in i.get("ip-addresses", []))

    refused = lab.qm("destroy", str(VMID))
    assert refused.returncode == 255 and refused.stderr == f"VM {VMID} is running - destroy failed\n"
    _ok(lab.qm("stop", str(VMID)))
    assert qmout.parse_status(_ok(lab.qm("status", str(VMID)))) == "stopped"
    assert lab.run("ip", "link", "show", f"tap{VMID}i0").returncode != 0
    _ok(lab.qm("destroy", str(VMID), "--purge", "1", "--destroy-unreferenced-disks", "1"))
    assert not (lab.root / f"var/lib/vz/images/{VMID}").exists()
    assert qmnode.TEMPLATE_VMID in qmout.parse_list(_ok(lab.qm("list")))
    assert qemu.image_key()  # the shared image stayed as it was
    print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in timings.items()))


def test_a_guest_without_a_running_agent_times_out_as_proxmox_says(lab: StandinNode) -> None:
    faults = lab.root / ".qm-standin-faults"
    faults.mkdir()
    (faults / "noagent").touch()
    _ok(lab.qm("clone", str(qmnode.TEMPLATE_VMID), "9002", "--name", "no-agent", "--full", "0"))
    _ok(lab.qm("start", "9002"))
    started = time.monotonic()
    done = lab.qm("guest", "cmd", "9002", "ping")
    elapsed = time.monotonic() - started
    assert (done.returncode, done.stdout, done.stderr) == (255, "", "QEMU guest agent is not running\n")
    assert 2.5 < elapsed < 15
    _ok(lab.qm("stop", "9002"))
    unconfigured = lab.qm("set", "9002", "--delete", "agent")
    assert unconfigured.returncode == 0
    done = lab.qm("guest", "cmd", "9002", "ping")
    assert (done.returncode, done.stderr) == (255, "No QEMU guest agent configured\n")
