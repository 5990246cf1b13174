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

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, served, wait_for, write_share
from tests.support.pct_standin.node import FIRST_VMID, StandinNode, lxc_agent, smbclient

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
    """The bridge does not exist: pct start fails half way through the job. The container
    it created is destroyed again, the share fails with Proxmox's message and is retried,
    and the share's data is untouched."""
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
    wait_for(lambda: "bridge 'vmbr9' does not exist" in str(((agent.status() or {}).get("shares") or {})
                                                             .get("broken", {}).get("error")),
             timeout=120, interval=0.3)
    assert share_state(agent, "broken") == "failed"
    assert not lab.config(FIRST_VMID).exists(), "the half-made container was destroyed"
    assert [p.name for p in data.iterdir()] == ["kept.txt"]
