"""Snapshots on ZFS with a real agent and smbd: a real pool (zfs-fuse 0.7), real `zfs`.

What this shows: `smbgwctl snapshot` makes `DATASET@smbgw-<UTC time>`; retention prunes
only names of that exact shape (an administrator's `@manual`, or `@smbgw-not-a-time`,
stay); smbd is configured for Previous Versions from `.zfs/snapshot` (testparm reads the
rendered configuration); a share that is not a dataset of its own, or that is on a file
system without snapshots, is refused with the reason.

What zfs-fuse cannot show, and so this does not: Windows Previous Versions through smbd.
zfs-fuse 0.7 has no `.zfs/snapshot` directory, so smbd finds no snapshots to offer;
the btrfs test (test_backup_btrfs.py) goes through smbd's @GMT paths instead.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from devtools.sandbox import Sandbox
from tests.integration.test_quota_btrfs import failure
from tests.support.agent import AgentProcess, served, wait_for, write_share
from tests.support.storage import zfs_pool

pytestmark = pytest.mark.integration
OURS = re.compile(r"smbgw-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d")
ADMINS = ("manual", "smbgw-not-a-time", "smbgw-2026.13.01-00.00.00")
BACKUP = '[backup]\nschedule = "daily"\nkeep = { last = 2 }\n'


def zfs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["zfs", *argv], capture_output=True, text=True, timeout=120, check=False)


def snapshots(dataset: str) -> list[str]:
    """The names of the dataset's snapshots (after the @), as `zfs list` shows them."""
    listed = zfs("list", "-H", "-t", "snapshot", "-o", "name")
    assert listed.returncode == 0, listed.stderr
    return sorted(line.partition("@")[2] for line in listed.stdout.splitlines()
                  if line.partition("@")[0] == dataset)


def ours(dataset: str) -> list[str]:
    return [name for name in snapshots(dataset) if OURS.fullmatch(name) and name not in ADMINS]


