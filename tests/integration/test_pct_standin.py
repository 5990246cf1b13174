"""The `pct` test stand-in (tests/support/pct_standin, a TEST FIXTURE) against real LXC.

The LXC-mode plugin's tests trust the stand-in to behave like `pct` on a Proxmox VE 8
node; this proves it does the parts that matter end to end, with Debian 12's own LXC
5.0: an unprivileged container with systemd and smbd, its network on a bridge in a
network namespace of its own, a host directory bind-mounted in with uid/gid 1000 passed
through (the Proxmox admin's `lxc.idmap` pattern, written into the .conf between create
and start), smb.conf pushed in, and a file written over SMB from the namespace landing
in the host directory owned by host uid 1000. Every step is timed and printed.

Nothing outside the test's own directory, namespace and container is touched but two
lines each in /etc/subuid and /etc/subgid (LXC maps ids with newuidmap even for root),
and exactly the lines this test added are removed again, however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.pct_standin import image, pct
from tests.support.pct_standin.node import subid_lines

pytestmark = pytest.mark.integration

BIN = Path(pct.__file__).with_name("bin") / "pct"
NODE = "pve-test"
VMID = 101
SUBNET = "10.98.{}.{}"
SUBID_LINES = ("root:100000:65536", "root:1000:1")
PASS_1000 = ("u 0 100000 1000", "g 0 100000 1000", "u 1000 1000 1", "g 1000 1000 1",
             "u 1001 101001 64535", "g 1001 101001 64535")
SMB_CONF = """[global]
  server role = standalone server
  map to guest = bad user
  interfaces = eth0
  bind interfaces only = yes
  disable netbios = yes
  smb ports = 445
[share]
  path = /srv/share
  read only = no
  guest ok = yes
  force user = alice
  force group = alice
