"""What quotas cost: applying them, changing one, and reading usage, on real file systems.

    .venv/bin/python bench/quota.py [--shares 200] [--refresh-shares 2000] [--baseline REV]

Backends that run here: btrfs (a loop-mounted image) and ZFS (zfs-fuse). XFS and ext4
need the QEMU guest, where timings say more about the emulator than about the agent, so
they are not benchmarked. Prints medians; asserts nothing.

  cold apply      N share files with [quota], empty state: `smbgw-agent --once` wall time
                  (creates N subvolumes / datasets, sets N limits, reads them back)
  one change      N quota'd shares served; one share's size changed: file written ->
                  the file system reports the new limit, and the agent's pass time
  usage refresh   one background usage reading with M shares with a quota (the plugin's
                  reading function, in its own process, as the agent's thread runs it)

With `--baseline REV` the btrfs benchmarks run first against that revision's agent, on the
same machine in the same run (the previous release read usage with two btrfs commands per
share; this one reads one `btrfs qgroup show` per file system).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.latency import (  # noqa: E402
    AGENT,
    agent_cwd,
    agent_env,
    check_agent_tree,
    checkout,
    make_box,
    print_comparison,
    start_agent,
    status,
    stop,
    summary,
)
from devtools.sandbox import Sandbox  # noqa: E402
from tests.support.storage import btrfs_image, zfs_pool  # noqa: E402

MiB = 1 << 20
Pool = Callable[[Path], AbstractContextManager[object]]


def btrfs_pool(where: Path) -> AbstractContextManager[object]:
    return btrfs_image(where, size="4G")


POOLS: dict[str, Pool] = {"btrfs": btrfs_pool, "zfs": lambda where: zfs_pool(where, size="2G")}


def write_quota_shares(box: Sandbox, count: int, size: str = "64M") -> None:
    for index in range(count):
        (box.shares_dir / f"q{index:05d}.toml").write_text(
            f'path = "/srv/smb/pool/q{index:05d}"\n[quota]\nsize = "{size}"\n')


def limit_seen(backend: str, path: Path, expected: int) -> bool:
    if backend == "zfs":
        out = subprocess.run(["zfs", "get", "-Hp", "-o", "value", "refquota", mount_source(path)],
                             capture_output=True, text=True, check=False).stdout
        return out.strip() == str(expected)
    out = subprocess.run(["btrfs", "qgroup", "show", "--raw", "-re", "-f", str(path)], capture_output=True,
                         text=True, check=False).stdout
    return any(line.split()[3:4] == [str(expected)] for line in out.splitlines()[2:])


def bench_cold(base: Path, backend: str, count: int, repeats: int) -> None:
    walls, passes = [], []
    for attempt in range(repeats):
        box = make_box(base, f"{backend}-cold-{count}-{attempt}")
        with POOLS[backend](box.root / "srv/smb/pool"):
            write_quota_shares(box, count)
            box.start_smbd()
            try:
                started = time.monotonic()
                subprocess.run([str(AGENT["python"]), "-m", "smbgw_agent", "--root", str(box.root), "--once",
                                "--log-level", "warning"], env=agent_env(), cwd=agent_cwd(), check=True)
                walls.append((time.monotonic() - started) * 1000)
                passes.append(status(box)["pass"]["duration_seconds"] * 1000)
                served = [s for s in status(box)["shares"].values() if s.get("state") == "served"]
                assert len(served) == count, f"{len(served)} of {count} served; see {box.root}"
            finally:
                box.stop_smbd()
        shutil.rmtree(box.root, ignore_errors=True)
    summary(f"{backend}: cold apply, {count} quotas (wall)", walls)
    summary(f"{backend}: cold apply, {count} quotas (pass)", passes)


def bench_one_change(base: Path, backend: str, count: int, changes: int) -> None:
    box = make_box(base, f"{backend}-change-{count}")
    latencies, passes = [], []
    with POOLS[backend](box.root / "srv/smb/pool"):
        write_quota_shares(box, count)
        box.start_smbd()
        proc = start_agent(box)
        try:
            deadline = time.monotonic() + 600
            while sum(s.get("state") == "served" for s in status(box).get("shares", {}).values()) < count:
                assert time.monotonic() < deadline, "not all shares served"
                time.sleep(0.2)
            for change in range(changes):
                index = change % count
                size = (65 + change) * MiB
                share = box.shares_dir / f"q{index:05d}.toml"
                before = status(box).get("passes", 0)
                started = time.monotonic()
                share.write_text(f'path = "/srv/smb/pool/q{index:05d}"\n[quota]\nsize = "{65 + change}M"\n')
                path = box.root / f"srv/smb/pool/q{index:05d}"
                while not limit_seen(backend, path, size):
                    assert time.monotonic() - started < 60, "limit never changed"
                    time.sleep(0.005)
                latencies.append((time.monotonic() - started) * 1000)
                while status(box).get("passes", 0) <= before:
                    time.sleep(0.01)
                passes.append(status(box)["pass"]["duration_seconds"] * 1000)
        finally:
            stop(proc)
            box.stop_smbd()
    shutil.rmtree(box.root, ignore_errors=True)
    summary(f"{backend}: one change at {count}: file -> limit", latencies)
    summary(f"{backend}: one change at {count}: pass", passes)


# Run in a process of its own with PYTHONPATH=<tree>: the plugin's background reading
# over M prepared shares, timed. Both plugin versions' private interfaces are handled.
READER = r"""
import json, sys, time
from pathlib import Path
from smbgw_agent.platform.pluginhost import map_source_tree_plugins
map_source_tree_plugins()
import smbgw_plugins.quota as quota
from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.pluginstate import PluginState
from smbgw_agent.effects.mounts import mount_of
root, backend, count, repeats = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
plugin, paths, runner = quota.QuotaPlugin(), Paths.under(root), Runner()
thresholds = {"warning": 75, "high": 85, "critical": 95}
shares = {f"q{i:05d}": root / f"srv/smb/pool/q{i:05d}" for i in range(count)}
if hasattr(quota, "Watched"):  # this release
    from smbgw_plugins.quota.backend import Place
    from smbgw_plugins.quota.table import QuotaSettings
    mounts = quota.parse_mountinfo(quota.read_mountinfo())
    plugin._watched = {k: quota.Watched(Place(k, str(p), p, mount_of(p, mounts)), backend, thresholds)
                       for k, p in shares.items()}
    plugin._ids = PluginState("quota", {}, None)
    read = lambda: plugin._read_all(paths, runner, QuotaSettings())
