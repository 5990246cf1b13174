"""How long a share's public address is unreachable when its node fails, in a real 3-node
CTDB cluster run by the agent.

    nice .venv/bin/python bench/failover.py [--runs 10] [--peer-runs 3] [--fault cut|power]

Needs root (network namespaces, systemd-nspawn). Builds the cluster of the integration
tests (tests/support/cluster.py: three Debian systemd containers on one bridge, the .deb
installed in each, CTDB configured by the agent from agent.toml and one share file;
tests/support/cluster_share.py) once, then for each run:

  1. wait until all three nodes are OK, then 15 s more: CTDB's RerecoveryTimeout (10 s)
     keeps a new recovery from starting that soon after the last one, and every repair
     below ends in one;
  2. find the node holding the address. For ``cut``, move the address off the leader
     first (``ctdb moveip``): the harness's "cluster file system" is a host directory a cut
     node still reaches, so a cut leader would keep the cluster lock the others need;
  3. the fault: ``cut`` sets the node's switch port down (a pulled cable); ``power``
     SIGKILLs the whole container (a power cut);
  4. from the fault, a client in its own namespace starts a new SMB connection
     (``smbclient -t 5 -c ls``) every 0.25 s, each without waiting for the earlier ones
     (one started while the address was on no node waits out its SYN retransmissions and
     would measure the client's own time limit): the failover time is when the first one
     that worked ended;
  5. repair (reconnect the cable, or boot the node from its disk) for the next run.

Cases: the agent's tunables (its defaults: KeepaliveInterval 1 s, KeepaliveLimit 3), and,
as the peer, CTDB's own defaults (5 s, 5), set through agent.toml on the same cluster
(the agent applies them with ``ctdb setvar``). Prints every sample, then n, median and max
per case and the ratio of the medians. Nothing is asserted but that each fault failed over.

About 40 s per run with the agent's tunables, 60 s with CTDB's defaults, plus about a
minute to build the cluster (the image and the .deb are cached by content).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cluster import Cluster, ClusterNode, three_nodes  # noqa: E402
from tests.support.cluster_share import (  # noqa: E402
    CTDB_DEFAULT_KEEPALIVE,
    FAST_KEEPALIVE,
    VIP,
    holder,
    move_off_the_leader,
    serve_share,
    set_keepalive,
    settle,
    wait_next_operation,
)


def victim_for(cluster: Cluster, fault: str) -> ClusterNode:
    return move_off_the_leader(cluster) if fault == "cut" else holder(cluster)


def one_run(cluster: Cluster, fault: str) -> tuple[float, str]:
    settle(cluster, timeout=300)
    victim = victim_for(cluster, fault)
    witness = next(n for n in cluster.nodes if n is not victim)
    began = time.monotonic()
    if fault == "cut":
        cluster.cut(victim)
    else:
        cluster.power_off(victim)
    try:
        seconds = wait_next_operation(cluster, began, timeout=120)
        new = holder(cluster, witness)
        if new is victim:
            raise RuntimeError(f"the client was served, but CTDB still shows {victim.name} holding {VIP}")
    finally:
        if fault == "cut":
            cluster.reconnect(victim)
        else:
            cluster.power_on(victim)
    return seconds, f"{victim.name} -> {new.name}"


def measure(cluster: Cluster, label: str, fault: str, runs: int) -> list[float]:
    samples = []
    for run in range(runs):
        seconds, moved = one_run(cluster, fault)
        samples.append(seconds)
        print(f"  {label} run {run + 1}/{runs}: {seconds:.2f} s ({moved})", flush=True)
    return samples


def summary(label: str, samples: list[float]) -> str:
    return (f"{label:<42} n={len(samples):<3} median {statistics.median(samples):6.2f} s"
            f"   max {max(samples):6.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs with the agent's tunables (default 10)")
    parser.add_argument("--peer-runs", type=int, default=3, help="runs with CTDB's defaults (default 3; 0: none)")
    parser.add_argument("--fault", choices=("cut", "power"), default="cut")
    args = parser.parse_args()

    with three_nodes() as cluster:
        healthy = serve_share(cluster, FAST_KEEPALIVE)
        print(f"cluster served by the agent: all nodes OK {healthy:.1f} s after agent.toml", flush=True)
        ours = measure(cluster, "agent (KeepaliveInterval 1, Limit 3)", args.fault, args.runs)
        peer: list[float] = []
        if args.peer_runs:
            set_keepalive(cluster, CTDB_DEFAULT_KEEPALIVE)
            peer = measure(cluster, "CTDB defaults (KeepaliveInterval 5, Limit 5)", args.fault, args.peer_runs)

    print(f"\nfailover after a {'pulled cable' if args.fault == 'cut' else 'power cut'}: "
          "fault to the client's next successful operation")
    print(summary("agent (KeepaliveInterval 1 s, Limit 3)", ours))
    if peer:
        print(summary("CTDB defaults (KeepaliveInterval 5 s, Limit 5)", peer))
        print(f"ratio of medians, agent / CTDB defaults: {statistics.median(ours) / statistics.median(peer):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
