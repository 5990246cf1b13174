"""VM mode through the whole agent, with real VMs: the agent (in the node's network
namespace) reads a share file with `mode = "vm"` and, through the `qm`/`pvesh` test
stand-ins over QEMU (TCG; tests/support/qm_standin), clones the template, writes the
cloud-init user-data snippet (checked by Debian's real `cloud-init schema`), maps the
share's directory (virtiofs, which the stand-in carries as 9p), boots the VM and waits
for its guest agent, cloud-init and smbd. A client in the namespace reads and writes the
share on the VM's own address and the files are in the host directory with the owner's
uid; an edit reaches smbd inside without a reboot; removing the file destroys the VM and
keeps the data. A VM whose guest agent never answers is destroyed again, the data kept.
"""

from __future__ import annotations

import contextlib
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, wait_for, wait_served, write_share
from tests.support.pct_standin.node import FIRST_VMID, NODE, StandinNode, smbclient
from tests.support.qemu import GuestImage
from tests.support.qm_standin import node as qmnode

pytestmark = [pytest.mark.integration, pytest.mark.long]
LAST_VMID = FIRST_VMID + 9  # the VM mode counts down from the top of vmid_range


@pytest.fixture
def node(qemu_guest_image: GuestImage) -> Iterator[tuple[StandinNode, AgentProcess]]:
    qmnode.require_vm_tools()
    with qmnode.vm_agent(qemu_guest_image) as (lab, agent):
        try:
            yield lab, agent
        finally:
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-8000:])


def share_state(agent: AgentProcess, name: str) -> str | None:
    share = ((agent.status() or {}).get("shares") or {}).get(name) or {}
    state = share.get("state")
    return str(state) if state is not None else None


def vm_conf(lab: StandinNode, vmid: int) -> Path:
    return lab.root / f"etc/pve/nodes/{NODE}/qemu-server/{vmid}.conf"


