"""LXC mode through the whole agent, with real containers: the agent (in the node's network
namespace) reads a share file with `mode = "lxc"` and, through the `pct` test stand-in
over Debian's LXC 5.0 (tests/support/pct_standin), creates an unprivileged container,
bind-mounts the share's directory, pushes the rendered smb.conf and reloads smbd inside.
A client in the namespace reads and writes the share on the container's own address and
the files land in the host directory with the owner's uid; an edit reaches the container
without a restart; a container stopped by hand is started again; a native share is served
beside it; removing the file destroys the container and keeps the data.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, served, wait_for, write_share
from tests.support.pct_standin import image
from tests.support.pct_standin.node import (
    FIRST_VMID,
    SHARED_STORAGE,
    SHARED_STORAGE_CFG,
    STORAGE_CFG,
    StandinNode,
    lxc_agent,
    smbclient,
)

pytestmark = pytest.mark.integration

def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (LXC, network namespaces)")  # conftest.py: a failure under CI
    for tool in ("lxc-start", "newuidmap", "ip", "smbclient", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install lxc uidmap iproute2 smbclient debootstrap)")


@pytest.fixture
def node() -> Iterator[tuple[StandinNode, AgentProcess]]:
    _requirements()
    with lxc_agent() as (lab, agent):
        try:
            yield lab, agent
        finally:
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-6000:])


def share_state(agent: AgentProcess, name: str) -> str | None:
    share = ((agent.status() or {}).get("shares") or {}).get(name) or {}
    state = share.get("state")
    return str(state) if state is not None else None


def finance(lab: StandinNode, agent: AgentProcess, address: str, *commands: str) -> subprocess.CompletedProcess[str]:
    return smbclient(lab, agent, address, "finance", *commands)


def test_a_share_in_its_own_container(node: tuple[StandinNode, AgentProcess], tmp_path: Path) -> None:
    lab, agent = node
    box = agent.box
    # The share's user is the sandbox's passdb user (smbpasswd -a on the "node"); the
    # agent copies it into the container with its uid, which owns the directory.
    data = box.share_dir("finance")
    owner = pwd.getpwnam(box.user).pw_uid
    (data / "kept.txt").write_text("the data stays on the host\n")
    address = lab.address(21)
    body = (f'path = "/srv/smb/finance"\nmode = "lxc"\nvalid_users = ["{box.user}"]\n\n'
            f'[lxc]\naddress = "{address}/24"\ngateway = "{lab.gateway}"\nmemory = "256M"\n')
    began = time.monotonic()
    write_share(box, "finance.toml", body)
    try:
        wait_for(lambda: share_state(agent, "finance") == "served", timeout=180, interval=0.2)
    except AssertionError:
        print((agent.status() or {}).get("shares"), (agent.status() or {}).get("jobs"))
        raise
    created = time.monotonic() - began
    conf = lab.config(FIRST_VMID).read_text()
    assert "tags: share-finance;smbgw" in conf and "unprivileged: 1" in conf, conf
    assert f"lxc.idmap: u {owner} {owner} 1" in conf, "the share owner's uid passed through"
    assert f"mp0: {data},mp=/srv/share" in conf

    nt_hash = subprocess.run(["pdbedit", "-s", str(box.smb_conf), "-L", "-w", "-u", box.user], capture_output=True,
                             text=True, check=True).stdout.split(":")[3]
    assert len(nt_hash) == 32
    for place in (box.root / "agent.log", box.root / "run/smbgw/status.json"):
        assert nt_hash not in place.read_text(errors="replace"), f"the user's NT hash is in {place}"
    inside = lab.pct("exec", str(FIRST_VMID), "--", "id", "-u", box.user).stdout.strip()
    assert inside == str(owner), "the user inside has the node's uid"
    assert lab.pct("exec", str(FIRST_VMID), "--", "ls", "/root/.smbgw-passdb").returncode != 0, "import file gone"
    payload = tmp_path / "payload.txt"
    payload.write_text("written into the container's share\n")
    put = wait_for(lambda: (r := finance(lab, agent, address, f"put {payload} new.txt")).returncode == 0 and r,
                   timeout=60, interval=0.3)
    assert put
    served_after = time.monotonic() - began
    landed = data / "new.txt"
    assert landed.read_text() == payload.read_text()
    assert landed.stat().st_uid == owner, "written as the owner, not as a shifted uid"
    listed = finance(lab, agent, address, "ls")
    assert "kept.txt" in listed.stdout, listed.stdout
    running = f'smbgw_lxc_container_running{{share="finance",vmid="{FIRST_VMID}"}} 1.0'
    wait_for(lambda: running in lab.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                                        "'http://127.0.0.1:9945/metrics', timeout=10).read().decode())").stdout,
             timeout=30, interval=1.0)  # as the next reading (every 10 s) sees it
    print(f"\n[lxc] share file dropped -> share served (container created and started) {created:.1f}s; "
          f"-> file written over SMB {served_after:.1f}s")

    # An edit: read only, applied inside without a restart.
    pid_before = lab.pct("exec", str(FIRST_VMID), "--", "systemctl", "show", "-p", "MainPID", "--value",
                         "smbd").stdout.strip()
    began = time.monotonic()
    write_share(box, "finance.toml", body.replace('valid_users', 'read_only = true\nvalid_users'))
    wait_for(lambda: finance(lab, agent, address, f"put {payload} probe.txt").returncode != 0, timeout=60,
             interval=0.3)  # writable until the new smb.conf is live: the probe may land before
    print(f"[lxc] read_only = true -> refused over SMB after {time.monotonic() - began:.1f}s")
    refused = finance(lab, agent, address, f"put {payload} refused.txt")
    assert refused.returncode != 0 and "ACCESS_DENIED" in refused.stdout + refused.stderr, refused.stdout
    assert not (data / "refused.txt").exists()
    (data / "probe.txt").unlink(missing_ok=True)
    assert lab.pct("exec", str(FIRST_VMID), "--", "systemctl", "show", "-p", "MainPID", "--value",
                   "smbd").stdout.strip() == pid_before, "smbd reloaded, not restarted"

    # A native share beside it, on the host's smbd.
    box.share_dir("native")  # the native share next to it
    write_share(box, "native.toml", 'path = "/srv/smb/native"\n')
    wait_for(lambda: served(box, "native"), timeout=60, interval=0.3)

    # Stopped by hand -> started again.
    assert lab.pct("stop", str(FIRST_VMID)).returncode == 0
    began = time.monotonic()
    wait_for(lambda: lab.pct("status", str(FIRST_VMID)).stdout.strip() == "status: running", timeout=120,
             interval=0.5)
    wait_for(lambda: finance(lab, agent, address, "ls").returncode == 0, timeout=60, interval=0.5)
    print(f"[lxc] container stopped by hand -> running and serving again after {time.monotonic() - began:.1f}s")

    # smbd stopped inside a running container: port 445 stops answering, smbd is restarted.
    assert lab.pct("exec", str(FIRST_VMID), "--", "systemctl", "stop", "smbd").returncode == 0
    assert not answers_smb(lab, address)
    began = time.monotonic()
    wait_for(lambda: answers_smb(lab, address), timeout=60, interval=0.5)
    print(f"[lxc] smbd stopped inside -> restarted and answering after {time.monotonic() - began:.1f}s")
    assert finance(lab, agent, address, "ls").returncode == 0

    # Memory: set on the running container (smbd keeps running). The address: takes
    # effect at a restart, which the job does at its end; the share moves with it.
    edited = body.replace('valid_users', 'read_only = true\nvalid_users')
    smbd_pid = lab.pct("exec", str(FIRST_VMID), "--", "systemctl", "show", "-p", "MainPID", "--value",
                       "smbd").stdout.strip()
    began = time.monotonic()
    write_share(box, "finance.toml", edited.replace('memory = "256M"', 'memory = "384M"'))
    wait_for(lambda: "memory: 384" in lab.config(FIRST_VMID).read_text(), timeout=60, interval=0.3)
    wait_for(lambda: share_state(agent, "finance") == "served", timeout=60, interval=0.3)
    print(f"[lxc] memory 256M -> 384M set in {time.monotonic() - began:.1f}s")
    assert lab.pct("exec", str(FIRST_VMID), "--", "systemctl", "show", "-p", "MainPID", "--value",
                   "smbd").stdout.strip() == smbd_pid, "memory is set live: no restart"
    moved = lab.address(22)
    began = time.monotonic()
    write_share(box, "finance.toml", edited.replace('memory = "256M"', 'memory = "384M"')
                .replace(f'{address}/24', f'{moved}/24'))
    wait_for(lambda: finance(lab, agent, moved, "ls").returncode == 0, timeout=120, interval=0.5)
    print(f"[lxc] address changed -> container restarted, served on the new address after "
          f"{time.monotonic() - began:.1f}s")
    assert f"ip={moved}/24" in lab.config(FIRST_VMID).read_text()
    assert finance(lab, agent, address, "ls").returncode != 0, "the old address is gone"

    # Removed -> destroyed, data kept.
    (box.shares_dir / "finance.toml").unlink()
    try:
        wait_for(lambda: not lab.config(FIRST_VMID).exists(), timeout=120, interval=0.3)
    except AssertionError:
        print((agent.status() or {}).get("shares"), (agent.status() or {}).get("jobs"))
        raise
    wait_for(lambda: share_state(agent, "finance") is None, timeout=60, interval=0.3)
    assert sorted(p.name for p in data.iterdir()) == ["kept.txt", "new.txt"]
    assert served(box, "native"), "the native share is untouched"

    # No guest is left (pmxcfs then leaves "ids" out of .vmlist): a new share still gets one.
    assert '"ids"' not in (box.root / "etc/pve/.vmlist").read_text()
    write_share(box, "again.toml", body.replace(f"{address}/24", f"{lab.address(23)}/24"))
    wait_for(lambda: share_state(agent, "again") == "served", timeout=120, interval=0.2)
    assert lab.config(FIRST_VMID).exists(), "the VMID given back is used again"


def test_a_container_that_cannot_start_is_taken_away_again(node: tuple[StandinNode, AgentProcess]) -> None:
    """The bridge does not exist. A static address is probed on it first, so nothing is
    created; with DHCP (nothing to probe) pct start fails half way through the job: the
    container it created is destroyed again, the share fails with Proxmox's message and
    is retried with a growing back-off, and the share's data is untouched."""
    lab, agent = node
    box = agent.box
    config = box.root / "etc/smbgw/agent.toml"
    config.write_text(config.read_text().replace('bridge = "vmbr0"', 'bridge = "vmbr9"'))
    assert agent.proc is not None
    agent.stop()
    agent.start()
    data = box.share_dir("broken")
    (data / "kept.txt").write_text("untouched\n")
    write_share(box, "broken.toml",
                f'path = "/srv/smb/broken"\nmode = "lxc"\n\n[lxc]\naddress = "{lab.address(31)}/24"\n')
    wait_for(lambda: "interface vmbr9 does not exist" in share_error(agent, "broken"), timeout=120, interval=0.3)
    assert not lab.config(FIRST_VMID).exists()
    write_share(box, "broken.toml", 'path = "/srv/smb/broken"\nmode = "lxc"\n\n[lxc]\naddress = "dhcp"\n')
    wait_for(lambda: "bridge 'vmbr9' does not exist" in share_error(agent, "broken"), timeout=120, interval=0.3)
    assert share_state(agent, "broken") == "failed"
    assert not lab.config(FIRST_VMID).exists(), "the half-made container was destroyed"
    assert [p.name for p in data.iterdir()] == ["kept.txt"]
    wait_for(lambda: ((agent.status() or {}).get("shares") or {}).get("broken", {}).get("failures", 0) >= 3,
             timeout=120, interval=0.3)
    share = (agent.status() or {})["shares"]["broken"]
    print(f"[lxc] a container that cannot start: {share['failures']} failed jobs, next in "
          f"{share['retry_at'] - time.time():.0f}s")
    assert share["retry_at"] - time.time() > 4, "the back-off grows from one failed job to the next"


