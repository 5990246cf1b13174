"""Quotas on btrfs, as a Windows client meets them: real loop-mounted btrfs, real smbd."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, add_agent_config, disk, served, upload, wait_for, write_share
from tests.support.storage import btrfs_image

pytestmark = pytest.mark.integration
MiB = 1 << 20


def limit_of(path: Path) -> str:
    """max referenced of the path's own qgroup, as btrfs reports it (bytes, or "none")."""
    rootid = subprocess.run(["btrfs", "inspect-internal", "rootid", str(path)], capture_output=True, text=True,
                            check=True).stdout.strip()
    out = subprocess.run(["btrfs", "qgroup", "show", "--raw", "-re", "-F", str(path)], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.split()[:1] == [f"0/{rootid}"]:
            return line.split()[3]
    raise AssertionError(out)


def failure(agent: AgentProcess, share: str) -> str | None:
    """The share's error while it has failed (None while it has not, yet)."""
    entry = ((agent.status() or {}).get("shares") or {}).get(share) or {}
    return entry.get("error") if entry.get("state") == "failed" else None


def share_text(path: str, quota: str) -> str:
    return f'path = "{path}"\n{quota}'


def test_a_btrfs_quota_is_enforced_through_smb_changed_in_place_and_lifted(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    add_agent_config(agent, '[quota]\nrefresh_interval = "5s"\n')
    with btrfs_image(box.root / "srv/smb/pool"):
        file = write_share(box, "finance.toml", share_text("/srv/smb/pool/finance", '[quota]\nsize = "8M"\n'))
        data = box.root / "srv/smb/pool/finance"
        wait_for(lambda: served(box, "finance"), timeout=20)
        assert os.lstat(data).st_ino == 256, "created as a subvolume"
        assert limit_of(data) == str(8 * MiB)
        user = pwd.getpwnam(box.user)
        os.chown(data, user.pw_uid, user.pw_gid)  # as the admin gives the share to its users

        # Windows sees the quota as the drive: its size is the limit, free is what is left.
        total, free = disk(box, "finance")
        assert total == 8 * MiB and 7 * MiB < free <= 8 * MiB, (total, free)
        assert upload(box, "finance", "small.bin", 4 * MiB).returncode == 0
        # The usage reading (from btrfs, in the background) reaches status and dfree.
        agent.ctl("reconcile")
        quota = wait_for(lambda: (((agent.status() or {}).get("plugins") or {}).get("quota") or {})
                         .get("shares", {}).get("finance"), timeout=20)
        assert quota["limit"] == 8 * MiB and quota["backend"] == "btrfs"
        shown = agent.ctl("show", "finance").stdout
        assert "quota     backend btrfs  limit 8388608" in shown, shown
        listed = agent.ctl("status").stdout
        assert re.search(r"finance: quota: [0-9.]+[KM]? of 8M used \([0-9.]+ %\), btrfs", listed), listed
        os.sync()  # btrfs accounts qgroups at a transaction commit (every 30 s by itself)
        wait_for(lambda: disk(box, "finance")[1] < 5 * MiB, timeout=20)  # the next reading (refresh_interval)
        too_big = upload(box, "finance", "big.bin", 12 * MiB)
        assert too_big.returncode != 0 and "NT_STATUS_DISK_FULL" in too_big.stdout + too_big.stderr, too_big

        # A bigger size: the limit changes in place, and the write goes through.
        file.write_text(share_text("/srv/smb/pool/finance", '[quota]\nsize = "64M"\n'))
        wait_for(lambda: limit_of(data) == str(64 * MiB), timeout=20)
        assert upload(box, "finance", "big.bin", 12 * MiB).returncode == 0
        status = agent.status() or {}
        assert status["shares"]["finance"]["state"] == "served"

        # [quota] removed: the limit is lifted; the share and its data stay.
        file.write_text(share_text("/srv/smb/pool/finance", ""))
        wait_for(lambda: limit_of(data) == "none", timeout=20)
        assert (data / "big.bin").stat().st_size == 12 * MiB
        assert served(box, "finance")

        # A plain directory cannot be limited: refused, with how to convert it.
        plain = box.root / "srv/smb/pool/plain"
        plain.mkdir()
        write_share(box, "plain.toml", share_text("/srv/smb/pool/plain", '[quota]\nsize = "100M"\n'))

        def refused() -> str | None:
            share = ((agent.status() or {}).get("shares") or {}).get("plain") or {}
            return share.get("error") if share.get("state") == "failed" else None

        error = wait_for(refused, timeout=20)
        assert "plain directory, not a btrfs subvolume" in error and "btrfs subvolume create" in error, error
        assert not served(box, "plain")

        # Other refusals, each naming the share's problem; none of them is served.
        for name, text, expected in [
            ("huge", 'path = "/srv/smb/pool/huge"\n[quota]\nsize = "1T"\n', "1T is larger than the btrfs file system"),
            ("z", 'path = "/srv/smb/pool/z"\n[quota]\nsize = "8M"\nbackend = "zfs"\n',
             "backend = 'zfs', but /srv/smb/pool/z is on btrfs"),
            ("x", 'path = "/srv/smb/pool/x"\n[quota]\nsize = "8M"\nbackend = "xfs"\n', "is on btrfs"),
        ]:
            write_share(box, f"{name}.toml", text)
            error = wait_for(lambda name=name: failure(agent, name), timeout=20)
            assert expected in error, error
            assert not served(box, name)
        # A path that is a file is the share file's problem, with its line.
        (box.root / "srv/smb/pool/a-file").write_text("not a directory")
        write_share(box, "afile.toml", 'path = "/srv/smb/pool/a-file"\n[quota]\nsize = "8M"\n')
        problem = wait_for(lambda: next(iter(((agent.status() or {}).get("files", {}).get("afile.toml") or {})
                                             .get("problems") or []), None), timeout=20)
        assert problem["line"] == 1 and "is not a directory" in problem["message"], problem
        assert not (box.root / "srv/smb/pool/huge").exists(), "nothing is created for a refused share"

        # A limit below what is used is set, and warned about: new writes then fail.
        os.sync()  # btrfs counts the 16M at its next transaction commit
        file.write_text(share_text("/srv/smb/pool/finance", '[quota]\nsize = "8M"\n'))
        wait_for(lambda: limit_of(data) == str(8 * MiB), timeout=20)
        assert "the new limit 8M is below what it uses" in agent.log_text()
        assert served(box, "finance") and upload(box, "finance", "more.bin", 2 * MiB).returncode != 0

        # Deleting the share file leaves the limit on the data.
        file.write_text(share_text("/srv/smb/pool/finance", '[quota]\nsize = "32M"\n'))
        wait_for(lambda: limit_of(data) == str(32 * MiB), timeout=20)
        file.unlink()
        wait_for(lambda: not served(box, "finance"), timeout=20)
        assert limit_of(data) == str(32 * MiB)
        agent.stop()  # before the file system goes

        # `smbgwctl plan` shows a limit change before it happens (and changes nothing).
        write_share(box, "finance.toml", share_text("/srv/smb/pool/finance", '[quota]\nsize = "48M"\n'))
        plan = agent.ctl("plan")
        assert "limit /srv/smb/pool/finance to 48M (was 32M, btrfs qgroup 0/256)" in plan.stdout, plan.stdout
        assert limit_of(data) == str(32 * MiB)


def test_quotas_off_on_btrfs_are_reported_with_the_command_to_enable_them(
    sandbox: Sandbox, agent: AgentProcess
) -> None:
    box = sandbox
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        subprocess.run(["btrfs", "subvolume", "create", str(pool / "docs")], check=True, capture_output=True)
        write_share(box, "docs.toml", share_text("/srv/smb/pool/docs", '[quota]\nsize = "100M"\n'))

        def error() -> str | None:
            share = ((agent.status() or {}).get("shares") or {}).get("docs") or {}
            return share.get("error") if share.get("state") == "failed" else None

        message = wait_for(error, timeout=20)
        assert f"run `btrfs quota enable {pool}`" in message, message
        assert not served(box, "docs"), "a quota that cannot be enforced is not silently dropped"
        # enforce = false: served without the limit, as the file asks.
        write_share(box, "docs.toml", share_text("/srv/smb/pool/docs", '[quota]\nsize = "100M"\nenforce = false\n'))
        wait_for(lambda: served(box, "docs"), timeout=20)
        agent.stop()


def unit_capabilities() -> list[str]:
    unit = Path(__file__).resolve().parents[2] / "systemd/smbgw-agent.service"
    for line in unit.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return line.split("=", 1)[1].split()
    raise AssertionError("the unit sets no CapabilityBoundingSet")


def with_capabilities(capabilities: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root with exactly `capabilities` as its bounding set (what the unit grants)."""
    names = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in capabilities)
    return subprocess.run(["setpriv", f"--bounding-set=-all,{names}", "--inh-caps=-all", "--", *argv],
                          capture_output=True, text=True, check=False, timeout=30)


def test_the_units_capabilities_are_what_btrfs_limits_need(tmp_path: Path) -> None:
    """The installed unit's bounding set lets the quota plugin's btrfs commands work, and
    CAP_SYS_ADMIN in it is not decoration: without it the limit cannot be set."""
    granted = unit_capabilities()
    assert "CAP_SYS_ADMIN" in granted
    with btrfs_image(tmp_path / "pool") as pool:
        share = pool / "share"
        made = with_capabilities(granted, ["btrfs", "subvolume", "create", str(share)])
        assert made.returncode == 0, made.stderr
        limited = with_capabilities(granted, ["btrfs", "qgroup", "limit", str(8 * MiB), str(share)])
        assert limited.returncode == 0, limited.stderr
        assert limit_of(share) == str(8 * MiB)
        shown = with_capabilities(granted, ["btrfs", "qgroup", "show", "--raw", "-re", "-F", str(share)])
        assert shown.returncode == 0 and str(8 * MiB) in shown.stdout, shown.stderr
        without = [c for c in granted if c != "CAP_SYS_ADMIN"]
        refused = with_capabilities(without, ["btrfs", "qgroup", "limit", "none", str(share)])
        assert refused.returncode != 0 and "not permitted" in refused.stderr.lower(), refused
        assert limit_of(share) == str(8 * MiB)
