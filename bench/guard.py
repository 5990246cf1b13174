"""What the fail-closed path checks cost per pass, at 2,000 shares.

Every pass checks the path of every share it serves (a directory swapped for a symbolic
link must not stay served), and the idle loop polls every 2 s. The guard keeps each
verdict with the identity (device, inode) of the directory it resolved to, so a pass
costs one `stat` per share; this compares that with the peer it replaces in the same
run: validating every path from scratch (`check_share_path`, a realpath per share).

    .venv/bin/python bench/guard.py [--shares 2000] [--rounds 30]

Prints medians and p90 in milliseconds and the ratio; asserts nothing.
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
from smbgw_agent.model.config import AgentConfig  # noqa: E402
from smbgw_agent.model.paths import Paths  # noqa: E402
from smbgw_agent.model.shares import ShareSpec, check_share_path  # noqa: E402
from smbgw_agent.model.smbconf import AdminShares  # noqa: E402
from smbgw_agent.reconcile.guard import ShareGuard  # noqa: E402


def show(label: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
    print(f"  {label:<44} median {median:8.2f} ms   p90 {p90:8.2f} ms")
    return median


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shares", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smbgw-bench-guard-", dir="/var/tmp") as base:
        root = Path(base)
        paths = Paths.under(root)
        config = AgentConfig(node="bench", allowed_roots=("/srv",))
        specs = {}
        for index in range(args.shares):
            name = f"share{index:05d}"
            (root / "srv/smb" / name).mkdir(parents=True)
            specs[name] = ShareSpec(name=name, file=f"{name}.toml", path=f"/srv/smb/{name}")
        admin = AdminShares()
        guard = ShareGuard(paths, config)
        print(f"{args.shares} shares, {args.rounds} rounds each")
        cold = show("guard.check, cold (full check of every path)", timed_ms(
            args.rounds, lambda: (guard.forget(), guard.check(specs, admin))))
        warm = show("guard.check, warm (one stat per share)", timed_ms(args.rounds, lambda: guard.check(specs, admin)))
        poll = show("guard.poll between passes", timed_ms(args.rounds, lambda: guard.poll(specs.values())))
        peer = show("peer: check_share_path for every share", timed_ms(
            args.rounds, lambda: [check_share_path(s.path, config, paths) for s in specs.values()]))
        print(f"  warm check / peer: {warm / peer:.2f}   cold check / peer: {cold / peer:.2f}   "
              f"poll every 2 s: {poll / 20:.2f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