def config_text(lab: StandinNode, vmid: int) -> str:
    """The container's config, "" while there is none (destroyed, not yet made again)."""
    try:
        return lab.config(vmid).read_text()
    except FileNotFoundError:
        return ""


def share_error(agent: AgentProcess, name: str) -> str:
    return str((((agent.status() or {}).get("shares") or {}).get(name) or {}).get("error") or "")


def health(agent: AgentProcess, check: str) -> list[dict[str, object]]:
    return [finding for finding in (agent.status() or {}).get("health") or () if finding.get("check") == check]


def reload(agent: AgentProcess) -> None:
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)


def test_bad_input_is_refused_and_nothing_else_is_touched(node: tuple[StandinNode, AgentProcess]) -> None:
    """The issue's bad inputs, each through the whole agent and real containers: a template
    that does not exist, an address another host answers for (ARP probe on the bridge),
    a VMID range used up, a VMID that belongs to a guest the agent did not make, a share
    directory whose owner root may not map into a container, memory "0". Each is the
    share's error and nothing is created; other guests stay as they were; each fixed
    input is served. An orphaned container is reported, and destroyed once
    `[proxmox] destroy_orphans = true`."""
    lab, agent = node
    box = agent.box
    config = box.root / "etc/smbgw/agent.toml"
    good_template = f"local:vztmpl/{image.DEFAULT_NAME}"
    config.write_text(config.read_text().replace(f"{FIRST_VMID + 9}]", f"{FIRST_VMID + 2}]")
                      .replace(good_template, "local:vztmpl/missing_12_amd64.tar.zst"))
    reload(agent)
    foreign, ghost = FIRST_VMID + 2, FIRST_VMID + 100
    assert lab.pct("create", str(foreign), good_template, "--hostname", "database", "--rootfs", "local-lvm:1",
                   "--start", "0").returncode == 0
    made = lab.pct("create", str(ghost), good_template, "--hostname", "smbgw-ghost", "--rootfs", "local-lvm:1",
                   "--tags", "smbgw;share-ghost", "--description",
                   "smbgw-agent share ghost (ghost.toml on pve-test). Managed by smbgw-agent: changes made here are "
                   "undone.",
                   "--start", "0")
    assert made.returncode == 0, made.stderr
    visitor = FIRST_VMID + 101  # another node's share container, moved here by Proxmox HA
    made = lab.pct("create", str(visitor), good_template, "--hostname", "smbgw-sales", "--rootfs", "local-lvm:1",
                   "--tags", "smbgw;share-sales", "--description",
                   "smbgw-agent share sales (sales.toml on pve2). Managed by smbgw-agent: changes made here are "
                   "undone.", "--start", "0")
    assert made.returncode == 0, made.stderr

    def lxc_share(name: str, host: int, extra: str = "") -> None:
        box.share_dir(name)
        write_share(box, f"{name}.toml", f'path = "/srv/smb/{name}"\nmode = "lxc"\n\n[lxc]\n'
                                         f'address = "{lab.address(host)}/24"\nmemory = "256M"\n{extra}')

    # The template does not exist: Proxmox's message, and no container.
    lxc_share("one", 41)
    wait_for(lambda: "No such file or directory" in share_error(agent, "one"), timeout=120, interval=0.3)
    assert share_state(agent, "one") == "failed" and not lab.config(FIRST_VMID).exists()
    finding = wait_for(lambda: health(agent, "lxc-orphan"), timeout=60, interval=0.3)
    assert f"pct destroy {ghost} --purge" in str(finding), finding

    # Fixed, and orphans to be destroyed: served; the orphan goes, the foreign guest stays.
    config.write_text(config.read_text().replace("local:vztmpl/missing_12_amd64.tar.zst", good_template)
                      + "destroy_orphans = true\n")
    reload(agent)
    wait_for(lambda: share_state(agent, "one") == "served", timeout=180, interval=0.3)
    wait_for(lambda: not lab.config(ghost).exists(), timeout=120, interval=0.3)
    assert not health(agent, "lxc-orphan") or wait_for(lambda: not health(agent, "lxc-orphan"), timeout=30)
    assert lab.config(foreign).exists() and lab.pct("status", str(foreign)).stdout.strip() == "status: stopped"
    assert lab.config(visitor).exists(), "another node's container is neither an orphan here nor destroyed"

    # An address the first container answers for: probed on the bridge, refused.
    lxc_share("two", 41)
    wait_for(lambda: "is in use on vmbr0" in share_error(agent, "two"), timeout=120, interval=0.3)
    assert "the host at 02:" in share_error(agent, "two"), share_error(agent, "two")
    assert not lab.config(FIRST_VMID + 1).exists()
    assert answers_smb(lab, lab.address(41)), "the first share keeps its address"
    lxc_share("two", 42)
    wait_for(lambda: share_state(agent, "two") == "served", timeout=180, interval=0.3)
    assert lab.config(FIRST_VMID + 1).exists()

    # The range is used up (its third id is the foreign guest's).
    lxc_share("three", 43)
    wait_for(lambda: "no free VMID left in [proxmox] vmid_range 9000-9002" in share_error(agent, "three"),
             timeout=60, interval=0.3)
    # The foreign guest's VMID, asked for by a share: refused, the guest untouched.
    before = lab.config(foreign).read_text()
    lxc_share("three", 43, f"vmid = {foreign}\n")
    wait_for(lambda: f"container {foreign} is not this share's" in share_error(agent, "three"), timeout=60,
             interval=0.3)
    assert lab.config(foreign).read_text() == before

    # A share directory whose owner /etc/subuid does not let root map into a container.
    lxc_share("four", 44, f"vmid = {FIRST_VMID + 50}\n")
    os.chown(box.share_dir("four"), 4242, 4242)
    write_share(box, "four.toml", (box.shares_dir / "four.toml").read_text() + "cores = 1\n")
    wait_for(lambda: "does not let root map 4242" in share_error(agent, "four"), timeout=60, interval=0.3)
    assert "add root:4242:1" in share_error(agent, "four") and not lab.config(FIRST_VMID + 50).exists()

    # memory = "0" and "2T": the file is invalid, with its line and why.
    lxc_share("five", 45, "")
    for memory, why in (('"0"', "out of range"), ('"2T"', "more than 1T")):
        write_share(box, "five.toml", (box.shares_dir / "five.toml").read_text().replace('"256M"', memory)
                    .replace('"0"', memory))
        problems = wait_for(lambda why=why: [p for p in ((agent.status() or {}).get("files") or {})
                                             .get("five.toml", {}).get("problems") or () if why in p["message"]],
                            timeout=60, interval=0.3)
        assert problems[0]["line"] == 6 and problems[0]["key"] == "lxc.memory", problems
    made = sorted(path.name for path in lab.config(FIRST_VMID).parent.glob("*.conf"))
    assert made == [f"{FIRST_VMID}.conf", f"{FIRST_VMID + 1}.conf", f"{foreign}.conf", f"{visitor}.conf"], made
    assert share_state(agent, "one") == share_state(agent, "two") == "served"


