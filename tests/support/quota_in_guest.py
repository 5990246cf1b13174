"""XFS and ext4 project quotas end to end, run *inside* the QEMU guest (Debian's kernel has
the quota support this host's kernel lacks): `python3 -m tests.support.quota_in_guest OUT`.

The whole agent runs from the shared source tree with Debian 12's python3 packages, in a
sandbox with real smbd on loopback; an XFS file system (mounted with prjquota) and an ext4
one (mkfs'd with the quota and project features, mounted with prjquota) are the shares'
storage. For both, the steps an administrator takes: a share with `[quota]` (its missing
directory created with a project id of its own), Windows sees the limit as the drive size,
a write past it fails with NT_STATUS_DISK_FULL for the share's user, a bigger size lets it
through, removing `[quota]` lifts the limit, deleting the share file keeps it, and
/etc/projects and /etc/projid name the share. Every step asserts; the first failure ends
the run with its message. The tools' raw reports are written to OUT for the host test to
parse with the plugin's own parsers.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, disk, served, upload, wait_for, write_share

MiB = 1 << 20
ROOT = Path("/var/tmp/smbgw-guest")
DEVICES = {"xfs": "/dev/vdb", "ext4": "/dev/vdc"}
FIRST_ID = 100000


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def step(message: str) -> None:
    print(f"{time.monotonic():9.1f} {message}", flush=True)


def make_file_systems(box: Sandbox) -> dict[str, Path]:
    run("mkfs.xfs", "-q", "-f", DEVICES["xfs"])
    run("mkfs.ext4", "-q", "-F", "-O", "quota,project", "-E", "quotatype=usrquota:grpquota:prjquota", DEVICES["ext4"])
    pools = {}
    for fs, device in DEVICES.items():
        pool = box.root / "srv/smb" / fs
        pool.mkdir(parents=True, exist_ok=True)
        run("mount", "-o", "prjquota", device, str(pool))
        pools[fs] = pool
    return pools


def report(fs: str, pool: Path) -> str:
    if fs == "xfs":
        return run("xfs_quota", "-x", "-c", "report -p -b -n -N", str(pool))
    return run("repquota", "-P", "-n", "-O", "csv", str(pool))


def hard_limit(fs: str, pool: Path, ident: int) -> int:
    """The project's hard block limit in bytes, as the file system's own tool reports it."""
    if fs == "xfs":
        for line in report(fs, pool).splitlines():
            fields = line.split()
            if fields and fields[0] == f"#{ident}":
                return int(fields[3]) * 1024
        return 0
    rows = [line.split(",") for line in report(fs, pool).splitlines() if line]
    hard = rows[0].index("BlockHardLimit")
    return next((int(row[hard]) * 1024 for row in rows[1:] if row[0] == f"#{ident}"), 0)


def share_file(fs: str, quota: str) -> str:
    return f'path = "/srv/smb/{fs}/finance"\n{quota}'


def status_of(agent: AgentProcess, share: str) -> dict[str, Any]:
    return (((agent.status() or {}).get("shares") or {}).get(share)) or {}


def main(out: Path) -> int:
    box = Sandbox(ROOT, 4450)
    box.prepare(agent_toml='[agent]\nnode = "guest"\nallowed_roots = ["/srv"]\n'
                'resync_interval = "60s"\n\n[metrics]\nlisten = "127.0.0.1:9945"\n\n'
                '[quota]\nrefresh_interval = "5s"\n'
                f'project_id_range = [{FIRST_ID}, {FIRST_ID + 9}]\n')
    pools = make_file_systems(box)
    box.start_smbd(timeout=60)
    agent = AgentProcess(box)
    agent.start(timeout=180)  # emulated CPUs: Python starts slowly
    step("agent started")
    user = pwd.getpwnam(box.user)
    shares = {fs: f"{fs}share" for fs in pools}
    files = {fs: write_share(box, f"{shares[fs]}.toml", share_file(fs, '[quota]\nsize = "8M"\n')) for fs in pools}
    ids: dict[str, int] = {}
    for fs, pool in pools.items():
        share = shares[fs]
        wait_for(lambda share=share: served(box, share), timeout=90)
        data = pool / "finance"
        projects = (box.root / "etc/projects").read_text()
        found = [line for line in projects.splitlines() if line.endswith(f":{data}")]
        assert len(found) == 1, projects
        ids[fs] = int(found[0].split(":")[0])
        assert f"smbgw-{share}:{ids[fs]}" in (box.root / "etc/projid").read_text()
        assert hard_limit(fs, pool, ids[fs]) == 8 * MiB, report(fs, pool)
        os.chown(data, user.pw_uid, user.pw_gid)  # as the admin gives the share to its users
        step(f"{fs}: served with project id {ids[fs]} and an 8M limit")
        total, free = disk(box, share)
        assert total == 8 * MiB and 7 * MiB < free <= 8 * MiB, (fs, total, free)
        assert upload(box, share, "small.bin", 2 * MiB).returncode == 0
        too_big = upload(box, share, "big.bin", 12 * MiB)
        assert too_big.returncode != 0 and "NT_STATUS_DISK_FULL" in too_big.stdout + too_big.stderr, too_big
        step(f"{fs}: du shows 8M, a 12M write is NT_STATUS_DISK_FULL")
        (out / f"{fs}-report.txt").write_text(report(fs, pool))

    def quota_status() -> dict[str, Any]:
        agent.ctl("reconcile")
        found = (((agent.status() or {}).get("plugins") or {}).get("quota") or {}).get("shares", {})
        return found if all(found.get(s, {}).get("used", 0) >= 2 * MiB for s in shares.values()) else {}

    seen = wait_for(quota_status, timeout=60, interval=1)
    for fs, share in shares.items():
        assert seen[share]["backend"] == fs and seen[share]["limit"] == 8 * MiB, seen
    step("the background reading shows limit and usage from the file systems")

    for fs in pools:
        files[fs].write_text(share_file(fs, '[quota]\nsize = "64M"\n'))
    for fs, pool in pools.items():
        wait_for(lambda fs=fs, pool=pool: hard_limit(fs, pool, ids[fs]) == 64 * MiB, timeout=60, interval=0.5)
        assert upload(box, shares[fs], "big.bin", 12 * MiB).returncode == 0
    step("a bigger size lets the write through")

    for fs in pools:
        files[fs].write_text(share_file(fs, ""))
    for fs, pool in pools.items():
        wait_for(lambda fs=fs, pool=pool: hard_limit(fs, pool, ids[fs]) == 0, timeout=60, interval=0.5)
        assert served(box, shares[fs]) and (pool / "finance/big.bin").stat().st_size == 12 * MiB
    step("removing [quota] lifts the limit; the data stays")

    for fs in pools:
        files[fs].write_text(share_file(fs, '[quota]\nsize = "32M"\n'))
    for fs, pool in pools.items():
        wait_for(lambda fs=fs, pool=pool: hard_limit(fs, pool, ids[fs]) == 32 * MiB, timeout=60, interval=0.5)
        files[fs].unlink()
    for fs, pool in pools.items():
        wait_for(lambda fs=fs: not served(box, shares[fs]), timeout=60, interval=0.5)
        assert hard_limit(fs, pool, ids[fs]) == 32 * MiB
        wait_for(lambda fs=fs: status_of(agent, shares[fs]) == {}, timeout=30, interval=0.5)  # status follows smbd
    step("the same project id comes back; deleting the share file keeps the limit on the data")

    # Why the unit cannot use PrivateDevices=: under a private /dev (what it mounts) the
    # quota tools cannot find the file system's device node and report nothing.
    private_dev = ("mount -t tmpfs -o mode=755 tmpfs /dev && mknod -m 666 /dev/null c 1 3 && "
                   f"xfs_quota -x -c 'report -p -n -N' {pools['xfs']} && repquota -P -n {pools['ext4']}")
    hidden = subprocess.run(["unshare", "-m", "sh", "-c", private_dev], capture_output=True, text=True,
                            timeout=60, check=False)
    assert "cannot setup path" in hidden.stderr and hidden.returncode != 0, hidden
    step("under a private /dev, xfs_quota and repquota find no file system")
    assert agent.stop() == 0
    box.stop_smbd()
    assert "internal error" not in agent.log_text()
    print("ALL OK", flush=True)
    return 0


def explain() -> None:
    """What the agent said, for the host test's failure message."""
    log = ROOT / "agent.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    print("--- agent log (warnings and errors) ---")
    print("\n".join(line for line in lines if " WARNING " in line or " ERROR " in line)[-6000:])


if __name__ == "__main__":
    try:
        sys.exit(main(Path(sys.argv[1])))
    except BaseException:
        explain()
        raise
