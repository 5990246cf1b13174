"""Snapshots on btrfs as a Windows client meets them: Previous Versions through real smbd,
retention planned before it prunes, an administrator's own snapshots never touched."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.integration.test_quota_btrfs import unit_capabilities, with_capabilities
from tests.support.agent import AgentProcess, served, wait_for, write_share
from tests.support.storage import btrfs_image

pytestmark = pytest.mark.integration
GMT = re.compile(r"@GMT-\d{4}\.\d{2}\.\d{2}-\d{2}\.\d{2}\.\d{2}")


def snapshots(data: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(data / ".snapshots"))


def versions(box: Sandbox, share: str, file: str) -> list[str]:
    """The @GMT tokens smbd offers for `file` (what Windows lists as Previous Versions)."""
    out = box.smbclient(share, f"allinfo {file}").stdout
    return sorted(set(GMT.findall(out)))


def test_snapshots_are_previous_versions_through_smb_and_retention_prunes_only_ours(
    sandbox: Sandbox, agent: AgentProcess, tmp_path: Path
) -> None:
    box = sandbox
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        data = pool / "finance"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        (data / "report.txt").write_text("v1\n")
        share = write_share(box, "finance.toml", 'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "daily"\n'
                                                  'keep = { last = 3 }\n')
        wait_for(lambda: served(box, "finance"), timeout=20)
        assert not (data / ".snapshots").exists(), "the first snapshot is taken at the first slot, not at once"

        taken = agent.ctl("snapshot", "finance")
        assert taken.returncode == 0, taken.stderr + taken.stdout
        assert re.search(r"finance: snapshot smbgw-[0-9.]{10}-[0-9.]{8} taken", taken.stdout), taken.stdout
        first = snapshots(data)
        assert len(first) == 1
        assert os.lstat(data / ".snapshots" / first[0]).st_ino == 256, "a subvolume"
        readonly = subprocess.run(["btrfs", "property", "get", str(data / ".snapshots" / first[0]), "ro"],
                                  capture_output=True, text=True, check=True).stdout
        assert "ro=true" in readonly

        # Windows "Previous Versions": the old content through the @GMT path.
        (data / "report.txt").write_text("v2\n")
        tokens = wait_for(lambda: versions(box, "finance", "report.txt"), timeout=20)
        assert tokens == [first[0].replace("smbgw-", "@GMT-")], tokens
        old = tmp_path / "old.txt"
        got = box.smbclient("finance", f"get {tokens[0]}\\report.txt {old}")
        assert got.returncode == 0, got.stdout + got.stderr
        assert old.read_text() == "v1\n"
        now = tmp_path / "now.txt"
        assert box.smbclient("finance", f"get report.txt {now}").returncode == 0 and now.read_text() == "v2\n"
        listing = box.smbclient("finance", "ls").stdout
        assert ".snapshots" not in listing, "vetoed: the share's users cannot rename or fill it"
        assert box.smbclient("finance", f"put {old} {tokens[0]}\\report.txt").returncode != 0, "versions are read-only"

        status = agent.ctl("status").stdout
        assert re.search(r"finance: backup: 1 snapshot\(s\), last \d{4}-\d\d-\d\d \d\d:\d\d, next ", status), status

        # Retention: keep = { last = 3 } after five snapshots prunes the two oldest, and
        # plan says so first. An admin's own snapshots (any other name) stay.
        subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(data), str(data / ".snapshots/before-upgrade")],
                       check=True, capture_output=True)
        subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(data),
                        str(data / ".snapshots/smbgw-2026.13.01-00.00.00")], check=True, capture_output=True)
        for _ in range(4):
            assert agent.ctl("snapshot", "finance").returncode == 0
        ours = [name for name in snapshots(data) if re.fullmatch(r"smbgw-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d", name)
                and not name.startswith("smbgw-2026.13")]
        # The agent may already have pruned (a job's end runs a pass): plan, when it has not.
        wait_for(lambda: len([n for n in snapshots(data) if n in ours]) == 3, timeout=20)
        left = snapshots(data)
        assert "before-upgrade" in left and "smbgw-2026.13.01-00.00.00" in left, left
        assert sorted(n for n in left if n in ours) == sorted(ours)[-3:], "the newest three"
        assert agent.ctl("plan").stdout.strip() == "nothing to change"

        # [backup] removed: no more snapshots, and the ones there stay.
        share.write_text('path = "/srv/smb/pool/finance"\n')
        wait_for(lambda: not versions(box, "finance", "report.txt"), timeout=20)
        assert snapshots(data) == left
        refused = agent.ctl("snapshot", "finance")
        assert refused.returncode == 1 and "has no [backup] table" in refused.stderr, refused

        # The share file deleted: the share goes, its data and every snapshot stay.
        share.write_text('path = "/srv/smb/pool/finance"\n[backup]\nschedule = "daily"\nkeep = { last = 3 }\n')
        wait_for(lambda: versions(box, "finance", "report.txt"), timeout=20)
        share.unlink()
        wait_for(lambda: not served(box, "finance"), timeout=20)
        assert snapshots(data) == left and (data / "report.txt").read_text() == "v2\n"
        assert "the existing ones stay in /srv/smb/pool/finance" in agent.log_text()
        gone = agent.ctl("snapshot", "finance")
        assert gone.returncode == 1 and "no share named 'finance'" in gone.stderr, gone
        for name in snapshots(data):
            subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / name)], check=True,
                           capture_output=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(data)], check=True, capture_output=True)


def test_the_units_capabilities_are_what_snapshots_and_prunes_need(tmp_path: Path) -> None:
    """The unit's bounding set lets the backup plugin snapshot and prune on btrfs, and
    CAP_SYS_ADMIN in it is what lets it delete a snapshot (a subvolume)."""
    granted = unit_capabilities()
    with btrfs_image(tmp_path / "pool", quotas=False) as pool:
        data = pool / "finance"
        assert with_capabilities(granted, ["btrfs", "subvolume", "create", str(data)]).returncode == 0
        (data / ".snapshots").mkdir()
        for name in ("smbgw-2026.12.01-03.00.00", "smbgw-2026.12.02-03.00.00"):
            made = with_capabilities(granted, ["btrfs", "subvolume", "snapshot", "-r", str(data),
                                               str(data / ".snapshots" / name)])
            assert made.returncode == 0, made.stderr
        without = [c for c in granted if c != "CAP_SYS_ADMIN"]
        refused = with_capabilities(without, ["btrfs", "subvolume", "delete",
                                              str(data / ".snapshots/smbgw-2026.12.01-03.00.00")])
        assert refused.returncode != 0 and "not permitted" in refused.stderr.lower(), refused
        pruned = with_capabilities(granted, ["btrfs", "subvolume", "delete",
                                             str(data / ".snapshots/smbgw-2026.12.01-03.00.00")])
        assert pruned.returncode == 0, pruned.stderr
        assert snapshots(data) == ["smbgw-2026.12.02-03.00.00"]
        with_capabilities(granted, ["btrfs", "subvolume", "delete", str(data / ".snapshots/smbgw-2026.12.02-03.00.00")])


def test_a_missing_directory_must_be_made_a_subvolume_first_unless_quota_makes_it(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    with btrfs_image(box.root / "srv/smb/pool") as pool:
        write_share(box, "plain.toml", 'path = "/srv/smb/pool/plain"\n[backup]\nschedule = "daily"\n'
                                       'keep = { last = 3 }\n')

        def error() -> str | None:
            share = ((agent.status() or {}).get("shares") or {}).get("plain") or {}
            return share.get("error") if share.get("state") == "failed" else None

        message = wait_for(error, timeout=20)
        assert "btrfs subvolume create /srv/smb/pool/plain" in message and "add [quota]" in message, message
        assert not (pool / "plain").exists(), "no plain directory that could never be snapshotted"
        # With [quota], the quota plugin makes the subvolume, and snapshots work.
        write_share(box, "limited.toml", 'path = "/srv/smb/pool/limited"\n[quota]\nsize = "64M"\n'
                                         '[backup]\nschedule = "daily"\nkeep = { last = 3 }\n')
        wait_for(lambda: served(box, "limited"), timeout=20)
        assert os.lstat(pool / "limited").st_ino == 256
        taken = agent.ctl("snapshot", "limited")
        assert taken.returncode == 0, taken.stdout + taken.stderr
        for name in snapshots(pool / "limited"):
            subprocess.run(["btrfs", "subvolume", "delete", str(pool / "limited/.snapshots" / name)], check=False,
                           capture_output=True)