def answers_smb(lab: StandinNode, address: str) -> bool:
    """Something accepts TCP connections on port 445 at `address`, seen from the node."""
    return lab.run("python3", "-c", f"import socket; socket.create_connection(('{address}', 445), timeout=3)",
                   timeout=30).returncode == 0


def test_proxmox_ha_registers_the_share_container(node: tuple[StandinNode, AgentProcess]) -> None:
    """`[ha] proxmox_ha = true`: the container is an HA resource (through the `ha-manager`
    stand-in), kept started; stopped by hand (which Proxmox turns into an HA stop) it is
    started again; the switch off takes it out of HA and leaves it running; removing the
    share destroys it and its HA entry (`pct destroy --purge`)."""
    lab, agent = node
    box = agent.box
    box.share_dir("safe")
    resources = lab.root / "etc/pve/ha/resources.cfg"
    body = (f'path = "/srv/smb/safe"\nmode = "lxc"\n\n[lxc]\naddress = "{lab.address(51)}/24"\nmemory = "256M"\n\n'
            '[ha]\nproxmox_ha = true\n')
    # Root disks on local-lvm: HA could move the config but not the disk. Refused.
    write_share(box, "safe.toml", body)
    wait_for(lambda: "storage 'local-lvm' is this node's" in share_error(agent, "safe"), timeout=60, interval=0.3)
    assert not lab.config(FIRST_VMID).exists()
    (lab.root / "etc/pve/storage.cfg").write_text(STORAGE_CFG + SHARED_STORAGE_CFG)
    config = box.root / "etc/smbgw/agent.toml"
    config.write_text(config.read_text().replace('storage = "local-lvm"', f'storage = "{SHARED_STORAGE}"'))
    reload(agent)
    sid = f"ct: {FIRST_VMID}\n"
    wait_for(lambda: resources.exists() and sid in resources.read_text(), timeout=180, interval=0.3)
    entry = resources.read_text()
    assert "\tstate started\n" in entry and "\tcomment smbgw-agent share safe\n" in entry, entry
    conf = lab.config(FIRST_VMID).read_text()
    assert "mp=/srv/share,shared=1\n" in conf and f"\nrootfs: {SHARED_STORAGE}:" in conf, conf
    wait_for(lambda: share_state(agent, "safe") == "served", timeout=60, interval=0.3)

    stopped = lab.pct("stop", str(FIRST_VMID))
    assert f"Requesting HA stop for CT {FIRST_VMID}" in stopped.stdout and "\tstate stopped\n" in resources.read_text()
    wait_for(lambda: lab.pct("status", str(FIRST_VMID)).stdout.strip() == "status: running", timeout=120,
             interval=0.5)
    assert "\tstate started\n" in resources.read_text(), "started again through HA"
    wait_for(lambda: answers_smb(lab, lab.address(51)), timeout=60, interval=0.5)

    write_share(box, "safe.toml", body.replace("proxmox_ha = true", "proxmox_ha = false"))
    wait_for(lambda: sid not in resources.read_text(), timeout=60, interval=0.3)
    assert lab.pct("status", str(FIRST_VMID)).stdout.strip() == "status: running"
    write_share(box, "safe.toml", body)
    wait_for(lambda: sid in resources.read_text(), timeout=60, interval=0.3)

    (box.shares_dir / "safe.toml").unlink()
    wait_for(lambda: not lab.config(FIRST_VMID).exists(), timeout=120, interval=0.3)
    assert sid not in resources.read_text(), "pct destroy --purge takes it out of HA"