def guest(lab: StandinNode, vmid: int, *argv: str) -> str:
    done = lab.qm("guest", "exec", str(vmid), "--", *argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def guest_boot(lab: StandinNode) -> str:
    done = lab.qm("guest", "exec", str(LAST_VMID), "--", "cat", "/proc/sys/kernel/random/boot_id")
    return done.stdout if done.returncode == 0 else ""


def test_a_share_in_its_own_vm(node: tuple[StandinNode, AgentProcess], tmp_path: Path) -> None:
    lab, agent = node
    box = agent.box
    data = box.share_dir("finance")
    owner = pwd.getpwnam(box.user).pw_uid
    (data / "kept.txt").write_text("the data stays on the host\n")
    address = lab.address(71)
    body = (f'path = "/srv/smb/finance"\nmode = "vm"\nvalid_users = ["{box.user}"]\n\n'
            f'[vm]\naddress = "{address}/24"\ngateway = "{lab.gateway}"\nmemory = "1G"\n')
    began = time.monotonic()
    write_share(box, "finance.toml", body)
    wait_served(agent, "finance", timeout=420)
    created = time.monotonic() - began
    conf = vm_conf(lab, LAST_VMID).read_text()
    assert "tags: share-finance;smbgw" in conf and "agent: enabled=1" in conf, conf
    assert "virtiofs0: smbgw-finance" in conf and "cicustom: user=local:snippets/smbgw-finance.yaml" in conf
    snippet = lab.root / "var/lib/vz/snippets/smbgw-finance.yaml"
    assert snippet.read_text().startswith("#cloud-config\n") and snippet.stat().st_mode & 0o077 == 0
    nt_hash = subprocess.run(["pdbedit", "-s", str(box.smb_conf), "-L", "-w", "-u", box.user], capture_output=True,
                             text=True, check=True).stdout.split(":")[3]
    for place in (snippet, box.root / "agent.log", box.root / "run/smbgw/status.json"):
        assert nt_hash not in place.read_text(errors="replace"), f"the user's NT hash is in {place}"
    assert guest(lab, LAST_VMID, "id", "-u", box.user).count(str(owner)), "the user inside has the node's uid"

    payload = tmp_path / "payload.txt"
    payload.write_text("written into the VM's share\n")
    put = wait_for(lambda: (r := smbclient(lab, agent, address, "finance", f"put {payload} new.txt")).returncode == 0
                   and r, timeout=60, interval=0.5)
    assert put
    served_after = time.monotonic() - began
    landed = data / "new.txt"
    assert landed.read_text() == payload.read_text()
    assert landed.stat().st_uid == owner, "written as the share's user, through virtiofs (9p here) to the host"
    assert "kept.txt" in smbclient(lab, agent, address, "finance", "ls").stdout
    wanted = [f'{name}{{share="finance",vmid="{LAST_VMID}"}} 1.0' for name in ("smbgw_vm_running",
                                                                               "smbgw_vm_guest_agent_up")]
    wait_for(lambda: all(metric in lab.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                                        "'http://127.0.0.1:9945/metrics', timeout=10).read().decode())").stdout
                         for metric in wanted), timeout=60, interval=1.0)
    print(f"\n[vm] share file dropped -> served (VM cloned, booted, cloud-init done, smbd on 445) {created:.1f}s; "
          f"-> file written over SMB {served_after:.1f}s")

    # An edit: comment and read only, applied inside without a reboot.
    booted = guest(lab, LAST_VMID, "cat", "/proc/sys/kernel/random/boot_id")
    began = time.monotonic()
    write_share(box, "finance.toml", body.replace('valid_users', 'comment = "Finance team"\nread_only = true\n'
                                                  'valid_users'))
    wait_for(lambda: smbclient(lab, agent, address, "finance", f"put {payload} probe.txt").returncode != 0,
             timeout=120, interval=0.5)
    print(f"[vm] read_only = true -> refused over SMB after {time.monotonic() - began:.1f}s")
    (data / "probe.txt").unlink(missing_ok=True)
    refused = smbclient(lab, agent, address, "finance", f"put {payload} refused.txt")
    assert refused.returncode != 0 and "ACCESS_DENIED" in refused.stdout + refused.stderr, refused.stdout
    assert not (data / "refused.txt").exists()
    assert "Finance team" in guest(lab, LAST_VMID, "testparm", "-s", "--section-name", "finance")
    assert guest(lab, LAST_VMID, "cat", "/proc/sys/kernel/random/boot_id") == booted, "no reboot"

    # More memory: set, and the VM shut down and started (the plan said it needs a reboot).
    began = time.monotonic()
    edited = body.replace('memory = "1G"', 'memory = "1536M"')
    write_share(box, "finance.toml", edited.replace('valid_users', 'comment = "Finance team"\nread_only = true\n'
                                                    'valid_users'))
    wait_for(lambda: "memory: 1536" in vm_conf(lab, LAST_VMID).read_text(), timeout=60, interval=0.5)
    wait_for(lambda: share_state(agent, "finance") == "served" and guest_boot(lab) not in ("", booted), timeout=420,
             interval=1.0)
    assert "kept.txt" in smbclient(lab, agent, address, "finance", "ls").stdout
    print(f"[vm] memory 1G -> 1536M: VM rebooted and serving again after {time.monotonic() - began:.1f}s")

    # Removed: the VM, its snippet and mapping go; the data stays.
    (box.root / "etc/smbgw/shares.d/finance.toml").unlink()
    wait_for(lambda: not vm_conf(lab, LAST_VMID).exists() and share_state(agent, "finance") is None, timeout=180,
             interval=0.5)
    assert not snippet.exists()
    assert "smbgw-finance" not in lab.pvesh("get", "/cluster/mapping/dir", "--output-format", "json").stdout
    assert (data / "kept.txt").read_text() == "the data stays on the host\n" and landed.exists()


