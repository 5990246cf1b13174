"""shares.d on a FUSE file system, as /etc/pve is on a Proxmox node (pmxcfs): a file that
another node writes raises no inotify event here, so the agent polls there.

The cluster file system is stood in for by a real FUSE mount: bindfs mounts a backing
directory (another node's view) at the sandbox's /etc/pve. A write into the backing
directory reaches the mount without any inotify event on it, exactly as a change made on
another node reaches pmxcfs here. With `[agent] watch = "auto"` (the default) the agent
sees the FUSE mount, polls, and serves a share written "elsewhere" within about
`poll_interval`; with `watch = "inotify"` forced it does not, until its next resync. When
the mount's root holds pmxcfs' `.version`, only that file is read per poll. While the
cluster has no quorum (pmxcfs' `.members`) or the mount is read-only, the shares stay as
they are and `smbgw_cluster_fs_writable` is 0. A share placed on a node outside the
cluster's members is reported; three agents on one cluster file system move a share from
one node to another when its `node` is edited.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, wait_for
from tests.support.procs import wait_served

pytestmark = pytest.mark.integration
SHARES_DIR = "/etc/pve/smbgw/shares.d"


@contextlib.contextmanager
def fuse_pve(box: Sandbox, tmp_path: Path, *options: str, backing: Path | None = None) -> Iterator[Path]:
    """The sandbox's /etc/pve as a FUSE mount of a backing directory (bindfs `options`;
    `backing`, else one under tmp_path); the backing directory (where "another node"
    writes) is yielded. Unmounted whatever happens."""
    if shutil.which("bindfs") is None:
        pytest.skip("bindfs not found (apt-get install bindfs)")  # conftest.py: a failure under CI
    backing = backing or tmp_path / "cluster"
    (backing / "smbgw/shares.d").mkdir(parents=True, exist_ok=True)
    mount = box.root / "etc/pve"
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bindfs", *options, str(backing), str(mount)], check=True, capture_output=True, timeout=30)
    try:
        yield backing
    finally:
        for _ in range(20):
            if subprocess.run(["fusermount", "-u", str(mount)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.5)


def agent_on_pve(box: Sandbox, watch: str, said: str, node: str = "sandbox", port: int = 9945) -> AgentProcess:
    """The agent (node `node`, metrics on `port`) with shares_dir on the FUSE /etc/pve,
    started and past its choice of watcher (`said` in its log)."""
    toml = box.root / "etc/smbgw/agent.toml"
    text = toml.read_text().replace('node = "sandbox"', f'node = "{node}"').replace(":9945", f":{port}")
    toml.write_text(text.replace('[agent]\n', f'[agent]\nshares_dir = "{SHARES_DIR}"\nwatch = "{watch}"\n'
                                 'poll_interval = "1s"\n', 1))
    agent = AgentProcess(box)
    agent.start()
    wait_for(lambda: said in agent.log_text(), timeout=20, interval=0.2)
    return agent


def written_elsewhere(backing: Path, name: str) -> None:
    target = backing / "smbgw/shares.d" / f"{name}.toml"
    target.write_text(f'path = "/srv/smb/{name}"\n')


def served_within(box: Sandbox, name: str, seconds: float) -> bool:
    try:
        wait_served(box, name, timeout=seconds)
    except AssertionError:
        return False
    return True


def test_a_change_made_elsewhere_on_a_fuse_shares_dir_is_noticed_by_polling(sandbox: Sandbox,
                                                                             tmp_path: Path) -> None:
    with fuse_pve(sandbox, tmp_path) as backing:
        agent = agent_on_pve(sandbox, "auto", "by polling every 1s")
        try:
            assert "is a FUSE file system" in agent.log_text()
            sandbox.share_dir("remote")
            began = time.monotonic()
            written_elsewhere(backing, "remote")
            wait_served(sandbox, "remote", timeout=10)
            noticed = time.monotonic() - began
            print(f"\n[cluster fs] share file written behind the FUSE mount -> served after {noticed:.2f}s "
                  "(poll_interval 1s)")
            assert noticed < 5.0, "noticed by the poll, not by the 60 s resync"
            (backing / "smbgw/shares.d/remote.toml").unlink()
            wait_for(lambda: not served_within(sandbox, "remote", 0.5), timeout=10, interval=0.2)
        finally:
            agent.stop()


def test_inotify_alone_misses_a_change_made_elsewhere(sandbox: Sandbox, tmp_path: Path) -> None:
    """Why the agent polls there: forced to inotify, it sees nothing until its resync."""
    with fuse_pve(sandbox, tmp_path) as backing:
        agent = agent_on_pve(sandbox, "inotify", "by inotify")
        try:
            sandbox.share_dir("unseen")
            written_elsewhere(backing, "unseen")
            assert not served_within(sandbox, "unseen", 4.0), "inotify saw a change made behind the mount"
        finally:
            agent.stop()


def test_on_pmxcfs_only_its_version_file_is_read(sandbox: Sandbox, tmp_path: Path) -> None:
    """With `.version` at the mount's root (pmxcfs bumps it on every change), a poll reads
    only that file: a share file changed without a new version is not looked at, the
    version bumped is (pmxcfs never does the former; the test shows what is read)."""
    with fuse_pve(sandbox, tmp_path) as backing:
        (backing / ".version").write_text("1\n")
        agent = agent_on_pve(sandbox, "auto", "by polling every 1s")
        try:
            sandbox.share_dir("versioned")
            written_elsewhere(backing, "versioned")
            assert not served_within(sandbox, "versioned", 3.0), "read more than .version"
            (backing / ".version").write_text("2\n")
            wait_served(sandbox, "versioned", timeout=10)
        finally:
            agent.stop()


MEMBERS = ('{\n"nodename": "sandbox",\n"version": 4,\n"cluster": { "name": "lab", "version": 3, "nodes": 3, '
           '"quorate": %d },\n"nodelist": {\n  "sandbox": { "id": 1, "online": 1, "ip": "127.0.0.1"}\n  }\n}\n')


def writable_metric(agent: AgentProcess) -> float | None:
    import urllib.request
    body = urllib.request.urlopen("http://127.0.0.1:9945/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith("smbgw_cluster_fs_writable "):
            return float(line.split()[1])
    return None


def shares_fs_status(agent: AgentProcess) -> dict[str, object]:
    return (agent.status() or {}).get("shares_fs") or {}


def test_without_quorum_the_shares_stay_and_the_condition_is_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    with fuse_pve(sandbox, tmp_path) as backing:
        (backing / ".version").write_text("1\n")
        (backing / ".members").write_text(MEMBERS % 1)
        sandbox.share_dir("kept")
        written_elsewhere(backing, "kept")
        agent = agent_on_pve(sandbox, "auto", "by polling every 1s")
        try:
            wait_served(sandbox, "kept", timeout=20)
            wait_for(lambda: writable_metric(agent) == 1.0, timeout=20, interval=0.3)
            (backing / ".members").write_text(MEMBERS % 0)
            (backing / ".version").write_text("2\n")
            wait_for(lambda: writable_metric(agent) == 0.0, timeout=20, interval=0.3)
            assert shares_fs_status(agent).get("writable") is False
            assert "no quorum" in str(shares_fs_status(agent).get("why"))
            assert "share files cannot be changed now" in agent.log_text()
            assert served_within(sandbox, "kept", 2.0), "the share stays served"
            (backing / ".members").write_text(MEMBERS % 1)
            (backing / ".version").write_text("3\n")
            wait_for(lambda: writable_metric(agent) == 1.0, timeout=20, interval=0.3)
            assert "takes changes again" in agent.log_text()
        finally:
            agent.stop()


def test_a_read_only_mount_is_reported_and_its_shares_served(sandbox: Sandbox, tmp_path: Path) -> None:
    backing = tmp_path / "cluster"
    (backing / "smbgw/shares.d").mkdir(parents=True)
    sandbox.share_dir("frozen")
    written_elsewhere(backing, "frozen")
    with fuse_pve(sandbox, tmp_path, "-r") as _backing:
        agent = agent_on_pve(sandbox, "auto", "by polling every 1s")
        try:
            wait_served(sandbox, "frozen", timeout=20)
            wait_for(lambda: shares_fs_status(agent).get("writable") is False, timeout=20, interval=0.3)
            assert "mounted read-only" in str(shares_fs_status(agent).get("why"))
            assert writable_metric(agent) == 0.0
        finally:
            agent.stop()


def test_a_share_on_a_node_outside_the_cluster_is_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    with fuse_pve(sandbox, tmp_path) as backing:
        (backing / ".members").write_text(MEMBERS % 1)
        target = backing / "smbgw/shares.d/lost.toml"
        target.write_text('path = "/srv/smb/lost"\nnode = "pve9"\n')
        agent = agent_on_pve(sandbox, "auto", "by polling every 1s")
        try:
            def warnings() -> str:
                info = ((agent.status() or {}).get("files") or {}).get("lost.toml") or {}
                return " | ".join(str(w.get("message")) for w in info.get("warnings", []))

            said = wait_for(warnings, timeout=20, interval=0.3)
            assert "'pve9' is not a node of this cluster (its members: sandbox)" in said, said
        finally:
            agent.stop()


def test_moving_a_share_between_three_nodes(tmp_path: Path) -> None:
    """Three agents (pve1..pve3, each its own sandbox and smbd) read one cluster file
    system: three FUSE mounts of one backing directory, as pmxcfs shows one database on
    every node. A share placed on pve1 is served there only; its `node` edited to pve2,
    it is unserved on pve1 and served on pve2, each time printed."""
    from tests.support.procs import private_sandbox

    backing = tmp_path / "cluster"
    nodes = ("pve1", "pve2", "pve3")
    with contextlib.ExitStack() as stack:
        boxes: dict[str, Sandbox] = {}
        for name in nodes:
            box = stack.enter_context(private_sandbox())
            stack.enter_context(fuse_pve(box, tmp_path, backing=backing))
            box.share_dir("moving")
            boxes[name] = box
        (backing / ".version").write_text("1\n")
        for index, name in enumerate(nodes):
            agent = agent_on_pve(boxes[name], "auto", "by polling every 1s", node=name, port=9946 + index)
            stack.callback(agent.stop)
        target = backing / "smbgw/shares.d/moving.toml"
        target.write_text('path = "/srv/smb/moving"\nnode = "pve1"\n')
        (backing / ".version").write_text("2\n")
        wait_served(boxes["pve1"], "moving", timeout=20)
        assert not served_within(boxes["pve2"], "moving", 0.5) and not served_within(boxes["pve3"], "moving", 0.5)

        began = time.monotonic()
        target.write_text('path = "/srv/smb/moving"\nnode = "pve2"\n')
        (backing / ".version").write_text("3\n")
        wait_served(boxes["pve2"], "moving", timeout=20)
        served_there = time.monotonic() - began
        wait_for(lambda: not served_within(boxes["pve1"], "moving", 0.2), timeout=20, interval=0.1)
        gone_here = time.monotonic() - began
        assert not served_within(boxes["pve3"], "moving", 0.5)
        print(f"\n[cluster fs] node = pve1 -> pve2 on the shared file system: served on pve2 after "
              f"{served_there:.2f}s, gone from pve1 after {gone_here:.2f}s (poll_interval 1s)")
