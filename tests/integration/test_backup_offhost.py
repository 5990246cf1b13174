"""Off-host backups to a real restic repository: a snapshot is sent after it is taken,
restored and compared byte for byte; a restic killed mid-run is retried until it
succeeds; `smbgwctl verify` restores and compares; the password never shows."""

from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, add_agent_config, served, wait_for, write_share
from tests.support.procs import RestartableAgent, scrape, wait_metric, write_agent_toml
from tests.support.storage import btrfs_image

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple 7"


def children(pid: int) -> list[int]:
    """Every process below `pid` (ours: the agent we started, and what it started)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found.append(kid)
            found.extend(children(kid))
    return found


def command_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def backup_state(agent: AgentProcess, share: str) -> dict[str, Any]:
    seen = (((agent.status() or {}).get("plugins") or {}).get("backup") or {}).get("shares", {}).get(share) or {}
    return dict(seen.get("offhost") or {})


def restic(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(box.root), "RESTIC_REPOSITORY": str(box.root / "srv/backup/restic"),
           "RESTIC_PASSWORD_FILE": str(box.root / "etc/smbgw/secrets/restic")}
    return subprocess.run(["restic", "--no-cache", *args], capture_output=True, text=True, env=env, check=False,
                          timeout=120)


def test_snapshots_go_off_host_to_restic_and_come_back_equal(
    sandbox: Sandbox, agent: AgentProcess, tmp_path: Path
) -> None:
    box = sandbox
    secret = box.root / "etc/smbgw/secrets/restic"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    add_agent_config(agent, '[backup]\nretry_initial = "2s"\nretry_max = "10s"\n'
                            '[backup.targets.offsite]\ntype = "restic"\nrepository = "/srv/backup/restic"\n'
                            'password_file = "/etc/smbgw/secrets/restic"\nkeep = { last = 2 }\n')
    with btrfs_image(box.root / "srv/smb/pool", size="1G", quotas=False) as pool:
        data = pool / "finance"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        (data / "docs").mkdir()
        (data / "docs/report.txt").write_text("v1\n")
        (data / "blob.bin").write_bytes(os.urandom(3 << 20))
        write_share(box, "finance.toml", 'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "daily"\n'
                                         'keep = { last = 3 }\ntarget = "offsite"\n')
        wait_for(lambda: served(box, "finance"), timeout=20)

        taken = agent.ctl("snapshot", "finance")
        assert taken.returncode == 0, taken.stdout + taken.stderr
        first = wait_for(lambda: backup_state(agent, "finance").get("last_success") and backup_state(agent, "finance"),
                         timeout=60)
        snapshots = json.loads(restic(box, "snapshots", "--json").stdout)
        assert len(snapshots) == 1 and first["snapshot"] in snapshots[0]["tags"][-1], snapshots
        assert "smbgw-share=finance" in snapshots[0]["tags"]
        # Restore by restic itself (not the agent) and compare with the snapshot.
        restored = tmp_path / "restored"
        done = restic(box, "restore", snapshots[0]["id"], "--target", str(restored))
        assert done.returncode == 0, done.stderr
        root = next(p for p in restored.rglob("blob.bin")).parent
        view = data / ".snapshots" / first["snapshot"]
        assert filecmp.cmp(view / "blob.bin", root / "blob.bin", shallow=False)
        assert (root / "docs/report.txt").read_text() == "v1\n"

        verified = agent.ctl("verify", "finance")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "and equal (the whole snapshot)" in verified.stdout, verified.stdout

        # A restic killed in the middle of a transfer: the run fails, is retried after
        # the backoff, and succeeds; the remote keeps { last = 2 }.
        (data / "big.bin").write_bytes(os.urandom(200 << 20))
        (data / "docs/report.txt").write_text("v2\n")
        assert agent.ctl("snapshot", "finance").returncode == 0
        assert agent.proc is not None
        deadline = time.monotonic() + 60
        killed = None
        while killed is None and time.monotonic() < deadline:
            for pid in children(agent.proc.pid):
                argv = command_of(pid)
                if any(part.endswith("restic") for part in argv[:1]) and "backup" in argv:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.05)
        assert killed is not None, "restic backup was never seen running"
        failed = wait_for(lambda: backup_state(agent, "finance").get("failures") and backup_state(agent, "finance"),
                          timeout=60)
        assert failed["reason"] and failed["error"], failed
        second = wait_for(lambda: (s := backup_state(agent, "finance")).get("snapshot") != first["snapshot"]
                          and not s.get("failures") and s, timeout=120)
        assert second["last_success"] > first["last_success"]
        listed = json.loads(restic(box, "snapshots", "--json").stdout)
        assert len(listed) == 2, [s["tags"] for s in listed]
        assert restic(box, "check").returncode == 0, "the repository is sound after the kill"

        port = int(re.search(r'listen = "127.0.0.1:(\d+)"', (box.root / "etc/smbgw/agent.toml").read_text())[1])
        metrics = scrape(port) or ""
        assert re.search(r'smbgw_backup_failures_total\{kind="offhost",reason="\w+",share="finance"\} 1\.0', metrics), \
            [line for line in metrics.splitlines() if "failures" in line]
        assert 'smbgw_backup_last_run_success{kind="offhost",share="finance"} 1.0' in metrics
        assert 'smbgw_backup_last_run_success{kind="verify",share="finance"} 1.0' in metrics
        assert 'smbgw_share_snapshots{share="finance"} 2.0' in metrics
        status = agent.ctl("show", "finance").stdout
        assert "off-host offsite: last" in agent.ctl("status").stdout, status
        log = agent.log_text()
        assert PASSWORD not in log and PASSWORD not in json.dumps(agent.status()) and PASSWORD not in metrics
        # Bytes that differ from the off-host copy (a bad disk, a tampered snapshot) fail
        # the verification: exit 1, reason mismatch, the file named.
        tampered = data / ".snapshots" / second["snapshot"]
        subprocess.run(["btrfs", "property", "set", "-ts", str(tampered), "ro", "false"], check=True)
        (tampered / "docs/report.txt").write_text("v3\n")
        subprocess.run(["btrfs", "property", "set", "-ts", str(tampered), "ro", "true"], check=True)
        mismatch = agent.ctl("verify", "finance")
        assert mismatch.returncode == 1, mismatch.stdout + mismatch.stderr
        assert "1 of 3 file(s) restored from offsite" in mismatch.stderr and "docs/report.txt" in mismatch.stderr, \
            mismatch.stderr
        wait_for(lambda: 'smbgw_backup_failures_total{kind="verify",reason="mismatch",share="finance"} 1.0'
                 in (scrape(port) or ""), timeout=20)
        assert 'smbgw_backup_last_run_success{kind="verify",share="finance"} 0.0' in (scrape(port) or "")
        for name in os.listdir(data / ".snapshots"):
            subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / name)], check=False,
                           capture_output=True)


def test_scheduled_snapshot_transfer_and_verify_follow_the_clock(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    """Nobody runs smbgwctl: the hourly slot comes (the agent's clock moves), the snapshot
    is taken, sent, and the hourly verification restores and compares it (a verification
    that comes before the first transfer fails with no_backup and is retried)."""
    box = sandbox
    secret = box.root / "etc/smbgw/secrets/restic"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    clock = box.root / "clock-offset"
    clock.write_text("0\n")
    port = write_agent_toml(box, '[backup]\nretry_initial = "2s"\nretry_max = "4s"\n'
                                 '[backup.targets.offsite]\ntype = "restic"\nrepository = "/srv/backup/restic"\n'
                                 'password_file = "/etc/smbgw/secrets/restic"\n')
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        data = pool / "finance"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        (data / "report.txt").write_text("v1\n")
        restartable.env = {"PYTHONPATH": f"{REPO / 'tests/support/clock'}:{REPO}", "SMBGW_TEST_CLOCK_FILE": str(clock)}
        restartable.start()
        (box.shares_dir / "finance.toml").write_text(
            'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "hourly"\nkeep = { last = 3 }\n'
            'target = "offsite"\nverify = "hourly"\n')
        # Scheduled from the pass that applied [backup] (its first slot: the next full hour).
        restartable.wait_status(lambda s: ((s.get("plugins") or {}).get("backup") or {}).get("shares", {})
                                .get("finance", {}).get("next_run"), timeout=20)
        clock.write_text("3600\n")
        for kind in ("snapshot", "offhost", "verify"):
            wait_metric(port, f'smbgw_backup_last_run_success{{kind="{kind}",share="finance"}} 1.0', 60)
        restartable.stop()
        for name in os.listdir(data / ".snapshots"):
            subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / name)], check=False,
                           capture_output=True)
