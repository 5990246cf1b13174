"""Quotas on ZFS, as a Windows client meets them: a real pool (zfs-fuse 0.7), real smbd.

What zfs-fuse cannot show, and so this does not: OpenZFS's kernel module (Proxmox's)
itself. The commands the backend issues are the subset both accept (no `-p` for create,
no `-t` for get), and the limit is enforced by the same `refquota` property.
"""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from devtools.sandbox import Sandbox
from tests.integration.test_quota_btrfs import MiB, failure, share_text
from tests.support.agent import AgentProcess, add_agent_config, disk, served, upload, wait_for, write_share
from tests.support.storage import zfs_pool

pytestmark = pytest.mark.integration


def zfs_value(dataset: str, prop: str) -> str:
    return subprocess.run(["zfs", "get", "-Hp", "-o", "value", prop, dataset], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_zfs_quota_is_a_refquota_enforced_through_smb_changed_and_lifted(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    add_agent_config(agent, '[quota]\nrefresh_interval = "5s"\n')
    with zfs_pool(box.root / "srv/smb/tank") as pool:
        dataset = f"{pool}/finance"
        file = write_share(box, "finance.toml", share_text("/srv/smb/tank/finance", '[quota]\nsize = "8M"\n'))
        wait_for(lambda: served(box, "finance"), timeout=30)
        # The missing directory became a child dataset, and the limit is its refquota.
        assert zfs_value(dataset, "mountpoint") == str(box.root / "srv/smb/tank/finance")
        assert zfs_value(dataset, "refquota") == str(8 * MiB)
        data = box.root / "srv/smb/tank/finance"
        user = pwd.getpwnam(box.user)
        os.chown(data, user.pw_uid, user.pw_gid)

        total, free = disk(box, "finance")
        assert total == 8 * MiB and 7 * MiB < free <= 8 * MiB, (total, free)
        assert upload(box, "finance", "small.bin", 2 * MiB).returncode == 0
        too_big = upload(box, "finance", "big.bin", 12 * MiB)
        assert too_big.returncode != 0 and "NT_STATUS_DISK_FULL" in too_big.stdout + too_big.stderr, too_big

        def reading() -> dict[str, int] | None:
            """The quota's figures in status once ZFS has counted the upload (at its next
            transaction group) and the background reading has read them."""
            agent.ctl("reconcile")
            found = (((agent.status() or {}).get("plugins") or {}).get("quota") or {}).get("shares", {})
            return found.get("finance") if found.get("finance", {}).get("used", 0) >= 2 * MiB else None

        quota = wait_for(reading, timeout=40)
        assert quota["backend"] == "zfs" and quota["limit"] == 8 * MiB, quota

        # Snapshots do not eat the share's space: refquota, not quota.
        subprocess.run(["zfs", "snapshot", f"{dataset}@before"], check=True)
        for name in ("small.bin", "big.bin"):  # big.bin: what the refused upload left
            (data / name).unlink(missing_ok=True)
        os.sync()
        wait_for(lambda: int(zfs_value(dataset, "referenced")) < MiB, timeout=30)  # at the next txg
        assert int(zfs_value(f"{dataset}@before", "referenced")) >= 2 * MiB, "the snapshot holds the old data"
        again = upload(box, "finance", "again.bin", 6 * MiB)
        assert again.returncode == 0, again.stdout

        file.write_text(share_text("/srv/smb/tank/finance", '[quota]\nsize = "64M"\n'))
        wait_for(lambda: zfs_value(dataset, "refquota") == str(64 * MiB), timeout=30)
        assert upload(box, "finance", "big.bin", 12 * MiB).returncode == 0

        file.write_text(share_text("/srv/smb/tank/finance", ""))
        wait_for(lambda: zfs_value(dataset, "refquota") in ("0", "none"), timeout=30)
        assert served(box, "finance")

        # A plain directory inside a dataset cannot carry a refquota: refused, with how.
        (box.root / "srv/smb/tank/plain").mkdir()
        write_share(box, "plain.toml", share_text("/srv/smb/tank/plain", '[quota]\nsize = "8M"\n'))
        error = wait_for(lambda: failure(agent, "plain"), timeout=30)
        assert f"inside the dataset {pool}, not a dataset of its own" in error and "zfs create" in error, error
        assert not served(box, "plain")

        # Deleting the share file leaves the limit on the data.
        file.write_text(share_text("/srv/smb/tank/finance", '[quota]\nsize = "32M"\n'))
        wait_for(lambda: zfs_value(dataset, "refquota") == str(32 * MiB), timeout=30)
        file.unlink()
        wait_for(lambda: not served(box, "finance"), timeout=30)
        assert zfs_value(dataset, "refquota") == str(32 * MiB)
        agent.stop()