def test_drain_migrates_the_containers_that_can_move(node: tuple[StandinNode, AgentProcess]) -> None:
    """`smbgwctl drain --target NODE`: the LXC mode's part of the drain migrates the node's
    share containers with `pct migrate --restart` (through HA for an HA resource); one
    whose data is a local bind mount cannot move, which refuses the drain unless --force
    leaves it here. A moved container is left where it is and reported, never made
    again here."""
    lab, agent = node
    box = agent.box
    (lab.root / "etc/pve/storage.cfg").write_text(STORAGE_CFG + SHARED_STORAGE_CFG)
    (lab.root / "etc/pve/nodes/pve2").mkdir(parents=True)  # the other node of the cluster
    config = box.root / "etc/smbgw/agent.toml"
    config.write_text(config.read_text().replace('storage = "local-lvm"', f'storage = "{SHARED_STORAGE}"'))
    reload(agent)
    for name, host, ha in (("safe", 61, "\n[ha]\nproxmox_ha = true\n"), ("plain", 62, "")):
        box.share_dir(name)
        write_share(box, f"{name}.toml", f'path = "/srv/smb/{name}"\nmode = "lxc"\n\n[lxc]\naddress = '
                                         f'"{lab.address(host)}/24"\nmemory = "256M"\n{ha}')
    wait_for(lambda: share_state(agent, "safe") == share_state(agent, "plain") == "served", timeout=180,
             interval=0.3)
    vmids = {name: info["vmid"] for name, info in
             (((agent.status() or {}).get("plugins") or {}).get("mode_lxc") or {})["containers"].items()}

    refused = agent.ctl("drain")
    assert refused.returncode != 0 and "--target NODE" in refused.stderr, refused.stderr
    refused = agent.ctl("drain", "--target", "pve-test")
    assert refused.returncode != 0 and "is this node" in refused.stderr, refused.stderr
    refused = agent.ctl("drain", "--target", "pve2")
    assert refused.returncode != 0 and "local bind mount" in refused.stderr, refused.stderr
    assert lab.config(vmids["safe"]).exists() and lab.config(vmids["plain"]).exists(), "nothing moved"

    began = time.monotonic()
    drained = agent.ctl("drain", "--target", "pve2", "--force", "--timeout", "20s")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    print(f"\n[lxc] drain --target pve2: {time.monotonic() - began:.1f}s\n{drained.stdout}")
    assert f"moved container(s) {vmids['safe']} to pve2" in drained.stdout
    assert f"left here: {vmids['plain']}" in drained.stdout and "drained after" in drained.stdout
    assert (lab.root / f"etc/pve/nodes/pve2/lxc/{vmids['safe']}.conf").exists()
    assert not lab.config(vmids["safe"]).exists()
    vmlist = json.loads((lab.root / "etc/pve/.vmlist").read_text())
    assert vmlist["ids"][str(vmids["safe"])]["node"] == "pve2"
    found = wait_for(lambda: health(agent, "lxc-moved"), timeout=60, interval=0.5)
    assert "runs on node pve2" in str(found) and f"ha-manager migrate ct:{vmids['safe']} pve-test" in str(found)
    time.sleep(3)  # passes run: the moved container is not made again here
    assert not lab.config(vmids["safe"]).exists()
    assert sorted(p.name for p in lab.config(vmids["plain"]).parent.glob("*.conf")) == [f"{vmids['plain']}.conf"]

    # A new share on the drained node: no container until the node is undrained.
    box.share_dir("late")
    write_share(box, "late.toml", f'path = "/srv/smb/late"\nmode = "lxc"\n\n[lxc]\naddress = "{lab.address(63)}/24"\n'
                                  'memory = "256M"\n')
    wait_for(lambda: "this node is drained" in share_error(agent, "late"), timeout=60, interval=0.3)
    assert sorted(p.name for p in lab.config(vmids["plain"]).parent.glob("*.conf")) == [f"{vmids['plain']}.conf"]
    undrained = agent.ctl("undrain")
    assert undrained.returncode == 0 and "made here again" in undrained.stdout, undrained.stdout + undrained.stderr
    reload(agent)  # retried at once, not at the end of its back-off
    wait_for(lambda: share_state(agent, "late") == "served", timeout=180, interval=0.3)


