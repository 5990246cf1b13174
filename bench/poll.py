"""What polling shares.d costs per poll (`[agent] watch = "poll"`, and `auto` on FUSE such
as /etc/pve), at 2,000 share files: comparing the directory's entries (scandir and an
lstat per entry) against reading pmxcfs' `.version` alone, the two ways the poller looks
(smbgw_agent/effects/poller.py). The agent polls once per `poll_interval` (1 s).

    .venv/bin/python bench/poll.py [--shares 2000] [--rounds 200]

On a local directory here, not on pmxcfs (whose reads go through FUSE and cost more per
call): it shows how the cost grows with the number of files. Prints medians and p90 in
milliseconds and the ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.samples import timed_ms  # noqa: E402
from smbgw_agent.effects.poller import ShareDirPoller  # noqa: E402


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"median {statistics.median(ordered):.3f} ms, p90 {ordered[int(len(ordered) * 0.9)]:.3f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smbgw-bench-poll-") as folder:
        cluster = Path(folder) / "pve"
        shares = cluster / "smbgw/shares.d"
        shares.mkdir(parents=True)
        for index in range(args.shares):
            (shares / f"share{index:05d}.toml").write_text(f'path = "/srv/smb/share{index:05d}"\n')
        (cluster / ".version").write_text("12345\n")
        table = Path(folder) / "mountinfo"
        table.write_text(f"45 28 0:41 / {cluster} rw,relatime - fuse /dev/fuse rw\n")
        entries = ShareDirPoller(shares, lambda: None, 1.0, mountinfo=Path(folder) / "none")
        version = ShareDirPoller(shares, lambda: None, 1.0, mountinfo=table)
        entries.ensure()
        version.ensure()  # finds the version file, as the agent's passes do
        by_entries = timed_ms(args.rounds, entries.signature)
        by_version = timed_ms(args.rounds, version.signature)
    ratio = statistics.median(by_entries) / statistics.median(by_version)
    print(f"poll of {args.shares} share files, {args.rounds} rounds:")
    print(f"  entries (scandir + lstat each): {summary(by_entries)}")
    print(f"  pmxcfs .version only:           {summary(by_version)}")
    print(f"  entries / .version: {ratio:.0f}x; at poll_interval 1s the entries poll takes "
          f"{statistics.median(by_entries) / 10:.2f}% of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
