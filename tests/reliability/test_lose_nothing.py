"""Nothing lost: a lost state database, full disks and storage that is not mounted.

Real agent, real smbd, real smbclient, real tmpfs mounts in a sandbox root. Each class:
the agent keeps running, keeps every share that should be served served, says what is
wrong (status, log, metric), and catches up by itself once the cause is gone.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox, free_port
from tests.support.agent import served
from tests.support.faults import fill, small_tmpfs
from tests.support.procs import RestartableAgent, wait_metric, wait_served, write_agent_toml

pytestmark = pytest.mark.integration


def agent_toml(box: Sandbox, port: int, extra: str = "") -> None:
    write_agent_toml(box, extra, port)


def declare(box: Sandbox, name: str) -> None:
    box.share_dir(name)
    (box.shares_dir / f"{name}.toml").write_text(f'path = "/srv/smb/{name}"\n')


# ---- 5. losing the state database ---------------------------------------------------------------


def _damage(database: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    if how == "deleted":
        database.unlink()
    elif how == "truncated":
        database.write_bytes(b"")
    else:
        database.write_bytes(b"\0" * max(4096, database.stat().st_size))


@pytest.mark.parametrize("how", ["zeroed", "truncated", "deleted"])
def test_a_lost_state_database_never_removes_a_live_share(
    how: str, sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    agent_toml(box, free_port())
    restartable.start()
    declare(box, "keep")
    declare(box, "other")
    wait_served(box, "keep")
    wait_served(box, "other")
    # keep.toml breaks: its share goes on with the last good version.
    (box.shares_dir / "keep.toml").write_text('path = "/srv/smb/keep"\nread_only = "maybe"\n')
    restartable.wait_status(lambda s: s["files"]["keep.toml"]["serving"] == "last-good")
    restartable.stop()
    fragment = box.paths.samba_dir / "share-keep.conf"
    live = fragment.read_text()
    _damage(box.root / "var/lib/smbgw/state.sqlite", how)

    restartable.start()
    status = restartable.wait_status(lambda s: s.get("passes", 0) >= 1)
    assert fragment.exists() and fragment.read_text() == live
    assert served(box, "keep") and served(box, "other")
    assert status["files"]["keep.toml"]["serving"] == "last-good", status["files"]["keep.toml"]
    assert sorted(status["state"]["rebuilt"]) == ["keep", "other"]
    assert status["state"]["lost"]
    assert "STATE LOST" in restartable.log_text()
    # The rebuilt state is saved: another restart finds everything known.
    restartable.stop()
    restartable.start()
    status = restartable.wait_status(lambda s: s.get("passes", 0) >= 1)
    assert status["state"]["rebuilt"] == [] and not status["state"]["lost"]
    # And fixing the file applies it as usual.
    (box.shares_dir / "keep.toml").write_text('path = "/srv/smb/keep"\nread_only = true\n')
    restartable.wait_status(lambda s: s["files"]["keep.toml"]["serving"] == "current" and s["pass"]["ok"])
    assert "read only = yes" in fragment.read_text()


# ---- 6. full disks --------------------------------------------------------------------------------


def test_a_full_state_disk_keeps_every_share_served_and_catches_up(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    port = free_port()
    agent_toml(box, port)
    state_dir = box.root / "var/lib/smbgw"
    with small_tmpfs(state_dir, "2m"):
        state_dir.chmod(0o700)
        restartable.prefix = ["prlimit", "--nofile=1024:1024", "--"]
        restartable.start()
        declare(box, "before")
        wait_served(box, "before")
        filler = fill(state_dir)
        for name in ("during1", "during2", "during3"):
            declare(box, name)
        for name in ("during1", "during2", "during3"):
            wait_served(box, name)
        status = restartable.wait_status(lambda s: "state" in s.get("degraded", {}))
        assert "disk" in status["degraded"]["state"] or "full" in status["degraded"]["state"]
        wait_metric(port, 'smbgw_agent_degraded{reason="state"} 1.0')
        assert restartable.running
        # A restart while the disk is still full comes up and keeps serving.
        restartable.stop()
        restartable.start()
        assert served(box, "during1") and restartable.running
        # Space returns: the state is written again, the condition clears.
        filler.unlink()
        assert restartable.ctl("reconcile").returncode == 0
        restartable.wait_status(lambda s: not s.get("degraded"))
        wait_metric(port, 'smbgw_agent_degraded{reason="state"} 0.0')
        with sqlite3.connect(state_dir / "state.sqlite") as db:
            saved = {row[0] for row in db.execute("SELECT key FROM applied")}
        assert {"before", "during1", "during2", "during3"} <= saved
        restartable.stop()
        assert "Traceback" not in restartable.log_text()


def test_a_full_run_directory_keeps_the_agent_up_and_reports_it(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    port = free_port()
    agent_toml(box, port)
    run_dir = box.root / "run/smbgw"
    with small_tmpfs(run_dir, "256k"):
        restartable.start()
        declare(box, "before")
        wait_served(box, "before")
        filler = fill(run_dir)
        declare(box, "during")
        wait_served(box, "during")
        wait_metric(port, 'smbgw_agent_degraded{reason="status"} 1.0')
        assert restartable.running
        filler.unlink()
        restartable.wait_status(lambda s: "during" in s.get("shares", {}) and not s.get("degraded"))
        wait_metric(port, 'smbgw_agent_degraded{reason="status"} 0.0')
        restartable.stop()
        assert "Traceback" not in restartable.log_text()


# ---- 7. storage that is not there -----------------------------------------------------------------


def test_a_share_whose_storage_is_missing_is_not_created_and_comes_back(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    agent_toml(box, free_port())
    restartable.start()
    (box.shares_dir / "gone.toml").write_text('path = "/srv/gone/data"\n')
    status = restartable.wait_status(lambda s: s["shares"].get("gone", {}).get("state") == "storage-missing")
    assert "/srv/gone does not exist" in status["shares"]["gone"]["error"]
    time.sleep(2.5)
    assert not (box.root / "srv/gone").exists(), "the agent created directories for missing storage"
    assert restartable.ctl("status").returncode == 1
    # The storage appears (e.g. mounted): served within seconds, without a file event.
    (box.root / "srv/gone").mkdir()
    wait_served(box, "gone", timeout=15)
    assert (box.root / "srv/gone/data").is_dir()


def test_require_mounts_serves_a_share_only_while_its_storage_is_mounted(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    agent_toml(box, free_port(), 'require_mounts = ["/srv/pool"]\n')
    pool = box.root / "srv/pool"
    pool.mkdir(parents=True)  # the empty mount point, as on a node whose pool is not imported
    restartable.start()
    (box.shares_dir / "finance.toml").write_text('path = "/srv/pool/finance"\n')
    status = restartable.wait_status(lambda s: s["shares"].get("finance", {}).get("state") == "storage-missing")
    assert "/srv/pool is not mounted" in status["shares"]["finance"]["error"]
    assert list(pool.iterdir()) == []
    with small_tmpfs(pool, "8m"):
        wait_served(box, "finance", timeout=15)
        user = pwd.getpwnam(box.user)
        os.chown(pool / "finance", user.pw_uid, user.pw_gid)
        (box.root / "note.txt").write_text("on the pool\n")
        put = box.smbclient("finance", f"put {box.root / 'note.txt'} note.txt")
        assert put.returncode == 0, put.stdout + put.stderr
        # Unmounted under the agent: the share goes down (after its clients are gone).
        deadline = time.monotonic() + 20
        while subprocess.run(["umount", str(pool)], capture_output=True, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the pool stayed busy"
            time.sleep(0.2)
        status = restartable.wait_status(
            lambda s: s["shares"].get("finance", {}).get("state") == "storage-missing", timeout=15
        )
        assert not served(box, "finance")
        time.sleep(2.5)
        assert list(pool.iterdir()) == [], "the share directory was recreated on the root file system"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(pool)], check=True)
        wait_served(box, "finance", timeout=15)
    os.sync()