def test_a_dhcp_container_is_watched_on_the_address_it_holds(node: tuple[StandinNode, AgentProcess]) -> None:
    """`address = "dhcp"`: the address is read from inside the container (`ip addr` on
    eth0) and smbd is watched there, as for a static one. No DHCP server runs here: the
    test gives eth0 the address a lease would (the stand-in leaves a DHCP interface
    unconfigured)."""
    lab, agent = node
    box = agent.box
    box.share_dir("leased")
    write_share(box, "leased.toml", 'path = "/srv/smb/leased"\nmode = "lxc"\n\n[lxc]\naddress = "dhcp"\n'
                                    'memory = "256M"\n')
    wait_for(lambda: share_state(agent, "leased") == "served", timeout=180, interval=0.3)

    def view() -> dict[str, object]:
        return ((((agent.status() or {}).get("plugins") or {}).get("mode_lxc") or {}).get("containers") or {}) \
            .get("leased") or {}

    wait_for(lambda: view().get("status") == "running", timeout=60, interval=0.5)
    assert view().get("address") is None, "no lease yet: no address, nothing tried"
    lease = f"{lab.address(71)}/24"
    for argv in (("ip", "link", "set", "eth0", "up"), ("ip", "addr", "add", lease, "dev", "eth0")):
        done = lab.pct("exec", str(FIRST_VMID), "--", *argv)
        assert done.returncode == 0, done.stderr
    wait_for(lambda: view().get("address") == lease and view().get("smbd_answers") is True, timeout=60,
             interval=0.5)


