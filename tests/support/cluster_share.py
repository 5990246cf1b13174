"""One share served by the agent on the three-node CTDB cluster (tests/support/cluster.py),
as the cluster test and the failover benchmark both use it: agent.toml with `[ctdb]` on
every node, one share file with a public address in the shared shares.d, a user, and a
client in its own namespace that reaches the share through that address.

Nothing is configured by hand but agent.toml, the share file and the user: the agent
renders CTDB's files, starts CTDB and makes smbd clustered.
"""

from __future__ import annotations

import json
import threading
import time

from tests.support.cluster import CLUSTER_DIR, Cluster, ClusterNode, wait_for

VIP = "10.211.33.100"
USER, PASSWORD, UID = "alice", "Cluster-Passw0rd", "2000"
SHARE = "finance"
SHARE_FILE = f'path = "{CLUSTER_DIR}/{SHARE}"\n\n[ha]\nvip = "{VIP}/24"\n'
# The plugin's defaults (fast failover), and CTDB's own (what a cluster without the agent runs).
FAST_KEEPALIVE = {"keepalive_interval": '"1s"', "keepalive_limit": "3"}
CTDB_DEFAULT_KEEPALIVE = {"keepalive_interval": '"5s"', "keepalive_limit": "5"}
_METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9945/metrics", timeout=10).read().decode())
"""


def agent_toml(cluster: Cluster, nodes: list[str] | None = None,
               keepalive: dict[str, str] | None = None) -> str:
    """agent.toml for every node: `[ctdb]` with the nodes (default: all three, in order)
    and the keepalive tunables (default: FAST_KEEPALIVE)."""
    listed = ", ".join(f'"{address}"' for address in (nodes or [n.address for n in cluster.nodes]))
    tunables = FAST_KEEPALIVE if keepalive is None else keepalive
    return (f'[agent]\nallowed_roots = ["{CLUSTER_DIR}"]\n\n[ctdb]\nnodes = [{listed}]\n'
            f'public_interface = "eth0"\ncluster_lock = "{CLUSTER_DIR}/.ctdb.lock"\n'
            + "".join(f"{key} = {value}\n" for key, value in tunables.items()))


def status(cluster: Cluster, node: ClusterNode) -> dict[str, object]:
    """The node's /run/smbgw/status.json ({} while it cannot be read)."""
    text = cluster.run(node, "cat", "/run/smbgw/status.json", check=False).stdout
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def metrics(cluster: Cluster, node: ClusterNode) -> str:
    return cluster.run(node, "python3", "-c", _METRICS).stdout


