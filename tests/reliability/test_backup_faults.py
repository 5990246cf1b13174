"""The backup plugin's tools in every fault class, a full disk, and a kill mid-prune.

- btrfs (snapshots) and restic (off-host), through the whole agent on a real loop-mounted
  btrfs and a real restic repository: the run fails with the reason in metrics and
  status, the share stays served, the agent stays alive and scrapes stay fast, and the
  failed run is retried by itself (capped backoff) until it succeeds once the tool works.
- a full disk: a full btrfs still takes its snapshot (it costs metadata only); a full
  restic repository fails the transfer as `disk_full` and succeeds after room is made.
- zfs at the backend's boundary (zfs-fuse cannot be broken from outside): every fault
  is a SnapshotError with a reason, within the time limit.
- a SIGKILL while a prune hangs: after a restart the prune is planned again and done,
  and the snapshots the policy keeps are all there.
- the snapshot directory removed by hand: recreated, and reported in the log.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from smbgw_plugins.backup import snapshots as snapshots_module
from smbgw_plugins.backup.snapshots import Place, SnapshotError, ZfsSnapshots

from devtools.sandbox import Sandbox, free_port
from smbgw_agent.effects.mounts import Mount
from smbgw_agent.effects.runner import Runner
from tests.support.faults import FAULT_KINDS, PLUGIN_TOOLS, ToolShed, small_tmpfs
from tests.support.procs import RestartableAgent, scrape, wait_metric, wait_served, write_agent_toml
from tests.support.storage import btrfs_image

REASONS = {"missing": "tool_missing", "failing": "failed", "hanging": "timeout", "garbage": "failed",
           "flood": "failed"}
SHARE = 'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "daily"\nkeep = { last = 3 }\n'
PASSWORD = "fault matrix password 3"


def start_agent(box: Sandbox, restartable: RestartableAgent, shed: ToolShed, extra: str = "") -> int:
    port = free_port()
    write_agent_toml(box, 'pass_timeout = "10s"\n[backup]\nretry_initial = "1s"\nretry_max = "3s"\n'
                          f'snapshot_timeout = "5s"\ntimeout = "20s"\n{extra}', port)
    restartable.env = {"PATH": shed.path}
    restartable.start()
    return port


def subvolume(path: Path) -> None:
    subprocess.run(["btrfs", "subvolume", "create", str(path)], check=True, capture_output=True)


def ours(data: Path) -> list[str]:
    snapdir = data / ".snapshots"
    return sorted(n for n in os.listdir(snapdir) if n.startswith("smbgw-")) if snapdir.is_dir() else []


def cleanup(data: Path) -> None:
    for name in os.listdir(data / ".snapshots") if (data / ".snapshots").is_dir() else []:
        subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / name)], capture_output=True,
                       check=False)


def restic_target(box: Sandbox) -> str:
    """A root-only password file, and the agent.toml table of a restic target using it."""
    secret = box.root / "etc/smbgw/secrets/restic"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    return ('[backup.targets.offsite]\ntype = "restic"\nrepository = "/srv/backup/restic"\n'
            'password_file = "/etc/smbgw/secrets/restic"\n')


@contextlib.contextmanager
def finance_served(box: Sandbox, restartable: RestartableAgent, shed: ToolShed, agent_extra: str = "",
                   share_extra: str = "") -> Iterator[tuple[Path, int]]:
    """A btrfs pool with the subvolume `finance` served with [backup] by an agent whose
    PATH is `shed`: yields (its data directory, the metrics port); stops the agent and
    deletes the snapshots afterwards."""
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        data = pool / "finance"
        subvolume(data)
        (data / "report.txt").write_text("v1\n")
        port = start_agent(box, restartable, shed, agent_extra)
        (box.shares_dir / "finance.toml").write_text(SHARE + share_extra)
        wait_served(box, "finance")
        try:
            yield data, port
        finally:
            restartable.stop()
            cleanup(data)


def metric(port: int, line: str) -> bool:
    return line in (scrape(port) or "").splitlines()


@pytest.mark.integration
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_btrfs_fails_the_snapshot_which_is_retried_until_it_works(
    kind: str, sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    shed = ToolShed(box.root / "faultbin", (*PLUGIN_TOOLS["mode_native"], "btrfs"))
    with finance_served(box, restartable, shed) as (data, port):
        shed.break_tool("btrfs", kind)
        failed = restartable.ctl("snapshot", "finance")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "btrfs" in failed.stderr or "5 s" in failed.stderr or "not there" in failed.stderr, failed.stderr
        wait_metric(port, 'smbgw_backup_last_run_success{kind="snapshot",share="finance"} 0.0', 30)
        reason = REASONS[kind]
        assert metric(port, f'smbgw_backup_failures_total{{kind="snapshot",reason="{reason}",share="finance"}} 1.0'), \
            [line for line in (scrape(port) or "").splitlines() if "failures" in line]
        shown = restartable.ctl("status").stdout
        assert "last run FAILED" in shown, shown
        assert restartable.running and box.smbclient("finance", "ls").returncode == 0
        started = time.monotonic()
        assert scrape(port) is not None and time.monotonic() - started < 2, "a scrape waited on the broken tool"
        assert ours(data) == [], "nothing half made"

        shed.restore("btrfs")
        # Nobody asks again: the failed run is retried by its schedule's backoff.
        wait_metric(port, 'smbgw_backup_last_run_success{kind="snapshot",share="finance"} 1.0', 40)
        assert len(ours(data)) == 1
        assert "internal error" not in restartable.log_text()


@pytest.mark.integration
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_restic_fails_the_transfer_which_is_retried_until_it_works(
    kind: str, sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    shed = ToolShed(box.root / "faultbin", (*PLUGIN_TOOLS["mode_native"], "btrfs", "restic", "env"))
    target = restic_target(box)
    with finance_served(box, restartable, shed, target, 'target = "offsite"\n') as (_data, port):
        shed.break_tool("restic", kind)
        assert restartable.ctl("snapshot", "finance").returncode == 0, "the snapshot itself works"
        wait_metric(port, 'smbgw_backup_last_run_success{kind="offhost",share="finance"} 0.0', 60)
        scraped = scrape(port) or ""
        failures = [line for line in scraped.splitlines() if line.startswith("smbgw_backup_failures_total")
                    and 'kind="offhost"' in line]
        assert failures, scraped
        assert PASSWORD not in scraped and PASSWORD not in restartable.log_text()
        assert restartable.running and box.smbclient("finance", "ls").returncode == 0

        shed.restore("restic")
        wait_metric(port, 'smbgw_backup_last_run_success{kind="offhost",share="finance"} 1.0', 60)
        assert "internal error" not in restartable.log_text()


@pytest.mark.integration
def test_a_full_disk_still_snapshots_and_a_full_repository_is_disk_full_until_there_is_room(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    shed = ToolShed(box.root / "faultbin", (*PLUGIN_TOOLS["mode_native"], "btrfs", "restic", "env"))
    target = restic_target(box)
    with small_tmpfs(box.root / "srv/backup", "6m") as repository_disk, \
            finance_served(box, restartable, shed, target, 'target = "offsite"\n') as (data, port):
        # Fill the share's file system to the last byte.
        with open(data / "fill.bin", "wb") as fill:
            try:
                while True:
                    fill.write(os.urandom(1 << 20))
            except OSError:
                pass
        assert restartable.ctl("snapshot", "finance").returncode == 0, "a snapshot costs metadata only"
        assert len(ours(data)) == 1
        wait_metric(port, 'smbgw_backup_last_run_success{kind="offhost",share="finance"} 0.0', 60)
        wait_metric(port, 'smbgw_backup_failures_total{kind="offhost",reason="disk_full",share="finance"} 1.0', 30)
        subprocess.run(["mount", "-o", "remount,size=512m", str(repository_disk)], check=True)
        wait_metric(port, 'smbgw_backup_last_run_success{kind="offhost",share="finance"} 1.0', 90)


@pytest.mark.integration
def test_a_kill_while_a_prune_hangs_converges_after_restart(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    shed = ToolShed(box.root / "faultbin", (*PLUGIN_TOOLS["mode_native"], "btrfs"))
    real = os.readlink(shed.directory / "btrfs")
    with finance_served(box, restartable, shed) as (data, _port):
        for _ in range(3):
            assert restartable.ctl("snapshot", "finance").returncode == 0
        keep = ours(data)
        # Only `btrfs subvolume delete` hangs: the fourth snapshot is made, its prune never ends.
        wrapper = shed.directory / "btrfs"
        wrapper.unlink()
        pruning = box.root / "pruning"
        wrapper.write_text(f'#!/bin/sh\nif [ "$1 $2" = "subvolume delete" ]; then : > {pruning}; '
                           f'exec sleep 3600; fi\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        assert restartable.ctl("snapshot", "finance").returncode == 0
        newest = ours(data)[-1]
        deadline = time.monotonic() + 30
        while not pruning.exists():
            assert time.monotonic() < deadline, "the prune never started"
            time.sleep(0.05)
        time.sleep(0.3)
        restartable.kill()
        shed.restore("btrfs")
        restartable.start()
        deadline = time.monotonic() + 30
        while len(ours(data)) != 3:
            assert time.monotonic() < deadline, ours(data)
            time.sleep(0.1)
        assert ours(data) == [*keep[1:], newest], "the oldest went, the newest three stayed"


@pytest.mark.integration
def test_a_snapshot_directory_removed_by_hand_is_recreated_and_reported(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    shed = ToolShed(box.root / "faultbin", (*PLUGIN_TOOLS["mode_native"], "btrfs"))
    with finance_served(box, restartable, shed) as (data, _port):
        assert restartable.ctl("snapshot", "finance").returncode == 0
        cleanup(data)
        (data / ".snapshots").rmdir()
        plan = restartable.ctl("plan").stdout
        assert "recreate /srv/smb/pool/finance/.snapshots (it was removed by hand" in plan, plan
        restartable.ctl("reconcile")
        assert (data / ".snapshots").is_dir()
        assert "was removed by hand; recreating it" in restartable.log_text()
        assert restartable.ctl("plan").stdout.strip() == "nothing to change"


# ---- zfs, at the backend's boundary ------------------------------------------------------


def test_every_tool_the_backup_plugin_runs_is_in_a_fault_matrix() -> None:
    assert set(PLUGIN_TOOLS["backup"]) == {"btrfs", "restic", "zfs", "proxmox-backup-client"}
    # proxmox-backup-client: its faults (hanging, failing, garbage) are driven through the
    # test stand-in in tests/unit/test_backup_targets.py.


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("call", ["names", "take", "delete"])
def test_every_fault_of_zfs_is_a_snapshot_error_with_a_reason(
    call: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shed = ToolShed(tmp_path / "faultbin", ("zfs",))
    shed.break_tool("zfs", kind)
    monkeypatch.setenv("PATH", shed.path)
    monkeypatch.setattr(snapshots_module, "TIMEOUT", 2.0)
    place = Place("finance", "/tank/finance", Path("/tank/finance"), Mount("/tank/finance", "zfs", "tank/finance",
                                                                             "rw"))
    subject = ZfsSnapshots(Runner())
    started = time.monotonic()
    if kind == "garbage" and call != "names":
        # Exit 0 is success to us; what a snapshot run makes is read back afterwards (the
        # job lists the snapshots again: the btrfs garbage case above fails that way), and
        # a prune that did nothing is planned again by the next pass.
        getattr(subject, call)(place, "smbgw-2026.12.02-03.00.00")
        return
    with pytest.raises(SnapshotError) as raised:
        if call == "names":
            names = subject.names(place)
            # garbage that happens to parse would be a made-up listing: it must not.
            raise AssertionError(f"zfs {kind} gave a listing: {names}")
        getattr(subject, call)(place, "smbgw-2026.12.02-03.00.00")
    assert time.monotonic() - started < 10
    expected = {"missing": "tool_missing", "hanging": "timeout"}.get(kind)
    if call == "names" and kind == "garbage":
        expected = "garbage"
    if expected:
        assert raised.value.reason == expected, (raised.value.reason, str(raised.value))
    assert "zfs" in str(raised.value)