def test_an_interrupted_create_is_cleaned_up_and_made_again(node: tuple[StandinNode, AgentProcess],
                                                            tmp_path: Path) -> None:
    """`pct create` killed after it took the VMID (its config holds only `lock: create`):
    the job removes what it left and the retry creates the container. And the agent itself
    killed while such a create ran: at its next start the half-made container under the
    VMID it recorded is unlocked, destroyed and made again."""
    lab, agent = node
    box = agent.box
    marker = tmp_path / "die-once"
    agent.stop()
    agent.env = {**agent.env, "SMBGW_PCT_CREATE_DIES": str(marker)}
    marker.touch()
    agent.start()
    box.share_dir("cut")
    write_share(box, "cut.toml", f'path = "/srv/smb/cut"\nmode = "lxc"\n\n[lxc]\naddress = "{lab.address(81)}/24"\n'
                                 'memory = "256M"\n')
    wait_for(lambda: "exit 137" in share_error(agent, "cut"), timeout=120, interval=0.2)
    assert not marker.exists()
    wait_for(lambda: share_state(agent, "cut") == "served", timeout=180, interval=0.3)

    # The agent killed mid-create: the state it left is the one made here by hand.
    agent.stop(signal.SIGKILL)
    assert lab.pct("stop", str(FIRST_VMID)).returncode == 0
    assert lab.pct("destroy", str(FIRST_VMID), "--purge").returncode == 0
    marker.touch()
    died = subprocess.run([*lab.wrapper(), "pct", "create", str(FIRST_VMID), f"local:vztmpl/{image.DEFAULT_NAME}",
                           "--rootfs", "local-lvm:1"], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **lab.env(), "SMBGW_PCT_CREATE_DIES": str(marker)})
    assert died.returncode == 137 and lab.config(FIRST_VMID).read_text() == "lock: create\n"
    agent.start()
    wait_for(lambda: "tags: share-cut;smbgw" in config_text(lab, FIRST_VMID), timeout=120, interval=0.3)
    wait_for(lambda: answers_smb(lab, lab.address(81)), timeout=120, interval=0.5)
    wait_for(lambda: share_state(agent, "cut") == "served", timeout=60, interval=0.3)