"""


def _unavailable(reason: str) -> None:
    pytest.skip(reason)  # conftest.py turns this into a failure under CI


def _requirements() -> None:
    if os.geteuid() != 0:
        _unavailable("needs root (LXC, network namespaces)")
    for tool in ("lxc-start", "lxc-attach", "newuidmap", "ip", "smbclient", "debootstrap", "mount"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found (apt-get install lxc uidmap iproute2 smbclient debootstrap)")


@dataclass
class Lab:
    """The namespace, the node root and a way to run `pct` in them, with the timings."""

    namespace: str
    root: Path
    share: Path
    address: str
    gateway: str
    timings: list[tuple[str, float]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SMBGW_PCT_ROOT": str(self.root), "SMBGW_PCT_NODE": NODE,
                "SMBGW_PCT_PYTHON": sys.executable}

    def pct(self, *argv: str, stdin: str | None = None, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        # stdin is never the terminal: lxc-attach would allocate a pty and merge the streams.
        done = subprocess.run(["ip", "netns", "exec", self.namespace, str(BIN), *argv], capture_output=True,
                              text=True, env=self.env(), timeout=timeout, check=False,
                              input=stdin if stdin is not None else "")
        if check and done.returncode != 0:
            pytest.fail(f"pct {' '.join(argv)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def in_namespace(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings.append((name, time.monotonic() - started))
        print(f"pct stand-in: {name}: {self.timings[-1][1]:.2f} s", flush=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    _requirements()
    started = time.monotonic()
    node_root = Path(tempfile.mkdtemp(prefix="pct-standin-", dir="/tmp"))
    os.chmod(node_root, 0o755)  # the container's root (uid 100000) walks to its overlay
    image.ensure_template(node_root)
    print(f"pct stand-in: template ready: {time.monotonic() - started:.2f} s", flush=True)
    namespace = f"smbgwpct{os.getpid()}x{secrets.token_hex(3)}"
    octet = 1 + secrets.randbelow(250)
    share = node_root / "share"
    share.mkdir()
    os.chown(share, 1000, 1000)
    lab = Lab(namespace, node_root, share, SUBNET.format(octet, 11), SUBNET.format(octet, 1))
    created = False
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True)
        created = True
        for argv in (("link", "set", "lo", "up"), ("link", "add", "vmbr0", "type", "bridge"),
                     ("addr", "add", f"{lab.gateway}/24", "dev", "vmbr0"), ("link", "set", "vmbr0", "up")):
            subprocess.run(["ip", "-n", namespace, *argv], check=True, capture_output=True)
        with subid_lines(SUBID_LINES):
            yield lab
    finally:
        try:
            _teardown(lab)
        finally:
            if created:
                subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
            _remove(node_root)


def _teardown(lab: Lab) -> None:
    """Stop and destroy the test's own container, by its VMID under the test's own root."""
    if not (lab.root / f"etc/pve/nodes/{NODE}/lxc/{VMID}.conf").exists():
        return
    done = lab.pct("destroy", str(VMID), "--force", "--purge", check=False)
    if done.returncode != 0:  # the stand-in itself broke: stop the container with LXC directly
        lab.in_namespace("lxc-stop", "-P", str(lab.root / "var/lib/lxc"), "-n", str(VMID), "--kill")


def _remove(path: Path) -> None:
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4].startswith(f"{path}/")]
    if mounted:
        raise AssertionError(f"refusing to remove {path}: still mounted: {mounted}")
    shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_container_serves_a_bind_mounted_host_directory_over_smb(lab: Lab) -> None:
    conf = lab.root / f"etc/pve/nodes/{NODE}/lxc/{VMID}.conf"
    with lab.step("create"):
        lab.pct("create", str(VMID), f"local:vztmpl/{image.DEFAULT_NAME}", "--rootfs", "local-lvm:4",
                "--unprivileged", "1", "--hostname", "smbgw-ct", "--memory", "256", "--tags", "smbgw;Test",
                "--net0", f"name=eth0,bridge=vmbr0,ip={lab.address}/24,gw={lab.gateway}",
                "--mp0", f"{lab.share},mp=/srv/share,backup=0", "--description", "pct stand-in: test")
    mac = pct.generated_hwaddr(VMID, 0)
    lines = conf.read_text().splitlines()
    assert "rootfs: local-lvm:vm-101-disk-0,size=4G" in lines
    assert f"net0: name=eth0,bridge=vmbr0,gw={lab.gateway},hwaddr={mac},ip={lab.address}/24,type=veth" in lines
    assert f"mp0: {lab.share},mp=/srv/share,backup=0" in lines
    vmlist = json.loads((lab.root / "etc/pve/.vmlist").read_text())
    assert vmlist["ids"][str(VMID)]["node"] == NODE and vmlist["ids"][str(VMID)]["type"] == "lxc"

    # The admin's pattern: pass uid/gid 1000 through, by hand, between create and start.
    with conf.open("a") as handle:
        handle.writelines(f"lxc.idmap: {entry}\n" for entry in PASS_1000)

    with lab.step("start (the first one on a machine also makes the uid-shifted template copy)"):
        lab.pct("start", str(VMID), timeout=600)
    started = time.monotonic()
    with lab.step("start to smbd answering (smbclient -L, the image's own smb.conf)"):
        deadline = time.monotonic() + 60
        while True:
            listed = lab.in_namespace("smbclient", "-N", "-L", f"//{lab.address}")
            if listed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert listed.returncode == 0, listed.stdout + listed.stderr
    state = lab.pct("exec", str(VMID), "--", "systemctl", "is-system-running", "--wait", timeout=120,
                    check=False).stdout.strip()
    failed = lab.pct("exec", str(VMID), "--", "systemctl", "--failed", "--no-legend", check=False).stdout
    assert state == "running", f"systemd is {state!r}; failed units:\n{failed}"

    lab.pct("exec", str(VMID), "--", "useradd", "-u", "1000", "-M", "-s", "/usr/sbin/nologin", "alice")
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as smb_conf:
        smb_conf.write(SMB_CONF)
        smb_conf.flush()
        with lab.step("push smb.conf + reload"):
            lab.pct("push", str(VMID), smb_conf.name, "/etc/samba/smb.conf", "--perms", "644")
            lab.pct("exec", str(VMID), "--", "smbcontrol", "smbd", "reload-config")
    pulled = lab.root / "pulled-smb.conf"
    lab.pct("pull", str(VMID), "/etc/samba/smb.conf", str(pulled))
    assert pulled.read_text() == SMB_CONF

    payload = lab.root / "payload.txt"
    payload.write_text("written over SMB into an unprivileged container\n")
    with lab.step("smbclient put (until smbd serves the share)"):
        deadline = time.monotonic() + 60
        while True:
            put = lab.in_namespace("smbclient", f"//{lab.address}/share", "-N", "-c",
                                   f"put {payload} over-smb.txt")
            if put.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert put.returncode == 0, put.stdout + put.stderr
    lab.timings.append(("start to the share written (incl. useradd, push, reload)", time.monotonic() - started))
    print(f"pct stand-in: {lab.timings[-1][0]}: {lab.timings[-1][1]:.2f} s", flush=True)
    landed = lab.share / "over-smb.txt"
    assert landed.read_text() == payload.read_text()
    assert (landed.stat().st_uid, landed.stat().st_gid) == (1000, 1000)
    lab.pct("exec", str(VMID), "--", "touch", "/srv/share/by-root")
    assert (lab.share / "by-root").stat().st_uid == 100000  # container root is mapped, not host root

    # exec passes stdin, stdout, stderr and the exit code through.
    echoed = lab.pct("exec", str(VMID), "--", "sh", "-c", "cat; echo err >&2; exit 7", stdin="in\n", check=False)
    assert (echoed.returncode, echoed.stdout, echoed.stderr) == (7, "in\n", "err\n")

    assert lab.pct("status", str(VMID)).stdout == "status: running\n"
    assert lab.pct("list").stdout == (
        "VMID       Status     Lock         Name                \n"
        f"{VMID:<10} running                 smbgw-ct            \n")
    shown = lab.pct("config", str(VMID)).stdout.splitlines()
    assert shown[:4] == ["arch: amd64", "description: pct stand-in%3A test%0A", "hostname: smbgw-ct", "memory: 256"]
    assert shown[-6:] == [f"lxc.idmap: {entry}" for entry in PASS_1000]
    assert "tags: smbgw;test" in shown and "unprivileged: 1" in shown and "ostype: debian" in shown
    again = lab.pct("start", str(VMID), check=False)
    assert (again.returncode, again.stderr) == (255, f"CT {VMID} already running\n")
    refused = lab.pct("destroy", str(VMID), check=False)
    assert (refused.returncode, refused.stderr) == (255, f"unable to destroy CT {VMID} - container is running\n")

    with lab.step("stop"):
        lab.pct("stop", str(VMID))
    assert lab.pct("status", str(VMID)).stdout == "status: stopped\n"
    with lab.step("destroy --purge"):
        lab.pct("destroy", str(VMID), "--purge")
    assert not conf.exists()
    assert not (lab.root / f"var/lib/lxc/{VMID}").exists()
    assert str(VMID) not in json.loads((lab.root / "etc/pve/.vmlist").read_text()).get("ids", {})
    assert sorted(p.name for p in lab.share.iterdir()) == ["by-root", "over-smb.txt"]
    assert lab.pct("list").stdout == ""
    print("pct stand-in timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in lab.timings))