def share_section(box: Sandbox, share: str) -> dict[str, str]:
    """The share's parameters as `testparm -s` reads the sandbox's smb.conf (with the
    agent's includes resolved): what smbd itself will use."""
    parsed = subprocess.run(["testparm", "-s", "--suppress-prompt", str(box.smb_conf)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert parsed.returncode == 0, parsed.stderr
    section: dict[str, str] | None = None
    found: dict[str, dict[str, str]] = {}
    for raw in parsed.stdout.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = found.setdefault(line[1:-1].casefold(), {})
        elif section is not None and "=" in line:
            key, _, value = line.partition("=")
            section[key.strip().casefold()] = value.strip()
    assert share.casefold() in found, parsed.stdout
    return found[share.casefold()]


def destroy(name: str) -> None:
    """`zfs destroy`, retried: zfs-fuse keeps a dataset busy for a while after smbd or
    the agent last looked into it. What is still left goes with the pool."""
    deadline = time.monotonic() + 30
    while zfs("destroy", name).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)


def finance_share(box: Sandbox, pool: str) -> str:
    """A dataset at the share's path, the share file with [backup], served; the dataset."""
    dataset = f"{pool}/finance"
    data = box.root / "srv/smb/tank/finance"
    made = zfs("create", "-o", f"mountpoint={data}", dataset)
    assert made.returncode == 0, made.stderr
    (data / "report.txt").write_text("v1\n")
    write_share(box, "finance.toml", f'path = "/srv/smb/tank/finance"\n{BACKUP}')
    wait_for(lambda: served(box, "finance"), timeout=30)
    return dataset


def clean_up(box: Sandbox, agent: AgentProcess, dataset: str) -> None:
    """The share files gone, then the snapshots and the dataset (the pool fixture
    destroys the pool and whatever is still left)."""
    for file in box.shares_dir.glob("*.toml"):
        file.unlink()
    wait_for(lambda: not served(box, "finance"), timeout=30)
    agent.stop()
    box.stop_smbd()  # zfs-fuse will not destroy a dataset smbd still has open
    for name in snapshots(dataset):
        destroy(f"{dataset}@{name}")
    destroy(dataset)


def test_zfs_snapshots_are_datasets_snapshots_and_retention_prunes_only_ours(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    with zfs_pool(box.root / "srv/smb/tank") as pool:
        dataset = finance_share(box, pool)
        assert ours(dataset) == [], "the first snapshot is taken at the first slot of the schedule, not at once"

        taken = agent.ctl("snapshot", "finance")
        assert taken.returncode == 0, taken.stderr + taken.stdout
        match = re.search(r"finance: snapshot (smbgw-[0-9.]{10}-[0-9.]{8}) taken", taken.stdout)
        assert match, taken.stdout
        listed = zfs("list", "-H", "-t", "snapshot", "-o", "name").stdout.split()
        assert f"{dataset}@{match[1]}" in listed, listed

        # Retention: keep = { last = 2 } after four snapshots of ours leaves the newest
        # two. An administrator's own snapshots, whatever their names, stay.
        for name in ADMINS:
            made = zfs("snapshot", f"{dataset}@{name}")
            assert made.returncode == 0, made.stderr
        names = [match[1]]
        for _ in range(3):
            taken = agent.ctl("snapshot", "finance")
            assert taken.returncode == 0, taken.stderr + taken.stdout
            names.append(re.search(r"snapshot (smbgw-\S+) taken", taken.stdout)[1])  # type: ignore[index]
        assert len(set(names)) == 4, names
        # The end of each job runs a pass that prunes; a reconcile asks for one more.
        agent.ctl("reconcile")
        wait_for(lambda: ours(dataset) == sorted(names)[-2:], timeout=30)
        assert set(ADMINS) <= set(snapshots(dataset)), snapshots(dataset)
        plan = agent.ctl("plan")
        assert plan.stdout.strip() == "nothing to change", plan.stdout + plan.stderr
        assert set(ADMINS) <= set(snapshots(dataset)), "planning and pruning never touch an admin's snapshots"
        assert ours(dataset) == sorted(names)[-2:]

        clean_up(box, agent, dataset)


def test_zfs_previous_versions_config_and_a_directory_inside_a_dataset_is_refused(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    with zfs_pool(box.root / "srv/smb/tank") as pool:
        dataset = finance_share(box, pool)
        data = box.root / "srv/smb/tank/finance"

        # smbd is told where ZFS keeps snapshots, and how their names read as times.
        # Nothing is vetoed: .zfs is not a directory the share's users can fill or rename.
        fragments = [f for f in (box.root / "etc/samba/smbgw").rglob("*") if f.is_file()]
        assert any("shadow:snapdir = .zfs/snapshot" in f.read_text(errors="replace") for f in fragments), fragments
        section = share_section(box, "finance")
        assert section.get("shadow:snapdir") == ".zfs/snapshot", section
        assert section.get("shadow:format") == "smbgw-%Y.%m.%d-%H.%M.%S", section
        assert "shadow_copy2" in section.get("vfs objects", "").split(), section
        assert "veto files" not in section, section

        # A directory inside a dataset is not a dataset of its own: it cannot be
        # snapshotted on its own, and the share fails with how to make it one.
        (data / "inner").mkdir()
        write_share(box, "inner.toml", f'path = "/srv/smb/tank/finance/inner"\n{BACKUP}')
        error = wait_for(lambda: failure(agent, "inner"), timeout=30)
        assert f"inside the dataset {dataset}, not a dataset of its own" in error and "zfs create" in error, error
        assert not served(box, "inner")
        refused = agent.ctl("snapshot", "inner")
        assert refused.returncode != 0 and "not a dataset of its own" in refused.stderr, refused
        assert served(box, "finance"), "one share's refusal leaves the others served"

        clean_up(box, agent, dataset)


def test_backup_on_a_file_system_without_snapshots_is_refused_naming_it(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    plain = box.root / "srv/smb/plain"
    plain.mkdir(parents=True)
    write_share(box, "plain.toml", f'path = "/srv/smb/plain"\n{BACKUP}')
    error = wait_for(lambda: failure(agent, "plain"), timeout=30)
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(plain)], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert fstype not in ("btrfs", "zfs", "fuse.zfs"), f"the sandbox is on {fstype}: this test needs another"
    assert f"is on {fstype} (" in error and "has no snapshots" in error, error
    assert not served(box, "plain")