def test_a_hanging_pct_holds_up_only_its_own_share(node: tuple[StandinNode, AgentProcess]) -> None:
    """`pct create` hangs (the stand-in holds it): the share's job waits with its progress
    in status and the share stays pending, while the agent goes on: a native share dropped
    meanwhile is served, `smbgwctl status` answers. When pct comes back the share is
    served. (A pct that never comes back is killed at the job's own timeout: at the
    plugin's boundary, tests/reliability/test_lxc_faults.py.)"""
    lab, agent = node
    box = agent.box
    held = lab.root / ".pct-standin-hold" / "create"
    held.parent.mkdir(exist_ok=True)
    held.write_text("")
    try:
        box.share_dir("slow")
        write_share(box, "slow.toml", f'path = "/srv/smb/slow"\nmode = "lxc"\n\n[lxc]\naddress = "{lab.address(81)}/24"'
                                      '\nmemory = "256M"\n')

        def job() -> dict[str, object]:
            return ((agent.status() or {}).get("jobs") or {}).get("lxc:slow") or {}

        began = time.monotonic()
        wait_for(lambda: "creating container" in str(job().get("progress")), timeout=60, interval=0.3)
        print(f"\n[lxc] the job's progress in status.json {time.monotonic() - began:.1f}s after the drop")
        box.share_dir("native")
        began = time.monotonic()
        write_share(box, "native.toml", 'path = "/srv/smb/native"\n')
        wait_for(lambda: served(box, "native"), timeout=30, interval=0.2)
        print(f"[lxc] pct create hanging: a native share served {time.monotonic() - began:.1f}s after its drop")
        began = time.monotonic()
        status = agent.ctl("status", "--json")
        assert status.returncode == 0, status.stderr
        print(f"[lxc] pct create hanging: smbgwctl status answered in {time.monotonic() - began:.2f}s")
        shown = json.loads(status.stdout)["shares"]["slow"]
        assert shown["state"] == "pending", shown
        assert job().get("state") == "running" and "creating container" in str(job().get("progress"))
        assert lab.pct("list").returncode == 0, "other pct commands are not held"
    finally:
        held.unlink(missing_ok=True)
    wait_for(lambda: share_state(agent, "slow") == "served", timeout=180, interval=0.3)