def client_try(cluster: Cluster, timeout: float = 20.0) -> tuple[bool, str]:
    """One client operation through the public address (a new connection, `ls`): whether
    it worked, and the client's last line when it did not."""
    result = cluster.client("smbclient", f"//{VIP}/{SHARE}", "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                            "-t", str(int(timeout)), "-c", "ls", timeout=timeout + 10)
    said = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, "" if result.returncode == 0 else (said[-1] if said else f"exit {result.returncode}")


def client_ls(cluster: Cluster, timeout: float = 20.0) -> bool:
    """One client operation through the public address: a new connection, `ls`."""
    return client_try(cluster, timeout)[0]


def journal(cluster: Cluster, since: float, until: float, units: tuple[str, ...] = ("ctdb", "smbgw-agent"),
            lines: int = 80) -> str:
    """What `units` logged on every node between two wall-clock times (for a failed test)."""
    out = []
    for node in cluster.nodes:
        argv = ["journalctl", "--no-pager", "-o", "short-precise", "--since", f"@{since:.0f}", "--until",
                f"@{until + 1:.0f}", *(arg for unit in units for arg in ("-u", unit))]
        found = cluster.run(node, *argv, check=False, timeout=30).stdout.splitlines()
        out.append(f"---- {node.name} ({len(found)} lines, the last {lines}):\n" + "\n".join(found[-lines:]))
    return "\n".join(out)


def holder(cluster: Cluster, via: ClusterNode | None = None) -> ClusterNode:
    """The node holding the public address, as CTDB on ``via`` (default: node1) sees it."""
    return cluster.node(cluster.ctdb_ip_holders(via or cluster.nodes[0])[VIP])


def diagnostics(cluster: Cluster) -> str:
    """What each node's agent and CTDB said, for a failed bring-up."""
    out = []
    for node in cluster.nodes:
        for argv in (["journalctl", "--no-pager", "-n", "60", "-u", "smbgw-agent"],
                     ["journalctl", "--no-pager", "-n", "40", "-u", "ctdb"],
                     ["systemctl", "--no-pager", "status", "ctdb", "smbd"],
                     ["ls", "-l", "/etc/ctdb", "/etc/ctdb/events/legacy"], ["ctdb", "status"],
                     ["cat", "/etc/ctdb/ctdb.conf", "/etc/ctdb/nodes", "/etc/ctdb/public_addresses"]):
            result = cluster.run(node, *argv, check=False, timeout=30)
            out.append(f"---- {node.name}: {' '.join(argv)}\n{result.stdout[-6000:]}{result.stderr[-2000:]}")
    return "\n".join(out)


def serve_share(cluster: Cluster, keepalive: dict[str, str] | None = None) -> float:
    """Declare the share, configure the agent on every node and wait until the client is
    served through the public address; the seconds from agent.toml to all nodes OK."""
    share_dir = cluster.shared / SHARE
    share_dir.mkdir(exist_ok=True)
    share_dir.chmod(0o777)
    (cluster.shares_d / f"{SHARE}.toml").write_text(SHARE_FILE)
    for node in cluster.nodes:
        cluster.run(node, "useradd", "--uid", UID, "--no-create-home", USER)
        cluster.write_file(node, "/etc/smbgw/agent.toml", agent_toml(cluster, keepalive=keepalive))
        cluster.run(node, "systemctl", "reload", "smbgw-agent")
    began = time.monotonic()
    try:
        wait_for("all three CTDB nodes OK", lambda: cluster.ctdb_healthy(cluster.nodes[0]) or None, timeout=240)
    except TimeoutError:
        print(diagnostics(cluster))
        raise
    healthy_after = time.monotonic() - began
    # passdb.tdb is a clustered database now: one smbpasswd serves every node
    cluster.run(cluster.nodes[0], "smbpasswd", "-s", "-a", USER, input=f"{PASSWORD}\n{PASSWORD}\n")
    wait_for("the share through its public address", lambda: client_ls(cluster) or None, timeout=120)
    return healthy_after


def set_keepalive(cluster: Cluster, keepalive: dict[str, str]) -> None:
    """Change the keepalive tunables on every node through agent.toml; the agent sets them
    in the running CTDB (`ctdb setvar`). Waits until every node reports them."""
    for node in cluster.nodes:
        cluster.write_file(node, "/etc/smbgw/agent.toml", agent_toml(cluster, keepalive=keepalive))
        cluster.run(node, "systemctl", "reload", "smbgw-agent")
    interval = keepalive["keepalive_interval"].strip('"').rstrip("s")
    limit = keepalive["keepalive_limit"]

    def tunable(node: ClusterNode, name: str) -> str:
        return (cluster.ctdb(node, "getvar", name, check=False).stdout.split() or [""])[-1]

    for node in cluster.nodes:
        def applied(n: ClusterNode = node) -> bool | None:
            return (tunable(n, "KeepaliveInterval") == interval and tunable(n, "KeepaliveLimit") == limit) or None

        wait_for(f"{node.name}: KeepaliveInterval={interval} KeepaliveLimit={limit}", applied,
                 timeout=60, interval=1.0)


RERECOVERY_MARGIN = 15.0  # CTDB's RerecoveryTimeout (10 s) and a margin


def settle(cluster: Cluster, timeout: float = 240.0) -> None:
    """All nodes OK, then CTDB's RerecoveryTimeout and a margin: a fault within it of the
    last recovery waits it out before the next recovery may start (18-21 s measured)."""
    wait_for("all nodes OK", lambda: cluster.ctdb_healthy(cluster.nodes[0]) or None, timeout=timeout)
    time.sleep(RERECOVERY_MARGIN)


def move_off_the_leader(cluster: Cluster) -> ClusterNode:
    """The holder, after moving the address off the leader if the leader held it: the
    leader holds the cluster lock on a "cluster file system" that a cut node still reaches
    here (a host directory), so a cut leader would keep the lock the others need."""
    leader = cluster.ctdb_leader(cluster.nodes[0])
    victim = holder(cluster)
    if victim.pnn == leader:
        other = next(n for n in cluster.nodes if n.pnn != leader)
        cluster.ctdb(cluster.nodes[0], "-t", "2", "moveip", VIP, str(other.pnn))
        wait_for("the address on a node that does not hold the cluster lock",
                 lambda: holder(cluster).pnn == other.pnn or None, timeout=30)
        victim = other
    return victim


ATTEMPT_EVERY = 0.25  # seconds between the starts of two client attempts
ATTEMPT_LIMIT = 5.0  # each attempt's own time limit (smbclient -t)


def wait_next_operation(cluster: Cluster, since: float, timeout: float = 90.0) -> float:
    """Seconds from ``since`` (time.monotonic) until a client operation through the public
    address first succeeds.

    A new attempt (a new connection, `ls`) starts every ATTEMPT_EVERY seconds whether or
    not the earlier ones have ended: an attempt started while the address was on no node
    waits out its SYN retransmissions and its 5 s limit, and waiting for it would measure
    the client's time limit instead of the failover. The answer is when the first attempt
    that worked ended."""
    done = threading.Event()
    succeeded: list[float] = []
    lock = threading.Lock()

    def attempt() -> None:
        if client_ls(cluster, ATTEMPT_LIMIT):
            with lock:
                succeeded.append(time.monotonic())
            done.set()

    workers: list[threading.Thread] = []
    deadline = time.monotonic() + timeout
    try:
        while not done.is_set() and time.monotonic() < deadline:
            worker = threading.Thread(target=attempt, daemon=True)
            worker.start()
            workers.append(worker)
            done.wait(ATTEMPT_EVERY)
        if not done.is_set():
            raise TimeoutError(f"no client operation through {VIP} succeeded within {timeout:g}s")
    finally:
        for worker in workers:
            worker.join(ATTEMPT_LIMIT + 15)
    return min(succeeded) - since