def test_a_vm_whose_guest_agent_never_answers_is_taken_away_again(node: tuple[StandinNode, AgentProcess]) -> None:
    lab, agent = node
    box = agent.box
    data = box.share_dir("silent")
    (data / "kept.txt").write_text("kept\n")
    faults = lab.root / ".qm-standin-faults"
    faults.mkdir(exist_ok=True)
    (faults / "noagent").touch()
    write_share(box, "silent.toml", f'path = "/srv/smb/silent"\nmode = "vm"\n\n[vm]\naddress = "{lab.address(72)}/24"'
                                    '\nboot_timeout = "40s"\n')

    def failed() -> str | None:
        share = ((agent.status() or {}).get("shares") or {}).get("silent") or {}
        error = str(share.get("error") or "")
        return error if "did not answer within 40s" in error else None

    try:
        error = wait_for(failed, timeout=240, interval=0.5)
    except AssertionError:
        print((agent.status() or {}).get("shares"), (agent.status() or {}).get("jobs"))
        raise
    assert "QEMU guest agent in VM" in error
    assert not vm_conf(lab, LAST_VMID).exists(), "the half-made VM is destroyed"
    assert (data / "kept.txt").read_text() == "kept\n"


def test_a_vm_whose_smbd_cannot_be_reached_is_taken_away_again(node: tuple[StandinNode, AgentProcess]) -> None:
    """The guest boots, its agent answers and cloud-init finishes, but nothing on the bridge
    reaches it (its NIC is off the bridge): smbd is not reachable on the share's address,
    so the share is never up; the VM is destroyed again and the data kept."""
    lab, agent = node
    box = agent.box
    data = box.share_dir("cutoff")
    (data / "kept.txt").write_text("kept\n")
    faults = lab.root / ".qm-standin-faults"
    faults.mkdir(exist_ok=True)
    (faults / "detached").touch()
    write_share(box, "cutoff.toml", f'path = "/srv/smb/cutoff"\nmode = "vm"\n\n[vm]\naddress = "{lab.address(74)}/24"'
                                    '\nboot_timeout = "120s"\n')

    def failed() -> str | None:
        error = str((((agent.status() or {}).get("shares") or {}).get("cutoff") or {}).get("error") or "")
        return error if "does not answer on" in error else None

    try:
        error = wait_for(failed, timeout=400, interval=0.5)
    except AssertionError:
        print((agent.status() or {}).get("shares"), (agent.status() or {}).get("jobs"))
        raise
    assert f"smbd in VM {LAST_VMID} does not answer on {lab.address(74)} port 445" in error
    assert not vm_conf(lab, LAST_VMID).exists(), "the VM is destroyed again"
    assert (data / "kept.txt").read_text() == "kept\n"