else:  # the previous release: btrfs only, two commands per share
    plugin._watched = {k: (k, p, thresholds) for k, p in shares.items()}
    read = lambda: plugin._read_all(paths, runner)
times = []
for _ in range(repeats):
    started = time.monotonic()
    found = read()
    times.append((time.monotonic() - started) * 1000)
    assert len(found) == count, (len(found), count)
print(json.dumps(times))
"""


def prepare_many(backend: str, pool: Path, count: int) -> None:
    """`count` share directories with a 64M limit each, made with the tools directly."""
    for index in range(count):
        path = pool / f"q{index:05d}"
        if backend == "btrfs":
            subprocess.run(["btrfs", "subvolume", "create", str(path)], check=True, capture_output=True)
            subprocess.run(["btrfs", "qgroup", "limit", str(64 * MiB), str(path)], check=True, capture_output=True)
        else:
            dataset = f"{mount_source(pool)}/q{index:05d}"
            subprocess.run(["zfs", "create", "-o", f"refquota={64 * MiB}", dataset], check=True, capture_output=True)


def mount_source(where: Path) -> str:
    return subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(where)], capture_output=True, text=True,
                          check=True).stdout.strip()


def bench_refresh(base: Path, backend: str, count: int, repeats: int, trees: list[Path]) -> None:
    box = make_box(base, f"{backend}-refresh-{count}")
    pool = box.root / "srv/smb/pool"
    with POOLS[backend](pool):
        started = time.monotonic()
        prepare_many(backend, pool, count)
        print(f"   ({count} {backend} shares prepared in {time.monotonic() - started:.0f} s)")
        for _ in runs(trees):
            python = str(AGENT["python"])
            out = subprocess.run([python, "-c", READER, str(box.root), backend, str(count), str(repeats)],
                                 env=agent_env(), cwd=agent_cwd(), capture_output=True, text=True,
                                 check=True).stdout
            summary(f"{backend}: usage refresh, {count} quotas", json.loads(out.splitlines()[-1]))
    shutil.rmtree(box.root, ignore_errors=True)


def runs(trees: list[Path]) -> Iterator[Path]:
    """Each tree's agent in turn; with a baseline both run on Debian's /usr/bin/python3
    (what the .deb uses), so the interpreter is not what is compared."""
    for tree in trees:
        AGENT["tree"] = tree
        AGENT["python"] = "/usr/bin/python3" if len(trees) > 1 else sys.executable
        check_agent_tree()
        yield tree


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shares", type=int, default=200)
    parser.add_argument("--refresh-shares", type=int, default=2000)
    parser.add_argument("--zfs-refresh-shares", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="git revision to compare with (btrfs), measured in the same run")
    parser.add_argument("--backends", default="btrfs,zfs")
    args = parser.parse_args()
    backends = args.backends.split(",")
    base = Path(tempfile.mkdtemp(prefix="smbgw-bench-quota-", dir="/var/tmp"))
    base.chmod(0o755)
    trees = [REPO]
    try:
        if args.baseline:
            trees.insert(0, checkout(args.baseline, base))
        if "btrfs" in backends:
            for tree in runs(trees):
                print(f"== btrfs, agent from {tree}")
                bench_cold(base, "btrfs", args.shares, args.repeats)
                bench_one_change(base, "btrfs", args.shares, args.changes)
            bench_refresh(base, "btrfs", args.refresh_shares, args.repeats, trees)
        if "zfs" in backends:
            for _ in runs([REPO]):
                print(f"== zfs (zfs-fuse), agent from {REPO}")
                bench_cold(base, "zfs", args.shares, 1)
                bench_one_change(base, "zfs", args.shares, args.changes)
            bench_refresh(base, "zfs", args.zfs_refresh_shares, args.repeats, [REPO])
        print_comparison(args.baseline, trees)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