def test_quota_and_previous_versions_act_on_the_host_path(node: tuple[StandinNode, AgentProcess],
                                                           tmp_path: Path) -> None:
    """A share in its container on btrfs with [quota] and [backup]: the limit is set on the
    host's subvolume and a write through the container's smbd past it is refused; a
    snapshot taken on the host is a Previous Version inside (vfs_shadow_copy2 in the
    container's smb.conf, the snapshots reached through the bind mount)."""
    from tests.support.storage import btrfs_image

    lab, agent = node
    box = agent.box
    owner = pwd.getpwnam(box.user)
    address = lab.address(91)
    with btrfs_image(box.root / "srv/smb/pool") as pool:
        # `ip netns exec` gave the agent a mount namespace of its own, which does not
        # see a file system mounted after it started: start it again.
        agent.stop()
        agent.start()
        data = pool / "finance"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        os.chown(data, owner.pw_uid, owner.pw_gid)  # the share's owner, passed through into the container
        (data / "report.txt").write_text("v1\n")
        os.chown(data / "report.txt", owner.pw_uid, owner.pw_gid)
        write_share(box, "finance.toml", f'path = "/srv/smb/pool/finance"\nmode = "lxc"\nvalid_users = '
                                         f'["{box.user}"]\n\n[lxc]\naddress = "{address}/24"\nmemory = "256M"\n\n'
                                         '[quota]\nsize = "8M"\n\n[backup]\nschedule = "daily"\nkeep = { last = 3 }\n')
        try:
            wait_for(lambda: share_state(agent, "finance") == "served", timeout=180, interval=0.3)
            conf = lab.pct("exec", str(FIRST_VMID), "--", "cat", "/etc/samba/smb.conf").stdout
            assert "shadow_copy2" in conf and "dfree command" not in conf, conf
            limit = subprocess.run(["btrfs", "qgroup", "show", "-re", "--raw", str(data)], capture_output=True,
                                   text=True, check=True).stdout
            assert str(8 * 1024 * 1024) in limit, limit

            taken = agent.ctl("snapshot", "finance")
            assert taken.returncode == 0, taken.stdout + taken.stderr
            changed = tmp_path / "v2.txt"
            changed.write_text("v2\n")
            put = finance(lab, agent, address, f"put {changed} report.txt")
            if put.returncode != 0:
                for argv in (("ls", "-la", "/srv/share"), ("cat", "/etc/samba/smb.conf"), ("mount",),
                             ("tail", "-20", "/var/log/samba/log.smbd")):
                    seen = lab.pct("exec", str(FIRST_VMID), "--", *argv)
                    print(argv, seen.stdout[-3000:], seen.stderr[-500:])
            assert put.returncode == 0, put.stdout
            gmt = re.compile(r"@GMT-\d{4}\.\d{2}\.\d{2}-\d{2}\.\d{2}\.\d{2}")
            tokens = wait_for(lambda: sorted(set(gmt.findall(finance(lab, agent, address,
                                                                     "allinfo report.txt").stdout))),
                              timeout=30, interval=1.0)
            old = tmp_path / "old.txt"
            got = finance(lab, agent, address, f"get {tokens[0]}\\report.txt {old}")
            assert got.returncode == 0 and old.read_text() == "v1\n", got.stdout + got.stderr
            print(f"\n[lxc] a host snapshot is a Previous Version inside the container: {tokens[0]}")

            big = tmp_path / "big.bin"
            big.write_bytes(os.urandom(12 * 1024 * 1024))
            os.sync()
            refused = finance(lab, agent, address, f"put {big} big.bin")
            assert refused.returncode != 0 and "NT_STATUS_DISK_FULL" in refused.stdout + refused.stderr, \
                refused.stdout + refused.stderr
        finally:
            (box.shares_dir / "finance.toml").unlink(missing_ok=True)
            wait_for(lambda: not lab.config(FIRST_VMID).exists(), timeout=120, interval=0.5)