def test_bad_input_is_refused_and_nothing_is_made(node: tuple[StandinNode, AgentProcess],
                                                   qemu_guest_image: GuestImage) -> None:
    """Each share's error through the whole agent, without a VM booting: nothing is cloned
    (no new VM config), the VM that is someone else's is untouched, and the file that asks
    for too little memory is invalid with its line."""
    lab, agent = node
    box = agent.box
    qmnode.make_template(lab, qemu_guest_image, 8001, name="no-cloudinit", cloudinit=False, tags="other")
    qmnode.make_vm(lab, qemu_guest_image, 8002, name="plain-vm")
    qmnode.make_vm(lab, qemu_guest_image, 9004, name="someone-elses")
    before = sorted(p.name for p in vm_conf(lab, 8000).parent.glob("*.conf"))
    someone = vm_conf(lab, 9004).read_text()
    cases = {
        "missing": ("template = 7999", "VM template 7999 does not exist"),
        "notatemplate": ("template = 8002", "VM 8002 is not a template"),
        "nocloudinit": ("template = 8001", "VM template 8001 has no cloud-init drive"),
        "taken": ("vmid = 9004", "VM 9004 is not this share's"),
    }
    for index, (name, (line, _said)) in enumerate(cases.items()):
        box.share_dir(name)
        write_share(box, f"{name}.toml", f'path = "/srv/smb/{name}"\nmode = "vm"\n\n[vm]\n'
                                         f'address = "{lab.address(80 + index)}/24"\n{line}\n')
    box.share_dir("tiny")
    write_share(box, "tiny.toml", 'path = "/srv/smb/tiny"\nmode = "vm"\n\n[vm]\naddress = "10.98.0.9/24"\n'
                                  'memory = "256M"\n')

    def errors() -> dict[str, str]:
        shares = (agent.status() or {}).get("shares") or {}
        return {name: str((shares.get(name) or {}).get("error") or "") for name in cases}

    try:
        wait_for(lambda: all(said in errors()[name] for name, (_line, said) in cases.items()), timeout=60,
                 interval=0.5)
    except AssertionError:
        print(errors())
        raise
    files = (agent.status() or {}).get("files") or {}
    tiny = str(files.get("tiny.toml"))
    assert "less than 512M" in tiny and "'line': 6" in tiny, tiny
    assert sorted(p.name for p in vm_conf(lab, 8000).parent.glob("*.conf")) == before, "nothing was cloned"
    assert vm_conf(lab, 9004).read_text() == someone, "someone else's VM is untouched"

    # A node without virtiofs (Proxmox VE 8.3): refused with the version it needs.
    for name in cases:
        (box.root / f"etc/smbgw/shares.d/{name}.toml").unlink()
    (lab.root / ".qm-standin-version").write_text("8.3.5\n")
    box.share_dir("old")
    write_share(box, "old.toml", f'path = "/srv/smb/old"\nmode = "vm"\n\n[vm]\naddress = "{lab.address(90)}/24"\n')
    old = lambda: str((((agent.status() or {}).get("shares") or {}).get("old") or {}).get("error"))  # noqa: E731
    wait_for(lambda: "this node runs Proxmox VE 8.3" in old() and "need Proxmox VE 8.4 or later" in old(), timeout=60,
             interval=0.5)
    assert sorted(p.name for p in vm_conf(lab, 8000).parent.glob("*.conf")) == before, "nothing was cloned"


SHARED_DIR_CFG = "\ndir: shared-dir\n\tpath /mnt/pve/shared-dir\n\tcontent images,snippets\n\tshared 1\n"


def health(agent: AgentProcess, check: str) -> list[dict[str, object]]:
    return [finding for finding in (agent.status() or {}).get("health") or () if finding.get("check") == check]


def test_a_share_under_proxmox_ha_is_relocated_by_a_drain(node: tuple[StandinNode, AgentProcess],
                                                          qemu_guest_image: GuestImage) -> None:
    """`[ha] proxmox_ha = true`: the VM, a linked clone of a template on shared storage, is
    registered with Proxmox HA and its directory mapping has an entry for every node; a
    drain relocates it with HA (its mapping's entry for the target checked as qemu-server
    checks it), and the moved VM is reported, never made again here."""
    lab, agent = node
    box = agent.box
    storage = lab.root / "etc/pve/storage.cfg"
    storage.write_text(storage.read_text() + SHARED_DIR_CFG)
    qmnode.make_template(lab, qemu_guest_image, 8010, name="shared-template", tags="other", storage="shared-dir",
                         storage_path="/mnt/pve/shared-dir")
    (lab.root / "etc/pve/nodes/pve2").mkdir(parents=True)  # the other node of the cluster
    data = box.share_dir("finance")
    (data / "kept.txt").write_text("kept\n")
    address = lab.address(73)
    write_share(box, "finance.toml", f'path = "/srv/smb/finance"\nmode = "vm"\nvalid_users = ["{box.user}"]\n\n'
                                     f'[ha]\nproxmox_ha = true\n\n[vm]\naddress = "{address}/24"\ntemplate = 8010\n'
                                     'memory = "1G"\n')
    wait_served(agent, "finance", timeout=420)
    resources = (lab.root / "etc/pve/ha/resources.cfg").read_text()
    assert f"vm: {LAST_VMID}\n" in resources and "state started" in resources, resources
    mappings = lab.pvesh("get", "/cluster/mapping/dir", "--output-format", "json").stdout
    assert "node=pve-test," in mappings and "node=pve2," in mappings, mappings
    assert "kept.txt" in smbclient(lab, agent, address, "finance", "ls").stdout

    began = time.monotonic()
    drained = agent.ctl("drain", "--target", "pve2", "--timeout", "20s")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    print(f"\n[vm] drain --target pve2: {time.monotonic() - began:.1f}s\n{drained.stdout}")
    assert f"moved VM(s) {LAST_VMID} to pve2" in drained.stdout
    assert (lab.root / f"etc/pve/nodes/pve2/qemu-server/{LAST_VMID}.conf").exists()
    assert not vm_conf(lab, LAST_VMID).exists()
    found = wait_for(lambda: health(agent, "vm-moved"), timeout=60, interval=0.5)
    assert "runs on node pve2" in str(found)
    time.sleep(3)  # passes run: the moved VM is not made again here
    assert not vm_conf(lab, LAST_VMID).exists()
    assert (data / "kept.txt").read_text() == "kept\n"
    undrained = agent.ctl("undrain")
    assert undrained.returncode == 0 and "made here again" in undrained.stdout, undrained.stdout + undrained.stderr


