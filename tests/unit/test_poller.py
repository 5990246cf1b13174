"""Polling shares.d where inotify cannot see (smbgw_agent/effects/poller.py): the mount
table read as proc(5) writes it, `watch = "auto"` choosing polling on FUSE only, and the
poller waking the agent for every kind of change and for nothing else."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbgw_agent.effects.poller import ShareDirPoller, mount_of, parse_mountinfo, watch_mode
from smbgw_agent.model.config import AgentConfig, load_agent_config
from smbgw_agent.model.errors import ConfigError
from smbgw_agent.model.paths import Paths

# /proc/self/mountinfo on a Proxmox VE 8 node (pmxcfs at /etc/pve), trimmed.
PVE_MOUNTINFO = """\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/pve-root rw,errors=remount-ro
45 28 0:41 / /etc/pve rw,nosuid,nodev,relatime shared:80 - fuse /dev/fuse rw,user_id=0,group_id=0,\
default_permissions,allow_other
52 28 0:44 / /mnt/with\\040space rw,relatime shared:90 - fuse.sshfs host:/x rw,user_id=0,group_id=0
60 28 0:50 / /srv rw,relatime shared:95 - zfs tank/srv rw,xattr,noacl
"""


def test_the_mount_table_is_read_as_proc_writes_it() -> None:
    mounts = parse_mountinfo(PVE_MOUNTINFO + "garbage line\n\n12 - \n")
    assert ("/etc/pve", "fuse") in mounts and ("/mnt/with space", "fuse.sshfs") in mounts
    assert mount_of("/etc/pve/smbgw/shares.d", mounts) == ("/etc/pve", "fuse")
    assert mount_of("/etc/pvex/shares.d", mounts) == ("/", "ext4"), "a prefix of the name is not a parent"
    assert mount_of("/etc/smbgw/shares.d", mounts) == ("/", "ext4")
    assert mount_of("/srv", mounts) == ("/srv", "zfs")
    assert mount_of("/x", []) is None


def test_auto_polls_on_fuse_only(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(PVE_MOUNTINFO)
    mode, why = watch_mode("auto", Path("/etc/pve/smbgw/shares.d"), table)
    assert mode == "poll" and "/etc/pve is a FUSE file system (fuse)" in why
    assert watch_mode("auto", Path("/mnt/with space/shares"), table)[0] == "poll"
    assert watch_mode("auto", Path("/etc/smbgw/shares.d"), table) == ("inotify", "/ is ext4")
    assert watch_mode("poll", Path("/etc/smbgw/shares.d"), table)[0] == "poll"
    assert watch_mode("inotify", Path("/etc/pve/smbgw/shares.d"), table)[0] == "inotify", "the admin decides"
    assert watch_mode("auto", Path("/etc/pve"), tmp_path / "missing")[0] == "inotify"
    table.write_text("\x00" * 100_000)
    assert watch_mode("auto", Path("/etc/pve"), table) == ("inotify", "no mount holds it")


def test_watch_and_poll_interval_in_agent_toml(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path)

    def parse(text: str) -> AgentConfig:
        paths.agent_config.parent.mkdir(parents=True, exist_ok=True)
        paths.agent_config.write_text(text)
        return load_agent_config(paths)

    config = parse('[agent]\nnode = "pve1"\nwatch = "poll"\npoll_interval = "500ms"\n')
    assert (config.watch, config.poll_interval) == ("poll", 0.5)
    defaults = parse('[agent]\nnode = "pve1"\n')
    assert (defaults.watch, defaults.poll_interval) == ("auto", 1.0)
    for bad, said in (('watch = "fanotify"', "must be one of: auto, inotify, poll"),
                      ('poll_interval = "10ms"', "poll_interval"), ('poll_interval = "2h"', "poll_interval"),
                      ("watch = 1", "watch")):
        with pytest.raises(ConfigError, match=said):
            parse(f'[agent]\nnode = "pve1"\n{bad}\n')


class Woken:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self, names: None) -> None:
        assert names is None  # a poll cannot say which names changed: the agent lists them all
        self.count += 1
        self.event.set()

    def wait(self, timeout: float = 3.0) -> bool:
        woken = self.event.wait(timeout)
        self.event.clear()
        return woken


@pytest.fixture
def polled(tmp_path: Path) -> Iterator[tuple[Path, Woken, ShareDirPoller]]:
    shares = tmp_path / "shares.d"
    shares.mkdir()
    (shares / "a.toml").write_text('path = "/srv/a"\n')
    woken = Woken()
    poller = ShareDirPoller(shares, woken, 0.05, mountinfo=tmp_path / "no-mountinfo")
    poller.start()
    yield shares, woken, poller
    poller.stop()


def test_every_kind_of_change_wakes_the_agent_and_quiet_does_not(polled: tuple[Path, Woken, ShareDirPoller]
                                                                  ) -> None:
    shares, woken, poller = polled
    time.sleep(0.3)
    assert woken.count == 0 and poller.polls >= 3, "nothing changed: nothing to do"
    (shares / "b.toml").write_text('path = "/srv/b"\n')
    assert woken.wait()
    (shares / "a.toml").write_text('path = "/srv/a2"\n')  # same name, other size
    assert woken.wait()
    stamp = os.stat(shares / "a.toml").st_mtime_ns
    (shares / "a.toml").write_text('path = "/srv/a3"\n')  # same size
    os.utime(shares / "a.toml", ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    assert woken.wait()
    (shares / "c.tmp").write_text("x")
    os.replace(shares / "c.tmp", shares / "b.toml")  # an editor's write-then-rename: a new inode
    assert woken.wait()
    (shares / "b.toml").unlink()
    assert woken.wait()
    for path in shares.iterdir():
        path.unlink()
    shares.rmdir()
    assert woken.wait(), "the directory gone"
    shares.mkdir()
    assert woken.wait(), "and back"
    assert poller.watching


def test_with_a_version_file_only_it_is_read(tmp_path: Path) -> None:
    cluster = tmp_path / "pve"
    shares = cluster / "smbgw/shares.d"
    shares.mkdir(parents=True)
    (cluster / ".version").write_text("7\n")
    table = tmp_path / "mountinfo"
    table.write_text(f"45 28 0:41 / {cluster} rw,relatime - fuse /dev/fuse rw\n")
    woken = Woken()
    poller = ShareDirPoller(shares, woken, 0.05, mountinfo=table)
    assert poller.version_file() == cluster / ".version"
    poller.start()
    try:
        (shares / "a.toml").write_text('path = "/srv/a"\n')
        assert not woken.wait(0.4), "pmxcfs bumps .version with every change: nothing else is read"
        (cluster / ".version").write_text("8\n")
        assert woken.wait()
    finally:
        poller.stop()
    assert not poller.watching


# pmxcfs' /etc/pve/.members (pve-cluster status.c, cfs_create_memberlist_msg): a node of a
# three-node cluster, and a standalone node.
MEMBERS = """{
"nodename": "pve1",
"version": 6,
"cluster": { "name": "lab", "version": 3, "nodes": 3, "quorate": %d },
"nodelist": {
  "pve1": { "id": 1, "online": 1, "ip": "10.0.0.1"},
  "pve2": { "id": 2, "online": %d, "ip": "10.0.0.2"},
  "pve3": { "id": 3, "online": %d, "ip": "10.0.0.3"}
  }
}
"""
STANDALONE = '{\n"nodename": "pve1",\n"version": 0\n}\n'


def test_quorum_is_read_from_pmxcfs_members() -> None:
    from smbgw_agent.effects.sharesfs import quorate

    assert quorate(MEMBERS % (1, 1, 1)) is True
    assert quorate(MEMBERS % (0, 0, 0)) is False
    assert quorate(STANDALONE) is None, "a standalone node has no quorum to lose"
    from smbgw_agent.effects.sharesfs import cluster_nodes
    assert cluster_nodes(MEMBERS % (1, 1, 1)) == ("pve1", "pve2", "pve3")
    assert cluster_nodes(STANDALONE) == () and cluster_nodes("{") == () and cluster_nodes('{"nodelist": 1}') == ()
    for garbage in ("", "[]", "{", '{"cluster": 3}', "\x00" * 1000):
        assert quorate(garbage) is None


def test_shares_fs_is_read_only_without_quorum_and_writable_otherwise(tmp_path: Path) -> None:
    from smbgw_agent.effects.sharesfs import shares_fs

    cluster = tmp_path / "pve"
    shares = cluster / "smbgw/shares.d"
    shares.mkdir(parents=True)
    table = tmp_path / "mountinfo"
    table.write_text(f"45 28 0:41 / {cluster} rw,relatime - fuse /dev/fuse rw\n")
    members = cluster / ".members"
    assert shares_fs(shares, table).writable, "no .members: nothing says read-only"
    members.write_text(MEMBERS % (1, 1, 0))
    assert shares_fs(shares, table).to_dict() == {"mount": str(cluster), "type": "fuse", "writable": True, "why": "",
                                                  "nodes": ["pve1", "pve2", "pve3"]}
    members.write_text(MEMBERS % (0, 0, 0))
    found = shares_fs(shares, table)
    assert not found.writable and "the cluster has no quorum" in found.why
    assert shares_fs(tmp_path / "elsewhere", table).writable, "not on the cluster file system"
    table.write_text(f"45 28 0:41 / {cluster} rw,relatime - ext4 /dev/sda1 rw\n")
    assert shares_fs(shares, table).writable, ".members counts on pmxcfs (FUSE) only"


@pytest.mark.parametrize(("host_line", "writable"), [
    ("rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro", True),  # errors=remount-ro is not ro
    ("ro,relatime shared:1 - ext4 /dev/sda1 rw", False),  # a read-only bind mount
    ("rw,relatime shared:1 - ext4 /dev/sda1 ro", False),  # the whole file system read-only
])
def test_read_only_is_what_the_nodes_mount_table_says(tmp_path: Path, host_line: str, writable: bool) -> None:
    """Found in a container under the shipped unit: ProtectSystem=full makes /etc read-only
    in the agent's own view, which said "read-only" (and fired the alert) on every node.
    The node's table (init's) decides; the agent's view does not."""
    from smbgw_agent.effects.sharesfs import shares_fs

    shares = tmp_path / "etc/smbgw/shares.d"
    shares.mkdir(parents=True)
    agent_view = tmp_path / "self-mountinfo"
    agent_view.write_text(f"30 1 8:1 /etc {tmp_path}/etc ro,relatime - ext4 /dev/sda1 rw\n")
    host = tmp_path / "init-mountinfo"
    host.write_text(f"1 0 8:1 / / {host_line}\n")
    found = shares_fs(shares, agent_view, host)
    assert found.writable is writable, found
    assert shares_fs(shares, agent_view, tmp_path / "unreadable").writable, "no table to read: no alarm on a guess"