@contextlib.contextmanager
def dhcp_server(lab: StandinNode, tmp_path: Path, first: int, last: int) -> Iterator[None]:
    """dnsmasq as the bridge's DHCP server, in the node's namespace (no DNS: --port=0),
    stopped by its pid whatever happens."""
    argv = [*lab.wrapper(), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--interface=vmbr0", "--bind-interfaces", "--user=root", "--group=root", "--no-resolv",
            f"--dhcp-range={lab.address(first)},{lab.address(last)},255.255.255.0,1h",
            f"--dhcp-leasefile={tmp_path / 'leases'}", "--pid-file=", "--log-dhcp",
            f"--log-facility={tmp_path / 'dnsmasq.log'}"]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert server.poll() is None, (tmp_path / "dnsmasq.log").read_text(errors="replace") \
            if (tmp_path / "dnsmasq.log").exists() else "dnsmasq exited"
        yield
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def test_a_dhcp_vm_is_served_and_watched_on_the_address_it_took(node: tuple[StandinNode, AgentProcess],
                                                                   tmp_path: Path) -> None:
    """`address = "dhcp"`: the VM takes its address from the bridge's DHCP server (dnsmasq
    here); the agent learns it from the guest agent (network-get-interfaces, on net0's MAC),
    waits for smbd there before the share is up, and status shows it."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not found (apt-get install dnsmasq-base)")  # conftest.py: a failure under CI
    lab, agent = node
    box = agent.box
    box.share_dir("leased")
    with dhcp_server(lab, tmp_path, 100, 120):
        began = time.monotonic()
        write_share(box, "leased.toml", f'path = "/srv/smb/leased"\nmode = "vm"\nvalid_users = ["{box.user}"]\n\n'
                                        '[vm]\naddress = "dhcp"\nmemory = "1G"\n')
        wait_served(agent, "leased", timeout=420)
        served = time.monotonic() - began

        def view() -> dict[str, object]:
            return ((((agent.status() or {}).get("plugins") or {}).get("mode_vm") or {}).get("vms") or {}) \
                .get("leased") or {}

        address = str(wait_for(lambda: view().get("address") if view().get("smbd_answers") else None, timeout=60,
                               interval=0.5))
        host, _sep, prefix = address.partition("/")
        assert prefix == "24" and 100 <= int(host.rsplit(".", 1)[1]) <= 120, address
        assert host in (tmp_path / "leases").read_text(), "the lease dnsmasq handed out"
        listed = smbclient(lab, agent, host, "leased", "ls")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        print(f"\n[vm] dhcp: share file dropped -> served on the leased {address} after {served:.1f}s")
